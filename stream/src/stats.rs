//! Stream counters, shared by every session of one server (or client).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters (relaxed atomics; each is exact, a snapshot is not one instant).
        #[derive(Debug, Default)]
        pub struct StreamStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`StreamStats`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct StreamStatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl StreamStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StreamStatsSnapshot {
                StreamStatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl StreamStatsSnapshot {
            /// `(name, value)` for every counter, for metrics exporters.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Sessions created by stream_ctl.
    sessions_created,
    /// stream_ctl requests refused (bad request, unknown channel, table full).
    ctl_refused,
    /// Sessions whose stream attached.
    sessions_attached,
    /// Sessions that expired before their stream attached.
    sessions_expired,
    /// Attach attempts for an unknown or expired session id.
    attach_unknown,
    /// Attach attempts for a session that is attached already.
    attach_twice,
    /// Streams open now.
    streams_open,
    /// Streams that ended, for any reason.
    streams_closed,
    /// Stream packets received.
    packets_in,
    /// Stream packets sent.
    packets_out,
    /// Bytes received (whole packets).
    bytes_in,
    /// Bytes sent (whole packets).
    bytes_out,
    /// Packets whose tag did not verify (altered in flight, or not from the peer).
    auth_failures,
    /// Packets whose sequence number was not the next (lost, replayed or reordered).
    sequence_errors,
    /// Packets or frames that could not be decoded.
    decode_errors,
    /// Frames for a channel the session does not have.
    unknown_channel,
    /// Messages over the size limit.
    oversize_messages,
    /// Streams closed (code 4) because an unfinished message would take the server's
    /// reassembly budget, or the session's own bound, past it (the server's budget counts
    /// its refusals over both transports too).
    over_budget,
    /// Streams closed (code 2) because an unfinished message gained no frame within the
    /// partial timeout.
    partial_timeouts,
    /// Other protocol violations (flow control, fragment order).
    protocol_errors,
    /// Keepalives sent on idle streams.
    keepalives_sent,
    /// Streams closed because nothing arrived within the idle timeout.
    idle_timeouts,
    /// Wake-ups for handle writes that could not be posted to the worker (inbox full);
    /// the data goes out on the stream's next event.
    wake_failed,
    /// Key updates: our sealer moved to its next key.
    key_updates_sent,
    /// Key updates: the peer moved to its next key and we followed.
    key_updates_received,
    /// Streams closed because the peer passed the AEAD's limit without a key update.
    key_exhausted,
    /// Receive windows (a channel's or a connection's) that grew because the sender was
    /// blocked on credit while the reader kept up.
    window_growths,
    /// Streams still open when a shutdown's grace period ended: each was cut off, its
    /// unsent messages discarded, with a CLOSE saying how many.
    shutdown_cut_off,
    /// Messages discarded unsent by those cut-offs (queued for the peer, not yet wholly
    /// sent: acknowledged pub/sub messages among them).
    shutdown_unsent_messages,
}

impl StreamStats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub(crate) fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Relaxed);
    }
}

/// One line (target `dap::access`) when a server session's stream ends: a short prefix of
/// the session id (never the whole: it authorises the attach), the transport, the
/// channels, the message bytes each way, how long it lasted, and why it ended.
pub(crate) fn log_session_end(
    id: &[u8],
    transport: &str,
    channels: &[u8],
    counters: &crate::mux::MuxCounters,
    lasted: std::time::Duration,
    reason: &dyn std::fmt::Display,
) {
    if !tracing::enabled!(target: "dap::access", tracing::Level::INFO) {
        return;
    }
    let prefix: String = id.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let channels: String = channels.iter().map(|&c| char::from(c)).collect();
    tracing::info!(
        target: "dap::access",
        session = %prefix,
        transport,
        channels = %channels,
        bytes_in = counters.bytes_in,
        bytes_out = counters.bytes_out,
        messages_in = counters.messages_in,
        messages_out = counters.messages_out,
        duration_ms = lasted.as_millis() as u64,
        reason = %reason,
        "session ended"
    );
}
