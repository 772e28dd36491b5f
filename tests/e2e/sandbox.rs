//! The sandbox: no ambient authority, explicit grants, capped memory.

use std::net::TcpListener;

use crate::support::{Server, client};

fn answer(server: &Server, path: &str) -> String {
    let mut response = client().get(server.url(path)).call().unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.body_mut().read_to_string().unwrap()
}

#[test]
fn an_app_has_no_ambient_authority() {
    let server = Server::start("faulty", &[]);
    // A real listener, so that a connection that got through would succeed.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = format!("/escape/tcp?addr={}", listener.local_addr().unwrap());
    for probe in [
        "/escape/read?path=/etc/passwd",
        "/escape/list?path=/",
        "/escape/env",
        tcp.as_str(),
    ] {
        let said = answer(&server, probe);
        assert!(said.starts_with("denied: "), "{probe}: {said}");
    }
    assert!(answer(&server, &tcp).contains("Permission denied"));
}

#[test]
fn grants_open_exactly_what_they_name() {
    let dir = std::env::temp_dir().join(format!("wasm-gw-grant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "granted contents").unwrap();
    let grant = format!("{}::/data:ro", dir.display());
    let server = Server::start("faulty", &["--dir", &grant, "--env", "GREETING=hi there"]);

    assert_eq!(
        answer(&server, "/escape/read?path=/data/hello.txt"),
        "allowed: granted contents\n"
    );
    assert_eq!(
        answer(&server, "/escape/list?path=/data"),
        "allowed: 1 entries\n"
    );
    assert_eq!(
        answer(&server, "/escape/env"),
        "allowed: GREETING=hi there\n"
    );
    // Only what was granted: the rest of the host stays out of reach.
    assert!(answer(&server, "/escape/read?path=/etc/passwd").starts_with("denied: "));
    assert!(answer(&server, "/escape/read?path=/data/../../etc/passwd").starts_with("denied: "));
}

#[test]
fn the_denied_read_succeeds_once_its_folder_is_granted() {
    let server = Server::start("faulty", &["--dir", "/etc::/etc:ro"]);
    let said = answer(&server, "/escape/read?path=/etc/passwd");
    assert!(said.starts_with("allowed: root:"), "{said}");
    assert!(answer(&server, "/escape/list?path=/etc").starts_with("allowed: "));
}

#[test]
fn unbounded_allocation_stays_inside_the_sandbox() {
    let server = Server::start("faulty", &["--workers", "1", "--max-memory", "64MiB"]);
    let (before, _) = server.memory();
    for _ in 0..5 {
        let response = client().get(server.url("/alloc")).call().unwrap();
        assert_eq!(response.status(), 500);
    }
    server.wait_for_log(&["instance replaced", "reason=\"memory\""]);
    assert_eq!(
        client().get(server.url("/ok")).call().unwrap().status(),
        200
    );
    let (after, _) = server.memory();
    // Five times 64 MiB was allocated and released; the host keeps at most about one.
    let growth = after.saturating_sub(before) >> 20;
    assert!(growth < 100, "host RSS grew by {growth} MiB");
}

#[test]
fn a_symlink_made_in_a_grant_points_only_into_it() {
    let dir = std::env::temp_dir().join(format!("wasm-gw-symlinks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let grant = format!("{}::/data", dir.display());
    let server = Server::start("faulty", &["--dir", &grant]);
    // A trap for the host's tools, which would follow it out of the grant.
    for target in ["../../../../etc/passwd", "/etc/passwd", "sub/../../x"] {
        let said = answer(
            &server,
            &format!("/escape/symlink?path=/data/evil&target={target}"),
        );
        assert!(said.starts_with("denied: "), "{target}: {said}");
        assert!(std::fs::symlink_metadata(dir.join("evil")).is_err());
    }
    server.wait_for_log(&[
        "refused the app a symlink",
        "its target may leave the directory",
    ]);
    // One that points down from where it is stays allowed.
    let said = answer(
        &server,
        "/escape/symlink?path=/data/fine&target=notes/today.txt",
    );
    assert!(said.starts_with("allowed: "), "{said}");
    assert_eq!(
        std::fs::read_link(dir.join("fine")).unwrap(),
        std::path::Path::new("notes/today.txt")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_cannot_make_the_host_copy_more_than_its_own_memory() {
    let server = Server::start("faulty", &["--workers", "1", "--max-memory", "64MiB"]);
    assert_eq!(answer(&server, "/ok"), "ok");
    let (_, before) = server.memory();
    // 32 chunks that all point at one 16 MiB buffer: 512 MiB to copy, from 16 MiB of guest.
    let response = client()
        .get(server.url("/alias?n=32&mb=16"))
        .call()
        .unwrap();
    assert_eq!(response.status(), 500);
    server.wait_for_log(&["ERROR", "too much data is being copied"]);
    let (_, peak) = server.memory();
    // The guest's 64 MiB cap bounds what one call copies; wasmtime's own default would let
    // it make the host copy 128 MiB.
    let growth = peak.saturating_sub(before) >> 20;
    assert!(growth < 100, "the host's peak grew by {growth} MiB");
    // Three such chunks are 48 MiB, within the cap: an honest guest's whole body.
    let response = client().get(server.url("/alias?n=3&mb=16")).call().unwrap();
    assert_eq!(response.status(), 200);
}
