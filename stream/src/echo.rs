//! The built-in echo channel `'E'`: every message comes back, same type, same bytes.
//!
//! It honours back-pressure both ways: when the reply cannot be queued, the channel stops
//! reading until `packet_out` says there is room, so a client that sends faster than it
//! reads slows itself down instead of growing the server's memory.

use std::collections::VecDeque;

use crate::channel::{Channel, ChannelHandler, ChannelProcs, Message};

/// The echo channel's id.
pub const ECHO: u8 = b'E';

/// The echo handler.
#[derive(Debug, Default)]
pub struct Echo {
    /// Replies that did not fit yet (reading is off while any wait).
    pending: VecDeque<Message>,
}

impl Echo {
    /// Queues waiting replies in order; returns whether all went.
    fn drain(&mut self, ch: &mut Channel<'_>) -> bool {
        while let Some(len) = self.pending.front().map(|m| m.data.len()) {
            if !ch.can_write(len) {
                return false;
            }
            let msg = self.pending.pop_front().expect("front was Some");
            // Cannot block (checked) nor be too large (it arrived under the same limit);
            // an error means the session is going.
            if ch.write(msg.ty, msg.data).is_err() {
                self.pending.clear();
                return true;
            }
        }
        true
    }
}

impl ChannelHandler for Echo {
    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        self.pending.push_back(msg);
        if !self.drain(ch) {
            ch.set_ready_to_read(false);
        }
    }

    fn packet_out(&mut self, ch: &mut Channel<'_>) {
        if self.drain(ch) {
            ch.set_ready_to_read(true);
        }
    }
}

/// Registers the echo channel under `'E'`.
pub fn register(procs: &mut ChannelProcs) {
    procs.ch_proc_add(ECHO, |_| Box::new(Echo::default())).expect("'E' is a valid id");
}
