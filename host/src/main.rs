use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use wasm_gw::check::check;
use wasm_gw::cli::BuildPythonArgs;
use wasm_gw::cli::{Cli, Command};
use wasm_gw::compile::{CodeCache, compile_estimate, compile_to_file, megabytes, precompile};
use wasm_gw::python::{PythonApp, build_python as build};
use wasm_gw::scaffold::new_app;
use wasm_gw::serve::serve;

fn build_python(args: &BuildPythonArgs) -> anyhow::Result<()> {
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(CodeCache::default_dir)
        .ok_or_else(|| anyhow::anyhow!("no cache directory: pass --cache-dir"))?;
    let tools_dir = cache_dir.join("python");
    let current = [std::path::PathBuf::from(".")];
    let paths = if args.paths.is_empty() {
        &current[..]
    } else {
        &args.paths
    };
    let built = build(&PythonApp {
        callable: &args.callable,
        paths,
        requirements: args.requirements.as_deref(),
        validate: args.validate,
        output: &args.output,
        tools_dir: &tools_dir,
    })?;
    if !built.installed.is_empty() {
        println!("Installed {}", built.installed.join(", "));
    }
    for warning in built.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "Built {}, with the files the app may read at run time: {}",
        args.output.display(),
        built.shipped
    );
    // The first `serve` would compile it for this machine, for seconds; so it is done now,
    // into the cache `serve` reads.
    let size = std::fs::metadata(&args.output).map_or(0, |meta| meta.len() as usize);
    println!(
        "Compiling it for this machine into the code cache ({}), about {}",
        megabytes(size),
        compile_estimate(size)
    );
    let started = std::time::Instant::now();
    precompile(&args.output, &CodeCache::new(cache_dir))?;
    println!("Compiled in {:.1} s", started.elapsed().as_secs_f64());
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
