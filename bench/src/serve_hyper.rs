//! `dap-bench serve-hyper`: the hyper 1.x hello server dap's `hello` example is compared with.
//!
//! Written the way hyper's own examples and its users run it: a tokio runtime, one accept loop,
//! one task per connection served by `hyper::server::conn::http1` with keep-alive on and
//! `pipeline_flush(true)` (a pipelined batch of answers goes out in one write, as dap does),
//! `TCP_NODELAY`. Every request gets `200 Hello, World!` with `Content-Type: text/plain`; hyper
//! adds `Date` and `Content-Length`. One worker (`--threads 1`) is a `current_thread` runtime,
//! as in `serve-tokio`; N > 1 is a `multi_thread` runtime with N worker threads.
//!
//! With `--cert` and `--key` (PEM) it serves HTTPS on the same address: tokio-rustls over
//! rustls 0.23 with the ring provider and its default protocol versions and suites. The first
//! handshakes of each negotiated suite are logged to stderr (at counts 1, 2, 4, 8, ...), so the
//! harness can tell which suite wrk's OpenSSL picked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The body of every answer.
const HELLO: &[u8] = b"Hello, World!";

/// Serves on `addr` with `threads` workers until the process is killed; HTTPS when `tls`
/// holds (certificate PEM, key PEM).
pub fn run(addr: SocketAddr, threads: usize, tls: Option<(PathBuf, PathBuf)>) -> io::Result<()> {
    let _ = crate::procstat::raise_nofile_limit();
    let acceptor = tls.map(|(c, k)| acceptor(&c, &k)).transpose()?;
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_io().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_io().build()?
    };
    rt.block_on(serve(addr, acceptor))
}

/// A TLS acceptor for the PEM certificate chain and key, ring provider, default versions.
fn acceptor(cert: &PathBuf, key: &PathBuf) -> io::Result<TlsAcceptor> {
    let bad = |what: &str, e: &dyn std::fmt::Display| io::Error::other(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&cert.display().to_string(), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("rustls", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("rustls certificate", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(addr: SocketAddr, acceptor: Option<TlsAcceptor>) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut http = http1::Builder::new();
    http.keep_alive(true).pipeline_flush(true);
    let suites: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    eprintln!(
        "serve-hyper: listening on {addr} ({})",
        if acceptor.is_some() { "https" } else { "http" }
    );
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // EMFILE and friends: report, back off briefly, keep serving.
                eprintln!("serve-hyper: accept: {e}");
                tokio::task::yield_now().await;
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let http = http.clone();
        match &acceptor {
            None => {
                tokio::spawn(async move {
                    let _ = http.serve_connection(TokioIo::new(sock), service_fn(hello)).await;
                });
            }
            Some(acc) => {
                let acc = acc.clone();
                let suites = suites.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acc.accept(sock).await else { return };
                    log_suite(&suites, tls.get_ref().1);
                    let _ = http.serve_connection(TokioIo::new(tls), service_fn(hello)).await;
                });
            }
        }
    }
}

/// Counts handshakes per (version, suite) and logs each count that is a power of two.
fn log_suite(suites: &Mutex<HashMap<String, u64>>, conn: &rustls::ServerConnection) {
    let version = conn.protocol_version().map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
    let key = format!("{version} {suite}");
    let mut map = suites.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(key.clone()).or_insert(0);
    *n += 1;
    if n.is_power_of_two() {
        eprintln!("serve-hyper: tls {key} handshakes={n}");
    }
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(HELLO)));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}
