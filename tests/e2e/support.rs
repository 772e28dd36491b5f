//! Running the real `wasm-gw` binary and talking to it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to start: it compiles the component first.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any single exchange in a test may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The built component of guest `name`.
pub fn guest(name: &str) -> PathBuf {
    let path = workspace_root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the guests with ./scripts/test.sh or \
         `scripts/build-guests.sh`",
        path.display()
    );
    path
}

/// The Python example apps (guests/python/examples): each one's callable, and whether it
/// has requirements to install.
const PYTHON_GUESTS: [(&str, &str, bool); 9] = [
    ("hello", "hello:hello_app", false),
    ("echo", "echo:application", false),
    ("tasks", "tasks:application", false),
    ("faulty", "faulty:application", false),
    ("flask", "app:app", true),
    ("bottle", "app:app", true),
    ("falcon", "app:app", true),
    ("pyramid", "app:app", true),
    ("django", "mysite.wsgi:application", true),
];

/// The component of Python example `name`, built by the real `wasm-gw build-python` inside
/// `wsgiref.validate.validator`, once per test run, and again only when its sources change.
pub fn python_guest(name: &str) -> PathBuf {
    build_python_guest(name, true)
}

/// Python example `name` built as users build it, without the validator, whose wrappers
/// would otherwise catch app mistakes before the bridge does.
pub fn python_guest_unvalidated(name: &str) -> PathBuf {
    build_python_guest(name, false)
}

fn build_python_guest(name: &str, validate: bool) -> PathBuf {
    static BUILDS: Mutex<()> = Mutex::new(());
    let (_, callable, has_requirements) = PYTHON_GUESTS
        .iter()
        .find(|(guest, _, _)| *guest == name)
        .unwrap_or_else(|| panic!("no Python example {name}"));
    let root = workspace_root();
    let sources = root.join("guests/python/examples").join(name);
    let flavor = if validate { "" } else { "-unvalidated" };
    let output = root.join(format!("target/python-guests/{name}{flavor}.wasm"));
    // One build at a time: they share componentize-py's virtualenv and both cores.
    let _one_at_a_time = BUILDS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let built = std::fs::metadata(&output)
        .and_then(|meta| meta.modified())
        .ok();
    let newest_source = [
        sources.clone(),
        root.join("guests/python/bridge"),
        root.join("wit"),
        root.join("host/src/python.rs"),
        root.join("host/src/bundle.rs"),
        // The engine settings the build compiles the component into the cache for.
        root.join("host/src/compile.rs"),
    ]
    .iter()
    .filter_map(|dir| newest_modification(dir))
    .max();
    if built.is_some() && built >= newest_source {
        return output;
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-gw"));
    command
        .args(["build-python", callable, "--path"])
        .arg(&sources)
        .arg("-o")
        .arg(&output)
        // The servers' code cache: the build compiles the component into it.
        .arg("--cache-dir")
        .arg(root.join("target/e2e-code-cache"));
    if validate {
        command.arg("--validate");
    }
    if *has_requirements {
        command
            .arg("--requirements")
            .arg(sources.join("requirements.txt"));
    }
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    let result = command.output().expect("run wasm-gw build-python");
    assert!(
        result.status.success(),
        "wasm-gw build-python {callable} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // It says what it installed, and compiles the component into the servers' cache.
    let stdout = String::from_utf8_lossy(&result.stdout);
    let installed = stdout.lines().find(|line| line.starts_with("Installed "));
    if *has_requirements {
        let framework = format!(" {name} ");
        assert!(
            installed.is_some_and(|line| line.to_lowercase().contains(&framework)),
            "no {name} version in:\n{stdout}"
        );
    }
    assert!(stdout.contains("Compiled in"), "{stdout}");
    output
}

/// When `path`, or a file under it, last changed. Directories' own times are left out: the
/// build touches them when it cleans up the bytecode it wrote there.
fn newest_modification(path: &Path) -> Option<std::time::SystemTime> {
    if !path.is_dir() {
        return std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|entry| newest_modification(&entry.path()))
        .max()
}

/// The echo contract's implementations: the Rust and Python WSGI guests, and the `wasi:http` one.
pub fn echo_apps() -> [PathBuf; 3] {
    [guest("echo"), python_guest("echo"), guest("http_echo")]
}

/// What an echo app's `X-Echo-Meta` header says of the request it saw.
pub fn meta(response: &RawResponse) -> serde_json::Value {
    use base64::Engine;
    let encoded = response.header("x-echo-meta").expect("X-Echo-Meta header");
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// Sends `POST /sink` with a 10-byte body, half of it 1.5 s after the rest: longer than a
/// `--timeout 1` app may run, so that an app's deadline is shown to leave out the time it
/// waits on the client. Returns the response.
pub fn post_slowly(server: &Server) -> RawResponse {
    let mut stream = server.connect();
    stream
        .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        .unwrap();
    // The slow client under test.
    thread::sleep(Duration::from_millis(1500));
    stream.write_all(b"67890").unwrap();
    RawResponse::read(&mut BufReader::new(stream), false)
}

/// The hello app of each world: `GET /?name=X` answers `Hello, X!`.
pub fn hello_apps() -> [PathBuf; 2] {
    [guest("hello"), guest("http_hello")]
}

/// The echo apps of the WSGI world, which also show the environ on `X-Echo-Environ: 1`.
pub fn wsgi_echo_apps() -> [PathBuf; 2] {
    [guest("echo"), python_guest("echo")]
}

/// The lines a server wrote to stderr, shared with the thread that collects them.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Asks the collector to stop reading and close the pipe.
    stop_reading: AtomicBool,
    /// The collector closed the pipe.
    closed: AtomicBool,
}

/// Makes the process that `command` starts die with the thread that starts it: a test that
/// panics, with threads of its own still holding its server, leaves no server behind.
fn dies_with_test(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A directory of one test's own under target/, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = workspace_root().join(format!(
            "target/e2e-scratch/{name}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    /// One under the system's temporary directory, which any user can reach: short enough
    /// for a Unix socket's path (108 bytes at most, which a deep checkout can pass), and
    /// readable by a server that has given up root.
    pub fn short(name: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wgw-{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `wasm-gw serve`, killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Log>,
    /// The server's own state directory, unless the test chose where state lives.
    _state: Option<Scratch>,
}

impl Server {
    /// Serves guest `app` on a free loopback port with extra `args`.
    pub fn start(app: &str, args: &[&str]) -> Server {
        Server::start_path(&guest(app), args)
    }

    pub fn start_path(app: &Path, args: &[&str]) -> Server {
        Server::launch(Some(app), args, &[])
    }

    /// Serves guest `app` with extra `args` and variables `env` in its environment.
    pub fn start_with_env(app: &str, args: &[&str], env: &[(&str, &Path)]) -> Server {
        Server::launch(Some(&guest(app)), args, env)
    }

    /// Serves guest `app` on `listener`, passed as systemd passes one (`LISTEN_FDS=1`, the
    /// socket as file descriptor 3; the server ignores `LISTEN_PID` when it is unset).
    pub fn start_on_listener(app: &str, listener: &std::net::TcpListener) -> Server {
        use std::os::fd::AsRawFd;
        let fd = listener.as_raw_fd();
        Server::launch_with(
            Some(&guest(app)),
            &[],
            &[("LISTEN_FDS", "1".as_ref())],
            Some(fd),
        )
    }

    /// Serves guest `app` with `args`, and `listener` inherited as file descriptor 3, for
    /// `--bind fd://3`.
    pub fn start_with_fd3(
        app: &str,
        args: &[&str],
        listener: &impl std::os::fd::AsRawFd,
    ) -> Server {
        let fd = listener.as_raw_fd();
        Server::launch_with(Some(&guest(app)), args, &[], Some(fd))
    }

    /// Serves with `args` alone: apps come from `--mount` flags.
    pub fn start_mounts(args: &[&str]) -> Server {
        Server::launch(None, args, &[])
    }

    /// [`Server::start_mounts`], with variables `env` in the server's environment.
    pub fn start_mounts_with_env(args: &[&str], env: &[(&str, &Path)]) -> Server {
        Server::launch(None, args, env)
    }

    fn launch(app: Option<&Path>, args: &[&str], env: &[(&str, &Path)]) -> Server {
        Server::launch_with(app, args, env, None)
    }

    fn launch_with(
        app: Option<&Path>,
        args: &[&str],
        env: &[(&str, &Path)],
        listener: Option<std::os::fd::RawFd>,
    ) -> Server {
        // Tests share one code cache, out of the user's home, unless they test the cache.
        let cache_dir = workspace_root().join("target/e2e-code-cache");
        let cache_args = match args
            .iter()
            .any(|arg| *arg == "--cache-dir" || *arg == "--no-cache")
        {
            true => Vec::new(),
            false => vec!["--cache-dir".into(), cache_dir.into_os_string()],
        };
        // Key-value state starts empty for every server, unless the test says where it is.
        let state = match args
            .iter()
            .any(|arg| *arg == "--state-dir" || *arg == "--kv")
        {
            true => None,
            false => Some(Scratch::new("state")),
        };
        let state_args = match &state {
            Some(dir) => vec!["--state-dir", dir.arg()],
            None => Vec::new(),
        };
        // A test that binds its own sockets names them; the first listener's address is the
        // server's.
        let listen_args: &[&str] = if args.iter().any(|arg| *arg == "--bind" || *arg == "-b") {
            &[]
        } else {
            &["--host", "127.0.0.1", "--port", "0"]
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-gw"));
        command
            .arg("serve")
            .args(app)
            .args(listen_args)
            .args(cache_args)
            .args(state_args)
            .args(args)
            .envs(env.iter().copied());
        let mut server = Server::spawn(command, listener);
        server._state = state;
        server
    }

    /// Runs `command`, a `wasm-gw serve` however written, as a server of the test's:
    /// `listener`, if any, is inherited as file descriptor 3 (a systemd socket, with
    /// `LISTEN_FDS=1` in the command's environment). Returns once it listens.
    pub fn spawn(mut command: Command, listener: Option<std::os::fd::RawFd>) -> Server {
        if let Some(fd) = listener {
            // SAFETY: dup2 and fcntl are async-signal-safe, and the closure touches nothing
            // else; descriptor 3 is then not closed on exec.
            unsafe {
                command.pre_exec(move || {
                    // A descriptor that is 3 already only needs to survive the exec.
                    let kept = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if kept == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = dies_with_test(&mut command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wasm-gw");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let (address_tx, address_rx) = mpsc::channel();
        let collector = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(listener) = line.split("listening on ").nth(1) {
                    // Up to the end of the address, in text and in JSON lines alike: a
                    // TCP address without its scheme, or `unix:PATH`.
                    let listener = listener
                        .strip_prefix("http://")
                        .or_else(|| listener.strip_prefix("https://"))
                        .unwrap_or(listener);
                    let address_char = |c: char| {
                        c.is_ascii_alphanumeric()
                            || matches!(c, '.' | ':' | '[' | ']' | '/' | '-' | '_')
                    };
                    let end = listener
                        .find(|c| !address_char(c))
                        .unwrap_or(listener.len());
                    let _ = address_tx.send(listener[..end].to_owned());
                }
                collector.lines.lock().unwrap().push(line);
                collector.grew.notify_all();
                if collector.stop_reading.load(Ordering::SeqCst) {
                    break;
                }
            }
            // The pipe is closed now: the lines' reader went with the loop.
            collector.closed.store(true, Ordering::SeqCst);
            collector.grew.notify_all();
        });
        // The first TCP listener's: a test that binds Unix sockets binds one TCP socket too.
        let started = Instant::now() + START_TIMEOUT;
        let tcp = || loop {
            let left = started.saturating_duration_since(Instant::now());
            let address = address_rx.recv_timeout(left).ok()?;
            if let Ok(address) = address.parse::<SocketAddr>() {
                return Some(address);
            }
        };
        let address = match tcp() {
            Some(address) => address,
            None => {
                let _ = child.kill();
                panic!(
                    "server did not start; its log:\n{}",
                    log.lines.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child,
            addr: address,
            log,
            _state: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the server a signal, `TERM` or `INT`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the server to exit on its own, and returns its exit code.
    pub fn wait_for_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "server did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes the read end of the server's stderr, as a log collector that died would.
    pub fn close_log(&self) {
        self.log.stop_reading.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + IO_TIMEOUT;
        let http = client();
        let mut lines = self.log.lines.lock().unwrap();
        while !self.log.closed.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the log pipe never closed");
            // A request writes an access line, which wakes the collector to see the stop.
            drop(lines);
            http.get(self.url("/")).call().unwrap();
            lines = self.log.lines.lock().unwrap();
            lines = self
                .log
                .grew
                .wait_timeout(lines, Duration::from_millis(200))
                .unwrap()
                .0;
        }
    }

    /// Waits until a log line contains every one of `needles`, and returns it.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = lines
                .iter()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needles:?} in:\n{}",
                lines.join("\n")
            );
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// How many log lines so far contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> usize {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().filter(|line| line.contains(needle)).count()
    }

    /// Opens a raw connection to the server.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
    }

    /// A connection whose receive buffer holds `bytes`, set before it connects so that the
    /// window it offers is that small too.
    pub fn connect_with_receive_buffer(&self, bytes: usize) -> TcpStream {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(self.addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket.connect(&self.addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
    }

    /// Sends `request` on a new connection and reads one response.
    pub fn raw(&self, request: &[u8]) -> RawResponse {
        let mut stream = self.connect();
        stream.write_all(request).unwrap();
        RawResponse::read(&mut BufReader::new(stream), false)
    }

    /// The body of `GET target` on a connection of its own, as text.
    pub fn get_text(&self, target: &str) -> String {
        self.raw(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .text()
    }

    /// The server's resident memory now and at its peak, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|line| line.starts_with(name)).unwrap();
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET path` on `server`.
pub fn status_of(server: &Server, path: &str) -> u16 {
    client()
        .get(server.url(path))
        .call()
        .unwrap()
        .status()
        .as_u16()
}

/// An HTTP client that reports every status instead of failing on 4xx and 5xx.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(IO_TIMEOUT))
        .build()
        .into()
}

/// A response read off a raw socket, framing checked by hand.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body was chunked on the wire.
    pub chunked: bool,
}

impl RawResponse {
    /// Reads one response; `head_only` for the answer to a HEAD request.
    pub fn read(reader: &mut impl BufRead, head_only: bool) -> RawResponse {
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "status line {status_line:?}"
        );
        let status = status_line[9..12].parse().expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            assert!(
                line.ends_with(b"\r\n"),
                "header line {line:?} must end in CRLF"
            );
            if line == b"\r\n" {
                break;
            }
            let line: String = line[..line.len() - 2].iter().map(|&b| b as char).collect();
            let (name, value) = line.split_once(':').expect("header colon");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if head_only || status == 204 || status == 304 || status < 200 {
            return response;
        }
        if let Some(length) = response.header("content-length") {
            response.body = vec![0; length.parse().unwrap()];
            reader.read_exact(&mut response.body).expect("body");
        } else if response.header("transfer-encoding") == Some("chunked") {
            response.chunked = true;
            response.body = read_chunked(reader);
        } else {
            reader.read_to_end(&mut response.body).unwrap();
        }
        response
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line).unwrap();
        let size = usize::from_str_radix(size_line.trim_end(), 16).expect("chunk size");
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        assert_eq!(&chunk[size..], b"\r\n", "chunk data must end in CRLF");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Reads until the peer closes, and returns what arrived.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    rest
}

/// A real redis-server of the test's own on a free loopback port, stopped when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: Scratch,
}

impl Redis {
    /// Freezes the server (SIGSTOP), or thaws it (SIGCONT): connections stay open, and
    /// nothing answers on them.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("running");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn start() -> Redis {
        // The port is free when we look; if another process takes it before Redis binds it,
        // try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut redis = Redis {
                child: None,
                port,
                dir: Scratch::new("redis"),
            };
            if redis.launch() {
                return redis;
            }
        }
        panic!("redis-server could not bind a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port. A connection of another process may hold
    /// the port for a moment; it is tried until it is free.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back on port {}",
                self.port
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts redis-server and waits until it is ready; false if it could not bind.
    fn launch(&mut self) -> bool {
        let mut child = dies_with_test(&mut Command::new("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir", self.dir.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: scripts/test.sh installs it");
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let ready = lines
                .by_ref()
                .any(|line| line.contains("Ready to accept connections"));
            let _ = ready_tx.send(ready);
            // Keep reading, so that Redis never blocks on a full pipe.
            lines.for_each(drop);
        });
        let ready = ready_rx.recv_timeout(START_TIMEOUT).unwrap_or(false);
        if ready {
            self.child = Some(child);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        ready
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Clients that send GET requests in a loop, one thread per target, until stopped: a load
/// under which a reload must lose nothing.
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    saw_echo: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(server: &Arc<Server>, targets: &[&'static str]) -> Load {
        let load = Load {
            stop: Arc::default(),
            served: Arc::default(),
            failed: Arc::default(),
            saw_echo: Arc::default(),
            threads: Vec::new(),
        };
        let threads = targets
            .iter()
            .map(|&target| {
                let server = server.clone();
                let (stop, served, failed, saw_echo) = (
                    load.stop.clone(),
                    load.served.clone(),
                    load.failed.clone(),
                    load.saw_echo.clone(),
                );
                thread::spawn(move || {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(server.url(target)).call() {
                            Ok(response) if response.status() == 200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                                if response.headers().contains_key("x-echo-meta") {
                                    saw_echo.store(true, Ordering::Relaxed);
                                }
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { threads, ..load }
    }

    /// Waits until the echo guest answered one of the requests, then for as many requests
    /// again as were served until then: across the old instances' last requests.
    pub fn run_past_the_swap_to_echo(&self) {
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.saw_echo.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "the load never reached the new code"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let target = self.served.load(Ordering::Relaxed) * 2 + 100;
        while self.served.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients; returns how many requests were served, and how many failed.
    pub fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .for_each(|thread| thread.join().unwrap());
        (
            self.served.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// An HTTP server on loopback that answers every request `200 upstream says hi` and keeps
/// each request's head.
pub struct Upstream {
    pub port: u16,
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::serving("upstream says hi")
    }

    /// An upstream that answers `body` to every request.
    pub fn serving(body: &'static str) -> Upstream {
        let length = body.len();
        Upstream::answering(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
        ))
    }

    /// An upstream that sends `answer`, head and body, to every request.
    pub fn answering(answer: String) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        // Lives as long as the test process: it only ever waits in accept.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                kept.lock().unwrap().push(head);
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        Upstream { port, heads }
    }
}
