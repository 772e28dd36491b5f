//! `wasm-gw build-python`: turns a Python WSGI app into a component, with the bridge in
//! `guests/python/bridge` and componentize-py, which bundles CPython and snapshots the app.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use anyhow::{Context, bail};

use crate::bundle;
use crate::compile::megabytes;

/// The componentize-py release the bridge is built and tested with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The CPython that componentize-py bundles, and the suffix of the bytecode it writes.
const BUNDLED_PYTHON: &str = "3.14";
const BYTECODE: &str = ".cpython-314.pyc";

/// The contract and the bridge, built into the binary so that it needs no source tree.
const WIT: [(&str, &str); 14] = [
    ("wsgi.wit", include_str!("../../wit/wsgi.wit")),
    (
        "deps/keyvalue/world.wit",
        include_str!("../../wit/deps/keyvalue/world.wit"),
    ),
    (
        "deps/keyvalue/store.wit",
        include_str!("../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "deps/keyvalue/atomics.wit",
        include_str!("../../wit/deps/keyvalue/atomics.wit"),
    ),
    (
        "deps/keyvalue/batch.wit",
        include_str!("../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "deps/config/world.wit",
        include_str!("../../wit/deps/config/world.wit"),
    ),
    (
        "deps/config/store.wit",
        include_str!("../../wit/deps/config/store.wit"),
    ),
    ("deps/http.wit", include_str!("../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../wit/deps/io.wit")),
    ("deps/clocks.wit", include_str!("../../wit/deps/clocks.wit")),
    ("deps/random.wit", include_str!("../../wit/deps/random.wit")),
    ("deps/cli.wit", include_str!("../../wit/deps/cli.wit")),
    (
        "deps/filesystem.wit",
        include_str!("../../wit/deps/filesystem.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../wit/deps/sockets.wit"),
    ),
];
const BRIDGE: [(&str, &str); 5] = [
    (
        "wasm_gw_bridge.py",
        include_str!("../../guests/python/bridge/wasm_gw_bridge.py"),
    ),
    (
        "wasm_gw_kv.py",
        include_str!("../../guests/python/bridge/wasm_gw_kv.py"),
    ),
    (
        "wasm_gw_config.py",
        include_str!("../../guests/python/bridge/wasm_gw_config.py"),
    ),
    (
        "wasm_gw_http.py",
        include_str!("../../guests/python/bridge/wasm_gw_http.py"),
    ),
    (
        "wasm_gw_validate.py",
        include_str!("../../guests/python/bridge/wasm_gw_validate.py"),
    ),
];

/// What to build.
pub struct PythonApp<'a> {
    /// The callable, `MODULE:NAME`.
    pub callable: &'a str,
    /// Directories the app's modules are in.
    pub paths: &'a [PathBuf],
    pub requirements: Option<&'a Path>,
    /// Wrap the app in `wsgiref.validate.validator`, which checks PEP 3333 on every call.
    pub validate: bool,
    pub output: &'a Path,
    /// Where the managed componentize-py lives.
    pub tools_dir: &'a Path,
}

/// What a build did, for the user.
pub struct Built {
    /// The requirements installed, as `name version`.
    pub installed: Vec<String>,
    pub warnings: Vec<String>,
    /// What the component carries for the app to read at run time, for a person.
    pub shipped: String,
}

/// Builds the component.
pub fn build_python(app: &PythonApp) -> anyhow::Result<Built> {
    let (module, name) = parse_callable(app.callable)?;
    let componentize = componentize_py(app.tools_dir)?;
    let build = BuildDir::new()?;

    for (file, text) in WIT {
        build.write(&format!("wit/{file}"), text)?;
    }
    for (file, text) in BRIDGE {
        build.write(&format!("bridge/{file}"), text)?;
    }
    let entry = if app.validate {
        format!(
            "from wasm_gw_validate import validator\nfrom {module} import {name} as _app\n\
             application = validator(_app)\n"
        )
    } else {
        format!("from {module} import {name} as application\n")
    };
    build.write("bridge/wasm_gw_app.py", &entry)?;

    // componentize-py drops a path that does not exist, which would move every later one to
    // another mount at run time.
    for path in app.paths {
        if !path.is_dir() {
            bail!("--path {} is not a directory", path.display());
        }
    }

    let mut warnings = Vec::new();
    // componentize-py adds the site-packages of the virtualenv named by VIRTUAL_ENV, or else of
    // the Python that runs it, as the last path: the requirements' directory, never the
    // tools' virtualenv (pip and componentize-py itself, which the app would see while it is
    // built and not after).
    let env = build.path().join("env");
    let site = env.join("lib/site-packages");
    std::fs::create_dir_all(&site)?;
    let mut native = Vec::new();
    let mut installed = Vec::new();
    if let Some(requirements) = app.requirements {
        installed = install_requirements(&componentize.python, requirements, &site)?;
        native = remove_native_code(&site)?;
        if !native.is_empty() {
            warnings.push(format!(
                "left out native code that cannot run in WebAssembly; each package must work \
                 without it: {}",
                native
                    .iter()
                    .map(|(package, file)| format!("{package} ({file})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    let mut command = componentize.command();
    command
        .arg("-d")
        .arg(build.path().join("wit"))
        .args(["-w", "wasm-gw:wsgi/app", "componentize", "wasm_gw_bridge"])
        .arg("-p")
        .arg(build.path().join("bridge"));
    for path in app.paths {
        command.arg("-p").arg(path);
    }
    command.env("VIRTUAL_ENV", &env);
    command.arg("-o").arg(app.output);
    let started = SystemTime::now();
    let output = run(&mut command, "componentize-py")?;
    for path in app.paths {
        remove_bytecode_since(path, started);
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The app is imported at build time: a package whose native code was left out fails
        // here if it cannot do without it.
        if let Some((package, file)) = native
            .iter()
            .find(|(package, _)| stderr.contains(&format!("'{package}")))
        {
            bail!(
                "{package} needs its native code ({file}), which cannot run in WebAssembly: \
                 use a pure-Python package instead\n{stderr}"
            );
        }
        bail!(
            "componentize-py could not build {}:\n{stderr}",
            app.callable
        );
    }
    let shipped = ship_files(app, &build, &site)?;
    Ok(Built {
        installed,
        warnings,
        shipped,
    })
}

/// Packs what the app may import or open after its snapshot into the component: the standard
/// library (which the bridge copied out while the component was built), the bridge, the app's
/// directories and its requirements, each to be mounted where componentize-py mounted it
/// (`/python`, then `/0`, `/1`, … in the order of its Python path).
fn ship_files(app: &PythonApp, build: &BuildDir, site: &Path) -> anyhow::Result<String> {
    let bridge = build.path().join("bridge");
    let stdlib = bridge.join(".stdlib");
    if !stdlib.is_dir() {
        bail!("the bridge did not copy out the standard library while the component was built");
    }
    let mounts: Vec<String> = (0..app.paths.len() + 2).map(|n| n.to_string()).collect();
    let mut trees = vec![
        bundle::Tree {
            mount: "python",
            dir: &stdlib,
        },
        bundle::Tree {
            mount: &mounts[0],
            dir: &bridge,
        },
    ];
    for (path, mount) in app.paths.iter().zip(&mounts[1..]) {
        trees.push(bundle::Tree { mount, dir: path });
    }
    trees.push(bundle::Tree {
        mount: &mounts[app.paths.len() + 1],
        dir: site,
    });
    let output = app.output.canonicalize().ok();
    let packed = bundle::pack(&trees, &|tree, relative| {
        let Some(name) = relative.file_name().and_then(|name| name.to_str()) else {
            return true;
        };
        let path = tree.dir.join(relative);
        // Bytecode is written by the interpreter for itself; hidden entries are version
        // control, editors' and virtualenvs' (`.venv`), as are directories with a
        // `pyvenv.cfg`; components, this one above all, are not the app's to read.
        name == "__pycache__"
            || name.starts_with('.')
            || name == "node_modules"
            || name.ends_with(".wasm")
            || name.ends_with(".cwasm")
            || path.join("pyvenv.cfg").is_file()
            || output.as_deref() == path.canonicalize().ok().as_deref()
    })?;
    bundle::append(app.output, &packed.archive)?;
    let mut names: Vec<String> = vec!["the standard library".into(), "the bridge".into()];
    names.extend(app.paths.iter().map(|path| path.display().to_string()));
    names.push("the requirements".into());
    let sizes = packed
        .sizes
        .iter()
        .zip(&names)
        .filter(|((_, size), _)| *size > 0)
        .map(|((_, size), name)| format!("{name} {}", megabytes(*size as usize)))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "{} files, {} in the component ({sizes})",
        packed.files,
        megabytes(packed.archive.len())
    ))
}

/// Splits `MODULE:NAME`, checking that each is a Python name.
fn parse_callable(callable: &str) -> anyhow::Result<(&str, &str)> {
    let identifier =
        |part: &str| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_');
    match callable.split_once(':') {
        Some((module, name)) if module.split('.').all(identifier) && identifier(name) => {
            Ok((module, name))
        }
        _ => bail!("{callable:?} is not MODULE:CALLABLE, as in hello:hello_app"),
    }
}

/// The Python of the virtualenv that holds componentize-py.
struct Componentize {
    python: PathBuf,
}

impl Componentize {
    /// componentize-py, run through the virtualenv's Python: the virtualenv's own scripts
    /// name the directory it was made in, which is not where it ends up.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.python);
        command.args([
            "-c",
            "import sys; from componentize_py import script; \
             sys.argv[0] = 'componentize-py'; sys.exit(script())",
        ]);
        command
    }
}

/// Installs componentize-py at the pinned version into a virtualenv of our own, once, and
/// again if that virtualenv stopped working (its system Python was upgraded, say).
fn componentize_py(tools_dir: &Path) -> anyhow::Result<Componentize> {
    let venv = tools_dir.join(format!("componentize-py-{COMPONENTIZE_PY}"));
    let installed = Componentize {
        python: venv.join("bin/python"),
    };
    if works(&installed.python) {
        return Ok(installed);
    }
    if venv.exists() && !works(&installed.python) {
        // Broken, not merely just finished by another build.
        let _ = std::fs::remove_dir_all(&venv);
    }
    std::fs::create_dir_all(tools_dir)
        .with_context(|| format!("cannot create {}", tools_dir.display()))?;
    // Built aside and renamed into place, so that two builds at once never share a half-made
    // virtualenv; removed when dropped, if the rename did not take it.
    let staging = Staging(tools_dir.join(format!(
        ".componentize-py-{COMPONENTIZE_PY}-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&staging.0);
    check(
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&staging.0),
            "python3",
        )?,
        "python3 -m venv (wasm-gw build-python needs Python 3 with venv and pip)",
    )?;
    let pip = |args: &[&str], what: &str| {
        check(
            run(
                Command::new(staging.0.join("bin/python"))
                    .args(["-m", "pip"])
                    .args(args),
                "pip",
            )?,
            what,
        )
    };
    // An old pip may not know the wheel's platform tag and fall back to building from
    // source, which needs a Rust toolchain; a current one, and wheels only, avoid that.
    pip(
        &["install", "--quiet", "--upgrade", "pip"],
        "pip install --upgrade pip",
    )?;
    pip(
        &[
            "install",
            "--quiet",
            "--only-binary=:all:",
            &format!("componentize-py=={COMPONENTIZE_PY}"),
        ],
        "pip install componentize-py (it ships wheels for Linux x86_64 and aarch64 with \
         glibc 2.28 or later, macOS and Windows)",
    )?;
    if let Err(error) = std::fs::rename(&staging.0, &venv) {
        // Another build may have finished first; its copy is as good.
        if !works(&installed.python) {
            bail!(
                "cannot move the new virtualenv to {}: {error}",
                venv.display()
            );
        }
    }
    Ok(installed)
}

/// Whether `python` runs and has componentize-py.
fn works(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import componentize_py"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A directory removed when dropped, unless it was moved away.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs pip with environment markers judged as the CPython inside the component would
/// judge them, 3.14 on WASI, whatever Python runs pip: pip's `--python-version` covers wheel
/// tags and Requires-Python only, so `legacy-cgi; python_version >= "3.13"` was skipped
/// under a 3.11 and webob then failed to import.
const PIP_FOR_WASI: &str = r#"
import sys
from pip._vendor.packaging import markers

wasi = {
    "implementation_name": "cpython",
    "implementation_version": "3.14.0",
    "os_name": "posix",
    "platform_machine": "wasm32",
    "platform_release": "",
    "platform_system": "wasi",
    "platform_version": "",
    "python_full_version": "3.14.0",
    "platform_python_implementation": "CPython",
    "python_version": "3.14",
    "sys_platform": "wasi",
}
markers.default_environment = lambda: dict(wasi)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"#;

/// Installs the requirements as wheels only, nothing compiled for this machine, chosen for
/// the CPython inside the component rather than the one running pip. Returns what was
/// installed, as `name version`.
fn install_requirements(
    python: &Path,
    requirements: &Path,
    site: &Path,
) -> anyhow::Result<Vec<String>> {
    let output = run(
        Command::new(python)
            .args(["-c", PIP_FOR_WASI])
            .args(["install", "--quiet", "--only-binary=:all:"])
            .args(["--python-version", BUNDLED_PYTHON])
            .arg("--target")
            .arg(site)
            .arg("-r")
            .arg(requirements),
        "pip",
    )?;
    check(
        output,
        &format!("pip could not install {}", requirements.display()),
    )?;
    installed(site)
}

/// The distributions in `site`, as `name version`, from their `NAME-VERSION.dist-info`.
fn installed(site: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(site)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((package, version)) = name
            .strip_suffix(".dist-info")
            .and_then(|stem| stem.rsplit_once('-'))
        {
            found.push(format!("{package} {version}"));
        }
    }
    found.sort_by_key(|line| line.to_lowercase());
    Ok(found)
}

/// Removes compiled extension modules from `site`, which CPython in WebAssembly cannot load,
/// and returns each with the top-level package it belongs to.
fn remove_native_code(site: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut removed = Vec::new();
    let mut pending = vec![site.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "so") {
                let relative = path.strip_prefix(site).unwrap_or(&path);
                let package = relative
                    .components()
                    .next()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default();
                // `pkg/_speedups.cpython-311-x86_64-linux-gnu.so` or a top-level `pkg.cpython-...so`.
                let package = package.split('.').next().unwrap_or_default().to_owned();
                std::fs::remove_file(&path)?;
                removed.push((package, relative.display().to_string()));
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// The CPython inside componentize-py writes `__pycache__` next to the app's modules as it
/// imports them; this removes what it wrote during the build, leaving the user's tree as it
/// was. Hidden directories and dependency trees are not the app's modules.
fn remove_bytecode_since(dir: &Path, since: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !path.is_dir() || name.starts_with('.') || name == "node_modules" {
            continue;
        }
        if name != "__pycache__" {
            remove_bytecode_since(&path, since);
            continue;
        }
        let Ok(files) = std::fs::read_dir(&path) else {
            continue;
        };
        for file in files.flatten() {
            let written_by_build = file
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified >= since);
            if written_by_build && file.file_name().to_string_lossy().ends_with(BYTECODE) {
                let _ = std::fs::remove_file(file.path());
            }
        }
        // Only if it is empty now, that is, if the build made it.
        let _ = std::fs::remove_dir(&path);
    }
}

fn run(command: &mut Command, program: &str) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("cannot run {program}"))
}

fn check(output: Output, what: &str) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A scratch directory for one build, removed when dropped.
struct BuildDir(PathBuf);

impl BuildDir {
    fn new() -> anyhow::Result<BuildDir> {
        let path = std::env::temp_dir().join(format!(
            "wasm-gw-build-python-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        ));
        std::fs::create_dir_all(&path)?;
        Ok(BuildDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let path = self.0.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callables() {
        assert_eq!(
            parse_callable("hello:hello_app").unwrap(),
            ("hello", "hello_app")
        );
        assert_eq!(parse_callable("pkg.web:app").unwrap(), ("pkg.web", "app"));
        assert!(parse_callable("hello").is_err());
        assert!(parse_callable("hello:").is_err());
        assert!(parse_callable("a b:app").is_err());
        assert!(parse_callable("x:app; import os").is_err());
    }
}
