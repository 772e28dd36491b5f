//! The example apps, through a real HTTP client.

use serde_json::{Value, json};

use crate::support::{Scratch, Server, client, guest, python_guest};

fn body_json(response: &mut ureq::http::Response<ureq::Body>) -> Value {
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn hello_greets_by_name() {
    let server = Server::start("hello", &[]);
    let mut response = client().get(server.url("/?name=WSGI")).call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.headers()["content-length"], "13");
    assert!(response.headers().contains_key("date"));
    assert_eq!(response.headers()["server"], "wasm-gw");
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "Hello, WSGI!\n"
    );

    // The first parameter with that name once decoded, its value decoded too.
    for (query, greeting) in [
        ("", "Hello, world!\n"),
        (
            "?x=1&&na%6De=caf%C3%A9+au+lait&name=second",
            "Hello, café au lait!\n",
        ),
        ("?name", "Hello, !\n"),
        ("?names=no", "Hello, world!\n"),
    ] {
        let mut response = client()
            .get(server.url(&format!("/{query}")))
            .call()
            .unwrap();
        assert_eq!(
            response.body_mut().read_to_string().unwrap(),
            greeting,
            "{query}"
        );
    }
    let line = server.wait_for_log(&["\"GET /?name=WSGI HTTP/1.1\" 200 13"]);
    // The common log format, then the seconds the request took, to the microsecond.
    let (common, seconds) = line.trim_end().rsplit_once(' ').unwrap();
    assert!(common.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        common.ends_with("\"GET /?name=WSGI HTTP/1.1\" 200 13"),
        "{line}"
    );
    let (whole, micros) = seconds.split_once('.').expect("seconds with a fraction");
    assert!(whole.parse::<u64>().is_ok() && micros.len() == 6, "{line}");
    assert!(micros.bytes().all(|b| b.is_ascii_digit()), "{line}");
}

#[test]
fn the_readme_guestbook_keeps_its_entries_across_workers_and_restarts() {
    // The README shows this very app.
    let root = crate::support::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let source = std::fs::read_to_string(root.join("guests/guestbook/src/lib.rs")).unwrap();
    assert!(
        readme.contains(&source),
        "README.md must show guests/guestbook/src/lib.rs"
    );
    let state = Scratch::new("guestbook");
    let args = ["--workers", "2", "--state-dir", state.arg()];
    let server = Server::start("guestbook", &args);
    for (id, (name, message)) in [("ann", "hi"), ("bob", "héllo")].into_iter().enumerate() {
        let mut response = client()
            .post(server.url("/entries"))
            .header("Content-Type", "application/json")
            .send(json!({"name": name, "message": message}).to_string())
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(body_json(&mut response), json!({"id": id + 1}));
    }
    let mut refused = client()
        .post(server.url("/entries"))
        .send("{\"name\": 1}")
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(body_json(&mut refused)["error"].is_string());
    assert_eq!(
        client()
            .get(server.url("/elsewhere"))
            .call()
            .unwrap()
            .status(),
        404
    );
    drop(server);

    let server = Server::start("guestbook", &args);
    let mut listed = client().get(server.url("/entries")).call().unwrap();
    assert_eq!(
        body_json(&mut listed),
        json!([{"name": "ann", "message": "hi"}, {"name": "bob", "message": "héllo"}])
    );
}

#[test]
fn tasks_crud() {
    for tasks in [guest("tasks"), python_guest("tasks")] {
        eprintln!("tasks app: {}", tasks.display());
        let server = Server::start_path(&tasks, &["--workers", "1"]);
        let http = client();

        let mut created = http
            .post(server.url("/tasks"))
            .header("Content-Type", "application/json")
            .send(r#"{"title": "Works on my server"}"#)
            .unwrap();
        assert_eq!(created.status(), 201);
        assert_eq!(created.headers()["location"], "/tasks/1");
        assert_eq!(created.headers()["content-type"], "application/json");
        let task = body_json(&mut created);
        assert_eq!(
            task,
            json!({"id": 1, "title": "Works on my server", "done": false})
        );
        http.post(server.url("/tasks"))
            .send(r#"{"title": "Second", "done": true}"#)
            .unwrap();

        let mut listed = http.get(server.url("/tasks")).call().unwrap();
        assert_eq!(listed.status(), 200);
        let titles: Vec<Value> = body_json(&mut listed)
            .as_array()
            .unwrap()
            .iter()
            .map(|task| task["title"].clone())
            .collect();
        assert_eq!(titles, [json!("Works on my server"), json!("Second")]);

        let mut patched = http
            .patch(server.url("/tasks/1"))
            .send(r#"{"done": true}"#)
            .unwrap();
        assert_eq!(patched.status(), 200);
        assert_eq!(body_json(&mut patched)["done"], json!(true));
        let mut fetched = http.get(server.url("/tasks/1")).call().unwrap();
        assert_eq!(
            body_json(&mut fetched),
            json!({"id": 1, "title": "Works on my server", "done": true})
        );

        let deleted = http.delete(server.url("/tasks/1")).call().unwrap();
        assert_eq!(deleted.status(), 204);
        let mut gone = http.get(server.url("/tasks/1")).call().unwrap();
        assert_eq!(gone.status(), 404);
        assert!(body_json(&mut gone)["error"].is_string());
    }
}

#[test]
fn tasks_errors_are_json() {
    for tasks in [guest("tasks"), python_guest("tasks")] {
        eprintln!("tasks app: {}", tasks.display());
        let server = Server::start_path(&tasks, &["--workers", "1"]);
        let http = client();
        for (body, why) in [
            ("{not json", "invalid JSON"),
            (r#"{"done": true}"#, "missing title"),
            ("[1]", "not an object"),
        ] {
            let mut response = http.post(server.url("/tasks")).send(body).unwrap();
            assert_eq!(response.status(), 400, "{why}");
            assert_eq!(response.headers()["content-type"], "application/json");
            assert!(body_json(&mut response)["error"].is_string(), "{why}");
        }
        let mut unknown = http.get(server.url("/tasks/99")).call().unwrap();
        assert_eq!(unknown.status(), 404);
        assert!(body_json(&mut unknown)["error"].is_string());

        let wrong = http.put(server.url("/tasks")).send("{}").unwrap();
        assert_eq!(wrong.status(), 405);
        assert_eq!(wrong.headers()["allow"], "GET, HEAD, POST");
        http.post(server.url("/tasks"))
            .send(r#"{"title": "x"}"#)
            .unwrap();
        let wrong = http.post(server.url("/tasks/1")).send("{}").unwrap();
        assert_eq!(wrong.status(), 405);
        assert_eq!(wrong.headers()["allow"], "GET, HEAD, PATCH, DELETE");
    }
}
