//! Several apps on one server, mounted at path prefixes: routing on whole segments, and
//! WSGI's SCRIPT_NAME and PATH_INFO split.

use std::process::Command;

use base64::Engine;
use serde_json::Value;

use crate::support::{RawResponse, Server, client, guest};

/// What the echo app saw: (SCRIPT_NAME, PATH_INFO, QUERY_STRING).
fn seen(response: &RawResponse) -> (String, String, String) {
    assert_eq!(response.status, 200, "{}", response.text());
    let meta = base64::engine::general_purpose::STANDARD
        .decode(response.header("x-echo-meta").unwrap())
        .unwrap();
    let meta: Value = serde_json::from_slice(&meta).unwrap();
    let environ = &meta["environ"];
    let field = |key: &str| environ[key].as_str().unwrap().to_owned();
    (
        field("SCRIPT_NAME"),
        field("PATH_INFO"),
        field("QUERY_STRING"),
    )
}

fn request(server: &Server, target: &str) -> RawResponse {
    server.raw(format!("GET {target} HTTP/1.1\r\nHost: a\r\nX-Echo-Environ: 1\r\n\r\n").as_bytes())
}

#[test]
fn nested_prefixes_split_script_name_and_path_info() {
    let echo = guest("echo");
    let echo = echo.to_str().unwrap();
    let server = Server::start_path(
        &guest("echo"),
        &[
            "--mount",
            &format!("/api={echo}"),
            "--mount",
            &format!("/api/v2/={echo}"),
            "--kv",
            "memory",
        ],
    );
    let cases = [
        ("/", ("", "/", "")),
        ("/x/y", ("", "/x/y", "")),
        ("/apix", ("", "/apix", "")),
        ("/api", ("/api", "", "")),
        ("/api/", ("/api", "/", "")),
        ("/api/tasks/1?done=1", ("/api", "/tasks/1", "done=1")),
        ("/api/v20", ("/api", "/v20", "")),
        ("/api/v2", ("/api/v2", "", "")),
        ("/api/v2/tasks", ("/api/v2", "/tasks", "")),
    ];
    for (target, (script_name, path_info, query)) in cases {
        let seen = seen(&request(&server, target));
        assert_eq!(
            seen,
            (script_name.into(), path_info.into(), query.into()),
            "{target}"
        );
    }
}

#[test]
fn different_apps_side_by_side_and_404_where_none_is_mounted() {
    let hello = guest("hello");
    let tasks = guest("tasks");
    let server = Server::start_path(
        &guest("echo"),
        &[
            "--mount",
            &format!("/hello={}", hello.display()),
            "--mount",
            &format!("/api={}", tasks.display()),
            "--kv",
            "memory",
        ],
    );
    let http = client();
    let mut greeting = http.get(server.url("/hello/?name=mounts")).call().unwrap();
    assert_eq!(
        greeting.body_mut().read_to_string().unwrap(),
        "Hello, mounts!\n"
    );
    let created = http
        .post(server.url("/api/tasks"))
        .send(r#"{"title": "mounted"}"#)
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/api/tasks/1");
    assert_eq!(
        http.get(server.url("/api/tasks/1"))
            .call()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(seen(&request(&server, "/tasks")).1, "/tasks");
    server.wait_for_log(&["mounted", "at /api"]);

    // Without a root app, what no prefix covers is the host's 404.
    let only_api = Server::start_mounts(&[
        "--mount",
        &format!("/api={}", tasks.display()),
        "--kv",
        "memory",
    ]);
    let missing = only_api.raw(b"GET /elsewhere HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("no app is mounted"));
    assert_eq!(
        http.get(only_api.url("/apix")).call().unwrap().status(),
        404,
        "prefixes match whole segments"
    );
    assert_eq!(
        http.get(only_api.url("/api/tasks"))
            .call()
            .unwrap()
            .status(),
        200
    );
    only_api.wait_for_log(&["\"GET /elsewhere HTTP/1.1\" 404"]);
}

#[test]
fn two_apps_at_one_prefix_are_an_error() {
    let echo = guest("echo");
    let output = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args(["serve", "--port", "0", "--kv", "memory"])
        .args(["--mount", &format!("/api={}", echo.display())])
        .args(["--mount", &format!("/api/={}", echo.display())])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("two apps are mounted at /api"), "{stderr}");
}

#[test]
fn reload_on_change_reloads_only_the_app_that_changed() {
    let dir = crate::support::Scratch::new("mount-reload");
    let (first, second) = (
        dir.path().join("first.wasm"),
        dir.path().join("second.wasm"),
    );
    std::fs::copy(guest("faulty"), &first).unwrap();
    std::fs::copy(guest("faulty"), &second).unwrap();
    let server = Server::start_mounts(&[
        "--mount",
        &format!("/first={}", first.display()),
        "--mount",
        &format!("/second={}", second.display()),
        "--workers",
        "1",
        "--kv",
        "memory",
        "--reload",
    ]);
    let served = |app: &str| {
        let mut response = client()
            .get(server.url(&format!("/{app}/served")))
            .call()
            .unwrap();
        response.body_mut().read_to_string().unwrap()
    };
    assert_eq!(
        (served("first"), served("second")),
        ("1".into(), "1".into())
    );

    // A new modification time on the first app's file alone.
    let file = std::fs::File::options().write(true).open(&first).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    server.wait_for_log(&["instances replaced", "app=\"first\""]);
    // The first app starts over; the second kept its instance and its state.
    assert_eq!(
        (served("first"), served("second")),
        ("1".into(), "2".into())
    );
    assert_eq!(
        server.log_lines_with("reloading"),
        1,
        "only the changed app reloads"
    );
}
