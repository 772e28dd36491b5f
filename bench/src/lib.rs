//! The harness's measuring and reporting: reading wrk's output, taking medians, and writing
//! the Markdown report.

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkRun {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub transfer_mb_per_sec: f64,
    pub requests: u64,
    /// Responses that were not 2xx or 3xx, and socket errors.
    pub errors: u64,
}

/// Reads the summary that `wrk --latency` prints.
pub fn parse_wrk(output: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut saw_rate = false;
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rate] => {
                run.requests_per_sec = rate.parse().ok()?;
                saw_rate = true;
            }
            ["Transfer/sec:", size] => run.transfer_mb_per_sec = megabytes(size)?,
            ["50%", latency] => run.p50_ms = milliseconds(latency)?,
            ["99%", latency] => run.p99_ms = milliseconds(latency)?,
            [count, "requests", "in", ..] => run.requests = count.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                run.errors += count.parse::<u64>().ok()?
            }
            ["Socket", "errors:", rest @ ..] => {
                // `connect 0, read 0, write 0, timeout 0`
                run.errors += rest
                    .iter()
                    .filter_map(|field| field.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    saw_rate.then_some(run)
}

/// `1.50ms`, `250.00us`, `2.01s` in milliseconds.
fn milliseconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

/// `12.34MB`, `800.00KB`, `1.20GB` in megabytes (wrk counts in powers of 1024).
fn megabytes(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "B" => value / 1024.0 / 1024.0,
        "KB" => value / 1024.0,
        "MB" => value,
        "GB" => value * 1024.0,
        _ => return None,
    })
}

/// The median of `values`; 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One row of the results table; a figure not measured for a scenario stays `None`.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub requests_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mb_per_sec: Option<f64>,
    /// Anything else worth saying: CPU per request, RSS, start time.
    pub notes: String,
}

/// Where and when the figures were taken.
pub struct Machine {
    pub cores: usize,
    pub date: String,
    pub revision: String,
    pub mode: String,
}

/// The report: the table of scenarios, then the ratios computed within this run.
pub fn render(machine: &Machine, rows: &[Row], ratios: &[(String, f64, String)]) -> String {
    let figure = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "".to_owned(), |value| format!("{value:.decimals$}"))
    };
    let mut out = format!(
        "# wasm-gw benchmark results\n\n{} cores, {}, revision {}, {} run. Each figure is the \
         median of the runs; ratios are computed within this run.\n\n",
        machine.cores, machine.date, machine.revision, machine.mode
    );
    out.push_str("| scenario | req/s | p50 ms | p99 ms | MB/s | notes |\n");
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.scenario,
            figure(row.requests_per_sec, 0),
            figure(row.p50_ms, 2),
            figure(row.p99_ms, 2),
            figure(row.mb_per_sec, 1),
            row.notes
        ));
    }
    if !ratios.is_empty() {
        out.push_str("\n| ratio | value | target | met |\n|---|---:|---|---|\n");
        for (name, value, target) in ratios {
            let met = match meets(*value, target) {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            out.push_str(&format!("| {name} | {value:.2} | {target} | {met} |\n"));
        }
    }
    out
}

/// Whether `value` meets a target written `≥ X` or `≤ X`; `None` for one only reported.
pub fn meets(value: f64, target: &str) -> Option<bool> {
    let (at_least, bound) = if let Some(bound) = target.strip_prefix("≥ ") {
        (true, bound)
    } else {
        (false, target.strip_prefix("≤ ")?)
    };
    let bound: f64 = bound.split_whitespace().next()?.parse().ok()?;
    Some(if at_least {
        value >= bound
    } else {
        value <= bound
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 3s test @ http://127.0.0.1:8000/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  500.00us  20.00ms   90.00%
    Req/Sec    30.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    1.80ms
     99%    3.50ms
  180000 requests in 3.00s, 25.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  60000.00
Transfer/sec:      8.33MB
";

    #[test]
    fn reads_wrk_output() {
        let run = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(run.requests_per_sec, 60000.0);
        assert_eq!(run.p50_ms, 0.85);
        assert_eq!(run.p99_ms, 3.5);
        assert_eq!(run.transfer_mb_per_sec, 8.33);
        assert_eq!(run.requests, 180_000);
        assert_eq!(run.errors, 6);
        assert_eq!(parse_wrk("wrk: connection refused"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn renders_a_report() {
        let machine = Machine {
            cores: 2,
            date: "2026-11-24".into(),
            revision: "abc1234".into(),
            mode: "quick".into(),
        };
        let rows = [Row {
            scenario: "hello".into(),
            requests_per_sec: Some(1234.4),
            p99_ms: Some(1.234),
            notes: "12.0 µs CPU/request".into(),
            ..Row::default()
        }];
        let ratios = [("Wasm / native".to_owned(), 0.912, "≥ 0.90".to_owned())];
        let report = render(&machine, &rows, &ratios);
        assert!(report.contains("2 cores, 2026-11-24, revision abc1234, quick run."));
        assert!(report.contains("| hello | 1234 |  | 1.23 |  | 12.0 µs CPU/request |"));
        assert!(report.contains("| Wasm / native | 0.91 | ≥ 0.90 | yes |"));
    }

    #[test]
    fn targets_are_met_or_not() {
        assert_eq!(meets(0.91, "≥ 0.90"), Some(true));
        assert_eq!(meets(0.89, "≥ 0.90"), Some(false));
        assert_eq!(meets(3.2, "≥ 3"), Some(true));
        assert_eq!(meets(16.0, "≤ 15 µs"), Some(false));
        assert_eq!(meets(1.0, "≈ 1 (under 5%)"), None);
        assert_eq!(meets(0.5, "reported"), None);
    }
}
