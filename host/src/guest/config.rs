//! `wasi:config/store`: an app's configuration and secrets, as the operator set them
//! (`--config-var`, an `[app.config]` table, values taken from the server's environment).
//! Both versions in use are linked: `0.2.0-draft-2024-09-27`, Spin's, which wasm-gw's own
//! world includes, and `0.2.0-rc.1`, wasmtime's (through wasmtime-wasi-config).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use super::GuestState;
use crate::bindings::wasi::config::store;

/// An app's configuration values, by key. A value may be a secret: only the keys ever show
/// in debug output, and no log line prints a value.
#[derive(Clone, Default)]
pub struct ConfigValues(Arc<BTreeMap<String, String>>);

impl ConfigValues {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> ConfigValues {
        ConfigValues(Arc::new(values.into_iter().collect()))
    }

    /// The values as wasmtime-wasi-config holds them.
    pub fn for_wasmtime(&self) -> WasiConfigVariables {
        self.0
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }
}

impl std::fmt::Debug for ConfigValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl store::Host for GuestState {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self.config.0.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self
            .config
            .0
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }
}

/// Links both versions of `wasi:config/store` into `linker`.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasSelf<GuestState>>(linker, |state| state)?;
    wasmtime_wasi_config::add_to_linker(linker, |state| {
        WasiConfig::from(&state.config_for_wasmtime)
    })
}
