//! The command line: `wasm-gw serve APP.wasm [options]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    /// Serve one app over HTTP/1.1.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The app: a WebAssembly component built for the wasm-gw app world.
    pub app: PathBuf,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on; 0 picks a free one (the startup line shows which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Instances of the app, each serving one request at a time [default: the number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Deadline in seconds for one request; an app still running then is stopped and the
    /// client gets 504.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Linear memory cap per instance, for example 64MiB or 1GiB.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    pub max_memory: usize,

    /// Seconds an idle keep-alive connection waits for its next request.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub keep_alive: Duration,

    /// Open connections at most; more wait in the listen backlog.
    #[arg(long, default_value_t = 1000)]
    pub max_connections: usize,

    /// Longest request line in bytes; longer ones get 414.
    #[arg(long, default_value_t = 8190, value_parser = clap::value_parser!(u32).range(16..))]
    pub limit_request_line: u32,

    /// Most header fields in a request (and trailer fields in a chunked body); more get 431.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit_request_fields: u32,

    /// Longest header field line (`Name: value`) in bytes; longer ones get 431.
    #[arg(long, default_value_t = 8190, value_parser = clap::value_parser!(u32).range(16..))]
    pub limit_request_field_size: u32,

    /// Largest request body, for example 10MiB; 0 means unlimited. Larger ones get 413, as
    /// soon as Content-Length or a chunk size shows it.
    #[arg(long, default_value = "1GiB", value_parser = parse_size_or_zero)]
    pub max_body_size: usize,

    /// Log verbosity: error, warn, info, debug or trace. Access lines are logged at info.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
}

impl ServeArgs {
    pub fn http_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            request_line: self.limit_request_line as usize,
            fields: self.limit_request_fields as usize,
            field_bytes: self.limit_request_field_size as usize,
            body: (self.max_body_size > 0).then_some(self.max_body_size as u64),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            |workers| workers as usize,
        )
    }
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
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|count| count.checked_mul(multiplier))
        .filter(|&size| size > 0)
        .ok_or_else(|| format!("{text:?} is not a positive size"))
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
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
