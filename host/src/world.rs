//! Which world a component is built for, told by the handler it exports: wasm-gw's WSGI
//! world, or the standard `wasi:http` one that components for `wasmtime serve`, Spin and
//! wasmCloud export.

use wasmtime::Engine;
use wasmtime::component::Component;

/// The export wasm-gw calls in a WSGI-world app.
pub const WSGI_HANDLER: &str = "wasm-gw:wsgi/handler@0.3.";
/// The contract this wasm-gw serves, as an app's build names it.
pub const WSGI_CONTRACT: &str = "wasm-gw:wsgi@0.3.0";
/// Any version's WSGI handler: one of another version is named, and refused.
const ANY_WSGI_HANDLER: &str = "wasm-gw:wsgi/handler@";
/// WASI 0.2's HTTP handler (`wasi:http/proxy`'s export).
const HTTP_HANDLER_0_2: &str = "wasi:http/incoming-handler@0.2.";
/// WASI 0.3's HTTP handler, release candidates included.
const HTTP_HANDLER_0_3: &str = "wasi:http/handler@0.3.";

/// A component's world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum World {
    /// wasm-gw's own: `application(environ)` through `wasm-gw:wsgi/handler`.
    Wsgi,
    /// wasm-gw's own, of a version this wasm-gw does not serve; the version.
    OtherWsgi(String),
    /// Standard `wasi:http` of WASI 0.2; the export's full name.
    WasiHttp02(String),
    /// Standard `wasi:http` of WASI 0.3; the export's full name.
    WasiHttp03(String),
}

impl World {
    /// The world whose handler `component` exports, if any; the WSGI world's, if it
    /// exports more than one.
    pub fn of(engine: &Engine, component: &Component) -> Option<World> {
        let kind = component.component_type();
        let exports: Vec<_> = kind.exports(engine).collect();
        if exports
            .iter()
            .any(|(name, _)| name.starts_with(WSGI_HANDLER))
        {
            return Some(World::Wsgi);
        }
        exports.iter().find_map(|(name, _)| {
            if let Some(version) = name.strip_prefix(ANY_WSGI_HANDLER) {
                Some(World::OtherWsgi(version.to_owned()))
            } else if name.starts_with(HTTP_HANDLER_0_2) {
                Some(World::WasiHttp02((*name).to_owned()))
            } else if name.starts_with(HTTP_HANDLER_0_3) {
                Some(World::WasiHttp03((*name).to_owned()))
            } else {
                None
            }
        })
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            World::Wsgi => f.write_str("the wasm-gw WSGI world"),
            World::OtherWsgi(version) => write!(f, "the wasm-gw WSGI world {version}"),
            World::WasiHttp02(export) => write!(f, "standard wasi:http 0.2 (it exports {export})"),
            World::WasiHttp03(export) => write!(f, "standard wasi:http 0.3 (it exports {export})"),
        }
    }
}

impl World {
    /// Why a component of this world cannot be served, if it cannot: an app built for
    /// another version of wasm-gw's contract, with how to rebuild it.
    pub fn refusal(&self) -> Option<String> {
        let World::OtherWsgi(version) = self else {
            return None;
        };
        Some(format!(
            "it was built for wasm-gw:wsgi@{version}, and this wasm-gw serves {WSGI_CONTRACT}, \
             where `application` takes the environ as its argument. Rebuild it against this \
             wasm-gw: a Rust app with this wasm-gw's SDK (in a crate `wasm-gw new` made, \
             replace vendor/wasm-gw-sdk and wit/ with those of a crate a new `wasm-gw new` \
             makes), then `cargo build --release`; a Python app with this wasm-gw's \
             `build-python`"
        ))
    }
}
