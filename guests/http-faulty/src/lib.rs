//! A standard `wasi:http` 0.2 component that misbehaves on request, one route per fault:
//! `/loop` spins forever, `/alloc` allocates without bound (`?mb=N`: N MiB, then answers),
//! `/panic` panics, `/stream`
//! writes lines for as long as they are taken, `/late-panic` panics after starting its
//! response, `/write-before-set` writes its body before setting the response, `/no-response`
//! returns without setting a response, `/respond-then-read` sets its response before it
//! reads the request body, `/wrong-length` declares 10 bytes and writes 5,
//! `/config?key=K` answers the wasi:config value the operator set for K, `/outbound?url=U` sends a GET to U (default
//! https://example.com/; `&timeout_ms=N` for a first-byte timeout) and reports what it got, and `/ok` answers. Mounted under a prefix, it routes on the path after the
//! prefix that the `wasm-gw-script-name` header names.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};
use wasip2::io::streams::OutputStream;

wit_bindgen::generate!({
    path: "../../wit/deps/config",
    world: "imports",
});

struct HttpFaulty;

impl wasip2::exports::http::incoming_handler::Guest for HttpFaulty {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        // Mounted under a prefix, it routes on what follows it, as wasm-gw's header says.
        let prefix = request
            .headers()
            .get("wasm-gw-script-name")
            .into_iter()
            .next()
            .and_then(|value| String::from_utf8(value).ok())
            .unwrap_or_default();
        let target = target.strip_prefix(&prefix).unwrap_or(&target);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let megabytes = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("mb="))
            .and_then(|mb| mb.parse::<usize>().ok());
        match path {
            "/loop" => {
                let mut spins: u64 = 0;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                while megabytes.is_none_or(|mb| hoard.len() < mb) {
                    hoard.push(vec![1; 1 << 20]);
                }
                let held = std::hint::black_box(&hoard).len();
                answer(response_out, &format!("held {held} MiB\n"));
            }
            "/panic" => panic!("the app panicked on purpose"),
            "/stream" => {
                // Lines for as long as the server takes them.
                if let Some((_body, stream)) = start(response_out) {
                    while stream.blocking_write_and_flush(b"line\n").is_ok() {}
                }
            }
            "/no-response" => drop(response_out),
            "/late-panic" => {
                // The response set and some of its body written, then a panic.
                if let Some((_body, stream)) = start(response_out) {
                    let _ = stream.blocking_write_and_flush(b"partial");
                }
                panic!("the app panicked after starting its response");
            }
            "/write-before-set" => {
                // The body written before the response is set: nobody can take it yet, and
                // the guest waits in the host, where only the server's bound on the wait
                // reaches it.
                let response = OutgoingResponse::new(Fields::new());
                let Ok(body) = response.body() else {
                    return;
                };
                if let Ok(stream) = body.write() {
                    for _ in 0..64 {
                        let _ = stream.blocking_write_and_flush(&[b'x'; 4096]);
                    }
                }
                ResponseOutparam::set(response_out, Ok(response));
            }
            "/config" => {
                // The value the operator set for `key`, through wasi:config.
                let key = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("key="))
                    .unwrap_or("");
                let text = match wasi::config::store::get(key) {
                    Ok(Some(value)) => format!("{key}={value}\n"),
                    Ok(None) => format!("{key} unset\n"),
                    Err(error) => format!("{error:?}\n"),
                };
                answer(response_out, &text);
            }
            "/wrong-length" => {
                // Declares 10 bytes and writes 5.
                let headers = Fields::new();
                let _ = headers.set("content-length", &[b"10".to_vec()]);
                let response = OutgoingResponse::new(headers);
                let Ok(body) = response.body() else {
                    return;
                };
                ResponseOutparam::set(response_out, Ok(response));
                if let Ok(stream) = body.write() {
                    let _ = stream.blocking_write_and_flush(b"short");
                }
                let _ = OutgoingBody::finish(body, None);
            }
            "/respond-then-read" => {
                // The response set first, then the request body read, then the answer.
                let Some((body, stream)) = start(response_out) else {
                    return;
                };
                let mut read = 0;
                let mut failed = None;
                if let Ok(incoming) = request.consume()
                    && let Ok(input) = incoming.stream()
                {
                    loop {
                        match input.blocking_read(64 * 1024) {
                            Ok(bytes) => read += bytes.len(),
                            Err(wasip2::io::streams::StreamError::Closed) => break,
                            Err(error) => {
                                failed = Some(format!("{error:?}"));
                                break;
                            }
                        }
                    }
                }
                let text = match failed {
                    Some(error) => format!("the body failed: {error}\n"),
                    None => format!("read {read} bytes\n"),
                };
                let _ = stream.blocking_write_and_flush(text.as_bytes());
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
            }
            "/outbound" => {
                // ?url=scheme://authority/path (default https://example.com/): what a GET
                // there got, as `STATUS BODY`, or the error code.
                let url = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("url="))
                    .unwrap_or("https://example.com/");
                let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
                let (authority, path) = match rest.find('/') {
                    Some(slash) => (&rest[..slash], &rest[slash..]),
                    None => (rest, "/"),
                };
                // &host=H: a Host header of the guest's own choosing, which must change
                // nothing (wasi:http forbids it; wasm-gw sets Host from the authority).
                let headers = Fields::new();
                if let Some(host) = query.split('&').find_map(|pair| pair.strip_prefix("host=")) {
                    let _ = headers.set("host", &[host.as_bytes().to_vec()]);
                }
                let outgoing = OutgoingRequest::new(headers);
                let scheme = match scheme {
                    "http" => Scheme::Http,
                    _ => Scheme::Https,
                };
                let _ = outgoing.set_scheme(Some(&scheme));
                let _ = outgoing.set_authority(Some(authority));
                let _ = outgoing.set_path_with_query(Some(path));
                // &timeout_ms=N: the response's head must come within N ms.
                let options = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("timeout_ms="))
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .map(|ms| {
                        let options = wasip2::http::types::RequestOptions::new();
                        let _ = options.set_first_byte_timeout(Some(ms * 1_000_000));
                        options
                    });
                let outcome = match outgoing_handler::handle(outgoing, options) {
                    Ok(future) => {
                        future.subscribe().block();
                        match future.get() {
                            Some(Ok(Ok(response))) => read_response(response),
                            Some(Ok(Err(code))) => format!("{code:?}"),
                            other => format!("{other:?}"),
                        }
                    }
                    Err(code) => format!("{code:?}"),
                };
                answer(response_out, &outcome);
            }
            _ => answer(response_out, "ok"),
        }
    }
}

/// `STATUS BODY` of an upstream's response.
fn read_response(response: wasip2::http::types::IncomingResponse) -> String {
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume()
        && let Ok(stream) = incoming.stream()
    {
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(bytes) => body.extend_from_slice(&bytes),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(wasip2::io::streams::StreamError::LastOperationFailed(error)) => {
                    // The first line: a host may add a backtrace.
                    let why = wasip2::http::types::http_error_code(&error).map_or_else(
                        || {
                            error
                                .to_debug_string()
                                .lines()
                                .next()
                                .unwrap_or("")
                                .to_owned()
                        },
                        |code| format!("{code:?}"),
                    );
                    return format!("{status} {} (then {why})", String::from_utf8_lossy(&body));
                }
            }
        }
    }
    format!("{status} {}", String::from_utf8_lossy(&body))
}

/// Sets a 200 response with no headers, and returns its body and the body's stream.
fn start(response_out: ResponseOutparam) -> Option<(OutgoingBody, OutputStream)> {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().ok()?;
    ResponseOutparam::set(response_out, Ok(response));
    let stream = body.write().ok()?;
    Some((body, stream))
}

fn answer(response_out: ResponseOutparam, text: &str) {
    if let Some((body, stream)) = start(response_out) {
        // blocking-write-and-flush takes 4096 bytes at most a call.
        for chunk in text.as_bytes().chunks(4096) {
            let _ = stream.blocking_write_and_flush(chunk);
        }
        // The stream goes before its body is finished.
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(HttpFaulty);
