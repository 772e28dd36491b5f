//! What the admin endpoint reports: Prometheus metrics for requests, instances and key-value
//! storage, and each app's health. Recording is a few atomic operations, so it is always on.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// An app's name as a label value, shared rather than copied for every request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AppName(pub Arc<str>);

impl EncodeLabelValue for AppName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: AppName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: AppName,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetiredLabels {
    app: AppName,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    app: AppName,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvLabels {
    namespace: AppName,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    app: AppName,
    /// The pattern that allowed the request, as the operator wrote it; `-` for a
    /// destination no pattern allows: a guest cannot make the label take values of its own.
    host: String,
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<AppLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    instances_live: Family<AppLabels, Gauge>,
    instances_created: Family<AppLabels, Counter>,
    instances_retired: Family<RetiredLabels, Counter>,
    bytes_in: Family<AppLabels, Counter>,
    bytes_out: Family<AppLabels, Counter>,
    kv_operations: Family<KvLabels, Counter>,
    queue_length: Family<AppLabels, Gauge>,
    queue_wait: Family<AppLabels, Histogram, fn() -> Histogram>,
    queue_refused: Family<RefusedLabels, Counter>,
    app_log_dropped: Family<AppLabels, Counter>,
    outbound_requests: Family<OutboundLabels, Counter>,
    outbound_duration: Family<AppLabels, Histogram, fn() -> Histogram>,
    /// Whether each app's last attempt to make an instance worked.
    instantiable: Mutex<BTreeMap<Arc<str>, bool>>,
    /// The load of each app's current pool.
    pools: Mutex<BTreeMap<Arc<str>, Arc<PoolGauges>>>,
    /// The apps served now: a reload may add some and remove others.
    serving: Mutex<Vec<Arc<str>>>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<AppLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let instances_live = Family::<AppLabels, Gauge>::default();
        let instances_created = Family::<AppLabels, Counter>::default();
        let instances_retired = Family::<RetiredLabels, Counter>::default();
        let bytes_in = Family::<AppLabels, Counter>::default();
        let bytes_out = Family::<AppLabels, Counter>::default();
        let kv_operations = Family::<KvLabels, Counter>::default();
        let queue_length = Family::<AppLabels, Gauge>::default();
        let queue_wait: Family<AppLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let queue_refused = Family::<RefusedLabels, Counter>::default();
        let app_log_dropped = Family::<AppLabels, Counter>::default();
        let outbound_requests = Family::<OutboundLabels, Counter>::default();
        let outbound_duration: Family<AppLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);

        let mut registry = Registry::with_prefix("wasm_gw");
        registry.register(
            "requests",
            "Requests answered, by app, method and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's head to the end of its response, by app",
            latency.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being served now",
            in_flight.clone(),
        );
        registry.register(
            "instances_live",
            "Instances alive, by app",
            instances_live.clone(),
        );
        registry.register(
            "instances_created",
            "Instances made, by app",
            instances_created.clone(),
        );
        registry.register(
            "instances_retired",
            "Instances replaced or dropped, by app and reason: trap, timeout, memory, \
             max-requests, isolation, reload or idle",
            instances_retired.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Request body bytes read off connections, framing included, by app",
            bytes_in.clone(),
        );
        registry.register(
            "response_body_bytes",
            "Response body bytes written, by app",
            bytes_out.clone(),
        );
        registry.register(
            "kv_operations",
            "Key-value operations, by namespace and outcome: ok, refused or failed",
            kv_operations.clone(),
        );
        registry.register(
            "queue_length",
            "Requests waiting for an instance, by app",
            queue_length.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time requests waited for an instance, by app; requests that found one free \
             at once are not counted",
            queue_wait.clone(),
        );
        registry.register(
            "queue_refused",
            "Requests that got no instance, by app and reason: full (503 at once), timeout \
             (503 after the queue timeout) or gone (the client left while waiting)",
            queue_refused.clone(),
        );
        registry.register(
            "app_log_dropped_bytes",
            "Bytes of an app's stdout and stderr dropped past its --app-log-rate, by app",
            app_log_dropped.clone(),
        );
        registry.register(
            "outbound_requests",
            "Outbound HTTP requests of apps, by app, destination (the --allow-outbound \
             pattern that allowed it, - for none) and outcome: ok (the response's head came), \
             denied or failed",
            outbound_requests.clone(),
        );
        registry.register(
            "outbound_request_duration_seconds",
            "Time from an app's outbound request to its response's head, or its failure",
            outbound_duration.clone(),
        );
        Metrics {
            registry,
            outbound_requests,
            outbound_duration,
            requests,
            latency,
            in_flight,
            instances_live,
            instances_created,
            instances_retired,
            bytes_in,
            bytes_out,
            kv_operations,
            queue_length,
            queue_wait,
            queue_refused,
            app_log_dropped,
            instantiable: Mutex::default(),
            pools: Mutex::default(),
            serving: Mutex::default(),
        }
    }

    /// A request began.
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// The request metrics of `app`, to be looked up once rather than per request.
    pub fn app(&'static self, app: &Arc<str>) -> AppMetrics {
        AppMetrics {
            metrics: self,
            app: AppName(app.clone()),
            requests: Default::default(),
            latency: OnceLock::new(),
            bytes_in: OnceLock::new(),
            bytes_out: OnceLock::new(),
        }
    }

    /// An instance of `app` was made, or could not be.
    pub fn instantiated(&self, app: &Arc<str>, worked: bool) {
        self.instantiable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(app.clone(), worked);
        if worked {
            let labels = AppLabels {
                app: AppName(app.clone()),
            };
            self.instances_created.get_or_create(&labels).inc();
            self.instances_live.get_or_create(&labels).inc();
        }
    }

    /// An instance of `app` went away, for `reason`.
    pub fn retired(&self, app: &Arc<str>, reason: &'static str) {
        let app = AppName(app.clone());
        self.instances_retired
            .get_or_create(&RetiredLabels {
                app: app.clone(),
                reason,
            })
            .inc();
        self.instances_live.get_or_create(&AppLabels { app }).dec();
    }

    /// An outbound request of `app`, allowed by pattern `host` (`-` if none), ended in
    /// `outcome` (`ok`, `denied` or `failed`) after `took`.
    pub fn outbound(&self, app: &Arc<str>, host: String, outcome: &'static str, took: Duration) {
        let app = AppName(app.clone());
        self.outbound_requests
            .get_or_create(&OutboundLabels {
                app: app.clone(),
                host,
                outcome,
            })
            .inc();
        self.outbound_duration
            .get_or_create(&AppLabels { app })
            .observe(took.as_secs_f64());
    }

    /// A key-value operation of `namespace` ended: `ok`, `refused` or `failed`.
    pub fn kv_operation(&self, namespace: &Arc<str>, outcome: &'static str) {
        self.kv_operations
            .get_or_create(&KvLabels {
                namespace: AppName(namespace.clone()),
                outcome,
            })
            .inc();
    }

    /// The gauges of a new pool of `app`, whose requests may take `busy_limit` each. The
    /// app's health is read from them once the pool serves (see [`Metrics::watch`]).
    pub fn pool(&self, app: &Arc<str>, busy_limit: Duration) -> Arc<PoolGauges> {
        let labels = AppLabels {
            app: AppName(app.clone()),
        };
        let refused = |reason| {
            self.queue_refused
                .get_or_create(&RefusedLabels {
                    app: AppName(app.clone()),
                    reason,
                })
                .clone()
        };
        Arc::new(PoolGauges {
            length: self.queue_length.get_or_create(&labels).clone(),
            wait: self.queue_wait.get_or_create(&labels).clone(),
            refused: REFUSALS.map(|reason| (reason, refused(reason))),
            ..PoolGauges::detached(busy_limit)
        })
    }

    /// `app`'s health is read from `gauges` from now on: its pool takes new requests.
    pub fn watch(&self, app: &Arc<str>, gauges: Arc<PoolGauges>) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(app.clone(), gauges);
    }

    /// The counter of `app`'s output bytes dropped past its rate.
    pub fn app_log_dropped(&self, app: &Arc<str>) -> Counter {
        self.app_log_dropped
            .get_or_create(&AppLabels {
                app: AppName(app.clone()),
            })
            .clone()
    }

    /// The apps served from now on.
    pub fn serving(&self, apps: Vec<Arc<str>>) {
        *self.serving.lock().unwrap_or_else(PoisonError::into_inner) = apps;
    }

    /// Every app served, and its health.
    pub fn health(&self) -> Vec<(Arc<str>, Health)> {
        let instantiable = self
            .instantiable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        self.serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|app| {
                let health = if instantiable.get(app) != Some(&true) {
                    Health::Unavailable
                } else {
                    match pools.get(app).and_then(|pool| pool.degraded()) {
                        Some(why) => Health::Degraded(why),
                        None => Health::Ok,
                    }
                };
                (app.clone(), health)
            })
            .collect()
    }

    /// The metrics in Prometheus's text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// How an app is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// It serves, but requests wait or are turned away: why.
    Degraded(String),
    /// It cannot make instances.
    Unavailable,
}

/// What one pool reports: its queue, for `/metrics`, and its saturation, for `/health`.
pub struct PoolGauges {
    length: Gauge,
    wait: Histogram,
    /// Refusals by reason.
    refused: [(&'static str, Counter); 3],
    /// Requests waiting now, and how many may.
    waiting: AtomicUsize,
    limit: AtomicUsize,
    /// Since when no worker has been free, in nanoseconds after [`epoch`]; 0 while one is.
    saturated_since: AtomicU64,
    /// The app's deadline: busy for longer than one request may take, every instance is
    /// stuck or overrun.
    busy_limit: Duration,
}

/// Why requests get no instance: the queue was full, the queue timeout passed, or the
/// client left while it waited.
pub const REFUSALS: [&str; 3] = ["full", "timeout", "gone"];

/// The instant that saturation times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl PoolGauges {
    /// Gauges that no registry reports, for tests.
    pub fn detached(busy_limit: Duration) -> PoolGauges {
        PoolGauges {
            length: Gauge::default(),
            wait: latency_histogram(),
            refused: REFUSALS.map(|reason| (reason, Counter::default())),
            waiting: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            saturated_since: AtomicU64::new(0),
            busy_limit,
        }
    }

    /// The pool's last free worker was taken.
    pub fn saturated(&self) {
        let _ = self.saturated_since.compare_exchange(
            0,
            since_epoch(Instant::now()),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A worker is free again.
    pub fn unsaturated(&self) {
        self.saturated_since.store(0, Ordering::Relaxed);
    }

    /// A request joined the queue, which is now `waiting` long.
    pub fn queued(&self, waiting: usize, limit: usize) {
        self.length.inc();
        self.waiting.store(waiting, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// A request left the queue, which is now `waiting` long.
    pub fn dequeued(&self, waiting: usize, limit: usize) {
        self.length.dec();
        self.waiting.store(waiting, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// A request waited `waited` in the queue.
    pub fn waited(&self, waited: Duration) {
        self.wait.observe(waited.as_secs_f64());
    }

    /// A request got no worker, for `reason`: one of [`REFUSALS`].
    pub fn refused(&self, reason: &'static str, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        if let Some((_, counter)) = self.refused.iter().find(|(known, _)| *known == reason) {
            counter.inc();
        }
    }

    /// Why the app is degraded, if it is: its queue is full, or none of its instances has
    /// been free for longer than a request may take.
    pub fn degraded(&self) -> Option<String> {
        let (waiting, limit) = (
            self.waiting.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
        );
        if waiting >= limit {
            return Some(format!("its queue is full: {waiting} requests wait"));
        }
        let since = self.saturated_since.load(Ordering::Relaxed);
        let busy = since_epoch(Instant::now()).saturating_sub(since);
        (since != 0 && Duration::from_nanos(busy) > self.busy_limit).then(|| {
            format!(
                "every instance has been busy for {:.1} s, past its {} s deadline",
                Duration::from_nanos(busy).as_secs_f64(),
                self.busy_limit.as_secs_f64()
            )
        })
    }
}

/// One app's request metrics. Each series is found in its family once, when first used,
/// so that recording a request is a few atomic operations: no label hashing, no map lookup.
pub struct AppMetrics {
    metrics: &'static Metrics,
    app: AppName,
    requests: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHOD_CLASSES.len()],
    latency: OnceLock<Histogram>,
    bytes_in: OnceLock<Counter>,
    bytes_out: OnceLock<Counter>,
}

impl AppMetrics {
    /// The app these metrics are of.
    pub fn app(&self) -> &AppName {
        &self.app
    }

    /// A request ended with `status` (0 if nothing was sent) after `duration`.
    pub fn request_finished(
        &self,
        method: &str,
        status: u16,
        duration: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let metrics = self.metrics;
        let (method, status) = (method_class(method), status_class(status));
        self.requests[method][status]
            .get_or_init(|| {
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        app: self.app.clone(),
                        method: METHOD_CLASSES[method],
                        status: STATUS_CLASSES[status],
                    })
                    .clone()
            })
            .inc();
        let labels = || AppLabels {
            app: self.app.clone(),
        };
        self.latency
            .get_or_init(|| metrics.latency.get_or_create(&labels()).clone())
            .observe(duration.as_secs_f64());
        self.bytes_in
            .get_or_init(|| metrics.bytes_in.get_or_create(&labels()).clone())
            .inc_by(bytes_in);
        self.bytes_out
            .get_or_init(|| metrics.bytes_out.get_or_create(&labels()).clone())
            .inc_by(bytes_out);
        // Last: a scrape that sees no request in flight sees every finished one counted.
        metrics.in_flight.dec();
    }
}

const METHOD_CLASSES: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The index in [`METHOD_CLASSES`] of `method`.
fn method_class(method: &str) -> usize {
    METHOD_CLASSES[..7]
        .iter()
        .position(|known| *known == method)
        .unwrap_or(7)
}

/// The index in [`STATUS_CLASSES`] of `status`.
fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let method = |name| METHOD_CLASSES[method_class(name)];
        assert_eq!(method("GET"), "GET");
        assert_eq!(method("OPTIONS"), "OPTIONS");
        assert_eq!(method("get"), "other");
        assert_eq!(method("PROPFIND"), "other");
        let status = |code| STATUS_CLASSES[status_class(code)];
        assert_eq!(status(100), "1xx");
        assert_eq!(status(204), "2xx");
        assert_eq!(status(599), "5xx");
        assert_eq!(status(0), "none");
        assert_eq!(status(600), "none");
    }
}
