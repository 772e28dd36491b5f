//! Fast starts: the on-disk code cache and ahead-of-time compilation.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{Server, client, guest};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-gw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn greets(server: &Server) {
    let mut response = client().get(server.url("/?name=cache")).call().unwrap();
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "Hello, cache!\n"
    );
}

#[test]
fn a_second_start_loads_compiled_code_from_the_cache() {
    let cache = scratch_dir("cache");
    let cache_arg = cache.to_str().unwrap();
    let first = Server::start("hello", &["--cache-dir", cache_arg]);
    first.wait_for_log(&["cached compiled code at"]);
    greets(&first);
    drop(first);

    let second = Server::start("hello", &["--cache-dir", cache_arg]);
    second.wait_for_log(&["loaded compiled", "from the cache"]);
    greets(&second);
    drop(second);

    // A damaged entry is ignored and replaced, never trusted.
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"not compiled code").unwrap();
    let third = Server::start("hello", &["--cache-dir", cache_arg]);
    third.wait_for_log(&["ignoring unusable cache entry"]);
    third.wait_for_log(&["cached compiled code at"]);
    greets(&third);
}

#[test]
fn no_cache_compiles_every_time() {
    let server = Server::start("hello", &["--no-cache"]);
    // Said before it starts, with the size and a guess of the time: a big app takes seconds.
    server.wait_for_log(&[
        "compiling",
        "hello.wasm (",
        " MB) for this machine, about ",
        " s",
    ]);
    server.wait_for_log(&["compiled", "hello.wasm in"]);
    greets(&server);
}

#[test]
fn an_app_compiled_ahead_of_time_serves() {
    let dir = scratch_dir("aot");
    // A WSGI app is compiled for an engine without the component model's concurrency, a
    // wasi:http 0.3 one for an engine with it: each loads into the one it was compiled for,
    // the shared engine or an app's own pooled one.
    for app in ["hello", "http_hello_p3"] {
        let compiled = dir.join(format!("{app}.cwasm"));
        let status = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
            .args([
                "compile",
                guest(app).to_str().unwrap(),
                "-o",
                compiled.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        for isolation in ["worker", "request"] {
            let server = Server::start_path(&compiled, &["--no-cache", "--isolation", isolation]);
            greets(&server);
        }
    }
}

#[test]
fn a_wasi_http_0_3_component_is_cached_like_any_other() {
    let cache = scratch_dir("cache-p3");
    let cache_arg = cache.to_str().unwrap();
    let first = Server::start("http_hello_p3", &["--cache-dir", cache_arg]);
    first.wait_for_log(&["cached compiled code at"]);
    greets(&first);
    drop(first);
    // Compiled once: found at the first look, for the engine it needs.
    let second = Server::start("http_hello_p3", &["--cache-dir", cache_arg]);
    second.wait_for_log(&["loaded compiled", "from the cache"]);
    greets(&second);
    assert_eq!(second.log_lines_with("compiling"), 0);
}

#[test]
fn a_cache_others_can_write_is_never_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let cache = scratch_dir("shared-cache");
    let cache_arg = cache.to_str().unwrap();
    drop(Server::start("hello", &["--cache-dir", cache_arg]));
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let server = Server::start("hello", &["--cache-dir", cache_arg]);
    server.wait_for_log(&["ignoring cache entry", "others may write it"]);
    server.wait_for_log(&["cannot write to the code cache", "others may write to it"]);
    greets(&server);
}
