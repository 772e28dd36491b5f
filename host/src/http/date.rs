//! The `Date` header value, formatted at most once a second for the whole process.

use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT` is always 29 bytes.
const DATE_LEN: usize = 29;

struct CachedDate {
    second: u64,
    text: [u8; DATE_LEN],
}

static CACHED: RwLock<CachedDate> = RwLock::new(CachedDate {
    second: u64::MAX,
    text: [0; DATE_LEN],
});

/// Calls `use_date` with the current IMF-fixdate.
pub fn with_date<R>(use_date: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    {
        let cached = CACHED
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.second == second {
            return use_date(&cached.text);
        }
    }
    let mut cached = CACHED
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if cached.second != second {
        let text = httpdate::fmt_http_date(now);
        cached.text.copy_from_slice(&text.as_bytes()[..DATE_LEN]);
        cached.second = second;
    }
    use_date(&cached.text)
}
