//! Reloading new code while serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{IO_TIMEOUT, Server, client, guest};

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
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed, new_code) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop, served, failed, new_code) = (
                server.clone(),
                stop.clone(),
                served.clone(),
                failed.clone(),
                new_code.clone(),
            );
            thread::spawn(move || {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(server.url("/?name=load")).call() {
                        Ok(response) if response.status() == 200 => {
                            served.fetch_add(1, Ordering::Relaxed);
                            if response.headers().contains_key("x-echo-meta") {
                                new_code.store(true, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    replace(&app, "echo");
    server.signal("HUP");
    server.wait_for_log(&["instances replaced", "reason=\"reload\""]);
    let deadline = Instant::now() + IO_TIMEOUT;
    while !new_code.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the load never saw the new code");
        thread::sleep(Duration::from_millis(10));
    }
    // Keep the load on for as many requests again, across the old pool's last leases.
    let target = served.load(Ordering::Relaxed) * 2 + 100;
    while served.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|thread| thread.join().unwrap());
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(served.load(Ordering::Relaxed) > 100);
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
