//! Rust types and traits generated from `wit/`, the contract with guests.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wasm-gw:wsgi/app",
});
