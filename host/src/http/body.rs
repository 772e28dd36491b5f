//! Request bodies in: a length-delimited reader and a chunked decoder behind one type.
//!
//! The decoder pulls from the connection only when asked, and hands out decoded bytes straight
//! from the read buffer, so the body is never held whole in memory.

use std::io;
use std::time::Duration;

use super::error::RequestError;
use super::io::Io;
use super::request::BodyKind;

/// Bounds on the parts of a chunked body that are not data.
const MAX_CHUNK_EXTENSION: usize = 4096;
const MAX_TRAILER_BYTES: usize = 8192;

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
    /// In whitespace after the size, before `;` or CR.
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

/// A request body being read off the connection.
#[derive(Debug)]
pub struct BodyDecoder {
    kind: Decoding,
    /// Bytes of the current chunk size, extension or trailer section, to bound them.
    meta_bytes: usize,
    size: u64,
    read_timeout: Duration,
}

#[derive(Debug)]
enum Decoding {
    Length(u64),
    Chunked(Chunked),
}

impl BodyDecoder {
    pub fn new(kind: BodyKind, read_timeout: Duration) -> BodyDecoder {
        BodyDecoder {
            kind: match kind {
                BodyKind::Length(length) => Decoding::Length(length),
                BodyKind::Chunked => Decoding::Chunked(Chunked::Size),
            },
            meta_bytes: 0,
            size: 0,
            read_timeout,
        }
    }

    /// Whether the whole body, framing included, has been consumed.
    pub fn is_done(&self) -> bool {
        matches!(
            self.kind,
            Decoding::Length(0) | Decoding::Chunked(Chunked::End)
        )
    }

    /// Makes decoded bytes available at the front of `io`'s buffer and returns how many;
    /// 0 means the body has ended.
    fn available(&mut self, io: &mut Io) -> Result<usize, BodyError> {
        loop {
            match self.kind {
                Decoding::Length(0) | Decoding::Chunked(Chunked::End) => return Ok(0),
                Decoding::Length(left) | Decoding::Chunked(Chunked::Data(left))
                    if !io.buffered().is_empty() =>
                {
                    return Ok(clamp(left, io.buffered().len()));
                }
                Decoding::Length(_) | Decoding::Chunked(Chunked::Data(_)) => {}
                Decoding::Chunked(state) => {
                    if let Some(next) = self.step_framing(state, io)? {
                        self.kind = Decoding::Chunked(next);
                        continue;
                    }
                }
            }
            if io.fill(self.read_timeout)? == 0 {
                return Err(BodyError::Truncated);
            }
        }
    }

    /// Marks `n` available bytes as read.
    fn consume(&mut self, io: &mut Io, n: usize) {
        io.consume(n);
        match &mut self.kind {
            Decoding::Length(left) | Decoding::Chunked(Chunked::Data(left)) => {
                *left -= n as u64;
                if *left == 0 && matches!(self.kind, Decoding::Chunked(_)) {
                    self.kind = Decoding::Chunked(Chunked::DataCr);
                }
            }
            Decoding::Chunked(_) => unreachable!("consumed body bytes outside chunk data"),
        }
    }

    /// Feeds buffered framing bytes through the chunked state machine. Returns the next state,
    /// or `None` when the buffer ran dry first.
    fn step_framing(&mut self, state: Chunked, io: &mut Io) -> Result<Option<Chunked>, BodyError> {
        let Some(&byte) = io.buffered().first() else {
            return Ok(None);
        };
        io.consume(1);
        self.meta_bytes += 1;
        let invalid = |why| Err(BodyError::Invalid(RequestError::InvalidChunk(why)));
        let next = match (state, byte) {
            (Chunked::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = (byte as char).to_digit(16).unwrap_or_default();
                self.size = match self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit.into()))
                {
                    Some(size) => size,
                    None => return invalid("chunk size overflows"),
                };
                Chunked::Size
            }
            // RFC 9112 §7.1: "chunk-size = 1*HEXDIG"; at least one digit before anything else.
            (Chunked::Size, _) if self.meta_bytes == 1 => return invalid("chunk size is not hex"),
            (Chunked::Size | Chunked::SizeWhitespace, b' ' | b'\t') => Chunked::SizeWhitespace,
            (Chunked::Size | Chunked::SizeWhitespace, b';') => Chunked::Extension,
            (Chunked::Size | Chunked::SizeWhitespace | Chunked::Extension, b'\r') => {
                Chunked::SizeLf
            }
            (Chunked::Size | Chunked::SizeWhitespace, _) => {
                return invalid("chunk size is not hex");
            }
            (Chunked::Extension, b'\n') => return invalid("bare LF in chunk extension"),
            (Chunked::Extension, _) if self.meta_bytes > MAX_CHUNK_EXTENSION => {
                return invalid("chunk extension too long");
            }
            (Chunked::Extension, _) => Chunked::Extension,
            (Chunked::SizeLf, b'\n') => {
                self.meta_bytes = 0;
                match std::mem::take(&mut self.size) {
                    0 => Chunked::TrailerStart,
                    size => Chunked::Data(size),
                }
            }
            (Chunked::SizeLf, _) => return invalid("bare CR after chunk size"),
            (Chunked::DataCr, b'\r') => Chunked::DataLf,
            (Chunked::DataLf, b'\n') => {
                self.meta_bytes = 0;
                Chunked::Size
            }
            (Chunked::DataCr | Chunked::DataLf, _) => return invalid("no CRLF after chunk data"),
            _ if self.meta_bytes > MAX_TRAILER_BYTES => return invalid("trailer section too long"),
            (Chunked::TrailerStart, b'\r') => Chunked::EndLf,
            (Chunked::TrailerStart | Chunked::Trailer, b'\n') => {
                return invalid("bare LF in trailer");
            }
            (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
            (Chunked::TrailerStart | Chunked::Trailer, _) => Chunked::Trailer,
            (Chunked::TrailerLf, b'\n') => Chunked::TrailerStart,
            (Chunked::TrailerLf, _) => return invalid("bare CR in trailer"),
            (Chunked::EndLf, b'\n') => Chunked::End,
            (Chunked::EndLf, _) => return invalid("bare CR at end of body"),
            (Chunked::Data(_) | Chunked::End, _) => unreachable!("not a framing state"),
        };
        Ok(Some(next))
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

    /// Reads and discards the rest of the body, up to `max` bytes. Returns whether it ended.
    pub fn skip(&mut self, io: &mut Io, max: u64) -> Result<bool, BodyError> {
        let mut skipped = 0u64;
        while skipped < max {
            let available = self.available(io)?;
            if available == 0 {
                return Ok(true);
            }
            let take = clamp(max - skipped, available);
            self.consume(io, take);
            skipped += take as u64;
        }
        Ok(self.is_done())
    }
}

fn clamp(wanted: u64, available: usize) -> usize {
    usize::try_from(wanted).map_or(available, |wanted| wanted.min(available))
}
