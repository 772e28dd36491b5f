//! A JSON tasks API: create, list, read, update and delete tasks, and import a list of
//! them from another service (`POST /tasks/import` with `{"url": ...}`, which the operator
//! must allow with `--allow-outbound`).
//!
//! Tasks live in the host's key-value store, so every worker sees the same list and it
//! survives restarts. Ids come from an atomic counter; each task is one JSON value.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasm_gw_sdk::kv::{self, Bucket};
use wasm_gw_sdk::{App, Request, Response, Result};

#[derive(Serialize, Deserialize)]
struct Task {
    id: u64,
    title: String,
    done: bool,
}

/// Where the tasks are, by id.
const TASKS: &str = "tasks";
/// Where the id counter is.
const COUNTERS: &str = "counters";

/// Keys are zero-padded so that the store's own order is the order of ids.
fn task_key(id: u64) -> String {
    format!("{id:020}")
}

#[derive(Default)]
struct Tasks;

impl App for Tasks {
    fn handle(&mut self, mut request: Request) -> Result<Response> {
        match route(&mut request) {
            Ok(response) => Ok(response),
            // The store is down: the client may retry, and the log says why.
            Err(Failure::Store(kv::Error::Unavailable(why))) => {
                eprintln!("tasks: key-value store: {why}");
                Ok(error(503, &format!("storage unavailable: {why}")).header("Retry-After", "1"))
            }
            // The app's share of the store is full.
            Err(Failure::Store(refusal)) if refusal.is_quota_exceeded() => {
                Ok(error(507, &format!("cannot store this: {refusal}")))
            }
            // The store refused what the request asked to store, such as a huge title.
            Err(Failure::Store(kv::Error::Refused(why))) => {
                Ok(error(400, &format!("cannot store this: {why}")))
            }
            Err(Failure::Store(other)) => Err(other.into()),
            Err(Failure::Other(why)) => Err(why),
        }
    }
}

enum Failure {
    Store(kv::Error),
    Other(wasm_gw_sdk::Error),
}

impl From<kv::Error> for Failure {
    fn from(error: kv::Error) -> Failure {
        Failure::Store(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::Other(error.into())
    }
}

fn route(request: &mut Request) -> Result<Response, Failure> {
    let path = request.path().trim_end_matches('/').to_owned();
    let method = request.method().to_owned();
    let Some(rest) = path.strip_prefix("/tasks") else {
        return Ok(error(404, "not found"));
    };
    let tasks = Bucket::open(TASKS)?;
    if rest.is_empty() {
        return match method.as_str() {
            "GET" | "HEAD" => Ok(json_response(200, &list(&tasks)?)),
            "POST" => create(&tasks, request),
            _ => Ok(method_not_allowed("GET, HEAD, POST")),
        };
    }
    if rest == "/import" {
        return match method.as_str() {
            "POST" => import(&tasks, request),
            _ => Ok(method_not_allowed("POST")),
        };
    }
    let Some(id) = rest.strip_prefix('/').and_then(|id| id.parse::<u64>().ok()) else {
        return Ok(error(404, "not found"));
    };
    let key = task_key(id);
    let missing = || error(404, &format!("no task {id}"));
    match method.as_str() {
        "GET" | "HEAD" => Ok(match tasks.get_json::<Task>(&key)? {
            Some(task) => json_response(200, &task),
            None => missing(),
        }),
        "PATCH" => update(&tasks, &key, request).map(|response| response.unwrap_or_else(missing)),
        "DELETE" => Ok(if tasks.exists(&key)? {
            tasks.delete(&key)?;
            Response::new(204)
        } else {
            missing()
        }),
        _ => Ok(method_not_allowed("GET, HEAD, PATCH, DELETE")),
    }
}

/// Every task, ordered by id.
fn list(tasks: &Bucket) -> Result<Vec<Task>, Failure> {
    let mut keys = tasks.keys()?;
    // A listing may name a key twice while the bucket grows.
    keys.sort_unstable();
    keys.dedup();
    // A task deleted between the listing and the read is simply gone.
    Ok(tasks
        .get_many_json::<Task>(&keys)?
        .into_iter()
        .flatten()
        .collect())
}

fn create(tasks: &Bucket, request: &mut Request) -> Result<Response, Failure> {
    let fields = match read_object(request)? {
        Ok(fields) => fields,
        Err(response) => return Ok(response),
    };
    let Some(Value::String(title)) = fields.get("title") else {
        return Ok(error(400, "\"title\" must be a string"));
    };
    let done = match fields.get("done") {
        None => false,
        Some(Value::Bool(done)) => *done,
        Some(_) => return Ok(error(400, "\"done\" must be true or false")),
    };
    let task = add(tasks, title.clone(), done)?;
    // Under a mount, the task's URL starts with the mount's prefix.
    let location = format!("{}/tasks/{}", request.environ().script_name(), task.id);
    Ok(json_response(201, &task).header("Location", location))
}

/// Stores a new task under the next id.
fn add(tasks: &Bucket, title: String, done: bool) -> Result<Task, Failure> {
    let id = Bucket::open(COUNTERS)?.increment(TASKS, 1)?;
    let Ok(id) = u64::try_from(id) else {
        return Err(Failure::Other(
            format!("the task counter is negative: {id}").into(),
        ));
    };
    let task = Task { id, title, done };
    tasks.set_json(&task_key(task.id), &task)?;
    Ok(task)
}

/// Fetches `{"url": ...}`, a JSON list of `{"title", "done"?}`, and adds each as a task.
fn import(tasks: &Bucket, request: &mut Request) -> Result<Response, Failure> {
    use wasm_gw_sdk::http;
    let fields = match read_object(request)? {
        Ok(fields) => fields,
        Err(response) => return Ok(response),
    };
    let Some(Value::String(url)) = fields.get("url") else {
        return Ok(error(400, "\"url\" must be a string"));
    };
    let fetched = match http::Request::new("GET", url)
        .header("accept", "application/json")
        .timeout(std::time::Duration::from_secs(10))
        .send()
    {
        Ok(response) if response.status == 200 => response,
        Ok(response) => {
            return Ok(error(502, &format!("{url} answered {}", response.status)));
        }
        Err(http::Error::Denied) => {
            return Ok(error(403, "this server may not fetch from that URL"));
        }
        Err(http::Error::Timeout) => return Ok(error(504, &format!("{url} took too long"))),
        Err(why) => return Ok(error(502, &why.to_string())),
    };
    let Ok(Value::Array(items)) = fetched.json::<Value>() else {
        return Ok(error(502, &format!("{url} did not answer a JSON list")));
    };
    let mut added = Vec::with_capacity(items.len());
    for item in items {
        let Some(Value::String(title)) = item.get("title") else {
            return Ok(error(502, "an imported task has no \"title\" string"));
        };
        let done = item.get("done").and_then(Value::as_bool).unwrap_or(false);
        added.push(add(tasks, title.clone(), done)?);
    }
    Ok(json_response(
        201,
        &json!({ "imported": added.len(), "tasks": added }),
    ))
}

/// Applies the request's changes to the task at `key`; `None` if there is no such task.
fn update(tasks: &Bucket, key: &str, request: &mut Request) -> Result<Option<Response>, Failure> {
    let fields = match read_object(request)? {
        Ok(fields) => fields,
        Err(response) => return Ok(Some(response)),
    };
    let title = match fields.get("title") {
        None => None,
        Some(Value::String(title)) => Some(title.clone()),
        Some(_) => return Ok(Some(error(400, "\"title\" must be a string"))),
    };
    let done = match fields.get("done") {
        None => None,
        Some(Value::Bool(done)) => Some(*done),
        Some(_) => return Ok(Some(error(400, "\"done\" must be true or false"))),
    };
    // Compare-and-swap: a concurrent PATCH of another field is never lost.
    let updated = tasks.update_json::<Task>(key, |task| {
        let mut task = task?;
        if let Some(title) = &title {
            task.title = title.clone();
        }
        if let Some(done) = done {
            task.done = done;
        }
        Some(task)
    })?;
    Ok(updated.map(|task| json_response(200, &task)))
}

/// Reads the body as a JSON object, or the 400 response that says why it is not one.
fn read_object(
    request: &mut Request,
) -> Result<Result<serde_json::Map<String, Value>, Response>, Failure> {
    let body = request.body().read_all()?;
    Ok(match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(error(400, "the body must be a JSON object")),
        Err(why) => Err(error(400, &format!("invalid JSON: {why}"))),
    })
}

fn json_response(status: u16, value: &impl Serialize) -> Response {
    Response::json(status, value)
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn method_not_allowed(allow: &str) -> Response {
    error(405, "method not allowed").header("Allow", allow)
}

wasm_gw_sdk::export_app!(Tasks);
