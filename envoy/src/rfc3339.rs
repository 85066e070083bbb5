//! Parses RFC 3339 timestamps (`2026-11-28T11:27:54Z`, `...54.123+01:00`) to Unix seconds,
//! so the tests can check `first_seen` and `window_ends` of the problem documents.

use crate::{Error, Result};

fn num(s: &str, what: &str, full: &str) -> Result<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error(format!("{full:?}: bad {what}")));
    }
    s.parse()
        .map_err(|_| Error(format!("{full:?}: bad {what}")))
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 `date-time` to whole Unix seconds (fractions dropped).
pub fn parse(s: &str) -> Result<i64> {
    let bad = || Error(format!("{s:?} is not an RFC 3339 date-time"));
    if !s.is_ascii() || s.len() < 20 {
        return Err(bad());
    }
    let b = s.as_bytes();
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let year = num(&s[0..4], "year", s)?;
    let month = num(&s[5..7], "month", s)?;
    let day = num(&s[8..10], "day", s)?;
    let hour = num(&s[11..13], "hour", s)?;
    let minute = num(&s[14..16], "minute", s)?;
    let second = num(&s[17..19], "second", s)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            if &rest[3..4] != ":" {
                return Err(bad());
            }
            let oh = num(&rest[1..3], "offset hours", s)?;
            let om = num(&rest[4..6], "offset minutes", s)?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_utc_fractions_and_offsets() {
        assert_eq!(parse("1970-01-01T00:00:00Z").ok(), Some(0));
        assert_eq!(parse("2023-11-14T22:13:20Z").ok(), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14T22:13:20.999Z").ok(), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14T23:13:20+01:00").ok(), Some(1_700_000_000));
        assert_eq!(parse("2000-02-29T00:00:00Z").ok(), Some(951_782_400));
    }

    #[test]
    fn rejects_other_shapes() {
        for s in [
            "",
            "2023-11-14",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20",
            "1700000000",
        ] {
            assert!(parse(s).is_err(), "{s:?} should not parse");
        }
    }
}
