//! Metric names: the one list of counters the filter defines. Envoy shows each as
//! `wasmcustom.<name>`.

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

/// A counter the filter increments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `retry_guard.decision.<decision>`, one per decision.
    Decision(Verdict),
    /// Something else that happened.
    Event(Event),
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

    /// Position in [`Counter::ALL`].
    pub fn index(self) -> usize {
        match self {
            Counter::Decision(v) => v.index(),
            Counter::Event(e) => Verdict::ALL.len() + e.index(),
        }
    }

    /// The metric name as defined with the host.
    pub fn name(self) -> String {
        match self {
            Counter::Decision(v) => format!("retry_guard.decision.{}", v.name()),
            Counter::Event(e) => e.name().into(),
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
}
