//! The guest's files, beyond what wasmtime-wasi checks: a symlink it makes in a read-write
//! grant may only point down from where it is.
//!
//! wasmtime-wasi resolves every path within its grant, so a guest can never follow a link
//! out of it; but it lets a guest make one whose target leaves it
//! (`granted/evil -> ../../../etc/passwd`), a trap laid for the host's own tools, which
//! would follow it. Refusing absolute targets and targets with a `..` component keeps every
//! link the guest makes pointing into its own directory's subtree, whatever other links
//! the guest made before: each of those points down too.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{ErrorCode, Host, HostDescriptor};

use super::OutputLimit;
use crate::http::response::excerpt;

/// The `wasi:filesystem/types` instance of wasmtime-wasi's WIT, whose function this replaces.
const TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Replaces `symlink-at` in `linker`, which must hold wasmtime-wasi's already; refusals are
/// logged within the app's output budget, from `output`.
pub fn add_to_linker<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    output: fn(&mut T) -> &OutputLimit,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = linker.instance(TYPES).and_then(|mut types| {
        types.func_wrap(
            "[method]descriptor.symlink-at",
            move |mut store, (dir, target, link): (Resource<Descriptor>, String, String)| {
                if !points_down(&target) {
                    let (link, target) = (excerpt(&link), excerpt(&target));
                    if output(store.data_mut()).allows(link.len() + target.len()) {
                        tracing::info!(
                            "refused the app a symlink {link:?} -> {target:?}: its target may \
                             leave the directory"
                        );
                    }
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                let mut files = store.data_mut().filesystem();
                Ok((
                    match HostDescriptor::symlink_at(&mut files, dir, target, link) {
                        Ok(()) => Ok(()),
                        Err(error) => Err(Host::convert_error_code(&mut files, error)?),
                    },
                ))
            },
        )
    });
    linker.allow_shadowing(false);
    added
}

/// Whether a link target stays in the subtree of the link's directory.
fn points_down(target: &str) -> bool {
    !target.is_empty() && !target.starts_with('/') && target.split('/').all(|part| part != "..")
}

#[cfg(test)]
mod tests {
    use super::points_down;

    #[test]
    fn only_targets_below_the_link_are_allowed() {
        for down in ["file", "sub/file", "./file", "a/./b", "x..y"] {
            assert!(points_down(down), "{down}");
        }
        for away in ["", "/etc/passwd", "..", "../x", "a/../../x", "a/.."] {
            assert!(!points_down(away), "{away}");
        }
    }
}
