//! Gunicorn's own request corpus (`tests/gunicorn/`), replayed over a socket against the
//! echo app: every case gets Gunicorn's verdict under its default settings, but where RFC
//! 9112 requires otherwise (`rfc-refuses` in the verdicts, and a missing Host).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;

use crate::support::{Server, workspace_root};

/// A `.http` file as Gunicorn's harness reads it: line breaks dropped, escapes decoded.
fn decode(text: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = text.iter().copied().filter(|&b| b != b'\n').collect();
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = &text[..];
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'\\' {
            bytes.push(byte);
            continue;
        }
        let (decoded, tail) = match rest {
            [b'r', tail @ ..] => (b'\r', tail),
            [b'n', tail @ ..] => (b'\n', tail),
            [b't', tail @ ..] => (b'\t', tail),
            [b'0', tail @ ..] => (0, tail),
            [b'x', high, low, tail @ ..] => {
                let hex = std::str::from_utf8(&[*high, *low]).unwrap().to_owned();
                (u8::from_str_radix(&hex, 16).unwrap(), tail)
            }
            _ => panic!("an escape Gunicorn's harness does not know"),
        };
        bytes.push(decoded);
        rest = tail;
    }
    bytes
}

/// RFC 9112 §3.2 makes a server answer 400 to an HTTP/1.1 request without a Host, which
/// Gunicorn does not check and most of its cases leave out: they get one, so that what is
/// compared is everything else.
fn with_host(request: Vec<u8>) -> Vec<u8> {
    let Some(line_end) = request.windows(2).position(|pair| pair == b"\r\n") else {
        return request;
    };
    let head_end = request
        .windows(4)
        .position(|quad| quad == b"\r\n\r\n")
        .unwrap_or(request.len());
    let has_host = request[..head_end]
        .split(|&b| b == b'\n')
        .any(|line| line.len() > 5 && line[..5].eq_ignore_ascii_case(b"host:"));
    if !request[..line_end].ends_with(b"HTTP/1.1") || has_host {
        return request;
    }
    [
        &request[..line_end + 2],
        b"Host: gunicorn\r\n",
        &request[line_end + 2..],
    ]
    .concat()
}

/// Sends `request`, says it is all, and returns the status of the answer, if any came.
fn status(server: &Server, request: &[u8]) -> Option<u16> {
    let mut stream = server.connect();
    stream.write_all(request).ok()?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let line = answer.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn every_case_gets_gunicorns_verdict() {
    let server = Server::start("echo", &[]);
    let corpus = workspace_root().join("tests/gunicorn");
    let verdicts = std::fs::read_to_string(corpus.join("verdicts")).unwrap();
    let mut wrong = Vec::new();
    let mut cases = 0;
    for line in verdicts.lines() {
        let mut fields = line.split(' ');
        let (Some(case), Some(verdict)) = (fields.next(), fields.next()) else {
            panic!("bad verdict line {line:?}");
        };
        let file = corpus.join(Path::new(case).with_extension("http"));
        let request = with_host(decode(&std::fs::read(&file).unwrap()));
        let got = status(&server, &request);
        cases += 1;
        let refused = got.is_some_and(|status| (400..600).contains(&status));
        let agrees = match (verdict, fields.next()) {
            ("accept", _) => got == Some(200),
            // A head that never ends gets no answer: nothing was refused.
            ("reject", Some("NoMoreData")) => got.is_none(),
            // Gunicorn closes without an answer on a broken chunk (an IOError there); a body
            // that ends before its last CRLF is the client leaving, which gets none here.
            (
                "reject",
                Some("ChunkMissingTerminator" | "InvalidChunkSize" | "InvalidChunkExtension"),
            ) => got.is_none() || refused,
            ("reject" | "rfc-refuses", _) => refused,
            (other, _) => panic!("unknown verdict {other:?}"),
        };
        if !agrees {
            wrong.push(format!("{line}: got {got:?}"));
        }
    }
    assert_eq!(cases, 112, "the corpus lost cases");
    assert!(
        wrong.is_empty(),
        "{} of {cases} cases:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
