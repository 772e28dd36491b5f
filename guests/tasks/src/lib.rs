//! A JSON tasks API: create, list, read, update and delete tasks.
//!
//! Tasks live in the instance's memory, so every worker has its own list; serve it with
//! `--workers 1` for one shared list.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};
use wasm_gw_sdk::{App, Request, Response, Result};

#[derive(Clone, Serialize)]
struct Task {
    id: u64,
    title: String,
    done: bool,
}

#[derive(Default)]
struct Tasks {
    tasks: BTreeMap<u64, Task>,
    last_id: u64,
}

impl App for Tasks {
    fn handle(&mut self, mut request: Request) -> Result<Response> {
        let path = request.path().trim_end_matches('/').to_owned();
        let method = request.method().to_owned();
        let Some(rest) = path.strip_prefix("/tasks") else {
            return Ok(error(404, "not found"));
        };
        if rest.is_empty() {
            return Ok(match method.as_str() {
                "GET" | "HEAD" => json_response(200, &self.tasks.values().collect::<Vec<_>>()),
                "POST" => self.create(&mut request)?,
                _ => method_not_allowed("GET, HEAD, POST"),
            });
        }
        let Some(id) = rest.strip_prefix('/').and_then(|id| id.parse::<u64>().ok()) else {
            return Ok(error(404, "not found"));
        };
        if !self.tasks.contains_key(&id) {
            let allowed = matches!(method.as_str(), "GET" | "HEAD" | "PATCH" | "DELETE");
            return Ok(if allowed {
                error(404, &format!("no task {id}"))
            } else {
                method_not_allowed("GET, HEAD, PATCH, DELETE")
            });
        }
        Ok(match method.as_str() {
            "GET" | "HEAD" => json_response(200, &self.tasks[&id]),
            "PATCH" => self.update(id, &mut request)?,
            "DELETE" => {
                self.tasks.remove(&id);
                Response::new(204)
            }
            _ => method_not_allowed("GET, HEAD, PATCH, DELETE"),
        })
    }
}

impl Tasks {
    fn create(&mut self, request: &mut Request) -> Result<Response> {
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
        self.last_id += 1;
        let task = Task {
            id: self.last_id,
            title: title.clone(),
            done,
        };
        self.tasks.insert(task.id, task.clone());
        Ok(json_response(201, &task).header("Location", format!("/tasks/{}", task.id)))
    }

    fn update(&mut self, id: u64, request: &mut Request) -> Result<Response> {
        let fields = match read_object(request)? {
            Ok(fields) => fields,
            Err(response) => return Ok(response),
        };
        let title = match fields.get("title") {
            None => None,
            Some(Value::String(title)) => Some(title.clone()),
            Some(_) => return Ok(error(400, "\"title\" must be a string")),
        };
        let done = match fields.get("done") {
            None => None,
            Some(Value::Bool(done)) => Some(*done),
            Some(_) => return Ok(error(400, "\"done\" must be true or false")),
        };
        let task = self.tasks.get_mut(&id).expect("checked by the caller");
        if let Some(title) = title {
            task.title = title;
        }
        if let Some(done) = done {
            task.done = done;
        }
        Ok(json_response(200, task))
    }
}

/// Reads the body as a JSON object, or the 400 response that says why it is not one.
fn read_object(request: &mut Request) -> Result<Result<serde_json::Map<String, Value>, Response>> {
    let body = request.body().read_all()?;
    Ok(match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(error(400, "the body must be a JSON object")),
        Err(why) => Err(error(400, &format!("invalid JSON: {why}"))),
    })
}

fn json_response(status: u16, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("tasks serialize");
    Response::new(status)
        .header("Content-Type", "application/json")
        .body(body)
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn method_not_allowed(allow: &str) -> Response {
    error(405, "method not allowed").header("Allow", allow)
}

wasm_gw_sdk::export_app!(Tasks);
