//! One line per request: the common log format plus the duration in seconds, or with
//! `--log-format json` an object with the same facts.
//!
//! Lines are buffered and written to stderr by a flusher thread every tenth of a second (or
//! when the buffer fills), so that logging costs a request a format and a copy, not a
//! syscall.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::decimal::Decimal;
use crate::environ::RequestHead;

/// How log lines are written: for people, or one JSON object per line for collectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How long a line may wait in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A buffer this full is written at once.
const FLUSH_BYTES: usize = 64 * 1024;

struct AccessLog {
    buffer: Mutex<Vec<u8>>,
    format: LogFormat,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

thread_local! {
    /// This thread's line being formatted, and its cached timestamp.
    static LINE: RefCell<(String, CachedTime)> = RefCell::new((String::with_capacity(256), CachedTime::default()));
}

/// Turns the access log on; without this call, [`record`] does nothing.
pub fn enable(format: LogFormat) -> std::io::Result<()> {
    let log = AccessLog {
        buffer: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
        format,
    };
    if LOG.set(log).is_ok() {
        thread::Builder::new().name("access-log".into()).spawn(|| {
            loop {
                thread::sleep(FLUSH_INTERVAL);
                flush();
            }
        })?;
    }
    Ok(())
}

/// Writes out every buffered line.
pub fn flush() {
    let Some(log) = LOG.get() else {
        return;
    };
    let lines = std::mem::replace(
        &mut *log.buffer.lock().unwrap_or_else(PoisonError::into_inner),
        Vec::with_capacity(FLUSH_BYTES),
    );
    if !lines.is_empty() {
        let _ = std::io::stderr().lock().write_all(&lines);
    }
}

/// Logs `host - - [time] "request line" status bytes seconds`, where `-` stands for a
/// status that never reached the client; or the same as a JSON object.
pub fn record(request: &RequestHead, code: Option<u16>, body_bytes: u64, elapsed: Duration) {
    let Some(log) = LOG.get() else {
        return;
    };
    LINE.with_borrow_mut(|(line, time)| {
        line.clear();
        let time = time.at(SystemTime::now(), log.format);
        // Integer formatting: seconds with six decimals, without a float.
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let seconds = (micros / 1_000_000, micros % 1_000_000);
        match log.format {
            LogFormat::Text => {
                line.push_str(&request.remote_addr);
                line.push_str(" - - [");
                line.push_str(time);
                line.push_str("] \"");
                line.push_str(&request.method);
                line.push(' ');
                push_escaped(line, &request.target);
                line.push(' ');
                line.push_str(&request.protocol);
                line.push_str("\" ");
                match code {
                    Some(code) => line.push_str(Decimal::new(code.into(), 1).as_str()),
                    None => line.push('-'),
                }
                line.push(' ');
                line.push_str(Decimal::new(body_bytes, 1).as_str());
                line.push(' ');
                line.push_str(Decimal::new(seconds.0, 1).as_str());
                line.push('.');
                line.push_str(Decimal::new(seconds.1, 6).as_str());
                line.push('\n');
            }
            LogFormat::Json => {
                // The address, the method (a token) and the protocol need no escaping.
                let uri = serde_json::to_string(&request.target).unwrap_or_default();
                let status = code.map_or_else(|| "null".to_owned(), |code| code.to_string());
                let _ = writeln!(
                    line,
                    "{{\"timestamp\":\"{time}\",\"level\":\"INFO\",\"target\":\"access\",\"remote_addr\":\"{}\",\
                     \"method\":\"{}\",\"uri\":{uri},\"protocol\":\"{}\",\"status\":{status},\
                     \"bytes\":{body_bytes},\"seconds\":{}.{:06}}}",
                    request.remote_addr,
                    request.method,
                    request.protocol,
                    seconds.0,
                    seconds.1
                );
            }
        }
        let mut buffer = log.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend_from_slice(line.as_bytes());
        if buffer.len() >= FLUSH_BYTES {
            let full = std::mem::replace(&mut *buffer, Vec::with_capacity(FLUSH_BYTES));
            drop(buffer);
            let _ = std::io::stderr().lock().write_all(&full);
        }
    });
}

/// Appends `text`, escaping what could break the line or its quotes; most targets need none.
fn push_escaped(line: &mut String, text: &str) {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if plain {
        line.push_str(text);
    } else {
        let _ = write!(line, "{}", text.escape_debug());
    }
}

/// The timestamp of the current second, formatted once.
#[derive(Default)]
struct CachedTime {
    second: u64,
    text: String,
}

impl CachedTime {
    fn at(&mut self, now: SystemTime, format: LogFormat) -> &str {
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = match format {
                LogFormat::Text => clf_time(second),
                LogFormat::Json => rfc3339_time(second),
            };
        }
        &self.text
    }
}

/// `10/Oct/2000:13:55:36 +0000`, in UTC, for seconds since the epoch.
fn clf_time(seconds: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let time_of_day = seconds % 86_400;
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        time_of_day / 3600,
        time_of_day / 60 % 60,
        time_of_day % 60,
    )
}

/// `2000-10-10T13:55:36Z`, for seconds since the epoch.
fn rfc3339_time(seconds: u64) -> String {
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let time_of_day = seconds % 86_400;
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time_of_day / 3600,
        time_of_day / 60 % 60,
        time_of_day % 60,
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_what_needs_it() {
        let mut line = String::new();
        push_escaped(&mut line, "/a?b=c");
        push_escaped(&mut line, " /\"x\"\n");
        assert_eq!(line, "/a?b=c /\\\"x\\\"\\n");
    }

    #[test]
    fn formats_clf_time() {
        assert_eq!(clf_time(971_186_136), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(clf_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(rfc3339_time(971_186_136), "2000-10-10T13:55:36Z");
    }
}
