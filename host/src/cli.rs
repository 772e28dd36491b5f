//! The command line: `wasm-gw serve APP.wasm [options]`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::access_log::LogFormat;
use crate::compile::CodeCache;
use crate::config;
use crate::guest::config::ConfigValues;
use crate::guest::{DirGrant, Grants, OutputRate};
use crate::kv::{self, BackendUrl};
use crate::loader::AppSpec;
use crate::outbound::policy::{Pattern, Policy};
use crate::pool::{QueuePolicy, Size};
use crate::runtime::{InstancePolicy, Isolation};

#[derive(Debug, Parser)]
#[command(
    name = "wasm-gw",
    version,
    about = "Serve WSGI-style web apps compiled to WebAssembly components"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve apps over HTTP/1.1: one, several at path prefixes, or those of a config file.
    Serve(Box<ServeArgs>),
    /// Check whether a component fits the app world: list the imports it needs and the
    /// exports it has, and name what is missing. Exits 1 if it does not fit.
    Check(CheckArgs),
    /// Create a Rust app crate, NAME, that builds and serves as it is; print the two
    /// commands that do it.
    New(NewArgs),
    /// Compile an app ahead of time into a `.cwasm` that `serve` starts at once. The
    /// result is native code for this machine and this wasm-gw version. Not for a Python app,
    /// whose files a `.cwasm` cannot hold: `build-python` fills the code cache instead.
    Compile(CompileArgs),
    /// Build a Python WSGI app (any PEP 3333 callable, Flask and Django included) into a
    /// component, which carries the standard library, the app's directories and its
    /// requirements for the app to read at run time. Needs Python 3 with venv and pip;
    /// componentize-py is installed on first use.
    BuildPython(BuildPythonArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildPythonArgs {
    /// The WSGI callable, MODULE:NAME, as in hello:hello_app or app:app.
    pub callable: String,

    /// The component to write.
    #[arg(short, long)]
    pub output: PathBuf,

    /// Packages the app needs, as a pip requirements file. Wheels only; native code in them
    /// is left out, and a package that cannot do without it fails the build by name.
    #[arg(long)]
    pub requirements: Option<PathBuf>,

    /// A directory with the app's modules and files, packed into the component (less hidden
    /// entries, __pycache__, node_modules, virtualenvs and .wasm files); repeatable
    /// [default: .].
    #[arg(long = "path")]
    pub paths: Vec<PathBuf>,

    /// Wrap the app in wsgiref.validate.validator, which checks every call against PEP 3333
    /// and fails the request on a violation: for testing an app, or wasm-gw.
    #[arg(long)]
    pub validate: bool,

    /// Where wasm-gw keeps componentize-py, and the compiled code and unpacked files that
    /// `serve` with the same --cache-dir starts from [default: $XDG_CACHE_HOME/wasm-gw or
    /// ~/.cache/wasm-gw].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The component to check.
    pub app: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The new crate's directory; its last part is the crate's name.
    pub name: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The component to compile.
    pub app: PathBuf,

    /// Where to write the compiled code [default: the app's path with `.cwasm`].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The app: a WebAssembly component built for the wasm-gw app world (`.wasm`), or one
    /// compiled ahead of time by `wasm-gw compile` (`.cwasm`). It is mounted at `/`.
    #[arg(required_unless_present_any = ["mounts", "config"])]
    pub app: Option<PathBuf>,

    /// Host the apps of this TOML file, one [[app]] table each, with settings of their own;
    /// its [server] table takes these flags by name, and the flags given here win over it
    /// and are every app's defaults.
    #[arg(long, conflicts_with_all = ["app", "mounts", "kv_namespace"])]
    pub config: Option<PathBuf>,

    /// Mount an app at a path prefix: PREFIX=APP.wasm, repeatable. A request goes to the app
    /// with the longest prefix of its path, on whole segments; the prefix is its SCRIPT_NAME
    /// and the rest its PATH_INFO. Paths under no app get 404.
    #[arg(long = "mount", value_name = "PREFIX=APP", value_parser = parse_mount)]
    pub mounts: Vec<(String, PathBuf)>,

    /// Watch the app files and reload one when it changes; watch the config file too, and
    /// reload everything when it does, as SIGHUP does (for development).
    #[arg(long)]
    pub reload: bool,

    /// Don't keep compiled code between runs; compile the app at every start. Files a
    /// Python app carries are unpacked under $TMPDIR/wasm-gw-files-UID instead.
    #[arg(long)]
    pub no_cache: bool,

    /// Where compiled code, and the files Python apps carry, are kept between runs
    /// [default: $XDG_CACHE_HOME/wasm-gw or ~/.cache/wasm-gw].
    #[arg(long, conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,

    /// Listen on this socket, repeatable, in Gunicorn's forms: HOST:PORT, [::1]:PORT,
    /// unix:PATH or fd://N (a listening socket inherited at descriptor N). Every listener
    /// serves the same apps. Sockets passed by systemd (LISTEN_FDS) are used instead
    /// [default: --host and --port].
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS", conflicts_with_all = ["host", "port"])]
    pub binds: Vec<crate::listener::Bind>,

    /// Address to listen on, when there is no --bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on, when there is no --bind; 0 picks a free one (the startup line
    /// shows which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Serve HTTPS with this PEM certificate chain, the server's own first (Gunicorn's
    /// --certfile); needs --keyfile. Re-read on SIGHUP, and when it changes under --reload.
    #[arg(long, value_name = "FILE", requires = "keyfile")]
    pub certfile: Option<PathBuf>,

    /// The PEM private key of --certfile (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "certfile")]
    pub keyfile: Option<PathBuf>,

    /// PEM certificates of the authorities that client certificates are checked against.
    #[arg(long, value_name = "FILE", requires = "certfile")]
    pub ca_certs: Option<PathBuf>,

    /// Whether TLS clients must show a certificate signed by --ca-certs: none, optional
    /// (checked if shown) or required; 0, 1 and 2 as Gunicorn takes them. A verified
    /// client's subject reaches the app as SSL_CLIENT_S_DN.
    #[arg(long, default_value = "none", value_name = "none|optional|required")]
    pub cert_reqs: crate::tls::CertReqs,

    /// Bits taken out of the mode of unix: socket files (0777): 0 lets any local user
    /// connect, 007 the socket's owner and group alone. Octal with a leading 0 (`0o` or
    /// `0x` also work), as Gunicorn reads it.
    #[arg(short = 'm', long, default_value = "0", value_parser = parse_umask)]
    pub umask: u32,

    /// Instances of the app that run at once, each serving one request at a time (one that
    /// waits on a peer or the disk does not count: see --max-workers) [default: the number
    /// of CPUs].
    #[arg(short = 'w', long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Most instances of the app while some wait on something other than the CPU (a slow
    /// client, the key-value store's disk, an outbound request, a sleep): a free one, or a
    /// new one, takes a queued request while fewer than --workers can run; those beyond
    /// --workers go after 10 s unneeded [default: 8 × --workers, at most 1024].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_workers: Option<u32>,

    /// Run as this user (a name or a uid) once the sockets are bound and the TLS key read:
    /// start as root to bind ports below 1024, and serve as someone who can do little.
    /// Only root can switch.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Run as this group (a name or a gid) once the sockets are bound [default: --user's
    /// own group].
    #[arg(short = 'g', long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Write the server's process id to this file once it serves, and remove it at exit
    /// (Gunicorn's --pid).
    #[arg(long, value_name = "FILE")]
    pub pid: Option<PathBuf>,

    /// Deadline in seconds for one request; an app still running then is stopped and the
    /// client gets 504.
    #[arg(long, default_value = "30", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Seconds of wall time a streamed response may take, writes to the client included;
    /// then it is cut off [default: 4 times --timeout].
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seconds)]
    pub stream_timeout: Option<Duration>,

    /// Linear memory cap per instance, for example 64MiB or 1GiB.
    #[arg(long, default_value = "128MiB", value_parser = parse_memory)]
    pub max_memory: usize,

    /// How long an instance lives: `worker` keeps one per worker across requests (module
    /// state persists; fastest); `request` makes a fresh one for every request (nothing
    /// persists; one instantiation per request).
    #[arg(long, value_enum, default_value = "worker")]
    pub isolation: Isolation,

    /// Replace an instance after it served this many requests, as Gunicorn does; 0 never.
    #[arg(long, default_value_t = 0)]
    pub max_requests: u64,

    /// Add a random 0 to J requests to each instance's --max-requests, so that instances
    /// don't all restart together.
    #[arg(long, default_value_t = 0)]
    pub max_requests_jitter: u64,

    /// Requests of one app that may wait for a free instance; more get 503 at once
    /// [default: an equal share of --max-connections: it divided by the number of apps].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_limit: Option<u32>,

    /// Seconds a request may wait for a free instance before it gets 503; a request whose
    /// client leaves meanwhile is dropped before it takes one.
    #[arg(long, default_value = "10", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub queue_timeout: Duration,

    /// Bytes a second of an app's stdout and stderr that go to the log, on average; lines
    /// past it are dropped, counted in /metrics and reported in the log. 0 for no limit.
    #[arg(long, default_value = "64KiB", value_parser = parse_size_or_zero)]
    pub app_log_rate: usize,

    /// Bytes of an app's output that may go to the log at once, after a quiet while.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub app_log_burst: usize,

    /// Grant the app a directory: HOST_PATH[::GUEST_PATH][:ro]. Repeatable. Without it the
    /// app sees no files at all.
    #[arg(long = "dir", value_name = "HOST_PATH[::GUEST_PATH][:ro]", value_parser = parse_dir)]
    pub dirs: Vec<DirGrant>,

    /// Grant the app an environment variable: KEY=VALUE. Repeatable. Without it the app sees
    /// an empty environment.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Give the app a configuration value, which it reads through wasi:config/store (the
    /// SDK's config::get, the Python bridge's wasm_gw_config.get): KEY=VALUE. Repeatable.
    /// Values are never logged; put secrets in an [app.config] table's { env = "NAME" }
    /// rather than on the command line.
    #[arg(long = "config-var", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub config_vars: Vec<(String, String)>,

    /// Let the app send HTTP requests to PATTERN: scheme://host[:port], with *.domain for
    /// the domain's subdomains and :* for any port; the host may be an IP address or a CIDR
    /// network. Repeatable; without one, every outbound request is refused. Loopback,
    /// private, link-local and this server's own addresses need a pattern that names them.
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub allow_outbound: Vec<Pattern>,

    /// Trust the CA certificates in FILE (PEM) for apps' https requests, beside the Mozilla
    /// roots. Certificates are always verified.
    #[arg(long = "outbound-ca", value_name = "FILE")]
    pub outbound_ca: Option<PathBuf>,

    /// Seconds an app's outbound connection (DNS, TCP, TLS) may take.
    #[arg(long, default_value = "10", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub outbound_connect_timeout: Duration,

    /// Seconds from an outbound request to its response's head; a request's own options
    /// may ask for less.
    #[arg(long, default_value = "30", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub outbound_first_byte_timeout: Duration,

    /// Seconds an outbound response's body may pause between bytes.
    #[arg(long, default_value = "30", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub outbound_idle_timeout: Duration,

    /// Most outbound requests one app may have open at once; more fail at once with
    /// connection-limit-reached.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_max_concurrent: u32,

    /// Largest outbound response body an app may receive: 64MiB by default.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub outbound_max_response_size: usize,

    /// Where the app's key-value data lives (wasi:keyvalue): sqlite:PATH, shared by this
    /// process's workers and kept across restarts; redis://HOST:PORT/DB, shared by several
    /// wasm-gw processes; or memory, gone at exit [default: sqlite:STATE_DIR/kv.sqlite].
    #[arg(long, value_name = "URL")]
    pub kv: Option<BackendUrl>,

    /// The directory for state that outlives the process: the default key-value database.
    #[arg(long, default_value = "wasm-gw-data")]
    pub state_dir: PathBuf,

    /// The app's key-value namespace: it sees only its own buckets, and two apps with
    /// different namespaces never see each other's keys [default: the app's file stem].
    #[arg(long, value_name = "NAME")]
    pub kv_namespace: Option<String>,

    /// Longest key-value key in bytes.
    #[arg(long, default_value = "256", value_parser = parse_size)]
    pub kv_max_key: usize,

    /// Largest key-value value, for example 1MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub kv_max_value: usize,

    /// Most keys one app may hold in the key-value store, over all its buckets; writes past
    /// it are refused.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_quota_keys: u64,

    /// Most bytes of keys and values one app may hold in the key-value store, for example
    /// 1GiB; writes past it are refused.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub kv_quota_bytes: usize,

    /// Seconds an idle keep-alive connection waits for its next request.
    #[arg(long, default_value = "5", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub keep_alive: Duration,

    /// Open connections at most. At the limit, idle keep-alive connections and then those
    /// that have not sent a whole head are closed to make room; if none can be, new
    /// connections wait in the listen backlog [default: 10000, or fewer if the limit of
    /// open files, raised to its maximum at startup, is lower].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Connections the kernel may queue before they are accepted.
    #[arg(long, default_value_t = 1024)]
    pub backlog: i32,

    /// Seconds the whole request head may take, from its first byte, however slowly it
    /// trickles; also how long a new connection may stay silent. Past it: 408.
    #[arg(long, default_value = "10", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub header_timeout: Duration,

    /// Seconds a request body, or a response, may take before --body-min-rate applies
    /// (Apache's mod_reqtimeout `body=`, applied both ways).
    #[arg(long, default_value = "20", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub body_timeout: Duration,

    /// Bytes a second a request body must arrive, and a response drain, at the least: each
    /// this many bytes earns another second, so a trickle is cut off and a moving transfer
    /// is not.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_min_rate: u64,

    /// Request bodies of this many bytes or fewer (with a Content-Length) are read whole
    /// before the request takes an instance, so that slow uploads of forms and JSON never
    /// hold one; larger ones stream to the app as it reads them. 0 streams every body.
    /// (nginx's client_body_buffer_size.)
    #[arg(long, default_value = "1MiB", value_parser = parse_size_or_zero)]
    pub client_body_buffer_size: usize,

    /// The proxies whose X-Forwarded-For, X-Forwarded-Proto and Forwarded headers are
    /// believed: addresses and CIDR networks separated by commas, or * for any peer. From
    /// them, REMOTE_ADDR is the rightmost hop that is not itself one of them, and
    /// wsgi.url_scheme follows the forwarded proto; from anyone else the headers change
    /// nothing.
    #[arg(long, default_value = "127.0.0.1,::1")]
    pub forwarded_allow_ips: crate::environ::Proxies,

    /// Take the PROXY protocol header a load balancer sends before a connection's first
    /// bytes (HAProxy, AWS and GCP balancers, stunnel): off, v1 (text), v2 (binary) or auto
    /// (either); the flag alone is auto. The header may be left out; REMOTE_ADDR and
    /// REMOTE_PORT are then the client's it names.
    #[arg(long, default_value = "off", num_args = 0..=1, default_missing_value = "auto", value_name = "MODE")]
    pub proxy_protocol: crate::http::proxy::Mode,

    /// The peers that may send a PROXY protocol header: addresses and CIDR networks
    /// separated by commas, or * for any peer; from others one gets 403.
    #[arg(long, default_value = "127.0.0.1,::1")]
    pub proxy_allow_from: crate::environ::Proxies,

    /// Longest request line in bytes, its CRLF not counted, as Gunicorn counts it; longer
    /// ones get 414.
    #[arg(long, default_value_t = 4094, value_parser = clap::value_parser!(u32).range(16..))]
    pub limit_request_line: u32,

    /// Serve methods that are valid tokens but unconventional (with a lowercase letter or
    /// `#`, or fewer than 3 or more than 20 characters), which are refused with 400 by
    /// default, as Gunicorn does.
    #[arg(long)]
    pub permit_unconventional_http_method: bool,

    /// Most header fields in a request (and trailer fields in a chunked body); more get 431.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit_request_fields: u32,

    /// Longest header field line in bytes, counted as Gunicorn does: the whole line with its
    /// CRLF; longer ones get 431.
    #[arg(long, default_value_t = 8190, value_parser = clap::value_parser!(u32).range(16..))]
    pub limit_request_field_size: u32,

    /// Largest request body, for example 10MiB; 0 means unlimited. Larger ones get 413, as
    /// soon as Content-Length or a chunk size shows it.
    #[arg(long, default_value = "1GiB", value_parser = parse_size_or_zero)]
    pub max_body_size: usize,

    /// Seconds that requests in flight get to finish after SIGTERM or SIGINT; a second
    /// signal exits at once.
    #[arg(long, default_value = "30", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub graceful_timeout: Duration,

    /// Serve /health and /metrics (Prometheus) on this address, apart from the apps; off
    /// unless given. Keep it off the public network.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,

    /// Log verbosity: error, warn, info, debug or trace. Access lines are logged at info.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,

    /// How log lines are written: `text` for people, or `json`, one object per line, for
    /// log collectors; access lines too.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How many times `--workers` an app's instances may grow to by default while some wait:
/// the tasks app on SQLite, whose instances wait on the disk, served 2.7 times as many
/// requests a second with 2 that grow to 16 as with 2 fixed, on a 2-core machine (bench).
const GROWTH: usize = 8;

/// Most instances one app may have.
const MAX_WORKERS: usize = 1024;

/// Flags that `[server]` cannot set: apps come from `[[app]]` tables, which hold their own
/// grants and namespace.
const NOT_SERVER_SETTINGS: [&str; 8] = [
    "app",
    "config",
    "mounts",
    "dirs",
    "env",
    "kv_namespace",
    "help",
    "version",
];

impl ServeArgs {
    /// These arguments with the `[server]` table of `--config` under them: a flag on the
    /// command line wins over the file's setting of it, and over a setting it conflicts with.
    /// `argv` is the whole command line they came from.
    pub fn with_server_table(self: Box<Self>, argv: &[OsString]) -> anyhow::Result<Box<Self>> {
        let Some(file) = &self.config else {
            return Ok(self);
        };
        let settings = config::server_settings(file)?;
        if settings.is_empty() {
            return Ok(self);
        }
        let command = Cli::command();
        let flags = command
            .find_subcommand("serve")
            .expect("serve is a subcommand");
        let program = argv.first().cloned().unwrap_or_else(|| "wasm-gw".into());
        let matches = command.clone().try_get_matches_from(argv)?;
        let on_command_line: Vec<&clap::Arg> = match matches.subcommand_matches("serve") {
            Some(serve) => flags
                .get_arguments()
                .filter(|arg| {
                    serve.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
                })
                .collect(),
            None => Vec::new(),
        };
        let conflict = |a: &clap::Arg, b: &clap::Arg| {
            let names = |x: &clap::Arg, y: &clap::Arg| {
                flags
                    .get_arg_conflicts_with(x)
                    .iter()
                    .any(|other| other.get_id() == y.get_id())
            };
            a.get_id() == b.get_id() || names(a, b) || names(b, a)
        };
        let mut kept = Vec::new();
        for setting in &settings {
            let arg = flags.get_arguments().find(|arg| {
                arg.get_long() == Some(setting.key.as_str())
                    && !NOT_SERVER_SETTINGS.contains(&arg.get_id().as_str())
            });
            let Some(arg) = arg else {
                // Flags of serve's that a config file sets per app, or not at all.
                let instead = match setting.key.as_str() {
                    "dir" => Some("each [[app]] table's dirs = [\"HOST_PATH::GUEST_PATH\"]"),
                    "env" => Some("each [[app]] table's env = { KEY = \"value\" }"),
                    "kv-namespace" => Some("each [[app]] table's kv-namespace"),
                    "mount" => Some("[[app]] tables, one an app"),
                    "config" => Some("the command line: a config file names no other"),
                    _ => None,
                };
                if let Some(instead) = instead {
                    anyhow::bail!(
                        "{}: [server] {}: --{} is a flag of serve's, but in a config file it \
                         goes in {instead}",
                        setting.place,
                        setting.key,
                        setting.key
                    );
                }
                anyhow::bail!(
                    "{}: [server] {}: not a server setting; [server] takes serve's flags, \
                     such as port, workers or timeout, and [[app]] tables the apps",
                    setting.place,
                    setting.key
                );
            };
            // Each setting alone first, so that an error points at its line.
            let alone = [
                program.clone(),
                "serve".into(),
                "--config".into(),
                file.into(),
            ]
            .into_iter()
            .chain(setting.args.iter().map(OsString::from));
            if let Err(error) = command.clone().try_get_matches_from(alone) {
                anyhow::bail!(
                    "{}: [server] {}: {}",
                    setting.place,
                    setting.key,
                    clap_reason(&error)
                );
            }
            if !on_command_line.iter().any(|given| conflict(arg, given)) {
                kept.push(setting);
            }
        }
        let merged = argv
            .iter()
            .take(2)
            .cloned()
            .chain(
                kept.iter()
                    .flat_map(|setting| setting.args.iter().map(OsString::from)),
            )
            .chain(argv.iter().skip(2).cloned());
        let parsed = command
            .try_get_matches_from(merged)
            .and_then(|matches| Cli::from_arg_matches(&matches))
            .map_err(|error| {
                anyhow::anyhow!(
                    "{} with [server] of {}",
                    clap_reason(&error),
                    file.display()
                )
            })?;
        match parsed.command {
            Command::Serve(args) => Ok(args),
            _ => unreachable!("parsed as serve"),
        }
    }

    pub fn code_cache(&self) -> Option<CodeCache> {
        if self.no_cache {
            return None;
        }
        self.cache_dir
            .clone()
            .or_else(CodeCache::default_dir)
            .map(CodeCache::new)
    }

    /// Every app and its mount prefix (`""` for the root), or why they cannot be served
    /// together.
    pub fn apps(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let root = self.app.iter().map(|app| (String::new(), app.clone()));
        let apps: Vec<(String, PathBuf)> = root.chain(self.mounts.iter().cloned()).collect();
        for (index, (prefix, _)) in apps.iter().enumerate() {
            if apps[..index].iter().any(|(earlier, _)| earlier == prefix) {
                let shown = if prefix.is_empty() { "/" } else { prefix };
                anyhow::bail!("two apps are mounted at {shown}: each prefix takes one app");
            }
        }
        if apps.len() > 1 && self.kv_namespace.is_some() {
            anyhow::bail!(
                "--kv-namespace names one app's namespace; with several apps, each has its \
                 file stem"
            );
        }
        Ok(apps)
    }

    /// Every app to serve, from the config file or the command line, with its settings.
    /// The apps to serve; `own` are the addresses this server listens on, which outbound
    /// requests may not reach unless a pattern names them.
    pub fn app_specs(
        &self,
        backend: &Arc<dyn kv::Backend>,
        own: &[SocketAddr],
    ) -> anyhow::Result<Vec<AppSpec>> {
        let tls = crate::outbound::tls_client(self.outbound_ca.as_deref())?;
        let Some(file) = &self.config else {
            let apps = self.apps()?;
            let queue = self.queue_policy(apps.len());
            return apps
                .into_iter()
                .map(|(prefix, path)| {
                    let kv = Arc::new(self.kv_store(backend.clone(), &path, None));
                    let name = path
                        .file_stem()
                        .map_or_else(|| "app".into(), |stem| stem.to_string_lossy().into());
                    Ok(AppSpec {
                        name,
                        hosts: Vec::new(),
                        prefix,
                        path,
                        policy: self.instance_policy(kv, own, &tls),
                        queue,
                        max_body: self.max_body(),
                    })
                })
                .collect();
        };
        let apps = config::load(file)?;
        let default_queue = self.queue_policy(apps.len());
        apps.into_iter()
            .map(|app| {
                let invalid = |why: String| {
                    anyhow::anyhow!("{}: [[app]] {:?}: {why}", file.display(), app.name)
                };
                let namespace = app.kv_namespace.clone().unwrap_or_else(|| app.name.clone());
                let mut kv = self.kv_store(backend.clone(), &app.component, Some(namespace));
                if let Some(keys) = app.kv_quota_keys {
                    kv.limits.quota.keys = keys;
                }
                if let Some(bytes) = &app.kv_quota_bytes {
                    kv.limits.quota.bytes = parse_size(bytes)
                        .map_err(|why| invalid(format!("kv-quota-bytes: {why}")))?
                        as u64;
                }
                let kv = Arc::new(kv);
                let mut policy = self.instance_policy(kv, own, &tls);
                if let Some(timeout) = &app.timeout {
                    policy.timeout =
                        parse_seconds(timeout).map_err(|why| invalid(format!("timeout: {why}")))?;
                    if self.stream_timeout.is_none() {
                        policy.stream_timeout = policy.timeout * 4;
                    }
                }
                if let Some(stream_timeout) = &app.stream_timeout {
                    policy.stream_timeout = parse_seconds(stream_timeout)
                        .map_err(|why| invalid(format!("stream-timeout: {why}")))?;
                }
                if let Some(max_memory) = &app.max_memory {
                    policy.max_memory = parse_memory(max_memory)
                        .map_err(|why| invalid(format!("max-memory: {why}")))?;
                }
                if let Some(isolation) = &app.isolation {
                    policy.isolation = <Isolation as clap::ValueEnum>::from_str(isolation, false)
                        .map_err(|_| {
                        invalid(format!("isolation {isolation:?}: use worker or request"))
                    })?;
                }
                if let Some(max_requests) = app.max_requests {
                    policy.max_requests = (max_requests > 0).then_some(max_requests);
                }
                if let Some(instances) = app.instances {
                    policy.workers = self.pool_size(instances);
                }
                if let Some(most) = app.max_instances {
                    policy.workers.most = most.max(policy.workers.warm);
                }
                if let Some(rate) = &app.app_log_rate {
                    policy.output.rate = parse_size_or_zero(rate)
                        .map_err(|why| invalid(format!("app-log-rate: {why}")))?
                        as u64;
                }
                if let Some(burst) = &app.app_log_burst {
                    policy.output.burst = parse_size(burst)
                        .map_err(|why| invalid(format!("app-log-burst: {why}")))?
                        as u64;
                }
                let limits = &mut policy.grants.outbound_limits;
                let seconds = |value: &Option<String>, key: &str| {
                    value
                        .as_deref()
                        .map(|text| {
                            parse_seconds(text).map_err(|why| invalid(format!("{key}: {why}")))
                        })
                        .transpose()
                };
                if let Some(connect) =
                    seconds(&app.outbound_connect_timeout, "outbound-connect-timeout")?
                {
                    limits.connect = connect;
                }
                if let Some(first) = seconds(
                    &app.outbound_first_byte_timeout,
                    "outbound-first-byte-timeout",
                )? {
                    limits.first_byte = first;
                }
                if let Some(idle) = seconds(&app.outbound_idle_timeout, "outbound-idle-timeout")? {
                    limits.idle = idle;
                }
                if let Some(most) = app.outbound_max_concurrent {
                    limits.max_concurrent = most as usize;
                }
                if let Some(size) = &app.outbound_max_response_size {
                    limits.max_response = parse_size(size)
                        .map_err(|why| invalid(format!("outbound-max-response-size: {why}")))?
                        as u64;
                }
                let mut queue = default_queue;
                if let Some(limit) = app.queue_limit {
                    queue.limit = limit;
                }
                if let Some(timeout) = &app.queue_timeout {
                    queue.timeout = parse_seconds(timeout)
                        .map_err(|why| invalid(format!("queue-timeout: {why}")))?;
                }
                if let Some(dirs) = &app.dirs {
                    policy.grants.dirs = dirs
                        .iter()
                        .map(|dir| parse_dir(dir))
                        .collect::<Result<_, _>>()
                        .map_err(|why| invalid(format!("dirs: {why}")))?;
                }
                if let Some(env) = &app.env {
                    policy.grants.env = env.clone();
                }
                if let Some(config) = &app.config {
                    policy.grants.config = config.clone();
                }
                if let Some(patterns) = &app.allow_outbound {
                    let patterns = patterns
                        .iter()
                        .map(|pattern| pattern.parse())
                        .collect::<Result<_, String>>()
                        .map_err(|why| invalid(format!("allow-outbound: {why}")))?;
                    policy.grants.outbound = Arc::new(Policy::new(patterns, own.to_vec()));
                }
                let max_body = match &app.max_body_size {
                    Some(size) => parse_size_or_zero(size)
                        .map(|size| (size > 0).then_some(size as u64))
                        .map_err(|why| invalid(format!("max-body-size: {why}")))?,
                    None => self.max_body(),
                };
                Ok(AppSpec {
                    name: app.name,
                    hosts: app.hosts,
                    prefix: app.route,
                    path: app.component,
                    policy,
                    queue,
                    max_body,
                })
            })
            .collect()
    }

    /// The view of the key-value backend for the app in `path`: its namespace (`namespace`,
    /// else --kv-namespace, else the file stem) and limits.
    pub fn kv_store(
        &self,
        backend: Arc<dyn kv::Backend>,
        path: &Path,
        namespace: Option<String>,
    ) -> kv::Store {
        let namespace = match namespace.or_else(|| self.kv_namespace.clone()) {
            Some(namespace) => namespace,
            None => path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let limits = kv::Limits {
            max_key: self.kv_max_key,
            max_value: self.kv_max_value,
            quota: kv::Quota {
                keys: self.kv_quota_keys,
                bytes: self.kv_quota_bytes as u64,
            },
        };
        kv::Store::new(backend, self.kv_url(), &namespace, limits)
    }

    pub fn kv_url(&self) -> BackendUrl {
        self.kv
            .clone()
            .unwrap_or_else(|| BackendUrl::in_state_dir(&self.state_dir))
    }

    pub fn instance_policy(
        &self,
        kv: Arc<kv::Store>,
        own: &[SocketAddr],
        tls: &Arc<rustls::ClientConfig>,
    ) -> InstancePolicy {
        InstancePolicy {
            max_memory: self.max_memory,
            timeout: self.timeout,
            isolation: self.isolation,
            max_requests: (self.max_requests > 0).then_some(self.max_requests),
            max_requests_jitter: self.max_requests_jitter,
            grants: Grants {
                dirs: self.dirs.clone(),
                env: self.env.clone(),
                config: ConfigValues::new(self.config_vars.iter().cloned()),
                outbound: Arc::new(Policy::new(self.allow_outbound.clone(), own.to_vec())),
                outbound_tls: tls.clone(),
                // A count of its own for each app: instance_policy is made once an app.
                outbound_limits: crate::outbound::Limits {
                    connect: self.outbound_connect_timeout,
                    first_byte: self.outbound_first_byte_timeout,
                    idle: self.outbound_idle_timeout,
                    max_concurrent: self.outbound_max_concurrent as usize,
                    max_response: self.outbound_max_response_size as u64,
                    open: Arc::default(),
                },
                kv,
            },
            workers: self.pool_size(self.workers()),
            stream_timeout: self.stream_timeout.unwrap_or(self.timeout * 4),
            output: OutputRate {
                rate: self.app_log_rate as u64,
                burst: self.app_log_burst as u64,
            },
        }
    }

    /// The queue of each of `apps` apps, unless it says otherwise: by default, an equal share
    /// of the connections, so that one app's waiting requests never take the others' room.
    pub fn queue_policy(&self, apps: usize) -> QueuePolicy {
        let share = (self.max_connections() / apps.max(1)).max(1);
        QueuePolicy {
            limit: self.queue_limit.map_or(share, |limit| limit as usize),
            timeout: self.queue_timeout,
        }
    }

    /// `--max-connections`, or the default the file limit leaves room for.
    pub fn max_connections(&self) -> usize {
        match self.max_connections {
            Some(connections) => usize::try_from(connections).unwrap_or(usize::MAX),
            None => crate::server::default_max_connections(),
        }
    }

    pub fn http_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            request_line: self.limit_request_line as usize,
            fields: self.limit_request_fields as usize,
            field_bytes: self.limit_request_field_size as usize,
            unconventional_methods: self.permit_unconventional_http_method,
        }
    }

    /// The largest request body an app takes unless it says otherwise; `None` for any.
    pub fn max_body(&self) -> Option<u64> {
        (self.max_body_size > 0).then_some(self.max_body_size as u64)
    }

    /// The TLS files, if the listeners speak TLS.
    pub fn tls_files(&self) -> anyhow::Result<Option<crate::tls::TlsFiles>> {
        let (Some(certfile), Some(keyfile)) = (&self.certfile, &self.keyfile) else {
            return Ok(None);
        };
        if self.cert_reqs != crate::tls::CertReqs::None && self.ca_certs.is_none() {
            anyhow::bail!("--cert-reqs {:?} needs --ca-certs", self.cert_reqs);
        }
        Ok(Some(crate::tls::TlsFiles {
            certfile: certfile.clone(),
            keyfile: keyfile.clone(),
            ca_certs: self.ca_certs.clone(),
            cert_reqs: self.cert_reqs,
        }))
    }

    /// An app's pool, with `warm` instances: up to `--max-workers`, or
    /// [`GROWTH`] times as many, while some wait.
    pub fn pool_size(&self, warm: usize) -> Size {
        let most = self
            .max_workers
            .map_or(warm.saturating_mul(GROWTH), |most| most as usize);
        Size {
            warm,
            most: most.min(MAX_WORKERS).max(warm),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            |workers| workers as usize,
        )
    }
}

/// The first line of a clap error, without its `error: `.
fn clap_reason(error: &clap::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

fn parse_umask(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, radix) = if let Some(hex) = text.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(octal) = text.strip_prefix("0o") {
        (octal, 8)
    } else if text.len() > 1 && text.starts_with('0') {
        (&text[1..], 8)
    } else {
        (text, 10)
    };
    u32::from_str_radix(digits, radix)
        .ok()
        .filter(|&mask| mask <= 0o777)
        .ok_or_else(|| format!("{text:?} is not a umask from 0 to 0777"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

fn parse_dir(text: &str) -> Result<DirGrant, String> {
    let (rest, read_only) = match text.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (host, guest) = rest.split_once("::").unwrap_or((rest, rest));
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{text:?} is not HOST_PATH[::GUEST_PATH][:ro]"));
    }
    if !std::path::Path::new(host).is_dir() {
        return Err(format!("{host} is not a directory"));
    }
    Ok(DirGrant {
        host: host.into(),
        guest: guest.to_owned(),
        read_only,
    })
}

fn parse_mount(text: &str) -> Result<(String, PathBuf), String> {
    let Some((prefix, app)) = text.split_once('=') else {
        return Err(format!("{text:?} is not PREFIX=APP.wasm"));
    };
    if app.is_empty() {
        return Err(format!("{text:?} names no app"));
    }
    Ok((crate::router::normalize_prefix(prefix)?, app.into()))
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn parse_size_or_zero(text: &str) -> Result<usize, String> {
    if text.trim() == "0" {
        Ok(0)
    } else {
        parse_size(text)
    }
}

/// Parses `1048576`, `512KiB`, `128MiB`, `2GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`, all
/// powers of 1024).
fn parse_size(text: &str) -> Result<usize, String> {
    let accepted = "a size such as 512KiB, 64MiB or 0.5GiB";
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; write {accepted}")),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|count| (count * multiplier).round())
        .filter(|size| *size >= 1.0 && *size <= usize::MAX as f64)
        .map(|size| size as usize)
        .ok_or_else(|| format!("{text:?} is not a positive size; write {accepted}"))
}

/// A memory cap: a size of at least 1 MiB, which the smallest app needs.
fn parse_memory(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size < 1 << 20 {
        return Err(format!(
            "{text:?} is {size} bytes, and an app needs at least 1MiB: write a unit, as in 64MiB"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn umasks() {
        assert_eq!(parse_umask("0"), Ok(0));
        assert_eq!(parse_umask("007"), Ok(0o7));
        assert_eq!(parse_umask("0o117"), Ok(0o117));
        assert_eq!(parse_umask("0x3f"), Ok(0o77));
        assert_eq!(parse_umask("18"), Ok(18));
        assert!(parse_umask("0999").is_err());
        assert!(parse_umask("01000").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
