//! The key-value store over HTTP, for the host's tests: every `wasi:keyvalue` operation on
//! any bucket of the app's namespace.
//!
//! - `GET /BUCKET/KEY`, `PUT /BUCKET/KEY` (the body is the value), `DELETE /BUCKET/KEY`
//! - `GET /BUCKET/` lists every key, as `{"keys": [...], "pages": N}`
//! - `POST /BUCKET/KEY?increment=N` adds N and answers the sum
//! - `POST /BUCKET/KEY?append` appends the body to the value by compare-and-swap
//! - `POST /BUCKET/?batch` takes `{"set": {KEY: VALUE}, "get": [KEY], "delete": [KEY]}`, runs
//!   them in that order as batches, and answers `{"got": {KEY: VALUE or null}}`
//!
//! A refused operation answers 400, a failed backend 503, each with the error's text.

use serde_json::{Map, Value, json};
use wasm_gw_sdk::kv::{self, Bucket};
use wasm_gw_sdk::{App, Request, Response, Result};

#[derive(Default)]
struct KeyValue;

impl App for KeyValue {
    fn handle(&mut self, mut request: Request) -> Result<Response> {
        let body = request.body().read_all()?;
        Ok(match route(&request, &body) {
            Ok(response) => response,
            Err(kv::Error::NoSuchBucket) => Response::text(404, "no such bucket\n"),
            Err(error @ kv::Error::Refused(_)) => Response::text(400, format!("{error}\n")),
            Err(error) => Response::text(503, format!("{error}\n")),
        })
    }
}

fn route(request: &Request, body: &[u8]) -> kv::Result<Response> {
    let path = request.path().trim_start_matches('/');
    let Some((bucket, key)) = path.split_once('/') else {
        return Ok(Response::text(404, "use /BUCKET/KEY\n"));
    };
    let bucket = Bucket::open(bucket)?;
    let query = request.query_string().to_owned();
    match (request.method(), key.is_empty()) {
        ("GET", true) => list(&bucket),
        ("POST", true) if query == "batch" => batch(&bucket, body),
        ("GET", false) => Ok(match bucket.get(key)? {
            Some(value) => Response::new(200).body(value),
            None => Response::text(404, "no such key\n"),
        }),
        ("PUT", false) => {
            bucket.set(key, body)?;
            Ok(Response::new(204))
        }
        ("DELETE", false) => {
            bucket.delete(key)?;
            Ok(Response::new(204))
        }
        ("POST", false) => {
            if let Some(delta) = query.strip_prefix("increment=") {
                let Ok(delta) = delta.parse() else {
                    return Ok(Response::text(400, "increment=N takes an integer\n"));
                };
                return Ok(Response::text(
                    200,
                    bucket.increment(key, delta)?.to_string(),
                ));
            }
            if query == "append" {
                let written = bucket.update(key, |current| {
                    let mut value = current.unwrap_or_default().to_vec();
                    value.extend_from_slice(body);
                    Some(value)
                })?;
                return Ok(Response::new(200).body(written.unwrap_or_default()));
            }
            Ok(Response::text(400, "POST takes ?increment=N or ?append\n"))
        }
        _ => Ok(Response::text(405, "method not allowed\n")),
    }
}

/// Every key, and how many pages the listing took.
fn list(bucket: &Bucket) -> kv::Result<Response> {
    let mut keys = Vec::new();
    let mut pages = 0;
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor.as_deref())?;
        pages += 1;
        keys.extend(page.keys);
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    Ok(json(&json!({ "keys": keys, "pages": pages })))
}

fn batch(bucket: &Bucket, body: &[u8]) -> kv::Result<Response> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return Ok(Response::text(400, "the body must be a JSON object\n"));
    };
    let strings = |name: &str| -> Vec<String> {
        match request.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    if let Some(Value::Object(pairs)) = request.get("set") {
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    value.as_str().unwrap_or("").as_bytes().to_vec(),
                )
            })
            .collect();
        bucket.set_many(&pairs)?;
    }
    let keys = strings("get");
    let values = bucket.get_many(&keys)?;
    let got: Map<String, Value> = keys
        .into_iter()
        .zip(values)
        .map(|(key, value)| {
            let value = value.map_or(Value::Null, |bytes| {
                Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            (key, value)
        })
        .collect();
    bucket.delete_many(&strings("delete"))?;
    Ok(json(&json!({ "got": got })))
}

fn json(value: &Value) -> Response {
    Response::new(200)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(value).expect("JSON values serialize"))
}

wasm_gw_sdk::export_app!(KeyValue);
