//! Pinning the calling thread to one CPU.

use std::io;

/// CPUs this process may run on, in ascending order (honours `taskset` and cgroups).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        // Unknown: fall back to the count std sees, numbered from zero.
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        ids = (0..n).collect();
    }
    ids
}

/// The largest CPU index a `cpu_set_t` can name; larger ids fail without a syscall.
const CPU_SETSIZE: usize = 1024;

/// Pins the calling thread to `cpu`.
///
/// # Errors
/// `InvalidInput` when the id cannot be expressed, `Other` when the kernel refuses (the CPU is
/// offline, outside this process's cpuset, or does not exist).
pub(crate) fn pin_current(cpu: usize) -> io::Result<()> {
    if cpu >= CPU_SETSIZE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu} out of range")));
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(io::Error::other(format!("the kernel refused to pin this thread to cpu {cpu}")))
    }
}

/// Sets the calling thread's nice value (on Linux each thread has its own).
pub(crate) fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // SAFETY: setpriority reads only its three integer arguments; with PRIO_PROCESS and a
    // thread id, Linux changes that one thread's nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_to_an_allowed_cpu_works_and_a_bogus_one_fails() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        std::thread::spawn(move || {
            pin_current(cpus[0]).unwrap();
            assert!(pin_current(5000).is_err());
            assert!(pin_current(CPU_SETSIZE - 1).is_err());
        })
        .join()
        .unwrap();
    }

    /// This thread's nice value, from `/proc/thread-self/stat` (field 19).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) may hold spaces: count from its closing parenthesis.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn nice_changes_the_calling_thread_only() {
        let before = own_nice();
        std::thread::spawn(move || {
            set_nice(before + 3).unwrap();
            assert_eq!(own_nice(), before + 3);
        })
        .join()
        .unwrap();
        assert_eq!(own_nice(), before);
    }
}
