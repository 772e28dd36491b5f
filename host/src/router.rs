//! Which app a request goes to. The Host picks a site: the apps that name that host, or,
//! when none does, the apps that name no host. Within the site, the app mounted at the
//! longest prefix of the path that ends at a segment boundary takes it: `/api` takes `/api`
//! and `/api/x`, never `/apix`. As in WSGI, the prefix becomes SCRIPT_NAME and the rest
//! PATH_INFO.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::AppMetrics;
use crate::pool::{Current, CurrentPool};

/// Where one app is mounted, and what it accepts.
pub struct Mount {
    /// Host names, lowercase; `*.example.com` takes every name under example.com. Empty:
    /// every host that no other app names.
    pub hosts: Vec<String>,
    /// The prefix, checked by [`normalize_prefix`]; `""` for the root.
    pub prefix: String,
    pub route: Route,
}

/// An app as the router hands it out.
#[derive(Clone)]
pub struct Route {
    pub pool: Arc<CurrentPool>,
    /// The largest request body the app takes, `None` for any.
    pub max_body: Option<u64>,
    pub metrics: Arc<AppMetrics>,
}

pub struct Router {
    /// Sites by exact host name.
    named: HashMap<String, Site>,
    /// Sites by the domain under `*.`: `example.com` for `*.example.com`.
    wildcard: HashMap<String, Site>,
    /// The longest of those domains: no longer suffix of a Host can match one.
    longest_wildcard: usize,
    /// The apps that name no host.
    default: Site,
}

/// The apps of one host, by prefix.
#[derive(Default)]
struct Site {
    mounts: HashMap<String, Route>,
    /// The longest prefix: no longer candidate can match, however long the path.
    longest: usize,
}

impl Site {
    fn add(&mut self, prefix: String, route: Route) {
        self.longest = self.longest.max(prefix.len());
        self.mounts.insert(prefix, route);
    }

    /// Each candidate prefix is one lookup, and candidates start no longer than the longest
    /// mount, so the cost is bounded by the mounts' depth: not by the number of apps, nor by
    /// a hostile path's length.
    fn route(&self, path: &str) -> Option<(usize, &Route)> {
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
            if let Some(route) = self.mounts.get(candidate) {
                return Some((candidate.len(), route));
            }
            let Some(slash) = candidate.rfind('/') else {
                return self.mounts.get("").map(|route| (0, route));
            };
            candidate = &candidate[..slash];
        }
    }
}

impl Router {
    /// One app at the root, for every host.
    pub fn single(route: Route) -> Router {
        Router::new([Mount {
            hosts: Vec::new(),
            prefix: String::new(),
            route,
        }])
    }

    /// The apps at their mounts, each already checked: no two on one host and prefix.
    pub fn new(mounts: impl IntoIterator<Item = Mount>) -> Router {
        let mut router = Router {
            named: HashMap::new(),
            wildcard: HashMap::new(),
            longest_wildcard: 0,
            default: Site::default(),
        };
        for mount in mounts {
            if mount.hosts.is_empty() {
                router.default.add(mount.prefix, mount.route);
                continue;
            }
            for host in mount.hosts {
                let site = match host.strip_prefix("*.") {
                    Some(domain) => {
                        router.longest_wildcard = router.longest_wildcard.max(domain.len());
                        router.wildcard.entry(domain.to_owned()).or_default()
                    }
                    None => router.named.entry(host).or_default(),
                };
                site.add(mount.prefix.clone(), mount.route.clone());
            }
        }
        router
    }

    /// The app for a request to `host` (the Host without its port) and `path`, and the
    /// length of its mount prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<(usize, &Route)> {
        self.site(host).route(path)
    }

    /// The exact name first, then the closest wildcard: `a.b.example.com` tries
    /// `*.b.example.com` before `*.example.com`. One lookup per label that could match, so
    /// a long Host costs a scan, not a hash of each of its suffixes.
    fn site(&self, host: &str) -> &Site {
        if self.named.is_empty() && self.wildcard.is_empty() {
            return &self.default;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let host: Cow<str> = if host.bytes().any(|byte| byte.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        if let Some(site) = self.named.get(&*host) {
            return site;
        }
        let mut rest = &*host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if rest.len() <= self.longest_wildcard
                && let Some(site) = self.wildcard.get(rest)
            {
                return site;
            }
        }
        &self.default
    }
}

/// The router that takes new requests. A config reload swaps in another; requests in
/// flight finish with the one they started on.
pub type CurrentRouter = Current<Router>;

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

/// A virtual host as a config names it: a DNS name, `*.` and a domain, or an IP address
/// (IPv6 in brackets), without a port; lowercased, as Host is compared without case.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let dns = !name.is_empty()
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && label.chars().all(label_char));
    let ipv6 = lower.len() > 2
        && lower.starts_with('[')
        && lower.ends_with(']')
        && lower[1..lower.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    if dns || ipv6 {
        Ok(lower)
    } else {
        Err(format!(
            "{host:?} is not a host name: use a name such as api.example.com or \
             *.example.com, without a port"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    fn route() -> Route {
        Route {
            pool: Arc::new(CurrentPool::new(Pool::empty())),
            max_body: None,
            metrics: Arc::new(crate::metrics::metrics().app(&"test".into())),
        }
    }

    fn mount(hosts: &[&str], prefix: &str, route: &Route) -> Mount {
        Mount {
            hosts: hosts.iter().map(|host| host.to_string()).collect(),
            prefix: prefix.to_owned(),
            route: route.clone(),
        }
    }

    /// The mount length and the pool that `router` picks.
    fn routed(router: &Router, host: &str, path: &str) -> Option<(usize, *const CurrentPool)> {
        router
            .route(host, path)
            .map(|(len, route)| (len, Arc::as_ptr(&route.pool)))
    }

    fn id(route: &Route) -> *const CurrentPool {
        Arc::as_ptr(&route.pool)
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let (root, api, v2) = (route(), route(), route());
        let router = Router::new([
            mount(&[], "", &root),
            mount(&[], "/api", &api),
            mount(&[], "/api/v2", &v2),
        ]);
        let at = |path| routed(&router, "localhost", path).unwrap();
        assert_eq!(at("/"), (0, id(&root)));
        assert_eq!(at("/apix"), (0, id(&root)));
        assert_eq!(at("/api"), (4, id(&api)));
        assert_eq!(at("/api/"), (4, id(&api)));
        assert_eq!(at("/api/tasks/1"), (4, id(&api)));
        assert_eq!(at("/api/v2"), (7, id(&v2)));
        assert_eq!(at("/api/v2/x/y"), (7, id(&v2)));
        assert_eq!(at("/api/v20"), (4, id(&api)));
        assert_eq!(at("*"), (0, id(&root)));
    }

    #[test]
    fn long_paths_cost_no_more_than_the_deepest_mount() {
        let api = route();
        let router = Router::new([mount(&[], "", &route()), mount(&[], "/api", &api)]);
        let hostile = "/".repeat(8000);
        assert_eq!(routed(&router, "h", &hostile).unwrap().0, 0);
        let deep = format!("/api{}", "/x".repeat(4000));
        assert_eq!(routed(&router, "h", &deep).unwrap(), (4, id(&api)));
        assert_eq!(routed(&router, "h", "/apix/y").unwrap().0, 0);
    }

    #[test]
    fn no_root_no_match() {
        let router = Router::new([mount(&[], "/api", &route())]);
        assert!(router.route("h", "/").is_none());
        assert!(router.route("h", "/apix").is_none());
        assert!(router.route("h", "/api/x").is_some());
    }

    #[test]
    fn the_host_picks_the_site_before_the_path() {
        let (site, api, api_v2, tenants, deep, other) =
            (route(), route(), route(), route(), route(), route());
        let router = Router::new([
            mount(&[], "", &site),
            mount(&["api.example.com", "api.example.org"], "", &api),
            mount(&["api.example.com"], "/v2", &api_v2),
            mount(&["*.example.com"], "", &tenants),
            mount(&["*.eu.example.com"], "", &deep),
            mount(&["[::1]"], "/x", &other),
        ]);
        let at = |host, path| routed(&router, host, path);
        assert_eq!(at("api.example.com", "/tasks"), Some((0, id(&api))));
        assert_eq!(at("API.Example.COM.", "/tasks"), Some((0, id(&api))));
        assert_eq!(at("api.example.org", "/v2/x"), Some((0, id(&api))));
        assert_eq!(at("api.example.com", "/v2/x"), Some((3, id(&api_v2))));
        assert_eq!(at("shop.example.com", "/"), Some((0, id(&tenants))));
        assert_eq!(at("a.b.example.com", "/"), Some((0, id(&tenants))));
        assert_eq!(at("a.eu.example.com", "/"), Some((0, id(&deep))));
        // `*.example.com` is for names under it, not the domain itself.
        assert_eq!(at("example.com", "/"), Some((0, id(&site))));
        assert_eq!(at("127.0.0.1", "/"), Some((0, id(&site))));
        // A named host is a site of its own: its paths never fall through to the default.
        assert_eq!(at("[::1]", "/x/y"), Some((2, id(&other))));
        assert_eq!(at("[::1]", "/"), None);
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

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host("API.example.com").unwrap(),
            "api.example.com"
        );
        assert_eq!(normalize_host("*.Example.com").unwrap(), "*.example.com");
        assert_eq!(normalize_host("localhost").unwrap(), "localhost");
        assert_eq!(normalize_host("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(normalize_host("[::1]").unwrap(), "[::1]");
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "example.com:8080",
            "a b",
            "*.a.*.b",
            "[x]",
            "ex/a",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?}");
        }
    }
}
