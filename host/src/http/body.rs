//! Request bodies in: a length-delimited reader and a chunked decoder behind one type.
//!
//! The decoder pulls from the connection only when asked, and hands out decoded bytes straight
//! from the read buffer, so the body is never held whole in memory.

use std::io;
use std::time::Instant;

use super::Limits;
use super::error::RequestError;
use super::io::{Io, Pace};
use super::request::BodyKind;

/// A chunk extension longer than this is refused.
const MAX_CHUNK_EXTENSION: usize = 4096;
/// A chunk size with its whitespace longer than this is refused, however many leading zeros.
const MAX_CHUNK_SIZE_LINE: usize = 64;

/// Why the body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection before the body ended")]
    Truncated,
    #[error(transparent)]
    Invalid(RequestError),
}

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// In the hex digits of a chunk size.
    Size,
    /// In whitespace after the size, which must lead to `;`.
    SizeWhitespace,
    /// In a chunk extension, which is skipped.
    Extension,
    /// After the CR that ends a size line.
    SizeLf,
    /// In chunk data, with this many bytes left.
    Data(u64),
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// After the CR that ends a trailer line.
    TrailerLf,
    /// After the CR of the final empty line.
    EndLf,
    /// The body has ended.
    End,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Length(u64),
    Chunked(Chunked),
}

/// What lies at the front of the bytes given to [`BodyDecoder::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// `skip` bytes of framing, then `len` bytes of body data.
    Data { skip: usize, len: usize },
    /// `skip` bytes of framing, and then the input ran out.
    NeedMore { skip: usize },
    /// `skip` bytes of framing, and the body has ended.
    End { skip: usize },
}

/// A request body's framing: a length to count down, or the chunked coding's state machine.
///
/// [`BodyDecoder::decode`] is pure: it reads a byte slice and never a socket, so it can be
/// tested and fuzzed on split inputs. The `read` methods drive it over a connection.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    limits: Limits,
    /// The largest body, `None` for any.
    max_body: Option<u64>,
    /// The chunk size being parsed.
    size: u64,
    /// Bytes in the current size line, to bound extensions.
    line_bytes: usize,
    /// Data bytes announced so far, against the body limit.
    announced: u64,
    /// The trailer section, parsed when it ends and then dropped.
    trailer: Vec<u8>,
    pace: Pace,
    /// When the first read of the body began.
    started: Option<Instant>,
    /// Bytes taken off the connection so far, framing included.
    consumed: u64,
}

impl BodyDecoder {
    pub fn new(kind: BodyKind, limits: Limits, max_body: Option<u64>, pace: Pace) -> BodyDecoder {
        BodyDecoder {
            state: match kind {
                BodyKind::Length(length) => State::Length(length),
                BodyKind::Chunked => State::Chunked(Chunked::Size),
            },
            limits,
            max_body,
            size: 0,
            line_bytes: 0,
            announced: 0,
            trailer: Vec::new(),
            pace,
            started: None,
            consumed: 0,
        }
    }

    /// Bytes of the body taken off the connection so far, framing included.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether the whole body, framing included, has been consumed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Length(0) | State::Chunked(Chunked::End))
    }

    /// Decodes the framing at the front of `input`. After `Data`, the caller takes up to
    /// `len` data bytes and reports them with [`BodyDecoder::consume_data`].
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, RequestError> {
        let mut skip = 0;
        loop {
            match self.state {
                State::Length(0) | State::Chunked(Chunked::End) => {
                    return Ok(Decoded::End { skip });
                }
                State::Length(left) | State::Chunked(Chunked::Data(left)) => {
                    let rest = input.len() - skip;
                    return Ok(if rest == 0 {
                        Decoded::NeedMore { skip }
                    } else {
                        Decoded::Data {
                            skip,
                            len: clamp(left, rest),
                        }
                    });
                }
                State::Chunked(state) => {
                    let Some(&byte) = input.get(skip) else {
                        return Ok(Decoded::NeedMore { skip });
                    };
                    skip += 1;
                    self.state = State::Chunked(self.step(state, byte)?);
                }
            }
        }
    }

    /// Records that `n` data bytes, at most the `len` of the last `Data`, were taken.
    pub fn consume_data(&mut self, n: usize) {
        match &mut self.state {
            State::Length(left) => *left -= n as u64,
            State::Chunked(Chunked::Data(left)) => {
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::Chunked(Chunked::DataCr);
                }
            }
            State::Chunked(_) => debug_assert_eq!(n, 0, "data taken outside chunk data"),
        }
    }

    /// One framing byte through the chunked state machine (RFC 9112 §7.1).
    fn step(&mut self, state: Chunked, byte: u8) -> Result<Chunked, RequestError> {
        let invalid = |why| Err(RequestError::InvalidChunk(why));
        self.line_bytes += 1;
        if matches!(state, Chunked::Size | Chunked::SizeWhitespace)
            && self.line_bytes > MAX_CHUNK_SIZE_LINE
        {
            return invalid("chunk size line too long");
        }
        // Trailer field lines are kept for checking; the final empty line is not.
        let in_trailer = matches!(state, Chunked::Trailer | Chunked::TrailerLf)
            || (state == Chunked::TrailerStart && byte != b'\r');
        if in_trailer {
            self.trailer.push(byte);
            if self.trailer.len()
                > self
                    .limits
                    .field_bytes
                    .saturating_mul(self.limits.fields.max(1))
            {
                return Err(RequestError::TrailerTooLarge);
            }
        }
        Ok(match (state, byte) {
            // "chunk-size = 1*HEXDIG"
            (Chunked::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = u64::from((byte as char).to_digit(16).unwrap_or_default());
                match self
                    .size
                    .checked_mul(16)
                    .and_then(|size| size.checked_add(digit))
                {
                    Some(size) => self.size = size,
                    None => return invalid("chunk size overflows"),
                }
                Chunked::Size
            }
            (Chunked::Size, _) if self.line_bytes == 1 => return invalid("chunk size is not hex"),
            // "chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )":
            // whitespace may follow the size only on the way to an extension.
            (Chunked::Size | Chunked::SizeWhitespace, b' ' | b'\t') => Chunked::SizeWhitespace,
            (Chunked::Size | Chunked::SizeWhitespace, b';') => Chunked::Extension,
            (Chunked::Size | Chunked::Extension, b'\r') => Chunked::SizeLf,
            (Chunked::Size | Chunked::SizeWhitespace, _) => {
                return invalid("chunk size is not hex");
            }
            (Chunked::Extension, b'\n') => return invalid("bare LF in chunk extension"),
            (Chunked::Extension, _) if self.line_bytes > MAX_CHUNK_EXTENSION => {
                return invalid("chunk extension too long");
            }
            (Chunked::Extension, _) => Chunked::Extension,
            (Chunked::SizeLf, b'\n') => {
                self.line_bytes = 0;
                match std::mem::take(&mut self.size) {
                    0 => Chunked::TrailerStart,
                    size => {
                        self.announced = self.announced.saturating_add(size);
                        if self.max_body.is_some_and(|max| self.announced > max) {
                            return Err(RequestError::BodyTooLarge);
                        }
                        Chunked::Data(size)
                    }
                }
            }
            (Chunked::SizeLf, _) => return invalid("bare CR after chunk size"),
            (Chunked::DataCr, b'\r') => Chunked::DataLf,
            (Chunked::DataLf, b'\n') => {
                self.line_bytes = 0;
                Chunked::Size
            }
            (Chunked::DataCr | Chunked::DataLf, _) => return invalid("no CRLF after chunk data"),
            (Chunked::TrailerStart, b'\r') => Chunked::EndLf,
            (Chunked::TrailerStart | Chunked::Trailer, b'\n') => {
                return invalid("bare LF in trailer");
            }
            (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
            (Chunked::TrailerStart | Chunked::Trailer, _) => Chunked::Trailer,
            (Chunked::TrailerLf, b'\n') => Chunked::TrailerStart,
            (Chunked::TrailerLf, _) => return invalid("bare CR in trailer"),
            (Chunked::EndLf, b'\n') => {
                self.check_trailer()?;
                Chunked::End
            }
            (Chunked::EndLf, _) => return invalid("bare CR at end of body"),
            (Chunked::Data(_) | Chunked::End, _) => unreachable!("not a framing state"),
        })
    }

    /// Parses the trailer fields with the header rules, then drops them: the app never sees
    /// trailers, but malformed ones are still refused.
    fn check_trailer(&mut self) -> Result<(), RequestError> {
        if self.trailer.is_empty() {
            return Ok(());
        }
        self.trailer.extend_from_slice(b"\r\n");
        let mut slots = vec![httparse::EMPTY_HEADER; self.limits.fields];
        let parsed = match httparse::parse_headers(&self.trailer, &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) => {
                // Each line with its CRLF, as --limit-request-field-size counts header lines.
                let too_long = self
                    .trailer
                    .split(|&b| b == b'\n')
                    .any(|line| line.len() + 1 > self.limits.field_bytes);
                if too_long {
                    Err(RequestError::TrailerTooLarge)
                } else if fields
                    .iter()
                    .any(|field| is_forbidden_in_trailer(field.name))
                {
                    Err(RequestError::InvalidChunk(
                        "a trailer field that framing, routing or authentication depends on",
                    ))
                } else {
                    Ok(())
                }
            }
            Err(httparse::Error::TooManyHeaders) => Err(RequestError::TrailerTooLarge),
            Ok(httparse::Status::Partial) | Err(_) => {
                Err(RequestError::InvalidChunk("invalid trailer field"))
            }
        };
        self.trailer = Vec::new();
        parsed
    }

    /// Makes decoded bytes available at the front of `io`'s buffer and returns how many;
    /// 0 means the body has ended.
    fn available(&mut self, io: &mut Io) -> Result<usize, BodyError> {
        let started = *self.started.get_or_insert_with(Instant::now);
        loop {
            let decoded = self.decode(io.buffered()).map_err(BodyError::Invalid)?;
            let (skip, result) = match decoded {
                Decoded::Data { skip, len } => (skip, Some(len)),
                Decoded::End { skip } => (skip, Some(0)),
                Decoded::NeedMore { skip } => (skip, None),
            };
            io.consume(skip);
            self.consumed += skip as u64;
            if let Some(len) = result {
                return Ok(len);
            }
            if io.fill(self.pace.deadline(started, self.consumed))? == 0 {
                return Err(BodyError::Truncated);
            }
        }
    }

    /// Marks `n` available bytes as read.
    fn consume(&mut self, io: &mut Io, n: usize) {
        io.consume(n);
        self.consume_data(n);
        self.consumed += n as u64;
    }

    /// Appends up to `max` body bytes to `out`; fewer only at the end of the body.
    pub fn read(&mut self, io: &mut Io, out: &mut Vec<u8>, max: usize) -> Result<(), BodyError> {
        let goal = out.len().saturating_add(max);
        while out.len() < goal {
            let available = self.available(io)?;
            if available == 0 {
                break;
            }
            let take = available.min(goal - out.len());
            out.extend_from_slice(&io.buffered()[..take]);
            self.consume(io, take);
        }
        Ok(())
    }

    /// Appends body bytes to `out` up to and including the next `\n`, at most `max` of them.
    pub fn read_line(
        &mut self,
        io: &mut Io,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), BodyError> {
        let goal = out.len().saturating_add(max);
        while out.len() < goal {
            let available = self.available(io)?;
            if available == 0 {
                break;
            }
            let window = &io.buffered()[..available.min(goal - out.len())];
            let (take, line_ended) = match window.iter().position(|&b| b == b'\n') {
                Some(newline) => (newline + 1, true),
                None => (window.len(), false),
            };
            out.extend_from_slice(&window[..take]);
            self.consume(io, take);
            if line_ended {
                break;
            }
        }
        Ok(())
    }

    /// Reads and discards the rest of the body, framing included, up to `max` bytes.
    /// Returns whether it ended.
    pub fn skip(&mut self, io: &mut Io, max: u64) -> Result<bool, BodyError> {
        let budget_end = self.consumed.saturating_add(max);
        while self.consumed < budget_end {
            let available = self.available(io)?;
            if available == 0 {
                return Ok(true);
            }
            self.consume(io, clamp(budget_end - self.consumed, available));
        }
        Ok(self.is_done())
    }
}

fn clamp(wanted: u64, available: usize) -> usize {
    usize::try_from(wanted).map_or(available, |wanted| wanted.min(available))
}

/// RFC 9110 §6.5.1: "Many fields cannot be processed outside the header section because
/// their evaluation is necessary prior to receiving the content, such as those that describe
/// message framing, routing, authentication, request modifiers, response controls, or
/// content format. A sender MUST NOT generate a trailer field unless the sender knows the
/// corresponding header field name's definition permits the field to be sent in trailers."
/// These are the ones Gunicorn refuses.
fn is_forbidden_in_trailer(name: &str) -> bool {
    [
        "host",
        "content-length",
        "transfer-encoding",
        "trailer",
        "authorization",
        "te",
    ]
    .iter()
    .any(|forbidden| name.eq_ignore_ascii_case(forbidden))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: Limits = Limits {
        request_line: 64,
        fields: 4,
        field_bytes: 64,
        unconventional_methods: false,
    };

    /// Decodes `input` delivered in pieces of `piece` bytes, as a connection would.
    fn decode_in_pieces(
        kind: BodyKind,
        input: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, usize), RequestError> {
        let pace = Pace {
            patience: Duration::from_secs(1),
            min_rate: 1,
        };
        let mut decoder = BodyDecoder::new(kind, LIMITS, Some(1000), pace);
        let mut buffered = Vec::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            match decoder.decode(&buffered)? {
                Decoded::Data { skip, len } => {
                    body.extend_from_slice(&buffered[skip..skip + len]);
                    decoder.consume_data(len);
                    buffered.drain(..skip + len);
                }
                Decoded::End { skip } => {
                    buffered.drain(..skip);
                    // What is left belongs to the next request.
                    return Ok((body, input.len() - fed + buffered.len()));
                }
                Decoded::NeedMore { skip } => {
                    buffered.drain(..skip);
                    if fed == input.len() {
                        return Err(RequestError::InvalidChunk("truncated"));
                    }
                    let next = (fed + piece).min(input.len());
                    buffered.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_decodes_the_same_at_every_split() {
        let input = b"5;ext=1\r\nhello\r\n1 ;x\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..input.len() {
            let (body, left) = decode_in_pieces(BodyKind::Chunked, input, piece).unwrap();
            assert_eq!(body, b"hello 0123456789", "pieces of {piece}");
            assert_eq!(left, 4, "pieces of {piece}");
        }
    }

    #[test]
    fn length_stops_at_the_length() {
        let (body, left) = decode_in_pieces(BodyKind::Length(3), b"abcGET", 2).unwrap();
        assert_eq!((body.as_slice(), left), (&b"abc"[..], 3));
    }

    #[test]
    fn chunked_framing_errors() {
        let cases: [(&[u8], &str); 14] = [
            (&[b'0'; 100], "endless leading zeros"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "0x prefix"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "sign"),
            (b"5_0\r\n", "underscore"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "leading space"),
            (b"5 \r\nhello\r\n0\r\n\r\n", "trailing space"),
            (b"\r\n", "missing size"),
            (b"fffffffffffffffff\r\n", "overflow"),
            (b"5\r\nhelloXX0\r\n\r\n", "no CRLF after data"),
            (b"5;a\nb\r\nhello\r\n0\r\n\r\n", "bare LF in extension"),
            (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "bare CR in extension"),
            (
                b"5\r\nhello\r\n0\r\nBad Field: x\r\n\r\n",
                "invalid trailer",
            ),
            (b"5\r\nhello\r\n0\r\nX: 1\n\r\n", "bare LF in trailer"),
            (b"5\rhello\r\n0\r\n\r\n", "bare CR after size"),
        ];
        for (input, why) in cases {
            assert!(
                decode_in_pieces(BodyKind::Chunked, input, input.len()).is_err(),
                "{why}"
            );
        }
    }

    #[test]
    fn chunked_limits() {
        let over = b"3e9\r\n";
        assert!(matches!(
            decode_in_pieces(BodyKind::Chunked, over, 8),
            Err(RequestError::BodyTooLarge)
        ));
        let many = b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
        assert!(matches!(
            decode_in_pieces(BodyKind::Chunked, many, 8),
            Err(RequestError::TrailerTooLarge)
        ));
    }
}
