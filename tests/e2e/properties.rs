//! Properties of the server under generated input: mutated requests never break it, and a
//! request parses the same however its bytes are split.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{RawResponse, Server};

/// Valid requests that the mutations start from.
const SEEDS: [&[u8]; 4] = [
    b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Echo-Environ: 1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"GET http://a/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { at: usize },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b' '),
        Just(b':'),
        Just(b'\0'),
        Just(b'0'),
        Just(b'f'),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), interesting).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn apply(request: &mut Vec<u8>, mutation: &Mutation) {
    if request.is_empty() {
        return;
    }
    let len = request.len();
    match *mutation {
        Mutation::Flip { at, bit } => request[at % len] ^= 1 << bit,
        Mutation::Insert { at, byte } => request.insert(at % (len + 1), byte),
        Mutation::Delete { at } => {
            request.remove(at % len);
        }
        Mutation::Truncate { at } => request.truncate(at % len),
        Mutation::Duplicate { at, len: span } => {
            let start = at % len;
            let piece: Vec<u8> = request[start..(start + span).min(len)].to_vec();
            request.splice(start..start, piece);
        }
    }
}

/// Checks that `bytes` is a sequence of well-formed HTTP/1.1 responses, the last of which
/// may be delimited by the close. Returns a description of the first flaw.
fn well_formed(bytes: &[u8]) -> Result<usize, String> {
    let mut reader = BufReader::new(bytes);
    let mut responses = 0;
    while !reader.fill_buf().unwrap().is_empty() {
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let code: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        if !status_line.ends_with("\r\n") {
            return Err(format!("status line {status_line:?} without CRLF"));
        }
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            if !line.ends_with(b"\r\n") {
                return Err(format!("header line {line:?} without CRLF"));
            }
            if line == b"\r\n" {
                break;
            }
            let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
            let (name, value) = text.split_once(':').ok_or("header without colon")?;
            match name {
                "content-length" => {
                    length = Some(value.trim().parse::<usize>().map_err(|_| "bad length")?)
                }
                "transfer-encoding" => chunked = value.trim() == "chunked",
                _ => {}
            }
        }
        responses += 1;
        if code == 100 || code == 204 || code == 304 {
            continue;
        }
        if let Some(length) = length {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .map_err(|_| "body shorter than Content-Length")?;
        } else if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let size =
                    usize::from_str_radix(size.trim_end(), 16).map_err(|_| "bad chunk size")?;
                let mut data = vec![0; size + 2];
                reader
                    .read_exact(&mut data)
                    .map_err(|_| "chunk cut short")?;
                if size == 0 {
                    break;
                }
            }
        } else {
            reader.read_to_end(&mut Vec::new()).unwrap();
        }
    }
    Ok(responses)
}

#[test]
fn mutated_requests_get_well_formed_answers_or_a_clean_close() {
    let server = Server::start("echo", &["--keep-alive", "2"]);
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..SEEDS.len(), prop::collection::vec(mutation(), 1..4));
    runner
        .run(&strategy, |(seed, mutations)| {
            let mut request = SEEDS[seed].to_vec();
            for mutation in &mutations {
                apply(&mut request, mutation);
            }
            let mut stream = server.connect();
            let _ = stream.write_all(&request);
            // The end of input tells the server no more is coming.
            let _ = stream.shutdown(Shutdown::Write);
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            prop_assert!(
                well_formed(&answer).is_ok(),
                "{:?} for {:?}",
                well_formed(&answer),
                String::from_utf8_lossy(&request)
            );
            Ok(())
        })
        .unwrap();
    // Still serving.
    let probe = server.raw(b"GET /alive HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(probe.status, 200);
}

#[test]
fn a_request_split_anywhere_is_answered_the_same() {
    let server = Server::start("echo", &[]);
    let request = SEEDS[2];
    let reference = server.raw(request);
    assert_eq!(reference.status, 200);
    for split in 1..request.len() {
        let mut stream = server.connect();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&request[..split]).unwrap();
        stream.flush().unwrap();
        stream.write_all(&request[split..]).unwrap();
        let response = RawResponse::read(&mut BufReader::new(stream), false);
        assert_eq!(response.status, 200, "split at {split}");
        assert_eq!(response.body, reference.body, "split at {split}");
        assert_eq!(
            response.header("x-echo-meta"),
            reference.header("x-echo-meta"),
            "split at {split}"
        );
    }
}
