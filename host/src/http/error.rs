//! What can be wrong with a request, and the one table that maps it to a status code.

use thiserror::Error;

/// A request the server refuses before any app sees it. The connection always closes after
/// the error response, so no later byte on it is taken as a new request.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request line longer than {0} bytes")]
    RequestLineTooLong(usize),
    #[error("too many or too large header fields")]
    FieldsTooLarge,
    #[error("unsupported HTTP version")]
    VersionNotSupported,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("both Transfer-Encoding and Content-Length")]
    AmbiguousLength,
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("unsupported expectation")]
    UnsupportedExpectation,
    #[error("invalid chunked body: {0}")]
    InvalidChunk(&'static str),
    #[error("request body larger than allowed")]
    BodyTooLarge,
    #[error("trailer section too large")]
    TrailerTooLarge,
    #[error("a plain HTTP request on a TLS port")]
    PlainHttpOnTlsPort,
    #[error("a PROXY protocol header from a peer not in --proxy-allow-from")]
    ForbiddenProxyHeader,
    #[error("invalid {0}")]
    InvalidProxyHeader(String),
}

impl RequestError {
    /// The status code and reason phrase this error is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RequestError::Malformed(_)
            | RequestError::InvalidContentLength
            | RequestError::AmbiguousLength
            | RequestError::InvalidChunk(_)
            | RequestError::PlainHttpOnTlsPort
            | RequestError::InvalidProxyHeader(_) => (400, "Bad Request"),
            RequestError::ForbiddenProxyHeader => (403, "Forbidden"),
            RequestError::BodyTooLarge => (413, "Content Too Large"),
            RequestError::RequestLineTooLong(_) => (414, "URI Too Long"),
            RequestError::FieldsTooLarge | RequestError::TrailerTooLarge => {
                (431, "Request Header Fields Too Large")
            }
            RequestError::VersionNotSupported => (505, "HTTP Version Not Supported"),
            RequestError::UnsupportedTransferCoding => (501, "Not Implemented"),
            RequestError::UnsupportedExpectation => (417, "Expectation Failed"),
        }
    }

    /// The body of the error response: the reason, and what to do about it where the
    /// client can do something.
    pub fn body(&self) -> String {
        let (_, reason) = self.status();
        match self {
            RequestError::PlainHttpOnTlsPort => {
                format!("{reason}: this port speaks HTTPS; use https://\n")
            }
            _ => format!("{reason}\n"),
        }
    }
}
