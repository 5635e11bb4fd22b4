//! Writes a new Ed25519 key for enc: a server's node key or a client's certificate.
//!
//! ```text
//! cargo run -p dap-net --example keygen -- --node node.key
//! cargo run -p dap-net --example keygen -- --client alice.key
//! ```
//!
//! The file is PEM (PKCS#8, see `dap_net::enc::keys`), mode 0600, and never overwritten.
//! The public key is printed on stdout in base64url: pin a node key in clients, add a client
//! key to the server's allow list.

use std::path::PathBuf;
use std::process::ExitCode;

use dap_net::enc::keys::public_key_to_base64;
use dap_net::enc::{ClientCert, NodeKey};

fn usage(why: &str) -> ! {
    eprintln!("keygen: {why}\nusage: keygen --node FILE | --client FILE");
    std::process::exit(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (kind, path) = match (args.next().as_deref(), args.next(), args.next()) {
        (Some(kind @ ("--node" | "--client")), Some(path), None) => {
            (kind.to_string(), PathBuf::from(path))
        }
        _ => usage("expected exactly one of --node FILE or --client FILE"),
    };
    let (public, result) = if kind == "--node" {
        let key = NodeKey::generate();
        (key.public_key(), key.save(&path))
    } else {
        let key = ClientCert::generate();
        (key.public_key(), key.save(&path))
    };
    match result {
        Ok(()) => {
            println!("{}", public_key_to_base64(&public));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygen: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
