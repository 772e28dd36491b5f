//! `wasm-gw new NAME`: a Rust guest crate that builds and serves as it is, wherever this
//! binary is. The crate gets its own copy of the guest SDK and of the WIT contract, as this
//! binary was built with them, so it needs neither the wasm-gw source tree nor a published
//! SDK: only crates.io for the SDK's own dependencies.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The files shipped inside the binary: (path in the wasm-gw source tree, text).
macro_rules! shipped {
    ($($path:literal),* $(,)?) => {
        [$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $path)))),*]
    };
}

/// The contract and the SDK's sources. A unit test checks that this lists every file of
/// `wit/` and `guests/sdk/src/`.
const SHIPPED: [(&str, &str); 19] = shipped![
    "wit/wsgi.wit",
    "wit/deps/cli.wit",
    "wit/deps/clocks.wit",
    "wit/deps/config/store.wit",
    "wit/deps/config/world.wit",
    "wit/deps/filesystem.wit",
    "wit/deps/http.wit",
    "wit/deps/io.wit",
    "wit/deps/keyvalue/atomics.wit",
    "wit/deps/keyvalue/batch.wit",
    "wit/deps/keyvalue/store.wit",
    "wit/deps/keyvalue/world.wit",
    "wit/deps/random.wit",
    "wit/deps/sockets.wit",
    "guests/sdk/src/lib.rs",
    "guests/sdk/src/alloc.rs",
    "guests/sdk/src/config.rs",
    "guests/sdk/src/http.rs",
    "guests/sdk/src/kv.rs",
];

/// Where the SDK goes in a new crate. Its bindings read the WIT at `../../wit`, which is the
/// crate's own `wit/`.
const SDK_DIR: &str = "vendor/wasm-gw-sdk";

/// The SDK's manifest, and the workspace's, whose versions the SDK's inherits.
const SDK_MANIFEST: &str = include_str!("../../guests/sdk/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// Writes the crate into `dir` (which must not exist) and returns the commands that build
/// and serve it, to run in order from the current directory.
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
            .replace("@SDK@", SDK_DIR)
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        (
            dir.join("Cargo.toml"),
            fill(include_str!("scaffold/Cargo.toml.in")),
        ),
        (
            dir.join("src/lib.rs"),
            fill(include_str!("scaffold/lib.rs.in")),
        ),
        (
            dir.join(".cargo/config.toml"),
            fill(include_str!("scaffold/config.toml.in")),
        ),
        (
            dir.join("README.md"),
            fill(include_str!("scaffold/README.md.in")),
        ),
        (dir.join(SDK_DIR).join("Cargo.toml"), sdk_manifest()?),
    ];
    for (source, text) in SHIPPED {
        let inside = match source.strip_prefix("guests/sdk/") {
            Some(sdk_file) => Path::new(SDK_DIR).join(sdk_file),
            None => PathBuf::from(source),
        };
        files.push((dir.join(inside), text.to_owned()));
    }
    for (path, text) in files {
        std::fs::create_dir_all(path.parent().expect("files are in the crate"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(format!(
        "rustup target add wasm32-wasip2\ncd {dir}\ncargo build --release\n\
         {wasm_gw} serve target/wasm32-wasip2/release/{file}.wasm --port 8000\n",
        dir = shell_word(&dir.to_string_lossy()),
        wasm_gw = this_command(),
    ))
}

/// The SDK's manifest with what it inherits from the wasm-gw workspace written out, so that
/// it stands alone in the new crate.
fn sdk_manifest() -> anyhow::Result<String> {
    standalone_manifest(WORKSPACE_MANIFEST, SDK_MANIFEST)
}

/// `member`'s manifest with what it inherits from `workspace`'s written out.
fn standalone_manifest(workspace: &str, member: &str) -> anyhow::Result<String> {
    let workspace: toml::Table = workspace.parse()?;
    let mut sdk: toml::Table = member.parse()?;
    let shared = |section: &str, key: &str| {
        workspace
            .get("workspace")
            .and_then(|workspace| workspace.get(section))
            .and_then(|section| section.get(key))
            .cloned()
            .with_context(|| format!("the workspace has no {section}.{key} for the SDK"))
    };
    let inherited = |value: &toml::Value| {
        value
            .get("workspace")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false)
    };
    if let Some(package) = sdk.get_mut("package").and_then(toml::Value::as_table_mut) {
        for (key, value) in package.iter_mut() {
            if inherited(value) {
                *value = shared("package", key)?;
            }
        }
    }
    if let Some(dependencies) = sdk
        .get_mut("dependencies")
        .and_then(toml::Value::as_table_mut)
    {
        for (name, spec) in dependencies.iter_mut() {
            if !inherited(spec) {
                continue;
            }
            // The workspace's spec, with the member's own keys (`optional`, `features`).
            let mut merged = match shared("dependencies", name)? {
                toml::Value::String(version) => {
                    toml::Table::from_iter([("version".to_owned(), version.into())])
                }
                toml::Value::Table(table) => table,
                other => bail!("the workspace's {name} is not a dependency: {other}"),
            };
            for (key, value) in spec.as_table().into_iter().flatten() {
                match (key.as_str(), merged.get_mut(key), value) {
                    ("workspace", ..) => {}
                    // Cargo adds a member's features to the workspace's.
                    ("features", Some(toml::Value::Array(features)), toml::Value::Array(more)) => {
                        features.extend(
                            more.iter()
                                .filter(|f| !features.contains(f))
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                    }
                    _ => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
            *spec = merged.into();
        }
    }
    // [package] first, as people write it; toml writes the rest in order of name.
    let package = sdk
        .remove("package")
        .context("the SDK's manifest has no [package]")?;
    let package = toml::Table::from_iter([("package".to_owned(), package)]);
    Ok(format!(
        "# The wasm-gw guest SDK, as wasm-gw {} ships it: written by `wasm-gw new`.\n{}\n{}",
        env!("CARGO_PKG_VERSION"),
        toml::to_string(&package)?,
        toml::to_string(&sdk)?
    ))
}

/// How to run this binary from a shell: `wasm-gw` if that is what PATH finds, else its
/// full path.
fn this_command() -> String {
    let Ok(this) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "wasm-gw".to_owned();
    };
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("wasm-gw"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    match on_path.and_then(|found| std::fs::canonicalize(found).ok()) {
        Some(found) if found == this => "wasm-gw".to_owned(),
        _ => shell_word(&this.to_string_lossy()),
    }
}

/// `text` as one word for a POSIX shell: as it is when it holds nothing special, else in
/// single quotes.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    match plain {
        true => text.to_owned(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_contract_and_the_sdk_is_shipped() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut on_disk = Vec::new();
        let mut pending = vec![root.join("wit"), root.join("guests/sdk/src")];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(&root).unwrap();
                    on_disk.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut shipped: Vec<String> = SHIPPED.iter().map(|(path, _)| path.to_string()).collect();
        shipped.sort();
        assert_eq!(shipped, on_disk);
    }

    #[test]
    fn the_sdk_manifest_stands_alone() {
        let manifest: toml::Table = sdk_manifest().unwrap().parse().unwrap();
        let text = manifest.to_string();
        assert!(!text.contains("workspace"), "{text}");
        assert_eq!(manifest["package"]["name"].as_str(), Some("wasm-gw-sdk"));
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let serde = &manifest["dependencies"]["serde"];
        assert_eq!(serde["optional"].as_bool(), Some(true));
        assert!(serde["features"].as_array().is_some(), "{serde}");
        assert!(manifest["dependencies"]["wit-bindgen"]["version"].is_str());
    }

    #[test]
    fn inherited_dependencies_keep_the_workspaces_features_and_add_their_own() {
        let workspace = "[workspace.package]\nversion = \"1.2.3\"\n\
            [workspace.dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\n";
        let member = "[package]\nname = \"m\"\nversion.workspace = true\n[dependencies]\n\
            serde = { workspace = true, optional = true, features = [\"rc\", \"derive\"] }\n";
        let manifest: toml::Table = standalone_manifest(workspace, member)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(manifest["package"]["version"].as_str(), Some("1.2.3"));
        let serde = &manifest["dependencies"]["serde"];
        assert_eq!(serde["features"], toml::Value::from(vec!["derive", "rc"]));
        assert_eq!(serde["optional"].as_bool(), Some(true));
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("my-app"), "my-app");
        assert_eq!(shell_word("/opt/wasm gw/bin"), "'/opt/wasm gw/bin'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
