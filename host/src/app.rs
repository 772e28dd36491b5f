//! The seam between the server and what answers requests.
//!
//! The server knows an app only through these traits: a Wasm component is one implementation,
//! and a native handler can stand in for it in tests and benchmarks.

use std::sync::Arc;
use std::time::Duration;

use crate::environ::RequestHead;
use crate::http::Exchange;
use crate::http::error::ErrorResponse;

/// One worker of an app: serves one request at a time, and keeps its state between requests.
pub trait App: Send {
    /// The app's name, for logs.
    fn name(&self) -> Arc<str>;

    /// Serves one request, reading its body from and writing its response to its
    /// exchange, then hands the request back to the connection.
    fn call(&mut self, request: Request) -> (Request, Result<(), Failure>);

    /// Ends the worker, counted as retired for `reason`: `idle`, when its pool no longer
    /// needs it. A worker just dropped goes with its pool, at a reload.
    fn retire(self: Box<Self>, reason: &'static str) {
        let _ = reason;
    }
}

/// A request on its way through an app: what the server parsed, and the exchange that reads
/// its body and writes its response.
pub struct Request {
    /// Unique within the process, for tagging log lines.
    pub id: u64,
    /// What the connection read: the app's world builds what the app sees from it.
    pub head: RequestHead,
    pub exchange: Exchange,
}

/// Makes the workers of an app.
pub trait AppFactory: Send + Sync {
    fn new_worker(&self) -> anyhow::Result<Box<dyn App>>;
}

/// Why an app could not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The app reported an error it did not handle; the worker stays usable.
    #[error("application error: {0}")]
    Application(String),
    /// The app trapped or panicked; its worker was replaced.
    #[error("trapped: {0}")]
    Trap(String),
    /// The app needed more memory than its cap; its worker was replaced.
    #[error("ran out of memory: {0}")]
    MemoryCap(String),
    /// No instance could be made to serve the request.
    #[error("has no instance to serve with: {0}")]
    Unavailable(String),
    /// The app ran past its deadline and was stopped; its worker was replaced.
    #[error("stopped after exceeding the {0:?} deadline")]
    Timeout(Duration),
    /// The app's streamed response ran past its wall time and was cut off.
    #[error("stream stopped after running for {0:?} (--stream-timeout)")]
    StreamTimeout(Duration),
}

impl Failure {
    /// What the client gets when nothing has been sent yet.
    pub fn response(&self) -> ErrorResponse {
        match self {
            Failure::Timeout(_) | Failure::StreamTimeout(_) => ErrorResponse::AppTimeout,
            Failure::Unavailable(_) => ErrorResponse::AppUnavailable,
            Failure::Application(_) | Failure::Trap(_) | Failure::MemoryCap(_) => {
                ErrorResponse::AppFailed
            }
        }
    }
}
