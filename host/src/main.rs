use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wasm_gw::cli::{Cli, Command, ServeArgs};
use wasm_gw::connection::{ConnectionConfig, Timeouts};
use wasm_gw::http::body::BodyPace;
use wasm_gw::pool::Pool;
use wasm_gw::runtime::WasmApp;
use wasm_gw::server;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
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
    let app = WasmApp::load(&args.app, args.instance_policy())?;
    let pool = Pool::new(&app, workers)?;
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
    server::run(listener, pool, config, args.max_connections)
}
