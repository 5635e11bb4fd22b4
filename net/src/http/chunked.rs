//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally.

use std::fmt;

/// Longest chunk-size line we accept (size, extensions and all).
const MAX_LINE: usize = 4096;
/// Most trailer bytes we accept (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkedError {
    /// Malformed chunk size, line ending or trailer (400).
    Malformed(&'static str),
    /// The body passes the limit (413).
    TooLarge,
}

impl ChunkedError {
    /// The status to answer with.
    pub fn status(self) -> u16 {
        match self {
            ChunkedError::Malformed(_) => 400,
            ChunkedError::TooLarge => 413,
        }
    }
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkedError::Malformed(why) => write!(f, "malformed chunked body: {why}"),
            ChunkedError::TooLarge => f.write_str("chunked body too large"),
        }
    }
}

impl std::error::Error for ChunkedError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size.
    Size { digits: usize },
    /// After the size: optional whitespace and extensions, up to CR.
    Extension,
    /// The LF of the size line.
    SizeLf,
    /// Chunk data still to come.
    Data(u64),
    /// CR after the data.
    DataCr,
    /// LF after the data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// LF of a trailer line.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// An incremental decoder: feed it bytes as they arrive; it appends the body's data to an
/// output vector and says when the body is complete. Bounded in everything it keeps.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
    total: u64,
    max_body: u64,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies larger than `max_body` bytes.
    pub fn new(max_body: u64) -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
            total: 0,
            max_body,
        }
    }

    /// True once the final chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes decoded so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Decodes from `input`, appending data to `out`; returns how many input bytes were used
    /// (all of them unless the body ended: what follows belongs to the next request).
    ///
    /// # Errors
    /// [`ChunkedError`] on malformed framing or an oversized body; the connection must close.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Size { digits } => {
                    if let Some(v) = (b as char).to_digit(16) {
                        if digits == 16 {
                            return Err(ChunkedError::Malformed("chunk size too long"));
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkedError::Malformed("missing chunk size"));
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = State::Extension;
                    } else {
                        return Err(ChunkedError::Malformed("bad chunk size"));
                    }
                    self.bump_line()?;
                    i += 1;
                }
                State::Extension => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkedError::Malformed("bare LF")),
                        0 => return Err(ChunkedError::Malformed("NUL in chunk extension")),
                        _ => {}
                    }
                    self.bump_line()?;
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::Malformed("expected LF after chunk size"));
                    }
                    self.line = 0;
                    i += 1;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        if self.total.saturating_add(self.size) > self.max_body {
                            return Err(ChunkedError::TooLarge);
                        }
                        self.state = State::Data(self.size);
                    }
                    self.size = 0;
                }
                State::Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.total += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::Malformed("expected CRLF after chunk data"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::Malformed("expected CRLF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                    i += 1;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' { State::EndLf } else { State::TrailerLine };
                    if b == b'\n' {
                        return Err(ChunkedError::Malformed("bare LF"));
                    }
                    self.bump_trailers()?;
                    i += 1;
                }
                State::TrailerLine => {
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkedError::Malformed("bare LF")),
                        0 => return Err(ChunkedError::Malformed("NUL in trailer")),
                        _ => {}
                    }
                    self.bump_trailers()?;
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::Malformed("expected LF in trailer"));
                    }
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::Malformed("expected LF at body end"));
                    }
                    self.state = State::Done;
                    i += 1;
                    return Ok(i);
                }
            }
        }
        Ok(i)
    }

    fn bump_line(&mut self) -> Result<(), ChunkedError> {
        bump(&mut self.line, MAX_LINE, "chunk size line too long")
    }

    fn bump_trailers(&mut self) -> Result<(), ChunkedError> {
        bump(&mut self.trailers, MAX_TRAILERS, "trailers too long")
    }
}

/// Counts one more byte against a bound.
fn bump(count: &mut usize, max: usize, why: &'static str) -> Result<(), ChunkedError> {
    *count += 1;
    if *count > max {
        return Err(ChunkedError::Malformed(why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: u64) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let used = d.decode(input, &mut out)?;
        assert!(d.is_done(), "incomplete");
        Ok((out, used))
    }

    #[test]
    fn decodes_in_one_go_and_byte_by_byte() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: v\r\n\r\nNEXT";
        let (out, used) = decode_all(body, 1024).unwrap();
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&body[used..], b"NEXT");
        let mut d = ChunkedDecoder::new(1024);
        let mut out = Vec::new();
        let mut used = 0;
        for (k, b) in body.iter().enumerate() {
            if d.is_done() {
                break;
            }
            used += d.decode(std::slice::from_ref(b), &mut out).unwrap();
            assert!(used == k + 1);
        }
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&body[used..], b"NEXT");
    }

    #[test]
    fn refuses_bad_framing() {
        let bad = |b: &[u8]| decode_all(b, 1 << 20).unwrap_err().status();
        assert_eq!(bad(b"zz\r\n"), 400);
        assert_eq!(bad(b"\r\n"), 400);
        assert_eq!(bad(b"-1\r\n"), 400);
        assert_eq!(bad(b"11111111111111111\r\n"), 400, "more than 16 hex digits");
        assert_eq!(bad(b"4\r\nWikiXX"), 400, "data not followed by CRLF");
        assert_eq!(bad(b"4\nWiki\r\n"), 400, "bare LF");
        assert_eq!(bad(b"0\r\nX: a\nb\r\n\r\n"), 400);
        assert_eq!(decode_all(b"ffffffffffffffff\r\n", 1 << 20).unwrap_err().status(), 413);
        assert_eq!(
            decode_all(b"5\r\nhello\r\n5\r\nhello\r\n0\r\n\r\n", 8).unwrap_err().status(),
            413
        );
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut ext = b"1;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', MAX_LINE + 1));
        let mut d = ChunkedDecoder::new(1 << 20);
        assert!(d.decode(&ext, &mut Vec::new()).is_err());
    }
}
