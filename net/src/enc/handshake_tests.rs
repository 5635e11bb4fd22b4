//! Unit tests and published test vectors of the handshake (`docs/PROTOCOL.md` §2.5, §3.7).

use super::*;
use crate::enc::allow_list::AllowList;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn arr32(s: &str) -> [u8; 32] {
    unhex(s).try_into().unwrap()
}

/// A fixed X25519 private key.
fn fixed_ephemeral(private: &[u8; 32]) -> EphemeralPrivateKey {
    EphemeralPrivateKey::from_private_key(&X25519, private).unwrap()
}

// RFC 7748 §6.1: Alice is the client's ephemeral key, Bob the server's.
const ALICE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const BOB: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
// RFC 8032 §7.1: test 1 is the node key, test 2 the client certificate.
const NODE_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const CLIENT_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const KEY_ID: &str = "000102030405060708090a0b0c0d0e0f";

fn node() -> NodeKey {
    NodeKey::from_seed(&arr32(NODE_SEED))
}

fn params<'a>(node: &'a NodeKey, auth: &'a ClientAuth) -> AcceptParams<'a> {
    AcceptParams { node, suites: &CipherSuite::ALL, client_auth: auth, key_ttl_secs: 600 }
}

/// The full vector: fixed keys in, exact bytes and keys out.
fn vector_exchange() -> (Vec<u8>, Vec<u8>, Accepted, EncSession) {
    let cert = ClientCert::from_seed(&arr32(CLIENT_SEED));
    let (init, request) = EncInit::start_with(
        fixed_ephemeral(&arr32(ALICE)),
        &[CipherSuite::ChaCha20Poly1305, CipherSuite::Aes256Gcm],
        Some(&cert),
    );
    let node = node();
    let auth = ClientAuth::Optional;
    let accepted = accept_with(
        &request,
        &params(&node, &auth),
        || fixed_ephemeral(&arr32(BOB)),
        || KeyId(unhex(KEY_ID).try_into().unwrap()),
    )
    .unwrap();
    let response = accepted.response.clone();
    let session = init.finish(&response, Some(node.public_key())).unwrap();
    (request, response, accepted, session)
}

/// Prints the vectors for the spec:
/// `cargo test -p dap-net --lib print_vectors -- --ignored --nocapture`.
#[test]
#[ignore = "prints the vectors; checks nothing"]
fn print_vectors() {
    let (request, response, _, session) = vector_exchange();
    let th = transcript_hash(&request, &response[..response.len() - 64]);
    let keys = derive_keys(&arr32(SHARED), &th);
    println!("request  {}", hex(&request));
    println!("response {}", hex(&response));
    println!("th       {}", hex(&th));
    println!("c2s      {}", hex(&keys.c2s));
    println!("s2c      {}", hex(&keys.s2c));
    let sealed = session.seal_request("POST", "v1/echo", Some("n=1"), b"hello").unwrap();
    println!("target   {}", sealed.target("/api/"));
    println!("headers  {:?}", sealed.headers);
    println!("body     {}", hex(&sealed.body));
    let ks = derive_keys(&arr32(SHARED), &[0u8; 32]);
    println!("ks0 c2s  {}\nks0 s2c  {}", hex(&ks.c2s), hex(&ks.s2c));
}

#[test]
fn key_schedule_vector() {
    // §2.5: the RFC 7748 shared secret with an all-zero transcript hash.
    let ks = derive_keys(&arr32(SHARED), &[0u8; 32]);
    assert_eq!(hex(&ks.c2s), KS0_C2S);
    assert_eq!(hex(&ks.s2c), KS0_S2C);
}

#[test]
fn full_handshake_vector() {
    let (request, response, accepted, session) = vector_exchange();
    assert_eq!(hex(&request), V_REQUEST);
    assert_eq!(hex(&response), V_RESPONSE);
    let th = transcript_hash(&request, &response[..response.len() - 64]);
    assert_eq!(hex(&th), V_TH);
    let keys = derive_keys(&arr32(SHARED), &th);
    assert_eq!(hex(&keys.c2s), V_C2S);
    assert_eq!(hex(&keys.s2c), V_S2C);
    assert_eq!(session.key_id(), accepted.key_id);
    assert_eq!(session.suite(), CipherSuite::ChaCha20Poly1305);
    assert_eq!(session.key_ttl(), Duration::from_secs(600));
    assert_eq!(
        accepted.material.client,
        Some(ClientCert::from_seed(&arr32(CLIENT_SEED)).public_key())
    );
    // §4.8: the first sealed request of that session.
    let sealed = session.seal_request("POST", "v1/echo", Some("n=1"), b"hello").unwrap();
    assert_eq!(sealed.target("/api/"), V_TARGET);
    assert_eq!(sealed.headers[0].1, "AAECAwQFBgcICQoLDA0ODw");
    assert_eq!(sealed.headers[1].1, "0");
    assert_eq!(hex(&sealed.body), V_BODY);
    // The server's 200 answer "hello" to it.
    let resp = crate::enc::enc_http::seal_response(
        &accepted.material.s2c,
        &accepted.key_id,
        0,
        "POST",
        3,
        200,
        b"hello",
    );
    assert_eq!(hex(&resp), V_RESP200);
    assert_eq!(session.open_response(&sealed, 200, &resp).unwrap(), b"hello");
}

#[test]
fn round_trip_both_suites_and_key_agreement() {
    let node = NodeKey::generate();
    for suite in CipherSuite::ALL {
        let (init, request) = EncInit::start(&[suite], None);
        let auth = ClientAuth::None;
        let accepted = accept(&request, &params(&node, &auth)).unwrap();
        assert_eq!(accepted.material.suite, suite);
        assert_eq!(accepted.material.client, None);
        let session = init.finish(&accepted.response, None).unwrap();
        assert_eq!(session.node_key(), node.public_key());
        // The keys agree: what the client seals, the server opens.
        let sealed = session.seal_request("GET", "p", None, b"").unwrap();
        let opened = crate::enc::enc_http::open_request(
            &accepted.material.c2s,
            &accepted.key_id,
            sealed.seq,
            "GET",
            &sealed.path_suffix,
            None,
            b"",
        )
        .unwrap();
        assert_eq!(opened.sub_path, "p");
    }
}

#[test]
fn the_server_picks_its_own_preference() {
    let node = node();
    let auth = ClientAuth::None;
    let (_, request) =
        EncInit::start(&[CipherSuite::Aes256Gcm, CipherSuite::ChaCha20Poly1305], None);
    let a = accept(&request, &params(&node, &auth)).unwrap();
    assert_eq!(a.material.suite, CipherSuite::ChaCha20Poly1305);
    let only_aes = [CipherSuite::Aes256Gcm];
    let p = AcceptParams { suites: &only_aes, ..params(&node, &auth) };
    let (_, request) = EncInit::start(&[CipherSuite::ChaCha20Poly1305], None);
    assert_eq!(accept(&request, &p).unwrap_err(), AcceptError::NoCommonSuite);
    assert_eq!(AcceptError::NoCommonSuite.refusal().status(), 400);
}

#[test]
fn undefined_suite_codes_are_ignored_and_alone_get_400() {
    let node = node();
    let auth = ClientAuth::None;
    // `01 01 01 <ephemeral> ...`: one suite offered, at offset 2.
    let (_, mut request) = EncInit::start(&[CipherSuite::ChaCha20Poly1305], None);
    assert_eq!(request[..3], [1, 1, 1]);
    let mut both = request.clone();
    both[1] = 2;
    both.insert(2, 0x07);
    let a = accept(&both, &params(&node, &auth)).unwrap();
    assert_eq!(a.material.suite, CipherSuite::ChaCha20Poly1305);
    request[2] = 0x07;
    let err = accept(&request, &params(&node, &auth)).unwrap_err();
    assert_eq!(err, AcceptError::NoCommonSuite);
    assert_eq!((err.refusal().status(), err.refusal().reason()), (400, "no-common-suite"));
}

#[test]
fn a_tampered_or_foreign_response_is_refused() {
    let node = node();
    let auth = ClientAuth::None;
    let (init, request) = EncInit::start(&[], None);
    let good = accept(&request, &params(&node, &auth)).unwrap().response;
    // Every byte before the signature is covered, and the signature itself.
    for i in 0..good.len() {
        let (init, request2) = EncInit::start(&[], None);
        let mut resp = accept(&request2, &params(&node, &auth)).unwrap().response;
        resp[i] ^= 0x20;
        let err = init.finish(&resp, None).unwrap_err();
        assert!(
            matches!(
                err,
                EncInitError::BadSignature
                    | EncInitError::Decode(_)
                    | EncInitError::SuiteNotOffered(_)
                    | EncInitError::Unsupported
            ),
            "byte {i}: {err:?}"
        );
    }
    // A valid response to another request does not verify against ours.
    let (_, other) = EncInit::start(&[], None);
    let foreign = accept(&other, &params(&node, &auth)).unwrap().response;
    assert_eq!(init.finish(&foreign, None).unwrap_err(), EncInitError::BadSignature);
    // A pinned key that is not the node's.
    let (init, request) = EncInit::start(&[], None);
    let resp = accept(&request, &params(&node, &auth)).unwrap().response;
    let wrong = NodeKey::generate().public_key();
    assert_eq!(init.finish(&resp, Some(wrong)).unwrap_err(), EncInitError::NodeKeyMismatch);
    let _ = good;
}

#[test]
fn client_certificates_under_each_policy() {
    let node = node();
    let cert = ClientCert::generate();
    let stranger = ClientCert::generate();
    let list: AllowList = [cert.public_key()].into_iter().collect();
    let required = ClientAuth::Required(list);
    let run = |auth: &ClientAuth, c: Option<&ClientCert>| {
        let (_, request) = EncInit::start(&[], c);
        accept(&request, &params(&node, auth)).map(|a| a.material.client)
    };
    assert_eq!(run(&ClientAuth::None, Some(&cert)), Ok(None));
    assert_eq!(run(&ClientAuth::Optional, None), Ok(None));
    assert_eq!(run(&ClientAuth::Optional, Some(&stranger)), Ok(Some(stranger.public_key())));
    assert_eq!(run(&required, Some(&cert)), Ok(Some(cert.public_key())));
    assert_eq!(run(&required, None), Err(AcceptError::ClientAuthRequired));
    assert_eq!(run(&required, Some(&stranger)), Err(AcceptError::ClientNotAllowed));
    assert_eq!(AcceptError::ClientNotAllowed.refusal().status(), 403);
    // A signature that does not cover the request (here: the ephemeral key changed).
    let (_, mut request) = EncInit::start(&[], Some(&cert));
    request[5] ^= 1;
    assert_eq!(
        accept(&request, &params(&node, &required)).unwrap_err(),
        AcceptError::BadClientSignature
    );
}

#[test]
fn bad_requests_are_refused_with_the_right_reason() {
    let node = node();
    let auth = ClientAuth::None;
    let p = params(&node, &auth);
    assert_eq!(accept(b"", &p).unwrap_err().refusal(), Refusal::BadInit);
    assert_eq!(accept(&[2, 1, 1], &p).unwrap_err().refusal(), Refusal::UnsupportedVersion);
    let (_, good) = EncInit::start(&[], None);
    // An all-zero ephemeral key is a small-order point: the shared secret would be zero.
    let mut zero = good.clone();
    zero[4..36].fill(0);
    assert_eq!(accept(&zero, &p).unwrap_err(), AcceptError::BadKey);
    let mut req = InitRequest::decode(&good).unwrap();
    req.kem = KemBlock { id: 0x11ec, data: vec![0; 1184] };
    assert_eq!(accept(&req.encode(), &p).unwrap_err().refusal(), Refusal::UnsupportedKem);
    let mut req = InitRequest::decode(&good).unwrap();
    req.extensions = vec![1];
    assert_eq!(accept(&req.encode(), &p).unwrap_err().refusal(), Refusal::UnsupportedExtension);
    // Unknown suite codes are ignored, not refused.
    let mut req = InitRequest::decode(&good).unwrap();
    req.suites.insert(0, 200);
    assert!(accept(&req.encode(), &p).is_ok());
}

// Published in docs/PROTOCOL.md; reproduced independently (Python `cryptography`).
const KS0_C2S: &str = "db1612946a163ed316927d4eda2ebdb5cbf90230ec6845dda37e08dd3b62836b";
const KS0_S2C: &str = "a116028b8b950c7920c00949947d6d4eae847004010a72799b65529fe8caf7af";
const V_REQUEST: &str = concat!(
    "010201028520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98e",
    "aa9b4e6a000000000000013d4017c3e843895a92b70aa74d1b7ebc9c982ccf2e",
    "c4968cc0cd55f12af4660cd019477273c44b9d6991680890e585aba1a28cdab6",
    "53138feaadd0b8cfa122b3516f41f7e5af62b970d7153ea9a164798beb018f88",
    "21bda9bf39070d74dcb800",
);
const V_RESPONSE: &str = concat!(
    "0101de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f88",
    "2b4f000000000000000102030405060708090a0b0c0d0e0f00000258d75a9801",
    "82b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511ab4f2e1aa",
    "8fb3a3256084ace62a024b7f3096a360c914be64d35b848842a4228976671d73",
    "731def570b67c1ab9b0c9f132f63c4ad4e7386ee4bb98cd8e6fc2403",
);
const V_TH: &str = "8a4c6624449aea942a9faeff52846b89d0c8b2ecb51f8186043dcf505deaf914";
const V_C2S: &str = "36eca671fa777054ca445c67441ab0c3c45ea1943b99dd2e8605a0bc24f09644";
const V_S2C: &str = "4677f33b49fdc3c057a107f66bbe927c3dae0b5ccdb0a97720e1f82bcc693282";
const V_TARGET: &str = "/api/R1kVXpypI4i2xYdnKvEgF1ATnfk408I?RmFM8dyza7LRo_qQzV0T9___Ng";
const V_BODY: &str = "480c22c4d5ac26e71290850c51a98adddc13be7655";
const V_RESP200: &str = "5bf4e44894d1d0428af9a8a2e554c545ea3c7435e8";
