//! Rust types and traits generated from `wit/`, the contract with guests.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wasm-gw:wsgi/app",
    with: {
        "wasi:keyvalue/store.bucket": crate::kv::guest::Bucket,
        "wasi:keyvalue/atomics.cas": crate::kv::guest::Cas,
    },
});
