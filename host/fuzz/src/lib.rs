//! The host's HTTP layer, compiled alone: it knows nothing of Wasm, so fuzzing it does not
//! need the runtime.

#[path = "../../src/http/mod.rs"]
pub mod http;

#[path = "../../src/decimal.rs"]
pub mod decimal;
