//! `dap-cli bench`: K connections each reach streaming (the set-up latency), then push
//! their share of N bytes through an echo channel with a bounded window in flight (the
//! throughput of bytes echoed back).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_client::{Client, ClientConfig, Stage, WriteError};
use dap_reactor::Reactor;
use dap_stream::ChannelProcs;
use parking_lot::Mutex;

use crate::{Fail, fail};

/// `bench`'s options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The echo channel.
    #[arg(long, default_value = "E")]
    channel: char,
    /// Bytes to echo in all (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    bytes: u64,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Bytes per message.
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    msg_size: u64,
    /// Bytes in flight per connection (sent, not yet echoed).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    window: u64,
    /// Client worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    max_seconds: f64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64K, 1M)"))?;
    n.checked_mul(mult).filter(|&n| n > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

struct Conn {
    client: Client,
    sent: u64,
    echoed: Arc<AtomicU64>,
    total: u64,
}

pub(crate) fn run(cfg: ClientConfig, timeout: Duration, a: &Args) -> Result<(), Fail> {
    let ch = crate::channel_id(a.channel).map_err(|f| fail(f.text))?;
    let conns = a.conns.max(1);
    let msg_size = usize::try_from(a.msg_size).map_err(|_| fail("--msg-size too large"))?;
    let give_up = Instant::now() + Duration::from_secs_f64(a.max_seconds.max(1.0));
    let reactor = Reactor::builder()
        .threads(a.threads.max(1))
        .pin(false)
        .start()
        .map_err(|e| fail(format!("cannot start the reactor: {e}")))?;
    let _ = dap_reactor::raise_fd_limit();
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);

    // Set-up: every connection climbs to streaming at once.
    let setups = Arc::new(Mutex::new(Vec::with_capacity(conns)));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let mut all = Vec::with_capacity(conns);
    let per_conn = a.bytes.div_ceil(conns as u64);
    for i in 0..conns {
        let w = &reactor.workers()[i % reactor.len()];
        let client = Client::new(w, cfg.clone().channels(&[ch]), ChannelProcs::new())?;
        let echoed = Arc::new(AtomicU64::new(0));
        let (e, wake) = (echoed.clone(), wake_tx.clone());
        client.on_message(move |_, m| {
            e.fetch_add(m.data.len() as u64, Ordering::Relaxed);
            let _ = wake.try_send(());
        });
        all.push(Conn { client, sent: 0, echoed, total: per_conn });
    }
    let start = Instant::now();
    for c in &all {
        let (setups, done) = (setups.clone(), done_tx.clone());
        c.client.go_stage(Stage::StreamStreaming, move |r| {
            setups.lock().push(start.elapsed());
            let _ = done.send(r);
        });
    }
    let setup_bound = timeout * 24 + Duration::from_secs(5);
    for _ in 0..conns {
        match done_rx.recv_timeout(setup_bound) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(crate::timed_out("connections did not reach streaming in time")),
        }
    }
    let setup_all = start.elapsed();
    let mut setup = setups.lock().clone();
    setup.sort();

    // Transfer.
    let payload = Bytes::from(vec![0x5a; msg_size]);
    let total: u64 = all.iter().map(|c| c.total).sum();
    let progress = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut last_draw = t0;
    // Ctrl-C (or SIGTERM) ends the transfer early: the result so far is still printed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let mut interrupted = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let mut finished = true;
        for c in &mut all {
            let echoed = c.echoed.load(Ordering::Relaxed);
            while c.sent < c.total && c.sent - echoed < a.window {
                let len = (c.total - c.sent).min(msg_size as u64) as usize;
                match c.client.write(ch, 0, payload.slice(..len)) {
                    Ok(()) => c.sent += len as u64,
                    Err(WriteError::Full(_)) => break,
                    Err(e) => return Err(lost(&c.client, e)),
                }
            }
            finished &= echoed >= c.total;
        }
        if finished {
            break;
        }
        if Instant::now() > give_up {
            return Err(crate::timed_out("--max-seconds passed before the transfer finished"));
        }
        if all.iter().any(|c| !c.client.is_streaming()) {
            let c = all.iter().find(|c| !c.client.is_streaming()).expect("found above");
            return Err(lost(&c.client, "the stream ended"));
        }
        let _ = wake_rx.recv_timeout(Duration::from_millis(1));
        if progress && last_draw.elapsed() > Duration::from_millis(100) {
            last_draw = Instant::now();
            let done: u64 = all.iter().map(|c| c.echoed.load(Ordering::Relaxed)).sum();
            draw(done, total, t0.elapsed());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let total = if interrupted {
        all.iter().map(|c| c.echoed.load(Ordering::Relaxed)).sum()
    } else {
        total
    };
    if progress {
        draw(total, total, t0.elapsed());
        eprintln!();
    }
    if interrupted {
        eprintln!("dap-cli: interrupted: the figures below cover the transfer so far");
    }
    let mbs = total as f64 / secs / 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| setup[((setup.len() - 1) as f64 * p).round() as usize];
    println!("connections        {conns}");
    println!("bytes echoed       {total} ({:.1} MiB)", total as f64 / (1u64 << 20) as f64);
    println!("message size       {msg_size}");
    println!("set-up p50         {:.3} ms", ms(pct(0.5)));
    println!("set-up p99         {:.3} ms", ms(pct(0.99)));
    println!("set-up max         {:.3} ms", ms(setup[setup.len() - 1]));
    println!("all streaming in   {:.3} ms", ms(setup_all));
    println!("throughput         {mbs:.1} MB/s ({:.3} s)", secs);
    println!(
        "RESULT conns={conns} bytes={total} msg_size={msg_size} setup_p50_ms={:.3} setup_p99_ms={:.3} setup_all_ms={:.3} mbs={mbs:.1}{}",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(setup_all),
        if interrupted { " partial=1" } else { "" }
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

fn lost(client: &Client, what: impl std::fmt::Display) -> Fail {
    match client.last_error() {
        Some(e) => e.into(),
        None => fail(format!("{what}")),
    }
}

fn draw(done: u64, total: u64, elapsed: Duration) {
    const WIDTH: usize = 30;
    let frac = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6;
    eprint!(
        "\r[{}{}] {:>5.1}% {:>8.1} MB/s",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        frac * 100.0,
        rate
    );
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
