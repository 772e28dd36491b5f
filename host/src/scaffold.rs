//! `wasm-gw new NAME`: a Rust guest crate that builds and serves as it is.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the guest SDK is: beside this host in the wasm-gw source tree.
const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guests/sdk");

/// Writes the crate into `dir` (which must not exist) and returns the commands that build
/// and serve it.
pub fn new_app(dir: &Path) -> anyhow::Result<String> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .context("the app needs a directory name")?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!("{name:?} is not a crate name: use letters, digits, - and _, starting with a letter");
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = std::fs::canonicalize(SDK_DIR)
        .with_context(|| format!("cannot find the guest SDK at {SDK_DIR}"))?;
    let file = name.replace('-', "_");
    let type_name: String = name
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |template: &str| {
        template
            .replace("@NAME@", name)
            .replace("@FILE@", &file)
            .replace("@TYPE@", &type_name)
            .replace("@SDK@", &sdk.display().to_string())
    };
    let files: [(PathBuf, &str); 4] = [
        (
            dir.join("Cargo.toml"),
            include_str!("scaffold/Cargo.toml.in"),
        ),
        (dir.join("src/lib.rs"), include_str!("scaffold/lib.rs.in")),
        (
            dir.join(".cargo/config.toml"),
            include_str!("scaffold/config.toml.in"),
        ),
        (dir.join("README.md"), include_str!("scaffold/README.md.in")),
    ];
    for (path, template) in files {
        std::fs::create_dir_all(path.parent().expect("files are in the crate"))?;
        std::fs::write(&path, fill(template))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(format!(
        "cd {dir} && cargo build --release\nwasm-gw serve {dir}/target/wasm32-wasip2/release/{file}.wasm --port 8000\n",
        dir = dir.display()
    ))
}
