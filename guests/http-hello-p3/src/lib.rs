//! The hello app as a standard `wasi:http/service@0.3.0` component, which knows nothing of
//! wasm-gw: `GET /?name=X` answers `Hello, X!` as the WSGI hello does, and `/stream?n=N`
//! answers N lines, each written to the body stream on its own after the response is
//! returned, as a 0.3 handler streams. `/echo` answers with the request's own body, and
//! `/loop` spins, for the deadline tests.

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

export!(HttpHelloP3);
