//! The front door: listeners in every `--bind` form, TLS, and the PROXY protocol.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::startup::{assert_one_error_line, serve_exits};
use crate::support::{IO_TIMEOUT, RawResponse, Scratch, Server, guest};

/// The environ the echo app saw for `response`, to a request with `X-Echo-Environ: 1`.
fn meta(response: &RawResponse) -> Value {
    let encoded = response.header("x-echo-meta").expect("X-Echo-Meta header");
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let meta: Value = serde_json::from_slice(&json).unwrap();
    meta["environ"].clone()
}

const ECHO_ENVIRON: &[u8] = b"GET /e HTTP/1.1\r\nHost: gw.test\r\nX-Echo-Environ: 1\r\n\r\n";

/// Sends `request` on `stream` and reads the response.
fn exchange<S: std::io::Read + Write>(mut stream: S, request: &[u8]) -> RawResponse {
    stream.write_all(request).unwrap();
    RawResponse::read(&mut BufReader::new(stream), false)
}

fn unix_client(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

#[test]
fn every_bind_form_serves_the_same_apps() {
    let dir = Scratch::short("bind");
    let socket = dir.path().join("gw.sock");
    let unix = format!("unix:{}", socket.display());
    // Bound by the test, as a supervisor would, and inherited as descriptor 3.
    let inherited = TcpListener::bind("127.0.0.1:0").unwrap();
    let inherited_address = inherited.local_addr().unwrap();
    let args = [
        "--bind",
        "127.0.0.1:0",
        "-b",
        &unix,
        "--bind",
        "fd://3",
        "--umask",
        "007",
    ];
    let mut server = Server::start_with_fd3("echo", &args, &inherited);
    server.wait_for_log(&[&format!("listening on {unix}")]);
    server.wait_for_log(&[&format!("listening on http://{inherited_address}")]);

    let tcp = exchange(server.connect(), ECHO_ENVIRON);
    assert_eq!(tcp.status, 200);
    assert_eq!(meta(&tcp)["REMOTE_ADDR"], "127.0.0.1");

    let local = exchange(unix_client(&socket), ECHO_ENVIRON);
    assert_eq!(local.status, 200);
    let environ = meta(&local);
    // A Unix socket's peer has no address, as under Gunicorn.
    assert_eq!(environ["REMOTE_ADDR"], "");
    assert_eq!(environ["SERVER_NAME"], "gw.test");
    assert_eq!(environ["wsgi.url_scheme"], "http");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o770, "--umask 007 leaves owner and group");

    let passed = TcpStream::connect(inherited_address).unwrap();
    passed.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(exchange(passed, ECHO_ENVIRON).status, 200);

    server.signal("TERM");
    assert_eq!(server.wait_for_exit(), Some(0));
    assert!(!socket.exists(), "the socket file outlived the server");
}

#[test]
fn a_socket_file_left_by_a_killed_server_is_replaced() {
    let dir = Scratch::short("stale");
    let socket = dir.path().join("gw.sock");
    let unix = format!("unix:{}", socket.display());
    let args = ["--bind", "127.0.0.1:0", "--bind", &unix];
    let killed = Server::start("hello", &args);
    drop(killed); // SIGKILL: the file stays behind, with no one listening.
    assert!(socket.exists());
    let server = Server::start("hello", &args);
    server.wait_for_log(&["removing the stale socket file"]);
    let response = exchange(
        unix_client(&socket),
        b"GET /?name=unix HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(response.text(), "Hello, unix!\n");
    // While it listens, a second server must not take the file from it.
    let second = serve_exits(&guest("hello"), &["--bind", &unix]);
    assert_one_error_line(&second, &["another server is listening on"]);
    assert_eq!(
        exchange(unix_client(&socket), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").status,
        200
    );
}

/// A certificate authority of the test's own, and the files a server and its clients use.
pub(crate) struct Pki {
    dir: Scratch,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wasm-gw test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = Scratch::new("pki");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// A certificate for the server, with common name `name`, as `name.pem` and
    /// `name.key`.
    fn server(&self, name: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&cert_path, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// Serves guest `app` over TLS with a certificate for `name`, and `extra` flags.
    pub(crate) fn serve(&self, app: &str, name: &str, extra: &[&str]) -> Server {
        let (cert, key) = self.server(name);
        let args = ["--certfile", cert.as_str(), "--keyfile", key.as_str()];
        Server::start(app, &[&args[..], extra].concat())
    }

    /// A client certificate for `CN=name,O=Example`, and its key.
    fn client(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Without rcgen's default common name, which would come first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (certificate.der().clone(), key)
    }

    /// A client that trusts this CA alone, showing `identity` if given.
    fn client_config(
        &self,
        identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            Some((certificate, key)) => builder
                .with_client_auth_cert(vec![certificate], key)
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `server` as `localhost`, handshake done.
fn tls_connect(server: &Server, config: &Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(server.addr)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let session =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Connects, asks, and reads the first byte of the answer: an error where the server
/// refuses the client during or right after the handshake.
fn first_byte(server: &Server, config: &Arc<rustls::ClientConfig>) -> std::io::Result<usize> {
    let mut stream = tls_connect(server, config)?;
    stream.write_all(ECHO_ENVIRON)?;
    std::io::Read::read(&mut stream, &mut [0])
}

/// The common name of the certificate the server showed on `stream`.
fn server_common_name(stream: &TlsStream) -> String {
    let certificate = &stream.conn.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).unwrap();
    let name = parsed.subject().iter_common_name().next().unwrap();
    name.as_str().unwrap().to_owned()
}

#[test]
fn https_with_a_ca_of_the_tests_own() {
    let pki = Pki::new();
    let server = pki.serve("echo", "gw-1", &[]);
    server.wait_for_log(&[&format!("listening on https://{}", server.addr)]);
    let client = pki.client_config(None);
    let mut stream = tls_connect(&server, &client).unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(server_common_name(&stream), "gw-1");
    // Two requests on one connection: keep-alive works through the session.
    for _ in 0..2 {
        stream.write_all(ECHO_ENVIRON).unwrap();
        let mut reader = BufReader::new(&mut stream);
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 200);
        let environ = meta(&response);
        assert_eq!(environ["wsgi.url_scheme"], "https");
        assert_eq!(environ["HTTPS"], "on");
        assert_eq!(environ["SSL_PROTOCOL"], "TLSv1.3");
        assert_eq!(environ["SSL_CLIENT_VERIFY"], "NONE");
        assert!(environ.get("SSL_CLIENT_S_DN").is_none());
    }
    // A body larger than a TLS record, both ways.
    let body = vec![b'x'; 100_000];
    let mut request = format!(
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    stream.write_all(&request).unwrap();
    let response = RawResponse::read(&mut BufReader::new(&mut stream), false);
    assert_eq!(response.body, body);

    // A response that ends the connection ends the session properly too: the client sees
    // close_notify, not a cut (which rustls reports as UnexpectedEof).
    let mut closing = tls_connect(&server, &client).unwrap();
    closing
        .write_all(b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut closing, &mut all).unwrap();
    assert!(all.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // Plain HTTP on the TLS port gets told, in plain HTTP.
    let plain = exchange(server.connect(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(plain.status, 400);
    assert!(plain.text().contains("https://"), "{}", plain.text());
    // Neither HTTP nor TLS: closed, never left hanging.
    let mut junk = server.connect();
    junk.write_all(b"\x00\x01\x02\x03\x04\x05\x06\x07\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut junk, &mut rest);
    assert!(read.is_ok() || read.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
}

#[test]
fn a_silent_or_stalled_tls_handshake_is_cut_at_the_header_timeout() {
    let pki = Pki::new();
    let server = pki.serve("hello", "gw", &["--header-timeout", "1"]);
    let silent = server.connect();
    // Half a ClientHello's record header, then nothing.
    let mut stalled = server.connect();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
    let started = std::time::Instant::now();
    for mut client in [silent, stalled] {
        let mut rest = Vec::new();
        // The server closes; a server that waited on would leave this read to time out.
        let read = std::io::Read::read_to_end(&mut client, &mut rest);
        assert!(
            started.elapsed() < IO_TIMEOUT / 3,
            "closed after {:?}, not at --header-timeout",
            started.elapsed()
        );
        assert!(
            read.is_ok()
                || read.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
            "{read:?}"
        );
    }
    // Meanwhile and after, others are served.
    let mut stream = tls_connect(&server, &pki.client_config(None)).unwrap();
    let response = exchange(&mut stream, b"GET /?name=tls HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "Hello, tls!\n");
}

#[test]
fn sighup_swaps_the_certificate_with_no_failed_handshake_and_a_bad_pair_is_refused() {
    let pki = Pki::new();
    let (cert, key) = pki.server("gw-1");
    let (cert_path, key_path) = (pki.path("live.pem"), pki.path("live.key"));
    std::fs::copy(&cert, &cert_path).unwrap();
    std::fs::copy(&key, &key_path).unwrap();
    let server = Arc::new(Server::start(
        "hello",
        &["--certfile", &cert_path, "--keyfile", &key_path, "-w", "2"],
    ));
    let client = pki.client_config(None);

    // Clients make new connections, each a handshake, throughout the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let seen_second = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (server, client, stop, seen_second) = (
                server.clone(),
                client.clone(),
                stop.clone(),
                seen_second.clone(),
            );
            std::thread::spawn(move || {
                let (mut served, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let outcome = tls_connect(&server, &client).map(|mut stream| {
                        let name = server_common_name(&stream);
                        let response = exchange(
                            &mut stream,
                            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                        );
                        (name, response.status)
                    });
                    match outcome {
                        Ok((name, 200)) => {
                            served += 1;
                            if name == "gw-2" {
                                seen_second.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (served, failed)
            })
        })
        .collect();

    // The new pair, swapped in by rename as a certificate manager does, then SIGHUP.
    let (cert2, key2) = pki.server("gw-2");
    std::fs::copy(&cert2, pki.path("next.pem")).unwrap();
    std::fs::copy(&key2, pki.path("next.key")).unwrap();
    std::fs::rename(pki.path("next.key"), &key_path).unwrap();
    std::fs::rename(pki.path("next.pem"), &cert_path).unwrap();
    server.signal("HUP");
    server.wait_for_log(&["reloaded the TLS certificate"]);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while seen_second.load(Ordering::SeqCst) < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let (served, failed) = client.join().unwrap();
        assert!(served > 0);
        assert!(
            failed.is_empty(),
            "failed requests during the swap: {failed:?}"
        );
    }

    // A corrupt certificate, and then a key that is not the certificate's, are refused: the
    // one serving stays.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    server.signal("HUP");
    server.wait_for_log(&["TLS reload failed, the old certificate keeps serving"]);
    let (cert3, _) = pki.server("gw-3");
    std::fs::copy(&cert3, &cert_path).unwrap();
    server.signal("HUP");
    server.wait_for_log(&["are not a certificate and its key"]);
    let stream = tls_connect(&server, &client).unwrap();
    assert_eq!(server_common_name(&stream), "gw-2");
}

#[test]
fn client_certificates_required_or_optional() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let required = pki.serve(
        "echo",
        "gw",
        &["--ca-certs", &ca, "--cert-reqs", "required"],
    );
    // Without a certificate, the handshake (or the first read after it, in TLS 1.3, where
    // the server's refusal comes after the client's Finished) fails.
    let anonymous = pki.client_config(None);
    let refused = first_byte(&required, &anonymous);
    assert!(refused.is_err(), "{refused:?}");

    let alice = pki.client_config(Some(pki.client("alice")));
    let mut stream = tls_connect(&required, &alice).unwrap();
    let environ = meta(&exchange(&mut stream, ECHO_ENVIRON));
    assert_eq!(environ["SSL_CLIENT_S_DN"], "CN=alice,O=Example");
    assert_eq!(environ["SSL_CLIENT_VERIFY"], "SUCCESS");

    // A certificate from another CA is refused too.
    let stranger = Pki::new();
    let forged = pki.client_config(Some(stranger.client("mallory")));
    let refused = first_byte(&required, &forged);
    assert!(refused.is_err(), "{refused:?}");

    let optional = pki.serve(
        "echo",
        "gw",
        &["--ca-certs", &ca, "--cert-reqs", "optional"],
    );
    let mut stream = tls_connect(&optional, &anonymous).unwrap();
    let environ = meta(&exchange(&mut stream, ECHO_ENVIRON));
    assert_eq!(environ["SSL_CLIENT_VERIFY"], "NONE");
    let mut stream = tls_connect(&optional, &alice).unwrap();
    let environ = meta(&exchange(&mut stream, ECHO_ENVIRON));
    assert_eq!(environ["SSL_CLIENT_S_DN"], "CN=alice,O=Example");

    // A closed connection leaves its request strings to its thread's next new connection:
    // its client's subject must not go with them.
    const CLOSING: &[u8] =
        b"GET /e HTTP/1.1\r\nHost: gw.test\r\nX-Echo-Environ: 1\r\nConnection: close\r\n\r\n";
    for _ in 0..8 {
        let mut stream = tls_connect(&optional, &alice).unwrap();
        let environ = meta(&exchange(&mut stream, CLOSING));
        assert_eq!(environ["SSL_CLIENT_S_DN"], "CN=alice,O=Example");
        let mut stream = tls_connect(&optional, &anonymous).unwrap();
        let environ = meta(&exchange(&mut stream, CLOSING));
        assert!(environ.get("SSL_CLIENT_S_DN").is_none(), "{environ}");
        assert_eq!(environ["SSL_CLIENT_VERIFY"], "NONE");
    }
}

#[test]
fn under_reload_a_changed_certificate_is_served_without_a_signal() {
    let pki = Pki::new();
    let (cert, key) = pki.server("gw-1");
    let server = Server::start(
        "hello",
        &["--certfile", &cert, "--keyfile", &key, "--reload"],
    );
    let client = pki.client_config(None);
    assert_eq!(
        server_common_name(&tls_connect(&server, &client).unwrap()),
        "gw-1"
    );
    // The files change in place, the key first, as `cp` of a renewed pair would.
    let renewed = Pki::new();
    let (cert2, key2) = renewed.server("gw-2");
    std::fs::copy(&key2, &key).unwrap();
    std::fs::copy(&cert2, &cert).unwrap();
    server.wait_for_log(&["reloaded the TLS certificate", "the file changed"]);
    let trusting_renewed = renewed.client_config(None);
    let stream = tls_connect(&server, &trusting_renewed).unwrap();
    assert_eq!(server_common_name(&stream), "gw-2");
}

/// A PROXY v2 header for a TCP connection from `[2001:db8::7]:40000` to `[2001:db8::1]:443`.
fn proxy_v2_ipv6() -> Vec<u8> {
    let mut block = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    block.extend([0x21, 0x21, 0, 36]);
    let client: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    let server: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    block.extend(client.octets());
    block.extend(server.octets());
    block.extend(40000u16.to_be_bytes());
    block.extend(443u16.to_be_bytes());
    block
}

#[test]
fn proxy_protocol_headers_name_the_client() {
    let server = Server::start("echo", &["--proxy-protocol"]);
    // v1, then a second request on the same connection: still the client's.
    let mut stream = server.connect();
    let mut request = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n".to_vec();
    request.extend_from_slice(ECHO_ENVIRON);
    for request in [&request[..], ECHO_ENVIRON] {
        let environ = meta(&exchange(&mut stream, request));
        assert_eq!(environ["REMOTE_ADDR"], "203.0.113.7");
        assert_eq!(environ["REMOTE_PORT"], "51234");
    }
    // v2, arriving in pieces.
    let mut stream = server.connect();
    let block = proxy_v2_ipv6();
    stream.write_all(&block[..7]).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    stream.write_all(&block[7..]).unwrap();
    let environ = meta(&exchange(&mut stream, ECHO_ENVIRON));
    assert_eq!(environ["REMOTE_ADDR"], "2001:db8::7");
    assert_eq!(environ["REMOTE_PORT"], "40000");
    // None at all, or UNKNOWN: the peer's own address.
    let environ = meta(&exchange(server.connect(), ECHO_ENVIRON));
    assert_eq!(environ["REMOTE_ADDR"], "127.0.0.1");
    let mut request = b"PROXY UNKNOWN\r\n".to_vec();
    request.extend_from_slice(ECHO_ENVIRON);
    let environ = meta(&exchange(server.connect(), &request));
    assert_eq!(environ["REMOTE_ADDR"], "127.0.0.1");
    // A broken header is a bad request.
    let broken = exchange(server.connect(), b"PROXY TCP4 1.2.3.4 nowhere 1 2\r\n\r\n");
    assert_eq!(broken.status, 400);
}

#[test]
fn proxy_protocol_headers_from_a_peer_not_allowed_are_refused() {
    let server = Server::start(
        "echo",
        &[
            "--proxy-protocol",
            "auto",
            "--proxy-allow-from",
            "10.0.0.0/8",
        ],
    );
    let mut request = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n".to_vec();
    request.extend_from_slice(ECHO_ENVIRON);
    assert_eq!(exchange(server.connect(), &request).status, 403);
    let mut v2 = proxy_v2_ipv6();
    v2.extend_from_slice(ECHO_ENVIRON);
    assert_eq!(exchange(server.connect(), &v2).status, 403);
    server.wait_for_log(&["rejected request with 403", "--proxy-allow-from"]);
    // Its plain requests are served, as its own.
    let environ = meta(&exchange(server.connect(), ECHO_ENVIRON));
    assert_eq!(environ["REMOTE_ADDR"], "127.0.0.1");
}

#[test]
fn a_proxy_protocol_header_comes_before_the_tls_handshake() {
    let pki = Pki::new();
    let server = pki.serve("echo", "gw", &["--proxy-protocol", "v1"]);
    // The header alone first; then the header and the ClientHello in one write, so that
    // the handshake's first bytes arrive with the header.
    for together in [false, true] {
        let mut tcp = server.connect();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut session = rustls::ClientConnection::new(pki.client_config(None), name).unwrap();
        let mut first = b"PROXY TCP4 198.51.100.9 10.0.0.1 40001 443\r\n".to_vec();
        if together {
            session.write_tls(&mut first).unwrap();
        }
        tcp.write_all(&first).unwrap();
        let mut stream = rustls::StreamOwned::new(session, tcp);
        let environ = meta(&exchange(&mut stream, ECHO_ENVIRON));
        assert_eq!(
            environ["REMOTE_ADDR"], "198.51.100.9",
            "together: {together}"
        );
        assert_eq!(environ["wsgi.url_scheme"], "https");
    }
}

/// The `Uid:` or `Gid:` line of a process's status: real, effective, saved, filesystem.
fn ids_of(pid: u32, which: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(which)).unwrap();
    line[which.len()..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn user_and_group_are_taken_after_binding_and_only_root_can() {
    let unknown = serve_exits(
        &guest("hello"),
        &["--port", "0", "--user", "no-such-user-here"],
    );
    assert_one_error_line(&unknown, &["no user \"no-such-user-here\""]);
    // A uid with no account has no group of its own: staying in root's is not an option.
    let groupless = serve_exits(&guest("hello"), &["--port", "0", "--user", "54321"]);
    assert_one_error_line(&groupless, &["names no account", "give --group too"]);
    if !nix::unistd::Uid::effective().is_root() {
        // Not root: a switch is refused, clearly, before anything is served.
        let refused = serve_exits(&guest("hello"), &["--port", "0", "--user", "0"]);
        assert_one_error_line(&refused, &["only a server started as root"]);
        return;
    }
    // Where the server, once it is nobody, can still read its app.
    let dir = Scratch::short("user");
    let app = dir.path().join("hello.wasm");
    std::fs::copy(guest("hello"), &app).unwrap();
    let socket = dir.path().join("gw.sock");
    let unix = format!("unix:{}", socket.display());
    let server = Server::start_path(
        &app,
        &[
            "--bind",
            "127.0.0.1:0",
            "--bind",
            &unix,
            "--umask",
            "007",
            "--user",
            "65534",
            "--group",
            "65534",
            "--kv",
            "memory",
            "--no-cache",
        ],
    );
    server.wait_for_log(&["running as user", "uid 65534", "group 65534"]);
    assert_eq!(ids_of(server.pid(), "Uid:"), "65534 65534 65534 65534");
    assert_eq!(ids_of(server.pid(), "Gid:"), "65534 65534 65534 65534");
    let groups = ids_of(server.pid(), "Groups:");
    assert!(
        groups
            .split(' ')
            .all(|group| group == "65534" || group.is_empty()),
        "{groups}"
    );
    // The socket file is theirs, so that --umask 007 lets their group in.
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(&socket).unwrap();
    assert_eq!((metadata.uid(), metadata.gid()), (65534, 65534));
    let response = exchange(
        unix_client(&socket),
        b"GET /?name=nobody HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(response.text(), "Hello, nobody!\n");
}

#[test]
fn bad_front_door_settings_are_refused_with_what_is_wrong() {
    let missing = serve_exits(
        &guest("hello"),
        &[
            "--port",
            "0",
            "--certfile",
            "/nonexistent/cert.pem",
            "--keyfile",
            "/nonexistent/key.pem",
        ],
    );
    assert_one_error_line(
        &missing,
        &["cannot read certificates from /nonexistent/cert.pem"],
    );
    let pki = Pki::new();
    let (cert, key) = pki.server("gw");
    let no_ca = serve_exits(
        &guest("hello"),
        &[
            "--port",
            "0",
            "--certfile",
            &cert,
            "--keyfile",
            &key,
            "--cert-reqs",
            "required",
        ],
    );
    assert_one_error_line(&no_ca, &["--cert-reqs", "needs --ca-certs"]);
    let (other_cert, _) = pki.server("other");
    let mismatched = serve_exits(
        &guest("hello"),
        &["--port", "0", "--certfile", &other_cert, "--keyfile", &key],
    );
    assert_one_error_line(&mismatched, &["are not a certificate and its key"]);
    for (args, needle) in [
        (&["--bind", "127.0.0.1:http"][..], "is not a port number"),
        (&["--bind", "fd://x"], "is not a file descriptor number"),
        (&["--bind", "fd://97"], "descriptor 97 is not open"),
        (&["--proxy-protocol", "v3"], "is not off, v1, v2 or auto"),
        (
            &["--proxy-allow-from", "10.0.0.0/33"],
            "has no valid prefix length",
        ),
        (
            &["--cert-reqs", "sometimes"],
            "is not none, optional or required",
        ),
        (&["--umask", "0999"], "is not a umask"),
    ] {
        let output = serve_exits(&guest("hello"), args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
