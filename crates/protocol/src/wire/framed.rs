//! Framed streams (`docs/spec/worker-protocol.md` §2.7): `u64 n` + n raw bytes (no
//! padding), ended by n = 0.

use std::io::{self, Read, Write};

use crate::error::{to_io, ProtocolError};

/// Reads the payload of a framed stream as one continuous byte stream.
///
/// Frame boundaries carry no meaning. The server must always consume the stream up to
/// and including the terminator before it sends `STDERR_LAST` or `STDERR_ERROR`, also
/// when it fails early: call [`FramedReader::drain`] on every path out of a handler.
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    remaining: u64,
    finished: bool,
    max_frame: u64,
}

impl<R: Read> FramedReader<R> {
    /// Wraps `inner`, refusing frames larger than `max_frame` bytes.
    pub fn new(inner: R, max_frame: u64) -> Self {
        Self {
            inner,
            remaining: 0,
            finished: false,
            max_frame,
        }
    }

    /// Whether the terminating empty frame has been read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Reads and discards the rest of the stream, including the terminator, and
    /// returns how many payload bytes were discarded.
    pub fn drain(&mut self) -> io::Result<u64> {
        let mut scratch = [0u8; 8192];
        let mut total = 0u64;
        loop {
            match self.read(&mut scratch) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The wrapped reader (positioned after the terminator once finished).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for FramedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let len = crate::wire::read_u64(&mut self.inner, "frame length").map_err(to_io)?;
            if len == 0 {
                self.finished = true;
                return Ok(0);
            }
            if len > self.max_frame {
                return Err(to_io(ProtocolError::FrameTooLarge {
                    len,
                    max: self.max_frame,
                }));
            }
            self.remaining = len;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "framed stream ended inside a frame",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes a framed stream: each `write` becomes one frame; [`FramedWriter::finish`]
/// writes the terminator. Wrap it in a `BufWriter` to send fewer, larger frames.
#[derive(Debug)]
pub struct FramedWriter<W: Write> {
    inner: W,
}

impl<W: Write> FramedWriter<W> {
    /// Starts a framed stream on `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Writes the terminating empty frame and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        crate::wire::write_u64(&mut self.inner, 0)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for FramedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // An empty frame would end the stream, so empty writes send nothing.
        if !buf.is_empty() {
            crate::wire::write_u64(&mut self.inner, buf.len() as u64)?;
            self.inner.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_drain_stops_at_terminator() {
        let mut w = FramedWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"").unwrap();
        w.write_all(b"world").unwrap();
        let mut bytes = w.finish().unwrap();
        bytes.extend_from_slice(b"NEXT");
        let mut r = FramedReader::new(&bytes[..], 1024);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        let mut rest = r.into_inner();
        assert_eq!(rest, b"NEXT");
        let mut r = FramedReader::new(&bytes[..], 1024);
        assert_eq!(r.drain().unwrap(), 11);
        rest = r.into_inner();
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn oversized_and_truncated_frames_fail() {
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 10]);
        assert!(FramedReader::new(&bytes[..], 50).drain().is_err());
        assert!(FramedReader::new(&bytes[..], 500).drain().is_err());
    }
}
