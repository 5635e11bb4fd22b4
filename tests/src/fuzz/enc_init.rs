//! `enc_init`: the `/enc_init` decoders and both sides of the handshake. The first byte
//! picks the side: even, the request (decoder, then the server's `accept` under a policy
//! chosen by the same byte); odd, the response (decoder, then a client's `finish`). Nothing
//! may panic; whatever decodes must re-encode to the same bytes (one encoding per message),
//! and only a valid signature may finish.

use std::sync::OnceLock;

use dap_net::enc::handshake::{self, AcceptParams};
use dap_net::enc::message::{InitRequest, InitResponse};
use dap_net::enc::{AllowList, CipherSuite, ClientAuth, EncInit, NodeKey};

fn node() -> &'static NodeKey {
    static NODE: OnceLock<NodeKey> = OnceLock::new();
    NODE.get_or_init(|| NodeKey::from_seed(&[7; 32]))
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    if which % 2 == 0 {
        if let Ok(req) = InitRequest::decode(body) {
            assert_eq!(req.encode(), body);
        }
        let list: AllowList = [[1u8; 32]].into_iter().collect();
        let auth = match which / 2 % 3 {
            0 => ClientAuth::None,
            1 => ClientAuth::Optional,
            _ => ClientAuth::Required(list),
        };
        let params = AcceptParams {
            node: node(),
            suites: &CipherSuite::ALL,
            client_auth: &auth,
            key_ttl_secs: 600,
        };
        match handshake::accept(body, &params) {
            Ok(accepted) => {
                assert!(InitRequest::decode(body).is_ok());
                assert!(InitResponse::decode(&accepted.response).is_ok());
            }
            Err(e) => assert!([400, 403].contains(&e.refusal().status())),
        }
    } else {
        if let Ok(resp) = InitResponse::decode(body) {
            assert_eq!(resp.encode(), body);
        }
        // A fresh client cannot accept bytes the node never signed for its request.
        let (init, _) = EncInit::start(&[], None);
        assert!(init.finish(body, None).is_err());
    }
}
