//! Key-value storage (wasi:keyvalue) on real backends: SQLite files, a real redis-server, and
//! memory. The tasks app and the kv guest reach them through the real server.

use std::collections::BTreeSet;
use std::thread;

use serde_json::{Value, json};

use crate::support::{Redis, Scratch, Server, client};

/// Creates a task; returns its id, or the status if the server refused.
fn create_task(server: &Server, title: &str) -> Result<u64, (u16, String)> {
    let mut response = client()
        .post(server.url("/tasks"))
        .send(json!({ "title": title }).to_string())
        .unwrap();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    if status != 201 {
        return Err((status, body));
    }
    let task: Value = serde_json::from_str(&body).unwrap();
    Ok(task["id"].as_u64().unwrap())
}

fn list_tasks(server: &Server) -> Vec<Value> {
    let mut response = client().get(server.url("/tasks")).call().unwrap();
    assert_eq!(response.status(), 200);
    let body = response.body_mut().read_to_string().unwrap();
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn ids(tasks: &[Value]) -> Vec<u64> {
    tasks
        .iter()
        .map(|task| task["id"].as_u64().unwrap())
        .collect()
}

/// 8 client threads create 200 tasks at once on 4 workers; every task is then listed once,
/// in id order, with no id given twice.
fn concurrent_creates_are_all_listed_once(server: &Server) {
    let created: Vec<(u64, String)> = thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                scope.spawn(move || {
                    (0..25)
                        .map(|n| {
                            let title = format!("task {thread}-{n}");
                            let id = create_task(server, &title).expect("created");
                            (id, title)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    });
    let unique_ids: BTreeSet<u64> = created.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique_ids.len(), 200, "ids were handed out twice");

    let listed = list_tasks(server);
    let listed_ids = ids(&listed);
    assert_eq!(listed_ids, unique_ids.iter().copied().collect::<Vec<_>>());
    for (id, title) in &created {
        let task = listed.iter().find(|task| task["id"] == *id).unwrap();
        assert_eq!(task["title"], title.as_str());
    }
}

#[test]
fn tasks_are_shared_by_every_worker_on_sqlite() {
    let server = Server::start("tasks", &["--workers", "4"]);
    concurrent_creates_are_all_listed_once(&server);
    server.wait_for_log(&["key-value store: sqlite:", "namespace=tasks"]);
}

#[test]
fn tasks_are_shared_by_every_worker_on_redis() {
    let redis = Redis::start();
    let server = Server::start("tasks", &["--workers", "4", "--kv", &redis.url()]);
    concurrent_creates_are_all_listed_once(&server);
}

#[test]
fn acknowledged_tasks_survive_kill_9() {
    let state = Scratch::new("durable");
    let args = ["--workers", "2", "--state-dir", state.arg()];
    let server = Server::start("tasks", &args);
    let acknowledged: Vec<u64> = (0..20)
        .map(|n| create_task(&server, &format!("keep {n}")).unwrap())
        .collect();
    // Dropping the server kills it with SIGKILL: no shutdown code runs.
    drop(server);
    assert!(state.path().join("kv.sqlite").exists());

    let restarted = Server::start("tasks", &args);
    let listed = list_tasks(&restarted);
    assert_eq!(ids(&listed), acknowledged);
    // The counter survived too: new ids follow the old ones.
    let next = create_task(&restarted, "after").unwrap();
    assert_eq!(next, acknowledged.last().unwrap() + 1);
}

#[test]
fn writes_that_share_transactions_survive_kill_9() {
    // Eight workers writing at once: their writes share transactions and fsyncs, and each is
    // acknowledged only once its transaction has committed.
    let state = Scratch::new("durable-group");
    let args = ["--workers", "8", "--state-dir", state.arg()];
    let server = Server::start("tasks", &args);
    concurrent_creates_are_all_listed_once(&server);
    let acknowledged = ids(&list_tasks(&server));
    drop(server);

    let restarted = Server::start("tasks", &args);
    assert_eq!(ids(&list_tasks(&restarted)), acknowledged);
    let next = create_task(&restarted, "after").unwrap();
    assert_eq!(next, acknowledged.last().unwrap() + 1);
}

#[test]
fn two_processes_share_one_redis() {
    let redis = Redis::start();
    let first = Server::start("tasks", &["--kv", &redis.url()]);
    let second = Server::start("tasks", &["--kv", &redis.url()]);
    let id = create_task(&first, "posted to the first").unwrap();
    let mut response = client()
        .get(second.url(&format!("/tasks/{id}")))
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let task: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(task["title"], "posted to the first");
    let other = create_task(&second, "posted to the second").unwrap();
    assert_eq!(ids(&list_tasks(&first)), [id, other]);
}

/// Two apps on one store: the kv guest, in its own namespace, looks where the tasks app keeps
/// its tasks and finds nothing; what it writes there, the tasks app never sees.
fn apps_cannot_see_each_others_keys(store_args: &[&str]) {
    let tasks = Server::start("tasks", store_args);
    let snoop = Server::start("kv", store_args);
    create_task(&tasks, "private").unwrap();

    let key = format!("{:020}", 1);
    let mut listing = client().get(snoop.url("/tasks/")).call().unwrap();
    let listing: Value =
        serde_json::from_str(&listing.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(listing["keys"], json!([]));
    let read = client()
        .get(snoop.url(&format!("/tasks/{key}")))
        .call()
        .unwrap();
    assert_eq!(read.status(), 404);

    let forged = json!({"id": 1, "title": "forged", "done": true}).to_string();
    let write = client()
        .put(snoop.url(&format!("/tasks/{key}")))
        .send(forged)
        .unwrap();
    assert_eq!(write.status(), 204);
    let listed = list_tasks(&tasks);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["title"], "private");
}

#[test]
fn apps_are_isolated_on_sqlite() {
    let state = Scratch::new("shared-sqlite");
    apps_cannot_see_each_others_keys(&["--state-dir", state.arg()]);
}

#[test]
fn apps_are_isolated_on_redis() {
    let redis = Redis::start();
    apps_cannot_see_each_others_keys(&["--kv", &redis.url()]);
}

#[test]
fn the_namespace_is_the_operators_choice() {
    let state = Scratch::new("namespace");
    let tasks = Server::start("tasks", &["--state-dir", state.arg()]);
    create_task(&tasks, "in the tasks namespace").unwrap();
    // The kv guest under the tasks app's namespace sees the tasks app's keys.
    let shared = Server::start(
        "kv",
        &["--state-dir", state.arg(), "--kv-namespace", "tasks"],
    );
    let mut listing = client().get(shared.url("/tasks/")).call().unwrap();
    let listing: Value =
        serde_json::from_str(&listing.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(listing["keys"], json!([format!("{:020}", 1)]));
}

#[test]
fn a_frozen_redis_costs_a_request_its_deadline_and_no_more() {
    let redis = Redis::start();
    let server = Server::start(
        "tasks",
        &["--workers", "1", "--timeout", "2", "--kv", &redis.url()],
    );
    create_task(&server, "before").unwrap();
    redis.freeze(true);
    let started = std::time::Instant::now();
    let status = client().get(server.url("/tasks")).call().unwrap().status();
    let took = started.elapsed();
    redis.freeze(false);
    // Stopped at the 2 s deadline: a 503 from the app or a 504 from the server, never
    // the 5 s of a Redis command's own timeout.
    assert!(matches!(status.as_u16(), 503 | 504), "{status}");
    assert!(
        took < std::time::Duration::from_secs(4),
        "the request took {took:?}"
    );
}

#[test]
fn redis_outage_answers_503_and_recovers_without_restart() {
    let mut redis = Redis::start();
    let server = Server::start("tasks", &["--workers", "2", "--kv", &redis.url()]);
    create_task(&server, "before").unwrap();

    redis.stop();
    for _ in 0..4 {
        let mut response = client().get(server.url("/tasks")).call().unwrap();
        assert_eq!(response.status(), 503);
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("backend failed"),
            "{body}"
        );
        let (status, _) = create_task(&server, "during").unwrap_err();
        assert_eq!(status, 503);
    }
    server.wait_for_log(&["key-value operation failed", "namespace=tasks"]);

    // The data lived in Redis's memory only, so it starts over; the server carries on.
    redis.restart();
    let after = create_task(&server, "after").unwrap();
    assert_eq!(ids(&list_tasks(&server)), [after]);
}

#[test]
fn a_database_that_cannot_be_opened_stops_the_server_at_startup() {
    let state = Scratch::new("unwritable");
    let file = state.path().join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let kv = format!("sqlite:{}/kv.sqlite", file.display());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args(["serve", crate::support::guest("tasks").to_str().unwrap()])
        .args(["--port", "0", "--no-cache", "--kv", &kv])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key-value store sqlite:"), "{stderr}");

    // An app that never uses key-value storage does not care.
    let hello = Server::start("hello", &["--kv", &kv]);
    assert_eq!(client().get(hello.url("/")).call().unwrap().status(), 200);
}

fn text(response: &mut ureq::http::Response<ureq::Body>) -> String {
    response.body_mut().read_to_string().unwrap()
}

/// Every operation of the interface, on one backend, through the kv guest.
fn every_operation_works(server: &Server) {
    let http = client();
    let url = |path: &str| server.url(path);

    assert_eq!(
        http.put(url("/b/greeting")).send("hello").unwrap().status(),
        204
    );
    let mut read = http.get(url("/b/greeting")).call().unwrap();
    assert_eq!(text(&mut read), "hello");
    assert_eq!(
        http.delete(url("/b/greeting")).call().unwrap().status(),
        204
    );
    assert_eq!(http.get(url("/b/greeting")).call().unwrap().status(), 404);

    // Increments from many clients at once: each sum is handed out once.
    let sums: BTreeSet<i64> = thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..10)
                        .map(|_| {
                            let mut response =
                                http.post(url("/b/counter?increment=2")).send("").unwrap();
                            text(&mut response).parse::<i64>().unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert_eq!(sums, (1..=40).map(|n| n * 2).collect());
    let mut negative = http
        .post(url("/b/counter?increment=-100"))
        .send("")
        .unwrap();
    assert_eq!(text(&mut negative), "-20");
    http.put(url("/b/word")).send("abc").unwrap();
    let mut not_a_number = http.post(url("/b/word?increment=1")).send("").unwrap();
    assert_eq!(not_a_number.status(), 400);
    assert!(text(&mut not_a_number).contains("not"));

    // Compare-and-swap appends from many clients at once: none is lost.
    thread::scope(|scope| {
        for letter in ["a", "b", "c", "d"] {
            let http = &http;
            scope.spawn(move || {
                for _ in 0..10 {
                    let response = http.post(url("/b/log?append")).send(letter).unwrap();
                    assert_eq!(response.status(), 200);
                }
            });
        }
    });
    let mut log = http.get(url("/b/log")).call().unwrap();
    let log = text(&mut log);
    assert_eq!(log.len(), 40);
    for letter in ['a', 'b', 'c', 'd'] {
        assert_eq!(log.chars().filter(|&c| c == letter).count(), 10);
    }

    // Batches, and a listing that takes more than one page.
    let pairs: serde_json::Map<String, Value> = (0..2500)
        .map(|n| (format!("key-{n:05}"), Value::String(format!("value {n}"))))
        .collect();
    let mut batch = http
        .post(url("/many/?batch"))
        .send(
            json!({"set": pairs, "get": ["key-00007", "missing"], "delete": ["key-00001"]})
                .to_string(),
        )
        .unwrap();
    let batch: Value = serde_json::from_str(&text(&mut batch)).unwrap();
    assert_eq!(
        batch["got"],
        json!({"key-00007": "value 7", "missing": null})
    );
    let mut listing = http.get(url("/many/")).call().unwrap();
    let listing: Value = serde_json::from_str(&text(&mut listing)).unwrap();
    let keys: BTreeSet<&str> = listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2499);
    assert!(!keys.contains("key-00001"));
    assert!(
        listing["pages"].as_u64().unwrap() >= 2,
        "{}",
        listing["pages"]
    );

    // Bucket names are checked; buckets are separate.
    assert_eq!(http.get(url("/no:such/key")).call().unwrap().status(), 404);
    assert_eq!(
        http.get(url("/other/key-00007")).call().unwrap().status(),
        404
    );
}

#[test]
fn every_operation_on_memory() {
    let server = Server::start("kv", &["--workers", "4", "--kv", "memory"]);
    every_operation_works(&server);
}

#[test]
fn every_operation_on_sqlite() {
    let server = Server::start("kv", &["--workers", "4"]);
    every_operation_works(&server);
}

#[test]
fn every_operation_on_redis() {
    let redis = Redis::start();
    let server = Server::start("kv", &["--workers", "4", "--kv", &redis.url()]);
    every_operation_works(&server);
}

#[test]
fn keys_and_values_past_the_limits_are_refused() {
    let server = Server::start(
        "kv",
        &[
            "--kv",
            "memory",
            "--kv-max-key",
            "16",
            "--kv-max-value",
            "1KiB",
        ],
    );
    let http = client();
    let long_key = "k".repeat(17);
    let mut response = http
        .put(server.url(&format!("/b/{long_key}")))
        .send("v")
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        text(&mut response).trim(),
        "the key is 17 bytes, past the limit of 16"
    );
    let mut response = http
        .put(server.url("/b/big"))
        .send(vec![b'x'; 1025])
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        text(&mut response).trim(),
        "the value is 1025 bytes, past the limit of 1024"
    );
    // At the limits, both are fine.
    let key = "k".repeat(16);
    let put = http
        .put(server.url(&format!("/b/{key}")))
        .send(vec![b'x'; 1024])
        .unwrap();
    assert_eq!(put.status(), 204);
    let mut read = http.get(server.url(&format!("/b/{key}"))).call().unwrap();
    assert_eq!(text(&mut read).len(), 1024);
}

#[test]
fn a_guest_cannot_pile_up_host_memory_through_the_store() {
    let server = Server::start("kv", &["--kv", "memory", "--kv-max-value", "1MiB"]);
    let http = client();

    // Refused swaps give their handles back: far more of them than a worker may hold at once.
    for _ in 0..100 {
        let mut refused = http
            .post(server.url("/b/log?append"))
            .send(vec![b'x'; (1 << 20) + 1])
            .unwrap();
        assert_eq!(refused.status(), 400);
        assert!(text(&mut refused).contains("past the limit"));
    }
    let appended = http.post(server.url("/b/log?append")).send("x").unwrap();
    assert_eq!(appended.status(), 200);

    // One large value named many times in one batch: the host stops gathering.
    let put = http
        .put(server.url("/b/big"))
        .send(vec![b'v'; 1 << 20])
        .unwrap();
    assert_eq!(put.status(), 204);
    let mut batch = http
        .post(server.url("/b/?batch"))
        .send(json!({ "get": vec!["big"; 200] }).to_string())
        .unwrap();
    assert_eq!(batch.status(), 400);
    assert!(
        text(&mut batch).contains("the values come to more than"),
        "the batch must be refused"
    );
    let mut read = http.get(server.url("/b/log")).call().unwrap();
    assert_eq!(text(&mut read), "x");
}

#[test]
fn a_task_too_large_to_store_is_a_client_error() {
    let server = Server::start("tasks", &["--kv", "memory", "--kv-max-value", "1KiB"]);
    let (status, body) = create_task(&server, &"t".repeat(2000)).unwrap_err();
    assert_eq!(status, 400);
    assert!(body.contains("past the limit of 1024"), "{body}");
    assert!(create_task(&server, "small").is_ok());
}

#[test]
fn a_task_past_the_apps_quota_is_507() {
    // Two keys: the task counter and the first task.
    let server = Server::start("tasks", &["--kv", "memory", "--kv-quota-keys", "2"]);
    assert!(create_task(&server, "fits").is_ok());
    let (status, body) = create_task(&server, "one too many").unwrap_err();
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("quota is used up"), "{body}");
}

#[test]
fn an_app_that_never_uses_the_store_may_have_any_file_name() {
    let scratch = Scratch::new("names");
    let renamed = scratch.path().join("hello app@2.wasm");
    std::fs::copy(crate::support::guest("hello"), &renamed).unwrap();
    let server = Server::start_path(&renamed, &[]);
    assert_eq!(client().get(server.url("/")).call().unwrap().status(), 200);

    let tasks = scratch.path().join("my tasks.wasm");
    std::fs::copy(crate::support::guest("tasks"), &tasks).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wasm-gw"))
        .args([
            "serve",
            tasks.to_str().unwrap(),
            "--port",
            "0",
            "--no-cache",
        ])
        .args(["--kv", "memory"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kv-namespace"), "{stderr}");
    let named = Server::start_path(&tasks, &["--kv", "memory", "--kv-namespace", "tasks"]);
    assert!(create_task(&named, "named").is_ok());
}
