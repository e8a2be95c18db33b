//! Metrics of a load run: per-phase statistics (HDR latencies, throughput,
//! errors by class, acquire vs operation time, per-second timeline), checks
//! that fail with the numbers in the message, the resource monitor and leak
//! helpers.
//!
//! Metric names a phase records (see [`PhaseStats::record_metrics`]):
//! `<prefix>.p50_ms` .. `<prefix>.p999_ms`, `.max_ms`, `.mean_ms`,
//! `.throughput_ops_s`, `.ok`, `.errors.total`, `.errors.<class>`,
//! `.error_rate_pct`, `.cancelled`, and where measured `.acquire.*_ms`,
//! `.op.*_ms`, `.service.*_ms`, `.send_lag.*_ms`, `.send_rate_ops_s`, `.missed`.

mod check;
pub mod hist;
mod resource;
mod series;
mod stats;

pub use check::{check_at_least, check_at_most, BudgetExceeded};
pub use hist::PhaseHistograms;
pub use resource::{process_snapshot, MonitorBuilder, ProcessSnapshot, ResourceMonitor, ResourceSample};
pub use series::{mean, stddev, variance, Growth, Plateau, Point, Series, Unit};
pub use stats::{
    ErrorCounts, ErrorSample, Latency, LatencyHistogram, PhaseStats, Quantile, Report, TimelineRow, DISTRIBUTION,
};

pub(crate) use stats::PhaseInputs;

/// A number with about three significant digits and no trailing zeros:
/// `12.4`, `10`, `0.0123`, `1234`.
pub(crate) fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_three_significant_digits() {
        assert_eq!(fmt_num(12.44), "12.4");
        assert_eq!(fmt_num(10.0), "10");
        assert_eq!(fmt_num(0.01234), "0.0123");
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-1.5), "-1.5");
        assert_eq!(fmt_num(99.96), "100");
    }
}
