//! End-to-end tests: the real `wasm-gw` binary on an ephemeral loopback port, real guest
//! components from `guests/`, and real sockets.

mod admin;
mod apps;
mod config;
mod corpus;
mod environ;
mod fast_start;
mod faults;
mod frontdoor;
mod gateway;
mod gunicorn;
mod isolation;
mod kv;
mod lifecycle;
mod mounts;
mod outbound;
mod properties;
mod protocol;
mod python;
mod reload;
mod sandbox;
mod startup;
mod streaming;
mod support;
mod wasi_http;
mod workers;
