//! `dap-bench proc`: the dap-proc pool against a plain crossbeam-channel pool, and the
//! reactor → proc → reactor flip latency.
//!
//! Throughput: 4 producer threads submit empty jobs (each bumps one shared counter, the same
//! work for both pools) to a pool of as many threads as there are CPUs; the figure is jobs
//! completed per second from the first submit to the last completion. Contenders alternate
//! over the rounds and the median ratio is reported.
//!
//! Flip latency: one reactor worker with its paired proc thread, both pinned to CPU 0; an
//! esocket callback flips an empty closure to the proc thread and times the moment its result
//! callback runs back on the worker, then starts the next flip from there.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dap_proc::{Flip, Next, Priority, ProcPool};
use dap_reactor::{Esocket, Handler, Reactor};

const PRODUCERS: usize = 4;
const WAIT: Duration = Duration::from_secs(120);

/// Options of `dap-bench proc`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProcArgs {
    /// Jobs per producer per round.
    #[arg(long, default_value_t = 500_000)]
    pub jobs: usize,
    /// Rounds (contenders alternate; the median ratio is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Flips timed for the latency figure.
    #[arg(long, default_value_t = 20_000)]
    pub flips: usize,
}

fn wait_for(counter: &AtomicUsize, target: usize) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return Err(format!("only {} of {target} jobs ran", counter.load(Ordering::Relaxed)));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Runs `PRODUCERS` threads that each call `submit` `per_producer` times with a job that
/// bumps the shared counter, then waits until every job ran; returns jobs per second.
fn drive<S>(per_producer: usize, submit: S) -> Result<f64, String>
where
    S: Fn(Arc<AtomicUsize>) -> Result<(), String> + Send + Sync + 'static,
{
    let submit = Arc::new(submit);
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (submit, done) = (submit.clone(), done.clone());
            std::thread::spawn(move || (0..per_producer).try_for_each(|_| submit(done.clone())))
        })
        .collect();
    for p in producers {
        p.join().map_err(|_| "producer panicked")??;
    }
    wait_for(&done, PRODUCERS * per_producer)?;
    Ok((PRODUCERS * per_producer) as f64 / start.elapsed().as_secs_f64())
}

/// Jobs per second through a dap-proc pool.
fn ours(threads: usize, per_producer: usize) -> Result<f64, String> {
    let pool = Arc::new(ProcPool::builder().threads(threads).start().map_err(|e| e.to_string())?);
    let submitter = pool.clone();
    let rate = drive(per_producer, move |done| {
        let job = move || {
            done.fetch_add(1, Ordering::Relaxed);
            Next::Done
        };
        submitter.auto().submit_timeout(Priority::Normal, job, WAIT).map_err(|e| e.to_string())
    });
    pool.stop_cancel();
    pool.wait();
    rate
}

type BoxJob = Box<dyn FnOnce() + Send>;

/// Jobs per second through a plain pool: N threads receiving from one bounded
/// crossbeam channel (the same capacity as the dap pool's queues).
fn crossbeam(threads: usize, per_producer: usize) -> Result<f64, String> {
    let (tx, rx) = crossbeam_channel::bounded::<BoxJob>(8_192 * threads);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
        })
        .collect();
    let sender = tx.clone();
    let rate = drive(per_producer, move |done| {
        let job: BoxJob = Box::new(move || {
            done.fetch_add(1, Ordering::Relaxed);
        });
        sender.send_timeout(job, WAIT).map_err(|_| "send failed".to_owned())
    });
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    rate
}

/// Flips back to back on one esocket, recording each round trip.
struct Flipper {
    left: usize,
    samples: crossbeam_channel::Sender<Duration>,
}

fn flip_next(es: &mut Esocket<'_>, left: usize, samples: crossbeam_channel::Sender<Duration>) {
    if left == 0 {
        es.close_now();
        return;
    }
    let started = Instant::now();
    let flipped = es.flip(
        Priority::Normal,
        || (),
        move |es, ()| {
            let _ = samples.send(started.elapsed());
            flip_next(es, left - 1, samples);
        },
    );
    if flipped.is_err() {
        es.close_now();
    }
}

impl Handler for Flipper {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        flip_next(es, self.left, self.samples.clone());
    }
}

/// p50 and p99 flip latency in microseconds.
fn flip_latency(flips: usize) -> Result<(f64, f64), String> {
    let cpu0 = dap_reactor::allowed_cpus()[0];
    let reactor =
        Reactor::builder().threads(1).cpus(vec![cpu0]).start().map_err(|e| e.to_string())?;
    let _pool = ProcPool::builder().start_for(&reactor).map_err(|e| e.to_string())?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let (a, _b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let warmup = 1_000;
    reactor.workers()[0]
        .exec(move |w| {
            let _ = w.adopt_unix(a, Box::new(Flipper { left: flips + warmup, samples: tx }));
        })
        .map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(flips);
    for i in 0..flips + warmup {
        let d = rx.recv_timeout(WAIT).map_err(|_| format!("flip {i} never came back"))?;
        if i >= warmup {
            samples.push(d);
        }
    }
    samples.sort();
    let us = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    reactor.shutdown(Duration::from_secs(1));
    Ok((us(0.50), us(0.99)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison, prints the table, and returns the RESULT pairs.
pub fn run(opts: &ProcArgs) -> Result<Vec<(String, String)>, String> {
    let threads = dap_reactor::allowed_cpus().len().max(1);
    println!(
        "proc: {PRODUCERS} producers x {} empty jobs, pools of {threads} thread(s), {} round(s)",
        opts.jobs, opts.rounds
    );
    println!("{:<8} {:>14} {:>16} {:>8}", "round", "dap jobs/s", "crossbeam jobs/s", "ratio");
    let (mut ours_all, mut theirs_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..opts.rounds.max(1) {
        let (o, c) = if round % 2 == 0 {
            let o = ours(threads, opts.jobs)?;
            (o, crossbeam(threads, opts.jobs)?)
        } else {
            let c = crossbeam(threads, opts.jobs)?;
            (ours(threads, opts.jobs)?, c)
        };
        println!("{:<8} {:>14.0} {:>16.0} {:>8.3}", round + 1, o, c, o / c);
        ours_all.push(o);
        theirs_all.push(c);
        ratios.push(o / c);
    }
    let (p50, p99) = flip_latency(opts.flips)?;
    println!(
        "flip reactor -> proc -> reactor over {} flips: p50 {p50:.1} us, p99 {p99:.1} us",
        opts.flips
    );
    Ok(vec![
        ("jobs_per_s".into(), format!("{:.0}", median(ours_all))),
        ("crossbeam_jobs_per_s".into(), format!("{:.0}", median(theirs_all))),
        ("ratio".into(), format!("{:.3}", median(ratios))),
        ("flip_p50_us".into(), format!("{p50:.1}")),
        ("flip_p99_us".into(), format!("{p99:.1}")),
    ])
}
