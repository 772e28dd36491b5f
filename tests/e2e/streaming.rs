//! Bodies that never sit in host memory whole.

use std::io::{BufReader, Write};

use crate::support::{RawResponse, Server};

const MIB: u64 = 1024 * 1024;

#[test]
fn a_200_mb_upload_streams_through_a_bounded_host() {
    let server = Server::start("stream", &["--workers", "1"]);
    // Warm up, so the baseline includes what every request allocates.
    assert_eq!(
        server
            .raw(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
            .text(),
        "1\n"
    );
    let (baseline, _) = server.memory();

    let total = 200 * MIB;
    let mut stream = server.connect();
    write!(
        stream,
        "POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let block = vec![0x5a; MIB as usize];
    for _ in 0..200 {
        stream.write_all(&block).unwrap();
    }
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), format!("{total}\n"));

    let (_, peak) = server.memory();
    let growth = peak.saturating_sub(baseline);
    assert!(growth < 50 * MIB, "host RSS grew by {} MiB", growth / MIB);
}

#[test]
fn a_chunked_upload_streams_too() {
    let server = Server::start("stream", &[]);
    let mut stream = server.connect();
    stream
        .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let block = vec![b'z'; 100_000];
    for _ in 0..100 {
        write!(stream, "{:x}\r\n", block.len()).unwrap();
        stream.write_all(&block).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    assert_eq!(response.text(), "10000000\n");
}

#[test]
fn read_line_finds_lines_across_chunks() {
    let server = Server::start("stream", &[]);
    let long_line = "x".repeat(100);
    // Lines split across chunk boundaries, and one longer than the app's 64-byte limit.
    let body = format!("one\ntw|o\nthr|ee\n{long_line}\nlast");
    let mut request =
        b"POST /lines HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.split('|') {
        request.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = server.raw(&request);
    assert_eq!(response.status, 200);
    // one, two, three, the long line in two reads (64 + 37 with its newline), last.
    assert_eq!(response.text(), "reads=6 longest=64\n");
}

#[test]
fn a_stream_to_a_fast_client_ends_at_its_wall_time() {
    let server = Server::start("stream", &["--workers", "1", "--stream-timeout", "1"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /count?n=1000000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Read as fast as it comes: the app itself is quick, and waits on this client are off
    // its clock, so only the wall time can stop it.
    let body = crate::support::read_to_close(&mut stream);
    assert!(body.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(!body.ends_with(b"0\r\n\r\n"), "the stream was not cut off");
    server.wait_for_log(&["ERROR", "stream stopped after running for 1s"]);
    // The worker serves again.
    let response = server.raw(b"GET /count?n=3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "1\n2\n3\n");
}
