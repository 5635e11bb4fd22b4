//! Per-esocket input and output buffers with hard caps, backed by a per-worker pool.
//!
//! An idle esocket holds no buffer memory: storage is taken from the worker's pool when bytes
//! arrive or are written, and handed back as soon as the buffer is empty again. That keeps
//! thousands of idle connections cheap (DAP allocates 2 × 256 KiB per socket up front) while a
//! busy connection reuses warm memory instead of calling the allocator on every read.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;

/// A bounded free list of fixed-size byte vectors, one per worker.
///
/// Input buffers want vectors whose every byte is initialised (reads go straight into them),
/// output buffers want empty ones (writes append). Vectors are kept on two lists by that
/// state, so a recycled input vector is never zero-filled again and handing one out costs
/// no more than a `pop`.
#[derive(Debug)]
pub(crate) struct BufPool {
    chunk: usize,
    max: usize,
    /// Vectors with `len == chunk`, all bytes initialised.
    filled: Vec<Vec<u8>>,
    /// Vectors with `len == 0`.
    empty: Vec<Vec<u8>>,
    /// Input vectors larger than `chunk` (esockets with raised caps), all bytes
    /// initialised; at most `max / 8` of them.
    large: Vec<Vec<u8>>,
}

impl BufPool {
    pub(crate) fn new(chunk: usize, max: usize) -> Self {
        BufPool {
            chunk: chunk.max(1),
            max,
            filled: Vec::new(),
            empty: Vec::new(),
            large: Vec::new(),
        }
    }

    pub(crate) fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// An empty vector with exactly `chunk_size()` bytes of capacity (for output).
    pub(crate) fn get(&mut self) -> Vec<u8> {
        if let Some(buf) = self.empty.pop() {
            return buf;
        }
        let mut buf = self.filled.pop().unwrap_or_else(|| Vec::with_capacity(self.chunk));
        buf.clear();
        buf
    }

    /// A vector whose length is its capacity, `chunk_size()` bytes (for input).
    pub(crate) fn get_filled(&mut self) -> Vec<u8> {
        if let Some(buf) = self.filled.pop() {
            return buf;
        }
        // Zero-fill once in the vector's life; after that it stays on the filled list.
        let mut buf = self.empty.pop().unwrap_or_else(|| Vec::with_capacity(self.chunk));
        buf.resize(self.chunk, 0);
        buf
    }

    /// An input vector of `size` bytes, all initialised: a pool chunk when `size` is the
    /// chunk size, else a large vector kept from an earlier esocket of that size, else a
    /// new one (zeroed once in its life).
    pub(crate) fn get_filled_sized(&mut self, size: usize) -> Vec<u8> {
        if size <= self.chunk {
            return self.get_filled();
        }
        if let Some(i) = self.large.iter().position(|v| v.len() == size) {
            return self.large.swap_remove(i);
        }
        vec![0; size]
    }

    /// Returns storage; vectors of another size, or beyond the pool bound, are freed.
    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > self.chunk && buf.len() == buf.capacity() {
            if self.large.len() < (self.max / 8).max(1) {
                self.large.push(buf);
            }
            return;
        }
        if buf.capacity() != self.chunk || self.filled.len() + self.empty.len() >= self.max {
            return;
        }
        if buf.len() == self.chunk {
            self.filled.push(buf);
        } else {
            buf.clear();
            self.empty.push(buf);
        }
    }

    /// Bytes held by the pool itself.
    #[cfg(test)]
    pub(crate) fn pooled_bytes(&self) -> usize {
        (self.filled.len() + self.empty.len()) * self.chunk
    }
}

/// Input buffer: bytes read from the socket that the handler has not consumed yet.
///
/// Invariant: `start <= end <= data.len()`, and `data.len() == data.capacity()` once storage is
/// attached (the whole vector is initialised, so reads go straight into it without zeroing);
/// the unconsumed bytes are `data[start..end]`.
#[derive(Debug, Default)]
pub(crate) struct InBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// `data` is storage of the unconsumed bytes' exact size, not read storage: the peer
    /// went quiet in the middle of a message (see [`park`](Self::park)).
    parked: bool,
}

impl InBuf {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `n` unconsumed bytes (DAP's `shrink_buf_in`).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `read` into free space, never holding more than `cap` bytes.
    ///
    /// Returns `None` when the buffer is full (the caller pauses reading), otherwise the
    /// read's result along with the space that was offered (a short read means the socket is
    /// drained).
    pub(crate) fn read_from(
        &mut self,
        pool: &mut BufPool,
        cap: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Option<(io::Result<usize>, usize)> {
        if self.data.is_empty() {
            self.data = pool.get_filled_sized(cap);
        } else if self.parked {
            // More is coming: back to full-size read storage.
            let mut full = pool.get_filled_sized(cap);
            let n = self.len();
            full[..n].copy_from_slice(self.as_slice());
            self.data = full;
            self.start = 0;
            self.end = n;
            self.parked = false;
        }
        let limit = cap.min(self.data.len());
        if self.end >= limit && self.start > 0 {
            // Slide the unconsumed tail to the front to make room.
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = limit.saturating_sub(self.end);
        if room == 0 {
            return None;
        }
        let result = read(&mut self.data[self.end..self.end + room]);
        if let Ok(n) = &result {
            self.end += (*n).min(room);
        }
        Some((result, room))
    }

    /// Bytes of storage held (read storage, or the parked bytes).
    pub(crate) fn storage(&self) -> usize {
        self.data.len()
    }

    /// True when the unconsumed bytes sit in storage of their own size.
    pub(crate) fn is_parked(&self) -> bool {
        self.parked
    }

    /// Called when the socket is drained and the handler left bytes unconsumed (a message
    /// cut short, waiting for the rest): moves them to storage of their exact size and gives
    /// the read storage back to the pool, so a peer that sends half a request and goes quiet
    /// holds its bytes, not a whole read buffer. Leftovers of more than half the storage
    /// stay where they are (copying them would cost more than it frees).
    pub(crate) fn park(&mut self, pool: &mut BufPool) {
        let n = self.len();
        if self.parked || n == 0 || n > self.data.len() / 2 {
            return;
        }
        let bytes = self.as_slice().to_vec();
        pool.put(std::mem::replace(&mut self.data, bytes));
        self.start = 0;
        self.end = n;
        self.parked = true;
    }

    /// True when no more bytes fit under `cap`, even after compaction.
    pub(crate) fn is_full(&self, cap: usize) -> bool {
        self.len() >= cap
    }

    /// Takes the storage and the bounds of the unconsumed bytes, leaving the buffer empty
    /// (the next read takes a fresh vector from the pool).
    pub(crate) fn take_storage(&mut self) -> (Vec<u8>, usize, usize) {
        let taken = (std::mem::take(&mut self.data), self.start, self.end);
        self.start = 0;
        self.end = 0;
        self.parked = false;
        taken
    }

    /// Gives empty storage back to the pool.
    pub(crate) fn release_if_empty(&mut self, pool: &mut BufPool) {
        if self.is_empty() && !self.data.is_empty() {
            let data = std::mem::take(&mut self.data);
            // Parked storage has an odd size: freed, never pooled.
            if !self.parked {
                pool.put(data);
            }
            self.start = 0;
            self.end = 0;
            self.parked = false;
        }
    }
}

/// One queued piece of output.
#[derive(Debug)]
enum Chunk {
    /// Pool storage that small writes are copied into.
    Owned(Vec<u8>),
    /// Caller-provided bytes sent without a copy.
    Shared(Bytes),
    /// An input buffer moved to output whole (echo, proxying): `buf[..end]` is queued, and
    /// `buf` keeps its full, initialised length so it goes back to the pool as input storage.
    Moved { buf: Vec<u8>, end: usize },
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(b) => b,
            Chunk::Moved { buf, end } => &buf[..*end],
        }
    }
}

/// The most slices handed to one `writev`.
const MAX_IOV: usize = 64;

/// Output buffer: a queue of chunks written with vectored I/O.
///
/// Invariant: `len` is the sum of the chunk lengths minus `head_off`, and `head_off` is less
/// than the first chunk's length whenever there is a first chunk.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    chunks: VecDeque<Chunk>,
    head_off: usize,
    len: usize,
}

impl OutBuf {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies as much of `data` as fits under `cap`; returns the number of bytes taken.
    pub(crate) fn push_copy(&mut self, pool: &mut BufPool, cap: usize, data: &[u8]) -> usize {
        let take = data.len().min(cap.saturating_sub(self.len));
        let mut rest = &data[..take];
        while !rest.is_empty() {
            let tail = match self.chunks.back_mut() {
                Some(Chunk::Owned(v)) if v.len() < v.capacity() => v,
                _ => {
                    self.chunks.push_back(Chunk::Owned(pool.get()));
                    match self.chunks.back_mut() {
                        Some(Chunk::Owned(v)) => v,
                        _ => unreachable!(),
                    }
                }
            };
            let n = rest.len().min(tail.capacity() - tail.len());
            tail.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        self.len += take;
        take
    }

    /// Lets `build` append at most about `max` bytes in place at the tail: into the last
    /// pool chunk when it has `max` bytes of room, else into a fresh pool chunk (or, for
    /// `max` over the pool's chunk size, a vector of its own). Returns `build`'s result and
    /// the bytes it appended. `build` must only append: what it is given may already hold
    /// queued output. The caller checks the cap.
    pub(crate) fn push_with<R>(
        &mut self,
        pool: &mut BufPool,
        max: usize,
        build: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> (R, usize) {
        let fits =
            matches!(self.chunks.back(), Some(Chunk::Owned(v)) if v.capacity() - v.len() >= max);
        let fresh = !fits;
        if fresh {
            let v = if max <= pool.chunk_size() { pool.get() } else { Vec::with_capacity(max) };
            self.chunks.push_back(Chunk::Owned(v));
        }
        let Some(Chunk::Owned(v)) = self.chunks.back_mut() else { unreachable!("pushed above") };
        let before = v.len();
        let r = build(v);
        assert!(v.len() >= before, "push_with: the builder removed queued output");
        let added = v.len() - before;
        self.len += added;
        if fresh
            && added == 0
            && let Some(Chunk::Owned(v)) = self.chunks.pop_back()
        {
            pool.put(v);
        }
        (r, added)
    }

    /// Queues an input buffer's storage without copying: `buf[start..end]` goes out.
    /// The caller checks the cap.
    pub(crate) fn push_moved(
        &mut self,
        pool: &mut BufPool,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) {
        if start >= end {
            pool.put(buf);
            return;
        }
        if self.chunks.is_empty() {
            self.head_off = start;
            self.len += end - start;
            self.chunks.push_back(Chunk::Moved { buf, end });
        } else {
            self.push_copy(pool, usize::MAX, &buf[start..end]);
            pool.put(buf);
        }
    }

    /// Queues `data` without copying (small pieces are copied into the tail chunk instead,
    /// which keeps the iovec count low). The caller checks the cap.
    pub(crate) fn push_shared(&mut self, pool: &mut BufPool, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if data.len() <= 512 {
            if let Some(Chunk::Owned(v)) = self.chunks.back_mut()
                && v.capacity() - v.len() >= data.len()
            {
                v.extend_from_slice(&data);
                self.len += data.len();
                return;
            }
            self.push_copy(pool, usize::MAX, &data);
            return;
        }
        self.len += data.len();
        self.chunks.push_back(Chunk::Shared(data));
    }

    /// Writes queued bytes with one `write` or `writev`; returns what the call returned and
    /// how many bytes it was offered (fewer written than offered means the socket is full).
    pub(crate) fn write_to(
        &mut self,
        pool: &mut BufPool,
        write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> (io::Result<usize>, usize) {
        if self.len == 0 {
            return (Ok(0), 0);
        }
        let (result, offered) = if self.chunks.len() == 1 {
            let head = &self.chunks[0].bytes()[self.head_off..];
            (write(&[IoSlice::new(head)]), head.len())
        } else {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut offered = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let bytes = if i == 0 { &chunk.bytes()[self.head_off..] } else { chunk.bytes() };
                iov[i] = IoSlice::new(bytes);
                offered += bytes.len();
                n += 1;
            }
            (write(&iov[..n]), offered)
        };
        if let Ok(written) = result {
            self.advance(pool, written);
        }
        (result, offered)
    }

    fn advance(&mut self, pool: &mut BufPool, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(head) = self.chunks.front() else { break };
            let left = head.bytes().len() - self.head_off;
            if n >= left {
                n -= left;
                self.head_off = 0;
                if let Some(Chunk::Owned(v) | Chunk::Moved { buf: v, .. }) = self.chunks.pop_front()
                {
                    pool.put(v);
                }
            } else {
                self.head_off += n;
                n = 0;
            }
        }
        if self.len == 0 {
            self.clear(pool);
        }
    }

    /// Drops everything queued, returning storage to the pool.
    pub(crate) fn clear(&mut self, pool: &mut BufPool) {
        for chunk in self.chunks.drain(..) {
            if let Chunk::Owned(v) | Chunk::Moved { buf: v, .. } = chunk {
                pool.put(v);
            }
        }
        self.head_off = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_input_keeps_its_bytes_in_storage_of_their_size() {
        let mut pool = BufPool::new(64, 4);
        let mut buf = InBuf::default();
        buf.read_from(&mut pool, 64, |b| {
            b[..10].copy_from_slice(b"0123456789");
            Ok(10)
        });
        buf.consume(4);
        buf.park(&mut pool);
        assert!(buf.is_parked());
        assert_eq!(buf.storage(), 6);
        assert_eq!(buf.as_slice(), b"456789");
        assert_eq!(pool.pooled_bytes(), 64, "the read storage went back to the pool");
        // More arrives: back to full read storage, the parked bytes first.
        let (res, room) = buf
            .read_from(&mut pool, 64, |b| {
                b[..2].copy_from_slice(b"ab");
                Ok(2)
            })
            .unwrap();
        assert_eq!((res.unwrap(), room), (2, 58));
        assert!(!buf.is_parked());
        assert_eq!(buf.storage(), 64);
        assert_eq!(buf.as_slice(), b"456789ab");
        // Leftovers over half the storage stay put.
        let _ = buf.read_from(&mut pool, 64, |b| Ok(b.len())).unwrap();
        buf.park(&mut pool);
        assert!(!buf.is_parked());
        buf.consume(usize::MAX);
        buf.release_if_empty(&mut pool);
        assert_eq!(buf.storage(), 0);
    }

    #[test]
    fn inbuf_honours_cap_and_compacts() {
        let mut pool = BufPool::new(16, 4);
        let mut buf = InBuf::default();
        let (res, room) = buf
            .read_from(&mut pool, 8, |b| {
                b.fill(7);
                Ok(b.len())
            })
            .unwrap();
        assert_eq!((res.unwrap(), room), (8, 8));
        assert!(buf.is_full(8));
        assert!(buf.read_from(&mut pool, 8, |_| unreachable!()).is_none());
        buf.consume(3);
        let (res, room) = buf.read_from(&mut pool, 8, |b| Ok(b.len())).unwrap();
        assert_eq!((res.unwrap(), room), (3, 3));
        assert_eq!(buf.len(), 8);
        buf.consume(100);
        assert!(buf.is_empty());
        buf.release_if_empty(&mut pool);
        assert_eq!(pool.pooled_bytes(), 16);
    }

    #[test]
    fn large_input_vectors_are_reused_and_bounded() {
        let mut pool = BufPool::new(16, 16);
        let v = pool.get_filled_sized(64);
        assert_eq!(v.len(), 64);
        let ptr = v.as_ptr();
        pool.put(v);
        let again = pool.get_filled_sized(64);
        assert_eq!(again.as_ptr(), ptr, "the large vector came back from the pool");
        // At most max / 8 large vectors are kept.
        pool.put(again);
        pool.put(vec![0; 64]);
        pool.put(vec![0; 64]);
        assert_eq!(pool.large.len(), 2);
        assert_eq!(pool.get_filled_sized(8).len(), 16, "small sizes get a pool chunk");
    }

    #[test]
    fn inbuf_error_leaves_contents() {
        let mut pool = BufPool::new(16, 4);
        let mut buf = InBuf::default();
        buf.read_from(&mut pool, 16, |b| {
            b[..2].copy_from_slice(b"hi");
            Ok(2)
        });
        let (res, _) =
            buf.read_from(&mut pool, 16, |_| Err(io::ErrorKind::WouldBlock.into())).unwrap();
        assert!(res.is_err());
        assert_eq!(buf.as_slice(), b"hi");
    }

    #[test]
    fn outbuf_builds_in_place_in_pool_chunks() {
        let mut pool = BufPool::new(16, 4);
        let mut out = OutBuf::default();
        let (r, n) = out.push_with(&mut pool, 10, |v| {
            v.extend_from_slice(b"0123456789");
            7
        });
        assert_eq!((r, n, out.len()), (7, 10, 10));
        // 6 bytes of room left in that chunk: a 6-byte build shares it, a 7-byte one does not.
        out.push_with(&mut pool, 6, |v| v.extend_from_slice(b"abcdef"));
        out.push_with(&mut pool, 7, |v| v.extend_from_slice(b"ABCDEFG"));
        assert_eq!(out.chunks.len(), 2);
        // An empty build leaves no empty chunk behind.
        out.push_with(&mut pool, 16, |_| ());
        assert_eq!(out.chunks.len(), 2);
        let mut sink = Vec::new();
        let (res, _) = out.write_to(&mut pool, |iov| {
            iov.iter().for_each(|s| sink.extend_from_slice(s));
            Ok(iov.iter().map(|s| s.len()).sum())
        });
        res.unwrap();
        assert_eq!(sink, b"0123456789abcdefABCDEFG");
        assert!(out.is_empty());
    }

    #[test]
    fn outbuf_vectored_partial_writes() {
        let mut pool = BufPool::new(4, 8);
        let mut out = OutBuf::default();
        assert_eq!(out.push_copy(&mut pool, 10, b"abcdef"), 6);
        out.push_shared(&mut pool, Bytes::from(vec![b'x'; 600]));
        assert_eq!(out.push_copy(&mut pool, 10, b"zz"), 0, "over the cap");
        assert_eq!(out.len(), 606);
        let mut sink = Vec::new();
        // Accept 5 bytes at a time to exercise partial advances across chunk borders.
        while !out.is_empty() {
            let (res, _) = out.write_to(&mut pool, |iov| {
                let mut n = 0;
                for s in iov {
                    for &b in s.iter() {
                        if n == 5 {
                            return Ok(n);
                        }
                        sink.push(b);
                        n += 1;
                    }
                }
                Ok(n)
            });
            res.unwrap();
        }
        let mut want = b"abcdef".to_vec();
        want.extend(std::iter::repeat_n(b'x', 600));
        assert_eq!(sink, want);
        assert_eq!(pool.pooled_bytes(), 8, "both copy chunks went back to the pool");
    }

    #[test]
    fn moved_input_storage_goes_out_without_a_copy_and_back_as_input() {
        let mut pool = BufPool::new(16, 4);
        let mut inb = InBuf::default();
        inb.read_from(&mut pool, 16, |b| {
            b[..5].copy_from_slice(b"hello");
            Ok(5)
        });
        inb.consume(1);
        let (buf, start, end) = inb.take_storage();
        let ptr = buf.as_ptr();
        let mut out = OutBuf::default();
        out.push_moved(&mut pool, buf, start, end);
        assert_eq!(out.len(), 4);
        let mut sink = Vec::new();
        let (res, offered) = out.write_to(&mut pool, |iov| {
            assert_eq!(iov[0].as_ptr(), ptr.wrapping_add(1), "no copy");
            sink.extend_from_slice(&iov[0]);
            Ok(iov[0].len())
        });
        assert_eq!((res.unwrap(), offered), (4, 4));
        assert_eq!(sink, b"ello");
        // The vector went back whole, so the next input buffer reuses it without zeroing.
        let reused = pool.get_filled();
        assert_eq!(reused.as_ptr(), ptr);
    }
}
