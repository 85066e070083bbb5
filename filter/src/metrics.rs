//! Metric names: the one list of counters the filter defines. Envoy shows each as
//! `wasmcustom.<name>`.
//!
//! Most counters are one per plugin ([`Counter::ALL`]); the tuning evidence is one family per
//! route ([`RouteCounter`], named by [`route_counter_name`]).

use crate::engine::Verdict;

/// Gauge: the largest wasm linear memory of any VM of the plugin, in bytes (wasm memory never
/// shrinks, so this is each VM's high-water mark; refreshed on every tick, every 5 s).
pub const MEMORY_GAUGE: &str = "retry_guard.vm.memory_bytes";

named_enum! {
    /// Something other than a decision that the filter counts; the name is the metric's.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Event {
        /// A shadow-mode decision that would have blocked.
        ShadowWouldBlock => "retry_guard.shadow.would_block",
        /// A stale token was stripped.
        TokenStripped => "retry_guard.token.stripped",
        /// A stale token was rejected with 401.
        TokenRejected => "retry_guard.token.rejected",
        /// A confirmation was sent and refused.
        ConfirmationInvalid => "retry_guard.confirmation.invalid",
        /// A bearer credential was presented by a second workload identity within the window.
        CredentialShared => "retry_guard.credential.shared",
        /// A live ledger entry was evicted to make room.
        LedgerEvicted => "retry_guard.ledger.evicted",
        /// The in-process ledger refused a new record: its set held only live entries of
        /// sensitive routes. The route's fail policy decided.
        LedgerFull => "retry_guard.ledger.full",
        /// The ledger could not answer in time; the route's fail policy decided.
        LedgerUnavailable => "retry_guard.ledger.unavailable",
        /// Envoy's router sent a tracked request upstream more than once (its route retries
        /// behind the filter, and the filter could not stop it: shadow mode).
        RouterRetried => "retry_guard.router.retried",
    }
}

named_enum! {
    /// A counter kept per route (`<name>.route.<route name>`, [`route_counter_name`]): the
    /// evidence that tells retries from new calls on a route. The gap buckets count how long
    /// after the latest earlier attempt of the same fingerprint a request came (shadow mode
    /// too); [`RouteCounter::KeyRegenerated`] counts a client that sent the same body under a
    /// new idempotency key soon after.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RouteCounter {
        /// A repeat at most 1 s after the earlier attempt.
        GapLe1s => "retry_guard.gap.le_1s",
        /// A repeat within 1–10 s.
        GapLe10s => "retry_guard.gap.le_10s",
        /// A repeat within 10–60 s.
        GapLe60s => "retry_guard.gap.le_60s",
        /// A repeat within 1–10 minutes.
        GapLe600s => "retry_guard.gap.le_600s",
        /// A repeat more than 10 minutes after the earlier attempt.
        GapGt600s => "retry_guard.gap.gt_600s",
        /// A keyed request with the body, method, path and principal of an attempt under
        /// another idempotency key at most
        /// [`KEY_REGENERATION_SECONDS`](crate::engine::KEY_REGENERATION_SECONDS) earlier.
        KeyRegenerated => "retry_guard.key.regenerated",
    }
}

impl RouteCounter {
    /// The gap bucket of a repeat `ms` milliseconds after the earlier attempt.
    pub fn gap(ms: u64) -> RouteCounter {
        match ms {
            0..=1_000 => RouteCounter::GapLe1s,
            1_001..=10_000 => RouteCounter::GapLe10s,
            10_001..=60_000 => RouteCounter::GapLe60s,
            60_001..=600_000 => RouteCounter::GapLe600s,
            _ => RouteCounter::GapGt600s,
        }
    }
}

/// The metric name of `counter` for the route named `route`: `<counter>.route.<route>`, the
/// route name with every byte other than ASCII letters, digits, `_` and `-` written `_` (a dot
/// would split the name for Envoy's tag extraction).
pub fn route_counter_name(counter: RouteCounter, route: &str) -> String {
    let mut name = Vec::from(counter.name());
    name.extend_from_slice(b".route.");
    for &b in route.as_bytes() {
        name.push(if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            b
        } else {
            b'_'
        });
    }
    String::from_utf8(name).unwrap_or_default()
}

/// A counter the filter increments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `retry_guard.decision.<decision>`, one per decision.
    Decision(Verdict),
    /// Something else that happened.
    Event(Event),
    /// A per-route counter of the route at this position in the configuration.
    Route(usize, RouteCounter),
}

impl Counter {
    /// Every counter, in [`Counter::index`] order: one per [`Verdict`], in [`Verdict::ALL`]
    /// order, then one per [`Event`].
    // Indexing in a constant is evaluated by the compiler: out of range fails the build, it
    // cannot panic at run time.
    #[allow(clippy::indexing_slicing)]
    pub const ALL: [Counter; Verdict::ALL.len() + Event::ALL.len()] = {
        let mut all =
            [Counter::Event(Event::ShadowWouldBlock); Verdict::ALL.len() + Event::ALL.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = match i.checked_sub(Verdict::ALL.len()) {
                None => Counter::Decision(Verdict::ALL[i]),
                Some(e) => Counter::Event(Event::ALL[e]),
            };
            i += 1;
        }
        all
    };

    /// Position among the metrics the plugin defines: [`Counter::ALL`], then each route's
    /// [`RouteCounter::ALL`] in route order.
    pub fn index(self) -> usize {
        match self {
            Counter::Decision(v) => v.index(),
            Counter::Event(e) => Verdict::ALL.len() + e.index(),
            Counter::Route(route, c) => {
                Counter::ALL.len() + route * RouteCounter::ALL.len() + c.index()
            }
        }
    }

    /// The metric name as defined with the host; a per-route counter's family name (the
    /// metric adds the route: [`route_counter_name`]).
    pub fn name(self) -> String {
        match self {
            Counter::Decision(v) => format!("retry_guard.decision.{}", v.name()),
            Counter::Event(e) => e.name().into(),
            Counter::Route(_, c) => c.name().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_positions_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        let mut names: Vec<String> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        assert!(names.contains(&"retry_guard.decision.confirm".to_string()));
        assert!(names.contains(&"retry_guard.token.stripped".to_string()));
    }

    #[test]
    fn route_counters_follow_the_plugin_counters_route_by_route() {
        let n = RouteCounter::ALL.len();
        assert_eq!(
            Counter::Route(0, RouteCounter::GapLe1s).index(),
            Counter::ALL.len()
        );
        assert_eq!(
            Counter::Route(2, RouteCounter::KeyRegenerated).index(),
            Counter::ALL.len() + 2 * n + n - 1
        );
        assert_eq!(
            route_counter_name(RouteCounter::GapLe10s, "oauth.token v2"),
            "retry_guard.gap.le_10s.route.oauth_token_v2"
        );
        let buckets: Vec<_> = [0, 1_000, 1_001, 10_000, 60_000, 600_000, 600_001]
            .map(RouteCounter::gap)
            .to_vec();
        assert_eq!(
            buckets,
            [
                RouteCounter::GapLe1s,
                RouteCounter::GapLe1s,
                RouteCounter::GapLe10s,
                RouteCounter::GapLe10s,
                RouteCounter::GapLe60s,
                RouteCounter::GapLe600s,
                RouteCounter::GapGt600s
            ]
        );
    }
}
