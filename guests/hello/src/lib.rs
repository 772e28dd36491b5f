//! `GET /?name=WSGI` answers `Hello, WSGI!`.

use wasm_gw_sdk::{App, Request, Response, Result};

#[derive(Default)]
struct Hello;

impl App for Hello {
    fn handle(&mut self, request: Request) -> Result<Response> {
        let name = request
            .query_param("name")
            .unwrap_or_else(|| "world".into());
        Ok(Response::text(200, format!("Hello, {name}!\n")))
    }
}

wasm_gw_sdk::export_app!(Hello);
