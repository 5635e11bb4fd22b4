//! Operating-system helpers that mio does not cover: CPU pinning, eventfd, resource limits,
//! batched UDP with offloads.
//!
//! Everything here is Linux-first (the reactor is built on epoll); each helper is small,
//! fallible, and returns `io::Result`.

pub(crate) mod affinity;
pub(crate) mod alloc;
pub(crate) mod eventfd;
pub(crate) mod rlimit;
pub(crate) mod udp;
