//! `wasm-gw serve` put together: load the app, bind, serve, reload, stop.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::access_log::LogFormat;
use crate::cli::ServeArgs;
use crate::connection::{ConnectionConfig, Timeouts};
use crate::http::io::Pace;
use crate::lifecycle::Lifecycle;
use crate::listener::{self, Bind, Listener};
use crate::privileges::Identity;
use crate::reload::{Reload, ReloadRequest, Reloader};
use crate::router::CurrentRouter;
use crate::runtime::Engines;
use crate::tls::Tls;
use crate::{access_log, admin, config, loader};
use crate::{server, systemd};

/// `wasm-gw serve`: binds its sockets, loads the apps and serves them until SIGTERM or
/// SIGINT.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the apps load, which can take seconds: a SIGHUP meanwhile must not kill us.
    let signals = catch_signals()?;
    init_logging(args.log_level, args.log_format)?;
    server::raise_file_limit();
    // Bound before the apps load, as root if --user drops it later; TCP sockets listen only
    // once the apps are loaded.
    let front_door = FrontDoor::open(&args)?;
    let args = Arc::new(args);
    let backend = args.kv_url().open()?;
    let cache = args.code_cache();
    let engines = Engines::new()?;
    let own = front_door.tcp_addresses();
    let (apps, router) = loader::load(&engines, args.app_specs(&backend, &own)?, cache.as_ref())?;
    loader::announce(&apps);
    let router = Arc::new(CurrentRouter::new(router));
    let server_settings = match &args.config {
        Some(file) => config::server_settings(file)?,
        None => Vec::new(),
    };
    let specs_of = args.clone();
    let reloader = Reloader {
        specs: Box::new(move |backend| specs_of.app_specs(backend, &own)),
        config: args.config.clone(),
        backend,
        engines,
        cache,
        apps,
        router: router.clone(),
        server_settings,
        tls: None,
    };
    run(&args, front_door, router, Some(reloader), signals)
}

/// The sockets the server listens on, the TLS they speak, and the admin endpoint's.
pub struct FrontDoor {
    listeners: Vec<Listener>,
    tls: Option<Arc<Tls>>,
    admin: Option<std::net::TcpListener>,
}

impl FrontDoor {
    /// The TCP addresses this server is reached at, the admin endpoint's included: for a
    /// listener on an unspecified address (0.0.0.0, ::), every address of this machine's
    /// interfaces, with its port.
    pub fn tcp_addresses(&self) -> Vec<std::net::SocketAddr> {
        let bound: Vec<std::net::SocketAddr> = self
            .listeners
            .iter()
            .filter_map(Listener::tcp_address)
            .chain(
                self.admin
                    .iter()
                    .filter_map(|admin| admin.local_addr().ok()),
            )
            .collect();
        let mut local: Option<Vec<std::net::IpAddr>> = None;
        let mut own = Vec::new();
        for address in bound {
            if !address.ip().is_unspecified() {
                own.push(address);
                continue;
            }
            let interfaces = local.get_or_insert_with(interface_addresses);
            own.extend(
                interfaces
                    .iter()
                    .filter(|ip| ip.is_ipv4() == address.is_ipv4() || address.is_ipv6())
                    .map(|ip| std::net::SocketAddr::new(*ip, address.port())),
            );
        }
        own
    }

    /// Reads the TLS files and binds the listeners; then, for `--user`/`--group`, hands
    /// the socket files over and gives up root.
    pub fn open(args: &ServeArgs) -> anyhow::Result<FrontDoor> {
        let identity = Identity::resolve(args.user.as_deref(), args.group.as_deref())?;
        let tls = match args.tls_files()? {
            Some(files) => Some(Arc::new(Tls::load(files)?)),
            None => None,
        };
        let listeners = listen(args)?;
        let admin = args.admin.as_deref().map(admin::bind).transpose()?;
        if let Some(identity) = identity {
            for file in listeners.iter().filter_map(Listener::socket_file) {
                let (uid, gid) = (identity.uid().as_raw(), identity.gid().as_raw());
                std::os::unix::fs::chown(file, Some(uid), Some(gid))
                    .with_context(|| format!("cannot hand {} to --user", file.display()))?;
            }
            identity.assume()?;
        }
        Ok(FrontDoor {
            listeners,
            tls,
            admin,
        })
    }
}

/// Takes over SIGTERM, SIGINT and SIGHUP; they wait until [`run`] handles them.
/// This machine's interface addresses; none if they cannot be read (the address ranges
/// refused to outbound requests still cover loopback and private ones).
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!(
            "cannot list this machine's addresses: outbound requests to its public \
             addresses on the server's ports are not refused"
        );
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                address
                    .as_sockaddr_in6()
                    .map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

pub fn catch_signals() -> std::io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// Logs to stderr at `level`, as text (in color on a terminal) or JSON; at `info` and more
/// verbose, with an access log line per request.
pub fn init_logging(level: tracing::Level, format: LogFormat) -> std::io::Result<()> {
    let logger = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(|| EscapedStderr)
        // Its report of a failed write would go to stderr too, with a panic if that fails:
        // a closed log pipe must cost log lines, not the thread that logs (or the server's
        // signal handling with it).
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logger.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logger.json().flatten_event(true).init(),
    }
    if level >= tracing::Level::INFO {
        access_log::enable(format)?;
    }
    Ok(())
}

/// Writes each log line to stderr with its control characters escaped (`\r`, `\0`,
/// `\x1f`...), so that no text an app or a client put in a line can end it early, rewrite
/// it on a terminal, or make tools take the log for binary. The formatter escapes ESC and
/// C1 controls itself, and writes each line in one call.
struct EscapedStderr;

impl std::io::Write for EscapedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if !body.iter().any(|&byte| is_escaped(byte)) {
            return std::io::stderr().write(line);
        }
        let mut escaped = Vec::with_capacity(line.len() + 16);
        for &byte in body {
            match byte {
                b'\r' => escaped.extend_from_slice(b"\\r"),
                b'\n' => escaped.extend_from_slice(b"\\n"),
                b'\0' => escaped.extend_from_slice(b"\\0"),
                byte if is_escaped(byte) => {
                    escaped.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
                }
                byte => escaped.push(byte),
            }
        }
        escaped.extend_from_slice(&line[body.len()..]);
        std::io::stderr().write_all(&escaped)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Control bytes other than tab, and ESC, which starts the formatter's own colors.
fn is_escaped(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t' && byte != 0x1b) || byte == 0x7f
}

/// Serves the apps that `router` routes to, with the connection settings in `args` until SIGTERM or SIGINT.
/// This is the seam where the benchmarks serve a native handler through the same server.
pub fn run(
    args: &ServeArgs,
    front_door: FrontDoor,
    router: Arc<CurrentRouter>,
    reloader: Option<Reloader>,
    signals: Signals,
) -> anyhow::Result<()> {
    let workers = args.workers();
    let FrontDoor {
        mut listeners,
        tls,
        admin,
    } = front_door;
    for listener in &mut listeners {
        listener.listen().context("cannot listen")?;
    }
    let pid_file = match &args.pid {
        Some(path) => Some(PidFile::write(path)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    for listener in &listeners {
        tracing::info!("listening on {}", listener.describe(scheme));
    }
    systemd::ready();
    if let Some(admin) = admin {
        let admin = admin::serve(admin)?;
        tracing::info!("admin endpoint on http://{admin} (/health, /metrics)");
    }

    let config = ConnectionConfig {
        limits: args.http_limits(),
        timeouts: Timeouts {
            keep_alive: args.keep_alive,
            head: args.header_timeout,
        },
        body_pace: Pace {
            patience: args.body_timeout,
            min_rate: args.body_min_rate,
        },
        body_buffer: args.client_body_buffer_size as u64,
        multithread: args.pool_size(workers).most > 1,
        proxies: Arc::new(args.forwarded_allow_ips.clone()),
        tls: tls.clone(),
        proxy_protocol: args.proxy_protocol,
        proxy_allow: Arc::new(args.proxy_allow_from.clone()),
    };
    let (reload_requests, reloads) = mpsc::channel();
    if let Some(mut reloader) = reloader {
        reloader.tls = tls;
        let watch = args.reload.then(|| reload_requests.clone());
        reloader.run(reloads, watch)?;
    }
    let lifecycle = Arc::new(Lifecycle::new().context("cannot set up the shutdown")?);
    handle_signals(signals, &lifecycle, args.graceful_timeout, reload_requests)?;
    // The listeners close when the accept loop ends: a client that connects after that
    // is refused, not left in a backlog no one accepts from.
    server::run(
        listeners,
        router,
        config,
        args.max_connections(),
        lifecycle.clone(),
    )?;
    let still_open = lifecycle.wait_for_connections(args.graceful_timeout);
    access_log::flush();
    drop(pid_file);
    if still_open > 0 {
        anyhow::bail!("the graceful timeout passed with {still_open} connections still open");
    }
    tracing::info!("all requests finished; exiting");
    Ok(())
}

/// The `--pid` file: the process id while the server serves, removed when it stops.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> anyhow::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|error| anyhow::anyhow!("cannot write --pid {}: {error}", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0) {
            tracing::warn!("cannot remove --pid {}: {error}", self.0.display());
        }
    }
}

/// The sockets to serve on: those systemd passed, if it passed any; else every `--bind`,
/// or `--host` and `--port`.
fn listen(args: &ServeArgs) -> anyhow::Result<Vec<Listener>> {
    let passed = listener::from_systemd()?;
    if !passed.is_empty() {
        let sockets = match passed.len() {
            1 => "the socket".to_owned(),
            count => format!("the {count} sockets"),
        };
        tracing::info!(
            "serving on {sockets} systemd passed; --bind, --host and --port do not apply"
        );
        return Ok(passed);
    }
    let binds = match args.binds.as_slice() {
        [] => &[Bind::Tcp(args.host.clone(), args.port)][..],
        binds => binds,
    };
    for (index, bind) in binds.iter().enumerate() {
        if let Bind::Fd(fd) = bind
            && binds[..index].contains(bind)
        {
            anyhow::bail!("--bind fd://{fd} is given twice");
        }
    }
    binds
        .iter()
        .map(|bind| Listener::bind(bind, args.backlog, args.umask))
        .collect()
}

/// On SIGHUP, reloads the app. On SIGTERM or SIGINT, stops the server gracefully; on a
/// second one, exits at once.
fn handle_signals(
    mut signals: Signals,
    lifecycle: &Arc<Lifecycle>,
    graceful: Duration,
    reload_requests: Sender<ReloadRequest>,
) -> anyhow::Result<()> {
    let lifecycle = lifecycle.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = reload_requests.send(ReloadRequest {
                        why: "SIGHUP",
                        what: Reload::All,
                    });
                } else if !lifecycle.is_stopping() {
                    systemd::stopping();
                    let in_flight = lifecycle.stop();
                    tracing::info!(
                        signal,
                        "shutting down: {in_flight} requests in flight, waiting up to {graceful:?}"
                    );
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    access_log::flush();
                    std::process::exit(128 + signal);
                }
            }
        })?;
    Ok(())
}
