//! Reading request bodies that are pulled with `STDERR_READ`
//! (`docs/spec/worker-protocol.md` §4).
//!
//! AddToStoreNar at 1.21–1.22 and ImportPaths send their data only when the server
//! asks: the server writes `STDERR_READ` + a wanted length, flushes, and the client
//! answers with one `bytes` of 1..len bytes. The client fails if asked for more than
//! its data holds, so whoever reads through [`StderrReadReader`] must read no further
//! than the data's own end: use a NAR parser that requests exact token sizes, and do
//! not wrap this reader in a `BufReader`.

use std::io::{self, Read, Write};

use crate::error::{to_io, ProtocolError};
use crate::stderr::STDERR_READ;
use crate::wire::{self, padding};

/// A `Read` that pulls each chunk from the client with a `STDERR_READ` request.
#[derive(Debug)]
pub struct StderrReadReader<R, W> {
    reader: R,
    writer: W,
    /// Bytes of the current answer not yet handed out, and its padding still to skip.
    pending: u64,
    pad: usize,
    max_chunk: u64,
}

impl<R: Read, W: Write> StderrReadReader<R, W> {
    /// Pulls through `reader`/`writer` (the connection's two halves); each request asks
    /// for at most `max_chunk` bytes.
    pub fn new(reader: R, writer: W, max_chunk: u64) -> Self {
        Self {
            reader,
            writer,
            pending: 0,
            pad: 0,
            max_chunk: max_chunk.max(1),
        }
    }

    /// Returns the connection's halves.
    pub fn into_inner(self) -> (R, W) {
        (self.reader, self.writer)
    }

    fn skip_padding(&mut self) -> io::Result<()> {
        if self.pad > 0 {
            let mut b = [0u8; 8];
            self.reader.read_exact(&mut b[..self.pad])?;
            self.pad = 0;
            if b.iter().any(|&x| x != 0) {
                return Err(to_io(ProtocolError::BadPadding {
                    field: "STDERR_READ answer",
                }));
            }
        }
        Ok(())
    }
}

impl<R: Read, W: Write> Read for StderrReadReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pending == 0 {
            let wanted = (buf.len() as u64).min(self.max_chunk);
            wire::write_u64(&mut self.writer, STDERR_READ)?;
            wire::write_u64(&mut self.writer, wanted)?;
            self.writer.flush()?;
            let got = wire::read_u64(&mut self.reader, "STDERR_READ answer").map_err(to_io)?;
            if got > wanted {
                return Err(to_io(ProtocolError::OversizedReadAnswer { wanted, got }));
            }
            if got == 0 {
                // The client had no more data: end of stream for our caller.
                return Ok(0);
            }
            self.pending = got;
            self.pad = padding(got);
        }
        let n = buf
            .len()
            .min(usize::try_from(self.pending).unwrap_or(usize::MAX));
        self.reader.read_exact(&mut buf[..n])?;
        self.pending -= n as u64;
        if self.pending == 0 {
            self.skip_padding()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_with_stderr_read_and_checks_answer_size() {
        let mut answers = Vec::new();
        wire::write_bytes(&mut answers, b"hello").unwrap();
        wire::write_bytes(&mut answers, b"!").unwrap();
        let mut requests = Vec::new();
        let mut rd = StderrReadReader::new(&answers[..], &mut requests, 1024);
        let mut buf = [0u8; 6];
        rd.read_exact(&mut buf[..5]).unwrap();
        rd.read_exact(&mut buf[5..]).unwrap();
        assert_eq!(&buf, b"hello!");
        let mut expect = Vec::new();
        for n in [5u64, 1] {
            wire::write_u64(&mut expect, STDERR_READ).unwrap();
            wire::write_u64(&mut expect, n).unwrap();
        }
        assert_eq!(requests, expect);

        let mut too_big = Vec::new();
        wire::write_bytes(&mut too_big, b"hello world").unwrap();
        let mut rd = StderrReadReader::new(&too_big[..], io::sink(), 1024);
        assert!(rd.read_exact(&mut [0u8; 4]).is_err());
    }
}
