//! The standard `wasi:http` 0.2 world: a component that exports
//! `wasi:http/incoming-handler`, served through wasmtime-wasi-http's implementation of the
//! interfaces, behind wasm-gw's own parser, limits and response writer.
//!
//! How a request crosses: each worker keeps a thread of its own, where its instance lives and
//! the guest runs (`call_handle` blocks until the handler returns). The connection's thread
//! sends it the request as an [`HttpJob`] and then serves the guest from one channel, in the
//! order things happen: a read of the request body ([`StreamedBody`] asks, the connection
//! reads it from the client through the exchange and answers), the response head, and the
//! body frames the guest writes, which go to the client through the same
//! [`Exchange`](crate::http::Exchange) as a WSGI app's. Time the connection's thread spends on
//! the client, reading or writing, is off the app's clock.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{mpsc, oneshot};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{
    ErrorCode as HttpErrorCode, Scheme as HttpScheme,
};
use wasmtime_wasi_http::p2::bindings::sync::ProxyPre as HttpProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{Instance, WasmApp, WasmWorker, ticks};
use crate::app::{App, Failure, Request};
use crate::guest::wait::ClientTime;
use crate::guest::{self, GuestState};
use crate::http::Exchange;
use crate::http::body::BodyError;
use crate::metrics::metrics;

/// Links a standard `wasi:http` 0.2 component against WASI 0.2 and `wasi:http`, with the
/// same sandbox as a WSGI app: waits bounded by the deadline, no files unless granted, no
/// outbound requests.
pub fn link_http(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<HttpProxyPre<GuestState>> {
    let mut linker = Linker::<GuestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    guest::wait::add_to_linker(&mut linker, GuestState::waits)?;
    guest::files::add_to_linker(&mut linker, GuestState::output)?;
    let pre = linker.instantiate_pre(component)?;
    Ok(HttpProxyPre::new(pre)?)
}

/// The header that tells a `wasi:http` component its mount prefix, WSGI's SCRIPT_NAME: `""`
/// at the root, else a prefix such as `/api` that its request's path starts with.
const SCRIPT_NAME_HEADER: &str = "wasm-gw-script-name";
/// The header that tells a `wasi:http` component the client's address, WSGI's REMOTE_ADDR:
/// the peer's, or the one a trusted proxy names; empty for a Unix-socket peer.
const REMOTE_ADDR_HEADER: &str = "wasm-gw-remote-addr";

/// Whether a client's header `name` is one of the headers wasm-gw sets: those are dropped,
/// so a component can believe them.
fn is_ours(name: &str) -> bool {
    name.len() > 8 && name.as_bytes()[..8].eq_ignore_ascii_case(b"wasm-gw-")
}

/// The most request body bytes one read from the guest brings.
const BODY_READ: usize = 64 * 1024;

/// How long past its app time a guest may keep the connection waiting for its response or
/// its end: the epoch deadline stops a guest that runs, but not one blocked in a host call.
const GUEST_GRACE: Duration = Duration::from_secs(2);

/// What the connection's side of a `wasi:http` request hears from the guest's side.
enum FromGuest {
    /// The guest reads the request body: the next bytes (empty at the end), or why not.
    ReadBody(oneshot::Sender<Result<Bytes, wasmtime_wasi_http::Error>>),
    /// The response the guest set, or the error it set instead.
    Response(Result<http::Response<HyperOutgoingBody>, HttpErrorCode>),
    /// The guest's handler returned, or failed.
    Done(Result<(), Failure>),
}

/// The request body as the guest sees it: each frame is read from the client by the
/// connection's thread when the guest asks for it, so a body is never held whole, and
/// `--max-body-size` and the body pace apply as for a WSGI app.
struct StreamedBody {
    connection: mpsc::UnboundedSender<FromGuest>,
    /// The read asked for and not yet answered. wasmtime-wasi-http polls the body without
    /// a waker when the guest reads without blocking, so the read outlives one poll.
    asked: Option<oneshot::Receiver<Result<Bytes, wasmtime_wasi_http::Error>>>,
    ended: bool,
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let asked = match &mut this.asked {
            Some(asked) => asked,
            None => {
                let (reply, answer) = oneshot::channel();
                if this.connection.send(FromGuest::ReadBody(reply)).is_err() {
                    this.ended = true;
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionTerminated)));
                }
                this.asked.insert(answer)
            }
        };
        let answer = ready!(Pin::new(asked).poll(cx));
        this.asked = None;
        Poll::Ready(match answer {
            Ok(Ok(bytes)) if !bytes.is_empty() => Some(Ok(Frame::data(bytes))),
            Ok(Ok(_)) => {
                this.ended = true;
                None
            }
            Ok(Err(error)) => {
                this.ended = true;
                Some(Err(error))
            }
            // The request is over: the connection no longer listens.
            Err(_) => {
                this.ended = true;
                Some(Err(wasmtime_wasi_http::Error::ConnectionTerminated))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// A `wasi:http` 0.2 worker, as the pool sees it. Its instance and store live on a thread
/// of their own, where the guest runs while the connection's thread serves it.
pub(super) struct HttpWorker {
    app: Arc<WasmApp>,
    jobs: std::sync::mpsc::Sender<HttpJob>,
    /// Set when the connection gave up on a response the guest was still writing (its
    /// wall time ran out): the instance is replaced before it serves again.
    spent: Arc<AtomicBool>,
}

/// A request for a `wasi:http` worker's thread, and where its answers go.
struct HttpJob {
    id: u64,
    scheme: HttpScheme,
    request: http::Request<StreamedBody>,
    replies: mpsc::UnboundedSender<FromGuest>,
    /// Where the connection's thread counts its time on the client during this request,
    /// which the guest's clock leaves out.
    client_time: Arc<ClientTime>,
}

impl HttpWorker {
    /// Starts the thread that owns `worker` and serves its requests, until the pool drops
    /// this handle.
    pub(super) fn start(worker: WasmWorker) -> anyhow::Result<HttpWorker> {
        let app = worker.app.clone();
        let (jobs, queue) = std::sync::mpsc::channel::<HttpJob>();
        let spent = Arc::new(AtomicBool::new(false));
        let stopped = spent.clone();
        thread::Builder::new()
            .name("wasi-http-guest".into())
            .spawn(move || {
                let mut worker = worker;
                for job in queue {
                    if stopped.swap(false, Ordering::Relaxed) {
                        worker.retiring = Some("timeout");
                    }
                    worker.handle_http(job);
                }
            })
            .context("cannot start a wasi:http worker's thread")?;
        Ok(HttpWorker { app, jobs, spent })
    }

    /// Passes `request` to the guest and writes what it answers.
    fn serve(&mut self, request: &mut Request) -> Result<(), Failure> {
        let (replies, answers) = mpsc::unbounded_channel();
        let (scheme, http_request) = incoming(request, replies.clone())?;
        let client_time = Arc::new(ClientTime::default());
        let job = HttpJob {
            id: request.id,
            scheme,
            request: http_request,
            replies,
            client_time: client_time.clone(),
        };
        if let Err(unsent) = self.jobs.send(job) {
            // The thread is gone (it panicked): a new one, with a new instance.
            self.restart("thread ended")?;
            if self.jobs.send(unsent.0).is_err() {
                return Err(Failure::Unavailable("the worker's thread has ended".into()));
            }
        }
        let mut connection = Connection {
            exchange: &mut request.exchange,
            answers,
            client_time,
            done: None,
        };
        let patience = self.app.policy.timeout + GUEST_GRACE;
        let gave = wasmtime_wasi::runtime::in_tokio(
            connection.respond(patience, self.app.policy.stream_timeout),
        );
        match gave {
            Gave::Outcome(result) => {
                if let Err(Failure::StreamTimeout(_)) = result {
                    self.spent.store(true, Ordering::Relaxed);
                }
                result
            }
            Gave::Stuck => {
                tracing::error!(
                    app = %self.app.name,
                    request = request.id,
                    "the app is stuck in a host call past its deadline; its instance and thread are given up"
                );
                let _ = self.restart("stuck");
                Err(Failure::Timeout(self.app.policy.timeout))
            }
        }
    }

    /// Replaces the worker's thread and instance, leaving the old thread to end on its own
    /// if it ever does.
    fn restart(&mut self, reason: &'static str) -> Result<(), Failure> {
        let unavailable = |error: anyhow::Error| Failure::Unavailable(format!("{error:#}"));
        let made = self.app.instantiate(None);
        metrics().instantiated(&self.app.name, made.is_ok());
        let (store, instance) = made.map_err(unavailable)?;
        metrics().retired(&self.app.name, reason);
        let worker = WasmWorker {
            app: self.app.clone(),
            store,
            instance,
            served: 0,
            retire_after: self.app.retire_after(),
            retiring: None,
        };
        *self = HttpWorker::start(worker).map_err(unavailable)?;
        Ok(())
    }
}

impl App for HttpWorker {
    fn call(&mut self, mut request: Request) -> (Request, Result<(), Failure>) {
        let result = self.serve(&mut request);
        (request, result)
    }

    fn name(&self) -> Arc<str> {
        self.app.name.clone()
    }
}

/// The request as `wasi:http` shows it: the method, an absolute URI with the path and query
/// as the client sent them, the headers, and a body read from the client as the guest asks.
fn incoming(
    request: &Request,
    connection: mpsc::UnboundedSender<FromGuest>,
) -> Result<(HttpScheme, http::Request<StreamedBody>), Failure> {
    let head = &request.head;
    // The Host the client sent, if it is a valid authority; else the address the request
    // arrived on (an HTTP/1.0 request may have none).
    let authority = head
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .and_then(|(_, value)| http::uri::Authority::try_from(value).ok())
        .map_or_else(
            || match head.server_name.contains(':') {
                true => format!("[{}]:{}", head.server_name, head.server_port),
                false => format!("{}:{}", head.server_name, head.server_port),
            },
            |authority| authority.as_str().to_owned(),
        );
    // The target's path and query as the client sent them; an absolute-form target's,
    // after its scheme and authority; `*` as `/`.
    let target = match head.target.find("://") {
        Some(at) if !head.target.starts_with('/') => {
            let rest = &head.target[at + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        _ if head.target.starts_with('/') => head.target.as_str(),
        _ => "/",
    };
    // A fragment is no part of a target (RFC 9112 §3.2); one sent anyway is dropped.
    let target = target.split('#').next().unwrap_or("/");
    let mut builder = http::Request::builder()
        .method(head.method.as_str())
        .uri(format!("{}://{authority}{target}", head.scheme));
    // The component sees the full path, as under Spin and `wasmtime serve`; where it is
    // mounted, and whom it serves, it learns from headers of ours, which no client can send
    // in its place.
    for (name, value) in head.headers.iter() {
        if !is_ours(name) {
            builder = builder.header(name, value);
        }
    }
    builder = builder
        .header(SCRIPT_NAME_HEADER, &head.path[..head.mount])
        .header(REMOTE_ADDR_HEADER, head.remote_addr.as_str());
    let body = StreamedBody {
        connection,
        asked: None,
        ended: false,
    };
    let http_request = builder
        .body(body)
        .map_err(|error| Failure::Application(format!("cannot pass the request on: {error}")))?;
    let scheme = match head.scheme.as_str() {
        "https" => HttpScheme::Https,
        _ => HttpScheme::Http,
    };
    Ok((scheme, http_request))
}

impl WasmWorker {
    /// Runs `job` on this worker's `wasi:http` instance, on the worker's own thread, and
    /// tells the connection what happened through the job's channel.
    fn handle_http(&mut self, job: HttpJob) {
        let HttpJob {
            id,
            scheme,
            request,
            replies,
            client_time,
        } = job;
        let result = self.call_http(id, scheme, request, &replies, client_time);
        self.after_request(&result);
        let _ = replies.send(FromGuest::Done(result));
    }

    fn call_http(
        &mut self,
        id: u64,
        scheme: HttpScheme,
        request: http::Request<StreamedBody>,
        replies: &mpsc::UnboundedSender<FromGuest>,
        client_time: Arc<ClientTime>,
    ) -> Result<(), Failure> {
        // A spent instance is replaced when next needed, as for a WSGI worker.
        if let Some(reason) = self.retiring {
            self.replace_instance(id, reason)
                .map_err(Failure::Unavailable)?;
        }
        let Instance::Http(proxy) = &self.instance else {
            unreachable!("only a wasi:http instance is served so");
        };
        let data = self.store.data_mut();
        data.begin_http(id, client_time);
        let incoming = data
            .http()
            .new_incoming_request(scheme, request)
            .map_err(|error| Failure::Application(format!("{error:#}")))?;
        let answer = replies.clone();
        let outparam = data
            .http()
            .new_response_outparam_from_callback(move |response| {
                let _ = answer.send(FromGuest::Response(response));
            })
            .map_err(|error| Failure::Application(format!("{error:#}")))?;
        let used = self.store.data_mut().enter_guest();
        let left = self.app.policy.timeout.saturating_sub(used);
        self.store.set_epoch_deadline(ticks(left));
        let called =
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut self.store, incoming, outparam);
        self.store.data_mut().leave_guest();
        self.store.data_mut().flush_logs();
        let result = called.map_err(|error| self.failure(error));
        if result.is_err() {
            // Ends any body the guest left open, for the writer to see the end.
            self.store.data_mut().drop_resources();
        }
        result
    }
}

/// Why the connection's side stopped waiting on a `wasi:http` guest.
enum Gave {
    /// The guest's outcome.
    Outcome(Result<(), Failure>),
    /// It neither answered nor ended in time: it is stuck, and its thread is given up.
    Stuck,
}

impl Gave {
    /// This outcome, or `failure` where the guest itself did not fail.
    fn and(self, failure: Failure) -> Gave {
        match self {
            Gave::Outcome(Ok(())) => Gave::Outcome(Err(failure)),
            other => other,
        }
    }
}

/// The connection's side of one `wasi:http` request: it reads the body for the guest and
/// writes what the guest answers.
struct Connection<'a> {
    exchange: &'a mut Exchange,
    answers: mpsc::UnboundedReceiver<FromGuest>,
    client_time: Arc<ClientTime>,
    /// The guest's outcome, when it came while its body was still being written.
    done: Option<Result<(), Failure>>,
}

/// What came next while the response body was being written.
enum Next {
    Guest(Option<FromGuest>),
    Frame(Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>),
    TimedOut,
}

impl Connection<'_> {
    /// Writes the response the guest sets, waiting for it `patience` at most, and its body
    /// for `stream_limit` at most; then waits for the guest's handler to end.
    async fn respond(&mut self, patience: Duration, stream_limit: Duration) -> Gave {
        let until = Instant::now() + stream_limit;
        let response = match self.next(patience).await {
            Some(FromGuest::Response(Ok(response))) => response,
            Some(FromGuest::Response(Err(code))) => {
                let failure =
                    Failure::Application(format!("the app answered with an error: {code:?}"));
                return self.finish_guest(patience).await.and(failure);
            }
            Some(FromGuest::Done(Ok(()))) => {
                return Gave::Outcome(Err(Failure::Application(
                    "the app returned without setting a response".into(),
                )));
            }
            Some(FromGuest::Done(Err(failure))) => return Gave::Outcome(Err(failure)),
            Some(FromGuest::ReadBody(_)) => unreachable!("reads are served by next()"),
            None => return Gave::Stuck,
        };
        if self.exchange.body_failed().is_some() {
            // The request body could not be read: the client gets the server's answer to
            // that (400, 408, 413, 431), not the guest's reaction to a failed read.
            drop(response);
            return self.finish_guest(patience).await;
        }
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let status_line = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    crate::environ::latin1(value.as_bytes()),
                )
            })
            .collect();
        // A head the exchange refuses is recorded as a violation (500); the body is let go, so
        // that a guest still writing it sees the end rather than wait on a full channel.
        if self.exchange.start(&status_line, &headers, false).is_err() {
            drop(body);
            return self.finish_guest(patience).await;
        }
        // HEAD, 204, 304: no body goes out, whatever the guest writes or declares.
        while self.exchange.wants_body() {
            match self.next_frame(&mut body, until).await {
                Next::TimedOut => {
                    drop(body);
                    return Gave::Outcome(Err(Failure::StreamTimeout(stream_limit)));
                }
                Next::Guest(Some(FromGuest::Done(result))) => self.done = Some(result),
                Next::Guest(Some(FromGuest::ReadBody(reply))) => self.read_body(reply),
                Next::Guest(Some(FromGuest::Response(_))) => {}
                // The guest's thread is gone without a word: it panicked.
                Next::Guest(None) => {
                    self.done = Some(Err(Failure::Trap("the app's thread ended".into())));
                }
                Next::Frame(None) => break,
                Next::Frame(Some(Err(_))) => {
                    drop(body);
                    let failure = Failure::Application("the app's response body failed".into());
                    return self.finish_guest(patience).await.and(failure);
                }
                Next::Frame(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && self.on_client(|exchange| exchange.write(&data)).is_err()
                    {
                        drop(body);
                        return self.finish_guest(patience).await;
                    }
                }
            }
        }
        drop(body);
        // The body ended; it is complete only if the handler did not fail: a guest that
        // trapped after setting its response has its body cut off, not ended.
        match self.finish_guest(patience).await {
            Gave::Outcome(Ok(())) => {
                let _ = self.on_client(Exchange::finish);
                Gave::Outcome(Ok(()))
            }
            other => other,
        }
    }

    /// The next message from the guest that is not a body read, serving the reads; `None`
    /// if the guest took longer than `patience`, not counting the client's time.
    async fn next(&mut self, patience: Duration) -> Option<FromGuest> {
        let mut until = tokio::time::Instant::now() + patience;
        loop {
            let message = tokio::time::timeout_at(until, self.answers.recv()).await;
            match message {
                Ok(Some(FromGuest::ReadBody(reply))) => {
                    let started = tokio::time::Instant::now();
                    self.read_body(reply);
                    until += started.elapsed();
                }
                Ok(Some(message)) => return Some(message),
                // The guest's thread is gone without a word: it panicked.
                Ok(None) => {
                    return Some(FromGuest::Done(Err(Failure::Trap(
                        "the app's thread ended".into(),
                    ))));
                }
                Err(_) => return None,
            }
        }
    }

    /// The next frame of the response body, or message from the guest, whichever comes
    /// first, until `until`.
    async fn next_frame(&mut self, body: &mut HyperOutgoingBody, until: Instant) -> Next {
        use http_body::Body as _;
        let listening = self.done.is_none();
        let next = std::future::poll_fn(|cx| {
            if listening && let Poll::Ready(message) = self.answers.poll_recv(cx) {
                return Poll::Ready(Next::Guest(message));
            }
            Pin::new(&mut *body).poll_frame(cx).map(Next::Frame)
        });
        tokio::time::timeout_at(until.into(), next)
            .await
            .unwrap_or(Next::TimedOut)
    }

    /// Reads the next request body bytes for the guest.
    fn read_body(&mut self, reply: oneshot::Sender<Result<Bytes, wasmtime_wasi_http::Error>>) {
        let read = self.on_client(|exchange| exchange.read_body(BODY_READ));
        let answer = match read {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            // The exchange keeps the reason, and the connection answers it (400, 408, 413)
            // unless the guest's response is out already.
            Err(_) => Err(match self.exchange.body_failed() {
                Some(BodyError::Io(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    wasmtime_wasi_http::Error::ConnectionReadTimeout
                }
                Some(BodyError::Invalid(_)) => wasmtime_wasi_http::Error::HttpProtocolError,
                _ => wasmtime_wasi_http::Error::ConnectionTerminated,
            }),
        };
        let _ = reply.send(answer);
    }

    /// Runs `io` on the exchange, its time counted as the client's, not the app's.
    fn on_client<R>(&mut self, io: impl FnOnce(&mut Exchange) -> R) -> R {
        let exchange = &mut *self.exchange;
        self.client_time.on_client(|| io(exchange))
    }

    /// Waits, `patience` at most, for the guest's handler to return, and gives its outcome.
    async fn finish_guest(&mut self, patience: Duration) -> Gave {
        if let Some(result) = self.done.take() {
            return Gave::Outcome(result);
        }
        loop {
            match self.next(patience).await {
                Some(FromGuest::Done(result)) => return Gave::Outcome(result),
                Some(_) => {}
                None => return Gave::Stuck,
            }
        }
    }
}
