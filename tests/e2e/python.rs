//! Python WSGI apps, built by `wasm-gw build-python` inside wsgiref's PEP 3333 validator and
//! served by the real server. The echo and tasks examples also run the Rust guests' tests
//! (environ, protocol, corpus, apps).

use std::io::{BufReader, Read, Write};
use std::process::Command;

use serde_json::{Value, json};

use crate::startup::{assert_one_error_line, serve_exits_with_cache};
use crate::support::{
    RawResponse, Scratch, Server, client, python_guest, python_guest_unvalidated, workspace_root,
};

fn text(response: &mut ureq::http::Response<ureq::Body>) -> String {
    response.body_mut().read_to_string().unwrap()
}

#[test]
fn the_tutorial_hello_app_runs_verbatim() {
    let server = Server::start_path(&python_guest("hello"), &[]);
    let mut response = client().get(server.url("/?name=WSGI")).call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "13");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(text(&mut response), "Hello, WSGI!\n");
    let mut response = client().get(server.url("/")).call().unwrap();
    assert_eq!(text(&mut response), "Hello, world!\n");
}

#[test]
fn flask_routes_json_and_streams() {
    // No `import encodings.idna` in the app: the bridge has every codec in the snapshot.
    let server = Server::start_path(&python_guest("flask"), &["--workers", "1"]);
    // build-python compiled it into the code cache: serving starts without compiling.
    server.wait_for_log(&["loaded compiled", "flask.wasm from the cache"]);
    let http = client();
    let mut index = http.get(server.url("/")).call().unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "application/json");
    let index: Value = serde_json::from_str(&text(&mut index)).unwrap();
    assert_eq!(index["app"], "flask");

    let mut put = http
        .put(server.url("/notes/first"))
        .header("Content-Type", "application/json")
        .send(json!({"text": "from Flask"}).to_string())
        .unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(
        serde_json::from_str::<Value>(&text(&mut put)).unwrap(),
        json!({"name": "first", "text": "from Flask"})
    );
    let mut bad = http
        .put(server.url("/notes/second"))
        .header("Content-Type", "application/json")
        .send("[]")
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(text(&mut bad).contains("error"));
    let mut got = http.get(server.url("/notes/first")).call().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text(&mut got)).unwrap()["text"],
        "from Flask"
    );
    assert_eq!(
        http.get(server.url("/notes/none")).call().unwrap().status(),
        404
    );
    assert_eq!(
        http.get(server.url("/no/such/route"))
            .call()
            .unwrap()
            .status(),
        404
    );

    // A generator body is streamed: chunked on the wire, every line there.
    let response = server.raw(b"GET /count/1000 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(response.chunked);
    let expected: String = (0..1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(response.text(), expected);

    // Flask answers its own 500 and logs the traceback through wsgi.errors.
    assert_eq!(http.get(server.url("/boom")).call().unwrap().status(), 500);
    server.wait_for_log(&["flask view failed on purpose", "stream=\"stderr\""]);
}

#[test]
fn an_exception_is_a_500_with_the_traceback_and_the_instance_serves_on() {
    let server = Server::start_path(&python_guest("faulty"), &["--workers", "1"]);
    let http = client();
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "1\n");
    assert_eq!(http.get(server.url("/raise")).call().unwrap().status(), 500);
    server.wait_for_log(&["ValueError: faulty Python app raises on purpose"]);
    server.wait_for_log(&["Traceback (most recent call last)"]);
    // The same instance, with its module state: the third request it has served.
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "3\n");
}

#[test]
fn a_python_loop_is_stopped_by_the_deadline() {
    let server = Server::start_path(
        &python_guest("faulty"),
        &["--workers", "1", "--timeout", "1"],
    );
    let http = client();
    assert_eq!(http.get(server.url("/loop")).call().unwrap().status(), 504);
    // The spent instance is replaced when the next request needs it.
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "1\n");
    server.wait_for_log(&["instance replaced", "reason=\"timeout\""]);
}

#[test]
fn unbounded_python_allocation_hits_the_memory_cap() {
    let server = Server::start_path(
        &python_guest("faulty"),
        &["--workers", "1", "--max-memory", "96MiB"],
    );
    let http = client();
    assert_eq!(http.get(server.url("/alloc")).call().unwrap().status(), 500);
    // Python turns a failed allocation into MemoryError, and the bridge retires the
    // instance; or the cap traps first. Either way a fresh instance serves next.
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "1\n");
}

#[test]
fn a_python_app_reads_its_config_through_the_bridge() {
    let server = Server::start_path(
        &python_guest("faulty"),
        &["--config-var", "greeting=hello from config"],
    );
    let get = |path: &str| {
        server
            .raw(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .text()
    };
    assert_eq!(get("/config?key=greeting"), "greeting=hello from config\n");
    assert_eq!(get("/config?key=other"), "other unset\n");
}

#[test]
fn a_python_app_calls_out_through_the_bridge_under_the_same_rules() {
    let upstream = crate::support::Upstream::serving("hi python");
    let port = upstream.port;
    let allowed = format!("http://127.0.0.1:{port}");
    let server = Server::start_path(&python_guest("faulty"), &["--allow-outbound", &allowed]);
    let fetch = |url: &str| server.get_text(&format!("/fetch?url={url}"));
    assert_eq!(fetch(&format!("{allowed}/")), "200 hi python");
    assert_eq!(
        fetch("http://localhost:1/"),
        "Denied: outbound request denied: its destination is not allowed"
    );
    // urllib.request.urlopen, on top of it once the app installed it.
    let urlopen = |url: &str| server.get_text(&format!("/urlopen?url={url}"));
    assert_eq!(urlopen(&format!("{allowed}/")), "200 hi python");
    assert_eq!(
        urlopen("http://localhost:1/"),
        "URLError: <urlopen error outbound request denied: its destination is not allowed>"
    );
}

#[test]
fn system_exit_retires_the_instance() {
    let server = Server::start_path(&python_guest("faulty"), &["--workers", "1"]);
    let http = client();
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "1\n");
    assert_eq!(http.get(server.url("/exit")).call().unwrap().status(), 500);
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "1\n");
    server.wait_for_log(&["instance replaced", "reason=\"trap\""]);
    server.wait_for_log(&["SystemExit: 3"]);
}

#[test]
fn python_cannot_read_host_files() {
    let server = Server::start_path(&python_guest("faulty"), &[]);
    let mut response = client().get(server.url("/passwd")).call().unwrap();
    assert_eq!(response.status(), 200);
    let answer = text(&mut response);
    assert!(answer.starts_with("denied:"), "{answer}");
}

#[test]
fn python_reads_the_files_its_component_carries_and_cannot_change_them() {
    let server = Server::start_path(&python_guest("faulty"), &[]);
    let mut response = client().get(server.url("/own-source")).call().unwrap();
    let answer = text(&mut response);
    let mut lines = answer.lines();
    assert_eq!(
        lines.next(),
        Some(
            "read: \"\"\"Python apps that each do one wrong thing, for the host's fault tests: `/raise`, `/loop`,"
        )
    );
    let written = lines.next().unwrap_or_default();
    assert!(written.starts_with("not written:"), "{answer}");
}

#[test]
fn a_body_that_fails_halfway_is_cut_short_not_passed_off_as_whole() {
    let server = Server::start_path(&python_guest("faulty"), &["--workers", "1"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /stream-raise HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    std::io::BufRead::read_line(&mut reader, &mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("first"), "{rest}");
    assert!(
        !rest.ends_with("0\r\n\r\n"),
        "a truncated body must not end like a whole one"
    );
    server.wait_for_log(&["the body failed halfway"]);
    // PEP 3333: close() runs whatever happened, although the instance is gone after.
    server.wait_for_log(&["closed the broken stream"]);
    assert_eq!(
        text(&mut client().get(server.url("/")).call().unwrap()),
        "1\n"
    );
}

#[test]
fn the_validator_catches_a_pep3333_violation() {
    let server = Server::start_path(&python_guest("faulty"), &[]);
    let response: RawResponse = server.raw(b"GET /tuple-headers HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 500);
    server.wait_for_log(&["AssertionError", "must be of type list"]);
}

#[test]
fn python_tasks_share_the_store_with_every_worker() {
    let state = Scratch::new("python-tasks");
    let args = ["--workers", "2", "--state-dir", state.arg()];
    let server = Server::start_path(&python_guest("tasks"), &args);
    let http = client();
    for n in 1..=10 {
        let mut created = http
            .post(server.url("/tasks"))
            .send(json!({ "title": format!("task {n}") }).to_string())
            .unwrap();
        assert_eq!(created.status(), 201);
        let task: Value = serde_json::from_str(&text(&mut created)).unwrap();
        assert_eq!(task["id"], n);
    }
    drop(server);
    // Restarted on the same state: the tasks are there, in id order.
    let server = Server::start_path(&python_guest("tasks"), &args);
    let mut listed = http.get(server.url("/tasks")).call().unwrap();
    let listed: Value = serde_json::from_str(&text(&mut listed)).unwrap();
    let ids: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_package_that_needs_native_code_fails_the_build_by_name() {
    let scratch = Scratch::new("native");
    std::fs::write(
        scratch.path().join("app.py"),
        "import ujson\n\ndef application(environ, start_response):\n    return []\n",
    )
    .unwrap();
    std::fs::write(scratch.path().join("requirements.txt"), "ujson\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args(["build-python", "app:application", "--path", scratch.arg()])
        .arg("--requirements")
        .arg(scratch.path().join("requirements.txt"))
        .arg("-o")
        .arg(scratch.path().join("app.wasm"))
        .arg("--cache-dir")
        .arg(crate::support::workspace_root().join("target/e2e-code-cache"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ujson needs its native code"),
        "the error must name the package: {stderr}"
    );
    assert!(!scratch.path().join("app.wasm").exists());
}

/// A request of `method` to `path` with `body` of `content_type`: the status and the body.
fn call(server: &Server, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
    let request = match body {
        Some((content_type, body)) => format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n"),
    };
    let response = server.raw(request.as_bytes());
    (response.status, response.text())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn a_bottle_app_runs_as_its_tutorial_writes_it() {
    let server = Server::start_path(&python_guest_unvalidated("bottle"), &["--workers", "1"]);
    let (status, body) = call(&server, "GET", "/", None);
    assert_eq!(
        (status, json_of(&body)),
        (200, json!({"app": "bottle", "notes": 0}))
    );
    assert_eq!(
        call(&server, "GET", "/hello/you", None),
        (200, "<h1>Hello, you!</h1>".to_owned())
    );
    let (status, body) = call(
        &server,
        "POST",
        "/notes",
        Some((FORM, "title=caf%C3%A9+au+lait")),
    );
    assert_eq!(
        (status, json_of(&body)),
        (201, json!({"id": 1, "title": "café au lait"}))
    );
    let (status, body) = call(&server, "POST", "/notes", Some((FORM, "other=1")));
    assert_eq!(status, 400);
    assert!(body.contains("a note needs a title"), "{body}");
    let (status, body) = call(&server, "GET", "/notes/1", None);
    assert_eq!(
        (status, json_of(&body)["title"].clone()),
        (200, json!("café au lait"))
    );
    let (status, body) = call(&server, "GET", "/notes.html", None);
    assert_eq!(status, 200);
    assert!(body.contains("<li>1: café au lait</li>"), "{body}");
    // Its error handler, for its own 404s and for routes that match nothing.
    let (status, body) = call(&server, "GET", "/notes/7", None);
    assert_eq!(
        (status, json_of(&body)),
        (404, json!({"error": "no note 7"}))
    );
    assert_eq!(call(&server, "GET", "/no/such/route", None).0, 404);
    assert_eq!(call(&server, "DELETE", "/notes/1", None).0, 405);
    // An exception: Bottle's own 500 page, sent with exc_info, and one warning.
    let (status, body) = call(&server, "GET", "/boom", None);
    assert_eq!(status, 500);
    assert!(body.contains("Internal Server Error"), "{body}");
    server.wait_for_log(&["answered with its error page: ZeroDivisionError"]);
    let response = server.raw(b"GET /count/500 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(response.chunked, "a generator is streamed");
    assert_eq!(response.text().lines().count(), 500);
}

#[test]
fn a_falcon_app_runs_as_its_tutorial_writes_it() {
    let server = Server::start_path(&python_guest_unvalidated("falcon"), &["--workers", "1"]);
    let json_type = "application/json";
    let (status, body) = call(
        &server,
        "POST",
        "/notes",
        Some((json_type, r#"{"title": "first"}"#)),
    );
    assert_eq!(
        (status, json_of(&body)),
        (201, json!({"id": 1, "title": "first"}))
    );
    let (status, body) = call(&server, "POST", "/notes", Some((json_type, "[]")));
    assert_eq!(
        (status, json_of(&body)["title"].clone()),
        (400, json!("a note needs a title"))
    );
    let (status, body) = call(&server, "GET", "/notes", None);
    assert_eq!(
        (status, json_of(&body)),
        (200, json!([{"id": 1, "title": "first"}]))
    );
    assert_eq!(call(&server, "GET", "/notes/1", None).0, 200);
    let (status, body) = call(&server, "GET", "/notes/9", None);
    assert_eq!(
        (status, json_of(&body)["title"].clone()),
        (404, json!("no note 9"))
    );
    // A typed URI field that does not parse matches no route.
    assert_eq!(call(&server, "GET", "/notes/first", None).0, 404);
    assert_eq!(call(&server, "DELETE", "/notes", None).0, 405);
    assert_eq!(
        call(&server, "POST", "/greet", Some((FORM, "name=Ann+Lee"))),
        (200, "Hello, Ann Lee!".to_owned())
    );
    let response = server.raw(b"GET /count/300 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.text().lines().last(), Some("299"));
}

#[test]
fn a_pyramid_app_runs_as_its_docs_write_it() {
    // Pyramid needs webob's legacy-cgi, wanted only from Python 3.13, and os.getuid at
    // import: the markers judged for the component's CPython, and the bridge's stand-in.
    let server = Server::start_path(&python_guest_unvalidated("pyramid"), &["--workers", "1"]);
    let (status, body) = call(&server, "GET", "/", None);
    assert_eq!(
        (status, json_of(&body)),
        (200, json!({"app": "pyramid", "notes": 0}))
    );
    let (status, body) = call(&server, "POST", "/notes", Some((FORM, "title=first")));
    assert_eq!(
        (status, json_of(&body)),
        (201, json!({"id": 1, "title": "first"}))
    );
    let (status, body) = call(&server, "POST", "/notes", Some((FORM, "")));
    assert_eq!(status, 400);
    assert!(body.contains("a note needs a title"), "{body}");
    let (status, body) = call(&server, "GET", "/notes/1", None);
    assert_eq!(
        (status, json_of(&body)["title"].clone()),
        (200, json!("first"))
    );
    let (status, body) = call(&server, "GET", "/nowhere", None);
    assert_eq!(
        (status, json_of(&body)["path"].clone()),
        (404, json!("/nowhere"))
    );
    let (status, body) = call(&server, "GET", "/boom", None);
    assert_eq!(
        (status, json_of(&body)),
        (500, json!({"error": "ZeroDivisionError"}))
    );
    let (status, body) = call(&server, "GET", "/count/3", None);
    assert_eq!((status, body.as_str()), (200, "0\n1\n2\n"));
}

#[test]
fn requirements_are_judged_as_cpython_3_14_on_wasi_whatever_python_builds() {
    // Packages that do not exist, wanted only where the component's CPython is not: pip
    // must skip them, or the build fails looking for them.
    let scratch = Scratch::new("markers");
    std::fs::write(
        scratch.path().join("app.py"),
        "def application(environ, start_response):\n    \
         start_response('200 OK', [])\n    return [b'built']\n",
    )
    .unwrap();
    std::fs::write(
        scratch.path().join("requirements.txt"),
        "no-such-package-for-wasm-gw; python_version < \"3.14\"\n\
         no-such-package-for-wasm-gw-either; sys_platform != \"wasi\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args(["build-python", "app:application", "--path", scratch.arg()])
        .arg("--requirements")
        .arg(scratch.path().join("requirements.txt"))
        .arg("-o")
        .arg(scratch.path().join("app.wasm"))
        .arg("--cache-dir")
        .arg(crate::support::workspace_root().join("target/e2e-code-cache"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Compiled in"), "{stdout}");
    let server = Server::start_path(&scratch.path().join("app.wasm"), &[]);
    assert_eq!(
        text(&mut client().get(server.url("/")).call().unwrap()),
        "built"
    );
}

#[test]
fn app_mistakes_are_type_errors_not_garbage_or_crashes() {
    let server = Server::start_path(&python_guest_unvalidated("faulty"), &["--workers", "1"]);
    let http = client();
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "1\n");
    // Bytes iterate as ints: never sent as NUL bytes.
    assert_eq!(
        http.get(server.url("/bytes-body")).call().unwrap().status(),
        500
    );
    server.wait_for_log(&["TypeError: each chunk of the body must be bytes, not int"]);
    // A header value that is not a str: the app's TypeError, not a crash of the instance.
    assert_eq!(
        http.get(server.url("/int-header")).call().unwrap().status(),
        500
    );
    server.wait_for_log(&["TypeError: header names and values must be str"]);
    // The same instance served all of it.
    assert_eq!(text(&mut http.get(server.url("/")).call().unwrap()), "4\n");
}

#[test]
fn a_list_body_is_sent_whole_and_closed_once() {
    let server = Server::start_path(&python_guest_unvalidated("faulty"), &["--workers", "1"]);
    let response = server.raw(b"GET /closing-list HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(!response.chunked, "a list body gets a Content-Length");
    assert_eq!(response.text(), "listed\n");
    server.wait_for_log(&["closed the list"]);
    // Another request, whose access line comes after any second close() would have.
    assert_eq!(
        text(&mut client().get(server.url("/")).call().unwrap()),
        "2\n"
    );
    server.wait_for_log(&["\"GET / HTTP/1.1\" 200"]);
    assert_eq!(server.log_lines_with("closed the list"), 1);
}

/// A request to the Django example, whose ALLOWED_HOSTS names localhost: the method, path,
/// extra header lines and form body.
fn django(server: &Server, method: &str, path: &str, headers: &str, form: &str) -> RawResponse {
    let body = if form.is_empty() && method == "GET" {
        String::new()
    } else {
        format!(
            "Content-Type: {FORM}\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    let body = if body.is_empty() {
        "\r\n".to_owned()
    } else {
        body
    };
    server.raw(format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}{body}").as_bytes())
}

#[test]
fn a_django_project_runs_as_startproject_writes_it() {
    // Django imports modules and opens templates at request time that the build never
    // touched (its 403, 404 and 405 paths, the time zone data): the component carries them.
    let server = Server::start_path(&python_guest("django"), &["--workers", "1"]);
    server.wait_for_log(&["carries files for its app, granted read-only at /0, /1, /2, /python"]);
    let index = django(&server, "GET", "/", "", "");
    assert_eq!(index.status, 200);
    assert!(index.text().contains("No notes yet."), "{}", index.text());

    // The form, with its CSRF token and cookie; a post without them is Django's own 403 page.
    let form = django(&server, "GET", "/notes/", "", "");
    assert_eq!(form.status, 200);
    let page = form.text();
    let token = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {page}"));
    let cookie = form
        .header("set-cookie")
        .and_then(|cookie| cookie.split(';').next())
        .expect("a CSRF cookie")
        .to_owned();
    assert!(cookie.starts_with("csrftoken="), "{cookie}");
    let refused = django(&server, "POST", "/notes/", "", "name=first&text=Hello");
    assert_eq!(refused.status, 403);
    assert!(
        refused.text().contains("CSRF verification failed"),
        "{}",
        refused.text()
    );
    let with_token = format!("Cookie: {cookie}\r\n");
    let saved = django(
        &server,
        "POST",
        "/notes/",
        &with_token,
        &format!("csrfmiddlewaretoken={token}&name=first&text=Hello%2C+Django%21"),
    );
    assert_eq!(saved.status, 302, "{}", saved.text());
    assert_eq!(saved.header("location"), Some("/notes/first/"));
    let invalid = django(
        &server,
        "POST",
        "/notes/",
        &with_token,
        &format!("csrfmiddlewaretoken={token}&name=not+a+slug&text=x"),
    );
    assert_eq!(invalid.status, 400);
    assert!(invalid.text().contains("errorlist"), "{}", invalid.text());

    // Templates and JSON.
    let note = django(&server, "GET", "/notes/first/", "", "");
    assert_eq!(note.status, 200);
    assert!(
        note.text().contains("<h1>first</h1><p>Hello, Django!</p>"),
        "{}",
        note.text()
    );
    let note = django(
        &server,
        "GET",
        "/notes/first/",
        "Accept: application/json\r\n",
        "",
    );
    assert_eq!(
        json_of(&note.text()),
        json!({"name": "first", "text": "Hello, Django!"})
    );
    let index = django(&server, "GET", "/", "", "");
    assert!(
        index
            .text()
            .contains("<a href=\"/notes/first/\">first</a>: Hello, Django!")
    );

    // Django's error pages and statuses.
    let missing = django(&server, "GET", "/notes/none/", "", "");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("<h1>Not Found</h1>"),
        "{}",
        missing.text()
    );
    assert_eq!(django(&server, "GET", "/no/such/route", "", "").status, 404);
    let not_allowed = django(&server, "OPTIONS", "/", "", "");
    assert_eq!(
        (not_allowed.status, not_allowed.header("allow")),
        (405, Some("GET"))
    );
    assert_eq!(django(&server, "GET", "/", "", "").status, 200);
    let wrong_host = server.raw(b"GET / HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n");
    assert_eq!(wrong_host.status, 400);
    let failed = django(&server, "GET", "/boom/", "", "");
    assert_eq!(failed.status, 500);
    assert!(failed.text().contains("Server Error (500)"));
    // Its LOGGING sends the traceback to stderr, with the lines of the app's source.
    server.wait_for_log(&["raise RuntimeError(\"django view failed on purpose\")"]);

    // Time zones from the tzdata package's files, read on first use.
    let time = django(&server, "GET", "/time/", "", "");
    assert_eq!(time.status, 200);
    assert_eq!(json_of(&time.text())["zone"], "Europe/Paris");

    let response = django(&server, "GET", "/count/400/", "", "");
    assert!(response.chunked, "a StreamingHttpResponse is streamed");
    assert_eq!(response.text().lines().nth(399), Some("399"));
}

#[test]
fn the_files_a_python_component_carries_stay_its_own() {
    let app = python_guest("hello");
    let cache = workspace_root().join("target/e2e-code-cache");
    let scratch = Scratch::new("carried-files");
    // A grant at one of the paths its files are mounted at would hide them.
    let grant = format!("{}::/python:ro", scratch.arg());
    let refused = serve_exits_with_cache(&app, Some(&cache), &["--port", "0", "--dir", &grant]);
    assert_one_error_line(
        &refused,
        &[
            "--dir",
            "would hide the files",
            "hello.wasm carries at /python",
        ],
    );
    // Compiled code cannot hold them: `compile` says so rather than make a .cwasm that fails
    // at its first lazy import.
    let compiled = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .arg("compile")
        .arg(&app)
        .arg("-o")
        .arg(scratch.path().join("hello.cwasm"))
        .output()
        .unwrap();
    assert!(!compiled.status.success());
    let stderr = String::from_utf8_lossy(&compiled.stderr);
    assert!(
        stderr.contains("carries files its app reads at run time"),
        "{stderr}"
    );
    assert!(!scratch.path().join("hello.cwasm").exists());
    // `check` tells of them.
    let checked = Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .arg("check")
        .arg(&app)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        report.contains(" MB packed, granted to the app read-only"),
        "{report}"
    );
}

#[test]
fn one_python_component_mounted_twice_unpacks_its_files_once_for_both() {
    // A fresh cache: both mounts load side by side and unpack the same files at once.
    let cache = Scratch::new("twice-cache");
    let hello = python_guest("hello");
    let server = Server::start_mounts(&[
        "--mount",
        &format!("/a={}", hello.display()),
        "--mount",
        &format!("/b={}", hello.display()),
        "--cache-dir",
        cache.arg(),
    ]);
    for prefix in ["/a", "/b"] {
        let mut response = client()
            .get(server.url(&format!("{prefix}/?name={}", &prefix[1..])))
            .call()
            .unwrap();
        assert_eq!(text(&mut response), format!("Hello, {}!\n", &prefix[1..]));
    }
    let unpacked: Vec<_> = std::fs::read_dir(cache.path().join("files"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(!unpacked[0].ends_with(".partial"), "{unpacked:?}");
}

#[test]
fn without_a_code_cache_the_files_are_unpacked_in_the_temporary_directory() {
    let temporary = Scratch::new("no-cache-tmp");
    let hello = python_guest("hello");
    let server = Server::start_mounts_with_env(
        &["--mount", &format!("/={}", hello.display()), "--no-cache"],
        &[("TMPDIR", temporary.path())],
    );
    let mut response = client().get(server.url("/?name=tmp")).call().unwrap();
    assert_eq!(text(&mut response), "Hello, tmp!\n");
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let root = temporary
        .path()
        .join(format!("wasm-gw-files-{}", uid.trim()));
    let unpacked: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|error| panic!("{}: {error}", root.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(unpacked[0].join("python/encodings/idna.py").is_file());
}
