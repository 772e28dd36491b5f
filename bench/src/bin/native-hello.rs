//! The same server as `wasm-gw serve`, calling a native Rust hello handler instead of a
//! component: the baseline that measures the Wasm tax. It takes `wasm-gw serve`'s flags.

use std::sync::Arc;

use clap::Parser;
use wasm_gw::app::{App, AppFactory, Failure, Request};
use wasm_gw::cli::{Cli, Command};
use wasm_gw::metrics::metrics;
use wasm_gw::pool::{CurrentPool, Pool};
use wasm_gw::router::{CurrentRouter, Route, Router};
use wasm_gw::serve::{FrontDoor, catch_signals, init_logging, run};

/// Answers `GET /?name=X` with `Hello, X!`, as the hello guest does.
struct NativeHello {
    name: Arc<str>,
}

impl App for NativeHello {
    fn name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn call(&mut self, mut request: Request) -> (Request, Result<(), Failure>) {
        let name = request
            .head
            .query
            .split('&')
            .find_map(|pair| pair.strip_prefix("name="))
            .filter(|name| !name.is_empty())
            .unwrap_or("world");
        let headers = [(
            "Content-Type".to_owned(),
            "text/plain; charset=utf-8".to_owned(),
        )];
        let body = format!("Hello, {name}!\n").into_bytes();
        let exchange = &mut request.exchange;
        // A failure is the exchange's to record, and answer with a 500.
        if exchange.start("200 OK", &headers, false).is_ok() {
            exchange.set_whole_body(vec![body]);
        }
        (request, Ok(()))
    }
}

struct NativeHelloFactory;

impl AppFactory for NativeHelloFactory {
    fn new_worker(&self) -> anyhow::Result<Box<dyn App>> {
        Ok(Box::new(NativeHello {
            name: "native-hello".into(),
        }))
    }
}

fn main() -> anyhow::Result<()> {
    // `wasm-gw serve`'s own flags, with the app's place taken by this handler.
    let arguments = ["wasm-gw", "serve", "native-hello"]
        .into_iter()
        .map(String::from)
        .chain(std::env::args().skip(1));
    let Command::Serve(args) = Cli::parse_from(arguments).command else {
        unreachable!("parsed as serve");
    };
    let signals = catch_signals()?;
    init_logging(args.log_level, args.log_format)?;
    wasm_gw::server::raise_file_limit();
    let front_door = FrontDoor::open(&args)?;
    let name = "native-hello".into();
    let gauges = metrics().pool(&name, args.timeout);
    let pool = Pool::new(
        Arc::new(NativeHelloFactory),
        args.pool_size(args.workers()),
        args.queue_policy(1),
        gauges,
    )?;
    let router = Router::single(Route {
        pool: Arc::new(CurrentPool::new(pool)),
        max_body: args.max_body(),
        metrics: Arc::new(metrics().app(&name)),
    });
    run(
        &args,
        front_door,
        Arc::new(CurrentRouter::new(router)),
        None,
        signals,
    )
}
