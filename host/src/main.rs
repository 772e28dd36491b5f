use std::process::ExitCode;

use clap::Parser;
use wasm_gw::check::check;
use wasm_gw::cli::{Cli, Command};
use wasm_gw::compile::compile_to_file;
use wasm_gw::scaffold::new_app;
use wasm_gw::serve::serve;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => match check(&args.app) {
            Ok((report, fits)) => {
                print!("{report}");
                return if fits {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            Err(error) => Err(error),
        },
        Command::New(args) => new_app(&args.name).map(|commands| {
            println!(
                "Created {}. Build and serve it with:\n{commands}",
                args.name.display()
            );
        }),
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
