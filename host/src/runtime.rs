//! Running a component: the [`Engines`] (made at startup and passed down: one engine for
//! every app that keeps its instances, one of its own for each app that makes an instance
//! per request, and the clock that ticks them all), the Component and linker set up once
//! per app, and the workers, each a Store with its own limits and a long-lived instance.

use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, HasSelf, Linker, ResourceAny};
use wasmtime::{
    Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use crate::app::{App, AppFactory, Failure, Request};
use crate::bindings;
use crate::bindings::exports::wasm_gw::wsgi::handler::Body;
use crate::bindings::wasm_gw::wsgi::request;
use crate::bindings::wasm_gw::wsgi::response;
use crate::bundle;
use crate::compile::{CodeCache, Concurrency, Loaded, base_config, load_component};
use crate::guest::wait::DeadlinePassed;
use crate::guest::{
    self, DirGrant, Grants, GuestState, MAX_INSTANCE_PARTS, OutputLimit, OutputRate,
};
use crate::http::response::excerpt;
use crate::kv::{self, Connection};
use crate::metrics::metrics;
use crate::world::World;
use wasmtime_wasi_http::p2::bindings::sync::{Proxy as HttpProxy, ProxyPre as HttpProxyPre};

mod http;

pub use self::http::{link_http, link_http3};

/// How often the deadline clock ticks; deadlines are accurate to about this much.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The least one call may copy out of a guest, however small its memory cap.
const MIN_HOSTCALL_FUEL: usize = 1 << 20;

/// Linear memory a pooled slot keeps resident between instances: a small app's stack, data
/// and heap.
const SLOT_MEMORY_KEPT: usize = 4 << 20;
/// Table space a pooled slot keeps resident between instances.
const SLOT_TABLE_KEPT: usize = 64 << 10;

/// Links `component` against what wasm-gw provides (WASI 0.2 and the wsgi imports) and checks
/// that it exports the handler.
pub fn link(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<bindings::AppPre<GuestState>> {
    let mut linker = Linker::<GuestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    request::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)?;
    response::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)?;
    kv::guest::add_to_linker(&mut linker, GuestState::keyvalue)?;
    guest::config::add_to_linker(&mut linker)?;
    // Outbound HTTP, as a wasi:http component gets it: the same allow-list and client.
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    guest::wait::add_to_linker(&mut linker, GuestState::waits)?;
    guest::files::add_to_linker(&mut linker, GuestState::output)?;
    let pre = linker.instantiate_pre(component)?;
    Ok(bindings::AppPre::new(pre)?)
}

/// The engines the apps run on, and the clock that ticks them for deadlines: made once at
/// startup and passed down, as wasmtime's `serve` does. The clock ticks for as long as any
/// engine lives, whoever holds it: an app's, after the reloader that made it is gone.
pub struct Engines {
    /// The engine of every app that keeps its instances, however many apps a server hosts:
    /// one without the component model's concurrency, one with it for the apps that need it
    /// ([`Concurrency`]).
    shared: Engine,
    shared_concurrent: Engine,
    clock: Arc<Clock>,
}

/// The engines whose epoch advances every [`EPOCH_TICK`], by one thread for them all.
struct Clock {
    engines: Mutex<Vec<EngineWeak>>,
}

impl Engines {
    pub fn new() -> anyhow::Result<Engines> {
        let shared = Engine::new(&base_config(Concurrency::Off))?;
        let shared_concurrent = Engine::new(&base_config(Concurrency::On))?;
        let clock = Arc::new(Clock {
            engines: Mutex::new(vec![shared.weak(), shared_concurrent.weak()]),
        });
        let ticking = clock.clone();
        thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || ticking.run())
            .context("cannot start the epoch ticker")?;
        Ok(Engines {
            shared,
            shared_concurrent,
            clock,
        })
    }

    /// The engine for an app with `policy` whose component needs `concurrency`: a shared
    /// one, or, for an app that makes an instance per request, one of its own with a pooling
    /// allocator sized for it.
    fn for_app(&self, policy: &InstancePolicy, concurrency: Concurrency) -> anyhow::Result<Engine> {
        if policy.isolation == Isolation::Worker {
            return Ok(match concurrency {
                Concurrency::Off => self.shared.clone(),
                Concurrency::On => self.shared_concurrent.clone(),
            });
        }
        // An instance per request: the pooling allocator reuses memory slots instead of
        // mapping fresh memory each time. Each worker holds one instance, and a second while
        // it replaces the first. The pool is this app's, and so is the engine.
        let slots = u32::try_from(policy.workers.most * 2 + 2).unwrap_or(u32::MAX);
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(MAX_INSTANCE_PARTS))
            .total_memories(slots.saturating_mul(4))
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .max_memory_size(policy.max_memory)
            // A slot's first pages are reset for its next instance by writing them, not by
            // giving them back with madvise, which makes every core flush its TLB: that cost
            // twice the rest of the request. Writing every kept byte, touched or not, also
            // resets pages the kernel swapped out; wasmtime's PAGEMAP_SCAN shortcut resets
            // only pages present and written, and would leave those, and any page being
            // migrated at that moment, with the last request's data. The writing is the
            // largest cost of an instance a request (40% of the server's CPU for a hello whose
            // memory is 1.06 MiB); the shortcut would save about 15%.
            .linear_memory_keep_resident(SLOT_MEMORY_KEPT)
            .table_keep_resident(SLOT_TABLE_KEPT);
        let mut config = base_config(concurrency);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;
        self.clock
            .engines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(engine.weak());
        Ok(engine)
    }
}

impl Clock {
    /// Ticks every engine still alive, until none is.
    fn run(&self) {
        loop {
            thread::sleep(EPOCH_TICK);
            let mut engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
            engines.retain(|engine| match engine.upgrade() {
                Some(engine) => {
                    engine.increment_epoch();
                    true
                }
                None => false,
            });
            if engines.is_empty() {
                return;
            }
        }
    }
}

/// Epoch ticks in `duration`, at least one.
fn ticks(duration: Duration) -> u64 {
    let ticks = duration.as_millis() / EPOCH_TICK.as_millis();
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// How long an instance lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// One instance per worker serves request after request; module state persists.
    Worker,
    /// A fresh instance for every request; nothing persists between requests.
    Request,
}

/// The limits, grants and lifecycle of each instance.
#[derive(Clone, Debug)]
pub struct InstancePolicy {
    /// Linear memory per instance, in bytes.
    pub max_memory: usize,
    /// App time one request may use.
    pub timeout: Duration,
    pub isolation: Isolation,
    /// Replace an instance after it served this many requests (plus up to the jitter).
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    pub grants: Grants,
    /// How many instances the app keeps, and may have while some wait on something other
    /// than the CPU ([`crate::pool`]); the latter sizes the pooling allocator.
    pub workers: crate::pool::Size,
    /// Wall time a streamed response may take, writes to the client included.
    pub stream_timeout: Duration,
    /// How fast the app's stdout and stderr may go to the log.
    pub output: OutputRate,
}

/// What an app's instances are made from: a component linked for its world.
enum Pre {
    Wsgi(bindings::AppPre<GuestState>),
    /// A standard `wasi:http` 0.2 component (`wasi:http/proxy`).
    Http(HttpProxyPre<GuestState>),
    /// A standard `wasi:http` 0.3 component (`wasi:http/service`).
    Http3(wasmtime_wasi_http::p3::bindings::ServicePre<GuestState>),
}

/// An instance of an app, in its world.
enum Instance {
    Wsgi(bindings::App),
    Http(HttpProxy),
    Http3(wasmtime_wasi_http::p3::bindings::Service),
}

/// A component compiled and linked, ready to instantiate.
pub struct WasmApp {
    /// The app's name, for logs and metrics.
    name: Arc<str>,
    engine: Engine,
    pre: Pre,
    policy: InstancePolicy,
    uses_keyvalue: bool,
    /// The output budget all the app's instances share.
    output: Arc<OutputLimit>,
}

impl WasmApp {
    /// Loads and checks the component at `path`, with one clear error for each way it can be
    /// unfit to serve.
    /// `name` labels the app in logs and metrics.
    pub fn load(
        engines: &Engines,
        name: &str,
        path: &Path,
        policy: InstancePolicy,
        cache: Option<&CodeCache>,
    ) -> anyhow::Result<Arc<WasmApp>> {
        let Loaded { component, files } = load_component(
            &|concurrency| engines.for_app(&policy, concurrency),
            path,
            cache,
        )?;
        let engine = component.engine().clone();
        let mut policy = policy;
        if let Some(archive) = files {
            let root = cache.map_or_else(bundle::default_root, CodeCache::files_dir);
            let carried = bundle::unpack(&archive, &root)
                .with_context(|| format!("cannot unpack the files {} carries", path.display()))?;
            let mount = |grant: &DirGrant| grant.guest.trim_matches('/').to_owned();
            if let Some(hidden) = policy
                .grants
                .dirs
                .iter()
                .find(|grant| carried.iter().any(|own| mount(own) == mount(grant)))
            {
                anyhow::bail!(
                    "--dir {}::{} would hide the files {} carries at /{}: grant it at \
                     another path",
                    hidden.host.display(),
                    hidden.guest,
                    path.display(),
                    mount(hidden)
                );
            }
            tracing::info!(
                "{} carries files for its app, granted read-only at {} from {}",
                path.display(),
                carried
                    .iter()
                    .map(|grant| grant.guest.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                root.display()
            );
            policy.grants.dirs.splice(0..0, carried);
        }
        let pre = match World::of(&engine, &component) {
            Some(world) if let Some(why) = world.refusal() => {
                anyhow::bail!("{} cannot be served: {why}", path.display())
            }
            Some(world @ World::WasiHttp03(_)) => {
                Pre::Http3(link_http3(&engine, &component).with_context(|| {
                    format!("{} is a component of {world}, but", path.display())
                })?)
            }
            Some(world @ World::WasiHttp02(_)) => {
                Pre::Http(link_http(&engine, &component).with_context(|| {
                    format!("{} is a component of {world}, but", path.display())
                })?)
            }
            _ => Pre::Wsgi(link(&engine, &component).with_context(|| {
                format!("{} does not fit the wasm-gw app world", path.display())
            })?),
        };
        let uses_keyvalue = component
            .component_type()
            .imports(&engine)
            .any(|(name, _)| name.starts_with("wasi:keyvalue/"));
        if uses_keyvalue {
            kv::check_name(&policy.grants.kv.namespace).map_err(|why| {
                anyhow::anyhow!(
                    "{} uses key-value storage, but its namespace {why}: choose one with \
                     --kv-namespace",
                    path.display()
                )
            })?;
        }

        let name: Arc<str> = name.into();
        let dropped = metrics().app_log_dropped(&name);
        let output = Arc::new(OutputLimit::new(name.clone(), policy.output, dropped));
        Ok(Arc::new(WasmApp {
            name,
            engine,
            pre,
            policy,
            uses_keyvalue,
            output,
        }))
    }

    /// Whether the component imports `wasi:keyvalue`.
    pub fn uses_keyvalue(&self) -> bool {
        self.uses_keyvalue
    }

    /// Makes an instance; `kv_connection` is the worker's, if it has one already.
    fn instantiate(
        &self,
        kv_connection: Option<Box<dyn Connection>>,
    ) -> anyhow::Result<(Store<GuestState>, Instance)> {
        let state = GuestState::new(
            self.policy.max_memory,
            self.policy.timeout,
            &self.policy.grants,
            kv_connection,
            &self.output,
        )?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // What one call may copy out of the guest: no more than its whole memory, which is
        // all an honest guest could send. Lists whose elements all point at one buffer
        // would otherwise make the host copy it over and over, up to wasmtime's default
        // of 128 MiB a call whatever the guest's cap.
        store.set_hostcall_fuel(self.policy.max_memory.max(MIN_HOSTCALL_FUEL));
        // At each tick past the deadline, look at the app time actually used: time spent
        // waiting on the client doesn't count.
        let timeout = self.policy.timeout;
        store.epoch_deadline_callback(move |store| {
            let used = store.data().clock().used();
            Ok(match timeout.checked_sub(used) {
                Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
                _ => UpdateDeadline::Interrupt,
            })
        });
        // Instantiation runs guest start code, which gets the same deadline as a request.
        store.set_epoch_deadline(ticks(timeout));
        let instance = match &self.pre {
            Pre::Wsgi(pre) => pre.instantiate(&mut store).map(Instance::Wsgi),
            Pre::Http(pre) => pre.instantiate(&mut store).map(Instance::Http),
            // Its host functions are async: instantiation runs on wasmtime-wasi's runtime,
            // within the deadline a request gets (a start function waiting in an async host
            // call is out of the epoch's reach).
            Pre::Http3(pre) => {
                let timeout = self.policy.timeout;
                wasmtime_wasi::runtime::in_tokio(async {
                    match tokio::time::timeout(timeout, pre.instantiate_async(&mut store)).await {
                        Ok(instantiated) => instantiated,
                        Err(_) => Err(wasmtime::format_err!(
                            "its start ran past the app's {timeout:?} deadline"
                        )),
                    }
                })
                .map(Instance::Http3)
            }
        };
        let instance = instance
            .map_err(anyhow::Error::from)
            .context("cannot instantiate the app")?;
        Ok((store, instance))
    }
}

impl AppFactory for Arc<WasmApp> {
    fn new_worker(&self) -> anyhow::Result<Box<dyn App>> {
        // A failure here fails the startup or the reload as a whole, and the pool already
        // serving, if any, keeps serving: the app's health is unchanged.
        let (store, instance) = self.instantiate(None)?;
        metrics().instantiated(&self.name, true);
        let worker = WasmWorker {
            app: self.clone(),
            store,
            instance,
            served: 0,
            retire_after: self.retire_after(),
            retiring: None,
            retired_as: "reload",
        };
        Ok(Box::new(worker))
    }
}

impl WasmApp {
    /// How many requests a new instance serves before it is replaced: Gunicorn's
    /// max-requests, spread by a random jitter so that workers don't all restart at once.
    fn retire_after(&self) -> Option<u64> {
        let jitter = match self.policy.max_requests_jitter {
            0 => 0,
            most => RandomState::new().hash_one(Instant::now()) % (most + 1),
        };
        self.policy.max_requests.map(|requests| requests + jitter)
    }
}

/// One instance of the app and the Store it lives in. Module state persists across the
/// requests it serves, as in a WSGI worker process, unless isolation is per request.
struct WasmWorker {
    app: Arc<WasmApp>,
    store: Store<GuestState>,
    instance: Instance,
    /// Requests this instance has served.
    served: u64,
    retire_after: Option<u64>,
    /// Why the instance must be replaced before it serves again, if it must.
    retiring: Option<&'static str>,
    /// Why the instance is counted as retired when it goes: its pool went, at a reload,
    /// unless the pool let it go for another reason.
    retired_as: &'static str,
}

impl Drop for WasmWorker {
    fn drop(&mut self) {
        metrics().retired(&self.app.name, self.retired_as);
    }
}

impl App for WasmWorker {
    fn call(&mut self, request: Request) -> (Request, Result<(), Failure>) {
        match self.instance {
            Instance::Http(_) | Instance::Http3(_) => return self.call_http(request),
            Instance::Wsgi(_) => {}
        }
        // A spent instance is replaced when next needed, not after its last response, so
        // that the response never waits for a new instance.
        if let Some(reason) = self.retiring
            && let Err(error) = self.replace_instance(request.id, reason)
        {
            return (request, Err(Failure::Unavailable(error)));
        }
        let (environ, input) = self.store.data_mut().begin(request);
        let result = self.run(&environ, input);
        let request = self.store.data_mut().end(environ);
        self.after_request(&result);
        (request, result)
    }

    fn name(&self) -> Arc<str> {
        self.app.name.clone()
    }

    fn retire(mut self: Box<Self>, reason: &'static str) {
        self.retired_as = reason;
    }
}

impl WasmWorker {
    /// Counts a request served, and marks the instance for replacement if it must be.
    fn after_request(&mut self, result: &Result<(), Failure>) {
        self.served += 1;
        self.retiring = match result {
            Err(Failure::Trap(_)) => Some("trap"),
            Err(Failure::Timeout(_) | Failure::StreamTimeout(_)) => Some("timeout"),
            Err(Failure::MemoryCap(_)) => Some("memory"),
            _ if self.app.policy.isolation == Isolation::Request => Some("isolation"),
            _ if self.retire_after.is_some_and(|limit| self.served >= limit) => {
                Some("max-requests")
            }
            _ => None,
        };
    }
}

impl WasmWorker {
    fn run(
        &mut self,
        environ: &bindings::wasm_gw::wsgi::request::Environ,
        input: wasmtime::component::Resource<bindings::wasm_gw::wsgi::request::InputStream>,
    ) -> Result<(), Failure> {
        let body = self
            .guest_call(|store, instance| {
                instance
                    .wasm_gw_wsgi_handler()
                    .call_application(store, environ, input)
            })?
            .map_err(|why| Failure::Application(excerpt(&why)))?;
        match body {
            Body::Chunks(chunks) => {
                self.store.data_mut().exchange().set_whole_body(chunks);
                Ok(())
            }
            Body::Stream(stream) => {
                let pumped = self.pump(stream);
                // WSGI: close() is called whatever happened to the response.
                let closed = self.guest_call(|store, instance| {
                    instance
                        .wasm_gw_wsgi_handler()
                        .body_stream()
                        .call_close(&mut *store, stream)?;
                    stream.resource_drop(store)
                });
                pumped.and(closed)
            }
        }
    }

    /// Pulls the body stream and writes each chunk, until it ends, the response fails, or
    /// the stream has run for its wall time.
    fn pump(&mut self, stream: ResourceAny) -> Result<(), Failure> {
        let limit = self.app.policy.stream_timeout;
        let until = Instant::now() + limit;
        loop {
            // Writes to the client are off the app's clock, so a client that reads steadily
            // could otherwise keep the instance for as long as the app streams.
            if Instant::now() >= until {
                return Err(Failure::StreamTimeout(limit));
            }
            let exchange = self.store.data_mut().exchange();
            if exchange.violation().is_some() {
                return Ok(());
            }
            if !exchange.wants_body() {
                // HEAD, 204 or 304: nothing of the stream would be sent, so don't produce it.
                // A failure is the exchange's to record.
                let _ = exchange.finish();
                return Ok(());
            }
            let next = self.guest_call(|store, instance| {
                instance
                    .wasm_gw_wsgi_handler()
                    .body_stream()
                    .call_next(store, stream)
            })?;
            let exchange = self.store.data_mut().exchange();
            let ended = match next {
                Some(chunk) => exchange.write(&chunk).map(|()| false),
                None => exchange.finish().map(|()| true),
            };
            // A failed write is the exchange's to record, and ends the stream.
            if ended != Ok(false) {
                return Ok(());
            }
        }
    }

    /// Calls into the guest with what is left of the request's app-time budget.
    fn guest_call<R>(
        &mut self,
        call: impl FnOnce(&mut Store<GuestState>, &bindings::App) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let Instance::Wsgi(instance) = &self.instance else {
            unreachable!("only a WSGI app is called through its handler");
        };
        let used = self.store.data_mut().enter_guest();
        let left = self.app.policy.timeout.saturating_sub(used);
        self.store.set_epoch_deadline(ticks(left));
        let result = call(&mut self.store, instance);
        self.store.data_mut().leave_guest();
        result.map_err(|error| self.failure(error))
    }

    fn failure(&self, error: wasmtime::Error) -> Failure {
        call_failure(&self.app, &self.store, error)
    }

    /// Replaces the instance. On failure the old one stays marked as spent: it never serves
    /// again, and the next request tries anew.
    fn replace_instance(&mut self, request_id: u64, reason: &'static str) -> Result<(), String> {
        let kv_connection = self.store.data_mut().take_kv_connection();
        let made = self.app.instantiate(kv_connection);
        metrics().instantiated(&self.app.name, made.is_ok());
        let (store, instance) = made.map_err(|error| format!("{error:#}"))?;
        metrics().retired(&self.app.name, reason);
        self.store = store;
        self.instance = instance;
        self.served = 0;
        self.retire_after = self.app.retire_after();
        self.retiring = None;
        // Per-request isolation replaces every instance; that is no news.
        if reason != "isolation" {
            tracing::info!(app = %self.app.name, request = request_id, reason, "instance replaced");
        }
        Ok(())
    }
}

/// What a failed call into a guest of `app` means.
fn call_failure(app: &WasmApp, store: &Store<GuestState>, error: wasmtime::Error) -> Failure {
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return Failure::Timeout(app.policy.timeout);
    }
    if error.is::<DeadlinePassed>() {
        tracing::debug!("{error:?}");
        return Failure::Timeout(app.policy.timeout);
    }
    // The root cause names the trap in one line; the wasm backtrace is for debugging.
    tracing::debug!("guest trap: {error:?}");
    let why = error.root_cause().to_string();
    if store.data().limits.memory_cap_hit {
        Failure::MemoryCap(why)
    } else {
        Failure::Trap(why)
    }
}
