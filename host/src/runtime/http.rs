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
    guest::files::add_to_linker(&mut linker, GuestState::output)?;
    guest::config::add_to_linker(&mut linker)?;
    let pre = linker.instantiate_pre(component)?;
    Ok(HttpProxyPre::new(pre)?)
}

/// Links a standard `wasi:http` 0.3 component against WASI 0.3 and `wasi:http@0.3.0`, and
/// WASI 0.2 for what Rust's std imports, with the same sandbox as a WSGI app. Its host
/// functions are async, run on wasmtime-wasi's runtime from the connection's thread.
pub fn link_http3(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<wasmtime_wasi_http::p3::bindings::ServicePre<GuestState>> {
    let mut linker = Linker::<GuestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    guest::config::add_to_linker(&mut linker)?;
    let pre = linker.instantiate_pre(component)?;
    Ok(wasmtime_wasi_http::p3::bindings::ServicePre::new(pre)?)
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
    /// Serves `request` with this worker's `wasi:http` instance, of 0.2 or 0.3.
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
        let handled = match self.instance {
            Instance::Http3(_) => self.handle3(id, &head, &side),
            _ => self.handle(id, &head, &side),
        };
        let (exchange, result) = guest::http::finish(&side, handled);
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
                lock(&answers).answer(response.map_err(|code| format!("{code:?}")));
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

/// The path and query of `target` as a URI holds them, and the part of it that is the app's
/// mount prefix, `mount` bytes of the decoded path.
///
/// The target is the client's, read as Latin-1: an absolute-form target's path and query
/// follow its authority (and a bare query gets a `/`), `*` is `/`, a fragment is no part of
/// a target (RFC 9112 §3.2). Every byte a URI cannot hold as it is, which httparse lets
/// through (`"`, `<`, `>`, bytes above 0x7F), is percent-encoded: the component sees the
/// bytes the client sent, in a form `http::Uri` takes. The prefix is cut from the target as
/// sent, so that the path starts with it even when the client percent-encoded some of it.
fn uri_target(target: &str, mount: usize) -> (String, String) {
    let origin = match target.find("://") {
        Some(at) if !target.starts_with('/') => {
            let rest = &target[at + 3..];
            rest.find(['/', '?', '#'])
                .map_or("", |start| &rest[start..])
        }
        _ if target.starts_with('/') => target,
        _ => "",
    };
    let origin = origin.split('#').next().unwrap_or("");
    let mut path_and_query = String::with_capacity(origin.len() + 1);
    if !origin.starts_with('/') {
        path_and_query.push('/');
    }
    // The raw characters that decode to the mount's bytes.
    let mut decoded = 0;
    let mut raw_prefix = 0;
    let bytes = origin.as_bytes();
    while decoded < mount && raw_prefix < origin.len() {
        let escape = bytes[raw_prefix] == b'%'
            && bytes.get(raw_prefix + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(raw_prefix + 2).is_some_and(u8::is_ascii_hexdigit);
        raw_prefix += if escape { 3 } else { 1 };
        decoded += 1;
    }
    let raw_prefix = origin.get(..raw_prefix).unwrap_or("");
    let mut script_name = String::with_capacity(raw_prefix.len());
    uri_safe(raw_prefix, &mut script_name);
    uri_safe(origin, &mut path_and_query);
    (path_and_query, script_name)
}

/// Appends `raw` (Latin-1 characters, one byte each) to `out`, with every byte a URI cannot
/// hold as it is percent-encoded.
fn uri_safe(raw: &str, out: &mut String) {
    for c in raw.chars() {
        let plain = c.is_ascii_graphic()
            && !matches!(c, '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}');
        if plain {
            out.push(c);
        } else {
            let byte = u8::try_from(u32::from(c)).unwrap_or(b'?');
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

impl WasmWorker {
    /// Calls the guest's 0.3 handler and writes its response through `side` as the guest's
    /// tasks produce it, all within the app's time.
    fn handle3(&mut self, id: u64, head: &RequestHead, side: &SharedSide) -> Result<(), Failure> {
        let Instance::Http3(service) = &self.instance else {
            unreachable!("only a wasi:http 0.3 instance is served so");
        };
        let (_, request) = incoming(head, side.clone())?;
        let data = self.store.data_mut();
        data.begin_http(id, side.clone());
        let http = data.http();
        let (request, request_io) = wasmtime_wasi_http::p3::Request::from_http(http.hooks, request);
        let request = http
            .table
            .push(request)
            .map_err(|error| Failure::Application(format!("{error:#}")))?;
        let client = self.store.data().client_time();
        let used = self.store.data_mut().enter_guest();
        let left = self.app.policy.timeout.saturating_sub(used);
        self.store.set_epoch_deadline(ticks(left));
        let store = &mut self.store;
        let ran = wasmtime_wasi::runtime::in_tokio(guest::wait::within(
            left,
            &client,
            store.run_concurrent(async |accessor| -> wasmtime::Result<()> {
                let answered = service
                    .wasi_http_handler()
                    .call_handle(accessor, request)
                    .await?;
                let response = match answered {
                    Ok(response) => accessor.with(|mut store| {
                        let response = store.get().http().table.delete(response)?;
                        response.into_http(&mut store, request_io)
                    })?,
                    Err(code) => {
                        lock(side).answer(Err(format!("{code:?}")));
                        return Ok(());
                    }
                };
                lock(side).answer(Ok(response));
                // The body, as the guest's tasks write it: they run while this waits.
                std::future::poll_fn(|cx| guest::http::poll_pump(side, cx)).await;
                guest::http::end_response(side);
                // Tasks that go on after the response (the handler's own, after it returned,
                // and any it spawned) end within this request's time, never in the next's.
                std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                Ok(())
            }),
        ));
        self.store.data_mut().leave_guest();
        self.store.data_mut().flush_logs();
        match ran {
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(error)) | Err(error)) => Err(self.failure(error)),
            // The instance stopped mid-call: it is not used again.
            None => {
                self.retiring = Some("timeout");
                Err(Failure::Timeout(self.app.policy.timeout))
            }
        }
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
        .and_then(|(_, value)| http::uri::Authority::try_from(&*value).ok())
        .map_or_else(
            || match head.server_name.contains(':') {
                true => format!("[{}]:{}", head.server_name, head.server_port),
                false => format!("{}:{}", head.server_name, head.server_port),
            },
            |authority| authority.as_str().to_owned(),
        );
    let (path_and_query, script_name) = uri_target(&head.target, head.mount);
    let mut builder = http::Request::builder()
        .method(head.method.as_str())
        .uri(format!("{}://{authority}{path_and_query}", head.scheme));
    // The component sees the full path, as under Spin and `wasmtime serve`; where it is
    // mounted, and whom it serves, it learns from headers of ours, which no client can send
    // in its place.
    for (name, value) in head.headers.iter() {
        if !is_ours(name) {
            builder = builder.header(name, &*value);
        }
    }
    builder = builder
        .header(SCRIPT_NAME_HEADER, script_name)
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

#[cfg(test)]
mod tests {
    use super::uri_target;

    #[test]
    fn targets_become_uri_paths_the_component_can_trust() {
        let cases = [
            // (target, mount, path and query, script name)
            ("/api/v1/items?page=2", 7, "/api/v1/items?page=2", "/api/v1"),
            ("/%61pi/v1/x", 7, "/%61pi/v1/x", "/%61pi/v1"),
            ("http://h.test/a?b=c", 0, "/a?b=c", ""),
            ("http://h.test?r=/admin", 0, "/?r=/admin", ""),
            ("http://h.test", 0, "/", ""),
            ("*", 0, "/", ""),
            ("/frag#ment", 0, "/frag", ""),
            ("/?q=<x>&s=\"y\"", 0, "/?q=%3Cx%3E&s=%22y%22", ""),
            // Latin-1 characters stand for the bytes the client sent.
            ("/caf\u{e9}", 0, "/caf%E9", ""),
        ];
        for (target, mount, path, script_name) in cases {
            let (got_path, got_script) = uri_target(target, mount);
            assert_eq!(
                (got_path.as_str(), got_script.as_str()),
                (path, script_name),
                "{target}"
            );
            assert!(
                got_path.parse::<http::uri::PathAndQuery>().is_ok(),
                "{got_path}"
            );
        }
    }
}
