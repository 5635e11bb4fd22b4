//! Tables, medians, ratios and the `RESULT` line.

use crate::loadgen::Measurement;

/// Median of the finite values (NaN when there are none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Header of the per-run table.
pub fn print_run_header() {
    println!(
        "{:<5} {:<5} {:<6} {:>11} {:>9} {:>9} {:>9} {:>10} {:>6} {:>10} {:>6} {:>6}",
        "round",
        "scen",
        "server",
        "msgs/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "srv ns/msg",
        "srv %",
        "cli ns/msg",
        "cli %",
        "oth %"
    );
}

/// One row of the per-run table.
pub fn print_run_row(round: usize, scen: &str, server: &str, m: &Measurement) {
    let flag = if is_noisy(m) { " !" } else { "" };
    println!(
        "{:<5} {:<5} {:<6} {:>11.0} {:>9.2} {:>9.1} {:>9.1} {:>10.0} {:>6.1} {:>10.0} {:>6.1} {:>6.1}{flag}",
        round,
        scen,
        server,
        m.msgs_per_sec(),
        m.mb_per_sec(),
        m.p50.as_secs_f64() * 1e6,
        m.p99.as_secs_f64() * 1e6,
        m.server_ns_per_msg(),
        m.server_cpu_pct(),
        m.client_ns_per_msg(),
        m.client_cpu_pct(),
        m.other_cpu_pct(),
    );
}

/// Foreign CPU use (percent of one CPU) above which a run is flagged as disturbed.
pub const NOISY_OTHER_PCT: f64 = 10.0;

/// Whether other processes took a noticeable share of the benchmark CPUs during the run.
pub fn is_noisy(m: &Measurement) -> bool {
    m.other_cpu_pct() > NOISY_OTHER_PCT
}

/// A row for a run that failed.
pub fn print_run_error(round: usize, scen: &str, server: &str, err: &str) {
    println!("{round:<5} {scen:<5} {server:<6} FAILED: {err}");
}

/// Median over rounds of every column, for one (scenario, server).
pub fn print_median_row(scen: &str, server: &str, runs: &[&Measurement]) {
    let col = |f: fn(&Measurement) -> f64| median(&runs.iter().map(|m| f(m)).collect::<Vec<_>>());
    println!(
        "{:<5} {:<5} {:<6} {:>11.0} {:>9.2} {:>9.1} {:>9.1} {:>10.0} {:>6.1} {:>10.0} {:>6.1} {:>6.1}",
        "med",
        scen,
        server,
        col(Measurement::msgs_per_sec),
        col(Measurement::mb_per_sec),
        col(|m| m.p50.as_secs_f64() * 1e6),
        col(|m| m.p99.as_secs_f64() * 1e6),
        col(Measurement::server_ns_per_msg),
        col(Measurement::server_cpu_pct),
        col(Measurement::client_ns_per_msg),
        col(Measurement::client_cpu_pct),
        col(Measurement::other_cpu_pct),
    );
}

/// Formats a ratio with 3 decimals (`nan` when unknown, which `f64::from_str` accepts).
pub fn fmt_ratio(x: f64) -> String {
    if x.is_finite() { format!("{x:.3}") } else { "nan".to_string() }
}

/// Formats a figure with `prec` decimals (`nan` when unknown, as [`fmt_ratio`]).
pub fn fmt_num(x: f64, prec: usize) -> String {
    if x.is_finite() { format!("{x:.prec$}") } else { "nan".to_string() }
}

/// Prints `RESULT k=v k=v ...`.
pub fn print_result_line(pairs: &[(String, String)]) {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", body.join(" "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratio_format() {
        assert_eq!(fmt_ratio(1.23456), "1.235");
        assert_eq!(fmt_ratio(f64::NAN), "nan");
    }
}
