//! The UDP socket layer, on `libc`: options for ECN, destination addresses, GRO and
//! don't-fragment; `sendmsg` with `UDP_SEGMENT` (GSO), falling back to `sendmmsg` with one
//! message per segment where the kernel refuses; `recvmmsg` with control messages.
//!
//! The design follows quinn-udp's: options are set once and each one the kernel refuses is
//! done without (remembered and counted, never fatal); GSO is probed at set-up and turned off
//! for good the first time the kernel refuses a segmented send, so a kernel, driver or
//! tunnel without it costs one failed call, not one per send.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_int;
use socket2::{Domain, SockAddr, SockRef, Type};

use crate::udp::{Datagrams, Ecn, UdpOptions, UdpStats, UdpTransmit};

/// The kernel's limit on segments in one GSO send (`UDP_MAX_SEGMENTS`).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// The most messages one `recvmmsg` asks for (the headers live on the stack).
pub(crate) const MAX_RECV_BATCH: usize = 64;
/// A receive slot: the largest UDP payload, which is also the most a GRO run coalesces to.
pub(crate) const RECV_SLOT: usize = 65_536;
/// The most payload one GSO send carries here: below both kernels' limits (IPv4: 65,535 less
/// the IP and UDP headers, 65,507; IPv6, whose length field leaves its own header out:
/// 65,527), with room to spare.
const GSO_MAX_BYTES: usize = 65_487;
/// Control-message room per datagram: on send ECN, source address and segment size; on
/// receive TOS / traffic class, packet info and the GRO segment size (88 bytes at most),
/// with margin.
const CMSG_CAP: usize = 256;

/// Plain data the kernel reads or writes as bytes.
///
/// # Safety
/// Every bit pattern, all zeroes included, must be a valid value of the type.
unsafe trait Pod: Copy {}
// SAFETY: an integer; any bits are a value.
unsafe impl Pod for c_int {}
// SAFETY: an integer; any bits are a value.
unsafe impl Pod for u8 {}
// SAFETY: an integer; any bits are a value.
unsafe impl Pod for u16 {}
// SAFETY: a C struct of integers.
unsafe impl Pod for libc::cmsghdr {}
// SAFETY: a C struct of integers.
unsafe impl Pod for libc::in_pktinfo {}
// SAFETY: a C struct of integers and byte arrays.
unsafe impl Pod for libc::in6_pktinfo {}
// SAFETY: a C struct of integers and byte arrays.
unsafe impl Pod for libc::sockaddr_in {}
// SAFETY: a C struct of integers and byte arrays.
unsafe impl Pod for libc::sockaddr_in6 {}
// SAFETY: a C struct of integers and byte arrays.
unsafe impl Pod for libc::sockaddr_storage {}
// SAFETY: a pointer and a length; raw pointers may hold any bits (null included).
unsafe impl Pod for libc::iovec {}
// SAFETY: integers and raw pointers; raw pointers may hold any bits (null included).
unsafe impl Pod for libc::msghdr {}
// SAFETY: a msghdr and an integer.
unsafe impl Pod for libc::mmsghdr {}
// SAFETY: arrays of plain data are plain data.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

fn zeroed<T: Pod>() -> T {
    // SAFETY: `Pod` promises that all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Reads a `T` from the start of `bytes`, if they are long enough.
fn read_pod<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least `size_of::<T>()` initialised bytes (checked above);
    // `read_unaligned` needs no alignment; `Pod` makes any bits a valid `T`.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Writes `value` at the start of `bytes` (a bug, not input, if they are too short).
fn write_pod<T: Pod>(bytes: &mut [u8], value: T) {
    let dst = &mut bytes[..size_of::<T>()];
    // SAFETY: `dst` is exactly `size_of::<T>()` writable bytes; `write_unaligned` needs no
    // alignment.
    unsafe { ptr::write_unaligned(dst.as_mut_ptr().cast::<T>(), value) }
}

const fn cmsg_align(n: usize) -> usize {
    (n + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}
/// Bytes from a control message's start to its data (`CMSG_LEN(0)`).
const CMSG_HDR: usize = cmsg_align(size_of::<libc::cmsghdr>());
const fn cmsg_space(n: usize) -> usize {
    CMSG_HDR + cmsg_align(n)
}

/// Control-message storage, aligned as the kernel lays headers out.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf([u8; CMSG_CAP]);

impl CmsgBuf {
    fn new() -> Self {
        CmsgBuf([0; CMSG_CAP])
    }
}

/// Appends control messages to a [`CmsgBuf`].
struct Encoder<'a> {
    buf: &'a mut CmsgBuf,
    len: usize,
}

impl Encoder<'_> {
    fn push<T: Pod>(&mut self, level: c_int, ty: c_int, value: T) {
        // At most three small messages go in: `CMSG_CAP` has room for them.
        let at = &mut self.buf.0[self.len..self.len + cmsg_space(size_of::<T>())];
        let mut h: libc::cmsghdr = zeroed();
        h.cmsg_len = (CMSG_HDR + size_of::<T>()) as _;
        h.cmsg_level = level;
        h.cmsg_type = ty;
        write_pod(at, h);
        write_pod(&mut at[CMSG_HDR..], value);
        self.len += cmsg_space(size_of::<T>());
    }
}

/// What one received message carried, besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecvMeta {
    /// The receive slot holding the bytes.
    pub(crate) slot: usize,
    /// Bytes received.
    pub(crate) len: usize,
    /// The size of each coalesced datagram but the last (the GRO segment size), or `len`.
    pub(crate) stride: usize,
    pub(crate) from: SocketAddr,
    pub(crate) ecn: Ecn,
    pub(crate) dst: Option<IpAddr>,
}

impl RecvMeta {
    /// The datagrams this message holds.
    pub(crate) fn datagrams(&self) -> usize {
        if self.len == 0 { 1 } else { self.len.div_ceil(self.stride.max(1)) }
    }
}

/// Buffers for batched receives: `slots` messages of `slot_size` bytes each, their source
/// addresses and control data, and what the last receive brought in.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    slot_size: usize,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<CmsgBuf>,
    meta: Vec<RecvMeta>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.names.len())
            .field("slot_size", &self.slot_size)
            .field("kept", &self.meta.len())
            .finish()
    }
}

impl RecvBatch {
    /// Buffers for `slots` messages (clamped to `1..=MAX_RECV_BATCH`) of up to `slot_size`
    /// bytes; a larger datagram is dropped and counted.
    pub(crate) fn new(slots: usize, slot_size: usize) -> Self {
        let slots = slots.clamp(1, MAX_RECV_BATCH);
        RecvBatch {
            bufs: vec![0; slots * slot_size],
            slot_size,
            names: vec![zeroed(); slots],
            ctrl: vec![CmsgBuf::new(); slots],
            meta: Vec::with_capacity(slots),
        }
    }

    /// How many messages one receive can take.
    pub(crate) fn slots(&self) -> usize {
        self.names.len()
    }

    /// What the last receive kept.
    pub(crate) fn datagrams(&mut self) -> Datagrams<'_> {
        Datagrams { bufs: &mut self.bufs, slot_size: self.slot_size, meta: &self.meta }
    }
}

/// Asks the kernel for `recv` and `send` bytes of socket buffer (0: leave that one as it
/// is). Best effort: a refusal or a cap (`net.core.rmem_max`, `wmem_max`) is logged, never
/// fatal, and what the kernel granted is what the socket has.
pub(crate) fn set_buffers(socket: &std::net::UdpSocket, recv: usize, send: usize) {
    let s = SockRef::from(socket);
    static TOLD_RECV: AtomicBool = AtomicBool::new(false);
    static TOLD_SEND: AtomicBool = AtomicBool::new(false);
    if recv > 0 {
        let set = s.set_recv_buffer_size(recv).and_then(|()| s.recv_buffer_size());
        report_buffer("receive", "net.core.rmem_max", recv, set, &TOLD_RECV);
    }
    if send > 0 {
        let set = s.set_send_buffer_size(send).and_then(|()| s.send_buffer_size());
        report_buffer("send", "net.core.wmem_max", send, set, &TOLD_SEND);
    }
}

/// The largest buffer to ask for: Linux keeps twice the request in an int.
pub(crate) const MAX_SOCKET_BUFFER: usize = (i32::MAX / 2) as usize;

fn report_buffer(
    which: &str,
    sysctl: &str,
    asked: usize,
    granted: io::Result<usize>,
    told: &AtomicBool,
) {
    // Linux keeps twice what is asked (half of it for its bookkeeping) and reports that.
    let full = if cfg!(target_os = "linux") { asked.saturating_mul(2) } else { asked };
    match granted {
        Ok(got) if got >= full => {}
        Ok(got) => {
            if !told.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    asked,
                    granted = got,
                    "the kernel capped a UDP socket's {which} buffer ({sysctl}); at high rates datagrams may be dropped"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not size a UDP socket's {which} buffer"),
    }
}

fn set_opt(fd: RawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its exact size is passed with its address.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn get_opt(fd: RawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call; `len` holds the size of `value`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

/// A source address from a `recvmmsg` name, if it is IPv4 or IPv6.
fn parse_name(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: `sockaddr_storage` is larger than `sockaddr_in` and both are plain
            // data; `read_unaligned` needs no alignment.
            let sin: libc::sockaddr_in = unsafe { ptr::read_unaligned((&raw const *name).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6: libc::sockaddr_in6 =
                unsafe { ptr::read_unaligned((&raw const *name).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Reads the control messages of one received datagram into `meta`. Unknown or malformed
/// messages are skipped; a malformed header ends the walk.
fn decode_cmsgs(ctrl: &[u8], meta: &mut RecvMeta) {
    let mut off = 0;
    while let Some(h) = ctrl.get(off..).and_then(read_pod::<libc::cmsghdr>) {
        // `size_t` with glibc, `socklen_t` with musl.
        #[allow(clippy::unnecessary_cast)]
        let len = h.cmsg_len as usize;
        if len < CMSG_HDR || len > ctrl.len() - off {
            break;
        }
        let data = &ctrl[off + CMSG_HDR..off + len];
        match (h.cmsg_level, h.cmsg_type) {
            // Linux sends IP_TOS as one byte; take an int too, as other stacks do.
            (libc::IPPROTO_IP, libc::IP_TOS) => {
                let tos = match data.len() {
                    4.. => read_pod::<c_int>(data).map(|v| v as u8),
                    _ => read_pod::<u8>(data),
                };
                if let Some(tos) = tos {
                    meta.ecn = Ecn::from_bits(tos);
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                if let Some(tclass) = read_pod::<c_int>(data) {
                    meta.ecn = Ecn::from_bits(tclass as u8);
                }
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                if let Some(info) = read_pod::<libc::in_pktinfo>(data) {
                    meta.dst = Some(Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes()).into());
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let Some(info) = read_pod::<libc::in6_pktinfo>(data) {
                    meta.dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr).into());
                }
            }
            (libc::SOL_UDP, libc::UDP_GRO) => {
                if let Some(size) = read_pod::<c_int>(data) {
                    meta.stride = usize::try_from(size).unwrap_or(0);
                }
            }
            _ => {}
        }
        off += cmsg_align(len);
    }
}

/// How the kernel reacts to one socket's offloads, and its counters. The socket itself stays
/// with the caller (a mio socket in the reactor, a std one in tests); every call takes its fd.
#[derive(Debug)]
pub(crate) struct UdpIo {
    /// An IPv6 socket: destinations are given to it as IPv6 (IPv4 ones mapped).
    v6: bool,
    /// Segments per GSO send, `1..=MAX_GSO_SEGMENTS`.
    max_segments: usize,
    /// The error of the GSO send the kernel refused, if one was.
    gso_refusal: Option<io::Error>,
    /// The address a connected socket is connected to (in the socket's family): datagrams
    /// to it go without a name, so the kernel takes its cached route instead of looking
    /// one up on every send.
    peer: Option<SocketAddr>,
    /// On a connected socket: the socket's own traffic class less its ECN bits, and the
    /// codepoint it carries now (`None`: per message, as on any other socket). A message
    /// with IP-level control data makes the kernel look the route up again, so the peer's
    /// codepoint lives in the socket and changes there, rarely (ECN validation).
    socket_tos: Option<(c_int, Ecn)>,
    pub(crate) stats: UdpStats,
}

impl UdpIo {
    /// Sets the options up on a UDP socket (IPv4, IPv6 or dual-stack). Options the kernel
    /// refuses are counted in [`UdpStats::option_failures`] and done without.
    ///
    /// # Errors
    /// `InvalidInput` when `fd` is not an IPv4 or IPv6 datagram socket; the error of asking
    /// the socket what it is.
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        opts: UdpOptions,
        max_segments: usize,
    ) -> io::Result<UdpIo> {
        let sock = SockRef::from(&fd);
        let v6 = match sock.domain()? {
            Domain::IPV4 => false,
            Domain::IPV6 => true,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket")),
        };
        if sock.r#type()? != Type::DGRAM {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a datagram socket"));
        }
        // A dual-stack socket carries IPv4 too, and takes the IPv4 options for it.
        let v4 = !v6 || !sock.only_v6().unwrap_or(true);
        let raw = fd.as_raw_fd();
        let mut stats = UdpStats::default();
        let mut opt = |level: c_int, name: c_int, value: c_int, what: &str| -> bool {
            match set_opt(raw, level, name, value) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(option = what, error = %e, "udp socket option refused");
                    stats.option_failures += 1;
                    false
                }
            }
        };
        let (mut ecn, mut dst, mut df) = (true, true, opts.dont_fragment);
        if v4 {
            ecn &= opt(libc::IPPROTO_IP, libc::IP_RECVTOS, 1, "IP_RECVTOS");
            dst &= opt(libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO");
            df = df
                && opt(
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_PROBE,
                    "IP_MTU_DISCOVER",
                );
        }
        if v6 {
            ecn &= opt(libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS");
            dst &= opt(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
            if df {
                df &= opt(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_PMTUDISC_PROBE,
                    "IPV6_MTU_DISCOVER",
                );
                df &= opt(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1, "IPV6_DONTFRAG");
            }
        }
        let gro = opts.gro && opt(libc::SOL_UDP, libc::UDP_GRO, 1, "UDP_GRO");
        let max_segments = max_segments.clamp(1, MAX_GSO_SEGMENTS);
        // A kernel with GSO answers for UDP_SEGMENT (4.18 on).
        let gso = opts.gso
            && max_segments > 1
            && match get_opt(raw, libc::SOL_UDP, libc::UDP_SEGMENT) {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "no UDP_SEGMENT: sending without GSO");
                    stats.option_failures += 1;
                    false
                }
            };
        stats.gso = gso;
        stats.gro = gro;
        stats.recv_ecn = ecn;
        stats.recv_dst = dst;
        stats.dont_fragment = df;
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        // The peer's traffic class goes in the socket where its family's option is the
        // socket's own (not an IPv4 peer of a dual-stack socket).
        let socket_tos = match peer {
            Some(SocketAddr::V4(_)) if !v6 => get_opt(raw, libc::IPPROTO_IP, libc::IP_TOS).ok(),
            Some(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_none() => {
                get_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_TCLASS).ok()
            }
            _ => None,
        }
        .map(|tos| (tos & !3, Ecn::NotEct));
        Ok(UdpIo { v6, max_segments, gso_refusal: None, peer, socket_tos, stats })
    }

    /// The error of the GSO send the kernel refused, if one was.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn gso_refusal(&self) -> Option<&io::Error> {
        self.gso_refusal.as_ref()
    }

    /// The address to give the kernel: IPv4 destinations mapped on an IPv6 socket, mapped
    /// ones unmapped on an IPv4 socket.
    fn native(&self, to: SocketAddr) -> SocketAddr {
        match (self.v6, to) {
            (true, SocketAddr::V4(a)) => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            (false, SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, a.port())),
                None => to,
            },
            _ => to,
        }
    }

    /// Sends a transmit: one `sendmsg` per (at most `max_segments`) segments with GSO, else
    /// one message per segment. Returns how many bytes of `contents` the kernel took, always
    /// whole datagrams; fewer than all when the socket filled up part-way (`WouldBlock` only
    /// when it took nothing).
    ///
    /// # Errors
    /// The kernel's, when it took nothing (`WouldBlock` when the socket buffer is full).
    pub(crate) fn send(&mut self, fd: RawFd, t: &UdpTransmit<'_>) -> io::Result<usize> {
        let dest = self.native(t.destination);
        let named = SockAddr::from(dest);
        let to = if self.peer == Some(dest) { None } else { Some(&named) };
        // To the peer of a connected socket, the codepoint goes in the socket; anywhere
        // else the socket carries none, and the message its own.
        let mut t = *t;
        if to.is_none() {
            if self.socket_carries(fd, t.ecn) {
                t.ecn = Ecn::NotEct;
            }
        } else if self.socket_tos.is_some_and(|(_, e)| e != Ecn::NotEct) {
            self.socket_carries(fd, Ecn::NotEct);
        }
        let t = &t;
        let v4 = match t.destination {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        let len = t.contents.len();
        let stride = t.stride();
        if stride == len {
            let mut ctrl = CmsgBuf::new();
            let clen = encode(&mut ctrl, v4, t, None);
            send_msgs(fd, to, t.contents, len.max(1), &mut ctrl, clen)?;
            self.stats.datagrams_out += 1;
            return Ok(len);
        }
        let per = self.max_segments.min(GSO_MAX_BYTES / stride).max(1);
        let mut sent = 0;
        while sent < len {
            let chunk = &t.contents[sent..len.min(sent + per * stride)];
            let result = if self.stats.gso && chunk.len() > stride {
                self.send_gso(fd, to, chunk, stride, v4, t)
            } else {
                let mut ctrl = CmsgBuf::new();
                let clen = encode(&mut ctrl, v4, t, None);
                send_msgs(fd, to, chunk, stride, &mut ctrl, clen)
            };
            match result {
                Ok(n) => {
                    self.stats.datagrams_out += n.div_ceil(stride) as u64;
                    sent += n;
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if sent == 0 => return Err(e),
                // Part went: report that; the error comes back on the next send.
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Whether the socket's own traffic class carries `ecn` (set now if it did not), so
    /// that messages need no control data for it; false where it cannot (then, for good).
    fn socket_carries(&mut self, fd: RawFd, ecn: Ecn) -> bool {
        let Some((base, now)) = self.socket_tos else { return false };
        if now == ecn {
            return true;
        }
        let (level, name) = match self.peer {
            Some(SocketAddr::V4(_)) => (libc::IPPROTO_IP, libc::IP_TOS),
            _ => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
        };
        match set_opt(fd, level, name, base | c_int::from(ecn.bits())) {
            Ok(()) => {
                self.socket_tos = Some((base, ecn));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "socket traffic class refused: ECN per message");
                self.stats.option_failures += 1;
                self.socket_tos = None;
                false
            }
        }
    }

    /// One segmented `sendmsg`; on the kernel's refusal, GSO goes off for good and the chunk
    /// goes one message per segment.
    fn send_gso(
        &mut self,
        fd: RawFd,
        to: Option<&SockAddr>,
        chunk: &[u8],
        stride: usize,
        v4: bool,
        t: &UdpTransmit<'_>,
    ) -> io::Result<usize> {
        let mut ctrl = CmsgBuf::new();
        // `stride` < `chunk.len()` <= GSO_MAX_BYTES, so it fits the kernel's u16.
        let clen = encode(&mut ctrl, v4, t, Some(stride as u16));
        match send_msgs(fd, to, chunk, chunk.len(), &mut ctrl, clen) {
            Ok(n) => {
                self.stats.gso_sends += 1;
                Ok(n)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                tracing::info!(error = %e, "kernel refused a GSO send: sending segments one by one from now on");
                self.stats.gso = false;
                self.stats.gso_fallbacks += 1;
                self.gso_refusal = Some(e);
                let clen = encode(&mut ctrl, v4, t, None);
                send_msgs(fd, to, chunk, stride, &mut ctrl, clen)
            }
            Err(e) => Err(e),
        }
    }

    /// Receives up to `max` messages (at least one, at most the batch's slots) into `batch`,
    /// waiting for the first only if the socket blocks. Returns how many messages the kernel
    /// gave; those kept (not truncated) are in [`RecvBatch::datagrams`].
    ///
    /// # Errors
    /// The kernel's: `WouldBlock` when nothing is queued (or a blocking socket's read timeout
    /// passed); a pending socket error (an ICMP report) concerns one earlier send.
    pub(crate) fn recv(
        &mut self,
        fd: RawFd,
        batch: &mut RecvBatch,
        max: usize,
    ) -> io::Result<usize> {
        let n = max.clamp(1, batch.slots());
        let size = batch.slot_size;
        let mut iovs: [libc::iovec; MAX_RECV_BATCH] = zeroed();
        let mut hdrs: [libc::mmsghdr; MAX_RECV_BATCH] = zeroed();
        for i in 0..n {
            iovs[i].iov_base = batch.bufs[i * size..].as_mut_ptr().cast();
            iovs[i].iov_len = size;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&raw mut batch.names[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = batch.ctrl[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_CAP as _;
        }
        let got = loop {
            // SAFETY: the first `n` headers point at live, exclusively borrowed storage of
            // the lengths they give (slot `i` of `bufs`, `names[i]`, `ctrl[i]`, `iovs[i]`),
            // none of which moves before the call returns.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break (rc as usize).min(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        batch.meta.clear();
        for (i, h) in hdrs[..got].iter().enumerate() {
            if h.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
                // Without all its bytes, or without the GRO size that says where its
                // datagrams end, the message cannot be trusted: drop it.
                self.stats.recv_truncated += 1;
                continue;
            }
            let Some(from) = parse_name(&batch.names[i], h.msg_hdr.msg_namelen) else {
                self.stats.recv_truncated += 1;
                continue;
            };
            let len = (h.msg_len as usize).min(size);
            let mut meta =
                RecvMeta { slot: i, len, stride: len, from, ecn: Ecn::NotEct, dst: None };
            // `size_t` with glibc, `socklen_t` with musl.
            #[allow(clippy::unnecessary_cast)]
            let clen = (h.msg_hdr.msg_controllen as usize).min(CMSG_CAP);
            decode_cmsgs(&batch.ctrl[i].0[..clen], &mut meta);
            if meta.stride == 0 || meta.stride > len {
                meta.stride = len;
            }
            if meta.stride < len {
                self.stats.gro_batches += 1;
            }
            self.stats.datagrams_in += meta.datagrams() as u64;
            batch.meta.push(meta);
        }
        Ok(got)
    }
}

/// Writes the send control messages of `t` into `ctrl`; returns their length.
fn encode(ctrl: &mut CmsgBuf, v4: bool, t: &UdpTransmit<'_>, segment: Option<u16>) -> usize {
    let mut enc = Encoder { buf: ctrl, len: 0 };
    // Not-ECT needs no message: it leaves the socket's own TOS (and DSCP) alone.
    if t.ecn != Ecn::NotEct {
        let bits = c_int::from(t.ecn.bits());
        if v4 {
            enc.push(libc::IPPROTO_IP, libc::IP_TOS, bits);
        } else {
            enc.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, bits);
        }
    }
    match t.src_ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(ip)) => {
            let mut info: libc::in_pktinfo = zeroed();
            info.ipi_spec_dst.s_addr = u32::from_ne_bytes(ip.octets());
            enc.push(libc::IPPROTO_IP, libc::IP_PKTINFO, info);
        }
        Some(IpAddr::V6(ip)) => {
            let mut info: libc::in6_pktinfo = zeroed();
            info.ipi6_addr.s6_addr = ip.octets();
            enc.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info);
        }
        None => {}
    }
    if let Some(size) = segment {
        enc.push(libc::SOL_UDP, libc::UDP_SEGMENT, size);
    }
    enc.len
}

/// Sends `data` to `to` (`None`: the connected socket's peer) as messages of `stride` bytes
/// (the last may be shorter), each with the same control data: one `sendmsg` when that is
/// one message, else `sendmmsg`. At most [`MAX_GSO_SEGMENTS`] messages. Returns the bytes of
/// the messages the kernel took.
fn send_msgs(
    fd: RawFd,
    to: Option<&SockAddr>,
    data: &[u8],
    stride: usize,
    ctrl: &mut CmsgBuf,
    clen: usize,
) -> io::Result<usize> {
    let count = data.len().div_ceil(stride.max(1)).clamp(1, MAX_GSO_SEGMENTS);
    let mut iovs: [libc::iovec; MAX_GSO_SEGMENTS] = zeroed();
    let mut hdrs: [libc::mmsghdr; MAX_GSO_SEGMENTS] = zeroed();
    for i in 0..count {
        let start = (i * stride).min(data.len());
        let end = (start + stride).min(data.len());
        // The kernel only reads through this pointer.
        iovs[i].iov_base = data[start..].as_ptr().cast_mut().cast();
        iovs[i].iov_len = end - start;
        let h = &mut hdrs[i].msg_hdr;
        if let Some(to) = to {
            h.msg_name = to.as_ptr().cast_mut().cast();
            h.msg_namelen = to.len();
        }
        h.msg_iov = &raw mut iovs[i];
        h.msg_iovlen = 1;
        if clen > 0 {
            h.msg_control = ctrl.0.as_mut_ptr().cast();
            h.msg_controllen = clen as _;
        }
    }
    let mut sent = 0;
    while sent < count {
        let rc = if count == 1 {
            // SAFETY: the header points at `to` (or at no name), `iovs[0]` (into `data`) and
            // `ctrl`, all alive and unmoved for the call, with their lengths.
            let r = unsafe { libc::sendmsg(fd, &raw const hdrs[0].msg_hdr, 0) };
            // An empty datagram sends zero bytes: success is any `r >= 0`.
            if r >= 0 { 1 } else { -1 }
        } else {
            // SAFETY: headers `sent..count` point at `to` (or at no name), `iovs[i]` (into
            // `data`) and `ctrl`, all alive and unmoved for the call, with their lengths.
            let r = unsafe {
                libc::sendmmsg(fd, &raw mut hdrs[sent], (count - sent) as libc::c_uint, 0)
            };
            r as isize
        };
        if rc > 0 {
            sent += rc as usize;
            continue;
        }
        if rc == 0 {
            // Nothing taken and no error: leave the rest for the next try.
            break;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            _ if sent > 0 => break,
            _ => return Err(e),
        }
    }
    Ok((sent * stride).min(data.len()))
}

#[cfg(test)]
#[path = "udp_tests.rs"]
mod tests;
