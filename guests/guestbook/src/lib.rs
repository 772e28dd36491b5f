//! A guestbook: `POST /entries` with `{"name": ..., "message": ...}` keeps an entry that
//! every worker sees and that outlives restarts; `GET /entries` lists them, oldest first.

use wasm_gw_sdk::kv::Bucket;
use wasm_gw_sdk::serde::{Deserialize, Serialize};
use wasm_gw_sdk::serde_json::{self, json};
use wasm_gw_sdk::{App, Request, Response, Result};

#[derive(Serialize, Deserialize)]
#[serde(crate = "wasm_gw_sdk::serde")]
struct Entry {
    name: String,
    message: String,
}

#[derive(Default)]
struct Guestbook;

impl App for Guestbook {
    fn handle(&mut self, mut request: Request) -> Result<Response> {
        let entries = Bucket::open("entries")?;
        match (request.method(), request.path()) {
            ("POST", "/entries") => {
                let body = request.body().read_all()?;
                let Ok(entry) = serde_json::from_slice::<Entry>(&body) else {
                    let error = json!({"error": "send {\"name\": ..., \"message\": ...}"});
                    return Ok(Response::json(400, &error));
                };
                // A number no other worker gets, whose key sorts in order.
                let id = entries.increment("next-id", 1)?;
                entries.set_json(&format!("entry:{id:010}"), &entry)?;
                Ok(Response::json(201, &json!({"id": id})))
            }
            ("GET", "/entries") => {
                let mut keys = entries.keys()?;
                keys.retain(|key| key.starts_with("entry:"));
                keys.sort();
                let found: Vec<Option<Entry>> = entries.get_many_json(&keys)?;
                let list: Vec<Entry> = found.into_iter().flatten().collect();
                Ok(Response::json(200, &list))
            }
            _ => Ok(Response::json(404, &json!({"error": "no such route"}))),
        }
    }
}

wasm_gw_sdk::export_app!(Guestbook);
