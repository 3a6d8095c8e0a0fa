//! HTTP/1.1 from clients, served in the connection's own task for the common request: a
//! bodiless HTTP/1.1 request (no body framing but `Content-Length: 0`), with no `Expect`
//! and no protocol switch (`Upgrade`, `CONNECT`). Its head is parsed with httparse from the
//! connection's read buffer (header values are slices of it), it goes to `proxy::handle`,
//! and the response head is encoded with hyper's server rules into one write with the
//! body frames that are ready: none of hyper's dispatch, and one parse and one encode
//! (README, "Per-request round, fourth pass", has the counts).
//!
//! Anything else (a body, HTTP/1.0, a head httparse or the `http` types refuse, more fields
//! than `FEW_HEADERS`, a head H1Guard cut short) hands the connection to hyper for the rest
//! of its life, with the bytes read so far (`Ended::Handoff`): hyper then answers exactly
//! as it did before this path existed, errors included.
//!
//! The rules kept from hyper's HTTP/1.1 server (`proto/h1/role.rs`, `conn.rs`):
//! - the status line: canonical reason, `<none>` without one;
//! - framing: the body's exact size or the response's `Content-Length`, else chunked;
//!   none for HEAD, 204, 304 and 1xx; an implicit `content-length: 0` for an empty body
//!   (not for HEAD, which keeps the length the response gave);
//! - `Connection`, `Transfer-Encoding` and `Trailer` values joined on one line; `close`
//!   added when the request asked for it or the worker is shutting down, and the
//!   connection closed after; trailers sent only when chunked and declared in `Trailer`;
//! - a cached `date` last; 101 closes after its head, another 1xx becomes a 500;
//! - a client gone (EOF) while its response is awaited cancels the request (hyper's
//!   default without half-close);
//! - a body shorter than its length, or failing, closes the connection.
//!
//! All reads go through H1Guard, so its scan, its head and idle timeouts and its answers
//! stay as they were.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::response::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::accesslog::LogBody;
use crate::live::Worker;
use crate::proxy::{self, ConnInfo};
use crate::upstream::h1::{content_length, declares, ends_chunked, push_decimal, push_hex};
use crate::upstream::NoBody;

use super::Shutdown;

/// Header fields a head parsed here may have; a head with more goes to hyper.
const FEW_HEADERS: usize = 32;
/// A cleared response map kept for the next request up to this capacity (an idle
/// connection keeps little).
const SPARE_FIELDS: usize = 64;
/// Room made before a read (hyper's first read buffer is as large).
const READ_ROOM: usize = 8192;
/// hyper's longest request target; a longer one goes to hyper, which answers 414.
const MAX_URI: usize = 65534;
/// Data frames up to this size are copied beside the head or the chunk framing, so they
/// leave in one write; larger ones are written from their own buffer.
const COPY_BELOW: usize = 8192;

/// How the fast path let go of the connection.
pub enum Ended {
    /// The connection is done (closed, or to be dropped).
    Closed,
    /// A request this path does not serve: hyper serves the connection from these bytes
    /// on (already scanned by H1Guard).
    Handoff(Bytes),
}

/// Serve requests from `io` until the connection ends or a request needs hyper.
/// `closing` changes when the worker shuts down: an idle connection closes then, and a
/// response in flight is the last one (`connection: close`).
pub async fn serve<I>(
    io: &mut I,
    worker: &Worker,
    conn: &ConnInfo,
    closing: &mut watch::Receiver<()>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let probe = closing.clone();
    let changed = pin!(closing.changed());
    let mut shutdown = Shutdown::new(probe, changed);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // the last response's field map, cleared: the next request's fields go into it, which
    // saves the two allocations (and frees) of a new map per request
    let mut spare = HeaderMap::new();
    loop {
        // a whole head, read as it comes
        let (req, asks) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &mut spare) {
                    Parsed::Request(req, asks) => break (req, asks),
                    Parsed::Partial => {}
                    Parsed::Other => return Ended::Handoff(buf.freeze()),
                }
            }
            let read = poll_fn(|cx| {
                if buf.is_empty() && shutdown.asked(cx) {
                    return Poll::Ready(Ok(0));
                }
                poll_fill(io, &mut buf, cx)
            })
            .await;
            match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        };
        let head = req.method() == Method::HEAD;
        let resp = {
            let mut handling = pin!(proxy::handle(worker, conn, req));
            let mut gone = false;
            poll_fn(|cx| {
                if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(resp));
                }
                // a client gone before its answer ends the request (as hyper without
                // half-close); looked for only while nothing is pipelined, as hyper does
                // (behind a head H1Guard cut short, its EOF is not the client's)
                while !gone && buf.is_empty() {
                    match poll_fill(io, &mut buf, cx) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => gone = true,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => break,
                    }
                }
                if gone {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        let Some(resp) = resp else {
            return Ended::Closed;
        };
        let keep_alive = asks.keep_alive && !shutdown.asked_now();
        let (mut parts, body) = resp.into_parts();
        out.clear();
        let Ok((framing, last)) = encode_head(&mut out, &mut parts, &body, head, keep_alive) else {
            tracing::debug!(peer = %conn.peer, "response head refused: bad framing fields");
            return Ended::Closed;
        };
        if parts.headers.capacity() <= SPARE_FIELDS {
            std::mem::swap(&mut spare, &mut parts.headers);
            spare.clear();
        }
        drop(parts);
        let mut writer = Writer {
            out: &mut out,
            at: 0,
            data: None,
            body: (!framing.is_empty()).then_some(body),
            framing,
            crlf_owed: false,
            trailers: asks.trailers,
            complete: true,
        };
        let written = poll_fn(|cx| writer.poll_write(io, cx)).await;
        let complete = writer.complete;
        drop(writer);
        if let Err(e) = written {
            tracing::debug!(peer = %conn.peer, "response not written: {e}");
            return Ended::Closed;
        }
        if last || !complete {
            let _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await;
            return Ended::Closed;
        }
        if out.capacity() > 4 * COPY_BELOW {
            // a large head or body let go: an idle connection keeps little
            out = Vec::new();
        }
    }
}

/// Read what `io` has into `buf`'s room (made when little is left).
fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_ROOM / 8 {
        buf.reserve(READ_ROOM);
    }
    pin!(io.read_buf(buf)).poll(cx)
}

/// What a request's head asks of its response and connection.
#[derive(Clone, Copy)]
struct Asks {
    /// No `Connection: close`: the connection stays open after the response.
    keep_alive: bool,
    /// `TE: trailers`: the client takes trailer fields (hyper's `allow_trailer_fields`).
    trailers: bool,
}

// returned once per request and taken apart at once: boxing would only add an allocation
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request this path serves, and what its head says of the response.
    Request(Request<NoBody>, Asks),
    /// The head is not all here yet.
    Partial,
    /// hyper's to serve.
    Other,
}

/// Parse the head at the start of `buf`; a request this path serves is taken out of it,
/// its fields in `spare`'s room.
fn parse(buf: &mut BytesMut, spare: &mut HeaderMap) -> Parsed {
    // uninitialised: zeroing room for the fields costs more than parsing a few
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; FEW_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut req, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if target.len() >= MAX_URI {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let target = (at(target.as_bytes()), target.len());
    // where each field's name and value lie, so that the value can be a slice of the
    // head once frozen; names are compared as bytes here, made `HeaderName`s once
    let mut spans = [(0u32, 0u32, 0u32, 0u32); FEW_HEADERS];
    let mut asks = Asks {
        keep_alive: true,
        trailers: false,
    };
    let mut length = false;
    let n = req.headers.len();
    for (i, field) in req.headers.iter().enumerate() {
        let (name, value) = (field.name.as_bytes(), field.value);
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            // a body, a switch or a 100-continue: hyper's
            17 if is("transfer-encoding") => return Parsed::Other,
            7 if is("upgrade") => return Parsed::Other,
            6 if is("expect") => return Parsed::Other,
            // a length but 0, or a repeated one (hyper keeps one of equal lengths); the
            // guard notes the first
            14 if is("content-length")
                && (value != b"0" || std::mem::replace(&mut length, true)) =>
            {
                return Parsed::Other
            }
            10 if is("connection") && has_token(value, b"close") => asks.keep_alive = false,
            2 if is("te") && has_token(value, b"trailers") => asks.trailers = true,
            _ => {}
        }
        // a head is far below 4 GiB (H1Guard's limit)
        let span = |s: &[u8]| (at(s) as u32, s.len() as u32);
        let ((name_at, name_len), (value_at, value_len)) = (span(name), span(value));
        spans[i] = (name_at, name_len, value_at, value_len);
    }
    let head = buf.split_to(len).freeze();
    let slice = |at: u32, len: u32| at as usize..(at + len) as usize;
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1)) else {
        // hyper answers it (400)
        unsplit(buf, &head);
        return Parsed::Other;
    };
    // the fields go straight into the request's own map: a map made beside it would
    // cost the drop of the one it replaces
    let mut req = Request::new(NoBody);
    let headers = req.headers_mut();
    std::mem::swap(headers, spare);
    headers.reserve(n);
    for &(name_at, name_len, value_at, value_len) in &spans[..n] {
        let Ok(name) = HeaderName::from_bytes(&head[slice(name_at, name_len)]) else {
            unsplit(buf, &head);
            return Parsed::Other;
        };
        // httparse checked the value's bytes
        let value = field_value(head.slice(slice(value_at, value_len)));
        headers.append(name, value);
    }
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    Parsed::Request(req, asks)
}

/// Put a head split off `buf` back in front of it, for hyper (rare: a head the `http`
/// types refuse).
fn unsplit(buf: &mut BytesMut, head: &[u8]) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// A field value httparse accepted (no CTL but HTAB, obs-text allowed): valid for
/// `HeaderValue`, so the check cannot fail; an empty value stands in if it ever did.
fn field_value(bytes: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How the response body is framed.
enum Framing {
    /// `Content-Length`: this many bytes still to send.
    Length(u64),
    /// Chunked; the `Trailer` values that declare what trailer fields may follow.
    Chunked(Option<Vec<HeaderValue>>),
}

impl Framing {
    /// Nothing (more) to send.
    fn is_empty(&self) -> bool {
        matches!(self, Framing::Length(0))
    }
}

/// The body's length as hyper's server sees it.
#[derive(Clone, Copy)]
enum BodyLength {
    /// The body is empty (`is_end_stream`).
    Empty,
    Known(u64),
    Unknown,
}

/// A line of joined values being written (hyper's `is_name_written`).
#[derive(Clone, Copy, PartialEq)]
enum Open {
    No,
    /// Further values of the name are dropped (`Content-Length`).
    Skip,
    /// Further values are appended with `, `.
    Join,
    /// `Transfer-Encoding`: as `Join`, `chunked` added when the last value lacks it.
    Coding,
}

/// Encode the response head as hyper's HTTP/1.1 server does (`Server::encode`): the
/// framing it settles and whether the connection ends after this response. Err where
/// hyper refuses the response (conflicting framing fields).
fn encode_head(
    dst: &mut Vec<u8>,
    parts: &mut Parts,
    body: &LogBody,
    head_req: bool,
    keep_alive: bool,
) -> Result<(Framing, bool), ()> {
    let mut status = parts.status;
    let mut length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(BodyLength::Unknown, BodyLength::Known)
    };
    let mut last = !keep_alive;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        last = true;
    } else if status.is_informational() {
        // hyper sends no 1xx from a service: a bare 500, and the connection ends
        tracing::warn!("response with 1xx status code not supported");
        status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        length = BodyLength::Empty;
        last = true;
    }
    if status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        let reason = status.canonical_reason().unwrap_or("<none>");
        dst.extend_from_slice(reason.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_chunk = !head_req && !no_body;
    let can_length = !no_body;
    // keep-alive off: `close` joins the `Connection` values (or ends the map as a new one)
    let add_close = !keep_alive;
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut declared: Option<Vec<HeaderValue>> = None;
    let mut prev_len = None;
    let mut open = Open::No;
    let mut must_chunk = false;
    let mut saw_close = false;
    let mut saw_connection = false;
    let mut prev: Option<&HeaderName> = None;
    for (name, value) in &parts.headers {
        if prev != Some(name) {
            end_line(dst, &mut open, must_chunk, prev, add_close && !saw_close);
            prev = Some(name);
        }
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && open == Open::No {
                    return Err(());
                }
                match length {
                    BodyLength::Known(n) => {
                        if open == Open::No {
                            framing = Framing::Length(n);
                            start_line(dst, b"content-length: ", value);
                            wrote_len = true;
                            open = Open::Skip;
                        }
                        continue;
                    }
                    BodyLength::Unknown => {
                        let n = content_length(value.as_bytes()).ok_or(())?;
                        match prev_len {
                            Some(p) if p != n => return Err(()),
                            Some(_) => continue,
                            None => {
                                framing = Framing::Length(n);
                                start_line(dst, b"content-length: ", value);
                                wrote_len = true;
                                open = Open::Skip;
                                prev_len = Some(n);
                                continue;
                            }
                        }
                    }
                    // an empty body: only HEAD keeps the length the response gave
                    BodyLength::Empty if !head_req => continue,
                    BodyLength::Empty => wrote_len = true,
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && open == Open::No {
                    return Err(());
                }
                if !can_chunk {
                    continue;
                }
                wrote_len = true;
                must_chunk = !ends_chunked(value.as_bytes());
                if open == Open::No {
                    framing = Framing::Chunked(None);
                }
                value_line(dst, &mut open, Open::Coding, b"transfer-encoding: ", value);
                continue;
            }
            header::CONNECTION => {
                saw_connection = true;
                if has_token(value.as_bytes(), b"close") {
                    saw_close = true;
                    last = true;
                }
                value_line(dst, &mut open, Open::Join, b"connection: ", value);
                continue;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if !can_chunk {
                    continue;
                }
                declared.get_or_insert_with(Vec::new).push(value.clone());
                value_line(dst, &mut open, Open::Join, b"trailer: ", value);
                continue;
            }
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    end_line(dst, &mut open, must_chunk, prev, add_close && !saw_close);
    if add_close && !saw_connection {
        dst.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_len {
        framing = match length {
            BodyLength::Unknown if can_chunk => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked(None)
            }
            BodyLength::Unknown => Framing::Length(0),
            BodyLength::Empty | BodyLength::Known(0) => {
                if can_length && !head_req {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(n) if can_length => {
                dst.extend_from_slice(b"content-length: ");
                push_decimal(dst, n);
                dst.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            BodyLength::Known(_) => Framing::Length(0),
        };
    }
    if !can_chunk {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        push_date(dst);
        dst.extend_from_slice(b"\r\n\r\n");
    } else {
        dst.extend_from_slice(b"\r\n");
    }
    if let Framing::Chunked(allowed) = &mut framing {
        *allowed = declared;
    }
    Ok((framing, last))
}

fn start_line(dst: &mut Vec<u8>, name_colon: &[u8], value: &HeaderValue) {
    dst.extend_from_slice(name_colon);
    dst.extend_from_slice(value.as_bytes());
}

/// A value of a name whose values share one line: the line starts (as `kind`), or the
/// value joins the open one.
fn value_line(
    dst: &mut Vec<u8>,
    open: &mut Open,
    kind: Open,
    name_colon: &[u8],
    value: &HeaderValue,
) {
    if *open == Open::No {
        start_line(dst, name_colon, value);
        *open = kind;
    } else {
        dst.extend_from_slice(b", ");
        dst.extend_from_slice(value.as_bytes());
    }
}

/// End a line of joined values, if one is open; `close` is added to a `Connection` line
/// when keep-alive is off and no value said it.
fn end_line(
    dst: &mut Vec<u8>,
    open: &mut Open,
    must_chunk: bool,
    name: Option<&HeaderName>,
    add_close: bool,
) {
    match *open {
        Open::No => return,
        Open::Coding if must_chunk => dst.extend_from_slice(b", chunked"),
        Open::Join if add_close && name == Some(&header::CONNECTION) => {
            dst.extend_from_slice(b", close")
        }
        _ => {}
    }
    dst.extend_from_slice(b"\r\n");
    *open = Open::No;
}

thread_local! {
    /// The `date` value and the second it was made for: formatted once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn push_date(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *text = httpdate::fmt_http_date(now);
            *at = second;
        }
        dst.extend_from_slice(text.as_bytes());
    });
}

/// Trailer fields hyper's server never sends (its `is_valid_trailer_field`).
fn trailer_allowed(name: &HeaderName) -> bool {
    ![
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::HOST,
        header::MAX_FORWARDS,
        header::SET_COOKIE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::TE,
    ]
    .contains(name)
}

/// One response's body on its way out, behind its head in `out`.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    at: usize,
    /// A large data frame, written after `out`.
    data: Option<Bytes>,
    /// The body still to read; `None` once its end is encoded.
    body: Option<LogBody>,
    framing: Framing,
    /// A chunk's closing CRLF, written before the next chunk-size line.
    crlf_owed: bool,
    /// The client takes trailer fields.
    trailers: bool,
    /// False when the body failed or ended short of its length: the connection closes.
    complete: bool,
}

impl Writer<'_> {
    /// Write what is ready; Ready(Ok) once the whole response is written and flushed.
    fn poll_write<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            // gather what the body has ready, so it leaves in as few writes as it can
            while self.data.is_none() && self.out.len() - self.at < 4 * COPY_BELOW {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame),
                    Poll::Ready(None) => self.end(None),
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!("response body failed: {e}");
                        // what is written stays written; the connection closes after it
                        self.body = None;
                        self.complete = false;
                    }
                }
            }
            let mut wrote = false;
            if self.at < self.out.len() {
                let n = match &self.data {
                    Some(data) => {
                        let bufs = [IoSlice::new(&self.out[self.at..]), IoSlice::new(data)];
                        ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs))?
                    }
                    None => ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.at..]))?,
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                let head = n.min(self.out.len() - self.at);
                self.at += head;
                if let Some(data) = self.data.as_mut() {
                    data.advance(n - head);
                }
                wrote = true;
            }
            if self.at == self.out.len() {
                self.out.clear();
                self.at = 0;
                if let Some(data) = self.data.as_mut() {
                    while !data.is_empty() {
                        let n = ready!(Pin::new(&mut *io).poll_write(cx, data))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        data.advance(n);
                        wrote = true;
                    }
                    self.data = None;
                }
            }
            if self.body.is_none() && self.data.is_none() && self.at == self.out.len() {
                return Pin::new(&mut *io).poll_flush(cx);
            }
            if !wrote {
                // the body is not ready: what was written goes out (TLS) while it waits
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                return Poll::Pending;
            }
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>) {
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                self.end(frame.into_trailers().ok());
                return;
            }
        };
        if data.is_empty() {
            return;
        }
        match &mut self.framing {
            Framing::Length(left) => {
                if data.len() as u64 >= *left {
                    // the length is all sent: the rest (if any) is not the client's
                    data.truncate(*left as usize);
                    *left = 0;
                    self.body = None;
                } else {
                    *left -= data.len() as u64;
                }
            }
            Framing::Chunked(_) => {
                if std::mem::take(&mut self.crlf_owed) {
                    self.out.extend_from_slice(b"\r\n");
                }
                push_hex(self.out, data.len());
                self.out.extend_from_slice(b"\r\n");
                self.crlf_owed = true;
            }
        }
        if data.len() < COPY_BELOW {
            self.out.extend_from_slice(&data);
        } else {
            self.data = Some(data);
        }
    }

    /// The body's end: the last chunk and the declared trailer fields when chunked; a
    /// body short of its length leaves the response incomplete.
    fn end(&mut self, trailers: Option<HeaderMap>) {
        self.body = None;
        let declared = match &self.framing {
            Framing::Length(0) => return,
            Framing::Length(_) => {
                self.complete = false;
                return;
            }
            Framing::Chunked(declared) => declared,
        };
        // only called with no large frame pending (the gather loop stops on one), so the
        // end goes straight behind what is gathered
        let out = &mut *self.out;
        if std::mem::take(&mut self.crlf_owed) {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if let (Some(trailers), Some(declared), true) = (trailers, declared, self.trailers) {
            for (name, value) in &trailers {
                if declared.iter().any(|d| declares(d, name)) && trailer_allowed(name) {
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Bytes read before the connection went to hyper, handed on first (not scanned again).
pub struct Rewind<I> {
    pre: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    pub fn new(pre: Bytes, io: I) -> Self {
        Rewind { pre, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
