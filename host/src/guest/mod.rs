//! The host side of the guest's imports: the state one Store carries, and the functions a
//! guest calls during a request (`input-stream`, `start-response`, `write`); [`log`] takes
//! its stdio, [`wait`] holds its waits to the deadline, and [`files`] its symlinks to its
//! grants.

pub mod config;
pub mod files;
pub mod http;
mod log;
pub mod wait;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use self::config::ConfigValues;
use self::http::SharedSide;
use self::log::GuestLog;
pub use self::log::{OutputLimit, OutputRate};
use self::wait::{ClientTime, Waits};

use crate::app::Request;
use crate::bindings::wasm_gw::wsgi::request::{self, Environ, InputError, InputStream};
use crate::bindings::wasm_gw::wsgi::response::{self, ResponseError as WitResponseError};
use crate::environ::RequestHead;
use crate::http::Exchange;
use crate::http::response::{ResponseError, excerpt};
use crate::kv::guest::{KeyValue, Session};
use crate::kv::{self, Connection};

/// What the operator grants an app beyond its sandbox.
#[derive(Clone, Debug)]
pub struct Grants {
    pub dirs: Vec<DirGrant>,
    pub env: Vec<(String, String)>,
    /// The app's configuration and secrets (`wasi:config`).
    pub config: ConfigValues,
    /// Where the app's outbound HTTP may go.
    pub outbound: Arc<crate::outbound::policy::Policy>,
    /// Whom its `https` requests trust.
    pub outbound_tls: Arc<rustls::ClientConfig>,
    /// What its outbound requests may take, and how many it has open.
    pub outbound_limits: crate::outbound::Limits,
    /// The app's key-value namespace, on the backend every worker shares.
    pub kv: Arc<kv::Store>,
}

/// A host directory the app may use, under a path of its own.
#[derive(Clone, Debug)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Everything one instance's Store holds.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Sandbox,
    /// The request being served; present only during a call.
    exchange: Option<Exchange>,
    /// The head of the request being served, for the host's side after the call.
    head: Option<RequestHead>,
    /// The environ's buffers, between requests: the next one's strings fill them.
    spare_environ: Option<Environ>,
    /// Names the current request's input handle, so a handle kept past its request is stale.
    request_seq: u32,
    /// Id of the request being served, for tagging the guest's log lines.
    request_id: Arc<AtomicU64>,
    logs: [GuestLog; 2],
    /// The most one body read may return: the guest could not hold more anyway.
    max_read: usize,
    /// The request's app time: guest calls, less the time they spent waiting on the client.
    clock: GuestClock,
    /// The app time one request may use.
    timeout: Duration,
    kv: Session,
    /// `wasi:http`'s context, for apps of that world.
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hooks: crate::outbound::Outbound,
    /// The connection's side of the `wasi:http` request being served.
    http_side: Option<SharedSide>,
    /// The app's configuration, for `wasi:config`, in each version's form.
    config: ConfigValues,
    config_for_wasmtime: wasmtime_wasi_config::WasiConfigVariables,
}

/// Measures how long the app itself runs during a request, leaving out the time its host
/// calls wait on the client, so a slow client never costs the app its deadline.
#[derive(Debug)]
pub struct GuestClock {
    /// App time of the guest calls already finished.
    finished: Duration,
    /// When the current guest call began.
    call_started: Instant,
    /// Time the current guest call spent waiting on the client.
    waiting: Duration,
    /// Time on the client during the current call that is not counted in `waiting`: a
    /// `wasi:http` request's body reads and response writes.
    client: Arc<ClientTime>,
    /// What `client` had spent when the current guest call began.
    client_before: Duration,
}

impl GuestClock {
    fn new() -> GuestClock {
        GuestClock {
            finished: Duration::ZERO,
            call_started: Instant::now(),
            waiting: Duration::ZERO,
            client: Arc::default(),
            client_before: Duration::ZERO,
        }
    }

    /// App time used so far in this request.
    pub fn used(&self) -> Duration {
        self.finished + self.call_started.elapsed().saturating_sub(self.waited())
    }

    /// Time the current guest call spent waiting on the client, on this thread or another.
    fn waited(&self) -> Duration {
        self.waiting + self.client.spent().saturating_sub(self.client_before)
    }
}

impl GuestState {
    /// `kv_connection` is the worker's, if an earlier instance of it opened one.
    pub fn new(
        max_memory: usize,
        timeout: Duration,
        grants: &Grants,
        kv_connection: Option<Box<dyn Connection>>,
        output: &Arc<OutputLimit>,
    ) -> anyhow::Result<GuestState> {
        let request_id = Arc::new(AtomicU64::new(0));
        let logs = [
            GuestLog::new("stdout", request_id.clone(), output.clone()),
            GuestLog::new("stderr", request_id.clone(), output.clone()),
        ];
        let mut wasi = WasiCtx::builder();
        // Nothing is ambient: no arguments, environment, directories or network, only what the
        // operator granted.
        wasi.stdout(logs[0].clone())
            .stderr(logs[1].clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .envs(&grants.env);
        for dir in &grants.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot grant directory {}", dir.host.display()))?;
        }
        let wasi = wasi.build();
        Ok(GuestState {
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: crate::outbound::Outbound {
                app: output.app().clone(),
                policy: grants.outbound.clone(),
                tls: grants.outbound_tls.clone(),
                limits: grants.outbound_limits.clone(),
            },
            http_side: None,
            config: grants.config.clone(),
            config_for_wasmtime: grants.config.for_wasmtime(),
            wasi,
            table: ResourceTable::new(),
            limits: Sandbox {
                max_memory,
                memory_in_use: 0,
                memory_cap_hit: false,
            },
            exchange: None,
            head: None,
            spare_environ: None,
            request_seq: 0,
            request_id,
            logs,
            max_read: max_memory,
            clock: GuestClock::new(),
            timeout,
            kv: Session::new(grants.kv.clone(), kv_connection),
        })
    }

    /// What the `wasi:keyvalue` functions work on.
    pub fn keyvalue(&mut self) -> KeyValue<'_> {
        let left = self.timeout.saturating_sub(self.clock.used());
        KeyValue {
            table: &mut self.table,
            session: &mut self.kv,
            request_id: self.request_id.load(Ordering::Relaxed),
            deadline: Instant::now() + left,
            waited: &mut self.clock.waiting,
        }
    }

    /// What `wasi:io/poll` works on: a wait may last as long as the request's app time.
    pub fn waits(&mut self) -> Waits<'_> {
        Waits {
            table: &mut self.table,
            left: self.timeout.saturating_sub(self.clock.used()),
            side: self.http_side.as_deref(),
        }
    }

    /// The app's output budget, which host lines about the app are charged to as well.
    pub fn output(&mut self) -> &OutputLimit {
        self.logs[0].limit()
    }

    /// Gives up the worker's key-value connection, for its next instance.
    pub fn take_kv_connection(&mut self) -> Option<Box<dyn Connection>> {
        self.kv.take_connection()
    }

    /// Hands the request's exchange to the guest side, and returns its environ and the
    /// input handle that reads its body: what `application` takes. [`GuestState::end`]
    /// takes the environ back, whose buffer this instance's next request fills.
    pub fn begin(&mut self, request: Request) -> (Environ, Resource<InputStream>) {
        self.request_id.store(request.id, Ordering::Relaxed);
        self.request_seq = self.request_seq.wrapping_add(1);
        self.exchange = Some(request.exchange);
        // A new request starts with a full budget; the first guest call starts its clock.
        self.clock.finished = Duration::ZERO;
        let mut environ = self
            .spare_environ
            .take()
            .unwrap_or_else(crate::environ::empty_environ);
        request.head.fill_environ(&mut environ);
        self.head = Some(request.head);
        (environ, Resource::new_own(self.request_seq))
    }

    /// Readies the state for a `wasi:http` request, which the guest reads through its own
    /// resources: its log lines are tagged with `request_id`, and its clock starts anew.
    /// `side` is the connection's, which the guest's waits write the response out through.
    pub fn begin_http(&mut self, request_id: u64, side: SharedSide) {
        self.request_id.store(request_id, Ordering::Relaxed);
        self.clock.finished = Duration::ZERO;
        self.http_side = Some(side);
    }

    /// Lets go of the connection's side at the end of a `wasi:http` request.
    pub fn end_http(&mut self) {
        self.http_side = None;
    }

    /// Where the time this guest's requests spend on the client is counted, off its clock.
    pub fn client_time(&self) -> Arc<ClientTime> {
        self.clock.client.clone()
    }

    /// Flushes the guest's partial log lines, at the end of a request.
    pub fn flush_logs(&mut self) {
        self.logs.iter().for_each(GuestLog::flush_partial);
    }

    pub fn clock(&self) -> &GuestClock {
        &self.clock
    }

    /// Starts timing a call into the guest.
    /// Returns the app time the request used before this call.
    pub fn enter_guest(&mut self) -> Duration {
        self.clock.call_started = Instant::now();
        self.clock.waiting = Duration::ZERO;
        self.clock.client_before = self.clock.client.spent();
        self.clock.finished
    }

    /// Stops timing a call into the guest.
    pub fn leave_guest(&mut self) {
        let now = Instant::now();
        let call = now.saturating_duration_since(self.clock.call_started);
        self.clock.finished += call.saturating_sub(self.clock.waited());
        self.clock.waiting = Duration::ZERO;
        self.clock.client_before = self.clock.client.spent();
        self.clock.call_started = now;
    }

    /// Runs `io`, a wait on the client, off the app's clock.
    fn off_the_clock<R>(&mut self, io: impl FnOnce(&mut Self) -> R) -> R {
        let started = Instant::now();
        let result = io(self);
        self.clock.waiting += started.elapsed();
        result
    }

    pub fn exchange(&mut self) -> &mut Exchange {
        self.exchange.as_mut().expect("a request is being served")
    }

    /// Takes the request back once the guest is done with it; `environ` is the one
    /// [`GuestState::begin`] gave, whose buffers the next request fills.
    pub fn end(&mut self, environ: Environ) -> Request {
        self.logs.iter().for_each(GuestLog::flush_partial);
        // The handle the guest holds names this request: reads through it are `stale` now.
        self.request_seq = self.request_seq.wrapping_add(1);
        self.spare_environ = Some(environ);
        Request {
            id: self.request_id.load(Ordering::Relaxed),
            head: self.head.take().expect("a request is being served"),
            exchange: self.exchange.take().expect("a request is being served"),
        }
    }

    fn current_input(
        &mut self,
        handle: &Resource<InputStream>,
    ) -> Result<&mut Exchange, InputError> {
        match &mut self.exchange {
            Some(exchange) if handle.rep() == self.request_seq => Ok(exchange),
            _ => Err(InputError::Stale),
        }
    }

    fn read(
        &mut self,
        handle: &Resource<InputStream>,
        max: u64,
        read: fn(&mut Exchange, usize) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, InputError> {
        let max = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(self.max_read);
        self.current_input(handle)?;
        self.off_the_clock(|state| read(state.exchange(), max).map_err(InputError::Disconnected))
    }

    fn response<R>(
        &mut self,
        act: impl FnOnce(&mut Exchange) -> Result<R, ResponseError>,
    ) -> Result<R, WitResponseError> {
        let Some(exchange) = &mut self.exchange else {
            return Err(WitResponseError::NotStarted);
        };
        act(exchange).map_err(to_wit)
    }
}

/// Most table elements (function references) one table may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Most core instances, tables and memories in one component instance: far above what a
/// compiled app uses, far below what would strain the host.
pub const MAX_INSTANCE_PARTS: u32 = 100;

/// The resource limits of one instance, and whether the app ran into its memory cap.
pub struct Sandbox {
    max_memory: usize,
    /// Linear memory of all the instance's memories together.
    memory_in_use: usize,
    pub memory_cap_hit: bool,
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The cap is for the instance: a component with several memories shares it.
        let total = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if total > self.max_memory {
            self.memory_cap_hit = true;
            // A trap, not a failed grow: the app could not go on anyway, and the trap says why.
            wasmtime::bail!(
                "the app needed {} MiB of memory, past its cap of {} MiB",
                total >> 20,
                self.max_memory >> 20
            );
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCE_PARTS as usize
    }

    fn tables(&self) -> usize {
        MAX_INSTANCE_PARTS as usize
    }

    fn memories(&self) -> usize {
        MAX_INSTANCE_PARTS as usize
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for GuestState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl request::Host for GuestState {}

impl request::HostInputStream for GuestState {
    fn read(&mut self, handle: Resource<InputStream>, size: u64) -> Result<Vec<u8>, InputError> {
        GuestState::read(self, &handle, size, Exchange::read_body)
    }

    fn read_line(
        &mut self,
        handle: Resource<InputStream>,
        limit: u64,
    ) -> Result<Vec<u8>, InputError> {
        GuestState::read(self, &handle, limit, Exchange::read_body_line)
    }

    fn read_to_end(&mut self, handle: Resource<InputStream>) -> Result<Vec<u8>, InputError> {
        // One byte past the cap tells a body the instance can't hold from one it can.
        let limit = self.max_read as u64;
        self.max_read += 1;
        let body = GuestState::read(self, &handle, limit + 1, Exchange::read_body);
        self.max_read -= 1;
        match body {
            Ok(body) if body.len() as u64 > limit => Err(InputError::TooLarge),
            other => other,
        }
    }

    fn drop(&mut self, _handle: Resource<InputStream>) -> wasmtime::Result<()> {
        // The body belongs to the connection, which skips whatever the app left unread.
        Ok(())
    }
}

impl response::Host for GuestState {
    fn start_response(
        &mut self,
        status: String,
        headers: Vec<(String, String)>,
        exc_info: Option<String>,
    ) -> Result<(), WitResponseError> {
        if let Some(exc_info) = &exc_info {
            // The error once, by its last line (Python's `ValueError: ...`); the app's own
            // handler often logs the traceback itself, so the host's copy is for debugging.
            let request = self.request_id.load(Ordering::Relaxed);
            let error = exc_info
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or_default();
            let error = excerpt(error);
            let exchange = self.exchange.as_ref();
            if exchange.is_some_and(Exchange::head_sent) {
                // Refused below, and logged there: too late to replace anything.
            } else if exchange.is_some_and(Exchange::head_set) {
                tracing::warn!(request, "app error, replacing its response: {error}");
            } else {
                // PEP 3333's way to send an error page: the app handled the error.
                tracing::warn!(request, "app error, answered with its error page: {error}");
            }
            tracing::debug!(request, "the app's error in full: {}", excerpt(exc_info));
        }
        self.response(|exchange| exchange.start(&status, &headers, exc_info.is_some()))
    }

    fn write(&mut self, data: Vec<u8>) -> Result<(), WitResponseError> {
        self.off_the_clock(|state| state.response(|exchange| exchange.write(&data)))
    }
}

fn to_wit(error: ResponseError) -> WitResponseError {
    match error {
        ResponseError::InvalidStatus(status) => WitResponseError::InvalidStatus(status),
        ResponseError::InvalidHeader(why) => WitResponseError::InvalidHeader(why),
        ResponseError::HopByHopHeader(name) => WitResponseError::HopByHopHeader(name),
        ResponseError::AlreadyStarted => WitResponseError::AlreadyStarted,
        ResponseError::NotStarted => WitResponseError::NotStarted,
        ResponseError::LengthMismatch { .. } => WitResponseError::InvalidHeader(error.to_string()),
        ResponseError::Disconnected => WitResponseError::Disconnected,
    }
}
