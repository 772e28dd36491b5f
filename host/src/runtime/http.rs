//! The standard `wasi:http` 0.2 world: a component that exports
//! `wasi:http/incoming-handler`, served through wasmtime-wasi-http's implementation of the
//! interfaces, behind wasm-gw's own parser, limits and response writer.
//!
//! How a request crosses: it doesn't. The guest runs on the connection's thread, as a WSGI
//! app does. Its request body is read from the client as it reads it, and its response goes
//! out through the same [`Exchange`](crate::http::Exchange) as a WSGI app's, whenever it
//! would wait and when its handler returns (see [`crate::guest::http`]). An earlier version
//! ran each worker's instance on a thread of its own and crossed over channels: measured on
//! keep-alive hello, 40% of the server's CPU went to switching between the two threads.

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme as HttpScheme;
use wasmtime_wasi_http::p2::bindings::sync::ProxyPre as HttpProxyPre;

use super::{Instance, WasmWorker, ticks};
use crate::app::{Failure, Request};
use crate::environ::RequestHead;
use crate::guest::http::{ConnectionSide, SharedSide, StreamedBody, lock};
use crate::guest::{self, GuestState};

/// Links a standard `wasi:http` 0.2 component against WASI 0.2 and `wasi:http`, with the
/// same sandbox as a WSGI app: waits bounded by the deadline, no files unless granted, no
/// outbound requests.
pub fn link_http(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<HttpProxyPre<GuestState>> {
    let mut linker = Linker::<GuestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    guest::wait::add_to_linker(&mut linker, GuestState::waits)?;
    guest::wait::add_streams_to_linker(&mut linker, GuestState::waits)?;
    guest::files::add_to_linker(&mut linker, GuestState::output)?;
    let pre = linker.instantiate_pre(component)?;
    Ok(HttpProxyPre::new(pre)?)
}

/// The header that tells a `wasi:http` component its mount prefix, WSGI's SCRIPT_NAME: `""`
/// at the root, else a prefix such as `/api` that its request's path starts with.
const SCRIPT_NAME_HEADER: &str = "wasm-gw-script-name";
/// The header that tells a `wasi:http` component the client's address, WSGI's REMOTE_ADDR:
/// the peer's, or the one a trusted proxy names; empty for a Unix-socket peer.
const REMOTE_ADDR_HEADER: &str = "wasm-gw-remote-addr";

/// Whether a client's header `name` is one of the headers wasm-gw sets: those are dropped,
/// so a component can believe them.
fn is_ours(name: &str) -> bool {
    name.len() > 8 && name.as_bytes()[..8].eq_ignore_ascii_case(b"wasm-gw-")
}

impl WasmWorker {
    /// Serves `request` with this worker's `wasi:http` instance.
    pub(super) fn call_http(&mut self, request: Request) -> (Request, Result<(), Failure>) {
        // A spent instance is replaced when next needed, as for a WSGI worker.
        if let Some(reason) = self.retiring
            && let Err(error) = self.replace_instance(request.id, reason)
        {
            return (request, Err(Failure::Unavailable(error)));
        }
        let Request { id, head, exchange } = request;
        let client = self.store.data().client_time();
        let side = ConnectionSide::new(exchange, self.app.policy.stream_timeout, client);
        let handled = self.handle(id, &head, &side);
        let (exchange, result) = lock(&side).finish(handled);
        self.store.data_mut().end_http();
        self.after_request(&result);
        (Request { id, head, exchange }, result)
    }

    /// Calls the guest's handler, which answers through `side`.
    fn handle(&mut self, id: u64, head: &RequestHead, side: &SharedSide) -> Result<(), Failure> {
        let Instance::Http(proxy) = &self.instance else {
            unreachable!("only a wasi:http instance is served so");
        };
        let (scheme, request) = incoming(head, side.clone())?;
        let data = self.store.data_mut();
        data.begin_http(id, side.clone());
        let incoming = data
            .http()
            .new_incoming_request(scheme, request)
            .map_err(|error| Failure::Application(format!("{error:#}")))?;
        let answers = side.clone();
        let outparam = data
            .http()
            .new_response_outparam_from_callback(move |response| {
                lock(&answers).answer(response);
            })
            .map_err(|error| Failure::Application(format!("{error:#}")))?;
        let used = self.store.data_mut().enter_guest();
        let left = self.app.policy.timeout.saturating_sub(used);
        self.store.set_epoch_deadline(ticks(left));
        let called =
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut self.store, incoming, outparam);
        self.store.data_mut().leave_guest();
        self.store.data_mut().flush_logs();
        called.map_err(|error| self.failure(error))
    }
}

/// The request as `wasi:http` shows it: the method, an absolute URI with the path and query
/// as the client sent them, the headers, and a body read from the client as the guest asks.
fn incoming(
    head: &RequestHead,
    side: SharedSide,
) -> Result<(HttpScheme, http::Request<StreamedBody>), Failure> {
    // The Host the client sent, if it is a valid authority; else the address the request
    // arrived on (an HTTP/1.0 request may have none).
    let authority = head
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .and_then(|(_, value)| http::uri::Authority::try_from(value).ok())
        .map_or_else(
            || match head.server_name.contains(':') {
                true => format!("[{}]:{}", head.server_name, head.server_port),
                false => format!("{}:{}", head.server_name, head.server_port),
            },
            |authority| authority.as_str().to_owned(),
        );
    // The target's path and query as the client sent them; an absolute-form target's,
    // after its scheme and authority; `*` as `/`.
    let target = match head.target.find("://") {
        Some(at) if !head.target.starts_with('/') => {
            let rest = &head.target[at + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        _ if head.target.starts_with('/') => head.target.as_str(),
        _ => "/",
    };
    // A fragment is no part of a target (RFC 9112 §3.2); one sent anyway is dropped.
    let target = target.split('#').next().unwrap_or("/");
    let mut builder = http::Request::builder()
        .method(head.method.as_str())
        .uri(format!("{}://{authority}{target}", head.scheme));
    // The component sees the full path, as under Spin and `wasmtime serve`; where it is
    // mounted, and whom it serves, it learns from headers of ours, which no client can send
    // in its place.
    for (name, value) in head.headers.iter() {
        if !is_ours(name) {
            builder = builder.header(name, value);
        }
    }
    builder = builder
        .header(SCRIPT_NAME_HEADER, &head.path[..head.mount])
        .header(REMOTE_ADDR_HEADER, head.remote_addr.as_str());
    let request = builder
        .body(StreamedBody::new(side))
        .map_err(|error| Failure::Application(format!("cannot pass the request on: {error}")))?;
    let scheme = match head.scheme.as_str() {
        "https" => HttpScheme::Https,
        _ => HttpScheme::Http,
    };
    Ok((scheme, request))
}
