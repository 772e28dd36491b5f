//! Responses out: checking what the app asks for, then framing and writing it.
//!
//! Nothing reaches the wire until the first body bytes or the end of the response, so a
//! contract violation found before then still becomes a clean 500.

use std::io;

use super::date::with_date;
use super::error::ErrorResponse;
use super::io::Io;
use super::request::Framing;
use crate::decimal::Decimal;

/// Why the response side refused an app's call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("invalid status line {0:?}")]
    InvalidStatus(String),
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    #[error("hop-by-hop header {0:?} is set by the server")]
    HopByHopHeader(String),
    #[error("start_response called again after the headers were set")]
    AlreadyStarted,
    #[error("body written before start_response")]
    NotStarted,
    #[error("body of {sent} bytes does not match Content-Length {declared}")]
    LengthMismatch { declared: u64, sent: u64 },
    #[error("client disconnected")]
    Disconnected,
}

/// The most the status line and header lines of an app's response may take: far more than
/// any browser or proxy takes (nginx's default is 4 to 8 KiB), and little enough that an app
/// cannot make the server build and send megabytes of head.
pub const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// The most a head takes besides the status and the app's lines: `HTTP/1.1 `, the line
/// ends, and the server's Date, Server, Content-Length, Transfer-Encoding and Connection.
const HEAD_FRAME_MAX: usize = 176;

/// A response whose head has been set but not sent.
#[derive(Debug)]
struct PendingHead {
    code: u16,
    /// The status line and the app's header lines, checked and encoded; the server's own
    /// lines and the blank line follow when the head is sent.
    lines: Vec<u8>,
    content_length: Option<u64>,
    has_date: bool,
    has_server: bool,
}

/// How the body on the wire ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// This many bytes are still owed.
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
    /// HEAD, 1xx, 204 and 304 responses carry no body.
    NoBody,
}

#[derive(Debug)]
enum State {
    /// start_response has not been called.
    Unstarted,
    /// The head is set and may still be replaced with exc_info.
    Started(PendingHead),
    /// The head is on the wire; the body follows.
    Sending { code: u16, framing: BodyFraming },
    /// The response is complete on the wire.
    Complete { code: u16 },
    /// Writing failed or the app broke framing: the connection must close.
    Broken { code: Option<u16> },
}

/// One response being produced for one request.
#[derive(Debug)]
pub struct Response {
    state: State,
    request: Framing,
    /// Body bytes written, for the access log.
    body_bytes: u64,
    /// Set when the body was cut short or over-long: the connection must not be reused.
    must_close: bool,
}

impl Response {
    pub fn new(request: Framing) -> Response {
        Response {
            state: State::Unstarted,
            request,
            body_bytes: 0,
            must_close: false,
        }
    }

    /// PEP 3333's start_response: checks and records the status and headers.
    pub fn start(
        &mut self,
        status: &str,
        headers: &[(String, String)],
        exc_info: bool,
    ) -> Result<(), ResponseError> {
        match (&self.state, exc_info) {
            (State::Unstarted, _) | (State::Started(_), true) => {}
            _ => return Err(ResponseError::AlreadyStarted),
        }
        self.state = State::Started(PendingHead::new(status, headers)?);
        Ok(())
    }

    /// Whether the app has set a head, sent or not.
    pub fn head_set(&self) -> bool {
        !matches!(self.state, State::Unstarted)
    }

    /// Whether anything has been written for this response.
    pub fn head_sent(&self) -> bool {
        !matches!(self.state, State::Unstarted | State::Started(_))
    }

    /// Whether a body may follow the head: false for HEAD, 204 and 304.
    pub fn wants_body(&self) -> bool {
        match &self.state {
            State::Started(head) => !head.is_bodiless(self.request),
            State::Sending { framing, .. } => *framing != BodyFraming::NoBody,
            _ => true,
        }
    }

    /// The status code sent, for the access log.
    pub fn code(&self) -> Option<u16> {
        match &self.state {
            State::Sending { code, .. } | State::Complete { code } => Some(*code),
            State::Broken { code } => *code,
            State::Unstarted | State::Started(_) => None,
        }
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Whether the response is out whole, to a client that asked to close the connection
    /// and so sends nothing more.
    pub fn is_complete_for_closing_client(&self) -> bool {
        matches!(self.state, State::Complete { .. }) && !self.request.keep_alive
    }

    /// Whether the connection can carry another request after this response.
    pub fn allows_keep_alive(&self) -> bool {
        matches!(self.state, State::Complete { .. }) && !self.must_close && self.request.keep_alive
    }

    /// WSGI's write(): sends the head if unsent, then `data`, framed for streaming.
    pub fn write(&mut self, io: &mut Io, data: &[u8]) -> Result<(), ResponseError> {
        self.send(io, &[data], None)
    }

    /// Ends a body the app returned whole. If nothing was sent yet, the head carries its exact
    /// Content-Length and head and body leave in one write.
    pub fn finish_with(&mut self, io: &mut Io, chunks: &[&[u8]]) -> Result<(), ResponseError> {
        let total: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        if let State::Started(head) = &self.state
            && let Some(declared) = head.content_length
            && declared != total
            && !head.is_bodiless(self.request)
        {
            return Err(ResponseError::LengthMismatch {
                declared,
                sent: total,
            });
        }
        self.send(io, chunks, Some(total))?;
        self.finish(io)
    }

    /// Ends a streamed body.
    pub fn finish(&mut self, io: &mut Io) -> Result<(), ResponseError> {
        if !self.head_sent() {
            self.send(io, &[], Some(0))?;
        }
        let State::Sending { code, framing } = self.state else {
            return Err(ResponseError::Disconnected);
        };
        match framing {
            BodyFraming::Chunked => {
                io.write_all_vectored(&[b"0\r\n\r\n"])
                    .map_err(|error| self.broken(error))?;
            }
            BodyFraming::Length(owed) if owed > 0 => {
                // The client is owed bytes we don't have; closing is the only honest end.
                self.must_close = true;
                let sent = self.body_bytes;
                self.state = State::Broken { code: Some(code) };
                return Err(ResponseError::LengthMismatch {
                    declared: sent + owed,
                    sent,
                });
            }
            BodyFraming::UntilClose => self.must_close = true,
            BodyFraming::Length(_) | BodyFraming::NoBody => {}
        }
        self.state = State::Complete { code };
        Ok(())
    }

    /// Sends the head if it is still pending, then `chunks` framed as the head declared.
    /// `whole_body` is the body's full length when the app returned it complete.
    fn send(
        &mut self,
        io: &mut Io,
        chunks: &[&[u8]],
        whole_body: Option<u64>,
    ) -> Result<(), ResponseError> {
        let mut head_bytes = Vec::new();
        match &mut self.state {
            State::Unstarted => return Err(ResponseError::NotStarted),
            State::Started(head) => {
                let framing = head.framing(self.request, whole_body);
                head_bytes = head.encode(framing, self.request, whole_body);
                self.state = State::Sending {
                    code: head.code,
                    framing,
                };
            }
            State::Sending { .. } => {}
            State::Complete { .. } | State::Broken { .. } => {
                return Err(ResponseError::Disconnected);
            }
        }
        let State::Sending { framing, .. } = &mut self.state else {
            unreachable!("the head was just sent");
        };

        let total: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(chunks.len() + 3);
        parts.push(&head_bytes);
        let chunk_size_line;
        let mut over_length = None;
        match framing {
            BodyFraming::NoBody => {}
            BodyFraming::Length(owed) => {
                // Never send more than declared: extra bytes would be read as the next
                // response on a kept-alive connection.
                let mut budget = *owed;
                for chunk in chunks {
                    let take = usize::try_from(budget).map_or(chunk.len(), |b| b.min(chunk.len()));
                    parts.push(&chunk[..take]);
                    budget -= take as u64;
                }
                if total > *owed {
                    over_length = Some(ResponseError::LengthMismatch {
                        declared: self.body_bytes + *owed,
                        sent: self.body_bytes + total,
                    });
                }
                self.body_bytes += *owed - budget;
                *owed = budget;
            }
            BodyFraming::Chunked if total > 0 => {
                chunk_size_line = format!("{total:x}\r\n");
                parts.push(chunk_size_line.as_bytes());
                parts.extend_from_slice(chunks);
                parts.push(b"\r\n");
                self.body_bytes += total;
            }
            BodyFraming::Chunked => {}
            BodyFraming::UntilClose => {
                parts.extend_from_slice(chunks);
                self.body_bytes += total;
            }
        }
        io.write_all_vectored(&parts)
            .map_err(|error| self.broken(error))?;
        match over_length {
            Some(error) => {
                self.must_close = true;
                Err(error)
            }
            None => Ok(()),
        }
    }

    fn broken(&mut self, error: io::Error) -> ResponseError {
        tracing::debug!("write to client failed: {error}");
        self.state = State::Broken { code: self.code() };
        self.must_close = true;
        ResponseError::Disconnected
    }
}

impl PendingHead {
    fn new(status: &str, headers: &[(String, String)]) -> Result<PendingHead, ResponseError> {
        let code = parse_status(status)?;
        // Latin-1 encoding never lengthens a line: the head is allocated once.
        let app_lines: usize = headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        let size = status.len() + app_lines;
        if size > MAX_RESPONSE_HEAD {
            return Err(ResponseError::InvalidHeader(format!(
                "the status and headers take {size} bytes, past the limit of \
                 {MAX_RESPONSE_HEAD}"
            )));
        }
        let mut lines = Vec::with_capacity(size + HEAD_FRAME_MAX);
        lines.extend_from_slice(b"HTTP/1.1 ");
        // RFC 9112 §4: the reason phrase is octets; obs-text is latin-1, one byte a char.
        encode_latin1(&mut lines, status);
        lines.extend_from_slice(b"\r\n");
        let mut head = PendingHead {
            code,
            lines,
            content_length: None,
            has_date: false,
            has_server: false,
        };
        for (name, value) in headers {
            check_name(name)?;
            if is_hop_by_hop(name) {
                return Err(ResponseError::HopByHopHeader(name.clone()));
            }
            if name.eq_ignore_ascii_case("content-length") {
                // RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any
                // response with a status code of 1xx (Informational) or 204".
                let length = value.trim().parse::<u64>().ok().filter(|_| {
                    code != 204
                        && head.content_length.is_none()
                        && value.trim().bytes().all(|b| b.is_ascii_digit())
                });
                head.content_length = Some(length.ok_or_else(|| {
                    ResponseError::InvalidHeader(format!("Content-Length {value:?}"))
                })?);
                continue;
            }
            head.has_date |= name.eq_ignore_ascii_case("date");
            head.has_server |= name.eq_ignore_ascii_case("server");
            head.lines.extend_from_slice(name.as_bytes());
            head.lines.extend_from_slice(b": ");
            encode_value(&mut head.lines, name, value)?;
            head.lines.extend_from_slice(b"\r\n");
        }
        Ok(head)
    }

    /// RFC 9110 §6.4.1: responses to HEAD, and 204 and 304 responses, have no content.
    fn is_bodiless(&self, request: Framing) -> bool {
        request.is_head || matches!(self.code, 204 | 304)
    }

    fn framing(&self, request: Framing, whole_body: Option<u64>) -> BodyFraming {
        match (
            self.content_length.or(whole_body),
            self.is_bodiless(request),
        ) {
            (_, true) => BodyFraming::NoBody,
            (Some(length), false) => BodyFraming::Length(length),
            (None, false) if request.minor_version >= 1 => BodyFraming::Chunked,
            (None, false) => BodyFraming::UntilClose,
        }
    }

    /// The head as sent, which takes the lines.
    fn encode(
        &mut self,
        framing: BodyFraming,
        request: Framing,
        whole_body: Option<u64>,
    ) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.lines);
        if !self.has_date {
            with_date(|date| {
                out.extend_from_slice(b"Date: ");
                out.extend_from_slice(date);
                out.extend_from_slice(b"\r\n");
            });
        }
        if !self.has_server {
            out.extend_from_slice(b"Server: wasm-gw\r\n");
        }
        let length = match framing {
            BodyFraming::Length(length) => Some(length),
            // A HEAD response may state the length a GET would have had; a 304 only the one the
            // app declared (RFC 9110 §8.6).
            BodyFraming::NoBody if request.is_head && self.code != 204 => self
                .content_length
                .or(whole_body.filter(|&length| length > 0)),
            BodyFraming::NoBody => self.content_length,
            _ => None,
        };
        if let Some(length) = length {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(Decimal::new(length, 1).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if framing == BodyFraming::Chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        let keep_alive = request.keep_alive && framing != BodyFraming::UntilClose;
        match (keep_alive, request.minor_version) {
            (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
            (true, 0) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            (true, _) => {}
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Writes the server's own response `answer` to the request framed by `request` (if its
/// head was read), with `Connection: close`: the connection closes after it.
pub fn write_error(
    io: &mut Io,
    answer: &ErrorResponse,
    request: Option<Framing>,
) -> io::Result<()> {
    let (code, reason) = answer.status();
    let body = answer.body();
    let mut head = Vec::with_capacity(160);
    head.extend_from_slice(format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
    with_date(|date| {
        head.extend_from_slice(b"Date: ");
        head.extend_from_slice(date);
        head.extend_from_slice(b"\r\n");
    });
    head.extend_from_slice(b"Server: wasm-gw\r\nContent-Type: text/plain; charset=utf-8\r\n");
    head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    for (name, value) in answer.headers() {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let body = if request.is_some_and(|r| r.is_head) {
        ""
    } else {
        &body
    };
    io.write_all_vectored(&[&head, body.as_bytes()])
}

/// PEP 3333: "The status string must be a 3-digit code followed by a space and a reason
/// phrase". Informational codes belong to the server.
fn parse_status(status: &str) -> Result<u16, ResponseError> {
    let invalid = || ResponseError::InvalidStatus(excerpt(status));
    let (code, reason) = status.split_once(' ').ok_or_else(invalid)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let code: u16 = code.parse().map_err(|_| invalid())?;
    // RFC 9112 §4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
    let reason_ok = reason
        .chars()
        .all(|c| c == '\t' || (c >= ' ' && c != '\x7f' && u32::from(c) <= 0xFF));
    if !(200..=999).contains(&code) || !reason_ok {
        return Err(invalid());
    }
    Ok(code)
}

/// RFC 9110 §5.1: `field-name = token`.
fn check_name(name: &str) -> Result<(), ResponseError> {
    if !name.is_empty() && name.bytes().all(is_tchar) {
        Ok(())
    } else {
        Err(ResponseError::InvalidHeader(format!(
            "name {:?} is not a token",
            excerpt(name)
        )))
    }
}

/// RFC 9110 §5.6.2: `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
/// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// RFC 9110 §7.6.1: these describe one connection and are the server's to set.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    ];
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-"))
}

/// Writes a header value as latin-1 bytes. RFC 9110 §5.5: `field-value = *field-content`,
/// with no CTL but HTAB; PEP 3333 strings hold only code points up to U+00FF.
fn encode_value(out: &mut Vec<u8>, name: &str, value: &str) -> Result<(), ResponseError> {
    if let Some(c) = value.chars().find(|&c| {
        let code = u32::from(c);
        code > 0xFF || (code < 0x20 && c != '\t') || code == 0x7F
    }) {
        return Err(ResponseError::InvalidHeader(format!(
            "value of {} holds {c:?}",
            excerpt(name)
        )));
    }
    encode_latin1(out, value);
    Ok(())
}

/// Longest excerpt of an app's text in a log line or an error: a Python traceback fits.
const EXCERPT: usize = 4096;

/// `text` as it may appear in a log line: whole if it is short, else its start and its end
/// (where a traceback says what went wrong) and how long it was, so that no app can make
/// the server write megabytes of log for one request.
pub fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT {
        return text.to_owned();
    }
    let head = text.floor_char_boundary(EXCERPT / 4);
    let tail = text.ceil_char_boundary(text.len() - EXCERPT * 3 / 4);
    format!(
        "{} ... ({} bytes in all) ... {}",
        &text[..head],
        text.len(),
        &text[tail..]
    )
}

/// Appends `text`, whose chars are all U+00FF or below, as latin-1: one byte a char.
fn encode_latin1(out: &mut Vec<u8>, text: &str) {
    // Most text is ASCII, whose chars are their bytes.
    if text.is_ascii() {
        out.extend_from_slice(text.as_bytes());
    } else {
        out.extend(text.chars().map(|c| u32::from(c) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_keeps_the_start_and_the_end() {
        assert_eq!(excerpt("short"), "short");
        let long = format!("start{}the end", "\u{e9}".repeat(10_000));
        let shown = excerpt(&long);
        assert!(shown.len() < EXCERPT + 64, "{}", shown.len());
        assert!(shown.starts_with("start") && shown.ends_with("the end"));
        assert!(shown.contains(&format!("({} bytes in all)", long.len())));
    }

    #[test]
    fn the_reason_phrase_goes_out_as_latin1_and_the_head_is_bounded() {
        let encoded = head(
            "200 Caf\u{e9} cr\u{e8}me",
            &[("X-Name", "R\u{e9}sum\u{e9}")],
        )
        .unwrap();
        let text = &encoded.lines;
        assert!(
            text.starts_with(b"HTTP/1.1 200 Caf\xe9 cr\xe8me\r\n"),
            "{text:?}"
        );
        assert!(text.ends_with(b"X-Name: R\xe9sum\xe9\r\n"), "{text:?}");
        let big = "x".repeat(MAX_RESPONSE_HEAD);
        assert!(matches!(
            head("200 OK", &[("X-Big", &big)]),
            Err(ResponseError::InvalidHeader(why)) if why.contains("past the limit")
        ));
        let fits = "x".repeat(MAX_RESPONSE_HEAD - 100);
        assert!(head("200 OK", &[("X-Big", &fits)]).is_ok());
    }

    fn head(status: &str, headers: &[(&str, &str)]) -> Result<PendingHead, ResponseError> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        PendingHead::new(status, &headers)
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("200 OK"), Ok(200));
        assert_eq!(parse_status("599 Custom Reason"), Ok(599));
        for bad in [
            "200",
            "20 OK",
            "2000 OK",
            "abc OK",
            "100 Continue",
            "200 O\nK",
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_are_checked_and_encoded_as_latin1() {
        let ok = head("200 OK", &[("X-Name", "caf\u{e9}")]).unwrap();
        assert_eq!(ok.lines, b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\n");
        assert!(head("200 OK", &[("X-A", "a\r\nb")]).is_err());
        assert!(head("200 OK", &[("X-A", "\u{100}")]).is_err());
        assert!(head("200 OK", &[("Bad Name", "x")]).is_err());
        assert!(matches!(
            head("200 OK", &[("Transfer-Encoding", "chunked")]),
            Err(ResponseError::HopByHopHeader(_))
        ));
        assert!(head("204 No Content", &[("Content-Length", "0")]).is_err());
        assert!(head("200 OK", &[("Content-Length", "-1")]).is_err());
        assert_eq!(
            head("200 OK", &[("content-length", "12")])
                .unwrap()
                .content_length,
            Some(12)
        );
    }
}
