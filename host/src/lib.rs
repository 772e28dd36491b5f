//! wasm-gw: a WSGI-style gateway that serves web apps compiled to WebAssembly components.
//!
//! Data flows one way through the modules: [`cli`] and [`config`] → [`loader`] (the apps,
//! and the router over them; [`reload`] goes through it again) → [`listener`] (the sockets
//! listened on) → [`server`] (accept loop, serving threads) → [`idle`] (connections parked
//! between requests) → [`connection`] (each connection's requests) → [`http`] (head
//! parsing, body decoding,
//! response encoding) → [`environ`] → [`router`] → [`pool`] → [`app`], the seam that
//! [`runtime`] implements for components, with [`guest`] answering the component's calls and
//! [`kv`] its key-value storage. [`waiting`] counts the threads that wait on a peer or a
//! disk, for [`server`] to add threads.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod bindings;
pub mod bundle;
pub mod check;
pub mod cli;
pub mod compile;
pub mod config;
pub mod connection;
pub mod decimal;
pub mod environ;
pub mod guest;
pub mod http;
pub mod idle;
pub mod kv;
pub mod lifecycle;
pub mod listener;
pub mod loader;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod privileges;
pub mod python;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod scaffold;
pub mod serve;
pub mod server;
pub mod systemd;
pub mod tls;
pub mod waiting;
pub mod world;
