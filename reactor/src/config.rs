//! Reactor configuration: thread placement, per-worker limits and timeouts.

use std::time::Duration;

/// Hard bounds for one worker. Every buffer, queue and table a worker owns is capped by one of
/// these; the defaults suit a server with many small connections.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Esockets (of every kind) one worker holds at once. A listener stops accepting while
    /// its worker is full and resumes when a slot frees. Default 65,536.
    pub max_esockets: usize,
    /// Cap on unconsumed input per esocket; when reached, reading pauses until the handler
    /// consumes. Also the size of one pooled buffer. Default 64 KiB.
    pub buf_in_cap: usize,
    /// Cap on queued output per esocket; local writes beyond it return `WouldBlock`.
    /// Default 256 KiB.
    pub buf_out_cap: usize,
    /// After a write hit the cap, the write callback fires once output drains to this many
    /// bytes or fewer. Default 64 KiB.
    pub buf_out_low_water: usize,
    /// Extra output room for writes that arrive through an [`EsocketHandle`] from other
    /// threads (those cannot be refused synchronously). An esocket whose output would pass
    /// `buf_out_cap + handle_write_slack` is closed with an error instead of growing: a peer
    /// that does not read cannot make the worker hoard memory. Default 256 KiB.
    ///
    /// [`EsocketHandle`]: crate::EsocketHandle
    pub handle_write_slack: usize,
    /// Input and output buffer memory all esockets of the reactor hold together, in bytes
    /// (0: no bound). At the bound writes see less room, connections holding parked
    /// partial input are closed, and new connections are refused: see
    /// [`BufferBudget`](crate::BufferBudget). Default 256 MiB.
    pub buffer_budget: usize,
    /// Messages waiting in a worker's inbox; posting to a full inbox fails with
    /// [`PostError::Full`](crate::PostError::Full). Default 4,096.
    pub inbox_capacity: usize,
    /// Free buffers a worker keeps for reuse (each `buf_in_cap` bytes). Default 64.
    pub pool_buffers: usize,
    /// The most an esocket may raise its own buffer caps to with
    /// [`Esocket::set_buffer_caps`](crate::Esocket::set_buffer_caps) (bulk transports that
    /// read and write in large batches). Default 1 MiB.
    pub buf_cap_max: usize,
    /// Datagrams queued per UDP esocket while the socket is not writable (a GSO batch counts
    /// each of its datagrams). A send that finds the queue empty is always taken whole, so a
    /// batch larger than the bound can still leave. Default 256.
    pub udp_out_queue: usize,
    /// Messages one `recvmmsg` on a UDP esocket asks for, `1..=64`. Each takes a 64 KiB
    /// receive slot (room for a kernel-coalesced GRO run), allocated once per worker on its
    /// first UDP read. Default 8 (512 KiB).
    pub udp_recv_batch: usize,
    /// Datagrams read from one UDP esocket per loop turn before the others get a go (a
    /// coalesced run counts each datagram). Default 64.
    pub udp_read_budget: usize,
    /// Segments in one GSO send, `1..=64` (the kernel's limit); larger batches leave in
    /// several sends, and 1 turns GSO off. Default 64.
    pub udp_gso_segments: usize,
    /// The kernel receive buffer asked for each UDP socket (`SO_RCVBUF`), in bytes; 0 keeps
    /// the kernel's default. Datagrams arriving while it is full are dropped by the kernel
    /// (counted in `/proc/net/snmp` as `RcvbufErrors`), which a transport sees as loss; the
    /// kernel's default (208 KiB on Linux) holds about three GSO batches. The kernel caps
    /// the request at `net.core.rmem_max` (logged when it does). Default 4 MiB.
    pub udp_recv_buffer: usize,
    /// The kernel send buffer asked for each UDP socket (`SO_SNDBUF`), in bytes; 0 (the
    /// default) keeps the kernel's. Capped by `net.core.wmem_max`.
    pub udp_send_buffer: usize,
    /// Pending timers per worker (timer esockets, connect and close deadlines). Default 65,536.
    pub max_timers: usize,
    /// Readiness events taken from the kernel per loop turn. Default 1,024.
    pub events_per_turn: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_esockets: 65_536,
            buf_in_cap: 64 * 1024,
            buf_out_cap: 256 * 1024,
            buf_out_low_water: 64 * 1024,
            handle_write_slack: 256 * 1024,
            buffer_budget: 256 << 20,
            inbox_capacity: 4_096,
            pool_buffers: 64,
            buf_cap_max: 1 << 20,
            udp_out_queue: 256,
            udp_recv_batch: 8,
            udp_read_budget: 64,
            udp_gso_segments: 64,
            udp_recv_buffer: 4 << 20,
            udp_send_buffer: 0,
            max_timers: 65_536,
            events_per_turn: 1_024,
        }
    }
}

impl Limits {
    /// Checks that the limits can work together.
    ///
    /// # Errors
    /// `InvalidInput` naming the first limit that is zero where it must not be, or a
    /// low-water mark above the output cap.
    pub fn validate(&self) -> std::io::Result<()> {
        let nonzero = [
            ("max_esockets", self.max_esockets),
            ("buf_in_cap", self.buf_in_cap),
            ("buf_out_cap", self.buf_out_cap),
            ("inbox_capacity", self.inbox_capacity),
            ("udp_out_queue", self.udp_out_queue),
            ("udp_recv_batch", self.udp_recv_batch),
            ("udp_read_budget", self.udp_read_budget),
            ("udp_gso_segments", self.udp_gso_segments),
            ("max_timers", self.max_timers),
            ("events_per_turn", self.events_per_turn),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("Limits::{name} must be at least 1"),
            ));
        }
        // Sizes allocated up front: refuse values that could only be typos.
        let allocated = [
            ("inbox_capacity", self.inbox_capacity, 1 << 24),
            ("events_per_turn", self.events_per_turn, 1 << 20),
            ("buf_in_cap", self.buf_in_cap, 1 << 30),
            ("buf_cap_max", self.buf_cap_max, 1 << 30),
            ("udp_recv_batch", self.udp_recv_batch, crate::sys::udp::MAX_RECV_BATCH),
            ("udp_gso_segments", self.udp_gso_segments, crate::sys::udp::MAX_GSO_SEGMENTS),
            // The kernel takes an int (and doubles it).
            ("udp_recv_buffer", self.udp_recv_buffer, crate::sys::udp::MAX_SOCKET_BUFFER),
            ("udp_send_buffer", self.udp_send_buffer, crate::sys::udp::MAX_SOCKET_BUFFER),
        ];
        if let Some((name, _, max)) = allocated.iter().find(|(_, v, max)| v > max) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("Limits::{name} must be at most {max}"),
            ));
        }
        if self.buf_out_low_water > self.buf_out_cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "Limits::buf_out_low_water must not exceed buf_out_cap",
            ));
        }
        Ok(())
    }
}

/// How a TCP listen address is spread over the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ListenerMode {
    /// One `SO_REUSEPORT` listener per worker (the kernel spreads connections); falls back to
    /// [`ListenerMode::Single`] if the option is refused.
    #[default]
    PerWorker,
    /// One listener on one worker that hands each accepted socket to the least-loaded worker.
    Single,
}

/// Everything a [`Reactor`](crate::Reactor) is started with. Build it with
/// [`Reactor::builder`](crate::Reactor::builder).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) threads: usize,
    pub(crate) pin: bool,
    pub(crate) cpus: Option<Vec<usize>>,
    pub(crate) limits: Limits,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_linger: Duration,
    pub(crate) nodelay: bool,
    pub(crate) backlog: i32,
    pub(crate) listener_mode: ListenerMode,
    pub(crate) share_port: bool,
    pub(crate) name: String,
    /// Made from `limits.buffer_budget` when the reactor starts.
    pub(crate) budget: std::sync::Arc<crate::BufferBudget>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threads: 0,
            pin: true,
            cpus: None,
            limits: Limits::default(),
            idle_timeout: None,
            connect_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(5),
            nodelay: true,
            backlog: 1024,
            listener_mode: ListenerMode::PerWorker,
            share_port: false,
            name: "dap-worker".to_owned(),
            budget: crate::BufferBudget::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        assert!(Limits::default().validate().is_ok());
        let zero_in = Limits { buf_in_cap: 0, ..Limits::default() };
        let err = zero_in.validate().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("buf_in_cap"));
        let low = Limits { buf_out_low_water: 2, buf_out_cap: 1, ..Limits::default() };
        assert!(low.validate().is_err());
        let segments = Limits { udp_gso_segments: 65, ..Limits::default() };
        assert!(segments.validate().unwrap_err().to_string().contains("udp_gso_segments"));
        let batch = Limits { udp_recv_batch: 0, ..Limits::default() };
        assert!(batch.validate().is_err());
    }
}
