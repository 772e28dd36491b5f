//! Rust types and traits generated from `wit/`, the contract with guests.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wasm-gw:wsgi/app",
    // Asked for outside a request, the environ is the guest's mistake: a trap.
    imports: {
        "wasm-gw:wsgi/request.full-environ": trappable,
        "wasm-gw:wsgi/request.request-method": trappable,
        "wasm-gw:wsgi/request.script-name": trappable,
        "wasm-gw:wsgi/request.path-info": trappable,
        "wasm-gw:wsgi/request.query-string": trappable,
    },
    with: {
        "wasi:keyvalue/store.bucket": crate::kv::guest::Bucket,
        "wasi:keyvalue/atomics.cas": crate::kv::guest::Cas,
    },
});
