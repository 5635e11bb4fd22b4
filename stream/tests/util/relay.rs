//! A user-space TCP relay between a stream client and the server that can damage one
//! client→server stream packet: flip a bit, send it twice, or drop it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Flip one bit in the ciphertext of packet `n`.
    Flip(usize),
    /// Send packet `n` twice.
    Replay(usize),
    /// Leave packet `n` out.
    Drop(usize),
}

/// Starts a relay to `server` for one connection; returns its address.
pub fn relay(server: SocketAddr, fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else { return };
        let Ok(upstream) = TcpStream::connect(server) else { return };
        for s in [&client, &upstream] {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        }
        let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        std::thread::spawn(move || pipe(u2, c2));
        damage(client, upstream, fault);
    });
    addr
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn read_exact(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).ok().map(|_| v)
}

/// Client → server: the HTTP head passes through, then packets one by one.
fn damage(mut from: TcpStream, mut to: TcpStream, fault: Fault) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let Some(b) = read_exact(&mut from, 1) else { return };
        head.extend_from_slice(&b);
    }
    if to.write_all(&head).is_err() {
        return;
    }
    let mut n = 0;
    while let Some(hdr) = read_exact(&mut from, 16) {
        let len = u32::from_be_bytes(hdr[4..8].try_into().unwrap()) as usize;
        let Some(body) = read_exact(&mut from, len) else { break };
        let mut packet = hdr;
        packet.extend_from_slice(&body);
        let copies = match fault {
            Fault::Flip(k) if k == n => {
                packet[16] ^= 0x10;
                1
            }
            Fault::Replay(k) if k == n => 2,
            Fault::Drop(k) if k == n => 0,
            _ => 1,
        };
        for _ in 0..copies {
            if to.write_all(&packet).is_err() {
                return;
            }
        }
        n += 1;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
