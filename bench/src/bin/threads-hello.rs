//! A native hello on `std::net` with a pool of blocking threads, each serving one
//! connection at a time to its end: the other common shape of a native server, the bench's
//! second peer (`bench/run.sh --peers`). Reads request heads (no bodies: the bench sends
//! none), honours `Connection: close`, and answers `Hello, world!`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::SystemTime;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    /// Threads in the pool: more than the bench's 64 connections.
    #[arg(long, default_value_t = 128)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = Arc::new(TcpListener::bind((args.host.as_str(), args.port))?);
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let listener = listener.clone();
            std::thread::spawn(move || {
                while let Ok((stream, _)) = listener.accept() {
                    // A client that leaves mid-request is no concern of a benchmark's.
                    let _ = serve(stream);
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = vec![0; 16 * 1024];
    let mut filled = 0;
    loop {
        let end = loop {
            if let Some(at) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if filled == buffer.len() {
                return Ok(());
            }
            let read = stream.read(&mut buffer[filled..])?;
            if read == 0 {
                return Ok(());
            }
            filled += read;
        };
        let close = String::from_utf8_lossy(&buffer[..end])
            .to_ascii_lowercase()
            .contains("\r\nconnection: close");
        let response = format!(
            "HTTP/1.1 200 OK\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 14\r\n{}\r\nHello, world!\n",
            httpdate::fmt_http_date(SystemTime::now()),
            if close { "Connection: close\r\n" } else { "" }
        );
        stream.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
        buffer.copy_within(end..filled, 0);
        filled -= end;
    }
}
