//! `wasm-gw check`: whether a component fits the app world, in words a guest author can act on.

use std::fmt::Write as _;
use std::path::Path;

use crate::compile::{self, load_component};
use crate::runtime::{link, link_http, link_http3};

/// Interfaces wasm-gw gives every app, by name prefix: WASI 0.2, key-value and the wsgi
/// imports.
const PROVIDED: [&str; 15] = [
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:keyvalue/store@0.2.0-draft2",
    "wasi:keyvalue/atomics@0.2.0-draft2",
    "wasi:keyvalue/batch@0.2.0-draft2",
    "wasi:config/store@0.2.0-draft-2024-09-27",
    "wasi:config/store@0.2.0-rc.1",
    "wasi:http/types@0.2.",
    "wasi:http/outgoing-handler@0.2.",
    "wasm-gw:wsgi/request@0.3.",
    "wasm-gw:wsgi/response@0.3.",
];

/// What wasm-gw gives a `wasi:http` 0.2 app beside WASI: the HTTP types, and an outgoing
/// handler that denies every request.
const PROVIDED_TO_HTTP_APPS: &str = "wasi:http/";

use crate::world::{WSGI_HANDLER as HANDLER, World};

/// Checks the component at `path`. Returns the report, and whether the component fits.
pub fn check(path: &Path) -> anyhow::Result<(String, bool)> {
    let loaded = load_component(&compile::engine, path, None)?;
    let component = loaded.component;
    let engine = component.engine().clone();
    let kind = component.component_type();
    let mut report = String::new();
    if let Some(files) = &loaded.files {
        writeln!(
            report,
            "files: {} packed, granted to the app read-only when served",
            crate::compile::megabytes(files.len())
        )?;
    }
    let world = World::of(&engine, &component);
    match &world {
        Some(World::Wsgi) => writeln!(report, "world: {}", World::Wsgi)?,
        Some(world) => writeln!(report, "world: {world}")?,
        None => writeln!(report, "world: none that wasm-gw knows (no handler export)")?,
    }

    writeln!(report, "imports (what the app needs):")?;
    for (name, _) in kind.imports(&engine) {
        let http_app = matches!(world, Some(World::WasiHttp02(_) | World::WasiHttp03(_)));
        // A 0.3 component gets WASI 0.3 beside the 0.2 that Rust's std imports.
        let version_served = is_v0_2_or_wsgi(name)
            || (matches!(world, Some(World::WasiHttp03(_))) && name.contains("@0.3."));
        // A wasi:http app gets WASI and wasi:http; a WSGI app WASI, key-value and the
        // wsgi interfaces.
        let provided = if http_app {
            (name.starts_with("wasi:") && !name.starts_with("wasi:keyvalue/"))
                && PROVIDED
                    .iter()
                    .chain([&PROVIDED_TO_HTTP_APPS])
                    .any(|prefix| name.starts_with(prefix))
        } else {
            PROVIDED.iter().any(|prefix| name.starts_with(prefix))
        } && version_served;
        let note = if provided {
            "provided"
        } else {
            "NOT PROVIDED: wasm-gw has no such interface"
        };
        writeln!(report, "  {name:<48} {note}")?;
    }
    writeln!(report, "exports (what the app offers):")?;
    let mut has_handler = false;
    for (name, _) in kind.exports(&engine) {
        let note = if name.starts_with(HANDLER)
            || name.starts_with("wasi:http/incoming-handler@0.2.")
            || name.starts_with("wasi:http/handler@0.3.")
        {
            has_handler = true;
            "the app's entry point"
        } else {
            "not used by wasm-gw"
        };
        writeln!(report, "  {name:<48} {note}")?;
    }
    if !has_handler && world.is_none() {
        writeln!(
            report,
            "  (missing) {HANDLER}0 — export it, for example with the SDK's export_app!"
        )?;
    }

    if let Some(why) = world.as_ref().and_then(World::refusal) {
        writeln!(report, "{}: cannot be served: {why}", path.display())?;
        return Ok((report, false));
    }
    let linked = match &world {
        Some(World::WasiHttp02(_)) => link_http(&engine, &component).map(drop),
        Some(World::WasiHttp03(_)) => link_http3(&engine, &component).map(drop),
        _ => link(&engine, &component).map(drop),
    };
    let fits = match linked {
        Ok(()) => {
            writeln!(report, "{}: fits the wasm-gw app world", path.display())?;
            true
        }
        Err(error) => {
            writeln!(
                report,
                "{}: does not fit the wasm-gw app world: {error:#}",
                path.display()
            )?;
            false
        }
    };
    Ok((report, fits))
}

/// WASI interfaces are provided at 0.2.x; the wsgi ones carry their own version in the prefix.
fn is_v0_2_or_wsgi(name: &str) -> bool {
    name.starts_with("wasm-gw:") || name.contains("@0.2.")
}
