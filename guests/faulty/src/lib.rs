//! Routes that each do one wrong thing, for the host's fault tests: `/trap`, `/panic`,
//! `/no-start`, `/double-start`, `/bad-header`, `/hop-header`, `/wrong-length`,
//! `/short-write`, `/long-write`, `/loop` and `/alloc`; anything else answers 200 `ok`. It implements the WSGI
//! contract directly, without the SDK's `App`, because several faults are ones the SDK
//! prevents.

use wasm_gw_sdk::bindings::exports::wasm_gw::wsgi::handler::{Body, Guest};
use wasm_gw_sdk::bindings::wasm_gw::wsgi::request::InputStream;
use wasm_gw_sdk::{Environ, start_response, write};

struct Faulty;

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn ok_body(text: &str) -> Result<Body, String> {
    Ok(Body::Chunks(vec![text.as_bytes().to_vec()]))
}

impl Guest for Faulty {
    type BodyStream = wasm_gw_sdk::StreamState;

    fn application(environ: Environ, _input: InputStream) -> Result<Body, String> {
        let plain = headers(&[("Content-Type", "text/plain")]);
        match environ.path_info.as_str() {
            // The last byte of the 4 GiB address space is past any memory the sandbox allows.
            "/trap" => {
                let byte = unsafe { std::ptr::read_volatile(u32::MAX as usize as *const u8) };
                ok_body(&byte.to_string())
            }
            "/panic" => panic!("faulty guest panics on purpose"),
            // Returns a body without ever calling start-response.
            "/no-start" => ok_body("no status\n"),
            "/double-start" => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                // A second call without exc-info is refused; the app ignores that.
                let _ = start_response("201 Created", &plain, None);
                ok_body("started twice\n")
            }
            "/bad-header" => {
                let _ = start_response(
                    "200 OK",
                    &headers(&[("X-Injected", "a\r\nSet-Cookie: x=1")]),
                    None,
                );
                ok_body("bad header\n")
            }
            "/hop-header" => {
                let _ = start_response("200 OK", &headers(&[("Connection", "close")]), None);
                ok_body("hop header\n")
            }
            // Declares 10 bytes, returns 5 whole: caught before anything is sent.
            "/wrong-length" => {
                start_response("200 OK", &headers(&[("Content-Length", "10")]), None)
                    .map_err(|e| format!("{e:?}"))?;
                ok_body("12345")
            }
            // Declares 10 bytes, writes 5: the client gets 5 and a closed connection.
            "/short-write" => {
                start_response("200 OK", &headers(&[("Content-Length", "10")]), None)
                    .map_err(|e| format!("{e:?}"))?;
                let _ = write(b"12345");
                Ok(Body::Chunks(Vec::new()))
            }
            // Declares 3 bytes, writes 10: the client gets 3 and a closed connection.
            "/long-write" => {
                start_response("200 OK", &headers(&[("Content-Length", "3")]), None)
                    .map_err(|e| format!("{e:?}"))?;
                let _ = write(b"1234567890");
                Ok(Body::Chunks(Vec::new()))
            }
            "/loop" => {
                let mut spins: u64 = 0;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("ok")
            }
        }
    }
}

wasm_gw_sdk::bindings::export!(Faulty with_types_in wasm_gw_sdk::bindings);
