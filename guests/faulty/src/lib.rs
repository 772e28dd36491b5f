//! Routes that each do one wrong thing, for the host's fault tests: `/trap`, `/panic`,
//! `/no-start`, `/double-start`, `/bad-header`, `/hop-header`, `/wrong-length`,
//! `/short-write`, `/long-write`, `/big-header`, `/loop` and `/alloc` (`?mb=N`: N MiB, then
//! answers); anything else answers
//! 200 `ok`. `/sleep?ms=N` is healthy but slow. `/wait-forever` and `/block-forever` wait on
//! a pollable that never becomes ready, through `wasi:io/poll`'s `poll` and `block`.
//! `/config?key=K` answers the wasi:config value the operator set for K; `/fetch?url=U`
//! GETs U through the SDK's outbound client.
//! `/store/fill` and `/store/delete` write and delete keys by the thousand, or (`whole=1`)
//! in one call past the batch limit. `/flood?mb=N` writes N MiB to stdout, and `/forge` a
//! line with control characters; `/alias?n=N&mb=M` returns N chunks that all point at one
//! M MiB buffer. `/served` counts the requests this instance has served,
//! which shows when an instance is replaced. `/keep-input` keeps its request's input
//! handle, and `/kept-input` then reads through it, the ended request's.
//! The `/escape/...` routes try to leave the sandbox (read a file, list a directory, read
//! the environment, open a TCP connection, plant a symlink) and say whether they could. It implements the WSGI
//! contract directly, without the SDK's `App`, because several faults are ones the SDK
//! prevents.

use std::sync::atomic::{AtomicU64, Ordering};

use wasm_gw_sdk::Environ;
use wasm_gw_sdk::bindings::exports::wasm_gw::wsgi::handler::{Body, Guest};
use wasm_gw_sdk::bindings::wasm_gw::wsgi::request::{InputError, InputStream};
use wasm_gw_sdk::kv::Bucket;
use wasm_gw_sdk::{start_response, write};

struct Faulty;

/// Requests this instance has served: module state, kept as long as the instance lives.
static SERVED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// An input handle kept past its request by `/keep-input`.
    static KEPT_INPUT: std::cell::Cell<Option<InputStream>> = const { std::cell::Cell::new(None) };
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn ok_body(text: &str) -> Result<Body, String> {
    Ok(Body::Chunks(vec![text.as_bytes().to_vec()]))
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Makes a symlink at `path`, in a granted directory, to `target`, through `wasi:filesystem`
/// itself (std's is unstable).
fn symlink(path: &str, target: &str) -> std::io::Result<String> {
    let (dir, rest) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find_map(|(dir, name)| Some((dir, path.strip_prefix(name.as_str())?.to_owned())))
        .ok_or_else(|| std::io::Error::other("no grant holds it"))?;
    dir.symlink_at(target, rest.trim_start_matches('/'))
        .map_err(|code| std::io::Error::other(format!("{code:?}")))?;
    Ok(format!("{path} -> {target}"))
}

fn probe(attempt: std::io::Result<String>) -> Result<Body, String> {
    start_response("200 OK", &headers(&[("Content-Type", "text/plain")]), None)
        .map_err(|e| format!("{e:?}"))?;
    match attempt {
        Ok(what) => ok_body(&format!("allowed: {what}\n")),
        Err(error) => ok_body(&format!("denied: {error}\n")),
    }
}

impl Guest for Faulty {
    type BodyStream = wasm_gw_sdk::StreamState;

    fn application(environ: Environ, input: InputStream) -> Result<Body, String> {
        let plain = headers(&[("Content-Type", "text/plain")]);
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        match environ.path_info() {
            "/served" => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&served.to_string())
            }
            // Keeps this request's input handle, which names the request, for the next.
            "/keep-input" => {
                KEPT_INPUT.set(Some(input));
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("kept\n")
            }
            // Reads the body of the request kept above, which has ended: the host must say
            // `stale`, and never hand over this request's body in its place.
            "/kept-input" => {
                let kept = KEPT_INPUT
                    .take()
                    .ok_or("nothing kept: GET /keep-input first")?;
                let answer = match kept.read(1 << 16) {
                    Err(InputError::Stale) => "stale".to_owned(),
                    other => format!("{other:?}"),
                };
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&answer)
            }
            // The last byte of the 4 GiB address space is past any memory the sandbox allows.
            "/trap" => {
                let byte = unsafe { std::ptr::read_volatile(u32::MAX as usize as *const u8) };
                ok_body(&byte.to_string())
            }
            "/panic" => panic!("faulty guest panics on purpose"),
            // Returns a body without ever calling start-response.
            "/no-start" => ok_body("no status\n"),
            "/double-start" => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                // A second call without exc-info is refused; the app ignores that.
                let _ = start_response("201 Created", &plain, None);
                ok_body("started twice\n")
            }
            // PEP 3333's error path: a second start-response with exc-info replaces the first
            // while nothing is sent; once the head is out, it is refused.
            "/exc-info" => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                start_response(
                    "503 Service Unavailable",
                    &plain,
                    Some("ValueError: the database is down"),
                )
                .map_err(|e| format!("{e:?}"))?;
                ok_body("handled\n")
            }
            // An error page, the first start-response carrying the error it answers.
            "/error-page" => {
                start_response(
                    "500 Internal Server Error",
                    &plain,
                    Some("Traceback (most recent call last):\n  File \"app.py\", line 1\nZeroDivisionError: division by zero\n"),
                )
                .map_err(|e| format!("{e:?}"))?;
                ok_body("sorry\n")
            }
            "/late-exc-info" => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                write(b"partial").map_err(|e| format!("{e:?}"))?;
                match start_response(
                    "500 Internal Server Error",
                    &plain,
                    Some("ValueError: too late"),
                ) {
                    Ok(()) => ok_body("replaced after the head was sent\n"),
                    Err(error) => Err(format!("re-raised: {error:?}")),
                }
            }
            "/bad-header" => {
                let _ = start_response(
                    "200 OK",
                    &headers(&[("X-Injected", "a\r\nSet-Cookie: x=1")]),
                    None,
                );
                ok_body("bad header\n")
            }
            // A header value of `kb` KiB (100 unless given).
            "/big-header" => {
                let kib: usize = query_value(environ.query_string(), "kb")
                    .and_then(|kb| kb.parse().ok())
                    .unwrap_or(100);
                let value = "x".repeat(kib << 10);
                let _ = start_response("200 OK", &headers(&[("X-Big", &value)]), None);
                ok_body("big header\n")
            }
            // A reason phrase with a char past ASCII, which goes out as one latin-1 byte.
            "/latin1" => {
                start_response("200 Caf\u{e9}", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("latin-1\n")
            }
            "/hop-header" => {
                let _ = start_response("200 OK", &headers(&[("Connection", "close")]), None);
                ok_body("hop header\n")
            }
            // Declares 10 bytes, returns 5 whole: caught before anything is sent.
            "/wrong-length" => {
                start_response("200 OK", &headers(&[("Content-Length", "10")]), None)
                    .map_err(|e| format!("{e:?}"))?;
                ok_body("12345")
            }
            // Declares 10 bytes, writes 5: the client gets 5 and a closed connection.
            "/short-write" => {
                start_response("200 OK", &headers(&[("Content-Length", "10")]), None)
                    .map_err(|e| format!("{e:?}"))?;
                let _ = write(b"12345");
                Ok(Body::Chunks(Vec::new()))
            }
            // Declares 3 bytes, writes 10: the client gets 3 and a closed connection.
            "/long-write" => {
                start_response("200 OK", &headers(&[("Content-Length", "3")]), None)
                    .map_err(|e| format!("{e:?}"))?;
                let _ = write(b"1234567890");
                Ok(Body::Chunks(Vec::new()))
            }
            // Sandbox probes: each answers `allowed: ...` or `denied: <the error>`.
            "/escape/read" => {
                let path = query_value(environ.query_string(), "path").unwrap_or("/etc/passwd");
                probe(std::fs::read_to_string(path).map(|text| text.chars().take(64).collect()))
            }
            "/escape/list" => {
                let path = query_value(environ.query_string(), "path").unwrap_or("/");
                probe(std::fs::read_dir(path).map(|entries| format!("{} entries", entries.count())))
            }
            // Makes a symlink at `path` to `target`.
            "/escape/symlink" => {
                let path = query_value(environ.query_string(), "path").unwrap_or("/data/link");
                let target = query_value(environ.query_string(), "target").unwrap_or("/etc/passwd");
                probe(symlink(path, target))
            }
            "/fetch" => {
                // GET ?url=U through the SDK's client: `STATUS BODY`, or the error.
                let url = query_value(environ.query_string(), "url").unwrap_or("");
                let text = match wasm_gw_sdk::http::get(url) {
                    Ok(response) => format!(
                        "{} {}",
                        response.status,
                        String::from_utf8_lossy(response.bytes())
                    ),
                    Err(error) => error.to_string(),
                };
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&text)
            }
            "/config" => {
                // The value the operator set for `key`, through wasi:config.
                let key = query_value(environ.query_string(), "key").unwrap_or("");
                let text = match wasm_gw_sdk::config::get(key) {
                    Ok(Some(value)) => format!("{key}={value}\n"),
                    Ok(None) => format!("{key} unset\n"),
                    Err(error) => format!("{error}\n"),
                };
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&text)
            }
            "/escape/env" => {
                let vars: Vec<String> = std::env::vars()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                probe(if vars.is_empty() {
                    Err(std::io::Error::other("empty environment"))
                } else {
                    Ok(vars.join(" "))
                })
            }
            "/escape/tcp" => {
                let address = query_value(environ.query_string(), "addr").unwrap_or("127.0.0.1:80");
                probe(
                    std::net::TcpStream::connect(address)
                        .map(|_| format!("connected to {address}")),
                )
            }
            // A slow but healthy request, for the shutdown tests.
            "/sleep" => {
                let ms: u64 = query_value(environ.query_string(), "ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(1000);
                eprintln!("sleeping {ms} ms");
                std::thread::sleep(std::time::Duration::from_millis(ms));
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("slept\n")
            }
            // A timer for the end of time, waited on through `poll` and through `block`.
            "/wait-forever" => {
                let never = wasip2::clocks::monotonic_clock::subscribe_duration(u64::MAX);
                wasip2::io::poll::poll(&[&never]);
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("the end of time came\n")
            }
            "/block-forever" => {
                wasip2::clocks::monotonic_clock::subscribe_duration(u64::MAX).block();
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("the end of time came\n")
            }
            // Floods stdout with `mb` MiB of 1 KiB lines.
            "/flood" => {
                let mib: usize = query_value(environ.query_string(), "mb")
                    .and_then(|mb| mb.parse().ok())
                    .unwrap_or(50);
                let line = "x".repeat(1023);
                for _ in 0..mib * 1024 {
                    println!("{line}");
                }
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("flooded\n")
            }
            // A line that would rewrite itself on a terminal, and make grep call the log binary.
            "/forge" => {
                println!("innocent\rINFO wasm_gw: forged line\0 end\x07");
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("forged\n")
            }
            // Sets keys start..start+count of the `flood` bucket to values of `size` bytes (16
            // unless given), a thousand at a time; answers 507 with the store's refusal.
            "/store/fill" => {
                let number = |name, default| {
                    query_value(environ.query_string(), name)
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(default)
                };
                let (start, count, size) =
                    (number("start", 0), number("count", 0), number("size", 16));
                let flood = Bucket::open("flood").map_err(|e| e.to_string())?;
                let pairs: Vec<(String, Vec<u8>)> = (start..start + count)
                    .map(|n| (format!("key-{n:08}"), vec![b'v'; size]))
                    .collect();
                let (status, text) = match flood.set_many(&pairs) {
                    Ok(()) => ("200 OK", "filled\n".to_owned()),
                    Err(error) => ("507 Insufficient Storage", format!("{error}\n")),
                };
                start_response(status, &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&text)
            }
            // Deletes keys 0..count of the `flood` bucket: one call of them all when `whole`,
            // else a thousand at a time.
            "/store/delete" => {
                let count: usize = query_value(environ.query_string(), "count")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let keys: Vec<String> = (0..count).map(|n| format!("key-{n:08}")).collect();
                let flood = Bucket::open("flood").map_err(|e| e.to_string())?;
                let deleted = match query_value(environ.query_string(), "whole") {
                    Some(_) => {
                        use wasm_gw_sdk::bindings::wasi::keyvalue::{batch, store};
                        store::open("flood")
                            .and_then(|raw| batch::delete_many(&raw, &keys))
                            .map_err(|e| format!("{e:?}"))
                    }
                    None => flood.delete_many(&keys).map_err(|e| e.to_string()),
                };
                let (status, text) = match deleted {
                    Ok(()) => ("200 OK", "deleted\n".to_owned()),
                    Err(error) => ("400 Bad Request", format!("{error}\n")),
                };
                start_response(status, &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&text)
            }
            // Returns `n` chunks that all alias one buffer of `mb` MiB: the guest holds `mb`
            // MiB, and a host that copies each chunk `n` times as much.
            "/alias" => {
                let number = |name, default| {
                    query_value(environ.query_string(), name)
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(default)
                };
                let (n, len) = (number("n", 64), number("mb", 16) << 20);
                let mut buffer = std::mem::ManuallyDrop::new(vec![b'a'; len]);
                let ptr = buffer.as_mut_ptr();
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                // SAFETY: none; this is the attack. Only the host reads these.
                let chunks = (0..n)
                    .map(|_| unsafe { Vec::from_raw_parts(ptr, len, len) })
                    .collect();
                Ok(Body::Chunks(chunks))
            }
            "/loop" => {
                let mut spins: u64 = 0;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "/alloc" => {
                let megabytes = query_value(environ.query_string(), "mb")
                    .and_then(|mb| mb.parse::<usize>().ok());
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                while megabytes.is_none_or(|mb| hoard.len() < mb) {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body(&format!("held {} MiB\n", hoard.len()))
            }
            _ => {
                start_response("200 OK", &plain, None).map_err(|e| format!("{e:?}"))?;
                ok_body("ok")
            }
        }
    }
}

wasm_gw_sdk::bindings::export!(Faulty with_types_in wasm_gw_sdk::bindings);
