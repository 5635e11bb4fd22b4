//! Jobs, their outcome and their priority.

/// What a job asks for when it returns.
///
/// An enum rather than DAP's `bool`, whose meaning flipped between DAP versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Next {
    /// Finished; drop the job.
    Done,
    /// Run me again, behind the work already queued at my priority.
    Again,
}

/// Job priority. Higher runs first, but waiting raises a job's claim (see the crate docs on
/// aging), so no priority starves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Only when nothing else is waiting for long.
    Idle,
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Latency-sensitive work.
    High,
    /// Work that must run next.
    Critical,
}

impl Priority {
    /// Number of priorities.
    pub const COUNT: usize = 5;

    /// All priorities, lowest first.
    pub const ALL: [Priority; Priority::COUNT] =
        [Priority::Idle, Priority::Low, Priority::Normal, Priority::High, Priority::Critical];

    /// Stable index, 0 (idle) to 4 (critical).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A queued job.
pub type Job = Box<dyn FnMut() -> Next + Send>;
