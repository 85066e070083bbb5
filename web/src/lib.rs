//! retry-guard in the browser: the approver's console and the policy playground.
//!
//! The pages in `web/www/` load this crate, compiled to `wasm32-unknown-unknown` with
//! `wasm-bindgen`, as an ES module. Everything they show is computed by the filter's own policy
//! core (`retry_guard`): the configuration parser, the stream state machine and engine, the
//! retry-policy table, the problem documents, the audit lines and the confirmation signing and
//! verification. Nothing here re-implements a decision.
//!
//! Layers:
//! - the **functional core**, plain Rust, natively tested: [`problem_view`] (a pasted 428 in
//!   plain words), [`approve`] (key files, signing, the expiry choices), [`verify`] (would the
//!   filter accept this token, and if not why), [`config_input`] (JSON or Istio YAML to the
//!   plugin configuration, validated by the filter's parser), [`play`] (a sequence of calls
//!   run through the filter's stream state machine against an in-memory ledger) and
//!   [`examples`] (the configurations of `testdata/configs`, built in);
//! - [`bindings`]: the `#[wasm_bindgen]` surface the pages call; JSON text in and out, errors
//!   as `JsError` with a message that says what to change.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]
#![warn(missing_docs)]

pub mod approve;
pub mod bindings;
pub mod config_input;
pub mod examples;
pub mod play;
pub mod problem_view;
pub mod verify;

/// Seconds as a short duration in words: `14 min 5 s`, `2 h 3 min`, `45 s`.
pub fn duration_words(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) if s == 0 => format!("{m} min"),
        (0, _) => format!("{m} min {s} s"),
        (_, 0) => format!("{h} h"),
        _ => format!("{h} h {m} min"),
    }
}

/// Parses an RFC 3339 UTC time as the filter writes it (`2026-01-01T00:15:00Z`) to Unix
/// seconds; `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = text.trim().strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut tm = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (tm.next()??, tm.next()??, tm.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_the_filter_writer() {
        for t in [
            0u64,
            1_767_225_600,
            1_767_226_500,
            1_800_000_000,
            951_782_400,
        ] {
            assert_eq!(
                parse_rfc3339(&retry_guard::time::rfc3339(t)),
                Some(t),
                "{t}"
            );
        }
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(duration_words(45), "45 s");
        assert_eq!(duration_words(600), "10 min");
        assert_eq!(duration_words(845), "14 min 5 s");
        assert_eq!(duration_words(7380), "2 h 3 min");
    }
}
