//! The files a component carries for its app to read at run time. A Python app's interpreter
//! was snapshotted after importing the app, but frameworks import more of the standard library
//! and of their own packages on demand, and open data files (templates, translations, time
//! zones) by path: Django's 404 page needs both. `build-python` packs those trees into a
//! custom section of the component; serving unpacks them once, next to the compiled code, and
//! grants each to the app read-only at the path it had while the snapshot was taken.
//!
//! The section holds a gzip-compressed tar whose top-level directories are the mount points:
//! `python/…` is mounted at `/python`, `1/…` at `/1`.

use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wasm_encoder::{ComponentSection, CustomSection, Encode};
use wasmparser::{Chunk, Parser, Payload};

use crate::guest::DirGrant;

/// The custom section's name.
pub const SECTION: &str = "wasm-gw:files";

/// A directory to pack, to be mounted at `/{mount}`.
#[derive(Clone, Copy)]
pub struct Tree<'a> {
    pub mount: &'a str,
    pub dir: &'a Path,
}

/// What was packed, for the build's report.
pub struct Packed {
    /// The section's contents.
    pub archive: Vec<u8>,
    pub files: usize,
    /// The files' size before compression, per mount, in the order given.
    pub sizes: Vec<(String, u64)>,
}

/// Packs `trees`, leaving out what `skip` says of a path relative to its tree. Symbolic
/// links are followed: the app reads what they point to. The archive is the same for the
/// same files, whenever and wherever it is built: names sorted, times and owners fixed.
pub fn pack(trees: &[Tree], skip: &dyn Fn(&Tree, &Path) -> bool) -> anyhow::Result<Packed> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(encoder);
    archive.mode(tar::HeaderMode::Deterministic);
    let mut files = 0;
    let mut sizes = Vec::with_capacity(trees.len());
    for tree in trees {
        let mut size = 0;
        archive.append_dir(tree.mount, tree.dir)?;
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            let dir = tree.dir.join(&relative);
            let mut entries = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .map(|entry| entry.map(|entry| entry.file_name()))
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort();
            for name in entries {
                let relative = relative.join(&name);
                if skip(tree, &relative) {
                    continue;
                }
                let path = tree.dir.join(&relative);
                let metadata = std::fs::metadata(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let inside = Path::new(tree.mount).join(&relative);
                if metadata.is_dir() {
                    archive.append_dir(&inside, &path)?;
                    pending.push(relative);
                } else if metadata.is_file() {
                    archive
                        .append_path_with_name(&path, &inside)
                        .with_context(|| format!("cannot pack {}", path.display()))?;
                    files += 1;
                    size += metadata.len();
                }
            }
        }
        sizes.push((tree.mount.to_owned(), size));
    }
    let archive = archive.into_inner()?.finish()?;
    Ok(Packed {
        archive,
        files,
        sizes,
    })
}

/// Appends the section holding `archive` to the component at `wasm`.
pub fn append(wasm: &Path, archive: &[u8]) -> anyhow::Result<()> {
    let section = CustomSection {
        name: SECTION.into(),
        data: archive.into(),
    };
    let mut bytes = vec![section.id()];
    section.encode(&mut bytes);
    std::fs::OpenOptions::new()
        .append(true)
        .open(wasm)
        .and_then(|mut file| file.write_all(&bytes))
        .with_context(|| format!("cannot write {}", wasm.display()))
}

/// The files section of the component in `wasm`, if it has one. Only the component's own
/// sections are read: nested modules are stepped over whole.
pub fn section(wasm: &[u8]) -> anyhow::Result<Option<&[u8]>> {
    let mut parser = Parser::new(0);
    let mut offset = 0;
    loop {
        let rest = wasm.get(offset..).unwrap_or_default();
        let (consumed, payload) = match parser.parse(rest, true)? {
            Chunk::Parsed { consumed, payload } => (consumed, payload),
            Chunk::NeedMoreData(_) => bail!("the component ends early"),
        };
        offset += consumed;
        match payload {
            Payload::CustomSection(reader) if reader.name() == SECTION => {
                return Ok(Some(reader.data()));
            }
            // The parser has stepped past a nested module or component already; its bytes
            // are not read.
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => offset = unchecked_range.end,
            Payload::End(_) => return Ok(None),
            _ => {}
        }
    }
}

/// Unpacks `archive` under `root` (once: a later call finds it there, by its content) and
/// returns the grants that mount each of its trees read-only.
pub fn unpack(archive: &[u8], root: &Path) -> anyhow::Result<Vec<DirGrant>> {
    let digest: String = Sha256::digest(archive)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    private_dir(root)?;
    let unpacked = root.join(&digest);
    if !unpacked.is_dir() {
        // Unpacked aside and renamed into place, so that a server never mounts half a tree,
        // whatever else runs at once.
        // Its own staging directory, also when two apps of one component load side by side.
        let unique = RandomState::new().hash_one((std::process::id(), Instant::now()));
        let staging = root.join(format!("{digest}.{unique:016x}.partial"));
        std::fs::create_dir(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        let unpacking = unpack_into(archive, &staging);
        let renamed = unpacking.and_then(|()| {
            std::fs::rename(&staging, &unpacked).or_else(|error| {
                // Another server may have unpacked the same files first.
                if unpacked.is_dir() {
                    Ok(())
                } else {
                    Err(anyhow::Error::from(error)
                        .context(format!("cannot rename to {}", unpacked.display())))
                }
            })
        });
        // Gone if renamed; what a failed attempt, or one another server beat, left behind.
        let _ = std::fs::remove_dir_all(&staging);
        renamed?;
    }
    let mut grants = Vec::new();
    for entry in std::fs::read_dir(&unpacked)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        grants.push(DirGrant {
            host: entry.path(),
            guest: format!("/{name}"),
            read_only: true,
        });
    }
    grants.sort_by(|a, b| a.guest.cmp(&b.guest));
    Ok(grants)
}

/// Unpacks regular files and directories only, each below `dir`.
fn unpack_into(archive: &[u8], dir: &Path) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if !path
            .components()
            .all(|part| matches!(part, Component::Normal(_)))
            || !(kind.is_file() || kind.is_dir())
        {
            bail!(
                "the files section holds {}, which is not a plain file or directory below its root",
                path.display()
            );
        }
        let target = dir.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create(&target)
                .and_then(|mut file| std::io::copy(&mut entry, &mut file))
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    Ok(())
}

/// Creates `dir` if need be, and checks that no one else may write to it or own it: what is
/// in it is mounted into apps by its name.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let metadata = std::fs::symlink_metadata(dir)?;
    if !metadata.is_dir()
        || metadata.uid() != nix::unistd::getuid().as_raw()
        || metadata.permissions().mode() & 0o022 != 0
    {
        bail!(
            "{} is not a directory that this user alone owns and may write to",
            dir.display()
        );
    }
    Ok(())
}

/// Where shipped files are unpacked when there is no code cache: a directory of this user's
/// in the temporary directory.
pub fn default_root() -> PathBuf {
    std::env::temp_dir().join(format!("wasm-gw-files-{}", nix::unistd::getuid().as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: its preamble alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasm-gw-bundle-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn packed_trees_come_back_read_only_at_their_mounts() {
        let dir = scratch("round-trip");
        let (lib, app) = (dir.join("lib"), dir.join("app"));
        std::fs::create_dir_all(lib.join("encodings")).unwrap();
        std::fs::write(lib.join("encodings/idna.py"), "# idna\n").unwrap();
        std::fs::create_dir_all(app.join("__pycache__")).unwrap();
        std::fs::write(app.join("__pycache__/app.pyc"), "bytecode").unwrap();
        std::fs::write(app.join("app.py"), "app = None\n").unwrap();
        let trees = [
            Tree {
                mount: "python",
                dir: &lib,
            },
            Tree {
                mount: "1",
                dir: &app,
            },
        ];
        let packed = pack(&trees, &|_, relative| relative.ends_with("__pycache__")).unwrap();
        assert_eq!(packed.files, 2);
        assert_eq!(
            packed.sizes,
            vec![("python".to_owned(), 7), ("1".to_owned(), 11)]
        );
        // The same files make the same archive.
        assert_eq!(
            pack(&trees, &|_, relative| relative.ends_with("__pycache__"))
                .unwrap()
                .archive,
            packed.archive
        );

        let wasm = dir.join("app.wasm");
        std::fs::write(&wasm, EMPTY_COMPONENT).unwrap();
        assert_eq!(section(EMPTY_COMPONENT).unwrap(), None);
        append(&wasm, &packed.archive).unwrap();
        let bytes = std::fs::read(&wasm).unwrap();
        let archive = section(&bytes).unwrap().expect("the section");
        assert_eq!(archive, packed.archive);

        let root = dir.join("cache");
        let grants = unpack(archive, &root).unwrap();
        let mounts: Vec<_> = grants.iter().map(|grant| grant.guest.as_str()).collect();
        assert_eq!(mounts, ["/1", "/python"]);
        assert!(grants.iter().all(|grant| grant.read_only));
        assert_eq!(
            std::fs::read_to_string(grants[1].host.join("encodings/idna.py")).unwrap(),
            "# idna\n"
        );
        assert!(grants[0].host.join("app.py").is_file());
        assert!(!grants[0].host.join("__pycache__").exists());
        // Found by its content the next time, not unpacked again.
        std::fs::write(grants[0].host.join("marker"), "").unwrap();
        let again = unpack(archive, &root).unwrap();
        assert!(again[0].host.join("marker").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_plain_files_and_directories_are_unpacked() {
        let dir = scratch("links");
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        archive
            .append_link(&mut header, "python/os.py", "/etc/passwd")
            .unwrap();
        let tar = archive.into_inner().unwrap();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).unwrap();
        let error = unpack(&gzip.finish().unwrap(), &dir.join("cache")).unwrap_err();
        assert!(
            error.to_string().contains("not a plain file or directory"),
            "{error:#}"
        );
        // Nothing is left half unpacked.
        assert_eq!(std::fs::read_dir(dir.join("cache")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shared_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("shared");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = private_dir(&dir).unwrap_err();
        assert!(error.to_string().contains("alone owns"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
