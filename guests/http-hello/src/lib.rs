//! The hello app as a standard `wasi:http/incoming-handler@0.2` component: it answers
//! `GET /?name=X` with `Hello, X!`, as the WSGI hello does, and knows nothing of wasm-gw.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HttpHello;

impl wasip2::exports::http::incoming_handler::Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let name = target
            .split_once('?')
            .map_or("", |(_, query)| query)
            .split('&')
            .find_map(|pair| pair.strip_prefix("name="))
            .filter(|name| !name.is_empty())
            .unwrap_or("world");
        let body = format!("Hello, {name}!\n");

        let headers = Fields::new();
        let content_type = b"text/plain; charset=utf-8".to_vec();
        // Fields::set fails only for a forbidden or malformed header, which these are not.
        let _ = headers.set("content-type", &[content_type]);
        let _ = headers.set("content-length", &[body.len().to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let Ok(outgoing) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            let _ = stream.blocking_write_and_flush(body.as_bytes());
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

wasip2::http::proxy::export!(HttpHello);
