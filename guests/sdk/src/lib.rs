//! Write wasm-gw apps in Rust.
//!
//! An app is a type that implements [`App`]: it gets a [`Request`] and returns a
//! [`Response`]. [`export_app!`] makes it the component's WSGI application. The host keeps one
//! instance alive across requests, so the app's fields are its state; state that every worker
//! shares, and that survives restarts, goes in the key-value store, [`kv`].
//!
//! ```no_run
//! use wasm_gw_sdk::{App, Request, Response};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl App for Hello {
//!     fn handle(&mut self, request: Request) -> wasm_gw_sdk::Result<Response> {
//!         let name = request.query_param("name").unwrap_or_else(|| "world".into());
//!         Ok(Response::new(200).header("Content-Type", "text/plain").body(format!("Hello, {name}!\n")))
//!     }
//! }
//!
//! wasm_gw_sdk::export_app!(Hello);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and serve the `.wasm` with
//! `wasm-gw serve`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io;

pub mod config;
pub mod http;
pub mod kv;

#[cfg(any(test, all(target_family = "wasm", not(target_feature = "atomics"))))]
mod alloc;

#[cfg(all(
    feature = "fast-alloc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: alloc::SmallBlockCache = alloc::SmallBlockCache::new();

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasm-gw:wsgi/app",
        pub_export_macro: true,
        default_bindings_module: "wasm_gw_sdk::bindings",
        // The world includes wasi:keyvalue, whose bindings live here too.
        generate_all,
    });
}

use bindings::exports::wasm_gw::wsgi::handler::{self, BodyStream as WitBodyStream};
pub use bindings::wasm_gw::wsgi::request::{Environ, Variable};
use bindings::wasm_gw::wsgi::request::{InputError, InputStream};
use bindings::wasm_gw::wsgi::response as wit_response;
pub use bindings::wasm_gw::wsgi::response::ResponseError;
/// The JSON crates the `json` feature uses, for the app's own values: `serde_json::json!`,
/// `Value`, and serde's derives (with `#[serde(crate = "wasm_gw_sdk::serde")]` when the app
/// does not depend on serde itself).
#[cfg(feature = "json")]
pub use {serde, serde_json};

/// An error an app did not handle. The client gets a 500 and the message goes to the host's
/// log; the instance keeps serving.
///
/// ```no_run
/// fn parse_id(text: &str) -> Result<u64, wasm_gw_sdk::Error> {
///     Ok(text.parse::<u64>()?)
/// }
/// ```
pub type Error = Box<dyn std::error::Error>;

/// The result of [`App::handle`].
///
/// ```no_run
/// use wasm_gw_sdk::{Request, Response};
///
/// fn show_item(request: Request) -> wasm_gw_sdk::Result<Response> {
///     let id: u32 = request.query_param("id").ok_or("no id given")?.parse()?;
///     Ok(Response::text(200, format!("item {id}\n")))
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A web app. One value of it lives in each instance and serves every request that instance
/// gets, one at a time.
///
/// ```no_run
/// use wasm_gw_sdk::{App, Request, Response};
///
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl App for Counter {
///     fn handle(&mut self, _request: Request) -> wasm_gw_sdk::Result<Response> {
///         self.0 += 1;
///         Ok(Response::text(200, format!("request number {}\n", self.0)))
///     }
/// }
/// ```
pub trait App: Default + 'static {
    /// Answers one request.
    ///
    /// ```no_run
    /// # use wasm_gw_sdk::{App, Request, Response};
    /// # #[derive(Default)] struct Site;
    /// impl App for Site {
    ///     fn handle(&mut self, request: Request) -> wasm_gw_sdk::Result<Response> {
    ///         Ok(match request.path() {
    ///             "/" => Response::text(200, "home\n"),
    ///             _ => Response::text(404, "not found\n"),
    ///         })
    ///     }
    /// }
    /// ```
    fn handle(&mut self, request: Request) -> Result<Response>;
}

/// Makes `$app`, a type implementing [`App`], the component's WSGI application.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        struct __WasmGwExport;

        ::std::thread_local! {
            static __WASM_GW_APP: ::std::cell::RefCell<::std::option::Option<$app>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::bindings::exports::wasm_gw::wsgi::handler::Guest for __WasmGwExport {
            type BodyStream = $crate::StreamState;

            fn application(
                environ: $crate::Environ,
                input: $crate::bindings::wasm_gw::wsgi::request::InputStream,
            ) -> ::std::result::Result<$crate::bindings::exports::wasm_gw::wsgi::handler::Body, ::std::string::String> {
                __WASM_GW_APP.with_borrow_mut(|app| {
                    $crate::serve(
                        app.get_or_insert_with(::std::default::Default::default),
                        environ,
                        input,
                    )
                })
            }
        }

        $crate::bindings::export!(__WasmGwExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub fn serve<A: App>(
    app: &mut A,
    environ: Environ,
    input: InputStream,
) -> Result<handler::Body, String> {
    let request = Request {
        environ,
        body: Body { input },
    };
    match app.handle(request) {
        Ok(response) => response.send(),
        Err(error) => Err(error.to_string()),
    }
}

/// One request: its [`Environ`] and its [`Body`].
///
/// ```no_run
/// # use wasm_gw_sdk::{Request, Response};
/// # fn handle(mut request: Request) -> wasm_gw_sdk::Result<Response> {
/// let method = request.method().to_owned();
/// let body = request.body().read_all()?;
/// Ok(Response::text(200, format!("{method} with {} bytes\n", body.len())))
/// # }
/// ```
pub struct Request {
    environ: Environ,
    body: Body,
}

impl Request {
    /// Every WSGI variable, as the host built it.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let environ = request.environ();
    /// let url = format!("{}://{}{}", environ.url_scheme(), environ.server_name(), environ.raw_uri());
    /// # }
    /// ```
    pub fn environ(&self) -> &Environ {
        &self.environ
    }

    /// The method exactly as sent, for example `GET`.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) -> wasm_gw_sdk::Response {
    /// if request.method() != "POST" {
    ///     return wasm_gw_sdk::Response::new(405).header("Allow", "POST");
    /// }
    /// # wasm_gw_sdk::Response::new(200)
    /// # }
    /// ```
    pub fn method(&self) -> &str {
        self.environ.request_method()
    }

    /// The path below the app's mount point (PATH_INFO), percent-decoded.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// if let Some(id) = request.path().strip_prefix("/items/") {
    ///     println!("item {id}");
    /// }
    /// # }
    /// ```
    pub fn path(&self) -> &str {
        self.environ.path_info()
    }

    /// The raw query string, without `?`.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let has_query = !request.query_string().is_empty();
    /// # }
    /// ```
    pub fn query_string(&self) -> &str {
        self.environ.query_string()
    }

    /// The query parameters in order, with `+` and `%XX` decoded.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// for (name, value) in request.query() {
    ///     println!("{name} = {value}");
    /// }
    /// # }
    /// ```
    pub fn query(&self) -> Vec<(String, String)> {
        self.query_pairs()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    /// The query parameters in order, decoded, copied only where decoding changed them.
    fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.raw_query_pairs()
            .map(|(name, value)| (form_decode(name), form_decode(value)))
    }

    /// The query's `name=value` pairs, split but not decoded. A pair is split with a byte
    /// scan: under Wasm, `split_once`'s searcher costs more than the scan.
    fn raw_query_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query_string()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.bytes().position(|b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, ""),
            })
    }

    /// The first value of query parameter `name`. Only that parameter's value is decoded.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let page: u32 = request.query_param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    /// # }
    /// ```
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.raw_query_pairs()
            .find(|(key, _)| form_decode(key) == name)
            .map(|(_, value)| form_decode(value).into_owned())
    }

    /// The first header called `name`, compared case-insensitively.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let wants_json = request.header("accept").is_some_and(|accept| accept.contains("json"));
    /// # }
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.environ.header(name)
    }

    /// All headers as received, in order, repeats included, as (name, value).
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let cookies = request.headers().filter(|(name, _)| name.eq_ignore_ascii_case("cookie")).count();
    /// # }
    /// ```
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.environ.headers()
    }

    /// The request body.
    ///
    /// ```no_run
    /// # fn handle(mut request: wasm_gw_sdk::Request) -> std::io::Result<()> {
    /// let upload = request.body().read_all()?;
    /// # Ok(()) }
    /// ```
    pub fn body(&mut self) -> &mut Body {
        &mut self.body
    }
}

/// How many strings of the environ are `Variable`s: the server's variables and the header
/// lines follow them.
const VARIABLES: usize = Variable::UrlScheme as usize + 1;

/// What ends each string of the environ's text: U+0100, which no native string holds.
const SEPARATOR: char = '\u{100}';

/// The environ comes packed (one string, each piece followed by U+0100); these read it.
impl Environ {
    /// The `index`th string of the packed text.
    fn string(&self, index: usize) -> &str {
        self.strings().nth(index).unwrap_or_default()
    }

    /// Every string of the packed text, in order. The text is short (a browser's request,
    /// under 1 KiB), so a scan is cheaper than the list of offsets it replaced, which cost an
    /// allocation in the guest and a call from the host to make it.
    fn strings(&self) -> impl Iterator<Item = &str> {
        // Each string ends with a separator: the empty one past the last is no string.
        self.text.split_terminator(SEPARATOR)
    }

    /// The `count` pairs of strings from the `first`th.
    fn pairs(&self, first: usize, count: usize) -> impl Iterator<Item = (&str, &str)> {
        let mut strings = self.strings().skip(first);
        std::iter::from_fn(move || Some((strings.next()?, strings.next()?))).take(count)
    }

    /// One text variable.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// use wasm_gw_sdk::Variable;
    /// let target = request.environ().get(Variable::RawUri);
    /// # }
    /// ```
    pub fn get(&self, variable: Variable) -> &str {
        self.string(variable as usize)
    }

    /// REQUEST_METHOD, exactly as sent: `GET`.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let is_head = request.environ().request_method() == "HEAD";
    /// # }
    /// ```
    pub fn request_method(&self) -> &str {
        self.get(Variable::RequestMethod)
    }

    /// SCRIPT_NAME: where the app is mounted, without a trailing slash; empty at the root.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// // The app's home page, wherever the operator mounted it.
    /// let home = format!("{}/", request.environ().script_name());
    /// # }
    /// ```
    pub fn script_name(&self) -> &str {
        self.get(Variable::ScriptName)
    }

    /// PATH_INFO: the path below the mount point, percent-decoded, as a native string.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let segments: Vec<&str> = request.environ().path_info().split('/').collect();
    /// # }
    /// ```
    pub fn path_info(&self) -> &str {
        self.get(Variable::PathInfo)
    }

    /// QUERY_STRING: after `?`, still percent-encoded; empty if none.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let pairs = request.environ().query_string().split('&').count();
    /// # }
    /// ```
    pub fn query_string(&self) -> &str {
        self.get(Variable::QueryString)
    }

    /// CONTENT_TYPE, if the client sent one.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let environ = request.environ();
    /// let is_form = environ.content_type() == Some("application/x-www-form-urlencoded");
    /// # }
    /// ```
    pub fn content_type(&self) -> Option<&str> {
        self.has_content_type
            .then(|| self.get(Variable::ContentType))
    }

    /// SERVER_NAME: from the Host header, without the port.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let host = request.environ().server_name();
    /// let is_local = host == "localhost" || host == "127.0.0.1";
    /// # }
    /// ```
    pub fn server_name(&self) -> &str {
        self.get(Variable::ServerName)
    }

    /// SERVER_PROTOCOL: `HTTP/1.0` or `HTTP/1.1`.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let is_http_10 = request.environ().server_protocol() == "HTTP/1.0";
    /// # }
    /// ```
    pub fn server_protocol(&self) -> &str {
        self.get(Variable::ServerProtocol)
    }

    /// REMOTE_ADDR: the client's IP address.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// println!("request from {}", request.environ().remote_addr());
    /// # }
    /// ```
    pub fn remote_addr(&self) -> &str {
        self.get(Variable::RemoteAddr)
    }

    /// RAW_URI and REQUEST_URI: the request target exactly as received.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let environ = request.environ();
    /// println!("{} {}", environ.request_method(), environ.raw_uri());
    /// # }
    /// ```
    pub fn raw_uri(&self) -> &str {
        self.get(Variable::RawUri)
    }

    /// wsgi.url_scheme: `http` or `https`.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let is_secure = request.environ().url_scheme() == "https";
    /// # }
    /// ```
    pub fn url_scheme(&self) -> &str {
        self.get(Variable::UrlScheme)
    }

    /// wsgi.multithread: whether other instances may serve the app's requests meanwhile.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// if request.environ().multithread() {
    ///     // Other instances serve requests too: keep shared state in `wasm_gw_sdk::kv`.
    /// }
    /// # }
    /// ```
    pub fn multithread(&self) -> bool {
        self.multithread
    }

    /// wsgi.multiprocess: whether other processes may serve the app.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let only_process = !request.environ().multiprocess();
    /// # }
    /// ```
    pub fn multiprocess(&self) -> bool {
        self.multiprocess
    }

    /// wsgi.run_once: whether this instance serves only this request.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// // No use warming a cache that no later request will see.
    /// let warm_cache = !request.environ().run_once();
    /// # }
    /// ```
    pub fn run_once(&self) -> bool {
        self.run_once
    }

    /// The server's own CGI variables: mod_ssl's (`HTTPS`, `SSL_*`) on TLS, else none.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let tls = request.environ().ssl_variables().any(|(name, _)| name == "HTTPS");
    /// # }
    /// ```
    pub fn ssl_variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs(VARIABLES, self.server_variables as usize)
    }

    /// Every header line as received, in order, repeats included, as (name, value); each
    /// value a latin-1 native string.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// for (name, value) in request.environ().headers() {
    ///     println!("{name}: {value}");
    /// }
    /// # }
    /// ```
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let first = VARIABLES + 2 * self.server_variables as usize;
        self.pairs(first, usize::MAX)
    }

    /// The first value of header `name`, compared case-insensitively.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// let agent = request.environ().header("user-agent").unwrap_or("unknown");
    /// # }
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// The CGI variables of the headers and the server, as a WSGI environ holds them:
    /// the server's own first (mod_ssl's `HTTPS` and `SSL_*` on TLS), then `HTTP_` + each
    /// header name upper-cased with `-` as `_`, repeated headers joined by `,`. Content-Type
    /// and Content-Length are left out (they are `content_type` and `content_length`), and
    /// so are names holding `_`, so that `X_Forwarded_For` cannot pose as
    /// `X-Forwarded-For`.
    ///
    /// ```no_run
    /// # fn handle(request: wasm_gw_sdk::Request) {
    /// for (key, value) in request.environ().cgi_variables() {
    ///     println!("{key}={value}");
    /// }
    /// # }
    /// ```
    pub fn cgi_variables(&self) -> Vec<(String, String)> {
        let mut variables: Vec<(String, String)> = self
            .ssl_variables()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        let servers = variables.len();
        for (name, value) in self.headers() {
            if name.eq_ignore_ascii_case("content-type")
                || name.eq_ignore_ascii_case("content-length")
                || name.contains('_')
            {
                continue;
            }
            let key: String = "HTTP_"
                .chars()
                .chain(name.chars().map(|c| match c {
                    '-' => '_',
                    c => c.to_ascii_uppercase(),
                }))
                .collect();
            // RFC 9110 §5.3: a repeated field's values may be joined with commas.
            match variables[servers..]
                .iter_mut()
                .find(|(existing, _)| *existing == key)
            {
                Some((_, joined)) => {
                    joined.push(',');
                    joined.push_str(value);
                }
                None => variables.push((key, value.to_owned())),
            }
        }
        variables
    }
}

/// The request body (wsgi.input), read from the connection as the app asks for it. It ends at
/// the end of the request body; chunked framing is already removed.
///
/// ```no_run
/// # fn handle(mut request: wasm_gw_sdk::Request) -> std::io::Result<()> {
/// use std::io::Read;
/// let mut text = String::new();
/// request.body().read_to_string(&mut text)?;
/// # Ok(()) }
/// ```
pub struct Body {
    input: InputStream,
}

impl Body {
    /// Reads up to `size` bytes; fewer only at the end. Empty means the body has ended.
    ///
    /// ```no_run
    /// # fn handle(mut request: wasm_gw_sdk::Request) -> std::io::Result<()> {
    /// let body = request.body();
    /// let mut chunk = body.read_chunk(16 * 1024)?;
    /// while !chunk.is_empty() {
    ///     // ... use `chunk` ...
    ///     chunk = body.read_chunk(16 * 1024)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_chunk(&mut self, size: usize) -> io::Result<Vec<u8>> {
        self.input.read(size as u64).map_err(input_error)
    }

    /// Reads up to and including the next `\n`, at most `limit` bytes.
    ///
    /// ```no_run
    /// # fn handle(mut request: wasm_gw_sdk::Request) -> std::io::Result<()> {
    /// let line = request.body().read_line(8192)?;
    /// let first_line = String::from_utf8_lossy(&line);
    /// # Ok(()) }
    /// ```
    pub fn read_line(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        self.input.read_line(limit as u64).map_err(input_error)
    }

    /// Reads the whole rest of the body.
    ///
    /// ```no_run
    /// # fn handle(mut request: wasm_gw_sdk::Request) -> wasm_gw_sdk::Result<()> {
    /// let form = String::from_utf8(request.body().read_all()?)?;
    /// # Ok(()) }
    /// ```
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.input.read_to_end().map_err(input_error)
    }
}

impl io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.read_chunk(buf.len())?;
        buf[..chunk.len()].copy_from_slice(&chunk);
        Ok(chunk.len())
    }
}

fn input_error(error: InputError) -> io::Error {
    match error {
        InputError::Disconnected(why) => io::Error::new(io::ErrorKind::ConnectionAborted, why),
        InputError::Stale => io::Error::other("request body used after its request ended"),
        InputError::TooLarge => io::Error::new(
            io::ErrorKind::OutOfMemory,
            "request body larger than the instance's memory cap",
        ),
    }
}

/// A body produced piece by piece, like the iterable a WSGI app returns.
///
/// ```no_run
/// use wasm_gw_sdk::{BodyStream, Response};
///
/// struct Countdown(u32);
///
/// impl BodyStream for Countdown {
///     fn next_chunk(&mut self) -> Option<Vec<u8>> {
///         self.0 = self.0.checked_sub(1)?;
///         Some(format!("{}\n", self.0).into_bytes())
///     }
/// }
///
/// let response = Response::new(200).stream(Countdown(10));
/// ```
pub trait BodyStream: 'static {
    /// The next chunk, or `None` at the end.
    ///
    /// ```no_run
    /// # struct Lines(std::vec::IntoIter<String>);
    /// # impl wasm_gw_sdk::BodyStream for Lines {
    /// fn next_chunk(&mut self) -> Option<Vec<u8>> {
    ///     self.0.next().map(|line| format!("{line}\n").into_bytes())
    /// }
    /// # }
    /// ```
    fn next_chunk(&mut self) -> Option<Vec<u8>>;

    /// Called once after the last chunk, also when the client went away early.
    ///
    /// ```no_run
    /// # struct Feed { subscribed: bool }
    /// # impl wasm_gw_sdk::BodyStream for Feed {
    /// # fn next_chunk(&mut self) -> Option<Vec<u8>> { None }
    /// fn close(&mut self) {
    ///     self.subscribed = false; // runs also when the client left early
    /// }
    /// # }
    /// ```
    fn close(&mut self) {}
}

/// A response: status, headers and body.
///
/// ```no_run
/// let response = wasm_gw_sdk::Response::new(201)
///     .header("Location", "/items/7")
///     .body("created\n");
/// ```
pub struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: ResponseBody,
}

enum ResponseBody {
    Whole(Vec<u8>),
    Stream(Box<dyn BodyStream>),
    /// The app sent everything itself through [`start_response`] and [`write`].
    Written,
}

impl Response {
    /// An empty response with `status` and its standard reason phrase.
    ///
    /// ```no_run
    /// let not_found = wasm_gw_sdk::Response::new(404); // `404 Not Found`, empty body
    /// ```
    pub fn new(status: u16) -> Response {
        let reason = reason_phrase(status);
        let line = if (100..1000).contains(&status) {
            // Every real status: three digits, without the formatting machinery.
            let mut line = String::with_capacity(4 + reason.len());
            for digit in [status / 100, status / 10 % 10, status % 10] {
                line.push(char::from(b'0' + digit as u8));
            }
            line.push(' ');
            line.push_str(reason);
            line
        } else {
            format!("{status} {reason}")
        };
        Response::with_status_line(line)
    }

    /// An empty response with a whole status line, for example `299 Custom`.
    ///
    /// ```no_run
    /// let response = wasm_gw_sdk::Response::with_status_line("299 Custom").body("done\n");
    /// ```
    pub fn with_status_line(status: impl Into<String>) -> Response {
        Response {
            status: status.into(),
            headers: Vec::new(),
            body: ResponseBody::Whole(Vec::new()),
        }
    }

    /// The response of an app that already called [`start_response`] and sent its body with
    /// [`write`], as a WSGI app using the legacy write callable does.
    ///
    /// ```no_run
    /// use wasm_gw_sdk::{start_response, write, Response};
    /// # fn handle(_request: wasm_gw_sdk::Request) -> wasm_gw_sdk::Result<Response> {
    /// let headers = [("Content-Type".to_owned(), "text/plain".to_owned())];
    /// start_response("200 OK", &headers, None)?;
    /// write(b"hello\n")?;
    /// Ok(Response::written())
    /// # }
    /// ```
    pub fn written() -> Response {
        Response {
            status: String::new(),
            headers: Vec::new(),
            body: ResponseBody::Written,
        }
    }

    /// A `text/plain; charset=utf-8` response.
    ///
    /// ```no_run
    /// let response = wasm_gw_sdk::Response::text(404, "no such item\n");
    /// ```
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(text.into())
    }

    /// An `application/json` response of `value` (the `json` feature).
    ///
    /// ```no_run
    /// # use wasm_gw_sdk::{Response, serde_json};
    /// let response = Response::json(200, &serde_json::json!({"count": 3}));
    /// ```
    #[cfg(feature = "json")]
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .header("Content-Type", "application/json")
                .body(body),
            // A value serde_json cannot write (a map with non-string keys, say) is the app's
            // mistake: a 500 that says so, not a panic.
            Err(why) => Response::text(500, format!("cannot write the response as JSON: {why}\n")),
        }
    }

    /// Adds a header. Values are latin-1: chars above U+00FF are refused by the host.
    ///
    /// ```no_run
    /// let response = wasm_gw_sdk::Response::text(200, "hi\n")
    ///     .header("Cache-Control", "max-age=60");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the whole body. The host adds Content-Length.
    ///
    /// ```no_run
    /// # let png: Vec<u8> = Vec::new();
    /// let response = wasm_gw_sdk::Response::new(200)
    ///     .header("Content-Type", "image/png")
    ///     .body(png);
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = ResponseBody::Whole(body.into());
        self
    }

    /// Streams the body from `stream`, with chunked transfer coding unless a Content-Length
    /// header was set.
    ///
    /// ```no_run
    /// # struct Ticks(u32);
    /// # impl wasm_gw_sdk::BodyStream for Ticks {
    /// #     fn next_chunk(&mut self) -> Option<Vec<u8>> { None }
    /// # }
    /// let response = wasm_gw_sdk::Response::new(200)
    ///     .header("Content-Type", "text/event-stream")
    ///     .stream(Ticks(0));
    /// ```
    pub fn stream(mut self, stream: impl BodyStream) -> Response {
        self.body = ResponseBody::Stream(Box::new(stream));
        self
    }

    fn send(self) -> Result<handler::Body, String> {
        let start = || {
            start_response(&self.status, &self.headers, None)
                .map_err(|error| format!("start_response refused the response: {error:?}"))
        };
        Ok(match self.body {
            ResponseBody::Whole(body) => {
                start()?;
                handler::Body::Chunks(vec![body])
            }
            ResponseBody::Stream(stream) => {
                start()?;
                handler::Body::Stream(WitBodyStream::new(StreamState(RefCell::new(stream))))
            }
            ResponseBody::Written => handler::Body::Chunks(Vec::new()),
        })
    }
}

/// PEP 3333's start_response, for apps that manage the exchange themselves.
///
/// ```no_run
/// # fn demo() -> Result<(), wasm_gw_sdk::ResponseError> {
/// let headers = [("Content-Type".to_owned(), "text/html".to_owned())];
/// wasm_gw_sdk::start_response("200 OK", &headers, None)?;
/// # Ok(()) }
/// ```
pub fn start_response(
    status: &str,
    headers: &[(String, String)],
    exc_info: Option<&str>,
) -> Result<(), ResponseError> {
    wit_response::start_response(status, headers, exc_info)
}

/// WSGI's write callable: sends `data` at once, after the headers.
///
/// ```no_run
/// # fn demo() -> Result<(), wasm_gw_sdk::ResponseError> {
/// # wasm_gw_sdk::start_response("200 OK", &[], None)?;
/// wasm_gw_sdk::write(b"<h1>Hello</h1>\n")?;
/// # Ok(()) }
/// ```
pub fn write(data: &[u8]) -> Result<(), ResponseError> {
    wit_response::write(data)
}

#[doc(hidden)]
pub struct StreamState(RefCell<Box<dyn BodyStream>>);

impl handler::GuestBodyStream for StreamState {
    fn next(&self) -> Option<Vec<u8>> {
        self.0.borrow_mut().next_chunk()
    }

    fn close(&self) {
        self.0.borrow_mut().close();
    }
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte. The
/// input is a native string (one char per byte); the decoded bytes are read as UTF-8.
fn form_decode(text: &str) -> Cow<'_, str> {
    // Most names and values need no decoding: no copy for them.
    if text.bytes().all(|b| b.is_ascii() && b != b'+' && b != b'%') {
        return Cow::Borrowed(text);
    }
    let raw: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(c).unwrap_or(b'?'))
        .collect();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_slice();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => match (tail.first().and_then(hex), tail.get(1).and_then(hex)) {
                (Some(high), Some(low)) => {
                    bytes.push(high << 4 | low);
                    rest = &tail[2..];
                }
                _ => bytes.push(b'%'),
            },
            byte => bytes.push(byte),
        }
    }
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

fn hex(digit: &u8) -> Option<u8> {
    (*digit as char).to_digit(16).map(|value| value as u8)
}

/// The standard reason phrase for `status`, or `Unknown`.
///
/// ```no_run
/// assert_eq!(wasm_gw_sdk::reason_phrase(404), "Not Found");
/// ```
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%21%zz"), "a b!%zz");
        assert_eq!(form_decode("caf%C3%A9"), "café");
        // Raw UTF-8 bytes in a query arrive as one char per byte.
        assert_eq!(form_decode("caf\u{c3}\u{a9}"), "café");
        assert!(matches!(
            form_decode("plain-text"),
            Cow::Borrowed("plain-text")
        ));
    }

    #[test]
    fn status_lines() {
        let line = |status| Response::new(status).status;
        assert_eq!(line(200), "200 OK");
        assert_eq!(line(404), "404 Not Found");
        assert_eq!(line(299), "299 Unknown");
        assert_eq!(line(42), format!("42 {}", reason_phrase(42)));
    }
}
