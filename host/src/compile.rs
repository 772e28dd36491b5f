//! From a file to a compiled component: `.wasm` compiled by Cranelift, or `.cwasm` compiled
//! ahead of time, with a cache of compiled code on disk in between.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wasmparser::{CanonicalFunction, CanonicalOption, Chunk, Parser, Payload};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Precompiled};

/// Whether an engine runs the component model's concurrency: async functions, streams and
/// futures, which a `wasi:http` 0.3 component uses. An engine with it sets up a task for
/// every call into a guest, even a synchronous one: 3–4 µs of a keep-alive hello's 21 µs of
/// server CPU, measured. So an app that needs none runs on an engine without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    Off,
    On,
}

/// Engine settings shared by `serve` and `compile`, so that their compiled code agrees.
pub fn base_config(concurrency: Concurrency) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let on = concurrency == Concurrency::On;
    config.concurrency_support(on);
    config.wasm_component_model_async(on);
    config
}

/// What [`load_component`] asks for an engine with: the engine to compile for, or load
/// compiled code into, which has the concurrency asked for.
pub type EngineFor<'a> = &'a dyn Fn(Concurrency) -> anyhow::Result<Engine>;

/// An engine with no more than [`base_config`].
pub fn engine(concurrency: Concurrency) -> anyhow::Result<Engine> {
    Ok(Engine::new(&base_config(concurrency))?)
}

/// Whether the component `wasm` uses the component model's concurrency: a function lifted
/// or lowered async, or a built-in of tasks, streams, futures or waitables, in it or in a
/// component nested in it. Read from its canonical sections alone, so a few milliseconds
/// for a Python app's 40 MB.
fn concurrency_of(wasm: &[u8]) -> Concurrency {
    fn scan(mut parser: Parser, wasm: &[u8], mut offset: usize) -> wasmparser::Result<bool> {
        loop {
            let rest = wasm.get(offset..).unwrap_or_default();
            let (consumed, payload) = match parser.parse(rest, true)? {
                Chunk::Parsed { consumed, payload } => (consumed, payload),
                Chunk::NeedMoreData(_) => return Ok(false),
            };
            offset += consumed;
            match payload {
                Payload::ComponentCanonicalSection(functions) => {
                    for function in functions {
                        let concurrent = match function? {
                            CanonicalFunction::Lift { options, .. }
                            | CanonicalFunction::Lower { options, .. } => {
                                options.iter().any(|option| {
                                    matches!(
                                        option,
                                        CanonicalOption::Async | CanonicalOption::Callback(_)
                                    )
                                })
                            }
                            CanonicalFunction::ResourceNew { .. }
                            | CanonicalFunction::ResourceDrop { .. }
                            | CanonicalFunction::ResourceRep { .. } => false,
                            _ => true,
                        };
                        if concurrent {
                            return Ok(true);
                        }
                    }
                }
                Payload::ComponentSection {
                    parser: nested,
                    unchecked_range,
                } => {
                    if scan(nested, wasm, unchecked_range.start)? {
                        return Ok(true);
                    }
                    offset = unchecked_range.end;
                }
                // A core module's code is not read.
                Payload::ModuleSection {
                    unchecked_range, ..
                } => offset = unchecked_range.end,
                Payload::End(_) => return Ok(false),
                _ => {}
            }
        }
    }
    // A component the scan cannot read is compiled without, and fails there with a
    // validation error that says what is wrong.
    match scan(Parser::new(0), wasm, 0) {
        Ok(true) => Concurrency::On,
        Ok(false) | Err(_) => Concurrency::Off,
    }
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

    /// Where the files components carry are unpacked.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
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
        let metadata = std::fs::metadata(entry).ok()?;
        // Native code is trusted by its name here, so only a file no one else could have
        // written is used.
        if metadata.permissions().mode() & 0o022 != 0 || !self.is_private() {
            tracing::warn!(
                "ignoring cache entry {}: others may write it",
                entry.display()
            );
            return None;
        }
        // Mapped rather than read, which saves copying tens of megabytes for a big app. Entries
        // are only ever replaced by renaming a new file over them, which leaves a mapping of
        // the old one as it was.
        // SAFETY: the entry is code this program compiled and wrote into a directory only its
        // user can write; wasmtime checks that it fits this engine's version and settings.
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

    /// Whether the cache directory is writable by its owner alone.
    fn is_private(&self) -> bool {
        std::fs::metadata(&self.dir).is_ok_and(|dir| dir.permissions().mode() & 0o022 == 0)
    }

    fn store(&self, component: &Component, entry: &Path) -> anyhow::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        if !self.is_private() {
            anyhow::bail!("others may write to it");
        }
        // Write a file of our own, then rename it into place, so that a reader never sees
        // half an entry, even with writers in other processes (or containers) at once.
        let unique = RandomState::new().hash_one((std::process::id(), Instant::now()));
        let partial = entry.with_extension(format!("{unique:016x}.partial"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(&component.serialize()?)?;
        drop(file);
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

/// A component as loaded from its file.
pub struct Loaded {
    pub component: Component,
    /// The files it carries for its app to read ([`crate::bundle`]), packed.
    pub files: Option<Vec<u8>>,
}

/// Loads the component in `path`: compiles a `.wasm` (through the cache, if there is one), or
/// loads a `.cwasm` made by `wasm-gw compile`, for the engine `engine_for` gives with the
/// concurrency the component needs (the component's [`Component::engine`]).
pub fn load_component(
    engine_for: EngineFor,
    path: &Path,
    cache: Option<&CodeCache>,
) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match Engine::detect_precompiled(&bytes) {
        Some(Precompiled::Component) => {
            // Read, not mapped: the operator may overwrite the file in place while serving.
            // SAFETY: a `.cwasm` is native code that the operator chose to run, made by
            // `wasm-gw compile`; wasmtime checks that it fits the engine.
            let deserialize = |engine: Engine| unsafe { Component::deserialize(&engine, &bytes) };
            // Which concurrency it was compiled for is known only by trying: first without,
            // as `wasm-gw compile` compiles all but `wasi:http` 0.3 components.
            let component = match deserialize(engine_for(Concurrency::Off)?) {
                Ok(component) => component,
                Err(_) => deserialize(engine_for(Concurrency::On)?)
                    .map_err(anyhow::Error::from)
                    .with_context(|| {
                        format!(
                            "cannot load {}: compile it again with this wasm-gw \
                             (`wasm-gw compile`)",
                            path.display()
                        )
                    })?,
            };
            return Ok(Loaded {
                component,
                files: None,
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

    let files = crate::bundle::section(&bytes)
        .with_context(|| format!("cannot read {}", path.display()))?
        .map(<[u8]>::to_vec);
    let concurrency = concurrency_of(&bytes);
    let component = match compile(&engine_for(concurrency)?, path, &bytes, cache) {
        // The scan reads canonical functions alone: a component that only names a stream's
        // or a future's type is refused by an engine without concurrency, and compiled with.
        Err(error) if concurrency == Concurrency::Off => {
            tracing::debug!("{error:#}; compiling again with the component model's concurrency");
            compile(&engine_for(Concurrency::On)?, path, &bytes, cache)?
        }
        compiled => compiled?,
    };
    Ok(Loaded { component, files })
}

/// Compiles the component `bytes`, read from `path`, for `engine`, or loads its compiled code
/// from `cache`.
fn compile(
    engine: &Engine,
    path: &Path,
    bytes: &[u8],
    cache: Option<&CodeCache>,
) -> anyhow::Result<Component> {
    let entry = cache.map(|cache| cache.entry(engine, bytes));
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
    // A big component (a Python app's CPython) takes seconds: say so, or the terminal looks
    // stuck.
    tracing::info!(
        "compiling {} ({}) for this machine, about {}",
        path.display(),
        megabytes(bytes.len()),
        compile_estimate(bytes.len())
    );
    let started = Instant::now();
    let component = Component::new(engine, bytes)
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

/// `bytes` in MB, as a person reads a file's size.
pub fn megabytes(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// About how long Cranelift takes for a component of `bytes`, from a measured build: a
/// Flask app of 29.1 MB took 6.8 s on a 2-core machine, a Bottle one of 23.6 MB 7.6 s.
pub fn compile_estimate(bytes: usize) -> String {
    let seconds = (bytes as f64 / 1e6 * 0.3).ceil().max(1.0);
    format!("{seconds:.0} s")
}

/// Compiles the component at `path` into `cache` for the engine `serve` gives apps that
/// keep their instances, and unpacks the files it carries, so that its first `serve` starts
/// at once.
/// A cache it cannot write to is an error here, not a warning: nothing else would say so.
pub fn precompile(path: &Path, cache: &CodeCache) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let engine = engine(concurrency_of(&bytes))?;
    // Its files are unpacked now too, where `serve` looks for them.
    if let Some(archive) = crate::bundle::section(&bytes)? {
        crate::bundle::unpack(archive, &cache.files_dir())?;
    }
    let entry = cache.entry(&engine, &bytes);
    if cache.load(&engine, &entry).is_some() {
        return Ok(());
    }
    let component = Component::new(&engine, &bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    cache
        .store(&component, &entry)
        .with_context(|| format!("cannot write to the code cache {}", cache.dir.display()))
}

/// `wasm-gw compile`: compiles `input` ahead of time into `output`.
pub fn compile_to_file(input: &Path, output: &Path) -> anyhow::Result<()> {
    let loaded = load_component(&engine, input, None)?;
    if loaded.files.is_some() {
        bail!(
            "{} carries files its app reads at run time (a Python app's standard library and \
             packages), which compiled code cannot hold: serve the .wasm itself, whose \
             compiled code the code cache keeps (`build-python` put it there)",
            input.display()
        );
    }
    let code = loaded.component.serialize()?;
    std::fs::write(output, code).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
