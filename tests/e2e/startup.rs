//! Startup errors: one clear line on stderr and a non-zero exit.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::support::{IO_TIMEOUT, Server, guest};

/// Runs `wasm-gw serve APP ARGS...` without a code cache, which must exit on its own.
pub fn serve_exits(app: &Path, args: &[&str]) -> Output {
    serve_exits_with_cache(app, None, args)
}

/// Runs `wasm-gw serve APP ARGS...` with the code cache `cache`, which must exit on its own.
pub fn serve_exits_with_cache(app: &Path, cache: Option<&Path>, args: &[&str]) -> Output {
    let host: &[&str] = match args.contains(&"--bind") {
        true => &[],
        false => &["--host", "127.0.0.1"],
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-gw"));
    command.arg("serve").arg(app).args(host);
    match cache {
        Some(dir) => command.arg("--cache-dir").arg(dir),
        None => command.arg("--no-cache"),
    };
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(child.wait_with_output()));
    done_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("wasm-gw should have exited")
        .unwrap()
}

/// Asserts the run failed with one `error:` line, its last, holding every one of `needles`,
/// and that nothing else it logged was a warning or an error.
pub fn assert_one_error_line(output: &Output, needles: &[&str]) {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    let others = stderr
        .lines()
        .filter(|line| line.contains("error") || line.contains("WARN"));
    assert_eq!(others.count(), 1, "one error line expected:\n{stderr}");
    for needle in needles {
        assert!(last.contains(needle), "{needle:?} not in {stderr}");
    }
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-gw-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_missing_file() {
    let output = serve_exits(Path::new("/nonexistent/app.wasm"), &["--port", "0"]);
    assert_one_error_line(
        &output,
        &["cannot read /nonexistent/app.wasm", "No such file"],
    );
}

#[test]
fn a_file_that_is_not_a_component() {
    let text = temp_file("text.wasm", b"not wasm at all");
    assert_one_error_line(
        &serve_exits(&text, &["--port", "0"]),
        &["is not a WebAssembly file"],
    );
    let core = temp_file("core.wasm", b"\0asm\x01\0\0\0");
    assert_one_error_line(
        &serve_exits(&core, &["--port", "0"]),
        &[
            "is a core WebAssembly module, not a component",
            "wasm32-wasip2",
        ],
    );
}

#[test]
fn a_component_for_another_world_names_what_is_missing() {
    let output = serve_exits(&guest("mismatch"), &["--port", "0"]);
    assert_one_error_line(
        &output,
        &[
            "does not fit the wasm-gw app world",
            "test:mismatch/clock-tower",
        ],
    );
    // The smallest valid component: no imports, no exports.
    let empty = temp_file("empty.wasm", b"\0asm\x0d\0\x01\0");
    assert_one_error_line(
        &serve_exits(&empty, &["--port", "0"]),
        &["wasm-gw:wsgi/handler"],
    );
}

#[test]
fn an_app_built_for_the_last_contract_is_told_how_to_rebuild() {
    let old = guest("old_contract");
    let needles = [
        "built for wasm-gw:wsgi@0.2.0",
        "this wasm-gw serves wasm-gw:wsgi@0.3.0",
        "replace vendor/wasm-gw-sdk and wit/",
        "build-python",
    ];
    assert_one_error_line(&serve_exits(&old, &["--port", "0"]), &needles);
    let checked = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .arg("check")
        .arg(&old)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{report}");
    assert!(
        report.contains("world: the wasm-gw WSGI world 0.2.0"),
        "{report}"
    );
    for needle in needles {
        assert!(report.contains(needle), "{needle:?} not in:\n{report}");
    }
}

#[test]
fn a_port_already_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = serve_exits(&guest("hello"), &["--port", &port]);
    assert_one_error_line(
        &output,
        &[&format!("cannot listen on 127.0.0.1:{port}"), "in use"],
    );
}

#[test]
fn a_standard_wasi_http_component_is_named_as_such() {
    // Built with the standard wasip2 crate, as for wasmtime serve; and a 0.3 one with
    // wit-bindgen's async support.
    let cases = [
        (
            "http_hello",
            "world: standard wasi:http 0.2 (it exports wasi:http/incoming-handler@0.2.",
            "wasi:http/types@0.2.",
        ),
        (
            "http_hello_p3",
            "world: standard wasi:http 0.3 (it exports wasi:http/handler@0.3.0",
            "wasi:http/types@0.3.0",
        ),
    ];
    for (app, world, types) in cases {
        let checked = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
            .arg("check")
            .arg(guest(app))
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&checked.stdout);
        assert!(checked.status.success(), "{report}");
        for expected in [world, types, "fits the wasm-gw app world"] {
            assert!(report.contains(expected), "{expected:?} not in:\n{report}");
        }
        assert!(
            !report.contains("(missing) wasm-gw:wsgi/handler"),
            "{report}"
        );
        assert!(!report.contains("NOT PROVIDED"), "{report}");
    }
}

#[test]
fn check_describes_a_good_and_a_bad_component() {
    let run = |app: &Path| {
        Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
            .arg("check")
            .arg(app)
            .output()
            .unwrap()
    };
    let good = run(&guest("hello"));
    let report = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{report}");
    for expected in [
        "world: the wasm-gw WSGI world",
        "wasm-gw:wsgi/request@0.3.0",
        "provided",
        "wasm-gw:wsgi/handler@0.3.0",
        "the app's entry point",
        "fits the wasm-gw app world",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }

    let bad = run(&guest("mismatch"));
    let report = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{report}");
    for expected in [
        "world: none that wasm-gw knows",
        "test:mismatch/clock-tower",
        "NOT PROVIDED",
        "(missing) wasm-gw:wsgi/handler",
        "does not fit the wasm-gw app world",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
}

#[test]
fn a_new_app_builds_and_serves_with_the_commands_it_prints() {
    use std::os::fd::AsRawFd;

    // The binary alone, away from the source tree and off PATH, as an installed one is.
    let dir = crate::support::Scratch::short("new-app");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wasm_gw = bin.join("wasm-gw");
    std::fs::copy(env!("CARGO_BIN_EXE_wasm-gw"), &wasm_gw).unwrap();
    let created = Command::new(&wasm_gw)
        .args(["new", "greeter-app"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let printed = String::from_utf8_lossy(&created.stdout);
    let commands: Vec<&str> = printed
        .lines()
        .skip_while(|line| !line.starts_with("rustup "))
        .take_while(|line| !line.is_empty())
        .collect();
    let app = dir.path().join("greeter-app");
    let serve = format!(
        "{} serve target/wasm32-wasip2/release/greeter_app.wasm --port 8000",
        wasm_gw.display()
    );
    assert_eq!(
        commands,
        [
            "rustup target add wasm32-wasip2",
            "cd greeter-app",
            "cargo build --release",
            serve.as_str()
        ],
        "{printed}"
    );

    // Nothing in the crate points outside it.
    let mut manifests = vec![app.join("Cargo.toml")];
    manifests.push(app.join("vendor/wasm-gw-sdk/Cargo.toml"));
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for (name, spec) in table["dependencies"].as_table().unwrap() {
            if let Some(path) = spec.get("path").and_then(|path| path.as_str()) {
                let target = manifest
                    .parent()
                    .unwrap()
                    .join(path)
                    .canonicalize()
                    .unwrap();
                assert!(
                    target.starts_with(app.canonicalize().unwrap()),
                    "{name}: {path}"
                );
            }
            assert!(spec.get("workspace").is_none(), "{name} inherits: {text}");
        }
    }
    let sdk = std::fs::read_to_string(app.join("vendor/wasm-gw-sdk/src/lib.rs")).unwrap();
    assert!(sdk.contains("path: \"../../wit\""));
    assert!(app.join("wit/wsgi.wit").is_file());

    // The commands as printed, in order, in one shell: the build, then the serve line,
    // which gets a socket of the test's through systemd's protocol in place of port 8000.
    let build = commands[..3].join("\n");
    let built = Command::new("sh")
        .args(["-c", &build])
        .current_dir(dir.path())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut words = commands[3].split_whitespace();
    let mut command = Command::new(words.next().unwrap());
    command
        .args(words)
        .current_dir(&app)
        .env("LISTEN_FDS", "1")
        .env("XDG_CACHE_HOME", dir.path().join("cache"));
    let server = crate::support::Server::spawn(command, Some(listener.as_raw_fd()));
    let mut response = crate::support::client()
        .get(server.url("/"))
        .call()
        .unwrap();
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "Hello, world!\n"
    );
    // A second `new` never overwrites.
    let again = Command::new(&wasm_gw)
        .args(["new", "greeter-app"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[test]
fn flag_values_are_refused_with_what_is_accepted() {
    let refused = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
            .arg("serve")
            .arg(guest("hello"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // A negative number reaches the flag's own check, not clap's "use -- -1" tip.
    let negative = refused(&["--timeout", "-1"]);
    assert!(
        negative.contains("\"-1\" is not a positive number of seconds"),
        "{negative}"
    );
    // A bare number of bytes far too small for any app says what to write instead.
    let tiny = refused(&["--max-memory", "64"]);
    assert!(
        tiny.contains("is 64 bytes, and an app needs at least 1MiB: write a unit, as in 64MiB"),
        "{tiny}"
    );
    let unit = refused(&["--max-body-size", "5 parsecs"]);
    assert!(
        unit.contains("write a size such as 512KiB, 64MiB or 0.5GiB"),
        "{unit}"
    );
}

#[test]
fn fractional_sizes_are_sizes() {
    let server = Server::start(
        "hello",
        &["--max-memory", "0.5GiB", "--max-body-size", "1.5KiB"],
    );
    assert_eq!(
        server
            .raw(b"GET /?name=half HTTP/1.1\r\nHost: a\r\n\r\n")
            .text(),
        "Hello, half!\n"
    );
    let mut request = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1537\r\n\r\n".to_vec();
    request.resize(request.len() + 1537, b'x');
    assert_eq!(server.raw(&request).status, 413, "1.5KiB is 1536 bytes");
}
