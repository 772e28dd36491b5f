//! Many apps on one server: virtual hosts, limits of their own, isolation between them, and
//! a config reload that adds, removes and swaps apps under load.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::admin::admin_address;
use crate::config::refused;
use crate::support::{IO_TIMEOUT, Load, RawResponse, Scratch, Server, client, guest};

/// Writes `text` to `dir`/wasm-gw.toml in one rename, as a deploy would, and returns its
/// path.
fn write_config(dir: &Scratch, text: &str) -> String {
    let path = dir.path().join("wasm-gw.toml");
    let staged = dir.path().join("wasm-gw.toml.staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An `[[app]]` table.
fn app(name: &str, component: &Path, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\n{extra}\n",
        component.display()
    )
}

fn get(server: &Server, host: &str, target: &str) -> RawResponse {
    server.raw(
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Echo-Environ: 1\r\n\r\n").as_bytes(),
    )
}

/// What the echo app saw: (SERVER_NAME, SCRIPT_NAME, PATH_INFO), or `None` if another
/// app answered.
fn echo_saw(response: &RawResponse) -> Option<(String, String, String)> {
    let meta = response.header("x-echo-meta")?;
    let meta = base64::engine::general_purpose::STANDARD
        .decode(meta)
        .unwrap();
    let meta: Value = serde_json::from_slice(&meta).unwrap();
    let field = |key: &str| meta["environ"][key].as_str().unwrap().to_owned();
    Some((
        field("SERVER_NAME"),
        field("SCRIPT_NAME"),
        field("PATH_INFO"),
    ))
}

#[test]
fn virtual_hosts_pick_the_app_before_the_path() {
    let dir = Scratch::new("vhosts");
    let (echo, hello, tasks) = (guest("echo"), guest("hello"), guest("tasks"));
    let config = write_config(
        &dir,
        &[
            app("site", &echo, "route = \"/\""),
            app(
                "api",
                &tasks,
                "route = \"/\"\nhosts = [\"api.example.com\"]",
            ),
            app(
                "api-v2",
                &echo,
                "route = \"/v2\"\nhosts = [\"API.example.com\"]",
            ),
            app(
                "tenants",
                &hello,
                "route = \"/\"\nhosts = [\"*.tenants.test\", \"tenants.test\"]",
            ),
        ]
        .concat(),
    );
    let server = Server::start_mounts(&["--config", &config, "--kv", "memory"]);

    let tasks = get(&server, "api.example.com", "/tasks");
    assert_eq!(tasks.status, 200, "{}", tasks.text());
    assert_eq!(tasks.text().trim(), "[]");
    // Host is matched without case and without its port.
    let v2 = get(&server, "Api.Example.COM:8080", "/v2/x");
    assert_eq!(
        echo_saw(&v2),
        Some(("Api.Example.COM".into(), "/v2".into(), "/x".into()))
    );
    for host in ["shop.tenants.test", "a.b.tenants.test", "tenants.test"] {
        let hello = get(&server, host, "/?name=tenant");
        assert_eq!(hello.text(), "Hello, tenant!\n", "Host: {host}");
    }
    // Hosts that no app names go to the apps that name none.
    for host in ["other.test", "example.com", "127.0.0.1"] {
        let site = get(&server, host, "/x");
        assert_eq!(echo_saw(&site), Some((host.into(), "".into(), "/x".into())));
    }
    let no_host = server.raw(b"GET /x HTTP/1.0\r\nX-Echo-Environ: 1\r\n\r\n");
    assert_eq!(echo_saw(&no_host).unwrap().1, "");
}

#[test]
fn apps_on_one_route_clash_only_when_their_hosts_do() {
    let echo = guest("echo");
    let clash = refused(
        &[
            app("a", &echo, "hosts = [\"a.test\", \"b.test\"]"),
            app("b", &echo, "hosts = [\"B.test\"]"),
        ]
        .concat(),
    );
    assert!(
        clash.contains("[[app]] \"b\"") && clash.contains("b.test") && clash.contains("\"a\""),
        "{clash}"
    );
    let with_port = refused(&app("a", &echo, "hosts = [\"a.test:80\"]"));
    assert!(
        with_port.contains("hosts:") && with_port.contains("without a port"),
        "{with_port}"
    );

    // The same route on hosts of their own, or one with hosts and one without, is no clash.
    let dir = Scratch::new("host-clash");
    let config = write_config(
        &dir,
        &[
            app("a", &echo, "hosts = [\"a.test\"]"),
            app("b", &echo, "hosts = [\"b.test\"]"),
            app("c", &echo, ""),
        ]
        .concat(),
    );
    let server = Server::start_mounts(&["--config", &config, "--kv", "memory"]);
    server.wait_for_log(&["app=\"c\"", "mounted"]);
}

#[test]
fn each_app_has_its_own_body_limit() {
    let dir = Scratch::new("body-limits");
    let echo = guest("echo");
    let config = write_config(
        &dir,
        &[
            app("big", &echo, "route = \"/\""),
            app(
                "small",
                &echo,
                "route = \"/small\"\nmax-body-size = \"1KiB\"",
            ),
            app("any", &echo, "route = \"/any\"\nmax-body-size = 0"),
        ]
        .concat(),
    );
    let server = Server::start_mounts(&[
        "--config",
        &config,
        "--kv",
        "memory",
        "--max-body-size",
        "4KiB",
    ]);
    let post = |target: &str, size: usize| {
        let mut request =
            format!("POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n")
                .into_bytes();
        request.resize(request.len() + size, b'x');
        server.raw(&request)
    };
    assert_eq!(post("/small/x", 1024).status, 200);
    let refused = post("/small/x", 1025);
    assert_eq!(refused.status, 413);
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(post("/x", 4096).status, 200);
    assert_eq!(post("/x", 4097).status, 413);
    assert_eq!(post("/any/x", 64 * 1024).body.len(), 64 * 1024);

    // A chunked body is held to the app's limit as its chunks arrive.
    let chunked = |target: &str| {
        server.raw(
            format!(
                "POST {target} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 400\r\n{}\r\n1\r\ny\r\n0\r\n\r\n",
                "x".repeat(1024)
            )
            .as_bytes(),
        )
    };
    assert_eq!(chunked("/small/x").status, 413);
    assert_eq!(chunked("/x").body.len(), 1025);
    server.wait_for_log(&["413", "is over the limit of"]);
}

/// Sorted latencies' 99th percentile.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[latencies.len() * 99 / 100]
}

#[test]
fn an_app_stuck_in_loops_does_not_slow_another() {
    let dir = Scratch::new("isolation");
    let config = write_config(
        &dir,
        &[
            app(
                "a",
                &guest("faulty"),
                "route = \"/a\"\ninstances = 1\ntimeout = 1",
            ),
            app("b", &guest("hello"), "route = \"/b\"\ninstances = 1"),
        ]
        .concat(),
    );
    let server = Arc::new(Server::start_mounts(&[
        "--config", &config, "--kv", "memory",
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let looped = Arc::new(AtomicUsize::new(0));
    let hammer: Vec<_> = (0..8)
        .map(|_| {
            let (server, stop, looped) = (server.clone(), stop.clone(), looped.clone());
            thread::spawn(move || {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    // Eight clients queue for A's one instance, and the queue is not fair:
                    // one may wait past the client's timeout. Only B is under test.
                    if let Ok(response) = http.get(server.url("/a/loop")).call()
                        && response.status() == 504
                    {
                        looped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // A's one instance is spinning, and its queue is full, before B is measured.
    server.wait_for_log(&["app=\"a\"", "stopped after exceeding the 1s deadline"]);

    let http = client();
    let mut latencies = Vec::new();
    let measured_from = looped.load(Ordering::Relaxed);
    while latencies.len() < 500 {
        let started = Instant::now();
        let mut response = http.get(server.url("/b/?name=b")).call().unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        latencies.push(started.elapsed());
        assert_eq!(response.status(), 200, "{body}");
    }
    // A stayed stuck throughout: it was still timing out after B's requests.
    let deadline = Instant::now() + IO_TIMEOUT;
    while looped.load(Ordering::Relaxed) <= measured_from {
        assert!(Instant::now() < deadline, "app A stopped being hammered");
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    hammer.into_iter().for_each(|thread| thread.join().unwrap());
    let p99 = p99(latencies);
    assert!(
        p99 < Duration::from_millis(50),
        "B's p99 was {p99:?} while A looped"
    );
}

#[test]
fn a_config_reload_adds_removes_and_swaps_apps_under_load() {
    let dir = Scratch::new("config-reload");
    let (echo, hello) = (guest("echo"), guest("hello"));
    let before = [
        app("site", &hello, "route = \"/\""),
        app("kept", &hello, "route = \"/kept\""),
        app("old", &echo, "route = \"/old\""),
    ]
    .concat();
    let config = write_config(&dir, &before);
    let server = Arc::new(Server::start_mounts(&[
        "--config",
        &config,
        "--kv",
        "memory",
        "--admin",
        "127.0.0.1:0",
    ]));
    let load = Load::start(
        &server,
        &[
            "/?name=load",
            "/kept/?name=load",
            "/?name=load",
            "/kept/?name=load",
        ],
    );

    // The site swaps to echo, "old" goes, "new" comes; "kept" stays as it was.
    write_config(
        &dir,
        &[
            app("site", &echo, "route = \"/\""),
            app("kept", &hello, "route = \"/kept\""),
            app("new", &hello, "route = \"/new\""),
        ]
        .concat(),
    );
    server.signal("HUP");
    server.wait_for_log(&["app=\"old\"", "removed"]);
    server.wait_for_log(&["app=\"new\"", "added"]);
    load.run_past_the_swap_to_echo();
    let (served, failed) = load.stop();
    assert_eq!(failed, 0, "requests failed");
    assert!(served > 100);

    let new = get(&server, "a", "/new/?name=new");
    assert_eq!(new.text(), "Hello, new!\n");
    // /old is the site's now.
    let old = get(&server, "a", "/old/x");
    assert_eq!(echo_saw(&old).unwrap().1, "");
    let health = client()
        .get(format!("http://{}/health", admin_address(&server)))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    let mut apps: Vec<&str> = health["apps"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    apps.sort();
    assert_eq!(apps, ["kept", "new", "site"]);

    // A config that cannot be served is refused whole: no app of it serves.
    write_config(
        &dir,
        &[
            app("site", &hello, "route = \"/\""),
            app("broken", &dir.path().join("missing.wasm"), "route = \"/b\""),
        ]
        .concat(),
    );
    server.signal("HUP");
    server.wait_for_log(&["reload failed, the old apps keep serving", "missing.wasm"]);
    assert!(echo_saw(&get(&server, "a", "/")).is_some());
    assert_eq!(
        get(&server, "a", "/new/?name=still").text(),
        "Hello, still!\n"
    );
}

#[test]
fn reload_flag_follows_the_config_file() {
    let dir = Scratch::new("config-watch");
    let hello = guest("hello");
    let config = write_config(&dir, &app("site", &hello, "route = \"/\""));
    let server = Server::start_mounts(&["--config", &config, "--kv", "memory", "--reload"]);
    assert_eq!(get(&server, "a", "/extra/x").status, 200);
    write_config(
        &dir,
        &[
            app("site", &hello, "route = \"/\""),
            app("extra", &guest("echo"), "route = \"/extra\""),
        ]
        .concat(),
    );
    server.wait_for_log(&["app=\"extra\"", "added"]);
    let extra = get(&server, "a", "/extra/x");
    assert_eq!(echo_saw(&extra).unwrap().1, "/extra");
}
