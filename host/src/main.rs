use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use wasm_gw::check::check;
use wasm_gw::cli::BuildPythonArgs;
use wasm_gw::cli::{Cli, Command};
use wasm_gw::compile::{CodeCache, compile_to_file};
use wasm_gw::python::{PythonApp, build_python as build};
use wasm_gw::scaffold::new_app;
use wasm_gw::serve::serve;

fn build_python(args: &BuildPythonArgs) -> anyhow::Result<()> {
    let tools_dir = args
        .cache_dir
        .clone()
        .or_else(CodeCache::default_dir)
        .ok_or_else(|| anyhow::anyhow!("no cache directory: pass --cache-dir"))?
        .join("python");
    let current = [std::path::PathBuf::from(".")];
    let paths = if args.paths.is_empty() {
        &current[..]
    } else {
        &args.paths
    };
    let warnings = build(&PythonApp {
        callable: &args.callable,
        paths,
        requirements: args.requirements.as_deref(),
        validate: args.validate,
        output: &args.output,
        tools_dir: &tools_dir,
    })?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    println!("Built {}", args.output.display());
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    let result = match cli.command {
        Command::Serve(args) => args.with_server_table(&argv).and_then(|args| serve(*args)),
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
                "Created {}. Build and serve it with:\n{commands}\nThen: curl \"http://127.0.0.1:8000/?name=you\"",
                args.name.display()
            );
        }),
        Command::BuildPython(args) => build_python(&args),
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
