//! The echo contract of `guests/echo`, as a standard `wasi:http/incoming-handler@0.2`
//! component, so that the protocol and corpus suites run against the `wasi:http` world too.
//! For every complete request, whatever its method and target:
//! - the status is 200;
//! - the body is exactly the request body, after the server removed any chunked framing,
//!   framed by Content-Length;
//! - `X-Echo-Meta` carries standard padded base64 of a UTF-8 JSON object: `method`, `path`,
//!   `query` (raw, without `?`), `headers` (`[name, value]` pairs), `body_len` and `raw_uri`
//!   (the path and query).
//!
//! What `wasi:http` does not show a component is missing: no `version`, no `environ`
//! (`X-Echo-Environ` is ignored). Header names arrive lowercased and grouped by name, as
//! `wasi:http`'s fields are; a value's bytes above 0x7F appear as the characters U+0080 to
//! U+00FF, as the WSGI echo shows them.

use base64::Engine;
use serde_json::json;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

struct HttpEcho;

impl wasip2::exports::http::incoming_handler::Guest for HttpEcho {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let body = match read_body(&request) {
            Ok(body) => body,
            Err(why) => {
                eprintln!("http-echo: cannot read the request body: {why}");
                let response = OutgoingResponse::new(Fields::new());
                let _ = response.set_status_code(500);
                ResponseOutparam::set(response_out, Ok(response));
                return;
            }
        };
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let headers: Vec<[String; 2]> = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| [name, value.iter().map(|&byte| char::from(byte)).collect()])
            .collect();
        let meta = json!({
            "method": method_name(&request.method()),
            "path": path,
            "query": query,
            "headers": headers,
            "body_len": body.len(),
            "raw_uri": target,
        });
        let meta = base64::engine::general_purpose::STANDARD.encode(meta.to_string());

        let fields = Fields::new();
        // Fields::set fails only for a forbidden or malformed header, which these are not.
        let _ = fields.set("content-type", &[b"application/octet-stream".to_vec()]);
        let _ = fields.set("content-length", &[body.len().to_string().into_bytes()]);
        let _ = fields.set("x-echo-meta", &[meta.into_bytes()]);
        let response = OutgoingResponse::new(fields);
        let Ok(outgoing) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            // blocking-write-and-flush takes 4096 bytes at most a call.
            for chunk in body.chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    return;
                }
            }
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

/// The whole request body.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let incoming = request
        .consume()
        .map_err(|()| "the body was taken already".to_owned())?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| "the body's stream was taken already".to_owned())?;
        // Waits through wasi:io/poll, as async runtimes for wasi:http do, rather than with
        // blocking-read: the server's bounds on such waits are part of what it tests.
        let ready = stream.subscribe();
        loop {
            ready.block();
            match stream.read(64 * 1024) {
                Ok(bytes) => body.extend_from_slice(&bytes),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => {
                    return Err(error.to_debug_string());
                }
            }
        }
    }
    // The trailers, if any, are read and let go: the echo contract does not show them.
    let _ = IncomingBody::finish(incoming);
    Ok(body)
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other.as_str(),
    }
    .to_owned()
}

wasip2::http::proxy::export!(HttpEcho);
