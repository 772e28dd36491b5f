//! The body decoder on arbitrary bytes, fed in pieces of a fuzzer-chosen size: it must never
//! panic, never hand out more data than arrived, and decode the same whatever the pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_gw_fuzz::http::Limits;
use wasm_gw_fuzz::http::body::{BodyDecoder, Decoded};
use wasm_gw_fuzz::http::io::Pace;
use wasm_gw_fuzz::http::request::BodyKind;

const LIMITS: Limits = Limits {
    request_line: 256,
    fields: 8,
    field_bytes: 128,
    unconventional_methods: false,
};

/// The body, or None where the framing was refused or never ended.
fn decode(input: &[u8], piece: usize) -> Option<Vec<u8>> {
    let pace = Pace { patience: std::time::Duration::from_secs(1), min_rate: 1 };
    let mut decoder = BodyDecoder::new(BodyKind::Chunked, LIMITS, Some(1 << 16), pace);
    let mut buffered = Vec::new();
    let mut fed = 0;
    let mut body = Vec::new();
    loop {
        match decoder.decode(&buffered).ok()? {
            Decoded::Data { skip, len } => {
                assert!(len > 0 && skip + len <= buffered.len());
                body.extend_from_slice(&buffered[skip..skip + len]);
                decoder.consume_data(len);
                buffered.drain(..skip + len);
            }
            Decoded::End { skip } => {
                assert!(skip <= buffered.len());
                return Some(body);
            }
            Decoded::NeedMore { skip } => {
                assert_eq!(skip, buffered.len(), "framing must consume all it was given");
                buffered.clear();
                if fed == input.len() {
                    return None;
                }
                let next = (fed + piece).min(input.len());
                buffered.extend_from_slice(&input[fed..next]);
                fed = next;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, input.len().max(1));
    if let Some(body) = &whole {
        assert!(body.len() <= input.len());
    }
    assert_eq!(decode(input, usize::from(piece).max(1)), whole, "pieces of {piece}");
});
