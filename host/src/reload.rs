//! Swapping in new code while serving: on SIGHUP, or when the app file changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::compile::CodeCache;
use crate::pool::{CurrentPool, Pool};
use crate::runtime::{InstancePolicy, WasmApp};

/// How often `--reload` looks at the app file.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Everything needed to build the apps' pools again.
pub struct Reloader {
    pub apps: Vec<ReloadTarget>,
    pub cache: Option<CodeCache>,
}

/// One app: its file, its limits and grants, and the pool that serves it.
pub struct ReloadTarget {
    pub name: String,
    pub app: PathBuf,
    pub policy: InstancePolicy,
    pub current: Arc<CurrentPool>,
}

/// A request to reload: every app (SIGHUP), or the one whose file changed.
pub struct ReloadRequest {
    pub why: &'static str,
    pub app: Option<PathBuf>,
}

impl Reloader {
    /// Reloads once per message on `requests`, for as long as senders remain.
    pub fn run(self, requests: Receiver<ReloadRequest>) -> std::io::Result<()> {
        thread::Builder::new()
            .name("reloader".into())
            .spawn(move || {
                for request in requests {
                    // Only the app asked for: reloading others would drop their state.
                    let wanted = |target: &&ReloadTarget| {
                        request.app.as_ref().is_none_or(|app| *app == target.app)
                    };
                    for target in self.apps.iter().filter(wanted) {
                        self.reload(target, request.why);
                    }
                }
            })?;
        Ok(())
    }

    /// Compiles and instantiates the new code first; only then do new requests move to it.
    /// If anything fails, the old code keeps serving.
    fn reload(&self, target: &ReloadTarget, why: &str) {
        tracing::info!(app = %target.app.display(), "reloading ({why})");
        let pool = WasmApp::load(
            &target.name,
            &target.app,
            target.policy.clone(),
            self.cache.as_ref(),
        )
        .and_then(|app| Pool::new(&app, target.policy.workers));
        match pool {
            Ok(pool) => {
                target.current.replace(pool);
                tracing::info!(
                    app = %target.app.display(),
                    reason = "reload",
                    "instances replaced: new requests get the new code"
                );
            }
            Err(error) => {
                tracing::error!(app = %target.app.display(), "reload failed, the old version keeps serving: {error:#}");
            }
        }
    }
}

/// `--reload`: asks for a reload whenever the app file's modification time changes.
pub fn watch(app: PathBuf, requests: Sender<ReloadRequest>) -> std::io::Result<()> {
    let watched = app.clone();
    let modified = move || {
        std::fs::metadata(&watched)
            .and_then(|meta| meta.modified())
            .ok()
    };
    let mut last: Option<SystemTime> = modified();
    thread::Builder::new()
        .name("watcher".into())
        .spawn(move || {
            loop {
                thread::sleep(WATCH_INTERVAL);
                let now = modified();
                if now.is_some() && now != last {
                    last = now;
                    let request = ReloadRequest {
                        why: "the file changed",
                        app: Some(app.clone()),
                    };
                    if requests.send(request).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(())
}
