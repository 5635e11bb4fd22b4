//! Two muxes wired back to back, no transport: flow control, fairness, reassembly and the
//! protocol violations.

use std::sync::Arc;

use parking_lot::Mutex;

use super::*;
use crate::channel::{ChannelHandler, Message, WriteError};
use crate::codec::frame::{self, Frame, put_blocked, put_credit, put_data_header};

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

type Log = Arc<Mutex<Vec<(u8, Message)>>>;

/// Records what arrives; pauses reading when `paused` holds its id.
struct Collect {
    log: Log,
    paused: Arc<Mutex<Vec<u8>>>,
}

impl ChannelHandler for Collect {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        if self.paused.lock().contains(&ch.id()) {
            ch.set_ready_to_read(false);
        }
    }
    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        self.log.lock().push((ch.id(), msg));
    }
}

fn procs(ids: &[u8], log: &Log, paused: &Arc<Mutex<Vec<u8>>>) -> ChannelProcs {
    let mut p = ChannelProcs::new();
    for &id in ids {
        let (log, paused) = (log.clone(), paused.clone());
        p.ch_proc_add(id, move |_| Box::new(Collect { log: log.clone(), paused: paused.clone() }))
            .unwrap();
    }
    p
}

fn info() -> SessionInfo {
    SessionInfo { session_id: [0; 16], client: None }
}

struct Pair {
    a: Mux,
    b: Mux,
    b_log: Log,
    b_paused: Arc<Mutex<Vec<u8>>>,
}

fn pair(ids: &[u8], config: MuxConfig) -> Pair {
    let a_log = Log::default();
    let b_log = Log::default();
    let b_paused = Arc::new(Mutex::new(Vec::new()));
    let mut a = Mux::new(ids, &procs(ids, &a_log, &Default::default()), info(), config);
    let mut b = Mux::new(ids, &procs(ids, &b_log, &b_paused), info(), config);
    a.start(Arc::new(NoWake));
    b.start(Arc::new(NoWake));
    Pair { a, b, b_log, b_paused }
}

/// Moves payloads both ways until neither side has anything to send; returns the payloads
/// a sent.
fn drive(p: &mut Pair) -> usize {
    let mut sent = 0;
    for _ in 0..100_000 {
        let mut progress = false;
        let mut buf = Vec::new();
        while p.a.poll_payload(&mut buf, 32 << 10) {
            p.b.handle_payload(&buf).unwrap();
            buf.clear();
            progress = true;
            sent += 1;
        }
        while p.b.poll_payload(&mut buf, 32 << 10) {
            p.a.handle_payload(&buf).unwrap();
            buf.clear();
            progress = true;
        }
        p.a.notify_writable();
        p.b.notify_writable();
        if !progress && !p.a.wants_send() && !p.b.wants_send() {
            return sent;
        }
    }
    panic!("the muxes never settled");
}

fn write(m: &mut Mux, id: u8, ty: u8, data: Vec<u8>) -> Result<(), WriteError> {
    m.with_channel(id, |ch| ch.write(ty, data)).expect("channel exists")
}

#[test]
fn messages_of_every_size_cross_intact_on_several_channels() {
    let mut p =
        pair(b"ABC", MuxConfig { channel_window: 4096, conn_window: 8192, ..MuxConfig::default() });
    let sizes = [0usize, 1, 100, 4095, 4096, 4097, 100_000, 1 << 20];
    let mut want = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        for &id in b"ABC" {
            let data: Vec<u8> = (0..n).map(|k| (k * 7 + i + id as usize) as u8).collect();
            // One message always fits into an empty queue; drain between writes.
            while write(&mut p.a, id, i as u8, data.clone()) == Err(WriteError::WouldBlock) {
                drive(&mut p);
            }
            want.push((id, Message { ty: i as u8, data: data.into() }));
        }
    }
    drive(&mut p);
    let mut got = p.b_log.lock().clone();
    got.sort_by_key(|(id, m)| (*id, m.ty));
    want.sort_by_key(|(id, m)| (*id, m.ty));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "messages differ");
}

#[test]
fn a_paused_channel_blocks_its_sender_and_others_keep_flowing() {
    let config = MuxConfig {
        channel_window: 8192,
        conn_window: 1 << 20,
        send_queue: 16384,
        ..MuxConfig::default()
    };
    let mut p = pair(b"SF", config);
    p.b_paused.lock().push(b'S');
    // Restart b's handlers' view: pause S on b directly.
    p.b.with_channel(b'S', |ch| ch.set_ready_to_read(false));
    let mut s_blocked = false;
    for i in 0..200u32 {
        if write(&mut p.a, b'S', 1, vec![1; 1000]).is_err() {
            s_blocked = true;
        }
        write(&mut p.a, b'F', 2, i.to_be_bytes().to_vec()).unwrap();
        drive(&mut p);
    }
    assert!(s_blocked, "the slow channel's sender never saw back-pressure");
    let log = p.b_log.lock().clone();
    let fast: Vec<_> = log.iter().filter(|(id, _)| *id == b'F').collect();
    assert_eq!(fast.len(), 200, "the fast channel stalled");
    assert!(log.iter().all(|(id, _)| *id == b'F'));
    // What waits on the receiver is bounded by the window.
    let held: usize = p.b.chans[p.b.find(b'S').unwrap()].inbox.iter().map(|m| m.data.len()).sum();
    assert!(held <= 8192, "{held} bytes held for a paused channel");
    // A channel that does not read never grows its window, however blocked its sender.
    assert_eq!(p.b.recv_window(b'S'), Some(8192));
    // Resume: everything queued arrives, in order.
    p.b.with_channel(b'S', |ch| ch.set_ready_to_read(true));
    drive(&mut p);
    let slow = p.b_log.lock().iter().filter(|(id, _)| *id == b'S').count();
    assert!(slow > 0);
}

fn violation(payload: Vec<u8>, config: MuxConfig) -> MuxError {
    let mut p = pair(b"E", config);
    p.b.handle_payload(&payload).unwrap_err()
}

#[test]
fn protocol_violations_are_refused() {
    let c = MuxConfig {
        channel_window: 1000,
        conn_window: 5000,
        max_message: 10_000,
        ..MuxConfig::default()
    };
    let mut f = Vec::new();
    put_data_header(&mut f, b'X', 0, Some(1), false, 1);
    f.push(0);
    assert_eq!(violation(f, c), MuxError::UnknownChannel(b'X'));

    let mut f = Vec::new();
    put_data_header(&mut f, b'E', 0, Some(20_000), true, 10);
    f.extend_from_slice(&[0; 10]);
    assert_eq!(violation(f, c), MuxError::MessageTooLarge { chan: b'E', total: 20_000 });

    let mut f = Vec::new();
    put_data_header(&mut f, b'E', 0, Some(2000), true, 1001);
    f.extend_from_slice(&[0; 1001]);
    assert_eq!(violation(f, c), MuxError::FlowControl(b'E'));

    let mut f = Vec::new();
    put_data_header(&mut f, b'E', 0, None, false, 1);
    f.push(0);
    assert_eq!(violation(f, c), MuxError::Fragment(b'E'));

    let mut f = Vec::new();
    put_data_header(&mut f, b'E', 0, Some(5), false, 4);
    f.extend_from_slice(&[0; 4]);
    assert_eq!(violation(f, c), MuxError::Fragment(b'E'));

    let mut f = Vec::new();
    put_credit(&mut f, b'Q', 5);
    assert_eq!(violation(f, c), MuxError::UnknownChannel(b'Q'));
}

#[test]
fn writes_past_the_queue_bound_would_block_and_packet_out_follows() {
    struct Producer {
        outs: Arc<Mutex<u32>>,
    }
    impl ChannelHandler for Producer {
        fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
        fn packet_out(&mut self, _: &mut Channel<'_>) {
            *self.outs.lock() += 1;
        }
    }
    let outs = Arc::new(Mutex::new(0));
    let o = outs.clone();
    let mut procs = ChannelProcs::new();
    procs.ch_proc_add(b'P', move |_| Box::new(Producer { outs: o.clone() })).unwrap();
    let config = MuxConfig { send_queue: 1000, ..MuxConfig::default() };
    let mut m = Mux::new(b"P", &procs, info(), config);
    m.start(Arc::new(NoWake));
    assert_eq!(
        write(&mut m, b'P', 0, vec![0; 5000]),
        Ok(()),
        "an empty queue takes one big message"
    );
    assert_eq!(write(&mut m, b'P', 0, vec![0; 1]), Err(WriteError::WouldBlock));
    assert_eq!(write(&mut m, b'P', 0, vec![0; 20 << 20]), Err(WriteError::TooLarge));
    let mut buf = Vec::new();
    while m.poll_payload(&mut buf, 1 << 16) {
        buf.clear();
    }
    m.notify_writable();
    assert_eq!(*outs.lock(), 1);
}

/// The control frames of a payload.
fn controls(mut buf: &[u8]) -> Vec<Frame<'_>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (f, n) = frame::decode(buf).unwrap();
        buf = &buf[n..];
        if !matches!(f, Frame::Data { .. }) {
            out.push(f);
        }
    }
    out
}

#[test]
fn repeated_and_reordered_credit_frames_grant_nothing_twice() {
    let config = MuxConfig {
        channel_window: 4096,
        conn_window: 1 << 20,
        max_channel_window: 4096,
        ..MuxConfig::default()
    };
    let mut p = pair(b"E", config);
    let i = p.a.find(b'E').unwrap();
    // a sends its whole window; b takes it and grants in several CREDIT frames.
    write(&mut p.a, b'E', 1, vec![7; 4096]).unwrap();
    let mut buf = Vec::new();
    assert!(p.a.poll_payload(&mut buf, 1 << 16));
    p.b.handle_payload(&buf).unwrap();
    assert_eq!(p.a.chans[i].send_credit(), 0);
    let mut credits = Vec::new();
    buf.clear();
    while p.b.poll_payload(&mut buf, 1 << 16) {
        credits.push(buf.clone());
        buf.clear();
    }
    assert_eq!(credits.len(), 1);
    let limit = match controls(&credits[0])[..] {
        [Frame::Credit { chan: b'E', limit }] => limit,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(limit, 8192);
    // The same frame three times, and an older, smaller limit after it: still one grant.
    let mut old = Vec::new();
    put_credit(&mut old, b'E', 4096);
    for payload in [&credits[0], &credits[0], &old, &credits[0]] {
        p.a.handle_payload(payload).unwrap();
    }
    assert_eq!(p.a.chans[i].send_credit(), 4096);
    // And the peer enforces it: sending past the limit is a violation there.
    write(&mut p.a, b'E', 1, vec![8; 4096]).unwrap();
    buf.clear();
    assert!(p.a.poll_payload(&mut buf, 1 << 16));
    p.b.handle_payload(&buf).unwrap();
    let mut over = Vec::new();
    put_data_header(&mut over, b'E', 1, Some(1), false, 1);
    over.push(0);
    assert_eq!(p.b.handle_payload(&over), Err(MuxError::FlowControl(b'E')));
}

#[test]
fn windows_grow_while_the_sender_is_blocked_and_stop_at_their_maximum() {
    let config = MuxConfig {
        channel_window: 4096,
        conn_window: 4096,
        max_channel_window: 64 << 10,
        max_conn_window: 128 << 10,
        send_queue: 1 << 20,
        ..MuxConfig::default()
    };
    let mut p = pair(b"E", config);
    let mut blocked_seen = 0;
    for round in 0..64 {
        write(&mut p.a, b'E', 1, vec![round as u8; 100_000]).unwrap();
        // Move one payload at a time so the BLOCKED frames can be watched.
        for _ in 0..10_000 {
            let mut buf = Vec::new();
            let mut progress = false;
            if p.a.poll_payload(&mut buf, 1 << 16) {
                blocked_seen +=
                    controls(&buf).iter().filter(|f| matches!(f, Frame::Blocked { .. })).count();
                p.b.handle_payload(&buf).unwrap();
                progress = true;
            }
            buf.clear();
            if p.b.poll_payload(&mut buf, 1 << 16) {
                p.a.handle_payload(&buf).unwrap();
                progress = true;
            }
            let w = p.b.recv_window(b'E').unwrap();
            assert!(w <= 64 << 10, "window {w} past its maximum");
            if !progress {
                break;
            }
        }
    }
    assert!(blocked_seen > 0, "the sender never said it was blocked");
    assert_eq!(p.b.recv_window(b'E'), Some(64 << 10));
    // The connection grows only as far as the channel needs it to (and never past its own
    // maximum): four doublings each from 4 KiB to 64 KiB.
    assert_eq!(p.b.conn.window, 64 << 10);
    assert_eq!(p.b.counters().window_growths, 8);
    assert_eq!(p.b_log.lock().len(), 64);
    // Once the window covers what the sender has, no more BLOCKED frames are needed.
    let before = p.a.counters().blocked_sent;
    write(&mut p.a, b'E', 1, vec![1; 10_000]).unwrap();
    drive(&mut p);
    assert_eq!(p.a.counters().blocked_sent, before);
}

#[test]
fn a_stale_blocked_frame_does_not_grow_the_window_again() {
    let config =
        MuxConfig { channel_window: 4096, max_channel_window: 1 << 20, ..MuxConfig::default() };
    let mut p = pair(b"E", config);
    // A claim ahead of its data grows nothing yet; once the bytes are in, it does.
    let mut f = Vec::new();
    put_blocked(&mut f, b'E', 4096);
    p.b.handle_payload(&f).unwrap();
    assert_eq!(p.b.recv_window(b'E'), Some(4096));
    p.b.handle_payload(&data_frame_on(b'E', Some(4096), false, 4096)).unwrap();
    assert_eq!(p.b.recv_window(b'E'), Some(8192));
    // The same report again, or an older one: nothing changes.
    p.b.handle_payload(&f).unwrap();
    let mut older = Vec::new();
    put_blocked(&mut older, b'E', 100);
    p.b.handle_payload(&older).unwrap();
    assert_eq!(p.b.recv_window(b'E'), Some(8192));
    // A limit at the top of the range, never backed by data, grows nothing and overflows
    // nothing.
    let mut top = Vec::new();
    put_blocked(&mut top, b'E', u64::MAX);
    put_blocked(&mut top, frame::CONNECTION, u64::MAX);
    p.b.handle_payload(&top).unwrap();
    p.b.handle_payload(&top).unwrap();
    assert_eq!(p.b.recv_window(b'E'), Some(8192));
    // BLOCKED for a channel the session does not have is a violation, like any frame.
    let mut bad = Vec::new();
    put_blocked(&mut bad, b'Q', 1);
    assert_eq!(p.b.handle_payload(&bad), Err(MuxError::UnknownChannel(b'Q')));
}

#[test]
fn a_receiver_that_is_behind_its_input_grows_no_window() {
    let config = MuxConfig {
        channel_window: 4096,
        conn_window: 4096,
        max_channel_window: 1 << 20,
        max_conn_window: 1 << 20,
        ..MuxConfig::default()
    };
    let mut p = pair(b"E", config);
    // The sender used its whole window.
    p.b.handle_payload(&data_frame_on(b'E', Some(4096), false, 4096)).unwrap();
    // The transport says input keeps piling up: the receiver itself is the bottleneck.
    p.b.set_input_drained(false);
    let mut f = Vec::new();
    put_blocked(&mut f, b'E', 4096);
    put_blocked(&mut f, frame::CONNECTION, 4096);
    p.b.handle_payload(&f).unwrap();
    assert_eq!(p.b.recv_window(b'E'), Some(4096));
    assert_eq!(p.b.conn.window, 4096);
    // Caught up again: the same report now grows both.
    p.b.set_input_drained(true);
    p.b.handle_payload(&f).unwrap();
    assert_eq!(p.b.recv_window(b'E'), Some(8192));
    assert_eq!(p.b.conn.window, 8192);
}

#[test]
fn a_sender_whose_output_is_backed_up_reports_no_blocked() {
    let config = MuxConfig { channel_window: 4096, ..MuxConfig::default() };
    let mut p = pair(b"E", config);
    write(&mut p.a, b'E', 1, vec![1; 10_000]).unwrap();
    // The transport's output is still full: what holds the sender back is not credit.
    p.a.set_report_blocked(false);
    let mut buf = Vec::new();
    while p.a.poll_payload(&mut buf, 1 << 16) {}
    assert!(controls(&buf).is_empty());
    assert!(!p.a.wants_send());
    assert!(p.a.wants_send_if_idle(), "a BLOCKED frame is owed once output drains");
    p.a.set_report_blocked(true);
    buf.clear();
    assert!(p.a.poll_payload(&mut buf, 1 << 16));
    assert_eq!(controls(&buf), [Frame::Blocked { chan: b'E', limit: 4096 }]);
}

#[test]
fn unreliable_channels_skip_flow_control_and_a_paused_reader_drops_and_counts() {
    let config = MuxConfig {
        channel_window: 4096,
        conn_window: 8192,
        send_queue: 16384,
        ..MuxConfig::default()
    };
    let mut p = pair(b"UR", config);
    assert!(p.a.set_unreliable(b'U', 1000) && p.b.set_unreliable(b'U', 1000));
    assert!(!p.a.set_unreliable(b'Z', 1000), "no such channel");
    assert!(p.a.is_unreliable(b'U') && !p.a.is_unreliable(b'R'));
    // One message is one frame, at most the channel's limit.
    assert_eq!(write(&mut p.a, b'U', 1, vec![0; 1001]), Err(WriteError::TooLarge));
    let h = p.a.handle(b'U').unwrap();
    assert!(
        matches!(h.write(1, vec![0u8; 1001]), Err(crate::channel::HandleWriteError::TooLarge(_))),
        "handles see the limit too"
    );
    // Far more than the windows, with no credit ever coming back for it.
    for i in 0..100u32 {
        while write(&mut p.a, b'U', 1, i.to_be_bytes().repeat(250)) == Err(WriteError::WouldBlock) {
            drive(&mut p);
        }
    }
    drive(&mut p);
    assert_eq!(p.b_log.lock().iter().filter(|(id, _)| *id == b'U').count(), 100);
    // The reliable channel still has its whole window: U took none of the connection's.
    write(&mut p.a, b'R', 1, vec![5; 4096]).unwrap();
    drive(&mut p);
    assert_eq!(p.b_log.lock().iter().filter(|(id, _)| *id == b'R').count(), 1);
    // A reader that does not take them: the inbox fills to its bound, the rest is dropped.
    p.b.with_channel(b'U', |ch| ch.set_ready_to_read(false));
    for _ in 0..40 {
        while write(&mut p.a, b'U', 1, vec![1; 1000]) == Err(WriteError::WouldBlock) {
            drive(&mut p);
        }
    }
    drive(&mut p);
    assert_eq!(p.b.counters().unreliable_dropped, 40 - 16);
    p.b.with_channel(b'U', |ch| ch.set_ready_to_read(true));
    assert_eq!(p.b_log.lock().iter().filter(|(id, _)| *id == b'U').count(), 116);
    // A message over the channel's limit is a violation.
    let mut f = Vec::new();
    put_data_header(&mut f, b'U', 0, Some(1001), false, 1001);
    f.extend_from_slice(&[0; 1001]);
    assert_eq!(p.b.handle_payload(&f), Err(MuxError::MessageTooLarge { chan: b'U', total: 1001 }));
    // A fragment on an unreliable channel is a violation.
    let mut f = Vec::new();
    put_data_header(&mut f, b'U', 0, Some(10), true, 5);
    f.extend_from_slice(&[0; 5]);
    assert_eq!(p.b.handle_payload(&f), Err(MuxError::Fragment(b'U')));
}

#[test]
fn on_delete_names_the_session_that_ended_and_the_counters_follow_the_channel() {
    type Ended = Arc<Mutex<Vec<(u8, [u8; 16])>>>;
    struct Gone(Ended);
    impl ChannelHandler for Gone {
        fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
        fn on_delete(&mut self, id: u8, session: &SessionInfo) {
            self.0.lock().push((id, session.session_id));
        }
    }
    let gone = Arc::new(Mutex::new(Vec::new()));
    let mut procs = ChannelProcs::new();
    let g = gone.clone();
    procs.ch_proc_add(b'C', move |_| Box::new(Gone(g.clone()))).unwrap();
    let session = SessionInfo { session_id: [9; 16], client: None };
    let mut m = Mux::new(b"C", &procs, session, MuxConfig::default());
    let open = |p: &ChannelProcs| p.stats()[0].1.open;
    assert_eq!((procs.stats()[0].1.sessions, open(&procs)), (1, 1));
    m.close();
    assert_eq!(*gone.lock(), vec![(b'C', [9; 16])]);
    drop(m);
    assert_eq!((procs.stats()[0].1.sessions, open(&procs)), (1, 0));
}

#[test]
fn sealed_inputs_refuse_new_writes_and_still_send_what_was_queued() {
    let mut p = pair(b"A", MuxConfig::default());
    let h = p.a.handle(b'A').unwrap();
    h.write(1, &b"before"[..]).unwrap();
    // Going away: the transport seals before its CLOSE.
    p.a.seal_inputs();
    assert!(p.a.inputs_sealed());
    assert!(matches!(h.write(1, &b"after"[..]), Err(crate::HandleWriteError::Closed(_))));
    assert!(p.a.wants_send(), "what was accepted before the seal still goes");
    drive(&mut p);
    let got: Vec<Vec<u8>> = p.b_log.lock().iter().map(|(_, m)| m.data.to_vec()).collect();
    assert_eq!(got, vec![b"before".to_vec()]);
}

#[test]
fn after_stop_intake_nothing_held_reaches_a_handler() {
    let mut p = pair(b"A", MuxConfig::default());
    p.b_paused.lock().push(b'A');
    p.b.with_channel(b'A', |ch| ch.set_ready_to_read(false)).unwrap();
    write(&mut p.a, b'A', 1, b"held".to_vec()).unwrap();
    drive(&mut p);
    assert!(p.b_log.lock().is_empty(), "paused: the message waits in the inbox");
    p.b.stop_intake();
    p.b.with_channel(b'A', |ch| ch.set_ready_to_read(true)).unwrap();
    drive(&mut p);
    assert!(p.b_log.lock().is_empty(), "draining: the held message is not handed on");
}

/// One data frame of channel `E` as a payload: `first` names the message's total.
fn data_frame(first: Option<u32>, more: bool, len: usize) -> Vec<u8> {
    data_frame_on(b'E', first, more, len)
}

/// Unfinished messages are charged to the budget the muxes share, for the reassembly
/// buffer they reserve; one that would take it past its bound ends its stream (OverBudget),
/// whole messages and other streams carry on, and bytes come back when a message completes
/// or its mux goes.
#[test]
fn unfinished_messages_share_a_reassembly_budget() {
    let c = MuxConfig {
        channel_window: 1 << 20,
        conn_window: 1 << 20,
        max_message: 1 << 20,
        ..MuxConfig::default()
    };
    let budget = ReassemblyBudget::new(300_000);
    let mut one = pair(b"E", c);
    let mut two = pair(b"E", c);
    one.b.set_reassembly_budget(budget.clone());
    two.b.set_reassembly_budget(budget.clone());
    // The whole message fits the window: its buffer is reserved, and charged, at once.
    one.b.handle_payload(&data_frame(Some(200_000), true, 60_000)).unwrap();
    assert_eq!(budget.used(), 200_000);
    assert_eq!(one.b.partial_bytes(), 200_000);
    // The second stream's message does not fit: it ends, charging nothing.
    let e = two.b.handle_payload(&data_frame(Some(200_000), true, 60_000)).unwrap_err();
    assert_eq!(e, MuxError::OverBudget(b'E'));
    assert_eq!((budget.used(), budget.refused()), (200_000, 1));
    assert_eq!(two.b.counters().reassembly_refused, 1);
    // A whole message in one frame is never charged, even with the budget nearly spent.
    let mut three = pair(b"E", c);
    three.b.set_reassembly_budget(budget.clone());
    three.b.handle_payload(&data_frame(Some(150_000), false, 150_000)).unwrap();
    assert_eq!(three.b_log.lock().len(), 1);
    // The first message completes and all comes back.
    one.b.handle_payload(&data_frame(None, true, 30_000)).unwrap();
    assert_eq!(budget.used(), 200_000);
    one.b.handle_payload(&data_frame(None, false, 110_000)).unwrap();
    assert_eq!((budget.used(), one.b.partial_bytes()), (0, 0));
    assert_eq!(one.b_log.lock()[0].1.data.len(), 200_000);
    // A stream that goes with its message unfinished gives its bytes back.
    let mut four = pair(b"E", c);
    four.b.set_reassembly_budget(budget.clone());
    four.b.handle_payload(&data_frame(Some(200_000), true, 80_000)).unwrap();
    assert_eq!(budget.used(), 200_000);
    drop(four);
    assert_eq!((budget.used(), budget.peak()), (0, 200_000));
}

/// One data frame of channel `chan` as a payload.
fn data_frame_on(chan: u8, first: Option<u32>, more: bool, len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    put_data_header(&mut b, chan, 1, first, more, len);
    b.extend(std::iter::repeat_n(7u8, len));
    b
}

/// Windows of 1 MiB, and unfinished messages bounded at 150,000 bytes a session.
fn bounded_reassembly() -> MuxConfig {
    MuxConfig {
        channel_window: 1 << 20,
        conn_window: 1 << 20,
        max_message: 1 << 20,
        max_session_reassembly: 150_000,
        ..MuxConfig::default()
    }
}

/// One session's unfinished messages, all channels together, are bounded on their own:
/// past `max_session_reassembly` the stream ends, whatever the server's budget has left.
#[test]
fn a_session_holds_no_more_than_its_own_bound_in_unfinished_messages() {
    let c = bounded_reassembly();
    let mut p = pair(b"EF", c);
    p.b.handle_payload(&data_frame_on(b'E', Some(100_000), true, 10_000)).unwrap();
    assert_eq!(p.b.partial_bytes(), 100_000);
    let e = p.b.handle_payload(&data_frame_on(b'F', Some(100_000), true, 10_000)).unwrap_err();
    assert_eq!(e, MuxError::SessionOverBudget(b'F'));
    assert_eq!(p.b.counters().reassembly_refused, 1);
    assert_eq!(p.b.partial_bytes(), 100_000);
    // Whole messages are not unfinished ones: they pass.
    let mut q = pair(b"EF", c);
    q.b.handle_payload(&data_frame_on(b'E', Some(100_000), true, 10_000)).unwrap();
    q.b.handle_payload(&data_frame_on(b'F', Some(90_000), false, 90_000)).unwrap();
    assert_eq!(q.b_log.lock().len(), 1);
}

/// A frame passed in pieces (as the UDP engine passes it) meets the rules of the whole
/// frame: a one-frame message is not charged to the reassembly bounds (a whole one would
/// not be), a longer message is from its first frame on, and a one-frame frame whose
/// length is not its message's total is refused on its first piece.
#[test]
fn frames_in_pieces_are_charged_as_whole_frames() {
    let c = bounded_reassembly();
    let pieces = |m: &mut Mux, first: Option<u32>, more: bool, len: usize| {
        let data = vec![7u8; len];
        let mut off = 0;
        for (k, chunk) in data.chunks(1_000).enumerate() {
            off += chunk.len();
            let piece = Piece { frame_len: Some(len), last: off == len };
            let f = if k == 0 { first } else { None };
            m.handle_data(b'E', 1, f, more, chunk, piece)?;
        }
        m.deliver();
        Ok::<(), MuxError>(())
    };
    let mut p = pair(b"E", c);
    // A 200,000-byte one-frame message, over the session's bound, in 200 pieces.
    pieces(&mut p.b, Some(200_000), false, 200_000).unwrap();
    assert_eq!(p.b.partial_bytes(), 0);
    assert_eq!(p.b_log.lock().len(), 1);
    assert_eq!(p.b_log.lock()[0].1.data.len(), 200_000);
    // A two-frame message: charged from its first frame until it completes.
    pieces(&mut p.b, Some(140_000), true, 100_000).unwrap();
    assert_eq!(p.b.partial_bytes(), 140_000);
    pieces(&mut p.b, None, false, 40_000).unwrap();
    assert_eq!(p.b.partial_bytes(), 0);
    assert_eq!(p.b_log.lock().len(), 2);
    // A one-frame frame announcing more than its message: refused at once.
    let mut q = pair(b"E", c);
    let piece = Piece { frame_len: Some(5_000), last: false };
    let e = q.b.handle_data(b'E', 1, Some(4_000), false, &[7; 1_000], piece).unwrap_err();
    assert_eq!(e, MuxError::Fragment(b'E'));
}

/// An unfinished message that gains no frame within the partial timeout is reported,
/// however busy the session's other channels are.
#[test]
fn an_unfinished_message_idle_past_the_partial_timeout_is_reported() {
    let c = MuxConfig {
        channel_window: 1 << 20,
        conn_window: 1 << 20,
        partial_timeout: std::time::Duration::from_secs(30),
        ..MuxConfig::default()
    };
    let s = std::time::Duration::from_secs;
    let t0 = std::time::Instant::now();
    let mut p = pair(b"EF", c);
    p.b.set_clock(t0);
    assert_eq!(p.b.partial_deadline(), None);
    p.b.handle_payload(&data_frame_on(b'E', Some(100_000), true, 10_000)).unwrap();
    assert_eq!(p.b.partial_deadline(), Some(t0 + s(30)));
    // Whole messages on F keep arriving; E's message does not move.
    for i in 1..=5 {
        p.b.set_clock(t0 + s(5 * i));
        p.b.handle_payload(&data_frame_on(b'F', Some(10), false, 10)).unwrap();
    }
    assert_eq!(p.b.stalled_partial(t0 + s(29)), None);
    assert_eq!(p.b.stalled_partial(t0 + s(30)), Some(b'E'));
    assert_eq!(p.b.counters().partial_timeouts, 1);
    // A frame for the message moves its deadline.
    let mut q = pair(b"E", c);
    q.b.set_clock(t0);
    q.b.handle_payload(&data_frame_on(b'E', Some(100_000), true, 10_000)).unwrap();
    q.b.set_clock(t0 + s(25));
    q.b.handle_payload(&data_frame_on(b'E', None, true, 10_000)).unwrap();
    assert_eq!(q.b.stalled_partial(t0 + s(30)), None);
    assert_eq!(q.b.partial_deadline(), Some(t0 + s(55)));
    // Completed, nothing is left to time out.
    q.b.handle_payload(&data_frame_on(b'E', None, false, 80_000)).unwrap();
    assert_eq!((q.b.partial_deadline(), q.b.stalled_partial(t0 + s(100))), (None, None));
}

#[test]
fn an_echo_whose_replies_are_not_taken_stops_growing_its_window() {
    // b echoes on E (the real handler); a sends 200 KB messages, and BLOCKED whenever out
    // of credit, but never takes b's replies (it grants b nothing past the first window).
    let config = MuxConfig::default();
    let mut procs = ChannelProcs::new();
    crate::echo::register(&mut procs);
    let mut b = Mux::new(b"E", &procs, info(), config);
    b.start(Arc::new(NoWake));
    let msg = 200_000usize;
    // Every frame a will send: 16 KiB pieces of 100 messages, and their payload sizes.
    let mut frames = std::collections::VecDeque::new();
    for _ in 0..100 {
        let mut off = 0;
        while off < msg {
            let n = (msg - off).min(16 << 10);
            let first = (off == 0).then_some(msg as u32);
            frames.push_back((data_frame_on(b'E', first, off + n < msg, n), n as u64));
            off += n;
        }
    }
    let (mut limit, mut conn_limit) = (config.channel_window as u64, config.conn_window as u64);
    let mut sent = 0u64;
    for _ in 0..10_000 {
        let mut progress = false;
        while let Some((f, n)) = frames.front() {
            if sent + n > limit.min(conn_limit) {
                break;
            }
            b.handle_payload(f).unwrap();
            sent += n;
            frames.pop_front();
            progress = true;
        }
        if !frames.is_empty() {
            let mut f = Vec::new();
            put_blocked(&mut f, b'E', limit);
            put_blocked(&mut f, 0, conn_limit);
            b.handle_payload(&f).unwrap();
        }
        // b's output: its CREDIT frames are read; its data is dropped, never credited.
        let mut buf = Vec::new();
        while b.poll_payload(&mut buf, 1 << 16) {
            for f in controls(&buf) {
                match f {
                    Frame::Credit { chan: b'E', limit: l } => {
                        progress |= l > limit;
                        limit = limit.max(l);
                    }
                    Frame::Credit { chan: 0, limit: l } => conn_limit = conn_limit.max(l),
                    _ => {}
                }
            }
            buf.clear();
        }
        if !progress {
            break;
        }
    }
    // The echo's window grew at most once, before its first reply met a's credit (16 MiB
    // without the rule); what b granted past it is what Echo took.
    let window = b.recv_window(b'E').unwrap();
    assert!(window <= 2 * config.channel_window as u64, "window {window}");
    let delivered = b.counters().messages_in * msg as u64;
    assert!(limit <= delivered + window + msg as u64, "granted {limit}, delivered {delivered}");
}

/// A channel's received bytes reach its shared counters by the time each message is handed
/// over (counted in pieces in between, not with an atomic per piece), and whatever is left
/// when the session ends.
#[test]
fn bytes_received_are_counted_by_each_delivery_and_at_the_end() {
    struct Sink;
    impl ChannelHandler for Sink {
        fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
    }
    let mut procs = ChannelProcs::new();
    procs.ch_proc_add(b'E', |_| Box::new(Sink)).unwrap();
    let mut m = Mux::new(b"E", &procs, info(), MuxConfig::default());
    let bytes_in = |p: &ChannelProcs| p.stats()[0].1.bytes_in;
    let messages_in = |p: &ChannelProcs| p.stats()[0].1.messages_in;
    // A 10,000-byte message in pieces of 1,000: nothing counted until it is handed over.
    for k in 0..10 {
        let piece = Piece { frame_len: Some(10_000), last: k == 9 };
        let first = (k == 0).then_some(10_000);
        m.handle_data(b'E', 1, first, false, &[7; 1_000], piece).unwrap();
    }
    m.deliver();
    assert_eq!((bytes_in(&procs), messages_in(&procs)), (10_000, 1));
    // Half of the next message, then the session ends: its bytes are counted too.
    for k in 0..5 {
        let piece = Piece { frame_len: Some(10_000), last: false };
        let first = (k == 0).then_some(10_000);
        m.handle_data(b'E', 1, first, false, &[7; 1_000], piece).unwrap();
    }
    m.close();
    drop(m);
    assert_eq!((bytes_in(&procs), messages_in(&procs)), (15_000, 1));
}
