//! From a file to a compiled component: `.wasm` compiled by Cranelift, or `.cwasm` compiled
//! ahead of time, with a cache of compiled code on disk in between.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Precompiled};

/// Engine settings shared by `serve` and `compile`, so that their compiled code agrees.
pub fn base_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config
}

/// Compiled components kept between runs, keyed by the component's content, the wasmtime
/// version and every engine setting that shapes the code.
pub struct CodeCache {
    dir: PathBuf,
}

impl CodeCache {
    pub fn new(dir: PathBuf) -> CodeCache {
        CodeCache { dir }
    }

    /// `$XDG_CACHE_HOME/wasm-gw`, or `~/.cache/wasm-gw`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("wasm-gw"))
    }

    fn entry(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut key = Sha256Hasher(Sha256::new());
        key.write(b"wasm-gw code cache 1\0");
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut key);
        key.write(&Sha256::digest(wasm));
        let digest = key.0.finalize();
        let name: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        self.dir.join(format!("{name}.cwasm"))
    }

    fn load(&self, engine: &Engine, entry: &Path) -> Option<Component> {
        if !entry.exists() {
            return None;
        }
        // SAFETY: the entry is code this program compiled and wrote into the operator's own
        // cache directory; wasmtime checks that it fits this engine's version and settings.
        match unsafe { Component::deserialize_file(engine, entry) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(
                    "ignoring unusable cache entry {}: {error:#}",
                    entry.display()
                );
                None
            }
        }
    }

    fn store(&self, component: &Component, entry: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Write then rename, so that a reader never sees half an entry.
        let partial = entry.with_extension(format!("{}.partial", std::process::id()));
        std::fs::write(&partial, component.serialize()?)?;
        std::fs::rename(&partial, entry)?;
        Ok(())
    }
}

/// Feeds `Hash` output into SHA-256, so that a `Hash` value can be part of a content key.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 digest is used")
    }
}

/// Loads the component in `path`: compiles a `.wasm` (through the cache, if there is one), or
/// loads a `.cwasm` made by `wasm-gw compile`.
pub fn load_component(
    engine: &Engine,
    path: &Path,
    cache: Option<&CodeCache>,
) -> anyhow::Result<Component> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match Engine::detect_precompiled(&bytes) {
        Some(Precompiled::Component) => {
            // SAFETY: a `.cwasm` is native code that the operator chose to run, made by
            // `wasm-gw compile`; wasmtime checks that it fits this engine.
            return unsafe { Component::deserialize(engine, &bytes) }
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "cannot load {}: compile it again with this wasm-gw (`wasm-gw compile`)",
                        path.display()
                    )
                });
        }
        Some(Precompiled::Module) => {
            bail!(
                "{} is a precompiled core module, not a component",
                path.display()
            )
        }
        None => {}
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => bail!(
            "{} is a core WebAssembly module, not a component; build it with \
             `cargo build --target wasm32-wasip2`",
            path.display()
        ),
        Some([0, b'a', b's', b'm', ..]) => {}
        _ => bail!("{} is not a WebAssembly file", path.display()),
    }

    let entry = cache.map(|cache| cache.entry(engine, &bytes));
    if let (Some(cache), Some(entry)) = (cache, &entry)
        && let Some(component) = cache.load(engine, entry)
    {
        tracing::info!(
            "loaded compiled {} from the cache ({})",
            path.display(),
            entry.display()
        );
        return Ok(component);
    }
    let started = Instant::now();
    let component = Component::new(engine, &bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    tracing::info!("compiled {} in {:?}", path.display(), started.elapsed());
    if let (Some(cache), Some(entry)) = (cache, &entry) {
        match cache.store(&component, entry) {
            Ok(()) => tracing::info!("cached compiled code at {}", entry.display()),
            Err(error) => tracing::warn!(
                "cannot write to the code cache {}: {error:#}",
                cache.dir.display()
            ),
        }
    }
    Ok(component)
}

/// `wasm-gw compile`: compiles `input` ahead of time into `output`.
pub fn compile_to_file(input: &Path, output: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(&base_config())?;
    let component = load_component(&engine, input, None)?;
    let code = component.serialize()?;
    std::fs::write(output, code).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
