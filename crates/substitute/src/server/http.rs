//! The little HTTP/1.1 `unrooted serve` speaks: `GET` and `HEAD` requests with
//! bounded heads (parsed by `httparse`, the parser of hyper), keep-alive,
//! `Content-Length` or chunked responses. Nothing else is needed by Nix's curl-based
//! client, and every size read from the peer is bounded.

use std::io::{self, BufRead, Write};

/// Longest request line or header line accepted.
pub const MAX_LINE: usize = 8 * 1024;
/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 100;

/// A request's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the same headers, no body.
    Head,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without the leading `/` and without a query string.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Why a request head was refused; answered with the status, then the connection
/// is closed.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Malformed or too large (400 / 431).
    Status(u16),
}

/// Reads one request head, parsed by `httparse` (hyper's parser). `Ok(None)` when the
/// peer closed the connection before sending anything; refusals come back as
/// `Ok(Some(Err(..)))`. Only the head is consumed from `r`, so a pipelined next
/// request stays there.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<Result<Request, BadRequest>>> {
    let mut head = Vec::new();
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            return Ok((!head.is_empty()).then_some(Err(BadRequest::Status(400))));
        }
        let before = head.len();
        let take = available.len().min(MAX_HEAD - before);
        head.extend_from_slice(&available[..take]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                r.consume(len - before);
                return Ok(Some(request_of(&parsed)));
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => r.consume(take),
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Ok(Some(Err(BadRequest::Status(431))))
            }
            Err(_) => return Ok(Some(Err(BadRequest::Status(400)))),
        }
    }
}

/// What a complete head asks for, or why it is refused: a line over [`MAX_LINE`]
/// (431), a method other than `GET`/`HEAD` (405), a body, or a target that is not a
/// path (400).
fn request_of(parsed: &httparse::Request<'_, '_>) -> Result<Request, BadRequest> {
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(BadRequest::Status(400));
    };
    let request_line = method.len() + target.len() + "HTTP/1.1".len() + 2;
    let longest_header = parsed
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 2);
    if request_line.max(longest_header.max().unwrap_or(0)) > MAX_LINE {
        return Err(BadRequest::Status(431));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(BadRequest::Status(405)),
    };
    let mut keep_alive = version == 1;
    for header in parsed.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            // GET and HEAD carry no body; one we would have to skip is refused instead.
            return Err(BadRequest::Status(400));
        }
    }
    let Some(path) = target.strip_prefix('/') else {
        return Err(BadRequest::Status(400));
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Ok(Request {
        method,
        path: path.to_owned(),
        keep_alive,
    })
}

/// The reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes a response head. `length` `None` means a chunked body.
pub fn write_head(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    length: Option<u64>,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
        reason(status)
    );
    match length {
        Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    w.write_all(head.as_bytes())
}

/// Writes a whole small response.
pub fn write_simple(
    w: &mut impl Write,
    method: Method,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    write_head(w, status, content_type, Some(body.len() as u64), keep_alive)?;
    if method == Method::Get {
        w.write_all(body)?;
    }
    w.flush()
}

/// A body in chunked transfer encoding: each `write` is one chunk (so put a
/// `BufWriter` in front), [`Chunked::finish`] writes the last one.
pub struct Chunked<W: Write> {
    inner: W,
}

impl<W: Write> Chunked<W> {
    /// Chunks into `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Writes the terminating chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.inner
            .write_all(format!("{:x}\r\n", buf.len()).as_bytes())?;
        self.inner.write_all(buf)?;
        self.inner.write_all(b"\r\n")?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Option<Result<Request, BadRequest>> {
        read_request(&mut io::BufReader::new(text)).unwrap()
    }

    #[test]
    fn requests() {
        let r = parse(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "nix-cache-info");
        assert!(r.keep_alive);
        let r = parse(b"HEAD /a.narinfo?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.keep_alive),
            (Method::Head, "a.narinfo", false)
        );
        let r = parse(b"GET / HTTP/1.0\n\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\n\r\n"),
            Some(Err(BadRequest::Status(405)))
        );
        assert_eq!(
            parse(b"GET / HTTP/2\r\n\r\n"),
            Some(Err(BadRequest::Status(400)))
        );
        assert_eq!(
            parse(b"GET x HTTP/1.1\r\n\r\n"),
            Some(Err(BadRequest::Status(400)))
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Some(Err(BadRequest::Status(400)))
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(Err(BadRequest::Status(400)))
        );
        let long = [b"GET /".as_slice(), &[b'a'; MAX_LINE], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(parse(&long), Some(Err(BadRequest::Status(431))));
        let many: Vec<u8> = [
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"A: b\r\n".repeat(MAX_HEADERS + 1),
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(parse(&many), Some(Err(BadRequest::Status(431))));
        let huge: Vec<u8> = [
            b"GET / HTTP/1.1\r\n".to_vec(),
            [b"A: ".as_slice(), &[b'b'; 8000], b"\r\n"]
                .concat()
                .repeat(5),
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(parse(&huge), Some(Err(BadRequest::Status(431))));
    }

    #[test]
    fn heads_split_over_reads_and_pipelined_requests() {
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n";
        // A buffer of 3 bytes: every head arrives in many reads.
        let mut r = io::BufReader::with_capacity(3, &two[..]);
        let a = read_request(&mut r).unwrap().unwrap().unwrap();
        let b = read_request(&mut r).unwrap().unwrap().unwrap();
        assert_eq!((a.method, a.path.as_str()), (Method::Get, "a"));
        assert_eq!((b.method, b.path.as_str()), (Method::Head, "b"));
        assert_eq!(read_request(&mut r).unwrap(), None);
    }

    #[test]
    fn chunked_body() {
        let mut c = Chunked::new(Vec::new());
        c.write_all(b"hello").unwrap();
        c.write_all(&[b'x'; 17]).unwrap();
        let out = c.finish().unwrap();
        assert_eq!(
            out,
            [
                b"5\r\nhello\r\n11\r\n".as_slice(),
                &[b'x'; 17],
                b"\r\n0\r\n\r\n"
            ]
            .concat()
        );
    }
}
