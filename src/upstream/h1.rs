//! HTTP/1.1 to a backend, driven by the task that serves the request: no connection task,
//! no channel, no oneshot. The request head is encoded straight from the `http` types
//! into one write, the response head is parsed with httparse from the connection's own
//! read buffer (header values are slices of it, never copies), and the response body
//! (`Body`) reads the connection as the client's side polls it. A request body still
//! streaming when the response begins is written by a task of its own (the rare case), so
//! both directions move whatever the other does, as they did with hyper's connection task.
//!
//! A connection is reused only when both messages ended as their framing said and
//! nothing asked to close. An idle connection is checked before reuse without a system
//! call (the reactor's readiness): one the backend closed, or wrote to, is dropped. A
//! reused connection that the backend closes before a single response byte, under a
//! request without a body, is the keep-alive race every proxy meets: the request goes
//! out again on another connection (`Failure::stale`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::{BodyError, RequestBody};
use super::pool::{Pool, PoolKey};
use super::Added;

/// Header fields a response head may have (hyper's client default).
const MAX_HEADERS: usize = 100;
/// Up to this many, where the fields lie is noted on the stack; more take a vector.
const FEW_HEADERS: usize = 24;
/// The largest response head (hyper's client default buffer limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// A chunk-size line, and a trailer section, may not exceed these.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;
/// Room made before a read: small enough for an idle connection to keep, large enough
/// that a typical response arrives in one read.
const READ_ROOM: usize = 8192;
/// The most a read asks for (hyper's adaptive read buffer grows to about this too).
const MAX_ROOM: usize = 256 * 1024;
/// Data frames up to this size are copied beside the head or the chunk framing, so they
/// leave in one write; larger ones are written from their own buffer.
const COPY_BELOW: usize = 8192;

/// Why an exchange on an HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connection closed before a response")]
    Closed,
    #[error("connection closed before the end of the response")]
    Incomplete,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("connection error")]
    Io(#[from] io::Error),
    /// The client's request body failed: its fault, not the backend's.
    #[error("request body")]
    Body(#[source] BodyError),
}

/// A connection's stream: plain TCP or TLS (boxed: the TLS state is large, and the
/// connection moves between the pool and requests).
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// An open HTTP/1.1 connection between exchanges.
pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed; its room is kept for the next response.
    buf: BytesMut,
    /// Room made before a read: doubled while reads fill it (a large body), back to
    /// `READ_ROOM` when the connection goes idle.
    room: usize,
    /// The field names of the last response heads, by position: a backend sends the same
    /// names in the same order, and a name found here is a comparison and a clone, where
    /// `HeaderName::from_bytes` lowercases, looks up and (custom names) allocates.
    names: Names,
}

/// Field names by their position in a response head, as the backend spelled them.
#[derive(Default)]
struct Names(Vec<(Box<[u8]>, HeaderName)>);

/// Positions remembered: more fields than that are parsed every time.
const NAMES_KEPT: usize = 32;

impl Names {
    fn get(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, H1Error> {
        if let Some((seen, name)) = self.0.get(i) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| H1Error::Invalid("bad header name"))?;
        if i < self.0.len() {
            self.0[i] = (raw.into(), name.clone());
        } else if i == self.0.len() && i < NAMES_KEPT {
            self.0.push((raw.into(), name.clone()));
        }
        Ok(name)
    }
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            room: READ_ROOM,
            names: Names::default(),
        }
    }

    /// Whether an idle connection can carry a request: the backend has neither closed it
    /// nor sent anything since its last response. The reactor's readiness answers without
    /// a system call; only a readable socket is read (a TLS one may hold a session ticket,
    /// which is no reason to drop it).
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let tcp = match &self.io {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => tls.get_ref().0,
        };
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                let mut read = ReadBuf::new(&mut byte);
                // Pending: nothing there after all (or TLS records without data)
                matches!(
                    Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
                    Poll::Pending
                )
            }
        }
    }

    /// The stream and whatever was read past the 101 response, for a tunnel.
    pub fn into_upgraded(self) -> (Io, Bytes) {
        (self.io, self.buf.freeze())
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.room / 4 {
            self.buf.reserve(self.room);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let read = self.io.read_buf(&mut self.buf);
        let n = ready!(std::pin::pin!(read).poll(cx))?;
        // a read that filled all the room: more is waiting, so read more at once (a 300 MB
        // body took ~60% longer in 8 KiB reads)
        if n == spare && self.room < MAX_ROOM {
            self.room *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Between exchanges: a buffer grown for a large body is let go (an idle pooled
    /// connection keeps at most `READ_ROOM` of it).
    fn idle(&mut self) {
        if self.room > READ_ROOM {
            self.room = READ_ROOM;
            if self.buf.capacity() > READ_ROOM {
                self.buf = BytesMut::new();
            }
        }
    }
}

/// A failed exchange, with what the caller may still do with the request.
pub struct Failure {
    pub error: H1Error,
    /// The request went out on a reused connection that closed before any answer, and
    /// had no body: send it again on another connection (the backend never saw it, or
    /// saw a request it may be sent again anyway: the keep-alive race).
    pub stale: Option<Request<RequestBody>>,
    /// The head of a request without a body that was written (the backend may have
    /// seen it), for a retry of a safe method elsewhere.
    pub written: Option<Parts>,
}

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// No body, or all of it read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
}

#[derive(Clone, Copy, Debug)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// One request's writing side: the head and body still to send.
struct Writer {
    wbuf: Vec<u8>,
    wpos: usize,
    /// A large data frame, written after `wbuf`.
    data: Option<Bytes>,
    /// The request body still to read; `None` once its end is encoded.
    body: Option<RequestBody>,
    chunked: bool,
    /// A chunk's closing CRLF, written before the next chunk-size line.
    crlf_owed: bool,
    /// The trailer fields the request declared (`Trailer`); only those are sent, as
    /// hyper does.
    declared: Option<HeaderValue>,
    /// Everything written and flushed.
    done: bool,
}

impl Writer {
    /// Encode the head of `parts` (origin-form URI, `Host` set) and settle the body's
    /// framing the way hyper's client does: the request's own `Content-Length`, else the
    /// body's exact size, else chunked; GET, HEAD and CONNECT of unknown length send none.
    fn new(parts: &Parts, body: RequestBody, added: &Added<'_>) -> Writer {
        let mut wbuf = Vec::with_capacity(512);
        wbuf.extend_from_slice(parts.method.as_str().as_bytes());
        wbuf.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        wbuf.extend_from_slice(target.as_bytes());
        wbuf.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_length = false;
        let mut declared = None;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                has_length = true;
            } else if name == header::TRAILER {
                declared = Some(value.clone());
            }
            wbuf.extend_from_slice(name.as_str().as_bytes());
            wbuf.extend_from_slice(b": ");
            wbuf.extend_from_slice(value.as_bytes());
            wbuf.extend_from_slice(b"\r\n");
        }
        added.each(|name, value| {
            wbuf.extend_from_slice(name);
            wbuf.extend_from_slice(b": ");
            wbuf.extend_from_slice(value);
            wbuf.extend_from_slice(b"\r\n");
        });
        let mut chunked = false;
        let body = if body.is_end_stream() {
            None
        } else if has_length {
            Some(body)
        } else if let Some(n) = body.size_hint().exact() {
            wbuf.extend_from_slice(b"content-length: ");
            push_decimal(&mut wbuf, n);
            wbuf.extend_from_slice(b"\r\n");
            Some(body)
        } else if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
            None
        } else {
            wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            chunked = true;
            Some(body)
        };
        wbuf.extend_from_slice(b"\r\n");
        Writer {
            wbuf,
            wpos: 0,
            data: None,
            body,
            chunked,
            crlf_owed: false,
            declared: declared.filter(|_| chunked),
            done: false,
        }
    }

    /// Write what is ready; `Ready(Ok)` once the whole request is written and flushed.
    fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        loop {
            // gather what the body has ready, so it leaves in as few writes as it can
            while self.data.is_none() && self.wbuf.len() - self.wpos < 4 * COPY_BELOW {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame),
                    Poll::Ready(None) => self.end(None),
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        return Poll::Ready(Err(H1Error::Body(e)));
                    }
                }
            }
            let mut wrote = false;
            while self.wpos < self.wbuf.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.wbuf[self.wpos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.wpos += n;
                wrote = true;
            }
            self.wbuf.clear();
            self.wpos = 0;
            if let Some(data) = self.data.as_mut() {
                while !data.is_empty() {
                    let n = ready!(Pin::new(&mut *io).poll_write(cx, data))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    data.advance(n);
                }
                self.data = None;
                wrote = true;
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if !wrote {
                // the body is not ready: what was written goes out (TLS) while it waits
                if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                    return Poll::Ready(Err(e.into()));
                }
                return Poll::Pending;
            }
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return;
                }
                if self.chunked {
                    if std::mem::take(&mut self.crlf_owed) {
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                    push_hex(&mut self.wbuf, data.len());
                    self.wbuf.extend_from_slice(b"\r\n");
                    self.crlf_owed = true;
                }
                if data.len() < COPY_BELOW {
                    self.wbuf.extend_from_slice(&data);
                } else {
                    self.data = Some(data);
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.end(Some(trailers));
                }
            }
        }
    }

    /// The body's end: the last chunk and the declared trailer fields when chunked.
    fn end(&mut self, trailers: Option<HeaderMap>) {
        self.body = None;
        if !self.chunked {
            return;
        }
        if std::mem::take(&mut self.crlf_owed) {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        self.wbuf.extend_from_slice(b"0\r\n");
        if let (Some(trailers), Some(declared)) = (trailers, &self.declared) {
            for (name, value) in &trailers {
                if declares(declared, name) && trailer_allowed(name) {
                    self.wbuf.extend_from_slice(name.as_str().as_bytes());
                    self.wbuf.extend_from_slice(b": ");
                    self.wbuf.extend_from_slice(value.as_bytes());
                    self.wbuf.extend_from_slice(b"\r\n");
                }
            }
        }
        self.wbuf.extend_from_slice(b"\r\n");
    }
}

/// `Trailer: a, b` lists `name`.
pub(crate) fn declares(declared: &HeaderValue, name: &HeaderName) -> bool {
    declared.as_bytes().split(|b| *b == b',').any(|t| {
        t.trim_ascii()
            .eq_ignore_ascii_case(name.as_str().as_bytes())
    })
}

/// Fields a trailer section may not carry (RFC 9110 section 6.5.1: framing, routing,
/// controls).
fn trailer_allowed(name: &HeaderName) -> bool {
    ![
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::TRAILER,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::EXPECT,
        header::TE,
        header::CONNECTION,
    ]
    .contains(name)
}

pub(crate) fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

pub(crate) fn push_hex(buf: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// One exchange on `conn`: write the request and read the response head, both at once
/// (a backend may answer before the request body ends). `reused`: the connection served
/// an earlier request; `added`: fields written after the request's own.
pub async fn send(
    mut conn: Conn,
    req: Request<RequestBody>,
    reused: bool,
    added: &Added<'_>,
) -> Result<Response<Body>, Box<Failure>> {
    let (parts, body) = req.into_parts();
    let bodiless = body.is_end_stream();
    let mut writer = Writer::new(&parts, body, added);
    let head = parts.method == Method::HEAD;
    let mut write_error = None;
    let mut read_any = false;
    let polled = std::future::poll_fn(|cx| {
        if !writer.done && write_error.is_none() {
            match writer.poll_write(&mut conn.io, cx) {
                Poll::Ready(Err(H1Error::Body(e))) => return Poll::Ready(Err(H1Error::Body(e))),
                // the backend may have answered and closed: read what it said
                Poll::Ready(Err(e)) => write_error = Some(e),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        poll_head(&mut conn, cx, head, &mut read_any)
    })
    .await;
    let fail = |error: H1Error, parts: Parts| {
        let closed =
            matches!(error, H1Error::Closed) || matches!(&error, H1Error::Io(e) if is_reset(e));
        if reused && bodiless && !read_any && closed {
            return Box::new(Failure {
                error,
                stale: Some(Request::from_parts(parts, RequestBody::empty())),
                written: None,
            });
        }
        Box::new(Failure {
            error,
            stale: None,
            written: bodiless.then_some(parts),
        })
    };
    let (resp, framing, keep_alive, hop_by_hop_gone) = match polled {
        Ok(parsed) => parsed,
        Err(error) => {
            let error = match (error, write_error) {
                (H1Error::Closed, Some(w)) => w,
                (e, _) => e,
            };
            return Err(fail(error, parts));
        }
    };
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let reusable = keep_alive && write_error.is_none() && !upgrade;
    let mut body = Body {
        conn: Some(conn),
        streaming: None,
        framing,
        reusable,
        hop_by_hop_gone,
        cut: false,
        back: None,
    };
    // the tunnel takes an upgraded connection: a body after an upgrade request is not sent
    if !writer.done && write_error.is_none() && !upgrade {
        body.stream_rest(writer);
    }
    Ok(resp.map(|()| body))
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A response head, its body's framing, whether the connection may carry another
/// exchange, and whether the hop-by-hop fields are already gone.
type Head = (Response<()>, Framing, bool, bool);

/// Read until a final response head is parsed (1xx interim responses other than 101 are
/// skipped); the body stays in the buffer.
fn poll_head(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    head_request: bool,
    read_any: &mut bool,
) -> Poll<Result<Head, H1Error>> {
    loop {
        if !conn.buf.is_empty() {
            let before = conn.buf.len();
            if let Some(parsed) = parse_head(&mut conn.buf, &mut conn.names, head_request)? {
                return Poll::Ready(Ok(parsed));
            }
            if conn.buf.len() < before {
                // an interim response was dropped: what follows it may be in the buffer
                // already (a read can wait for bytes that will never come)
                continue;
            }
            if conn.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(H1Error::HeadTooLarge));
            }
        }
        let n = ready!(conn.poll_fill(cx))?;
        if n == 0 {
            return Poll::Ready(Err(if *read_any {
                H1Error::Incomplete
            } else {
                H1Error::Closed
            }));
        }
        *read_any = true;
    }
}

/// A final response head from the front of `buf`, taken off it; `None` while incomplete
/// (or after an interim response, which is dropped).
fn parse_head(
    buf: &mut BytesMut,
    names: &mut Names,
    head_request: bool,
) -> Result<Option<Head>, H1Error> {
    // uninitialised: zeroing room for 100 fields would cost more than parsing them
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("too many header fields"))
        }
        Err(_) => return Err(H1Error::Invalid("malformed head")),
    };
    let code = parsed.code.unwrap_or(0);
    let minor = parsed.version;
    // where each field lies in the head: the head is split off the buffer below, and
    // the values become slices of it
    let base = buf.as_ptr() as usize;
    let count = parsed.headers.len();
    let mut small = [(0u32, 0u32, 0u32, 0u32); FEW_HEADERS];
    let mut many = Vec::new();
    let at: &mut [(u32, u32, u32, u32)] = if count <= FEW_HEADERS {
        &mut small[..count]
    } else {
        many.resize(count, (0, 0, 0, 0));
        &mut many
    };
    // offsets fit: the head is at most MAX_HEAD bytes
    for (slot, field) in at.iter_mut().zip(parsed.headers.iter()) {
        *slot = (
            (field.name.as_ptr() as usize - base) as u32,
            field.name.len() as u32,
            (field.value.as_ptr() as usize - base) as u32,
            field.value.len() as u32,
        );
    }
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("bad status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(None);
    }
    let version = if minor == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut keep_alive = version == Version::HTTP_11;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    // `Connection` names fields besides its usual tokens
    let mut nominates = false;
    for (i, &(name_at, name_len, value_at, value_len)) in at.iter().enumerate() {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = names.get(i, &head[name_at..name_at + name_len as usize])?;
        let value = head.slice(value_at..value_at + value_len as usize);
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| H1Error::Invalid("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting content-length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // the last coding decides (RFC 9112 section 6.3)
            chunked = Some(ends_chunked(value.as_bytes()));
        } else if name == header::CONNECTION {
            for t in value.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
                {
                    nominates = true;
                }
            }
            // kept only when it names other fields: the proxy then strips them all
            if !upgrade && !nominates {
                continue;
            }
        }
        // hop-by-hop (RFC 9110 section 7.6.1): never appended, so never removed; a 101
        // keeps its own for the client
        if !upgrade && crate::proxy::HOP_BY_HOP.contains(&&name) {
            continue;
        }
        headers.append(name, value);
    }
    let no_body = head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS;
    let framing = if no_body {
        Framing::Done
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length, which must not reach the client
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::Close
    };
    if matches!(framing, Framing::Close) {
        keep_alive = false;
    }
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some((resp, framing, keep_alive, !nominates)))
}

fn parse_length(v: &[u8]) -> Result<u64, H1Error> {
    content_length(v).ok_or(H1Error::Invalid("bad content-length"))
}

/// A `Content-Length` value: 1 to 19 digits (below `u64::MAX`, so no overflow check).
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The last coding a `Transfer-Encoding` value lists is `chunked` (RFC 9112 section
/// 6.3; hyper's `is_chunked_`).
pub(crate) fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Read more into the connection's buffer. A connection closed mid-body is an
/// incomplete response, said on the next poll: this one wakes itself and waits, so that
/// the client side flushes what it was given before the error closes it.
macro_rules! fill {
    ($conn:expr, $cx:expr, $cut:expr) => {
        match $conn.poll_fill($cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) if !*$cut => {
                *$cut = true;
                $cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(H1Error::Incomplete))),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
        }
    };
}

/// Where a connection goes when its exchange ended cleanly: the worker's pool, under
/// its key.
pub type GiveBack = (Rc<Pool>, PoolKey);

/// A response body read from its connection as it is polled. When it ends cleanly the
/// connection goes to `back` (the pool); dropped before, the connection closes.
pub struct Body {
    conn: Option<Conn>,
    /// A request body still streaming when the response began: its own task writes the
    /// rest, whatever the response side is doing (a client that sends all before it reads
    /// would otherwise stall both).
    streaming: Option<Box<Streaming>>,
    framing: Framing,
    /// Both messages allow the connection to carry another exchange.
    reusable: bool,
    /// The head came without hop-by-hop fields (the parser left them out).
    hop_by_hop_gone: bool,
    /// The backend closed mid-body: said one turn later, so that the client side first
    /// sends what it has.
    cut: bool,
    back: Option<GiveBack>,
}

/// The connection shared with the task writing the rest of the request; one thread,
/// and neither side holds the borrow across a poll.
struct Streaming {
    conn: Rc<RefCell<Conn>>,
    written: Rc<Cell<Written>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    Writing,
    Done,
    Failed,
}

impl Body {
    /// Send the connection to `back` when the exchange ends cleanly.
    pub fn give_back_to(&mut self, back: GiveBack) {
        self.back = Some(back);
        self.maybe_done();
    }

    /// The response head holds no hop-by-hop field: the proxy need not look for them.
    pub fn hop_by_hop_gone(&self) -> bool {
        self.hop_by_hop_gone
    }

    /// The connection of a 101 response, for the tunnel.
    pub fn take_upgrade(&mut self) -> Option<Conn> {
        self.back = None;
        self.conn.take()
    }

    /// Write the rest of the request from a task of its own (on the worker's LocalSet).
    fn stream_rest(&mut self, mut writer: Writer) {
        let Some(conn) = self.conn.take() else { return };
        let conn = Rc::new(RefCell::new(conn));
        let written = Rc::new(Cell::new(Written::Writing));
        let (shared, state) = (conn.clone(), written.clone());
        let task = tokio::task::spawn_local(async move {
            let result =
                std::future::poll_fn(|cx| writer.poll_write(&mut shared.borrow_mut().io, cx)).await;
            if let Err(e) = &result {
                tracing::debug!("request body to the backend ended: {e}");
            }
            state.set(if result.is_ok() {
                Written::Done
            } else {
                Written::Failed
            });
        });
        self.streaming = Some(Box::new(Streaming {
            conn,
            written,
            task,
        }));
    }

    /// The exchange ended: the connection goes back, or closes.
    fn maybe_done(&mut self) {
        if !matches!(self.framing, Framing::Done) {
            return;
        }
        if let Some(streaming) = self.streaming.take() {
            let Streaming {
                conn,
                written,
                task,
            } = *streaming;
            // written: the task has ended and let go of the connection; otherwise the
            // backend answered all before the request ended, and what is left of the
            // request is never sent, so the connection cannot be reused
            match (written.get(), Rc::try_unwrap(conn)) {
                (Written::Done, Ok(conn)) => self.conn = Some(conn.into_inner()),
                _ => {
                    task.abort();
                    self.reusable = false;
                }
            }
        }
        if !self.reusable {
            return;
        }
        if let (Some((pool, key)), Some(conn)) = (self.back.take(), self.conn.take()) {
            // bytes past the response's end belong to nothing: such a connection is done
            if conn.buf.is_empty() {
                let mut conn = conn;
                conn.idle();
                pool.put(key, conn);
            }
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(streaming) = &self.streaming {
            streaming.task.abort();
        }
    }
}

/// Up to `left` bytes off the front of `buf` (never empty), and how many are left after.
fn take(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = (buf.len() as u64).min(left);
    (buf.split_to(n as usize).freeze(), left - n)
}

/// The next frame of a response body from `conn`.
fn decode(
    framing: &mut Framing,
    cut: &mut bool,
    conn: &mut Conn,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
    loop {
        match *framing {
            Framing::Done => return Poll::Ready(None),
            Framing::Length(left) => {
                if conn.buf.is_empty() {
                    fill!(conn, cx, cut);
                }
                let (data, left) = take(&mut conn.buf, left);
                *framing = if left == 0 {
                    Framing::Done
                } else {
                    Framing::Length(left)
                };
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Close => {
                if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                let data = conn.buf.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(eol) = memchr::memchr(b'\n', &conn.buf) else {
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(H1Error::Invalid("chunk size line"))));
                    }
                    fill!(conn, cx, cut);
                    continue;
                };
                let size = parse_chunk_size(&conn.buf[..eol])?;
                conn.buf.advance(eol + 1);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if conn.buf.is_empty() {
                    fill!(conn, cx, cut);
                    continue;
                }
                let (data, left) = take(&mut conn.buf, left);
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if conn.buf.len() < 2 {
                    fill!(conn, cx, cut);
                    continue;
                }
                if &conn.buf[..2] != b"\r\n" {
                    return Poll::Ready(Some(Err(H1Error::Invalid("chunk data"))));
                }
                conn.buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = httparse::parse_headers(&conn.buf, &mut fields);
                let (len, trailers) = match parsed {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut map = HeaderMap::new();
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes());
                            let value = HeaderValue::from_bytes(f.value);
                            if let (Ok(name), Ok(value)) = (name, value) {
                                map.append(name, value);
                            }
                        }
                        (len, map)
                    }
                    Ok(httparse::Status::Partial) => {
                        if conn.buf.len() > MAX_TRAILERS {
                            return Poll::Ready(Some(Err(H1Error::Invalid("trailers"))));
                        }
                        fill!(conn, cx, cut);
                        continue;
                    }
                    Err(_) => return Poll::Ready(Some(Err(H1Error::Invalid("trailers")))),
                };
                conn.buf.advance(len);
                *framing = Framing::Done;
                if !trailers.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                return Poll::Ready(None);
            }
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    // after the size: nothing, or whitespace and/or a chunk extension
    let rest_ok = rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t');
    if digits == 0 || digits > 16 || !rest_ok {
        return Err(H1Error::Invalid("chunk size"));
    }
    let mut n = 0u64;
    for d in &line[..digits] {
        let v = (*d as char).to_digit(16).unwrap_or(0);
        n = n << 4 | u64::from(v);
    }
    Ok(n)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let polled = match (&this.streaming, this.conn.as_mut()) {
            (Some(streaming), _) => {
                let mut conn = streaming.conn.borrow_mut();
                decode(&mut this.framing, &mut this.cut, &mut conn, cx)
            }
            (None, Some(conn)) => decode(&mut this.framing, &mut this.cut, conn, cx),
            (None, None) => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Err(_))) => {
                this.conn = None;
                if let Some(streaming) = this.streaming.take() {
                    streaming.task.abort();
                }
                this.framing = Framing::Done;
            }
            Poll::Ready(_) => this.maybe_done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
