//! The echo contract, which outside conformance suites depend on. For every complete
//! request, whatever its method and target:
//! - the status is 200; the app itself never rejects anything;
//! - the body is exactly the request body, after the server removed any chunked framing,
//!   framed by Content-Length and written in one go;
//! - `X-Echo-Meta` carries standard padded base64 of a UTF-8 JSON object: `method`, `path`
//!   (SCRIPT_NAME + PATH_INFO), `query` (raw, without `?`), `headers` (the raw `[name, value]`
//!   pairs in order), `body_len`, `raw_uri` and `version`;
//! - with `X-Echo-Environ: 1` the object also holds `environ`: every CGI and WSGI variable as
//!   a string, formatted as Python's `str()` would (`True`, `(1, 0)`);
//! - HEAD is answered like GET.

use base64::Engine;
use serde_json::{Map, Value, json};
use wasm_gw_sdk::{App, Environ, Request, Response, Result};

#[derive(Default)]
struct Echo;

impl App for Echo {
    fn handle(&mut self, mut request: Request) -> Result<Response> {
        let body = request.body().read_all()?;
        let environ = request.environ();
        let mut meta = json!({
            "method": environ.request_method(),
            "path": format!("{}{}", environ.script_name(), environ.path_info()),
            "query": environ.query_string(),
            "headers": request.headers().map(|(name, value)| [name, value]).collect::<Vec<_>>(),
            "body_len": body.len(),
            "raw_uri": environ.raw_uri(),
            "version": environ.server_protocol(),
        });
        if request.header("X-Echo-Environ") == Some("1") {
            meta["environ"] = Value::Object(environ_strings(environ));
        }
        let meta = base64::engine::general_purpose::STANDARD.encode(meta.to_string());
        Ok(Response::new(200)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", body.len().to_string())
            .header("X-Echo-Meta", meta)
            .body(body))
    }
}

/// The environ as Python's `{key: str(value)}` would show it.
fn environ_strings(environ: &Environ) -> Map<String, Value> {
    let python_bool = |flag: bool| if flag { "True" } else { "False" };
    let mut strings: Vec<(&str, String)> = vec![
        ("REQUEST_METHOD", environ.request_method().to_owned()),
        ("SCRIPT_NAME", environ.script_name().to_owned()),
        ("PATH_INFO", environ.path_info().to_owned()),
        ("QUERY_STRING", environ.query_string().to_owned()),
        ("SERVER_NAME", environ.server_name().to_owned()),
        ("SERVER_PORT", environ.server_port.to_string()),
        ("SERVER_PROTOCOL", environ.server_protocol().to_owned()),
        ("REMOTE_ADDR", environ.remote_addr().to_owned()),
        ("REMOTE_PORT", environ.remote_port.to_string()),
        ("RAW_URI", environ.raw_uri().to_owned()),
        ("REQUEST_URI", environ.raw_uri().to_owned()),
        ("wsgi.version", "(1, 0)".to_owned()),
        ("wsgi.url_scheme", environ.url_scheme().to_owned()),
        (
            "wsgi.multithread",
            python_bool(environ.multithread()).to_owned(),
        ),
        (
            "wsgi.multiprocess",
            python_bool(environ.multiprocess()).to_owned(),
        ),
        ("wsgi.run_once", python_bool(environ.run_once()).to_owned()),
        ("wsgi.input_terminated", "True".to_owned()),
    ];
    if let Some(content_type) = environ.content_type() {
        strings.push(("CONTENT_TYPE", content_type.to_owned()));
    }
    if let Some(content_length) = environ.content_length {
        strings.push(("CONTENT_LENGTH", content_length.to_string()));
    }
    let mut map: Map<String, Value> = strings
        .into_iter()
        .map(|(key, value)| (key.to_owned(), Value::String(value)))
        .collect();
    for (key, value) in environ.cgi_variables() {
        map.insert(key, Value::String(value));
    }
    map
}

wasm_gw_sdk::export_app!(Echo);
