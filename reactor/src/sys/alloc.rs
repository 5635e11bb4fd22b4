//! Giving freed heap memory back to the kernel.
//!
//! glibc's allocator keeps what a burst freed in its arenas (with 64 KiB buffers, in the
//! middle of the heap where ordinary trimming never reaches), so a daemon that served a
//! flood of connections keeps their memory resident long after they closed. `malloc_trim`
//! returns every whole free page of every arena to the kernel (`MADV_DONTNEED`); it walks
//! the arenas, so it is called only when there is much to gain.

/// Free bytes the allocator holds in its arenas, if the allocator can say (glibc).
pub(crate) fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; it only
        // reads the allocator's own statistics under its locks.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns free arena pages to the kernel; true if any were.
pub(crate) fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(0) only releases memory the allocator holds as free; it takes
        // the arena locks itself and touches no memory the program owns.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
