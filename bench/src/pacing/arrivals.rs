//! How requests arrived, from their start times in Envoy's access log: the gaps between
//! them and the bursts they came in.

use retry_guard_e2e::{Error, Result};

use crate::measure::percentile;

/// Arrivals closer than this to the one before count as arriving together.
pub const TOGETHER_US: f64 = 20.0;

/// How requests arrived, from their start times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrivals {
    /// Requests logged.
    pub requests: usize,
    /// Their rate, from the first arrival to the last.
    pub per_second: f64,
    /// Median gap between arrivals (µs); an even pace leaves `1e6 / per_second`.
    pub gap_p50_us: f64,
    /// Share of arrivals less than [`TOGETHER_US`] after the one before.
    pub together: f64,
    /// Sizes of bursts (arrivals each less than [`TOGETHER_US`] after the one before; a lone
    /// request is a burst of 1), weighted by request: the burst the median request came in.
    pub burst_p50: f64,
    /// The 90th percentile of those burst sizes.
    pub burst_p90: f64,
    /// The largest burst.
    pub burst_max: f64,
}

/// Arrival statistics of start times in seconds (any order). `None` for fewer than two.
pub fn arrivals(times: &mut [f64]) -> Option<Arrivals> {
    if times.len() < 2 {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) * 1e6).collect();
    let span = times[times.len() - 1] - times[0];
    // The burst each request arrived in, one entry per request.
    let mut sizes = Vec::with_capacity(times.len());
    let mut run = 1usize;
    for g in gaps.iter().chain(std::iter::once(&f64::INFINITY)) {
        if *g < TOGETHER_US {
            run += 1;
        } else {
            sizes.extend(std::iter::repeat_n(run as f64, run));
            run = 1;
        }
    }
    sizes.sort_by(f64::total_cmp);
    let together = gaps.iter().filter(|g| **g < TOGETHER_US).count() as f64 / gaps.len() as f64;
    gaps.sort_by(f64::total_cmp);
    Some(Arrivals {
        requests: times.len(),
        per_second: if span > 0.0 {
            (times.len() - 1) as f64 / span
        } else {
            0.0
        },
        gap_p50_us: percentile(&gaps, 0.5),
        together,
        burst_p50: percentile(&sizes, 0.5),
        burst_p90: percentile(&sizes, 0.9),
        burst_max: sizes.last().copied().unwrap_or(0.0),
    })
}

/// Start times (seconds) from an access log of `%START_TIME(%s.%6f)%` lines.
pub fn start_times(log: &str) -> Result<Vec<f64>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<f64>()
                .map_err(|e| Error(format!("access log line {l:?} is not a start time: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_arrivals_have_no_bursts_and_bunched_ones_do() {
        // 1,000 requests 100 µs apart.
        let mut even: Vec<f64> = (0..1000).map(|i| 1.0 + f64::from(i) * 100e-6).collect();
        let a = arrivals(&mut even).unwrap();
        assert_eq!(a.requests, 1000);
        assert!((a.per_second - 10_000.0).abs() < 1.0, "{a:?}");
        assert!((a.gap_p50_us - 100.0).abs() < 0.01, "{a:?}");
        assert_eq!((a.together, a.burst_p50, a.burst_max), (0.0, 1.0, 1.0));
        // The same rate in bursts of 4 (5 µs apart) every 400 µs, given out of order.
        let mut bunched: Vec<f64> = (0..1000)
            .rev()
            .map(|i| 1.0 + f64::from(i / 4) * 400e-6 + f64::from(i % 4) * 5e-6)
            .collect();
        let b = arrivals(&mut bunched).unwrap();
        assert!((b.gap_p50_us - 5.0).abs() < 0.01, "{b:?}");
        assert!((b.together - 750.0 / 999.0).abs() < 1e-9, "{b:?}");
        assert_eq!((b.burst_p50, b.burst_p90, b.burst_max), (4.0, 4.0, 4.0));
        assert!(arrivals(&mut [1.0]).is_none());
    }

    #[test]
    fn start_times_are_read_from_the_access_log_and_bad_lines_are_named() {
        assert_eq!(
            start_times("1764400000.000100\n1764400000.000250\n\n").unwrap(),
            [1764400000.0001, 1764400000.00025]
        );
        let err = start_times("1764400000.1\n-\n").unwrap_err();
        assert!(err.0.contains("\"-\""), "{err}");
    }
}
