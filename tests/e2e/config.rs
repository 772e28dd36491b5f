//! `--config wasm-gw.toml`: apps with settings of their own, and errors that point at the
//! line and the field.

use std::process::Command;

use crate::support::{Scratch, Server, client, guest};

pub(crate) fn write_config(dir: &Scratch, text: &str) -> String {
    let path = dir.path().join("wasm-gw.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn each_app_gets_its_route_and_its_own_limits() {
    let dir = Scratch::new("config");
    let config = write_config(
        &dir,
        &format!(
            r#"
[[app]]
name = "site"
component = "{echo}"
route = "/"
instances = 1

[[app]]
name = "api"
component = "{tasks}"
route = "/api"
kv-namespace = "api-tasks"

[[app]]
name = "slow"
component = "{faulty}"
route = "/faulty"
timeout = 1
instances = 1
kv-quota-keys = 100
queue-limit = 4
app-log-rate = "1KiB"
"#,
            echo = guest("echo").display(),
            tasks = guest("tasks").display(),
            faulty = guest("faulty").display(),
        ),
    );
    let server = Server::start_mounts(&[
        "--config",
        &config,
        "--kv",
        "memory",
        "--timeout",
        "30",
        "--admin",
        "127.0.0.1:0",
    ]);
    let http = client();
    assert_eq!(
        http.get(server.url("/anything")).call().unwrap().status(),
        200
    );
    assert_eq!(
        http.post(server.url("/api/tasks"))
            .send(r#"{"title": "configured"}"#)
            .unwrap()
            .status(),
        201
    );
    // The faulty app's own timeout of 1 s stops its loop, not the server's 30 s.
    let started = std::time::Instant::now();
    assert_eq!(
        http.get(server.url("/faulty/loop"))
            .call()
            .unwrap()
            .status(),
        504
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    server.wait_for_log(&["stopped after exceeding the 1s deadline"]);
    // Its own key-value quota, not the server's million keys.
    let fill = http
        .get(server.url("/faulty/store/fill?count=101"))
        .call()
        .unwrap();
    assert_eq!(fill.status(), 507);
    server.wait_for_log(&["mounted", "at /faulty, 1 instances"]);
    server.wait_for_log(&["key-value store: memory", "namespace=api-tasks"]);

    // Logs and metrics know each app by its name in the file, not its file's stem.
    let admin = server.wait_for_log(&["admin endpoint on http://"]);
    let admin = admin
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let mut metrics = http.get(format!("http://{admin}/metrics")).call().unwrap();
    let metrics = metrics.body_mut().read_to_string().unwrap();
    for name in ["site", "api", "slow"] {
        assert!(
            metrics.contains(&format!("wasm_gw_instances_live{{app=\"{name}\"}}")),
            "{name} in:\n{metrics}"
        );
    }
}

#[test]
fn a_wsgi_app_and_a_wasi_http_component_each_keep_their_own_caps() {
    let dir = Scratch::new("config-worlds");
    let config = write_config(
        &dir,
        &format!(
            r#"
[[app]]
name = "site"
component = "{faulty}"
route = "/"
instances = 1
max-memory = "256MiB"
timeout = 3

[[app]]
name = "api"
component = "{http_faulty}"
route = "/api"
instances = 1
max-memory = "32MiB"
timeout = 1
"#,
            faulty = guest("faulty").display(),
            http_faulty = guest("http_faulty").display(),
        ),
    );
    let server = Server::start_mounts(&["--config", &config, "--timeout", "30"]);
    let get = |path: &str| server.raw(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    // 48 MiB fits the WSGI app's 256 MiB, not the component's 32 MiB; 8 MiB fits both.
    let site = get("/alloc?mb=48");
    assert_eq!(
        (site.status, site.text()),
        (200, "held 48 MiB\n".to_owned())
    );
    assert_eq!(get("/api/alloc?mb=48").status, 500);
    server.wait_for_log(&["api", "ran out of memory"]);
    let api = get("/api/alloc?mb=8");
    assert_eq!((api.status, api.text()), (200, "held 8 MiB\n".to_owned()));
    // Each app's own deadline, not the server's 30 s.
    assert_eq!(get("/api/loop").status, 504);
    server.wait_for_log(&["api", "stopped after exceeding the 1s deadline"]);
    assert_eq!(get("/loop").status, 504);
    server.wait_for_log(&["site", "stopped after exceeding the 3s deadline"]);
    // Both replaced their failed instances and serve on.
    assert_eq!(get("/api/ok").text(), "ok");
    assert_eq!(get("/ok").text(), "ok");
}

#[test]
fn config_values_reach_apps_of_each_world_and_secrets_stay_out_of_the_log() {
    let dir = Scratch::new("config-values");
    let config = write_config(
        &dir,
        &format!(
            r#"
[[app]]
name = "site"
component = "{faulty}"
route = "/"
config = {{ greeting = "hello site", secret = {{ env = "WASM_GW_E2E_SECRET" }} }}

[[app]]
name = "api"
component = "{http_faulty}"
route = "/api"

[[app]]
name = "plain"
component = "{faulty}"
route = "/plain"
config = {{}}
"#,
            faulty = guest("faulty").display(),
            http_faulty = guest("http_faulty").display(),
        ),
    );
    let secret = "s3cret-4e1f-never-logged";
    let server = Server::start_mounts_with_env(
        &[
            "--config",
            &config,
            "--log-level",
            "debug",
            // Every app's, unless its table says otherwise.
            "--config-var",
            "greeting=hello from the command line",
        ],
        &[("WASM_GW_E2E_SECRET", std::path::Path::new(secret))],
    );
    let get = |path: &str| {
        server
            .raw(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .text()
    };
    assert_eq!(get("/config?key=greeting"), "greeting=hello site\n");
    assert_eq!(get("/config?key=secret"), format!("secret={secret}\n"));
    // A standard wasi:http component gets the command line's values.
    assert_eq!(
        get("/api/config?key=greeting"),
        "greeting=hello from the command line\n"
    );
    // An empty table: none at all.
    assert_eq!(get("/plain/config?key=greeting"), "greeting unset\n");
    server.wait_for_log(&["GET /plain/config?key=greeting"]);
    let leaked: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|line| line.contains(secret))
        .collect();
    assert!(leaked.is_empty(), "the secret is in the log: {leaked:?}");
}

#[test]
fn a_config_value_from_a_missing_variable_stops_the_start() {
    let error = refused(&format!(
        r#"
[[app]]
name = "site"
component = "{}"
config = {{ key = {{ env = "WASM_GW_E2E_NOT_SET_ANYWHERE" }} }}
"#,
        guest("faulty").display()
    ));
    assert!(
        error.contains("[[app]] \"site\": config: \"key\" is to come from the environment variable WASM_GW_E2E_NOT_SET_ANYWHERE, which the server does not have"),
        "{error}"
    );
}

/// Serves `config_text` as the config file, and returns the error the server stops with.
pub fn refused(config_text: &str) -> String {
    let dir = Scratch::new("bad-config");
    let config = write_config(&dir, config_text);
    let output = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args([
            "serve", "--config", &config, "--port", "0", "--kv", "memory",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_config_is_refused_with_the_line_and_the_field() {
    let echo = guest("echo");
    let unknown = refused(&format!(
        "[[app]]\nname = \"a\"\ncomponent = \"{}\"\nroute = \"/\"\ntimeuot = 3\n",
        echo.display()
    ));
    assert!(unknown.contains("wasm-gw.toml"), "{unknown}");
    assert!(unknown.contains("line 5"), "{unknown}");
    assert!(unknown.contains("timeuot"), "{unknown}");

    let shadowed = refused(&format!(
        "[[app]]\nname = \"a\"\ncomponent = \"{0}\"\nroute = \"/api\"\n\n\
         [[app]]\nname = \"b\"\ncomponent = \"{0}\"\nroute = \"/api/\"\n",
        echo.display()
    ));
    assert!(
        shadowed.contains(r#"[[app]] "b": route "/api/" is "a"'s already"#),
        "{shadowed}"
    );

    let bad_size = refused(&format!(
        "[[app]]\nname = \"a\"\ncomponent = \"{}\"\nmax-memory = \"lots\"\n",
        echo.display()
    ));
    assert!(
        bad_size.contains(r#"[[app]] "a": max-memory"#),
        "{bad_size}"
    );

    // Each app's namespace is in the file: a command-line one would be ambiguous.
    let dir = Scratch::new("config-namespace");
    let config = write_config(
        &dir,
        &format!(
            "[[app]]\nname = \"a\"\ncomponent = \"{}\"\n",
            echo.display()
        ),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args([
            "serve",
            "--config",
            &config,
            "--kv-namespace",
            "x",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kv-namespace"), "{stderr}");
}

#[test]
fn the_server_table_sets_what_flags_would_and_flags_win() {
    let dir = Scratch::new("server-table");
    let config = write_config(
        &dir,
        &format!(
            r#"
[server]
timeout = 1
max-body-size = "1KiB"
log-format = "json"
workers = 1
kv = "memory"
# The harness passes --cache-dir, which conflicts with this and so wins over it.
no-cache = true

[[app]]
name = "site"
component = "{echo}"
max-body-size = "4KiB"

[[app]]
name = "slow"
component = "{faulty}"
route = "/faulty"
"#,
            echo = guest("echo").display(),
            faulty = guest("faulty").display(),
        ),
    );
    let server = Server::start_mounts(&["--config", &config, "--workers", "2"]);
    let http = client();
    // [server]'s timeout and body limit are every app's defaults.
    let started = std::time::Instant::now();
    let looped = http.get(server.url("/faulty/loop")).call().unwrap();
    assert_eq!(looped.status(), 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let post = |target: &str| {
        http.post(server.url(target))
            .send(&[b'x'; 2048][..])
            .unwrap()
            .status()
    };
    assert_eq!(post("/faulty/x"), 413);
    assert_eq!(post("/x"), 200);
    // The command line's --workers wins over the file's.
    server.wait_for_log(&["\"app\":\"slow\"", "at /faulty, 2 instances"]);
    server.wait_for_log(&["from the cache"]);
    // Every line is JSON, the access lines included.
    let access = server.wait_for_log(&["\"target\":\"access\"", "\"status\":504"]);
    let access: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["uri"], "/faulty/loop");
    let lines = server.log_lines();
    assert!(lines.len() > 3);
    for line in lines {
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|_| panic!("{line}"));
    }
}

#[test]
fn a_bad_server_setting_is_refused_with_its_line() {
    let component = guest("echo");
    let app = format!(
        "\n[[app]]\nname = \"a\"\ncomponent = \"{}\"\n",
        component.display()
    );
    let bad_value = refused(&format!("[server]\nworkers = 1\ntimeout = \"soon\"\n{app}"));
    assert!(
        bad_value.contains("wasm-gw.toml:3: [server] timeout:")
            && bad_value.contains("not a number of seconds"),
        "{bad_value}"
    );
    let per_app = refused(&format!("[server]\ndir = \"/tmp\"\n{app}"));
    assert!(
        per_app.contains(
            "wasm-gw.toml:2: [server] dir: --dir is a flag of serve's, but in a config file it \
             goes in each [[app]] table's dirs"
        ),
        "{per_app}"
    );
    let unknown = refused(&format!("[server]\nthreads = 4\n{app}"));
    assert!(unknown.contains("[server] threads"), "{unknown}");
}
