//! HTTP/1.1 on a blocking socket: request heads in, bodies in, responses out.
//!
//! Nothing here knows about WebAssembly. The connection loop drives these pieces, and an app
//! sees one request through an [`Exchange`].

pub mod body;
pub mod date;
pub mod error;
pub mod exchange;
pub mod io;
pub mod proxy;
pub mod request;
pub mod response;

pub use exchange::Exchange;

/// Limits on one request, each answered with its own status.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes in the request line (414).
    pub request_line: usize,
    /// Header fields in the head, and trailer fields in a chunked body (431).
    pub fields: usize,
    /// Bytes in one field line, as Gunicorn counts them: the whole line with its CRLF (431).
    pub field_bytes: usize,
    /// Methods that are valid tokens but not conventional ones (lowercase letters, `#`,
    /// fewer than 3 or more than 20 characters) are served rather than refused (400).
    pub unconventional_methods: bool,
}

impl Limits {
    /// The largest head these limits allow, line ends included.
    pub fn max_head_bytes(&self) -> usize {
        let fields = self
            .fields
            .saturating_mul(self.field_bytes.saturating_add(2));
        self.request_line.saturating_add(fields).saturating_add(4)
    }
}
