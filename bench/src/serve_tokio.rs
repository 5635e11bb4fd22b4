//! `dap-bench serve-tokio`: the tokio echo server dap is compared with.
//!
//! Written the way a competent tokio user would: one worker (`current_thread` runtime), one
//! task per connection, `TCP_NODELAY` on, read into a buffer and `write_all` it back. The buffer
//! is 64 KiB, the same as the mio server's, so both read 64 KiB messages in one call.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Per-connection read buffer.
const BUF: usize = 64 * 1024;

/// Serves on `addr` until the process is killed.
#[tokio::main(flavor = "current_thread")]
pub async fn run(addr: SocketAddr) -> io::Result<()> {
    let _ = crate::procstat::raise_nofile_limit();
    let listener = TcpListener::bind(addr).await?;
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(echo(sock));
            }
            Err(e) => {
                // EMFILE and friends: report, back off briefly, keep serving.
                eprintln!("serve-tokio: accept: {e}");
                tokio::task::yield_now().await;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

async fn echo(mut sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if sock.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
