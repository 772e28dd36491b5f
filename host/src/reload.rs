//! Swapping in new code and new apps while serving: on SIGHUP, or when a watched file
//! changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::compile::CodeCache;
use crate::config::{self, ServerSetting};
use crate::kv;
use crate::loader::{self, AppSpec, LoadedApp};
use crate::router::CurrentRouter;
use crate::runtime::Engines;
use crate::systemd;
use crate::tls::Tls;

/// How often `--reload` looks at the watched files.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The apps served now, and everything needed to load them again.
pub struct Reloader {
    /// The apps to serve, as the command line and the config file say now: read again at
    /// each reload.
    pub specs: AppSpecs,
    /// The config file, watched under `--reload`.
    pub config: Option<PathBuf>,
    pub backend: Arc<dyn kv::Backend>,
    pub engines: Engines,
    pub cache: Option<CodeCache>,
    pub apps: Vec<LoadedApp>,
    pub router: Arc<CurrentRouter>,
    /// The config's `[server]` table as the server started with it.
    pub server_settings: Vec<ServerSetting>,
    /// The listeners' TLS certificate, reloaded with everything else.
    pub tls: Option<Arc<Tls>>,
}

/// Reads the apps to serve, with key-value stores on the backend given.
pub type AppSpecs = Box<dyn Fn(&Arc<dyn kv::Backend>) -> anyhow::Result<Vec<AppSpec>> + Send>;

/// A request to reload something, and why.
pub struct ReloadRequest {
    pub why: &'static str,
    pub what: Reload,
}

#[derive(Clone)]
pub enum Reload {
    /// Everything, the config file and the TLS certificate included (SIGHUP).
    All,
    /// The one app whose file changed.
    App(PathBuf),
    /// The TLS certificate, key or client CAs, one of whose files changed.
    Certificates,
}

impl Reloader {
    /// Reloads once per message on `requests`, for as long as senders remain. With
    /// `watch`, each app's file and the config file are watched, and a change to one is
    /// sent there.
    pub fn run(
        mut self,
        requests: Receiver<ReloadRequest>,
        watch: Option<Sender<ReloadRequest>>,
    ) -> std::io::Result<()> {
        let mut watched = HashMap::new();
        if let Some(watch) = &watch {
            if let Some(config) = &self.config {
                watch_file(config.clone(), Reload::All, watch.clone(), Arc::default())?;
            }
            for file in self.tls.iter().flat_map(|tls| tls.files()) {
                watch_file(file, Reload::Certificates, watch.clone(), Arc::default())?;
            }
            self.update_watchers(&mut watched, watch)?;
        }
        thread::Builder::new()
            .name("reloader".into())
            .spawn(move || {
                for request in requests {
                    match &request.what {
                        Reload::App(path) => self.reload_app(path, request.why),
                        Reload::All => self.reload_all(request.why),
                        Reload::Certificates => {
                            if let Some(tls) = &self.tls {
                                tls.reload(request.why);
                            }
                        }
                    }
                    if let Some(watch) = &watch
                        && let Err(error) = self.update_watchers(&mut watched, watch)
                    {
                        tracing::warn!("cannot watch the new apps' files: {error}");
                    }
                }
            })?;
        Ok(())
    }

    /// Re-reads the config and every component, and swaps all at once: new requests go to
    /// the new apps, requests in flight finish on the old ones, and an app no longer
    /// configured stops when its last request ends. If anything fails, nothing changes.
    fn reload_all(&mut self, why: &str) {
        systemd::reloading();
        if let Some(tls) = &self.tls {
            tls.reload(why);
        }
        self.reload_every_app(why);
        systemd::ready();
    }

    fn reload_every_app(&mut self, why: &str) {
        tracing::info!("reloading every app ({why})");
        self.warn_of_server_changes();
        let loaded = (self.specs)(&self.backend)
            .and_then(|specs| loader::load(&self.engines, specs, self.cache.as_ref()));
        let (apps, router) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::error!("reload failed, the old apps keep serving: {error:#}");
                return;
            }
        };
        let names = |apps: &[LoadedApp]| -> Vec<String> {
            apps.iter().map(|app| app.spec.name.clone()).collect()
        };
        let (old, new) = (names(&self.apps), names(&apps));
        self.router.replace(router);
        self.apps = apps;
        loader::announce(&self.apps);
        for name in old.iter().filter(|name| !new.contains(name)) {
            tracing::info!(
                app = name.as_str(),
                "removed: it stops when its requests in flight end"
            );
        }
        for name in new.iter().filter(|name| !old.contains(name)) {
            tracing::info!(app = name.as_str(), "added");
        }
        tracing::info!(
            reason = "reload",
            "instances replaced: new requests get the new apps ({} serving)",
            new.len()
        );
    }

    /// The listener, the workers and the other `[server]` settings stay as they started:
    /// says so if the file now says otherwise.
    fn warn_of_server_changes(&self) {
        let Some(file) = &self.config else {
            return;
        };
        let Ok(now) = config::server_settings(file) else {
            // The reload itself reports what is wrong with the file.
            return;
        };
        let flags = |settings: &[ServerSetting]| -> Vec<(String, Vec<String>)> {
            settings
                .iter()
                .map(|setting| (setting.key.clone(), setting.args.clone()))
                .collect()
        };
        if flags(&now) != flags(&self.server_settings) {
            tracing::warn!(
                "the [server] table of {} changed: its settings apply at the next start",
                file.display()
            );
        }
    }

    /// Compiles and instantiates the new code of the app in `path` first; only then do new
    /// requests move to it. Others keep their instances, and their state. If anything
    /// fails, the old code keeps serving.
    fn reload_app(&self, path: &Path, why: &str) {
        for app in self.apps.iter().filter(|app| app.spec.path == path) {
            let name = &app.spec.name;
            tracing::info!(app = name.as_str(), "reloading {} ({why})", path.display());
            match loader::load_pool(&self.engines, &app.spec, self.cache.as_ref()) {
                Ok(pool) => {
                    app.pool.replace(pool);
                    loader::watch(app);
                    tracing::info!(
                        app = name.as_str(),
                        reason = "reload",
                        "instances replaced: new requests get the new code"
                    );
                }
                Err(error) => {
                    tracing::error!(
                        app = name.as_str(),
                        "reload failed, the old version keeps serving: {error:#}"
                    );
                }
            }
        }
    }

    /// Starts watching the files of apps not watched yet, and stops watching those of apps
    /// no longer served. `watched` holds each watcher's stop flag.
    fn update_watchers(
        &self,
        watched: &mut HashMap<PathBuf, Arc<AtomicBool>>,
        watch: &Sender<ReloadRequest>,
    ) -> std::io::Result<()> {
        watched.retain(|path, stop| {
            let served = self.apps.iter().any(|app| app.spec.path == *path);
            if !served {
                stop.store(true, Ordering::Relaxed);
            }
            served
        });
        for app in &self.apps {
            let path = &app.spec.path;
            if !watched.contains_key(path) {
                let stop = Arc::new(AtomicBool::new(false));
                watch_file(
                    path.clone(),
                    Reload::App(path.clone()),
                    watch.clone(),
                    stop.clone(),
                )?;
                watched.insert(path.clone(), stop);
            }
        }
        Ok(())
    }
}

/// `--reload`: asks for a reload of `what` whenever `file` changes, until `stop` is set. A
/// change counts once the file has stood still for a whole interval, so that a file being
/// written (a `cp` over it truncates first) is not read half-done, and a write that lands
/// within the same tick of the clock as the one before is still seen, by its size.
fn watch_file(
    file: PathBuf,
    what: Reload,
    requests: Sender<ReloadRequest>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let look = move || {
        std::fs::metadata(&file)
            .and_then(|meta| Ok((meta.modified()?, meta.len())))
            .ok()
    };
    let mut last: Option<(SystemTime, u64)> = look();
    let mut settling = None;
    thread::Builder::new()
        .name("watcher".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(WATCH_INTERVAL);
                let now = look();
                if now.is_none() || now == last {
                    settling = None;
                    continue;
                }
                if settling != Some(now) {
                    settling = Some(now);
                    continue;
                }
                last = now;
                settling = None;
                let request = ReloadRequest {
                    why: "the file changed",
                    what: what.clone(),
                };
                if requests.send(request).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
