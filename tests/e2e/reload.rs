//! Reloading new code while serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::support::{Load, Server, client, guest};

/// A copy of guest `name` at a path of the test's own, so that it can be replaced.
fn app_copy(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-gw-reload-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app.wasm");
    std::fs::copy(guest(name), &app).unwrap();
    app
}

/// Replaces `app` with guest `name` in one rename, as a deploy would.
fn replace(app: &Path, name: &str) {
    let staged = app.with_extension("staged");
    std::fs::copy(guest(name), &staged).unwrap();
    std::fs::rename(&staged, app).unwrap();
}

/// Whether the server now runs the echo guest rather than hello.
fn runs_echo(server: &Server) -> bool {
    let response = client().get(server.url("/")).call().unwrap();
    response.headers().contains_key("x-echo-meta")
}

#[test]
fn a_reload_under_load_loses_no_request() {
    let app = app_copy("load", "hello");
    let server = Arc::new(Server::start_path(&app, &["--workers", "2"]));
    let load = Load::start(&server, &["/?name=load"; 4]);
    replace(&app, "echo");
    server.signal("HUP");
    server.wait_for_log(&["instances replaced", "reason=\"reload\""]);
    load.run_past_the_swap_to_echo();
    let (served, failed) = load.stop();
    assert_eq!(failed, 0, "requests failed during the reload");
    assert!(served > 100);
}

#[test]
fn a_reload_swaps_a_wsgi_app_and_a_wasi_http_component_under_load() {
    let site = app_copy("worlds-site", "hello");
    let api = site.with_file_name("api.wasm");
    std::fs::copy(guest("http_hello"), &api).unwrap();
    let config = site.with_file_name("wasm-gw.toml");
    std::fs::write(
        &config,
        format!(
            "[[app]]\nname = \"site\"\ncomponent = \"{}\"\nroute = \"/\"\n\n\
             [[app]]\nname = \"api\"\ncomponent = \"{}\"\nroute = \"/api\"\n",
            site.display(),
            api.display()
        ),
    )
    .unwrap();
    let server = Arc::new(Server::start_mounts(&[
        "--config",
        config.to_str().unwrap(),
        "--workers",
        "2",
    ]));
    let load = Load::start(
        &server,
        &[
            "/?name=load",
            "/api/?name=load",
            "/?name=load",
            "/api/?name=load",
        ],
    );
    replace(&site, "echo");
    replace(&api, "http_echo");
    server.signal("HUP");
    server.wait_for_log(&["instances replaced: new requests get the new apps"]);
    load.run_past_the_swap_to_echo();
    let (served, failed) = load.stop();
    assert_eq!(failed, 0, "requests failed during the reload");
    assert!(served > 100);
    // Both apps now run their new code.
    for path in ["/x", "/api/x"] {
        let response = client().get(server.url(path)).call().unwrap();
        assert!(response.headers().contains_key("x-echo-meta"), "{path}");
    }
}

#[test]
fn a_failed_reload_keeps_the_old_version_serving() {
    let app = app_copy("broken", "hello");
    let server = Server::start_path(&app, &[]);
    std::fs::write(app.with_extension("staged"), b"not a component").unwrap();
    std::fs::rename(app.with_extension("staged"), &app).unwrap();
    server.signal("HUP");
    server.wait_for_log(&[
        "reload failed, the old apps keep serving",
        "not a WebAssembly file",
    ]);
    let mut response = client().get(server.url("/?name=still")).call().unwrap();
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "Hello, still!\n"
    );
}

#[test]
fn reload_flag_follows_the_file() {
    let app = app_copy("watch", "hello");
    let server = Server::start_path(&app, &["--reload"]);
    assert!(!runs_echo(&server));
    replace(&app, "echo");
    server.wait_for_log(&["reloading", "app.wasm (the file changed)"]);
    server.wait_for_log(&["instances replaced", "reason=\"reload\""]);
    assert!(runs_echo(&server));
}
