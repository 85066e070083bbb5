//! Time formatting without a date library: RFC 3339 timestamps from Unix seconds.

/// Formats Unix seconds as an RFC 3339 UTC timestamp, e.g. `2026-11-28T11:16:26Z`.
///
/// Values past the year 9999 are clamped to `9999-12-31T23:59:59Z` so the output always has
/// the fixed RFC 3339 shape.
pub fn rfc3339(unix_seconds: u64) -> String {
    let mut out = String::with_capacity(20);
    push_rfc3339(&mut out, unix_seconds);
    out
}

/// Appends [`rfc3339`]`(unix_seconds)` to `out` (no allocation of its own).
pub fn push_rfc3339(out: &mut String, unix_seconds: u64) {
    const MAX: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = unix_seconds.min(MAX);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // Written digit by digit: `format!` costs several times more on the hot path.
    let digit = |v: u64, place: u64| b'0' + ((v / place) % 10) as u8;
    let two = |v: u64| [digit(v, 10), digit(v, 1)];
    let [y0, y1, y2, y3] = [digit(y, 1000), digit(y, 100), digit(y, 10), digit(y, 1)];
    let [mo0, mo1] = two(m);
    let [d0, d1] = two(d);
    let [h0, h1] = two(rem / 3600);
    let [mi0, mi1] = two((rem % 3600) / 60);
    let [s0, s1] = two(rem % 60);
    let text = [
        y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1,
        b'Z',
    ];
    out.push_str(std::str::from_utf8(&text).unwrap_or("9999-12-31T23:59:59Z"));
}

/// Converts days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_864_586), "2026-11-28T11:16:26Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
