//! Batched UDP: ECN codepoints, GSO transmits, batches of received datagrams, per-socket
//! options and counters.
//!
//! A UDP esocket reads with `recvmmsg` (several datagrams per system call) and, where the
//! kernel has `UDP_GRO`, each message may be a run of equal-size datagrams coalesced by the
//! kernel; [`Datagrams`] splits them back, so a handler sees one [`Datagram`] per datagram
//! the peer sent. It sends a [`UdpTransmit`] (several equal-size segments in one buffer) with
//! one `sendmsg` and a `UDP_SEGMENT` control message (GSO); where the kernel refuses GSO, the
//! socket stops asking for it and sends the segments one message each (`sendmmsg`).

use std::net::{IpAddr, SocketAddr};

use crate::sys::udp::RecvMeta;

/// An ECN codepoint: the two low bits of the IP TOS / IPv6 traffic class byte (RFC 3168).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Ecn {
    /// Not ECN-capable (`00`).
    #[default]
    NotEct = 0b00,
    /// ECN-capable, ECT(1) (`01`).
    Ect1 = 0b01,
    /// ECN-capable, ECT(0) (`10`).
    Ect0 = 0b10,
    /// Congestion experienced (`11`).
    Ce = 0b11,
}

impl Ecn {
    /// The codepoint in the two low bits of a TOS / traffic class byte (the DSCP bits above
    /// them are ignored).
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0b00 => Ecn::NotEct,
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    /// The codepoint as the two low bits of a byte.
    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// One send from a UDP esocket: a single datagram, or (with a segment size) a batch of
/// datagrams of `segment_size` bytes each laid end to end, the last possibly shorter, all to
/// one destination. A batch leaves in one system call where the kernel offers GSO.
///
/// Build it with [`new`](Self::new) and the `with_*` methods.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct UdpTransmit<'a> {
    /// Where the datagrams go.
    pub destination: SocketAddr,
    /// The datagrams, end to end.
    pub contents: &'a [u8],
    /// With several datagrams: the size of each but the last. `None`, or a size not smaller
    /// than `contents`, sends `contents` as one datagram.
    pub segment_size: Option<usize>,
    /// The ECN codepoint every datagram is sent with.
    pub ecn: Ecn,
    /// The source IP to send from (a socket bound to a wildcard address answers from the
    /// address it was reached at); `None` lets the kernel choose.
    pub src_ip: Option<IpAddr>,
}

impl<'a> UdpTransmit<'a> {
    /// One datagram of `contents` to `destination`, not ECN-capable, source chosen by the
    /// kernel.
    pub fn new(destination: SocketAddr, contents: &'a [u8]) -> Self {
        UdpTransmit { destination, contents, segment_size: None, ecn: Ecn::NotEct, src_ip: None }
    }

    /// Splits `contents` into datagrams of `size` bytes (the last may be shorter).
    pub fn with_segment_size(mut self, size: usize) -> Self {
        self.segment_size = Some(size);
        self
    }

    /// Sends with an ECN codepoint.
    pub fn with_ecn(mut self, ecn: Ecn) -> Self {
        self.ecn = ecn;
        self
    }

    /// Sends from a given local IP.
    pub fn with_src_ip(mut self, ip: IpAddr) -> Self {
        self.src_ip = Some(ip);
        self
    }

    /// The size of each datagram but the last: the segment size, or the whole contents.
    /// Zero only for an empty single datagram.
    pub fn stride(&self) -> usize {
        match self.segment_size {
            Some(s) if s > 0 && s < self.contents.len() => s,
            _ => self.contents.len(),
        }
    }

    /// How many datagrams this sends (at least one: an empty transmit is one empty datagram).
    pub fn datagrams(&self) -> usize {
        match self.stride() {
            0 => 1,
            s => self.contents.len().div_ceil(s),
        }
    }
}

/// One received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Datagram<'a> {
    /// Its payload.
    pub data: &'a [u8],
    /// Who sent it. On an IPv6 socket, IPv4 peers appear as IPv4-mapped addresses.
    pub from: SocketAddr,
    /// The ECN codepoint it arrived with ([`Ecn::NotEct`] when the kernel did not say).
    pub ecn: Ecn,
    /// The local IP it was sent to, when the kernel reports it (`IP_PKTINFO` /
    /// `IPV6_RECVPKTINFO`).
    pub dst: Option<IpAddr>,
}

/// One received datagram, writable in place (see [`Datagrams::iter_mut`]).
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatagramMut<'a> {
    /// Its payload, in the receive buffer: a transport may decrypt it where it lies.
    pub data: &'a mut [u8],
    /// Who sent it. On an IPv6 socket, IPv4 peers appear as IPv4-mapped addresses.
    pub from: SocketAddr,
    /// The ECN codepoint it arrived with ([`Ecn::NotEct`] when the kernel did not say).
    pub ecn: Ecn,
    /// The local IP it was sent to, when the kernel reports it.
    pub dst: Option<IpAddr>,
}

/// The datagrams one batched receive brought in, kernel-coalesced (GRO) runs already split:
/// iterate it for one [`Datagram`] per datagram the peers sent, in arrival order, or with
/// [`iter_mut`](Self::iter_mut) to work on them in the receive buffer (decrypt in place).
pub struct Datagrams<'a> {
    /// The receive buffers, `slot_size` bytes per message slot.
    pub(crate) bufs: &'a mut [u8],
    pub(crate) slot_size: usize,
    /// One entry per message kept (dropped messages have none), slots in ascending order.
    pub(crate) meta: &'a [RecvMeta],
}

impl std::fmt::Debug for Datagrams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams")
            .field("messages", &self.meta.len())
            .field("datagrams", &self.len())
            .finish()
    }
}

impl Datagrams<'_> {
    /// The datagrams, one by one.
    pub fn iter(&self) -> DatagramIter<'_> {
        DatagramIter {
            bufs: self.bufs,
            slot_size: self.slot_size,
            meta: self.meta,
            msg: 0,
            offset: 0,
        }
    }

    /// The datagrams, one by one, each writable where it lies in the receive buffer.
    pub fn iter_mut(&mut self) -> DatagramIterMut<'_> {
        DatagramIterMut {
            rest: &mut self.bufs[..],
            rest_at: 0,
            slot_size: self.slot_size,
            meta: self.meta,
            msg: 0,
            cur: None,
        }
    }

    /// How many datagrams the batch holds (after splitting coalesced runs).
    pub fn len(&self) -> usize {
        self.meta.iter().map(RecvMeta::datagrams).sum()
    }

    /// True when the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// How many messages the kernel returned (a coalesced run is one message).
    pub fn messages(&self) -> usize {
        self.meta.len()
    }
}

impl<'a> IntoIterator for &'a Datagrams<'_> {
    type Item = Datagram<'a>;
    type IntoIter = DatagramIter<'a>;

    fn into_iter(self) -> DatagramIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut Datagrams<'_> {
    type Item = DatagramMut<'a>;
    type IntoIter = DatagramIterMut<'a>;

    fn into_iter(self) -> DatagramIterMut<'a> {
        self.iter_mut()
    }
}

/// Iterates over a [`Datagrams`] batch, one datagram at a time.
#[derive(Clone, Debug)]
pub struct DatagramIter<'a> {
    bufs: &'a [u8],
    slot_size: usize,
    meta: &'a [RecvMeta],
    /// The message being split.
    msg: usize,
    /// Where in it the next datagram starts.
    offset: usize,
}

impl<'a> Iterator for DatagramIter<'a> {
    type Item = Datagram<'a>;

    fn next(&mut self) -> Option<Datagram<'a>> {
        let meta = self.meta.get(self.msg)?;
        let start = meta.slot * self.slot_size;
        let payload = self.bufs.get(start..start + meta.len)?;
        // A zero stride only comes with an empty message: one empty datagram.
        let stride = meta.stride.max(1);
        let end = payload.len().min(self.offset + stride);
        let data = &payload[self.offset..end];
        if end >= payload.len() {
            self.msg += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        Some(Datagram { data, from: meta.from, ecn: meta.ecn, dst: meta.dst })
    }
}

/// Iterates over a [`Datagrams`] batch, one writable datagram at a time.
#[derive(Debug)]
pub struct DatagramIterMut<'a> {
    /// The receive buffers after the message being split, starting at offset `rest_at`.
    rest: &'a mut [u8],
    rest_at: usize,
    slot_size: usize,
    meta: &'a [RecvMeta],
    /// The next message.
    msg: usize,
    /// What is left of the message being split, and its metadata.
    cur: Option<(&'a mut [u8], &'a RecvMeta)>,
}

impl<'a> Iterator for DatagramIterMut<'a> {
    type Item = DatagramMut<'a>;

    fn next(&mut self) -> Option<DatagramMut<'a>> {
        let (cur, meta) = match self.cur.take() {
            Some(c) => c,
            None => {
                let meta = self.meta.get(self.msg)?;
                self.msg += 1;
                // Slots ascend, so each message lies after the previous one.
                let skip = (meta.slot * self.slot_size).checked_sub(self.rest_at)?;
                let rest = std::mem::take(&mut self.rest);
                let (_, rest) = rest.split_at_mut_checked(skip)?;
                let (msg, rest) = rest.split_at_mut_checked(meta.len)?;
                self.rest = rest;
                self.rest_at = meta.slot * self.slot_size + meta.len;
                (msg, meta)
            }
        };
        // A zero stride only comes with an empty message: one empty datagram.
        let (data, left) = cur.split_at_mut(meta.stride.max(1).min(cur.len()));
        if !left.is_empty() {
            self.cur = Some((left, meta));
        }
        Some(DatagramMut { data, from: meta.from, ecn: meta.ecn, dst: meta.dst })
    }
}

/// How a UDP esocket may use the kernel's offloads, and whether it fragments. The offloads
/// are on by default, where the kernel has them; turning one off makes the socket behave as
/// on a kernel without it (to compare, or to test the fallback paths). Don't-fragment is off
/// by default, as on any UDP socket; a transport that probes the path MTU turns it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpOptions {
    /// Send batches with one `sendmsg` and `UDP_SEGMENT` (GSO).
    pub gso: bool,
    /// Ask the kernel to coalesce received runs of equal-size datagrams (`UDP_GRO`).
    pub gro: bool,
    /// Never fragment: set DF and ignore the cached path MTU (`IP_PMTUDISC_PROBE`,
    /// `IPV6_DONTFRAG`), as a transport probing the path MTU itself needs (off by default). A
    /// datagram larger than the interface's MTU then fails with `EMSGSIZE` instead of
    /// leaving in fragments, which protocols such as DNS with large EDNS payloads rely on.
    pub dont_fragment: bool,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions { gso: true, gro: true, dont_fragment: false }
    }
}

impl UdpOptions {
    /// Turns GSO on or off.
    pub fn gso(mut self, on: bool) -> Self {
        self.gso = on;
        self
    }

    /// Turns GRO on or off.
    pub fn gro(mut self, on: bool) -> Self {
        self.gro = on;
        self
    }

    /// Turns don't-fragment on or off.
    pub fn dont_fragment(mut self, on: bool) -> Self {
        self.dont_fragment = on;
        self
    }
}

/// Counters and offload state of one UDP socket (see
/// [`Esocket::udp_stats`](crate::Esocket::udp_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpStats {
    /// Datagrams received and handed on (a coalesced run counts each datagram).
    pub datagrams_in: u64,
    /// Datagrams handed to the kernel (a GSO send counts each segment).
    pub datagrams_out: u64,
    /// Messages that carried a kernel-coalesced run of more than one datagram (GRO).
    pub gro_batches: u64,
    /// `sendmsg` calls that carried several segments with `UDP_SEGMENT` (GSO).
    pub gso_sends: u64,
    /// Times the kernel refused a GSO send (`EIO` / `EINVAL`) and the socket fell back to one
    /// message per segment, for good.
    pub gso_fallbacks: u64,
    /// Received messages dropped because the payload or the control data did not fit
    /// (`MSG_TRUNC` / `MSG_CTRUNC`) or they came without a usable source address.
    pub recv_truncated: u64,
    /// Socket options the kernel refused at set-up (each is done without).
    pub option_failures: u64,
    /// GSO is in use: the kernel has it, it was not turned off, and no send was refused.
    pub gso: bool,
    /// `UDP_GRO` took: received runs may arrive coalesced.
    pub gro: bool,
    /// The kernel reports each datagram's ECN codepoint.
    pub recv_ecn: bool,
    /// The kernel reports each datagram's destination address.
    pub recv_dst: bool,
    /// Don't-fragment (path-MTU probing mode) was asked for and took.
    pub dont_fragment: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecn_round_trips_through_the_low_two_bits() {
        for e in [Ecn::NotEct, Ecn::Ect1, Ecn::Ect0, Ecn::Ce] {
            assert_eq!(Ecn::from_bits(e.bits()), e);
            assert_eq!(Ecn::from_bits(0b1011_1000 | e.bits()), e);
        }
    }

    #[test]
    fn a_transmit_counts_its_datagrams_including_a_short_last_one() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let data = [0u8; 2500];
        assert_eq!(UdpTransmit::new(to, &data).datagrams(), 1);
        assert_eq!(UdpTransmit::new(to, &data).with_segment_size(1000).datagrams(), 3);
        assert_eq!(UdpTransmit::new(to, &data).with_segment_size(2500).datagrams(), 1);
        assert_eq!(UdpTransmit::new(to, &data).with_segment_size(0).datagrams(), 1);
        assert_eq!(UdpTransmit::new(to, &[]).datagrams(), 1);
    }

    #[test]
    fn a_batch_splits_coalesced_runs_by_stride_and_keeps_empty_datagrams() {
        let from: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let mut bufs = vec![0u8; 3 * 16];
        bufs[..10].copy_from_slice(b"aaaabbbbcc");
        bufs[32..35].copy_from_slice(b"xyz");
        let meta = [
            RecvMeta { slot: 0, len: 10, stride: 4, from, ecn: Ecn::Ce, dst: None },
            RecvMeta { slot: 1, len: 0, stride: 0, from, ecn: Ecn::NotEct, dst: None },
            RecvMeta { slot: 2, len: 3, stride: 3, from, ecn: Ecn::Ect0, dst: None },
        ];
        let mut batch = Datagrams { bufs: &mut bufs, slot_size: 16, meta: &meta };
        let want = [
            (b"aaaa".to_vec(), Ecn::Ce),
            (b"bbbb".to_vec(), Ecn::Ce),
            (b"cc".to_vec(), Ecn::Ce),
            (vec![], Ecn::NotEct),
            (b"xyz".to_vec(), Ecn::Ect0),
        ];
        let got: Vec<_> = batch.iter().map(|d| (d.data.to_vec(), d.ecn)).collect();
        assert_eq!(got, want);
        let got: Vec<_> = batch.iter_mut().map(|d| (d.data.to_vec(), d.ecn)).collect();
        assert_eq!(got, want, "the writable view splits the same way");
        assert_eq!(batch.len(), 5);
        assert_eq!(batch.messages(), 3);
        // Writes land where the datagrams lie.
        for d in batch.iter_mut() {
            d.data.make_ascii_uppercase();
        }
        assert_eq!(&bufs[..10], b"AAAABBBBCC");
        assert_eq!(&bufs[32..35], b"XYZ");
    }
}
