use std::io::IsTerminal;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use clap::Parser;
use wasm_gw::cli::{Cli, Command, ServeArgs};
use wasm_gw::compile::compile_to_file;
use wasm_gw::connection::{ConnectionConfig, Timeouts};
use wasm_gw::http::body::BodyPace;
use wasm_gw::lifecycle::Lifecycle;
use wasm_gw::pool::{CurrentPool, Pool};
use wasm_gw::reload::{self, Reloader};
use wasm_gw::runtime::WasmApp;
use wasm_gw::server;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Compile(args) => {
            let output = args
                .output
                .unwrap_or_else(|| args.app.with_extension("cwasm"));
            compile_to_file(&args.app, &output)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let workers = args.workers();
    let policy = args.instance_policy();
    let cache = args.code_cache();
    let app = WasmApp::load(&args.app, policy.clone(), cache.as_ref())?;
    let pool = Arc::new(CurrentPool::new(Pool::new(&app, workers)?));
    let listener = server::bind(&args.host, args.port, args.backlog)?;
    let address = listener.local_addr()?;
    tracing::info!("serving {} with {workers} workers", args.app.display());
    tracing::info!("listening on http://{address}");

    let config = ConnectionConfig {
        limits: args.http_limits(),
        timeouts: Timeouts {
            keep_alive: args.keep_alive,
            head: args.header_timeout,
            write: Duration::from_secs(30),
        },
        body_pace: BodyPace {
            patience: args.body_timeout,
            min_rate: args.body_min_rate,
        },
        multithread: workers > 1,
    };
    let (reload_requests, reloads) = mpsc::channel();
    let reloader = Reloader {
        app: args.app.clone(),
        policy,
        cache,
        workers,
        current: pool.clone(),
    };
    reloader.run(reloads)?;
    if args.reload {
        reload::watch(args.app.clone(), reload_requests.clone())?;
    }
    let lifecycle = Arc::new(Lifecycle::default());
    handle_signals(&lifecycle, address, args.graceful_timeout, reload_requests)?;
    server::run(
        listener,
        pool,
        config,
        args.max_connections,
        lifecycle.clone(),
    );
    if lifecycle.wait_for_connections(args.graceful_timeout) {
        tracing::info!("all requests finished; exiting");
    } else {
        tracing::warn!("graceful timeout passed with requests still running; exiting");
    }
    Ok(())
}

/// On SIGHUP, reloads the app. On SIGTERM or SIGINT, stops the server gracefully; on a
/// second one, exits at once.
fn handle_signals(
    lifecycle: &Arc<Lifecycle>,
    address: SocketAddr,
    graceful: Duration,
    reload_requests: Sender<&'static str>,
) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let lifecycle = lifecycle.clone();
    // The accept loop blocks in accept(); a connection of our own wakes it to see the stop.
    let mut wake = address;
    if wake.ip().is_unspecified() {
        wake.set_ip(if wake.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = reload_requests.send("SIGHUP");
                } else if !lifecycle.is_stopping() {
                    let in_flight = lifecycle.stop();
                    tracing::info!(
                        signal,
                        "shutting down: {in_flight} requests in flight, waiting up to {graceful:?}"
                    );
                    let _ = TcpStream::connect(wake);
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}
