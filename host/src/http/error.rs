//! What the server answers for itself, and the one table that maps each case to its status
//! code, reason and body: a bad request, a refusal, an app that failed.

use thiserror::Error;

/// A request the server refuses before any app sees it. The connection always closes after
/// the error response, so no later byte on it is taken as a new request.
#[derive(Clone, Debug, Error)]
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

/// A response the server writes itself, in place of an app's: every status the server
/// chooses is in [`ErrorResponse::status`].
#[derive(Debug)]
pub enum ErrorResponse {
    /// A request the server refuses before any app sees it.
    Request(RequestError),
    /// The request head, or a body read whole before the app, did not arrive in time.
    Timeout,
    /// The request body broke its framing, or could not be read.
    BadBody,
    /// No app is mounted at the request's path.
    NoApp,
    /// The server is stopping and takes no new request.
    Stopping,
    /// Every instance of the app is busy and its queue full, or the request waited its
    /// whole queue timeout.
    Busy,
    /// The app ran past its deadline and was stopped.
    AppTimeout,
    /// No instance of the app could be made.
    AppUnavailable,
    /// The app trapped, ran out of memory, returned an error, broke the WSGI contract or
    /// returned no response.
    AppFailed,
}

impl ErrorResponse {
    /// The status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ErrorResponse::Request(error) => error.status(),
            ErrorResponse::Timeout => (408, "Request Timeout"),
            ErrorResponse::BadBody => (400, "Bad Request"),
            ErrorResponse::NoApp => (404, "Not Found"),
            ErrorResponse::Stopping | ErrorResponse::Busy | ErrorResponse::AppUnavailable => {
                (503, "Service Unavailable")
            }
            ErrorResponse::AppTimeout => (504, "Gateway Timeout"),
            ErrorResponse::AppFailed => (500, "Internal Server Error"),
        }
    }

    /// The body: the reason, and why where the client can act on it.
    pub fn body(&self) -> String {
        let (_, reason) = self.status();
        match self {
            ErrorResponse::Request(error) => error.body(),
            ErrorResponse::NoApp => format!("{reason}: no app is mounted at this path\n"),
            ErrorResponse::Stopping => format!("{reason}: the server is stopping\n"),
            ErrorResponse::Busy => format!("{reason}: the app is busy\n"),
            _ => format!("{reason}\n"),
        }
    }

    /// Headers of the server's own beside the usual ones.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            // A queue that was full a moment ago may well have room a second later.
            ErrorResponse::Busy => &[("Retry-After", "1")],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_has_its_status_and_says_why_where_it_helps() {
        let table = [
            (ErrorResponse::Request(RequestError::FieldsTooLarge), 431),
            (
                ErrorResponse::Request(RequestError::ForbiddenProxyHeader),
                403,
            ),
            (ErrorResponse::Timeout, 408),
            (ErrorResponse::BadBody, 400),
            (ErrorResponse::NoApp, 404),
            (ErrorResponse::Stopping, 503),
            (ErrorResponse::Busy, 503),
            (ErrorResponse::AppTimeout, 504),
            (ErrorResponse::AppUnavailable, 503),
            (ErrorResponse::AppFailed, 500),
        ];
        for (answer, code) in &table {
            assert_eq!(answer.status().0, *code, "{answer:?}");
            assert!(answer.body().starts_with(answer.status().1), "{answer:?}");
            assert!(answer.body().ends_with('\n'));
        }
        assert_eq!(ErrorResponse::Busy.headers(), &[("Retry-After", "1")]);
        assert!(ErrorResponse::AppFailed.headers().is_empty());
        assert!(ErrorResponse::Stopping.body().contains("stopping"));
        assert!(
            ErrorResponse::Request(RequestError::PlainHttpOnTlsPort)
                .body()
                .contains("https://")
        );
    }
}
