//! Which app a request goes to: the app mounted at the longest prefix of its path that ends
//! at a segment boundary. `/api` takes `/api` and `/api/x`, never `/apix`. As in WSGI, the
//! prefix becomes SCRIPT_NAME and the rest PATH_INFO.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pool::CurrentPool;

pub struct Router {
    /// Mount prefix (`""` for the root) to the app's pool.
    mounts: HashMap<String, Arc<CurrentPool>>,
    /// The longest prefix: no longer candidate can match, however long the path.
    longest: usize,
}

impl Router {
    /// One app at the root.
    pub fn single(pool: Arc<CurrentPool>) -> Router {
        Router {
            mounts: HashMap::from([(String::new(), pool)]),
            longest: 0,
        }
    }

    /// Apps at their prefixes, each already checked by [`normalize_prefix`].
    pub fn new(mounts: impl IntoIterator<Item = (String, Arc<CurrentPool>)>) -> Router {
        let mounts: HashMap<String, Arc<CurrentPool>> = mounts.into_iter().collect();
        let longest = mounts.keys().map(String::len).max().unwrap_or(0);
        Router { mounts, longest }
    }

    /// The app for `path`, and the length of its mount prefix. Each candidate prefix is one
    /// lookup, and candidates start no longer than the longest mount, so the cost is bounded
    /// by the mounts' depth: not by the number of apps, nor by a hostile path's length.
    pub fn route(&self, path: &str) -> Option<(usize, &CurrentPool)> {
        let mut candidate = path;
        if path.len() > self.longest {
            // The longest candidate that ends where a segment does.
            let end = path.as_bytes()[..=self.longest]
                .iter()
                .rposition(|&byte| byte == b'/')
                .unwrap_or(0);
            candidate = &path[..end];
        }
        loop {
            if let Some(pool) = self.mounts.get(candidate) {
                return Some((candidate.len(), pool));
            }
            let Some(slash) = candidate.rfind('/') else {
                return self.mounts.get("").map(|pool| (0, &**pool));
            };
            candidate = &candidate[..slash];
        }
    }
}

/// The mount prefix for `--mount PREFIX=...`: `/` is the root (stored as `""`); others start
/// with `/`, have no empty segments and lose a trailing `/`.
pub fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_end_matches('/');
    // Request paths arrive percent-decoded and without their query: a prefix with `%`, `?`,
    // `#` or non-ASCII characters could never match one.
    let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '%' | '?' | '#');
    let valid = prefix.starts_with('/')
        && prefix.chars().all(plain)
        && !trimmed.contains("//")
        && !trimmed
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if !valid {
        return Err(format!(
            "{prefix:?} is not a mount prefix: use / or a path such as /api"
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{App, AppFactory};
    use crate::pool::Pool;

    struct Nothing;

    impl AppFactory for Nothing {
        fn new_worker(&self) -> anyhow::Result<Box<dyn App>> {
            anyhow::bail!("not needed")
        }
    }

    fn pool() -> Arc<CurrentPool> {
        Arc::new(CurrentPool::new(Pool::new(&Nothing, 0).unwrap()))
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let (root, api, v2) = (pool(), pool(), pool());
        let router = Router::new([
            (String::new(), root.clone()),
            ("/api".to_owned(), api.clone()),
            ("/api/v2".to_owned(), v2.clone()),
        ]);
        let routed = |path| {
            let (len, pool) = router.route(path).unwrap();
            (len, pool as *const CurrentPool)
        };
        assert_eq!(routed("/"), (0, &*root as *const _));
        assert_eq!(routed("/apix"), (0, &*root as *const _));
        assert_eq!(routed("/api"), (4, &*api as *const _));
        assert_eq!(routed("/api/"), (4, &*api as *const _));
        assert_eq!(routed("/api/tasks/1"), (4, &*api as *const _));
        assert_eq!(routed("/api/v2"), (7, &*v2 as *const _));
        assert_eq!(routed("/api/v2/x/y"), (7, &*v2 as *const _));
        assert_eq!(routed("/api/v20"), (4, &*api as *const _));
        assert_eq!(routed("*"), (0, &*root as *const _));
    }

    #[test]
    fn long_paths_cost_no_more_than_the_deepest_mount() {
        let api = pool();
        let router = Router::new([(String::new(), pool()), ("/api".to_owned(), api.clone())]);
        let hostile = "/".repeat(8000);
        assert_eq!(router.route(&hostile).unwrap().0, 0);
        let deep = format!("/api{}", "/x".repeat(4000));
        let (len, routed) = router.route(&deep).unwrap();
        assert_eq!((len, routed as *const CurrentPool), (4, &*api as *const _));
        assert_eq!(router.route("/apix/y").unwrap().0, 0);
    }

    #[test]
    fn no_root_no_match() {
        let router = Router::new([("/api".to_owned(), pool())]);
        assert!(router.route("/").is_none());
        assert!(router.route("/apix").is_none());
        assert!(router.route("/api/x").is_some());
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert_eq!(normalize_prefix("/api/").unwrap(), "/api");
        assert_eq!(normalize_prefix("/api/v2").unwrap(), "/api/v2");
        assert!(normalize_prefix("api").is_err());
        assert!(normalize_prefix("/a//b").is_err());
        assert!(normalize_prefix("/a/../b").is_err());
        assert!(normalize_prefix("/a%20b").is_err());
        assert!(normalize_prefix("/x?y").is_err());
        assert!(normalize_prefix("/café").is_err());
    }
}
