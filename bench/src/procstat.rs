//! Linux process helpers: CPU affinity, `/proc` readings (CPU time, RSS) and fd limits.
//!
//! Everything here is Linux-only and works on plain `/proc` text, so the harness needs no
//! extra crates to observe the servers it measures.

use std::fs;
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

/// Pins the calling thread to one CPU. Children spawned afterwards inherit the mask.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin_current_thread_cpus(&[cpu])
}

/// Restricts the calling thread to the given CPUs. Children spawned afterwards inherit the
/// mask.
pub fn pin_current_thread_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is a plain bit array for which all-zeroes is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpus.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty cpu list"));
    }
    for &cpu in cpus {
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu index out of range"));
        }
        // SAFETY: `CPU_SET` only writes the bit for `cpu` inside `set`; `cpu` was checked
        // against the set's capacity above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 means the calling thread; `set` is a valid, initialised `cpu_set_t` and
    // the size passed is its exact size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether CPUs 0 and 1 are both available for pinning, judged from the affinity mask the
/// process started with (the first call caches the answer: call it before pinning anything).
pub fn can_pin_two_cpus() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        // SAFETY: all-zeroes is a valid empty `cpu_set_t`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; `set` is writable and its exact size is passed.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        // SAFETY: `CPU_ISSET` only reads the initialised `set`, at indexes within its capacity.
        rc == 0 && unsafe { libc::CPU_ISSET(0, &set) && libc::CPU_ISSET(1, &set) }
    })
}

/// `Cpus_allowed_list` of a process, as the kernel prints it (e.g. `0` or `0-1`).
pub fn cpus_allowed_list(pid: u32) -> String {
    status_field(pid, "Cpus_allowed_list:").unwrap_or_else(|| "?".to_string())
}

/// Whether a process has a handler installed for signal `sig` (bit `sig - 1` of `SigCgt` in
/// `/proc/PID/status`). False when the process is gone or the field is unreadable.
pub fn catches_signal(pid: u32, sig: i32) -> bool {
    if !(1..=64).contains(&sig) {
        return false;
    }
    status_field(pid, "SigCgt:")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0)
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn vm_rss_kib(pid: u32) -> io::Result<u64> {
    let v = status_field(pid, "VmRSS:")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no VmRSS (process gone?)"))?;
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad VmRSS line"))
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `utime`/`stime` in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: `sysconf` has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// CPU time (user + system, all threads) a process has used so far.
///
/// Read from `/proc/PID/stat`; its resolution is one clock tick (10 ms at 100 Hz).
pub fn process_cpu_time(pid: u32) -> io::Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: parse after the
    // last ')'. Then fields are: state(3) ... utime(14) stime(15).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat field"))
    };
    // `rest` starts at field 3, so field N is at index N - 3.
    let ticks = get(14 - 3)? + get(15 - 3)?;
    let hz = clock_ticks_per_sec();
    Ok(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
}

/// Busy time (user, nice, system, irq, softirq, steal: everything but idle and iowait) of
/// the given CPUs so far, from `/proc/stat`. Busy time on the benchmark CPUs that neither the
/// server nor the load generator accounts for is another process competing with the run.
pub fn cpus_busy_time(cpus: &[usize]) -> io::Result<Duration> {
    let text = fs::read_to_string("/proc/stat")?;
    let mut ticks = 0u64;
    for cpu in cpus {
        let key = format!("cpu{cpu} ");
        let line = text.lines().find(|l| l.starts_with(&key)).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no {key}in /proc/stat"))
        })?;
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal ...
        ticks += [0, 1, 2, 5, 6, 7].iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum::<u64>();
    }
    let hz = clock_ticks_per_sec();
    Ok(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
}

/// CPU time used by the calling thread (nanosecond resolution).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable `timespec`; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid `rlimit` with soft <= hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// CPU time (user + system) of all children of this process that have been waited for.
///
/// The difference across one child's lifetime (spawn to `wait`) is that child's CPU time,
/// provided no other child is reaped in between.
pub fn reaped_children_cpu_time() -> Duration {
    // SAFETY: all-zeroes is a valid `rusage` (plain integers and timevals).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`; RUSAGE_CHILDREN is a constant the kernel knows.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
