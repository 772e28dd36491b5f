//! The hello app as a standard `wasi:http/service@0.3.0` component, which knows nothing of
//! wasm-gw: `GET /?name=X` answers `Hello, X!` as the WSGI hello does, and `/stream?n=N`
//! answers N lines, each written to the body stream on its own after the response is
//! returned, as a 0.3 handler streams. `/echo` answers with the request's own body,
//! `/fetch?url=U` GETs U through the 0.3 client, and `/loop` spins, for the deadline tests.

wit_bindgen::generate!({
    path: "wit",
    world: "hello",
    generate_all,
});

use exports::wasi::http::handler::Guest;
use wasi::http::types::{ErrorCode, Fields, Request, Response};

struct HttpHelloP3;

impl Guest for HttpHelloP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let target = request.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .filter(|value| !value.is_empty())
        };
        if path == "/echo" {
            // The request's own body, handed back as the response's.
            let (_, processed) = wit_future::new(|| Ok(()));
            let (body, trailers) = Request::consume_body(request, processed);
            let (response, _sent) = Response::new(Fields::new(), Some(body), trailers);
            return Ok(response);
        }
        if path == "/fetch" {
            // GET ?url=http://host:port/path through the 0.3 client: `STATUS BODY` or the
            // error code.
            let url = query.strip_prefix("url=").unwrap_or("");
            return Ok(text_response(fetch(url).await));
        }
        if path == "/loop" {
            // Spins, for the deadline's sake.
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        let chunks: Vec<Vec<u8>> = if path == "/stream" {
            let lines: u32 = param("n").and_then(|n| n.parse().ok()).unwrap_or(3);
            (1..=lines)
                .map(|n| format!("line {n}\n").into_bytes())
                .collect()
        } else {
            vec![format!("Hello, {}!\n", param("name").unwrap_or("world")).into_bytes()]
        };
        let mut entries = vec![(
            "content-type".to_owned(),
            b"text/plain; charset=utf-8".to_vec(),
        )];
        if path != "/stream" {
            let length: usize = chunks.iter().map(Vec::len).sum();
            entries.push(("content-length".to_owned(), length.to_string().into_bytes()));
        }
        let headers = Fields::from_list(&entries).map_err(|_| ErrorCode::InternalError(None))?;
        let (mut contents, reader) = wit_stream::new::<u8>();
        let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(reader), trailers_reader);
        // The body is written after the response is returned: the handler's task goes on.
        wit_bindgen::spawn_local(async move {
            for chunk in chunks {
                if !contents.write_all(chunk).await.is_empty() {
                    return;
                }
            }
            drop(contents);
            let _ = trailers.write(Ok(None)).await;
        });
        Ok(response)
    }
}

/// What a GET of `url` got through `wasi:http/client`.
async fn fetch(url: &str) -> String {
    use wasi::http::client;
    use wasi::http::types::{Method, Scheme};
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, trailers, None);
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&match scheme {
        "https" => Scheme::Https,
        _ => Scheme::Http,
    }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match client::send(request).await {
        Ok(response) => {
            let status = response.get_status_code();
            let (_, processed) = wit_future::new(|| Ok(()));
            let (body, _trailers) = Response::consume_body(response, processed);
            let bytes = body.collect().await;
            format!("{status} {}", String::from_utf8_lossy(&bytes))
        }
        Err(code) => format!("{code:?}"),
    }
}

/// A 200 with `text` as its whole body.
fn text_response(text: String) -> Response {
    let (mut contents, reader) = wit_stream::new::<u8>();
    let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(reader), trailers_reader);
    wit_bindgen::spawn_local(async move {
        contents.write_all(text.into_bytes()).await;
        drop(contents);
        let _ = trailers.write(Ok(None)).await;
    });
    response
}

export!(HttpHelloP3);
