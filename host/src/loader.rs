//! Loading the apps to serve: every app compiled and instantiated, and the router over
//! them, or an error and nothing at all. Startup and each reload go through here.

use std::path::PathBuf;
use std::sync::Arc;

use crate::compile::CodeCache;
use crate::kv::{self, BackendUrl};
use crate::metrics::metrics;
use crate::pool::{CurrentPool, Pool, QueuePolicy};
use crate::router::{Mount, Route, Router};
use crate::runtime::{Engines, InstancePolicy, WasmApp};

/// One app to serve: where it is mounted, its file, and its limits and grants; its
/// `policy.workers` instances are its share of the server.
pub struct AppSpec {
    /// The app's id in logs and metrics: its config name, or its file stem.
    pub name: String,
    /// Virtual hosts, lowercase; empty for every host no other app names.
    pub hosts: Vec<String>,
    pub prefix: String,
    pub path: PathBuf,
    pub policy: InstancePolicy,
    /// How many requests may wait for an instance, and how long.
    pub queue: QueuePolicy,
    /// The largest request body the app takes; `None` for any.
    pub max_body: Option<u64>,
}

/// An app being served: what it was loaded from, and the pool that serves it.
pub struct LoadedApp {
    pub spec: AppSpec,
    pub pool: Arc<CurrentPool>,
}

/// Loads every app in `specs` and routes to them. Nothing serves until the caller installs
/// the router, so a failure leaves whatever served before untouched.
pub fn load(
    engines: &Engines,
    specs: Vec<AppSpec>,
    cache: Option<&CodeCache>,
) -> anyhow::Result<(Vec<LoadedApp>, Router)> {
    // Side by side, as many at a time as there are cores: a Python app compiles for seconds,
    // and two mounted together took 93 s one after the other on a busy 2-core machine; more
    // at once than cores would only hold more memory at once. The first error, in the specs'
    // order, is the one reported.
    let at_once = std::thread::available_parallelism().map_or(1, usize::from);
    let mut pools: Vec<anyhow::Result<Pool>> = Vec::with_capacity(specs.len());
    for batch in specs.chunks(at_once) {
        std::thread::scope(|scope| {
            let loading: Vec<_> = batch
                .iter()
                .map(|spec| scope.spawn(move || load_pool(engines, spec, cache)))
                .collect();
            pools.extend(loading.into_iter().map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("loading an app panicked")))
            }));
        });
    }
    let mut apps = Vec::with_capacity(specs.len());
    let mut mounts = Vec::with_capacity(specs.len());
    for (spec, pool) in specs.into_iter().zip(pools) {
        let pool = Arc::new(CurrentPool::new(pool?));
        mounts.push(Mount {
            hosts: spec.hosts.clone(),
            prefix: spec.prefix.clone(),
            route: Route {
                pool: pool.clone(),
                max_body: spec.max_body,
                metrics: Arc::new(metrics().app(&spec.name.as_str().into())),
            },
        });
        apps.push(LoadedApp { spec, pool });
    }
    Ok((apps, Router::new(mounts)))
}

/// Compiles the app of `spec` and makes its instances.
pub fn load_pool(
    engines: &Engines,
    spec: &AppSpec,
    cache: Option<&CodeCache>,
) -> anyhow::Result<Pool> {
    let app = WasmApp::load(engines, &spec.name, &spec.path, spec.policy.clone(), cache)?;
    if app.uses_keyvalue() {
        prepare_kv(&spec.policy.grants.kv)?;
    }
    let gauges = metrics().pool(&spec.name.as_str().into(), spec.policy.timeout);
    let pool = Pool::new(Arc::new(app), spec.policy.workers, spec.queue, gauges)?;
    let prefix = if spec.prefix.is_empty() {
        "/"
    } else {
        &spec.prefix
    };
    let hosts = if spec.hosts.is_empty() {
        String::new()
    } else {
        format!(" on {}", spec.hosts.join(", "))
    };
    tracing::info!(
        app = spec.name.as_str(),
        "mounted {} at {prefix}{hosts}, {} instances, up to {} while some wait",
        spec.path.display(),
        spec.policy.workers.warm,
        spec.policy.workers.most
    );
    Ok(pool)
}

/// Tells the metrics which apps serve now, and with which pools.
pub fn announce(apps: &[LoadedApp]) {
    for app in apps {
        watch(app);
    }
    metrics().serving(
        apps.iter()
            .map(|app| app.spec.name.as_str().into())
            .collect(),
    );
}

/// Tells the metrics that `app`'s current pool serves: its health is read from it.
pub fn watch(app: &LoadedApp) {
    let pool = app.pool.get();
    metrics().watch(&app.spec.name.as_str().into(), pool.gauges().clone());
}

/// Connects to the key-value store once, so that a database that cannot be opened stops the
/// server now rather than failing requests later. Redis may be down for a while, though:
/// requests that need it fail until it answers, and the server keeps serving.
fn prepare_kv(kv: &kv::Store) -> anyhow::Result<()> {
    match kv.connect() {
        Ok(_) => {
            tracing::info!(namespace = %kv.namespace, "key-value store: {}", kv.url);
            Ok(())
        }
        Err(error) if matches!(kv.url, BackendUrl::Redis(_)) => {
            tracing::warn!(namespace = %kv.namespace, "key-value store {} is unreachable for now: {error}", kv.url);
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!("key-value store {}: {error}", kv.url)),
    }
}
