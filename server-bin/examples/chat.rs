//! A chat room on channel `'C'`: the server and the client of a dap service in one file.
//!
//! ```text
//! cargo run --release -p dap-server --example chat -- server --addr 127.0.0.1:8090
//! cargo run --release -p dap-server --example chat -- client --uplink 127.0.0.1:8090 --name ann
//! ```
//!
//! Each client sends the lines it reads on stdin to the room and prints the lines the others
//! send, as `NAME: text`. A client that joins late sees nothing old. Stop the server and
//! start it again: the clients climb back on their own (back-off 0.5 s doubling to 30 s)
//! and lines typed meanwhile are sent once they are back.
//!
//! The server prints its node key; give it to the clients with `--node-key=KEY` so that
//! they talk only to that node (without it they trust any node: still encrypted, not
//! authenticated).
//!
//! On the wire a line is one message on `'C'`: `NAME`, a zero byte, `text`. The server
//! sends `NAME: text` to every other member.

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use dap_client::{Client, ClientError, Transport, Uplink, WriteError};
use dap_server::{Node, StartError};
use dap_stream::{Channel, ChannelHandle, ChannelHandler, HandleWriteError, Message, SessionInfo};
use parking_lot::Mutex;

/// The room's channel.
pub const ROOM: u8 = b'C';

/// A member: its session id and its handle to its `'C'` channel.
type Seat = ([u8; 16], ChannelHandle);

/// The members.
#[derive(Clone, Debug, Default)]
pub struct Room(Arc<Mutex<Vec<Seat>>>);

/// One member's side of the room, on its session's worker.
struct Member(Room);

impl ChannelHandler for Member {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        self.0.0.lock().push((ch.session().session_id, ch.handle()));
    }

    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        let Some(nul) = msg.data.iter().position(|&b| b == 0) else { return };
        let line = Bytes::from([&msg.data[..nul], b": ", &msg.data[nul + 1..]].concat());
        let me = ch.session().session_id;
        for (who, member) in self.0.0.lock().iter().filter(|(who, _)| *who != me) {
            // A member whose queue is full misses this line; the others never wait for it.
            if let Err(HandleWriteError::Full(_)) = member.write(0, line.clone()) {
                eprintln!("chat: dropped a line for a slow reader ({:02x?})", &who[..4]);
            }
        }
    }

    fn on_delete(&mut self, _: u8, session: &SessionInfo) {
        self.0.0.lock().retain(|(who, _)| *who != session.session_id);
    }
}

/// A node serving the room on `addr`, over HTTP and UDP (same port).
pub fn server(addr: SocketAddr) -> Result<Node, StartError> {
    let room = Room::default();
    Node::builder().http(addr).udp(addr).channel(ROOM, move |_| Member(room.clone())).start()
}

/// A member: `on_line` hears what the others say. With `node_key`, the client talks only
/// to the node holding that key; without, to any node (still encrypted, not authenticated).
pub fn join(
    uplink: Uplink,
    transport: Transport,
    node_key: Option<[u8; 32]>,
    mut on_line: impl FnMut(String) + Send + 'static,
) -> Result<Client, ClientError> {
    let builder = Client::builder(uplink);
    let builder = match node_key {
        Some(key) => builder.node_key(key),
        None => builder,
    };
    builder
        .channels(&[ROOM])
        .transport(transport)
        .on_message(move |_, m| on_line(String::from_utf8_lossy(&m.data).into_owned()))
        .on_status(|stage, status, why| {
            if let Some(why) = why {
                eprintln!("chat: {stage} {status:?}: {why}; trying again");
            }
        })
        .start()
}

/// Says `text` as `name` (queued while the client is reconnecting).
pub fn say(client: &Client, name: &str, text: &str) -> Result<(), WriteError> {
    client.write(ROOM, 0, [name.as_bytes(), &[0], text.as_bytes()].concat())
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Serve the room.
    Server {
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: SocketAddr,
    },
    /// Join the room: stdin to the room, the others' lines to stdout.
    Client {
        #[arg(long, default_value = "127.0.0.1:8090")]
        uplink: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "auto")]
        transport: Via,
        /// The server's node key (base64, as the server prints it), to pin.
        #[arg(long)]
        node_key: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Via {
    Udp,
    Http,
    Auto,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().role {
        Role::Server { addr } => {
            let node = server(addr)?;
            println!("chat: serving on {} (udp {:?})", node.local_addr(), node.udp_addr());
            let key = dap_net::enc::keys::public_key_to_base64(&node.node_public_key());
            println!("chat: node key {key} (clients: --node-key={key})");
            let mut sigs = dap_server::signals::ShutdownSignals::register()?;
            sigs.wait();
            node.shutdown(std::time::Duration::from_secs(5));
        }
        Role::Client { uplink, name, transport, node_key } => {
            let node_key = match node_key {
                Some(k) => Some(
                    dap_net::enc::keys::public_key_from_base64(&k)
                        .ok_or("--node-key is not a base64 Ed25519 public key")?,
                ),
                None => None,
            };
            let transport = match transport {
                Via::Udp => Transport::Udp,
                Via::Http => Transport::Http,
                Via::Auto => Transport::Auto,
            };
            let client =
                join(Uplink::parse(&uplink)?, transport, node_key, |line| println!("{line}"))?;
            for line in std::io::stdin().lock().lines() {
                if let Err(e) = say(&client, &name, &line?) {
                    eprintln!("chat: not sent ({e})");
                }
            }
        }
    }
    Ok(())
}
