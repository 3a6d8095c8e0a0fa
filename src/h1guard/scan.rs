//! The HTTP/1.1 request stream of one connection, checked on the raw bytes before hyper
//! parses them: a pure state machine, bytes in, verdict out, no IO.
//!
//! hyper's parser is lenient where a proxy must not be (it drops `Content-Length` when
//! `Transfer-Encoding` is present, takes a bare LF for a line end, a trailing space after a
//! chunk size, ...). The scanner follows the requests a client sends on a connection:
//!
//! ```text
//! Idle -> Head (request line, field lines, empty line) -> body -> Idle ...
//!                                                          |
//!   Content-Length: n bytes | chunked: size line, data, CRLF ..., 0, trailers | none
//! ```
//!
//! A request that asks to switch protocols (an `Upgrade` header on HTTP/1.1, or `CONNECT`,
//! as hyper decides) ends in `Switched`: what follows may be another protocol, and only the
//! response can tell (`resume` when it was not a switch).
//!
//! Verdicts carry the offset in the input where the valid part ends, so the caller can
//! hand exactly that much on. It never panics, whatever the input (a fuzz target feeds it
//! arbitrary bytes), and allocates only when a line continues in a later input.

use crate::config::Limits;

/// What the scanner makes of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// All of it is well-formed.
    Pass,
    /// Well-formed up to `at`, where a protocol-switch request (and its body) ended.
    /// Nothing after it is scanned until `resume`. `connect`: the request was `CONNECT`
    /// (a 2xx switches), else an `Upgrade` (101 switches).
    Switch { at: usize, connect: bool },
    /// A request head that must not reach the server. It starts at `at` in this input
    /// (0 when it began in an earlier one); what comes before it is fine.
    Reject { at: usize, error: HeadError },
    /// The body framing of the current request breaks at `at`.
    BadBody { at: usize, error: BodyError },
}

/// Why a request head is refused; the proxy answers it itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    RequestLine,
    BareLf,
    FieldName,
    SpaceBeforeColon,
    ObsFold,
    FieldValue,
    DuplicateHost,
    MissingHost,
    LengthAndTransferEncoding,
    ConflictingLength,
    BadLength,
    TransferEncodingOnHttp10,
    BadTransferEncoding,
    UnsupportedCoding,
    TooLarge,
    TooManyFields,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::UnsupportedCoding => 501,
            HeadError::TooLarge | HeadError::TooManyFields => 431,
            _ => 400,
        }
    }

    /// The body of the proxy's answer.
    pub fn reason(self) -> &'static str {
        match self {
            HeadError::RequestLine => "bad request: malformed request line",
            HeadError::BareLf => "bad request: line not ended by CRLF",
            HeadError::FieldName => "bad request: malformed header field name",
            HeadError::SpaceBeforeColon => "bad request: whitespace before a header colon",
            HeadError::ObsFold => "bad request: folded header line (obs-fold)",
            HeadError::FieldValue => "bad request: control character in a header value",
            HeadError::DuplicateHost => "bad request: more than one Host header",
            HeadError::MissingHost => "bad request: HTTP/1.1 request without Host",
            HeadError::LengthAndTransferEncoding => {
                "bad request: both Content-Length and Transfer-Encoding"
            }
            HeadError::ConflictingLength => "bad request: conflicting Content-Length values",
            HeadError::BadLength => "bad request: invalid Content-Length",
            HeadError::TransferEncodingOnHttp10 => "bad request: Transfer-Encoding on HTTP/1.0",
            HeadError::BadTransferEncoding => "bad request: invalid Transfer-Encoding",
            HeadError::UnsupportedCoding => "transfer coding not implemented: only chunked is",
            HeadError::TooLarge => "request header fields too large",
            HeadError::TooManyFields => "request header fields too large: too many fields",
        }
    }
}

/// Why a request body's framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    ChunkSize,
    ChunkSizeOverflow,
    ChunkExtension,
    BareLf,
    ChunkEnd,
    Trailer,
    TrailersTooLarge,
}

impl BodyError {
    pub fn reason(self) -> &'static str {
        match self {
            BodyError::ChunkSize => "malformed chunk size",
            BodyError::ChunkSizeOverflow => "chunk size overflows",
            BodyError::ChunkExtension => "malformed or oversized chunk extension",
            BodyError::BareLf => "chunked body line not ended by CRLF",
            BodyError::ChunkEnd => "chunk data not followed by CRLF",
            BodyError::Trailer => "malformed trailer field",
            BodyError::TrailersTooLarge => "trailer section too large",
        }
    }
}

/// Longest chunk extension accepted on one size line (hyper allows 16 KiB in a body).
const MAX_CHUNK_EXTENSION: u16 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests.
    Idle,
    /// In a request head (empty lines before the request line included).
    Head,
    /// Content-Length body bytes still to come.
    Length(u64),
    /// A chunk-size line.
    Size(Size),
    /// Chunk data bytes still to come.
    Data(u64),
    /// The CRLF after chunk data; `lf`: the CR has been seen.
    DataEnd { lf: bool },
    /// The trailer section after the last chunk.
    Trailers,
    /// After a protocol-switch request, until `resume`.
    Switched,
    /// A verdict was given; it stands for the rest of the connection.
    Failed(Verdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    value: u64,
    digits: bool,
    phase: SizePhase,
    extension: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    Digits,
    /// Whitespace after the digits: only a `;` extension may follow (RFC 9112 BWS).
    Space,
    Extension,
    /// CR seen, LF expected.
    Lf,
}

/// What the current head has said so far.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    request_line: bool,
    http10: bool,
    connect: bool,
    upgrade: bool,
    hosts: u8,
    length: Option<u64>,
    transfer_encoding: bool,
    chunked: u8,
    other_coding: bool,
}

/// The scanner of one connection's request stream.
#[derive(Debug)]
pub struct Scanner {
    max_head: usize,
    max_fields: usize,
    state: State,
    head: Head,
    /// Bytes of the current head, or trailer section, so far.
    bytes: usize,
    /// Field lines of the current head, or trailer section, so far.
    fields: usize,
    /// The start of a line that continues in the next input.
    carry: Vec<u8>,
    requests: u64,
}

/// A line that breaks the rules, before it is known to be in a head or in trailers.
enum LineError {
    Head(HeadError),
    Body(BodyError),
}

impl From<HeadError> for LineError {
    fn from(e: HeadError) -> Self {
        LineError::Head(e)
    }
}

impl Scanner {
    pub fn new(limits: &Limits) -> Scanner {
        Scanner {
            max_head: limits.request_header_bytes,
            max_fields: limits.request_headers,
            state: State::Idle,
            head: Head::default(),
            bytes: 0,
            fields: 0,
            carry: Vec::new(),
            requests: 0,
        }
    }

    /// Request heads completed so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether part of a request head has arrived and its end has not.
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// The response to a protocol-switch request did not switch: scan on, the next bytes
    /// start a request.
    pub fn resume(&mut self) {
        if self.state == State::Switched {
            self.state = State::Idle;
        }
    }

    /// Scan the next bytes the client sent.
    pub fn feed(&mut self, data: &[u8]) -> Verdict {
        match self.state {
            State::Failed(Verdict::Reject { error, .. }) => {
                return Verdict::Reject { at: 0, error };
            }
            State::Failed(Verdict::BadBody { error, .. }) => {
                return Verdict::BadBody { at: 0, error };
            }
            _ => {}
        }
        let verdict = self.scan(data);
        if matches!(verdict, Verdict::Reject { .. } | Verdict::BadBody { .. }) {
            self.state = State::Failed(verdict);
            self.carry = Vec::new();
        }
        verdict
    }

    fn scan(&mut self, data: &[u8]) -> Verdict {
        let mut i = 0;
        // where the current head began in this input; 0 when it began before
        let mut start = 0;
        while i < data.len() {
            match self.state {
                State::Idle => {
                    self.head = Head::default();
                    self.bytes = 0;
                    self.fields = 0;
                    start = i;
                    self.state = State::Head;
                }
                State::Head => match self.lines(data, i, false) {
                    Ok(next) => i = next,
                    Err((_, LineError::Head(error))) => {
                        return Verdict::Reject { at: start, error }
                    }
                    Err((at, LineError::Body(error))) => return Verdict::BadBody { at, error },
                },
                State::Trailers => match self.lines(data, i, true) {
                    Ok(next) => i = next,
                    Err((at, LineError::Body(error))) => return Verdict::BadBody { at, error },
                    Err((at, LineError::Head(_))) => {
                        return Verdict::BadBody {
                            at,
                            error: BodyError::Trailer,
                        }
                    }
                },
                State::Length(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    if n == left {
                        self.message_end();
                    } else {
                        self.state = State::Length(left - n);
                    }
                }
                State::Size(size) => match self.size_line(data, i, size) {
                    Ok(next) => i = next,
                    Err((at, error)) => return Verdict::BadBody { at, error },
                },
                State::Data(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    self.state = if n == left {
                        State::DataEnd { lf: false }
                    } else {
                        State::Data(left - n)
                    };
                }
                State::DataEnd { lf } => {
                    match (lf, data[i]) {
                        (false, b'\r') => self.state = State::DataEnd { lf: true },
                        (true, b'\n') => self.state = State::Size(Size::new()),
                        (_, b'\n') => {
                            return Verdict::BadBody {
                                at: i,
                                error: BodyError::BareLf,
                            }
                        }
                        _ => {
                            return Verdict::BadBody {
                                at: i,
                                error: BodyError::ChunkEnd,
                            }
                        }
                    }
                    i += 1;
                }
                State::Switched | State::Failed(_) => return Verdict::Pass,
            }
            if self.state == State::Switched {
                return Verdict::Switch {
                    at: i,
                    connect: self.head.connect,
                };
            }
        }
        Verdict::Pass
    }

    /// Lines of a head or a trailer section from `data[i..]`, until the empty line that
    /// ends it (returns the offset after it) or the end of the input. Errors carry the
    /// offset where the bad line starts in this input (0 when it began before).
    fn lines(
        &mut self,
        data: &[u8],
        mut i: usize,
        trailers: bool,
    ) -> Result<usize, (usize, LineError)> {
        loop {
            let rest = &data[i..];
            let line_at = if self.carry.is_empty() { i } else { 0 };
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                self.count(rest.len(), trailers).map_err(|e| (line_at, e))?;
                self.carry.extend_from_slice(rest);
                return Ok(data.len());
            };
            self.count(lf + 1, trailers).map_err(|e| (line_at, e))?;
            let mut carry = std::mem::take(&mut self.carry);
            let ended = if carry.is_empty() {
                self.line(&rest[..lf], trailers)
            } else {
                carry.extend_from_slice(&rest[..lf]);
                let ended = self.line(&carry, trailers);
                carry.clear();
                ended
            };
            // keep the allocation for the next line that spans two inputs
            self.carry = carry;
            i += lf + 1;
            if ended.map_err(|e| (line_at, e))? {
                return Ok(i);
            }
        }
    }

    /// Count `n` more bytes of the current head or trailer section against the limit.
    fn count(&mut self, n: usize, trailers: bool) -> Result<(), LineError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes <= self.max_head {
            Ok(())
        } else if trailers {
            Err(LineError::Body(BodyError::TrailersTooLarge))
        } else {
            Err(HeadError::TooLarge.into())
        }
    }

    /// One line, without its LF. Returns whether it ended the head or trailer section.
    fn line(&mut self, raw: &[u8], trailers: bool) -> Result<bool, LineError> {
        let Some((&b'\r', line)) = raw.split_last() else {
            return Err(if trailers {
                LineError::Body(BodyError::BareLf)
            } else {
                HeadError::BareLf.into()
            });
        };
        if line.is_empty() {
            if trailers {
                self.message_end();
                return Ok(true);
            }
            if !self.head.request_line {
                // empty lines before a request line are ignored (RFC 9112 section 2.2)
                return Ok(false);
            }
            self.head_end()?;
            return Ok(true);
        }
        if !trailers && !self.head.request_line {
            self.request_line(line)?;
            return Ok(false);
        }
        self.fields += 1;
        if self.fields > self.max_fields {
            return Err(if trailers {
                LineError::Body(BodyError::TrailersTooLarge)
            } else {
                HeadError::TooManyFields.into()
            });
        }
        self.field(line, trailers)?;
        Ok(false)
    }

    /// `method SP request-target SP HTTP-version`, each part exactly so.
    fn request_line(&mut self, line: &[u8]) -> Result<(), HeadError> {
        let bad = HeadError::RequestLine;
        // one pass finds each space and checks the bytes before it (a method and a target
        // are short: cheaper than a memchr call and a second walk over each)
        let sp = line.iter().position(|&b| !is_tchar(b)).ok_or(bad)?;
        if sp == 0 || line[sp] != b' ' {
            return Err(bad);
        }
        let (method, rest) = (&line[..sp], &line[sp + 1..]);
        let sp = rest
            .iter()
            .position(|&b| b <= b' ' || b == 0x7f)
            .ok_or(bad)?;
        if sp == 0 || rest[sp] != b' ' {
            return Err(bad);
        }
        let version = &rest[sp + 1..];
        self.head.http10 = match version {
            b"HTTP/1.1" => false,
            b"HTTP/1.0" => true,
            _ => return Err(bad),
        };
        self.head.connect = method == b"CONNECT";
        self.head.request_line = true;
        Ok(())
    }

    /// `field-name ":" OWS field-value OWS`; the framing fields and Host are remembered.
    fn field(&mut self, line: &[u8], trailer: bool) -> Result<(), HeadError> {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(HeadError::ObsFold);
        }
        // a valid name is tchars up to the colon: one pass checks them and finds it (names
        // are short); any other byte first takes the full check, which names the error
        let colon = match line.iter().position(|&b| !is_tchar(b)) {
            Some(at) if at > 0 && line[at] == b':' => at,
            _ => return Err(Self::bad_name(line)),
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if !field_value_ok(value) {
            return Err(HeadError::FieldValue);
        }
        if trailer {
            return Ok(());
        }
        let head = &mut self.head;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                head.hosts = head.hosts.saturating_add(1);
                if head.hosts > 1 {
                    return Err(HeadError::DuplicateHost);
                }
            }
            // hyper's rule: an Upgrade header asks for a switch on HTTP/1.1
            7 if name.eq_ignore_ascii_case(b"upgrade") => head.upgrade = !head.http10,
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = decimal(value).ok_or(HeadError::BadLength)?;
                match head.length {
                    Some(prev) if prev != n => return Err(HeadError::ConflictingLength),
                    _ => head.length = Some(n),
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if head.http10 {
                    return Err(HeadError::TransferEncodingOnHttp10);
                }
                head.transfer_encoding = true;
                for coding in value.split(|&b| b == b',').map(trim_ows) {
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        head.chunked = head.chunked.saturating_add(1);
                    } else if !coding.is_empty() {
                        head.other_coding = true;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Why a field line whose name is not tchars up to a colon is refused.
    fn bad_name(line: &[u8]) -> HeadError {
        let name = match memchr::memchr(b':', line) {
            Some(colon) => &line[..colon],
            None => return HeadError::FieldName,
        };
        match name.last() {
            Some(b' ' | b'\t') => HeadError::SpaceBeforeColon,
            _ => HeadError::FieldName,
        }
    }

    /// The empty line after the fields: decide the framing of the body.
    fn head_end(&mut self) -> Result<(), HeadError> {
        let head = self.head;
        if !head.http10 && head.hosts == 0 {
            return Err(HeadError::MissingHost);
        }
        if head.transfer_encoding {
            if head.length.is_some() {
                return Err(HeadError::LengthAndTransferEncoding);
            }
            if head.other_coding {
                return Err(HeadError::UnsupportedCoding);
            }
            if head.chunked != 1 {
                return Err(HeadError::BadTransferEncoding);
            }
        }
        self.requests += 1;
        match head.length {
            _ if head.transfer_encoding => self.state = State::Size(Size::new()),
            Some(n) if n > 0 => self.state = State::Length(n),
            _ => self.message_end(),
        }
        Ok(())
    }

    fn message_end(&mut self) {
        self.state = if self.head.upgrade || self.head.connect {
            State::Switched
        } else {
            State::Idle
        };
    }

    /// A chunk-size line from `data[i..]`: `1*HEXDIG [ BWS ";" chunk-ext ] CRLF`.
    fn size_line(
        &mut self,
        data: &[u8],
        mut i: usize,
        mut size: Size,
    ) -> Result<usize, (usize, BodyError)> {
        while i < data.len() {
            let b = data[i];
            let bad = |error| Err((i, error));
            match size.phase {
                SizePhase::Digits => match hex(b) {
                    Some(d) => {
                        if size.value > u64::MAX >> 4 {
                            return bad(BodyError::ChunkSizeOverflow);
                        }
                        size.value = size.value << 4 | d;
                        size.digits = true;
                    }
                    None if !size.digits => return bad(BodyError::ChunkSize),
                    None => match b {
                        b';' => size.phase = SizePhase::Extension,
                        b' ' | b'\t' => size.phase = SizePhase::Space,
                        b'\r' => size.phase = SizePhase::Lf,
                        b'\n' => return bad(BodyError::BareLf),
                        _ => return bad(BodyError::ChunkSize),
                    },
                },
                SizePhase::Space => match b {
                    b' ' | b'\t' => {}
                    b';' => size.phase = SizePhase::Extension,
                    _ => return bad(BodyError::ChunkSize),
                },
                SizePhase::Extension => match b {
                    b'\r' => size.phase = SizePhase::Lf,
                    b'\n' => return bad(BodyError::BareLf),
                    _ if is_ctl(b) => return bad(BodyError::ChunkExtension),
                    _ => {
                        size.extension += 1;
                        if size.extension > MAX_CHUNK_EXTENSION {
                            return bad(BodyError::ChunkExtension);
                        }
                    }
                },
                SizePhase::Lf => {
                    if b != b'\n' {
                        return bad(BodyError::ChunkSize);
                    }
                    self.state = if size.value == 0 {
                        self.bytes = 0;
                        self.fields = 0;
                        State::Trailers
                    } else {
                        State::Data(size.value)
                    };
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        self.state = State::Size(size);
        Ok(i)
    }
}

impl Size {
    fn new() -> Size {
        Size {
            value: 0,
            digits: false,
            phase: SizePhase::Digits,
            extension: 0,
        }
    }
}

/// `tchar` of RFC 9110 section 5.6.2: what a method or a field name is made of.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// A control character other than HTAB.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// `1*DIGIT`, below hyper's largest length.
fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    (n < u64::MAX - 1).then_some(n)
}

/// No control character but HTAB. Eight bytes at a time: values (cookies, tokens) are
/// the bulk of a head, and a byte-at-a-time walk would cost more than hyper's own parse.
fn field_value_ok(v: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let x = u64::from_le_bytes(word);
        // a byte below 0x20, or a byte equal to 0x7f (may flag a clean word: then look)
        let below = x.wrapping_sub(LO * 0x20) & !x & HI;
        let y = x ^ (LO * 0x7f);
        let del = y.wrapping_sub(LO) & !y & HI;
        if (below | del) != 0 && c.iter().any(|&b| is_ctl(b)) {
            return false;
        }
    }
    !chunks.remainder().iter().any(|&b| is_ctl(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> Scanner {
        Scanner::new(&Limits::default())
    }

    fn verdict(input: &[u8]) -> Verdict {
        scanner().feed(input)
    }

    fn rejects(input: &str) -> HeadError {
        match verdict(input.as_bytes()) {
            Verdict::Reject { at: 0, error } => error,
            v => panic!("{input:?}: {v:?}"),
        }
    }

    fn body_error(input: &str) -> BodyError {
        match verdict(input.as_bytes()) {
            Verdict::BadBody { error, .. } => error,
            v => panic!("{input:?}: {v:?}"),
        }
    }

    const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn good_requests_pass_one_after_another() {
        let mut s = scanner();
        let input = format!(
            "\r\n{GET}POST /u?q=1 HTTP/1.1\r\nhost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello\
             PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX: v\t \r\n\r\n\
             5;name=\"v\"\r\nhello\r\n3 ;e\r\nabc\r\n0\r\nChecksum: x\r\n\r\n\
             GET / HTTP/1.0\r\n\r\n"
        );
        assert_eq!(s.feed(input.as_bytes()), Verdict::Pass);
        assert_eq!(s.requests(), 4);
        assert!(!s.in_head());
        assert_eq!(s.feed(b"GET / HT"), Verdict::Pass);
        assert!(s.in_head());
    }

    #[test]
    fn the_verdict_does_not_depend_on_how_the_input_is_split() {
        let inputs = [
            format!("{GET}{GET}"),
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: b\r\n\r\n".to_string(),
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n".to_string(),
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\x00\x01 anything".to_string(),
        ];
        for input in inputs {
            let input = input.as_bytes();
            let whole = verdict(input);
            for cut in 0..=input.len() {
                let mut s = scanner();
                let first = s.feed(&input[..cut]);
                let v = if first == Verdict::Pass {
                    match s.feed(&input[cut..]) {
                        Verdict::Pass => Verdict::Pass,
                        Verdict::Switch { at, connect } => Verdict::Switch {
                            at: at + cut,
                            connect,
                        },
                        Verdict::Reject { error, .. } => Verdict::Reject { at: 0, error },
                        Verdict::BadBody { at, error } => Verdict::BadBody {
                            at: at + cut,
                            error,
                        },
                    }
                } else {
                    first
                };
                // where a rejected head starts depends on the cut: compare the error
                let same = match (whole, v) {
                    (Verdict::Reject { error: a, .. }, Verdict::Reject { error: b, .. }) => a == b,
                    (Verdict::BadBody { error: a, .. }, Verdict::BadBody { error: b, .. }) => {
                        a == b
                    }
                    (a, b) => a == b,
                };
                assert!(
                    same,
                    "{:?} cut at {cut}: {whole:?} vs {v:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn smuggling_forms_are_rejected() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::LengthAndTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", HeadError::LengthAndTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", HeadError::ConflictingLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", HeadError::BadTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", HeadError::BadTransferEncoding),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::TransferEncodingOnHttp10),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HeadError::DuplicateHost),
            ("GET / HTTP/1.1\r\nX: y\r\n\r\n", HeadError::MissingHost),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", HeadError::ObsFold),
            ("GET / HTTP/1.1\r\nHost: a\r\n\tX: y\r\n\r\n", HeadError::ObsFold),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", HeadError::SpaceBeforeColon),
            ("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", HeadError::SpaceBeforeColon),
            ("GET / HTTP/1.1\r\nHost: a\r\nX@y: z\r\n\r\n", HeadError::FieldName),
            ("GET / HTTP/1.1\r\nHost: a\r\n: z\r\n\r\n", HeadError::FieldName),
            ("GET / HTTP/1.1\r\nHost a\r\n\r\n", HeadError::FieldName),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", HeadError::FieldValue),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", HeadError::FieldValue),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: abcdefgh\x7fabcdefgh\r\n\r\n", HeadError::FieldValue),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", HeadError::BareLf),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", HeadError::BareLf),
            ("GET / HTTP/1.1\r\nHost: a\r\n\n", HeadError::BareLf),
            ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::BareLf),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::RequestLine),
            ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", HeadError::RequestLine),
            ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::RequestLine),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", HeadError::RequestLine),
            ("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::RequestLine),
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::RequestLine),
            ("GET /\r\nHost: a\r\n\r\n", HeadError::RequestLine),
        ];
        for (input, error) in cases {
            assert_eq!(rejects(input), error, "{input:?}");
            assert!(matches!(error.status(), 400 | 501), "{error:?}");
        }
        assert_eq!(HeadError::UnsupportedCoding.status(), 501);
    }

    #[test]
    fn limits_answer_431_before_the_head_ends() {
        let limits = Limits {
            request_header_bytes: 100,
            request_headers: 3,
            ..Limits::default()
        };
        let mut s = Scanner::new(&limits);
        // the limit is hit by an unfinished line: no need to wait for its end
        let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "v".repeat(100));
        assert_eq!(
            s.feed(long.as_bytes()),
            Verdict::Reject {
                at: 0,
                error: HeadError::TooLarge
            }
        );
        // and stays rejected
        assert!(matches!(s.feed(b"\r\n\r\n"), Verdict::Reject { at: 0, .. }));
        let mut s = Scanner::new(&limits);
        assert_eq!(
            s.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n"),
            Verdict::Reject {
                at: 0,
                error: HeadError::TooManyFields
            }
        );
        let mut s = Scanner::new(&limits);
        assert_eq!(
            s.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"),
            Verdict::Pass
        );
        // a second request in the same input: the rejection points at its start
        let second =
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(
            scanner().feed(second),
            Verdict::Reject {
                at: 27,
                error: HeadError::DuplicateHost
            }
        );
    }

    #[test]
    fn bad_chunked_bodies_are_found_where_they_break() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases = [
            ("zz\r\n", BodyError::ChunkSize),
            ("-5\r\n", BodyError::ChunkSize),
            ("5 5\r\n", BodyError::ChunkSize),
            ("5 \r\n", BodyError::ChunkSize),
            ("\r\n", BodyError::ChunkSize),
            (";x\r\n", BodyError::ChunkSize),
            ("0x5\r\n", BodyError::ChunkSize),
            ("5\r\r\n", BodyError::ChunkSize),
            ("10000000000000000\r\n", BodyError::ChunkSizeOverflow),
            ("5\n", BodyError::BareLf),
            ("5;a\n", BodyError::BareLf),
            ("5;a\x01\r\n", BodyError::ChunkExtension),
            ("5\r\nhello\n", BodyError::BareLf),
            ("5\r\nhelloXX", BodyError::ChunkEnd),
            ("0\r\nX: y\n\r\n", BodyError::BareLf),
            ("0\r\nX y\r\n\r\n", BodyError::Trailer),
            ("0\r\n\n", BodyError::BareLf),
        ];
        for (body, error) in cases {
            let input = format!("{head}{body}");
            assert_eq!(body_error(&input), error, "{body:?}");
        }
        // the valid prefix is handed on, the bad byte is not
        assert_eq!(
            verdict(format!("{head}5 5\r\n").as_bytes()),
            Verdict::BadBody {
                at: head.len() + 2,
                error: BodyError::ChunkSize
            }
        );
        let long_ext = format!("{head}5;{}\r\n", "e".repeat(5000));
        assert_eq!(body_error(&long_ext), BodyError::ChunkExtension);
        // a largest size is fine; its data is only counted
        assert_eq!(
            verdict(format!("{head}ffffffffffffffff\r\nabc").as_bytes()),
            Verdict::Pass
        );
    }

    #[test]
    fn protocol_switches_stop_the_scan_until_resumed() {
        let mut s = scanner();
        let input = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let head_len = input.len() - 7;
        assert_eq!(
            s.feed(input),
            Verdict::Switch {
                at: head_len,
                connect: false
            }
        );
        assert_eq!(s.feed(b"\x00\xff not http"), Verdict::Pass);
        s.resume();
        assert_eq!(s.feed(GET.as_bytes()), Verdict::Pass);
        assert_eq!(s.requests(), 2);
        // a body first, then the switch
        let mut s = scanner();
        let input =
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabcREST";
        assert_eq!(
            s.feed(input),
            Verdict::Switch {
                at: input.len() - 4,
                connect: false
            }
        );
        assert_eq!(
            scanner().feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Verdict::Switch {
                at: 39,
                connect: true
            }
        );
        // Upgrade means nothing on HTTP/1.0 (hyper ignores it too)
        assert_eq!(
            scanner().feed(b"GET / HTTP/1.0\r\nUpgrade: x\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
            Verdict::Pass
        );
    }

    #[test]
    fn value_check_agrees_with_the_byte_rule() {
        let mut v: Vec<u8> = (0u8..=255).collect();
        v.extend(0u8..=255);
        for start in 0..v.len() {
            for len in [0, 1, 7, 8, 9, 16, 17, 33] {
                let s = &v[start.min(v.len())..(start + len).min(v.len())];
                assert_eq!(field_value_ok(s), !s.iter().any(|&b| is_ctl(b)), "{s:?}");
            }
        }
        let clean: Vec<u8> = (0x20u8..0x7f).chain(0x80..=0xff).chain([b'\t']).collect();
        for w in clean.windows(8) {
            assert!(field_value_ok(w), "{w:?}");
        }
    }

    #[test]
    fn one_pass_name_and_request_line_checks_agree_with_the_spelled_out_rules() {
        // the rules as RFC 9112 spells them: split at the first colon or spaces, then check
        fn field_rule(line: &[u8]) -> Result<(), HeadError> {
            let colon = memchr::memchr(b':', line).ok_or(HeadError::FieldName)?;
            let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
            match name.last() {
                None => return Err(HeadError::FieldName),
                Some(b' ' | b'\t') => return Err(HeadError::SpaceBeforeColon),
                Some(_) if !name.iter().all(|&b| is_tchar(b)) => return Err(HeadError::FieldName),
                Some(_) => {}
            }
            if field_value_ok(value) {
                Ok(())
            } else {
                Err(HeadError::FieldValue)
            }
        }
        fn request_line_rule(line: &[u8]) -> bool {
            let mut parts = line.splitn(3, |&b| b == b' ');
            let (Some(method), Some(target), Some(version)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            !method.is_empty()
                && method.iter().all(|&b| is_tchar(b))
                && !target.is_empty()
                && target.iter().all(|&b| b > b' ' && b != 0x7f)
                && matches!(version, b"HTTP/1.1" | b"HTTP/1.0")
        }
        // every line of up to 6 bytes over an alphabet of the bytes that matter
        let alphabet = [b'a', b':', b' ', b'\t', b'@', 0x7f, 0x01, b'/'];
        let mut line = Vec::new();
        for len in 0..=6u32 {
            for mut n in 0..8usize.pow(len) {
                line.clear();
                for _ in 0..len {
                    line.push(alphabet[n % 8]);
                    n /= 8;
                }
                if !matches!(line.first(), Some(b' ' | b'\t')) {
                    assert_eq!(scanner().field(&line, true), field_rule(&line), "{line:?}");
                }
                for (prefix, suffix) in [
                    (&b""[..], &b" HTTP/1.1"[..]),
                    (b"GET ", b" HTTP/1.0"),
                    (b"", b""),
                ] {
                    let whole = [prefix, &line[..], suffix].concat();
                    let mut s = scanner();
                    assert_eq!(
                        s.request_line(&whole).is_ok(),
                        request_line_rule(&whole),
                        "{whole:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // a cheap stand-in for the fuzz target: pseudo-random inputs in random pieces
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"GET / HTTP/1.1\r\n:;, \t0123456789abcdefxzHost Content-Length Transfer-Encoding chunked Upgrade\x00\x7f\xff";
        for _ in 0..2000 {
            let mut s = Scanner::new(&Limits {
                request_header_bytes: 256,
                request_headers: 8,
                ..Limits::default()
            });
            for _ in 0..8 {
                let len = (next() % 64) as usize;
                let piece: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                match s.feed(&piece) {
                    Verdict::Pass => {}
                    Verdict::Switch { at, .. }
                    | Verdict::Reject { at, .. }
                    | Verdict::BadBody { at, .. } => assert!(at <= piece.len()),
                }
                if next() % 4 == 0 {
                    s.resume();
                }
            }
        }
    }
}
