//! The app's configuration and secrets, as the operator set them for it (`--config-var`,
//! an `[app.config]` table, values from the server's environment), through
//! `wasi:config/store`.
//!
//! ```no_run
//! let api_key = wasm_gw_sdk::config::get("api-key")?.unwrap_or_default();
//! # Ok::<(), wasm_gw_sdk::config::Error>(())
//! ```

use crate::bindings::wasi::config::store;

/// Why a value could not be read: the configuration source failed.
///
/// ```no_run
/// match wasm_gw_sdk::config::get("greeting") {
///     Ok(value) => println!("{}", value.as_deref().unwrap_or("hello")),
///     Err(error) => eprintln!("{error}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration unavailable: {}", self.0)
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(error: store::Error) -> Error {
        match error {
            store::Error::Upstream(why) | store::Error::Io(why) => Error(why),
        }
    }
}

/// The value of `key`, if the operator set one.
///
/// ```no_run
/// let timeout = wasm_gw_sdk::config::get("timeout-secs")?;
/// let timeout: u64 = timeout.and_then(|secs| secs.parse().ok()).unwrap_or(30);
/// # Ok::<(), wasm_gw_sdk::config::Error>(())
/// ```
pub fn get(key: &str) -> Result<Option<String>, Error> {
    Ok(store::get(key)?)
}

/// Every key and value set for the app.
///
/// ```no_run
/// for (key, _value) in wasm_gw_sdk::config::get_all()? {
///     println!("{key} is set");
/// }
/// # Ok::<(), wasm_gw_sdk::config::Error>(())
/// ```
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    Ok(store::get_all()?)
}
