//! The client side of a stream: connect to a server and attach a session that stream_ctl
//! created. The full client state machine (retries, stages) is in dap-client; this is the
//! step it drives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dap_reactor::{PostError, Worker};

use crate::channel::{ChannelProcs, SessionInfo};
use crate::mux::Mux;
use crate::session::SessionParams;
use crate::stats::StreamStats;
use crate::transport::StreamError;
use crate::transport::http::{EventSink, StreamConn, StreamEvent};

/// Connects to `addr` on `worker` and attaches the session `params` over HTTP, with a
/// handler from `procs` per channel. `events` hears [`StreamEvent::Connected`] (then
/// [`Mux`] handles are reachable through the esocket) and, last,
/// [`StreamEvent::Closed`]. `timeout` bounds the TCP connect and, separately, the wait
/// for the `101`.
///
/// # Errors
/// The worker's inbox is full or it has stopped.
pub fn connect(
    worker: &Worker,
    addr: SocketAddr,
    params: SessionParams,
    procs: Arc<ChannelProcs>,
    stats: Arc<StreamStats>,
    timeout: Duration,
    mut events: EventSink,
) -> Result<(), PostError> {
    worker.exec(move |ctx| {
        let info = SessionInfo { session_id: params.id, client: None };
        let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
        let mut params = params;
        params.limits.connect_timeout = timeout;
        let host = addr.to_string();
        // The sink moves into the connection; if connecting fails at once, it comes back
        // through this slot to report it.
        let slot = Arc::new(parking_lot::Mutex::new(None::<EventSink>));
        let back = slot.clone();
        let sink: EventSink = Box::new(move |ev| {
            if let Some(f) = back.lock().as_mut() {
                f(ev);
            }
        });
        *slot.lock() = Some(std::mem::replace(&mut events, Box::new(|_| {})));
        let conn = StreamConn::client(params, &host, mux, stats, sink);
        if let Err(e) = ctx.connect_tcp_timeout(addr, timeout, Box::new(conn))
            && let Some(mut f) = slot.lock().take()
        {
            f(StreamEvent::Closed(StreamError::Io(e.to_string())));
        }
    })
}
