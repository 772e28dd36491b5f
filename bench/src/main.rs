//! `wasm-gw-bench`: starts each configuration of a release build on a loopback port, drives
//! it with wrk, and writes the Markdown report to bench/RESULTS.md. Run it through
//! `bench/run.sh`, which builds everything first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use wasm_gw::metrics::metrics;
use wasm_gw::pool::{CurrentPool, Pool};
use wasm_gw::router::{Mount, Route, Router};
use wasm_gw_bench::{Machine, Row, WrkRun, median, parse_wrk, render};

#[derive(Parser)]
#[command(about = "Benchmark wasm-gw on loopback with wrk")]
struct Args {
    /// Short runs, one of each: for iterating, in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "bench/RESULTS.md")]
    out: PathBuf,
    /// Also serve the `wasi:http` hello with `wasmtime serve` (installed once into
    /// target/bench-peers/), side by side with wasm-gw serving the same file.
    #[arg(long)]
    peers: bool,
    /// Also serve hello with the wasm-gw and `hello.wasm` in this directory (a past
    /// commit's, as `bench/baseline.sh COMMIT` builds them), side by side with this tree's:
    /// what a change costs, in one run.
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// Run only the `--baseline` comparison.
    #[arg(long, requires = "baseline")]
    only_baseline: bool,
    /// Run only the `--peers` comparison.
    #[arg(long, requires = "peers")]
    only_peers: bool,
}

/// The `wasmtime` whose `serve` the bench compares with: the release whose wasmtime-wasi-http
/// wasm-gw embeds.
const WASMTIME_VERSION: &str = "48.0.8";

/// Which server a scenario runs.
#[derive(Clone, Copy)]
enum Target {
    Wasm(&'static str),
    /// A Python example built by `wasm-gw build-python`.
    Python(&'static str),
    NativeHello,
    /// A native peer built from bench/src/bin: `hyper-hello` or `threads-hello`.
    Peer(&'static str),
    /// Gunicorn's gthread workers serving a Python example natively: (example, callable).
    Gunicorn(&'static str, &'static str),
    /// `wasm-gw serve --config` with the config file of this name in [`Harness::configs`].
    Config(&'static str),
    /// `wasmtime serve` on this guest's component.
    WasmtimeServe(&'static str),
    /// The baseline's wasm-gw serving the baseline's build of this guest.
    Baseline(&'static str),
}

/// The Python examples the bench serves both ways: (example, callable, requirements).
const PYTHON_APPS: [(&str, &str, bool); 3] = [
    ("hello", "hello:hello_app", false),
    ("flask", "app:app", true),
    ("django", "mysite.wsgi:application", true),
];

struct Harness {
    root: PathBuf,
    /// `--baseline`'s directory.
    baseline: Option<PathBuf>,
    runs: usize,
    seconds: u32,
    quick: bool,
}

/// One server under load, and wrk's extra arguments for it.
struct Load<'a> {
    server: &'a Running,
    extra: &'a [&'a str],
}

/// A server started for one scenario, killed when dropped.
struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Harness {
    fn binary(&self, name: &str) -> PathBuf {
        self.root.join("target/release").join(name)
    }

    fn guest(&self, name: &str) -> PathBuf {
        self.root
            .join(format!("target/wasm32-wasip2/release/{name}.wasm"))
    }

    fn start(&self, target: Target, args: &[&str]) -> anyhow::Result<Running> {
        let port = free_port()?;
        let mut command = match target {
            Target::Wasm(app) => {
                let mut command = Command::new(self.binary("wasm-gw"));
                command.arg("serve").arg(self.guest(app));
                command
            }
            Target::Baseline(app) => {
                let dir = self.baseline.as_ref().context("no --baseline given")?;
                let mut command = Command::new(dir.join("wasm-gw"));
                command.arg("serve").arg(dir.join(format!("{app}.wasm")));
                command
            }
            Target::Python(app) => {
                let mut command = Command::new(self.binary("wasm-gw"));
                command.arg("serve").arg(self.python_component(app));
                command
            }
            Target::Config(name) => {
                let mut command = Command::new(self.binary("wasm-gw"));
                command
                    .arg("serve")
                    .arg("--config")
                    .arg(self.configs().join(name));
                command
            }
            Target::NativeHello => Command::new(self.binary("native-hello")),
            Target::Peer(binary) => Command::new(self.binary(binary)),
            Target::WasmtimeServe(_) => {
                let mut command = Command::new(self.wasmtime());
                // `-S cli=y`: a component built with Rust's std imports wasi:cli beyond the
                // proxy world, which `serve` links only on request.
                command
                    .args(["serve", "-S", "cli=y"])
                    .args(["--addr", &format!("127.0.0.1:{port}")]);
                command
            }
            Target::Gunicorn(app, callable) => {
                // As many processes as cores, each with threads: Gunicorn's advice for I/O.
                let mut command = Command::new(self.venv().join("bin/gunicorn"));
                command
                    .args(["-k", "gthread", "--workers", "2", "--threads", "4"])
                    .args(["--bind", &format!("127.0.0.1:{port}")])
                    .arg("--chdir")
                    .arg(self.python_example(app))
                    .arg(callable);
                command
            }
        };
        match target {
            Target::Gunicorn(..) | Target::WasmtimeServe(_) => {}
            _ => {
                command.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
            }
        }
        command.args(args);
        // wasmtime serve takes its options before the component.
        if let Target::WasmtimeServe(app) = target {
            command.arg(self.guest(app));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the server")?;
        let scheme = if args.contains(&"--certfile") {
            "https"
        } else {
            "http"
        };
        let running = Running {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
        };
        wait_for_port(port, Duration::from_secs(60))?;
        Ok(running)
    }

    /// Runs wrk `self.runs` times against each server in turn (a, b, a, b, ...), so that the
    /// machine's drift falls on all of them alike. Returns, for each, the median of each
    /// figure and the server's CPU time per request.
    fn wrk(
        &self,
        loads: &[Load],
        path: &str,
        connections: u32,
    ) -> anyhow::Result<Vec<(WrkRun, f64)>> {
        for load in loads {
            // A warm-up, so that lazy work (instances, caches, page faults) is not measured.
            self.wrk_once(
                &format!("{}{path}", load.server.url),
                connections,
                1,
                load.extra,
            )?;
        }
        let mut measured: Vec<(Vec<WrkRun>, Vec<f64>)> =
            vec![(Vec::new(), Vec::new()); loads.len()];
        for _ in 0..self.runs {
            for (load, (runs, cpu_per_request)) in loads.iter().zip(&mut measured) {
                let url = format!("{}{path}", load.server.url);
                let cpu_before = cpu_seconds(load.server.child.id())?;
                let run = self.wrk_once(&url, connections, self.seconds, load.extra)?;
                let cpu = cpu_seconds(load.server.child.id())? - cpu_before;
                if run.errors > 0 {
                    bail!("{url}: {} errors under load", run.errors);
                }
                cpu_per_request.push(cpu / run.requests.max(1) as f64 * 1e6);
                runs.push(run);
            }
        }
        Ok(measured
            .into_iter()
            .map(|(runs, cpu_per_request)| {
                let pick = |figure: fn(&WrkRun) -> f64| {
                    median(&runs.iter().map(figure).collect::<Vec<_>>())
                };
                let summary = WrkRun {
                    requests_per_sec: pick(|run| run.requests_per_sec),
                    p50_ms: pick(|run| run.p50_ms),
                    p99_ms: pick(|run| run.p99_ms),
                    transfer_mb_per_sec: pick(|run| run.transfer_mb_per_sec),
                    requests: runs.iter().map(|run| run.requests).sum(),
                    errors: 0,
                };
                (summary, median(&cpu_per_request))
            })
            .collect())
    }

    /// Starts each of `variants` (a row's name, the server, its flags, wrk's extra
    /// arguments), runs them side by side with [`Harness::wrk`] on `path`, and adds a row
    /// each. Returns the results in the same order.
    fn side_by_side(
        &self,
        variants: &[(&str, Target, &[&str], &[&str])],
        path: &str,
        rows: &mut Vec<Row>,
    ) -> anyhow::Result<Vec<(WrkRun, f64)>> {
        let servers = variants
            .iter()
            .map(|(_, target, args, _)| self.start(*target, args))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let loads: Vec<Load> = servers
            .iter()
            .zip(variants)
            .map(|(server, (_, _, _, extra))| Load { server, extra })
            .collect();
        let results = self.wrk(&loads, path, 64)?;
        for ((name, ..), (run, cpu)) in variants.iter().zip(&results) {
            eprintln!("{name}: {:.0} req/s", run.requests_per_sec);
            rows.push(Row {
                scenario: (*name).to_owned(),
                requests_per_sec: Some(run.requests_per_sec),
                p50_ms: Some(run.p50_ms),
                p99_ms: Some(run.p99_ms),
                mb_per_sec: None,
                notes: format!("{cpu:.1} µs server CPU per request"),
            });
        }
        Ok(results)
    }

    /// [`Harness::wrk`] for one server.
    fn wrk_one(
        &self,
        server: &Running,
        path: &str,
        connections: u32,
        extra: &[&str],
    ) -> anyhow::Result<(WrkRun, f64)> {
        let mut results = self.wrk(&[Load { server, extra }], path, connections)?;
        Ok(results.remove(0))
    }

    fn wrk_once(
        &self,
        url: &str,
        connections: u32,
        seconds: u32,
        extra: &[&str],
    ) -> anyhow::Result<WrkRun> {
        let output = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
            ])
            .args(extra)
            .arg(url)
            .output()
            .context("run wrk (bench/run.sh installs it)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_wrk(&text).with_context(|| format!("unreadable wrk output:\n{text}"))
    }

    /// The `wasmtime` binary of [`WASMTIME_VERSION`], in a cache directory of the bench's.
    fn wasmtime(&self) -> PathBuf {
        self.root.join(format!(
            "target/bench-peers/wasmtime-{WASMTIME_VERSION}/bin/wasmtime"
        ))
    }

    /// Installs `wasmtime` with what `serve` needs, once: a build of some minutes.
    fn prepare_wasmtime(&self) -> anyhow::Result<()> {
        let binary = self.wasmtime();
        if binary.exists() {
            return Ok(());
        }
        let root = binary
            .parent()
            .and_then(|bin| bin.parent())
            .context("the wasmtime cache directory")?;
        eprintln!(
            "installing wasmtime {WASMTIME_VERSION} into {}",
            root.display()
        );
        run_checked(
            Command::new("cargo")
                .args([
                    "install",
                    "wasmtime-cli",
                    "--locked",
                    "--no-default-features",
                ])
                .args(["--version", &format!("={WASMTIME_VERSION}")])
                .args([
                    "--features",
                    "run,serve,cranelift,pooling-allocator,parallel-compilation,\
                     component-model,component-model-async,cache",
                ])
                .arg("--root")
                .arg(root),
        )
    }

    /// Where the bench writes the config files it serves.
    fn configs(&self) -> PathBuf {
        self.root.join("target/bench-configs")
    }

    fn python_example(&self, app: &str) -> PathBuf {
        self.root.join("guests/python/examples").join(app)
    }

    fn python_component(&self, app: &str) -> PathBuf {
        self.root.join(format!("target/bench-python/{app}.wasm"))
    }

    /// The virtualenv with Gunicorn, Flask and Django, for the native side of the
    /// comparison.
    fn venv(&self) -> PathBuf {
        self.root.join("target/bench-venv")
    }

    /// Builds the Python examples with the release `wasm-gw build-python`, and installs
    /// Gunicorn and the examples' requirements for running them natively.
    fn prepare_python(&self) -> anyhow::Result<()> {
        let venv = self.venv();
        if !venv.join("bin/python").exists() {
            run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        // Each run: pip does nothing when all is there, and a venv made before an app was
        // added gets its requirements.
        let mut install = Command::new(venv.join("bin/python"));
        install.args(["-m", "pip", "install", "--quiet", "gunicorn"]);
        for (app, _, has_requirements) in PYTHON_APPS {
            if has_requirements {
                install
                    .arg("-r")
                    .arg(self.python_example(app).join("requirements.txt"));
            }
        }
        run_checked(&mut install)?;
        for (app, callable, has_requirements) in PYTHON_APPS {
            let mut command = Command::new(self.binary("wasm-gw"));
            command
                .args(["build-python", callable, "--path"])
                .arg(self.python_example(app))
                .arg("-o")
                .arg(self.python_component(app));
            if has_requirements {
                command
                    .arg("--requirements")
                    .arg(self.python_example(app).join("requirements.txt"));
            }
            run_checked(&mut command)?;
        }
        Ok(())
    }

    /// A redis-server of our own, without persistence, on a free loopback port.
    fn start_redis(&self) -> anyhow::Result<Running> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        let running = Running {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(running)
    }

    fn script(&self, name: &str) -> String {
        self.root.join("bench").join(name).display().to_string()
    }
}

fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing answered on port {port}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// User plus system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesized command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .context("status field")?;
        let kib: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Sends one keep-alive GET and reads its response head and body.
fn get(stream: &mut BufReader<TcpStream>, path: &str) -> anyhow::Result<u16> {
    write!(
        stream.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n"
    )?;
    let mut status = String::new();
    stream.read_line(&mut status)?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse()?;
        }
    }
    stream.read_exact(&mut vec![0; length])?;
    Ok(status.get(9..12).context("status line")?.parse()?)
}

fn keep_alive(url_port: &str) -> anyhow::Result<BufReader<TcpStream>> {
    Ok(BufReader::new(TcpStream::connect(url_port)?))
}

/// What a browser sends with a page request: ten headers, where wrk sends only Host.
const BROWSER_HEADERS: [&str; 18] = [
    "-H",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "-H",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "-H",
    "Accept-Language: en-US,en;q=0.9",
    "-H",
    "Accept-Encoding: gzip, deflate, br",
    "-H",
    "Cookie: session=abc123def456; theme=dark",
    "-H",
    "Referer: http://127.0.0.1/",
    "-H",
    "Sec-Fetch-Dest: document",
    "-H",
    "Sec-Fetch-Mode: navigate",
    "-H",
    "Upgrade-Insecure-Requests: 1",
];

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files under target/.
fn tls_files(harness: &Harness) -> anyhow::Result<(String, String)> {
    let dir = harness.root.join("target/bench-tls");
    std::fs::create_dir_all(&dir)?;
    let key = rcgen::KeyPair::generate()?;
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])?.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, certificate.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let text = |path: PathBuf| path.to_string_lossy().into_owned();
    Ok((text(cert_path), text(key_path)))
}

fn address(server: &Running) -> &str {
    server.url.trim_start_matches("http://")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = std::env::current_dir()?;
    let harness = Harness {
        root: root.clone(),
        baseline: args.baseline.clone(),
        runs: if args.quick { 1 } else { 3 },
        seconds: if args.quick { 3 } else { 10 },
        quick: args.quick,
    };
    let mut rows = Vec::new();
    let mut ratios: Vec<(String, f64, String)> = Vec::new();
    let hello_path = "/?name=bench";
    if let (true, Some(dir)) = (args.only_baseline, &args.baseline) {
        baseline(&harness, dir, hello_path, &mut rows, &mut ratios)?;
        return write_report(&args, &root, &rows, &ratios);
    }
    if args.only_peers {
        peers(&harness, hello_path, &mut rows, &mut ratios)?;
        return write_report(&args, &root, &rows, &ratios);
    }

    // The hello variants run side by side and take turns under load, so that their ratios
    // compare like with like on a noisy machine.
    let variants: [(&str, Target, &[&str], &[&str]); 8] = [
        (
            "hello, keep-alive, 64 connections (Wasm)",
            Target::Wasm("hello"),
            &[],
            &[],
        ),
        (
            "hello, keep-alive, 64 connections (native handler)",
            Target::NativeHello,
            &[],
            &[],
        ),
        (
            "hello, keep-alive, access log off",
            Target::Wasm("hello"),
            &["--log-level", "warn"],
            &[],
        ),
        (
            "hello, keep-alive, --isolation request",
            Target::Wasm("hello"),
            &["--isolation", "request"],
            &[],
        ),
        (
            "hello, Connection: close",
            Target::Wasm("hello"),
            &[],
            &["-H", "Connection: close"],
        ),
        (
            "hello, keep-alive, with a browser's headers",
            Target::Wasm("hello"),
            &[],
            &BROWSER_HEADERS,
        ),
        (
            "hello, keep-alive, wasi:http 0.2 component (http_hello)",
            Target::Wasm("http_hello"),
            &[],
            &[],
        ),
        (
            "hello, keep-alive, wasi:http 0.2, --isolation request",
            Target::Wasm("http_hello"),
            &["--isolation", "request"],
            &[],
        ),
    ];
    let results = harness.side_by_side(&variants, hello_path, &mut rows)?;
    let [wasm, native, quiet, per_request] = [0, 1, 2, 3].map(|index| results[index].0);
    ratios.push((
        "wasi:http 0.2 / WSGI hello throughput".into(),
        results[6].0.requests_per_sec / wasm.requests_per_sec,
        "reported".into(),
    ));
    ratios.push((
        "Wasm / native hello throughput".into(),
        wasm.requests_per_sec / native.requests_per_sec,
        "≥ 0.90".into(),
    ));
    ratios.push((
        "access log on / off throughput".into(),
        wasm.requests_per_sec / quiet.requests_per_sec,
        "≥ 0.95".into(),
    ));
    ratios.push((
        "--isolation request / worker throughput".into(),
        per_request.requests_per_sec / wasm.requests_per_sec,
        "reported".into(),
    ));

    if args.peers {
        peers(&harness, hello_path, &mut rows, &mut ratios)?;
    }
    if let Some(dir) = &args.baseline {
        baseline(&harness, dir, hello_path, &mut rows, &mut ratios)?;
    }

    // TLS against plain HTTP, side by side: the cost of the session on each request, and of
    // a handshake (TLS 1.3, X25519MLKEM768 where wrk's OpenSSL offers it) on each connection.
    let (cert, key) = tls_files(&harness)?;
    let tls_args = ["--certfile", cert.as_str(), "--keyfile", key.as_str()];
    let hello = Target::Wasm("hello");
    let tls_variants: [(&str, Target, &[&str], &[&str]); 3] = [
        (
            "hello, keep-alive, plain HTTP (beside TLS)",
            hello,
            &[],
            &[],
        ),
        ("hello, keep-alive, TLS", hello, &tls_args, &[]),
        (
            "hello, TLS, Connection: close (a handshake a request)",
            hello,
            &tls_args,
            &["-H", "Connection: close"],
        ),
    ];
    let results = harness.side_by_side(&tls_variants, hello_path, &mut rows)?;
    ratios.push((
        "TLS / plain HTTP hello throughput, keep-alive".into(),
        results[1].0.requests_per_sec / results[0].0.requests_per_sec,
        "reported".into(),
    ));

    // Tasks: POST then GET, on each key-value backend.
    let state = harness.root.join("target/bench-state");
    let _ = std::fs::remove_dir_all(&state);
    let sqlite = format!("sqlite:{}/kv.sqlite", state.display());
    let redis = harness.start_redis()?;
    // Writes share transactions and fsyncs among the writers waiting at once: as many as
    // there are instances, which the app adds while its instances wait on the disk.
    const SHARED: &str = "synchronous=FULL, writes of waiting instances share an fsync";
    let backends: [(&str, &str, &[&str], &str); 5] = [
        (
            "SQLite, 2 instances, none added (--max-workers 2)",
            &sqlite,
            &["--workers", "2", "--max-workers", "2"],
            SHARED,
        ),
        (
            "SQLite",
            &sqlite,
            &["--workers", "2"],
            "2 instances, up to 16 while some wait; synchronous=FULL, writes of waiting \
             instances share an fsync",
        ),
        (
            "SQLite, --max-workers 64",
            &sqlite,
            &["--workers", "2", "--max-workers", "64"],
            SHARED,
        ),
        (
            "Redis",
            &redis.url,
            &["--workers", "2"],
            "Redis without persistence",
        ),
        ("memory", "memory", &["--workers", "2"], ""),
    ];
    for (name, kv, workers, notes) in backends {
        let mut args = vec!["--kv", kv];
        args.extend_from_slice(workers);
        let server = harness.start(Target::Wasm("tasks"), &args)?;
        let (run, _) = harness.wrk_one(&server, "/", 64, &["-s", &harness.script("tasks.lua")])?;
        if name == "SQLite" {
            // #23's baseline: about 2,800 req/s, an fsync per write, at any worker count.
            ratios.push((
                "tasks on SQLite, default instances / 2,800 req/s before group commit".into(),
                run.requests_per_sec / 2800.0,
                "≥ 3".into(),
            ));
        }
        rows.push(Row {
            scenario: format!("tasks, POST then GET, {name}"),
            requests_per_sec: Some(run.requests_per_sec),
            p50_ms: Some(run.p50_ms),
            p99_ms: Some(run.p99_ms),
            notes: notes.into(),
            ..Row::default()
        });
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&state);

    // Python: the same apps in wasm-gw and in Gunicorn, taking turns under load.
    harness.prepare_python()?;
    for (app, callable, _) in PYTHON_APPS {
        let path = if app == "hello" { hello_path } else { "/" };
        // The Django project's ALLOWED_HOSTS names localhost, as its settings for a
        // development server do.
        let extra: &[&str] = if app == "django" {
            &["-H", "Host: localhost"]
        } else {
            &[]
        };
        let sides = [Target::Python(app), Target::Gunicorn(app, callable)];
        let servers = sides
            .iter()
            .map(|target| harness.start(*target, &[]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let loads: Vec<Load> = servers
            .iter()
            .map(|server| Load { server, extra })
            .collect();
        let results = harness.wrk(&loads, path, 64)?;
        // Gunicorn's CPU is in its worker processes, which the per-process figure misses.
        let notes = [
            format!("{:.1} µs server CPU per request", results[0].1),
            "2 workers × 4 threads, natively".to_owned(),
        ];
        for ((run, _), (side, notes)) in results
            .iter()
            .zip(["wasm-gw", "Gunicorn gthread"].iter().zip(notes))
        {
            rows.push(Row {
                scenario: format!("Python {app}, {side}"),
                requests_per_sec: Some(run.requests_per_sec),
                p50_ms: Some(run.p50_ms),
                p99_ms: Some(run.p99_ms),
                notes,
                ..Row::default()
            });
        }
        ratios.push((
            format!("Python {app}: wasm-gw / Gunicorn gthread throughput"),
            results[0].0.requests_per_sec / results[1].0.requests_per_sec,
            "≥ 1.0".into(),
        ));
    }

    // Echo: 64 KiB in, 64 KiB out.
    let server = harness.start(Target::Wasm("echo"), &[])?;
    let (run, _) = harness.wrk_one(&server, "/", 64, &["-s", &harness.script("echo64k.lua")])?;
    rows.push(Row {
        scenario: "echo, 64 KiB body".into(),
        requests_per_sec: Some(run.requests_per_sec),
        p50_ms: Some(run.p50_ms),
        p99_ms: Some(run.p99_ms),
        mb_per_sec: Some(run.requests_per_sec / 16.0),
        notes: "MB/s of request bodies".into(),
    });
    drop(server);

    // Streaming out: 100k lines a response.
    let server = harness.start(Target::Wasm("stream"), &[])?;
    let (run, _) = harness.wrk_one(&server, "/count?n=100000", 8, &[])?;
    rows.push(Row {
        scenario: "stream /count of 100k lines, 8 connections".into(),
        requests_per_sec: Some(run.requests_per_sec),
        p50_ms: Some(run.p50_ms),
        p99_ms: Some(run.p99_ms),
        mb_per_sec: Some(run.transfer_mb_per_sec),
        ..Row::default()
    });
    drop(server);

    let (upload_mb_per_sec, rss_growth) = upload(&harness)?;
    rows.push(Row {
        scenario: format!("upload of {} MiB to /sink", upload_size(&harness) >> 20),
        mb_per_sec: Some(upload_mb_per_sec),
        notes: format!("peak RSS growth {rss_growth:.1} MiB"),
        ..Row::default()
    });
    ratios.push(("upload MB/s".into(), upload_mb_per_sec, "≥ 1000".into()));

    let (cold, cached) = start_times(&harness, Target::Wasm("tasks"), "/tasks")?;
    rows.push(Row {
        scenario: "start to first 200: cold / cached".into(),
        notes: format!("{cold:.0} ms / {cached:.0} ms"),
        ..Row::default()
    });
    ratios.push((
        "cold / cached start time".into(),
        cold / cached,
        "≥ 5".into(),
    ));
    // Python components carry CPython: compiling one is what the code cache saves.
    let (cold, cached) = start_times(&harness, Target::Python("flask"), "/")?;
    rows.push(Row {
        scenario: "Flask, start to first 200: cold / cached".into(),
        notes: format!("{cold:.0} ms / {cached:.0} ms"),
        ..Row::default()
    });
    ratios.push(("Flask cached start, ms".into(), cached, "≤ 200".into()));

    let (one, thousand) = routing_ns();
    rows.push(Row {
        scenario: "routing /api/tasks/1: 1 route / 1,000 routes".into(),
        notes: format!("{one:.0} ns / {thousand:.0} ns per lookup, in process"),
        ..Row::default()
    });
    ratios.push((
        "routing cost, 1,000 routes / 1 route".into(),
        thousand / one,
        "≈ 1 (under 5% of a request either way)".into(),
    ));
    let routed = routing_end_to_end(&harness)?;
    for (routes, (run, cpu)) in ["1 app", "1,000 apps"].iter().zip(&routed) {
        rows.push(Row {
            scenario: format!("hello at /api among {routes}, keep-alive, 64 connections"),
            requests_per_sec: Some(run.requests_per_sec),
            p50_ms: Some(run.p50_ms),
            p99_ms: Some(run.p99_ms),
            notes: format!("{cpu:.1} µs server CPU per request"),
            ..Row::default()
        });
    }
    ratios.push((
        "hello throughput among 1,000 apps / among 1".into(),
        routed[1].0.requests_per_sec / routed[0].0.requests_per_sec,
        "≥ 0.95".into(),
    ));

    let (idle, loaded) = idle_memory(&harness)?;
    rows.push(Row {
        scenario: "memory: idle / with 1,000 idle keep-alive connections".into(),
        notes: format!("{idle:.1} MiB / {loaded:.1} MiB RSS"),
        ..Row::default()
    });

    write_report(&args, &root, &rows, &ratios)
}

/// Prints the report and writes it to `--out`.
fn write_report(
    args: &Args,
    root: &Path,
    rows: &[Row],
    ratios: &[(String, f64, String)],
) -> anyhow::Result<()> {
    let revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()?;
    let machine = Machine {
        cores: thread::available_parallelism().map_or(1, usize::from),
        date: String::from_utf8_lossy(&date.stdout).trim().to_owned(),
        revision: String::from_utf8_lossy(&revision.stdout).trim().to_owned(),
        mode: if args.quick {
            "quick".into()
        } else {
            "full".into()
        },
    };
    let report = render(&machine, rows, ratios);
    print!("{report}");
    std::fs::write(root.join(&args.out), report)?;
    Ok(())
}

/// This tree's hello against the baseline's, keep-alive with wrk's one header and with a
/// browser's ten, taking turns under load.
fn baseline(
    harness: &Harness,
    dir: &Path,
    hello_path: &str,
    rows: &mut Vec<Row>,
    ratios: &mut Vec<(String, f64, String)>,
) -> anyhow::Result<()> {
    let label = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let this = Target::Wasm("hello");
    let then = Target::Baseline("hello");
    let names = [
        "baseline: hello, keep-alive, this tree".to_owned(),
        format!("baseline: hello, keep-alive, {label}"),
        "baseline: hello, a browser's headers, this tree".to_owned(),
        format!("baseline: hello, a browser's headers, {label}"),
    ];
    let variants: [(&str, Target, &[&str], &[&str]); 4] = [
        (&names[0], this, &[], &[]),
        (&names[1], then, &[], &[]),
        (&names[2], this, &[], &BROWSER_HEADERS),
        (&names[3], then, &[], &BROWSER_HEADERS),
    ];
    let results = harness.side_by_side(&variants, hello_path, rows)?;
    for (what, index) in [("keep-alive", 0), ("a browser's headers", 2)] {
        ratios.push((
            format!("hello, {what}: this tree / {label} throughput"),
            results[index].0.requests_per_sec / results[index + 1].0.requests_per_sec,
            "≥ 0.97".into(),
        ));
    }
    Ok(())
}

/// wasm-gw against what users would run instead, taking turns under load in one run: native
/// Rust servers (hyper on tokio, a blocking thread pool) on hello, and `wasmtime serve` on
/// the same `wasi:http` hello component, each with instance reuse and with a fresh instance
/// per request. The targets are issue #23's.
fn peers(
    harness: &Harness,
    hello_path: &str,
    rows: &mut Vec<Row>,
    ratios: &mut Vec<(String, f64, String)>,
) -> anyhow::Result<()> {
    harness.prepare_wasmtime()?;
    let hello = Target::Wasm("hello");
    let hyper = Target::Peer("hyper-hello");
    let http_hello = Target::Wasm("http_hello");
    let wasmtime = Target::WasmtimeServe("http_hello");
    let reuse: &[&str] = &[
        "-O",
        "pooling-allocator=y",
        "--max-instance-reuse-count",
        "128",
    ];
    let close: &[&str] = &["-H", "Connection: close"];
    let per_request: &[&str] = &["--isolation", "request"];
    let variants: [(&str, Target, &[&str], &[&str]); 10] = [
        ("peers: WSGI hello, wasm-gw", hello, &[], &[]),
        (
            "peers: hello, native hyper + tokio, 2 threads",
            hyper,
            &[],
            &[],
        ),
        (
            "peers: hello, native thread pool (std::net)",
            Target::Peer("threads-hello"),
            &[],
            &[],
        ),
        (
            "peers: wasi:http hello, wasm-gw, instances reused",
            http_hello,
            &[],
            &[],
        ),
        (
            "peers: wasi:http hello, wasmtime serve, pooling, reuse 128",
            wasmtime,
            reuse,
            &[],
        ),
        (
            "peers: WSGI hello, wasm-gw, --isolation request",
            hello,
            per_request,
            &[],
        ),
        (
            "peers: wasi:http hello, wasm-gw, --isolation request",
            http_hello,
            per_request,
            &[],
        ),
        (
            "peers: wasi:http hello, wasmtime serve, default (an instance a request)",
            wasmtime,
            &[],
            &[],
        ),
        (
            "peers: WSGI hello, wasm-gw, Connection: close",
            hello,
            &[],
            close,
        ),
        (
            "peers: hello, native hyper + tokio, Connection: close",
            hyper,
            &[],
            close,
        ),
    ];
    let results = harness.side_by_side(&variants, hello_path, rows)?;
    let rate: Vec<f64> = results
        .iter()
        .map(|(run, _)| run.requests_per_sec)
        .collect();
    let mut ratio = |name: &str, value: f64, target: &str| {
        ratios.push((name.into(), value, target.into()));
    };
    ratio(
        "keep-alive hello: WSGI on wasm-gw / native hyper + tokio",
        rate[0] / rate[1],
        "≥ 0.90",
    );
    ratio(
        "keep-alive hello: WSGI on wasm-gw / native thread pool",
        rate[0] / rate[2],
        "reported",
    );
    ratio(
        "keep-alive hello: WSGI on wasm-gw / wasi:http on wasmtime serve (pooling, reuse 128)",
        rate[0] / rate[4],
        "≥ 3",
    );
    ratio(
        "keep-alive wasi:http hello: wasm-gw / wasmtime serve (pooling, reuse 128)",
        rate[3] / rate[4],
        "≥ 2",
    );
    ratio(
        "an instance a request: WSGI hello on wasm-gw / wasmtime serve default",
        rate[5] / rate[7],
        "≥ 4",
    );
    ratio(
        "an instance a request: wasi:http hello on wasm-gw / wasmtime serve default",
        rate[6] / rate[7],
        "reported",
    );
    ratio(
        "Connection: close hello: WSGI on wasm-gw / native hyper + tokio",
        rate[8] / rate[9],
        "≥ 1.0",
    );
    Ok(())
}

fn upload_size(harness: &Harness) -> u64 {
    if harness.quick { 256 << 20 } else { 1 << 30 }
}

/// Streams a large body to /sink once per run: the median MB/s, and how far the server's
/// peak RSS rose over all of them.
fn upload(harness: &Harness) -> anyhow::Result<(f64, f64)> {
    let server = harness.start(Target::Wasm("stream"), &["--workers", "1"])?;
    let mut warm = keep_alive(address(&server))?;
    write!(
        warm.get_mut(),
        "POST /sink HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\n\r\nx"
    )?;
    let mut line = String::new();
    warm.read_line(&mut line)?;
    let (baseline, _) = memory_mib(server.child.id())?;

    let total = upload_size(harness);
    let block = vec![b'u'; 1 << 20];
    let mut rates = Vec::new();
    for _ in 0..harness.runs {
        let mut stream = TcpStream::connect(address(&server))?;
        let started = Instant::now();
        write!(
            stream,
            "POST /sink HTTP/1.1\r\nHost: b\r\nContent-Length: {total}\r\n\r\n"
        )?;
        for _ in 0..total >> 20 {
            stream.write_all(&block)?;
        }
        let mut reply = [0; 12];
        stream.read_exact(&mut reply)?;
        let seconds = started.elapsed().as_secs_f64();
        if &reply[9..12] != b"200" {
            bail!("upload answered {}", String::from_utf8_lossy(&reply));
        }
        rates.push(total as f64 / (1 << 20) as f64 / seconds);
    }
    let (_, peak) = memory_mib(server.child.id())?;
    Ok((median(&rates), peak - baseline))
}

/// Milliseconds from spawning the server to its first 200: with an empty code cache, and
/// with a warm one. Medians of three.
/// Milliseconds from starting the server to the first 200 for `path`: with an empty code
/// cache, then with the cache that start filled.
fn start_times(harness: &Harness, target: Target, path: &str) -> anyhow::Result<(f64, f64)> {
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for attempt in 0..3 {
        let cache = std::env::temp_dir().join(format!(
            "wasm-gw-bench-cache-{}-{attempt}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&cache);
        let cache_arg = cache.display().to_string();
        cold.push(first_response_ms(harness, target, path, &cache_arg)?);
        cached.push(first_response_ms(harness, target, path, &cache_arg)?);
        let _ = std::fs::remove_dir_all(&cache);
    }
    Ok((median(&cold), median(&cached)))
}

fn first_response_ms(
    harness: &Harness,
    target: Target,
    path: &str,
    cache: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let server = harness.start(target, &["--cache-dir", cache, "--kv", "memory"])?;
    let mut stream = keep_alive(address(&server))?;
    let status = get(&mut stream, path)?;
    if status != 200 {
        bail!("first response was {status}");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Hello at /api served from a config of one app, and from one of 1,000 apps (999 more
/// hellos, one instance each), taking turns under load: the whole request, routed.
fn routing_end_to_end(harness: &Harness) -> anyhow::Result<Vec<(WrkRun, f64)>> {
    let hello = harness.guest("hello");
    let app = |name: &str, route: &str, instances: u32| {
        format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nroute = \"{route}\"\n\
             instances = {instances}\n\n",
            hello.display()
        )
    };
    let api = app("api", "/api", 2);
    let others: String = (0..999)
        .map(|n| app(&format!("app{n}"), &format!("/app{n}"), 1))
        .collect();
    std::fs::create_dir_all(harness.configs())?;
    std::fs::write(harness.configs().join("one.toml"), &api)?;
    std::fs::write(harness.configs().join("thousand.toml"), others + &api)?;
    let quiet = ["--log-level", "warn", "--kv", "memory"];
    let servers = [
        harness.start(Target::Config("one.toml"), &quiet)?,
        harness.start(Target::Config("thousand.toml"), &quiet)?,
    ];
    let loads: Vec<Load> = servers
        .iter()
        .map(|server| Load { server, extra: &[] })
        .collect();
    harness.wrk(&loads, "/api/?name=bench", 64)
}

/// Nanoseconds per routing decision with one app mounted, and with 1,000: the router itself,
/// in this process, since a thousand real apps would measure their startup instead.
fn routing_ns() -> (f64, f64) {
    let mount = |prefix: String| Mount {
        hosts: Vec::new(),
        prefix,
        route: Route {
            pool: Arc::new(CurrentPool::new(Pool::empty())),
            max_body: None,
            metrics: Arc::new(metrics().app(&"unused".into())),
        },
    };
    let one = Router::new([mount("/api".to_owned())]);
    let thousand = Router::new(
        (0..999)
            .map(|n| mount(format!("/app{n}")))
            .chain([mount("/api".to_owned())]),
    );
    let per_lookup = |router: &Router| {
        const LOOKUPS: u32 = 2_000_000;
        let started = Instant::now();
        for _ in 0..LOOKUPS {
            let path = std::hint::black_box("/api/tasks/1");
            std::hint::black_box(router.route("localhost", path));
        }
        started.elapsed().as_nanos() as f64 / f64::from(LOOKUPS)
    };
    // Interleaved, the better of three each, against the machine's drift.
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        best.0 = best.0.min(per_lookup(&one));
        best.1 = best.1.min(per_lookup(&thousand));
    }
    best
}

/// The server's RSS after a warm-up, then with 1,000 idle keep-alive connections open.
fn idle_memory(harness: &Harness) -> anyhow::Result<(f64, f64)> {
    let server = harness.start(
        Target::Wasm("hello"),
        &["--keep-alive", "60", "--max-connections", "2000"],
    )?;
    let mut first = keep_alive(address(&server))?;
    get(&mut first, "/")?;
    let (idle, _) = memory_mib(server.child.id())?;
    let mut open = Vec::new();
    for _ in 0..1000 {
        let mut stream = keep_alive(address(&server))?;
        get(&mut stream, "/")?;
        open.push(stream);
    }
    let (loaded, _) = memory_mib(server.child.id())?;
    drop(open);
    Ok((idle, loaded))
}
