//! A reader with an upper bound on what comes out of it.

use std::io::{self, Read};

/// A reader that fails (rather than silently stopping, as `Read::take` does) once
/// more than `max` bytes come out of `inner`: a server, a decompressor or an archive
/// that sends more than the bound is broken or hostile. Exactly `max` bytes are
/// allowed.
pub struct Bounded<R> {
    inner: R,
    remaining: u64,
    max: u64,
    what: &'static str,
}

impl<R: Read> Bounded<R> {
    /// Allows at most `max` bytes; `what` names the stream in the error.
    pub fn new(inner: R, max: u64, what: &'static str) -> Self {
        Self {
            inner,
            remaining: max,
            max,
            what,
        }
    }
}

/// The error inside the `InvalidData` [`io::Error`] of a [`Bounded`] reader, so that
/// callers can tell an overlong stream from another failure ([`is_over_limit`]).
#[derive(Debug, thiserror::Error)]
#[error("{what} is longer than announced (more than {max} bytes)")]
pub struct OverLimit {
    /// What the stream was.
    pub what: &'static str,
    /// The bound.
    pub max: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Read one byte more than allowed so that an overlong stream is noticed.
        let want = buf
            .len()
            .min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                OverLimit {
                    what: self.what,
                    max: self.max,
                },
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Whether an I/O error is a [`Bounded`] reader's.
pub fn is_over_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<OverLimit>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_exactly_max_bytes() {
        let mut out = Vec::new();
        Bounded::new(&[1u8; 10][..], 10, "x")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 10);
        let err = Bounded::new(&[1u8; 11][..], 10, "NAR")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("NAR"), "{err}");
        assert!(is_over_limit(&err), "{err}");
        assert!(!is_over_limit(&io::Error::other("x")));
    }

    #[test]
    fn a_zero_bound_allows_an_empty_stream_only() {
        Bounded::new(&[][..], 0, "x")
            .read_to_end(&mut Vec::new())
            .unwrap();
        let err = Bounded::new(&[0u8][..], 0, "x")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(is_over_limit(&err));
    }
}
