//! The flip: work on the paired proc thread, result back on the esocket's own worker.

use dap_reactor::{Esocket, EsocketHandle, ExecFn, PostError, Worker, WorkerCtx};

use crate::job::{Next, Priority};
use crate::thread::{ProcThread, SubmitError};

/// Why a flip could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlipError {
    /// No proc pool is paired with this worker (start one with
    /// [`ProcPool::for_reactor`](crate::ProcPool::for_reactor)).
    #[error("no proc thread is paired with this worker")]
    NoProcThread,
    /// The proc thread's queue for this priority is full.
    #[error("the proc queue is full")]
    Full,
    /// The proc pool is stopping.
    #[error("the proc pool is stopped")]
    Stopped,
}

/// Finds the proc thread paired with a worker.
pub trait ProcExt {
    /// The proc thread sharing this worker's CPU, if a pool was started for the reactor.
    fn proc(&self) -> Option<ProcThread>;
}

impl ProcExt for Worker {
    fn proc(&self) -> Option<ProcThread> {
        self.extension::<ProcThread>().map(|t| (*t).clone())
    }
}

impl ProcExt for WorkerCtx {
    fn proc(&self) -> Option<ProcThread> {
        self.extension::<ProcThread>().map(|t| (*t).clone())
    }
}

/// Hands work from an esocket callback to the paired proc thread and back.
pub trait Flip {
    /// Runs `work` on the proc thread paired with this esocket's worker, then `then` with its
    /// result on the esocket's own worker, with `&mut` access to the esocket (output written
    /// there is flushed as from any callback). If the esocket has closed by then, `then` is
    /// dropped unrun and the worker counts it in `WorkerStats::dropped_dead`. If the worker's
    /// inbox is full, delivery is retried behind other proc work. `then` does not run if
    /// `work` panics (counted in `ProcStats::panics`) or if a pool stop cancels the job
    /// (counted in `ProcStats::cancelled`).
    ///
    /// # Errors
    /// No paired proc thread, or its queue is full or stopped; `work` does not run.
    fn flip<R, W, T>(&mut self, priority: Priority, work: W, then: T) -> Result<(), FlipError>
    where
        R: Send + 'static,
        W: FnOnce() -> R + Send + 'static,
        T: FnOnce(&mut Esocket<'_>, R) + Send + 'static;
}

enum Stage<W, T> {
    Work(W, T),
    Deliver(ExecFn),
    Finished,
}

impl Flip for Esocket<'_> {
    fn flip<R, W, T>(&mut self, priority: Priority, work: W, then: T) -> Result<(), FlipError>
    where
        R: Send + 'static,
        W: FnOnce() -> R + Send + 'static,
        T: FnOnce(&mut Esocket<'_>, R) + Send + 'static,
    {
        let proc = self.worker().proc().ok_or(FlipError::NoProcThread)?;
        let handle = self.handle();
        let mut stage = Stage::Work(work, then);
        let job = move || {
            let deliver = match std::mem::replace(&mut stage, Stage::Finished) {
                Stage::Work(work, then) => {
                    let result = work();
                    Box::new(move |es: &mut Esocket<'_>| then(es, result)) as ExecFn
                }
                Stage::Deliver(f) => f,
                Stage::Finished => return Next::Done,
            };
            match deliver_to(handle, deliver) {
                Some(f) => {
                    stage = Stage::Deliver(f);
                    Next::Again
                }
                None => Next::Done,
            }
        };
        proc.submit(priority, job).map_err(|e| match e {
            SubmitError::Full(_) => FlipError::Full,
            SubmitError::Stopped(_) => FlipError::Stopped,
        })
    }
}

/// Posts the result; hands it back if the worker's inbox is full.
fn deliver_to(handle: EsocketHandle, f: ExecFn) -> Option<ExecFn> {
    match handle.try_exec(f) {
        Ok(()) => None,
        Err((PostError::Full, f)) => Some(f),
        Err((_, _)) => {
            tracing::debug!(?handle, "flip result dropped: the worker has stopped");
            None
        }
    }
}
