//! One line per request in the common log format, plus the duration in seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bindings::wasm_gw::wsgi::request::Environ;

/// Logs `host - - [time] "request line" status bytes seconds`; `-` stands for a status that
/// never reached the client.
pub fn record(environ: &Environ, code: Option<u16>, body_bytes: u64, elapsed: Duration) {
    if !tracing::enabled!(target: "wasm_gw::access", tracing::Level::INFO) {
        return;
    }
    let status = code.map_or_else(|| "-".to_owned(), |code| code.to_string());
    tracing::info!(
        target: "wasm_gw::access",
        "{} - - [{}] \"{} {} {}\" {} {} {:.6}",
        environ.remote_addr,
        clf_time(SystemTime::now()),
        environ.request_method,
        environ.raw_uri.escape_debug(),
        environ.server_protocol,
        status,
        body_bytes,
        elapsed.as_secs_f64(),
    );
}

/// `10/Oct/2000:13:55:36 +0000`, in UTC.
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
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
    fn formats_clf_time() {
        let at = UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(clf_time(at), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "29/Feb/2000:00:00:00 +0000"
        );
    }
}
