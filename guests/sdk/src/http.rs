//! Outbound HTTP: requests to the destinations the operator allows the app
//! (`--allow-outbound`), through the standard `wasi:http/outgoing-handler`.
//!
//! ```no_run
//! let page = wasm_gw_sdk::http::get("https://api.example.com/rates")?;
//! let text = page.text()?;
//! let created = wasm_gw_sdk::http::Request::new("POST", "https://api.example.com/items")
//!     .header("content-type", "application/json")
//!     .body(br#"{"name": "x"}"#.to_vec())
//!     .timeout(std::time::Duration::from_secs(5))
//!     .send()?;
//! # Ok::<(), wasm_gw_sdk::http::Error>(())
//! ```

use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use wasip2::io::streams::StreamError;

/// Why a request got no response.
///
/// ```no_run
/// use wasm_gw_sdk::http::{self, Error};
/// match http::get("https://api.example.com/status") {
///     Ok(response) => println!("status {}", response.status),
///     Err(Error::Timeout) => eprintln!("too slow; try again later"),
///     Err(error) => eprintln!("{error}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The operator does not allow this destination.
    Denied,
    /// The destination took longer than allowed.
    Timeout,
    /// The URL is not `http://` or `https://` with a host.
    Url(String),
    /// Anything else: the connection, TLS, DNS, the body.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied => f.write_str("outbound request denied: its destination is not allowed"),
            Error::Timeout => f.write_str("outbound request timed out"),
            Error::Url(why) => write!(f, "bad URL: {why}"),
            Error::Failed(why) => write!(f, "outbound request failed: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Error {
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied,
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout
            | ErrorCode::DnsTimeout => Error::Timeout,
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// A response: its status, headers and whole body.
///
/// ```no_run
/// let response = wasm_gw_sdk::http::get("https://example.com/")?;
/// println!("{} with {} headers", response.status, response.headers.len());
/// # Ok::<(), wasm_gw_sdk::http::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case), as text.
    ///
    /// ```no_run
    /// let response = wasm_gw_sdk::http::get("https://example.com/")?;
    /// let content_type = response.header("Content-Type").unwrap_or("application/octet-stream");
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The body, as bytes.
    ///
    /// ```no_run
    /// let image = wasm_gw_sdk::http::get("https://example.com/logo.png")?;
    /// let size = image.bytes().len();
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken out of the response.
    ///
    /// ```no_run
    /// let logo = wasm_gw_sdk::http::get("https://example.com/logo.png")?.into_bytes();
    /// let response = wasm_gw_sdk::Response::new(200)
    ///     .header("Content-Type", "image/png")
    ///     .body(logo);
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    pub fn into_bytes(self) -> Vec<u8> {
        self.body
    }

    /// The body as UTF-8 text.
    ///
    /// ```no_run
    /// let page = wasm_gw_sdk::http::get("https://example.com/")?;
    /// let has_title = page.text()?.contains("<title>");
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|_| Error::Failed("the body is not UTF-8".into()))
    }

    /// The body as JSON.
    ///
    /// ```no_run
    /// # use wasm_gw_sdk::serde_json;
    /// let response = wasm_gw_sdk::http::get("https://api.example.com/rates")?;
    /// let rates = response.json::<serde_json::Value>()?;
    /// let euro = rates["EUR"].as_f64();
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|why| Error::Failed(format!("not JSON: {why}")))
    }
}

/// `GET url`.
///
/// ```no_run
/// let status = wasm_gw_sdk::http::get("https://example.com/health")?.status;
/// # Ok::<(), wasm_gw_sdk::http::Error>(())
/// ```
pub fn get(url: &str) -> Result<Response, Error> {
    Request::new("GET", url).send()
}

/// A request to build and send.
///
/// ```no_run
/// use wasm_gw_sdk::http::Request;
/// let response = Request::new("DELETE", "https://api.example.com/items/7").send()?;
/// # Ok::<(), wasm_gw_sdk::http::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with `method` (any case) to `url` (`http://` or `https://`), without headers
    /// or body.
    ///
    /// ```no_run
    /// let request = wasm_gw_sdk::http::Request::new("PUT", "https://api.example.com/items/7");
    /// ```
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// Adds a header; a name may be added more than once.
    ///
    /// ```no_run
    /// let request = wasm_gw_sdk::http::Request::new("GET", "https://api.example.com/me")
    ///     .header("authorization", "Bearer secret-token");
    /// ```
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body.
    ///
    /// ```no_run
    /// let request = wasm_gw_sdk::http::Request::new("POST", "https://api.example.com/notes")
    ///     .header("content-type", "text/plain")
    ///     .body("remember the milk");
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// How long the response's head may take to come.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let response = wasm_gw_sdk::http::Request::new("GET", "https://slow.example.com/")
    ///     .timeout(Duration::from_secs(2))
    ///     .send()?;
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    ///
    /// ```no_run
    /// let response = wasm_gw_sdk::http::Request::new("HEAD", "https://example.com/").send()?;
    /// let exists = response.status == 200;
    /// # Ok::<(), wasm_gw_sdk::http::Error>(())
    /// ```
    pub fn send(self) -> Result<Response, Error> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| Error::Url(format!("{:?} has no scheme", self.url)))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(Error::Url(format!("{other} is not http or https"))),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('?') => (&rest[..at], format!("/{}", &rest[at..])),
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() {
            return Err(Error::Url(format!("{:?} names no host", self.url)));
        }
        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers
                .append(name, value)
                .map_err(|why| Error::Failed(format!("header {name}: {why:?}")))?;
        }
        let request = OutgoingRequest::new(headers);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        };
        let invalid = |what: &str| Error::Url(format!("{what} of {:?} is not valid", self.url));
        request
            .set_method(&method)
            .map_err(|()| invalid("the method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("the scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("the host"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| invalid("the path"))?;
        let outgoing = request
            .body()
            .map_err(|()| Error::Failed("the request body was taken".into()))?;
        let options = self.timeout.map(|timeout| {
            let options = RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_first_byte_timeout(Some(nanos));
            options
        });
        let pending = outgoing_handler::handle(request, options)?;
        {
            let stream = outgoing
                .write()
                .map_err(|()| Error::Failed("the request body's stream was taken".into()))?;
            // blocking-write-and-flush takes 4096 bytes at most a call.
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|why| Error::Failed(format!("sending the body: {why:?}")))?;
            }
        }
        OutgoingBody::finish(outgoing, None)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(code.into()),
            _ => return Err(Error::Failed("no response".into())),
        };
        read(response)
    }
}

fn read(response: IncomingResponse) -> Result<Response, Error> {
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| Error::Failed("the response body was taken".into()))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| Error::Failed("the response body's stream was taken".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(bytes) => body.extend_from_slice(&bytes),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(why)) => {
                    return Err(Error::Failed(why.to_debug_string()));
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
