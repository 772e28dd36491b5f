//! HTTP/1.1 on a blocking socket: request heads in, bodies in, responses out.
//!
//! Nothing here knows about WebAssembly. The connection loop drives these pieces, and an app
//! sees one request through an [`Exchange`].

pub mod body;
pub mod date;
pub mod error;
pub mod exchange;
pub mod io;
pub mod request;
pub mod response;

pub use exchange::Exchange;
