//! `wasm-gw serve --config wasm-gw.toml`: the server's settings in a `[server]` table, and
//! the apps to host, one `[[app]]` table each, with settings of their own. The command
//! line's flags are the defaults for every app, and win over `[server]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use toml::Spanned;

use crate::guest::config::ConfigValues;
use crate::router::{normalize_host, normalize_prefix};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// `serve`'s flags by their long names; checked by the command line's parser.
    #[serde(default)]
    server: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(rename = "app", default)]
    apps: Vec<AppTable>,
}

/// One `[server]` setting, as the `serve` flags that say the same: `port = 8000` is
/// `--port 8000`, `reload = true` is `--reload`.
#[derive(Debug, PartialEq)]
pub struct ServerSetting {
    pub key: String,
    pub args: Vec<String>,
    /// Where the file says it, for errors: `wasm-gw.toml:3`.
    pub place: String,
}

/// One `[[app]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AppTable {
    name: String,
    component: PathBuf,
    #[serde(default = "root")]
    route: String,
    /// Virtual hosts: the app takes requests whose Host is one of these.
    #[serde(default)]
    hosts: Vec<String>,
    /// Seconds of app time per request.
    timeout: Option<f64>,
    /// Seconds of wall time a streamed response may take, as in `--stream-timeout`.
    stream_timeout: Option<f64>,
    /// Linear memory per instance, as in `--max-memory`: `64MiB`.
    max_memory: Option<Size>,
    /// The largest request body, as in `--max-body-size`: `10MiB`, or 0 for any.
    max_body_size: Option<Size>,
    /// `worker` or `request`.
    isolation: Option<String>,
    max_requests: Option<u64>,
    /// How many warm instances the app may hold: its share of the server.
    instances: Option<u32>,
    /// Most instances while some wait, as in `--max-workers`.
    max_instances: Option<u32>,
    /// Requests that may wait for an instance, as in `--queue-limit`.
    queue_limit: Option<u32>,
    /// Seconds a request may wait for an instance, as in `--queue-timeout`.
    queue_timeout: Option<f64>,
    /// Directories granted, as in `--dir`: `HOST_PATH[::GUEST_PATH][:ro]`. Present, even
    /// empty, it replaces the command line's grants.
    dirs: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    /// The app's `wasi:config` values: text, or `{ env = "NAME" }` for a variable of the
    /// server's environment, so that secrets stay out of the file. Present, it replaces the
    /// command line's `--config-var`s.
    config: Option<BTreeMap<String, ConfigValue>>,
    /// Where the app's outbound HTTP may go, as in `--allow-outbound`. Present, even empty,
    /// it replaces the command line's.
    allow_outbound: Option<Vec<String>>,
    kv_namespace: Option<String>,
    /// Bytes a second of the app's output that reach the log, as in `--app-log-rate`.
    app_log_rate: Option<Size>,
    /// Bytes of the app's output that may reach the log at once, as in `--app-log-burst`.
    app_log_burst: Option<Size>,
    /// The app's outbound limits, as the `--outbound-*` flags of the same names.
    outbound_connect_timeout: Option<f64>,
    outbound_first_byte_timeout: Option<f64>,
    outbound_idle_timeout: Option<f64>,
    outbound_max_concurrent: Option<u32>,
    outbound_max_response_size: Option<Size>,
    /// Most keys the app may store, as in `--kv-quota-keys`.
    kv_quota_keys: Option<u64>,
    /// Most bytes the app may store, as in `--kv-quota-bytes`: `64MiB`.
    kv_quota_bytes: Option<Size>,
}

/// A size as written: `"64MiB"`, or a number of bytes.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Text(String),
    Bytes(u64),
}

impl Size {
    /// As the command line would say it.
    fn into_text(self) -> String {
        match self {
            Size::Text(text) => text,
            Size::Bytes(bytes) => bytes.to_string(),
        }
    }
}

fn root() -> String {
    "/".to_owned()
}

/// One app to host, checked, with paths resolved against the config file's directory.
/// A `wasi:config` value in the file.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConfigValue {
    Text(String),
    FromEnv(FromEnv),
}

/// A `wasi:config` value taken from the server's environment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromEnv {
    env: String,
}

#[derive(Debug)]
pub struct AppConfig {
    pub name: String,
    pub component: PathBuf,
    /// The mount prefix, `""` for the root.
    pub route: String,
    /// Lowercase; empty for any host that no other app names.
    pub hosts: Vec<String>,
    pub timeout: Option<String>,
    pub stream_timeout: Option<String>,
    pub max_memory: Option<String>,
    pub max_body_size: Option<String>,
    pub isolation: Option<String>,
    pub max_requests: Option<u64>,
    pub instances: Option<usize>,
    pub max_instances: Option<usize>,
    pub queue_limit: Option<usize>,
    pub queue_timeout: Option<String>,
    pub dirs: Option<Vec<String>>,
    pub env: Option<Vec<(String, String)>>,
    pub config: Option<ConfigValues>,
    pub allow_outbound: Option<Vec<String>>,
    pub kv_namespace: Option<String>,
    pub kv_quota_keys: Option<u64>,
    pub kv_quota_bytes: Option<String>,
    pub app_log_rate: Option<String>,
    pub app_log_burst: Option<String>,
    pub outbound_connect_timeout: Option<String>,
    pub outbound_first_byte_timeout: Option<String>,
    pub outbound_idle_timeout: Option<String>,
    pub outbound_max_concurrent: Option<u32>,
    pub outbound_max_response_size: Option<String>,
}

/// Most instances one app may have, as for `--workers`.
const MAX_INSTANCES: u32 = 1024;

fn read(path: &Path) -> anyhow::Result<(String, File)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let file =
        toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok((text, file))
}

/// The `[server]` table of the config file at `path`, as flags.
pub fn server_settings(path: &Path) -> anyhow::Result<Vec<ServerSetting>> {
    let (text, file) = read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.server
        .into_iter()
        .map(|(key, value)| {
            let line = text[..value.span().start].matches('\n').count() + 1;
            let place = format!("{}:{line}", path.display());
            let flag = format!("--{key}");
            let args = match value.into_inner() {
                toml::Value::String(text) => vec![flag, relative_to_file(base, &key, text)],
                toml::Value::Integer(number) => vec![flag, number.to_string()],
                toml::Value::Float(number) => vec![flag, number.to_string()],
                toml::Value::Boolean(true) => vec![flag],
                toml::Value::Boolean(false) => Vec::new(),
                // `bind = ["0.0.0.0:80", "unix:/run/gw.sock"]`: the flag once for each.
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|item| match item {
                        toml::Value::String(text) => {
                            Ok([flag.clone(), relative_to_file(base, &key, text)])
                        }
                        _ => anyhow::bail!("{place}: [server] {key}: use a list of strings"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .concat(),
                _ => anyhow::bail!(
                    "{place}: [server] {key}: use a string, a number, a boolean or a list of strings"
                ),
            };
            Ok(ServerSetting { key, args, place })
        })
        .collect()
}

/// Reads and checks the apps of the config file at `path`; an error names the file, and
/// toml's names the line and the field.
pub fn load(path: &Path) -> anyhow::Result<Vec<AppConfig>> {
    let (_, file) = read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let invalid =
        |app: &str, why: String| anyhow::anyhow!("{}: [[app]] {app:?}: {why}", path.display());
    if file.apps.is_empty() {
        anyhow::bail!("{}: no [[app]] tables: nothing to serve", path.display());
    }
    let mut apps: Vec<AppConfig> = Vec::new();
    for table in file.apps {
        let route = normalize_prefix(&table.route).map_err(|why| invalid(&table.name, why))?;
        let hosts = table
            .hosts
            .iter()
            .map(|host| normalize_host(host))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| invalid(&table.name, format!("hosts: {why}")))?;
        // Two apps clash when they share a route and a host, or both name no host.
        for other in apps.iter().filter(|app| app.route == route) {
            let shared = other.hosts.iter().find(|host| hosts.contains(host));
            let place = match shared {
                Some(host) => format!("route {:?} on {host}", table.route),
                None if other.hosts.is_empty() && hosts.is_empty() => {
                    format!("route {:?}", table.route)
                }
                None => continue,
            };
            return Err(invalid(
                &table.name,
                format!("{place} is {:?}'s already", other.name),
            ));
        }
        if apps.iter().any(|app| app.name == table.name) {
            return Err(invalid(&table.name, "another app has this name".into()));
        }
        for (key, count) in [
            ("instances", table.instances),
            ("max-instances", table.max_instances),
        ] {
            if count.is_some_and(|count| !(1..=MAX_INSTANCES).contains(&count)) {
                return Err(invalid(
                    &table.name,
                    format!("{key} must be 1 to {MAX_INSTANCES}"),
                ));
            }
        }
        if table.kv_quota_keys == Some(0) {
            return Err(invalid(
                &table.name,
                "kv-quota-keys must be at least 1".into(),
            ));
        }
        if table.outbound_max_concurrent == Some(0) {
            return Err(invalid(
                &table.name,
                "outbound-max-concurrent must be at least 1".into(),
            ));
        }
        if table.queue_limit == Some(0) {
            return Err(invalid(
                &table.name,
                "queue-limit must be at least 1".into(),
            ));
        }
        if let Some(key) = table
            .env
            .iter()
            .flat_map(BTreeMap::keys)
            .find(|key| key.is_empty() || key.contains('='))
        {
            return Err(invalid(
                &table.name,
                format!("env: {key:?} is not a variable name"),
            ));
        }
        let config = match table.config {
            None => None,
            Some(values) => {
                let mut resolved = Vec::with_capacity(values.len());
                for (key, value) in values {
                    let value = match value {
                        ConfigValue::Text(text) => text,
                        // Looked up at each start and reload; the value is never shown.
                        ConfigValue::FromEnv(FromEnv { env }) => {
                            std::env::var(&env).map_err(|_| {
                                invalid(
                                    &table.name,
                                    format!(
                                        "config: {key:?} is to come from the environment \
                                         variable {env}, which the server does not have"
                                    ),
                                )
                            })?
                        }
                    };
                    resolved.push((key, value));
                }
                Some(ConfigValues::new(resolved))
            }
        };
        apps.push(AppConfig {
            config,
            allow_outbound: table.allow_outbound,
            component: base.join(&table.component),
            route,
            hosts,
            max_body_size: table.max_body_size.map(Size::into_text),
            timeout: table.timeout.map(|seconds| seconds.to_string()),
            stream_timeout: table.stream_timeout.map(|seconds| seconds.to_string()),
            max_memory: table.max_memory.map(Size::into_text),
            isolation: table.isolation,
            max_requests: table.max_requests,
            instances: table.instances.map(|count| count as usize),
            max_instances: table.max_instances.map(|count| count as usize),
            queue_limit: table.queue_limit.map(|limit| limit as usize),
            queue_timeout: table.queue_timeout.map(|seconds| seconds.to_string()),
            // Relative host paths are the config file's, like the component's.
            dirs: table.dirs.map(|dirs| {
                dirs.into_iter()
                    .map(|dir| resolve_dir(base, &dir))
                    .collect()
            }),
            env: table.env.map(|env| env.into_iter().collect()),
            kv_namespace: table.kv_namespace,
            kv_quota_keys: table.kv_quota_keys,
            kv_quota_bytes: table.kv_quota_bytes.map(Size::into_text),
            app_log_rate: table.app_log_rate.map(Size::into_text),
            app_log_burst: table.app_log_burst.map(Size::into_text),
            outbound_connect_timeout: table.outbound_connect_timeout.map(|s| s.to_string()),
            outbound_first_byte_timeout: table.outbound_first_byte_timeout.map(|s| s.to_string()),
            outbound_idle_timeout: table.outbound_idle_timeout.map(|s| s.to_string()),
            outbound_max_concurrent: table.outbound_max_concurrent,
            outbound_max_response_size: table.outbound_max_response_size.map(Size::into_text),
            name: table.name,
        });
    }
    Ok(apps)
}

/// A `[server]` path, relative to the file like the apps' paths: `cache-dir`, `state-dir`,
/// `pid`, and the path of `kv = "sqlite:PATH"`.
fn relative_to_file(base: &Path, key: &str, value: String) -> String {
    let (prefix, path) = match key {
        "cache-dir" | "state-dir" | "pid" | "certfile" | "keyfile" | "ca-certs" => {
            ("", value.as_str())
        }
        "bind" => match value.strip_prefix("unix:") {
            Some(path) => ("unix:", path),
            None => return value,
        },
        "kv" => match value.strip_prefix("sqlite:") {
            Some(path) => ("sqlite:", path),
            None => return value,
        },
        _ => return value,
    };
    if Path::new(path).is_absolute() {
        return value;
    }
    format!("{prefix}{}", base.join(path).display())
}

/// `HOST_PATH[::GUEST_PATH][:ro]` with a relative host path made relative to `base`.
fn resolve_dir(base: &Path, dir: &str) -> String {
    let host_end = dir
        .find("::")
        .or_else(|| dir.strip_suffix(":ro").map(str::len))
        .unwrap_or(dir.len());
    let (host, rest) = dir.split_at(host_end);
    if host.is_empty() || Path::new(host).is_absolute() {
        return dir.to_owned();
    }
    format!("{}{rest}", base.join(host).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_are_the_config_files() {
        let base = Path::new("/etc/gw");
        let at = |key: &str, value: &str| relative_to_file(base, key, value.to_owned());
        assert_eq!(at("state-dir", "data"), "/etc/gw/data");
        assert_eq!(at("cache-dir", "/var/cache"), "/var/cache");
        assert_eq!(at("kv", "sqlite:kv.db"), "sqlite:/etc/gw/kv.db");
        assert_eq!(at("kv", "sqlite:/srv/kv.db"), "sqlite:/srv/kv.db");
        assert_eq!(
            at("kv", "redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(at("host", "localhost"), "localhost");
        assert_eq!(at("certfile", "tls/cert.pem"), "/etc/gw/tls/cert.pem");
        assert_eq!(at("ca-certs", "/srv/ca.pem"), "/srv/ca.pem");
        assert_eq!(at("bind", "unix:gw.sock"), "unix:/etc/gw/gw.sock");
        assert_eq!(at("bind", "unix:/run/gw.sock"), "unix:/run/gw.sock");
        assert_eq!(at("bind", "0.0.0.0:443"), "0.0.0.0:443");
    }

    #[test]
    fn a_list_is_the_flag_once_for_each() {
        let dir = std::env::temp_dir().join(format!("wasm-gw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gw.toml");
        std::fs::write(
            &file,
            "[server]\nbind = [\"127.0.0.1:0\", \"unix:gw.sock\"]\nproxy-protocol = true\n",
        )
        .unwrap();
        let settings = server_settings(&file).unwrap();
        let unix = format!("unix:{}", dir.join("gw.sock").display());
        assert_eq!(
            settings[0].args,
            ["--bind", "127.0.0.1:0", "--bind", unix.as_str()]
        );
        assert_eq!(settings[1].args, ["--proxy-protocol"]);
        std::fs::write(&file, "[server]\nbind = [1, 2]\n").unwrap();
        let error = server_settings(&file).err().unwrap().to_string();
        assert!(error.contains("use a list of strings"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_dirs_are_the_config_files() {
        let base = Path::new("/etc/gw");
        assert_eq!(resolve_dir(base, "data"), "/etc/gw/data");
        assert_eq!(resolve_dir(base, "data::/d:ro"), "/etc/gw/data::/d:ro");
        assert_eq!(resolve_dir(base, "data:ro"), "/etc/gw/data:ro");
        assert_eq!(resolve_dir(base, "/srv/x::/x"), "/srv/x::/x");
    }
}
