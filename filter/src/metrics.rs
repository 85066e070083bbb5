//! Metric names: the one list of counters the filter defines. Envoy shows each as
//! `wasmcustom.<name>`.

use crate::engine::Verdict;

/// Gauge: the largest wasm linear memory of any VM of the plugin, in bytes (wasm memory never
/// shrinks, so this is each VM's high-water mark; refreshed on every tick, every 5 s).
pub const MEMORY_GAUGE: &str = "retry_guard.vm.memory_bytes";

/// A counter the filter increments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `retry_guard.decision.<decision>`, one per decision.
    Decision(Verdict),
    /// A shadow-mode decision that would have blocked.
    ShadowWouldBlock,
    /// A stale token was stripped.
    TokenStripped,
    /// A stale token was rejected with 401.
    TokenRejected,
    /// A confirmation was sent and refused.
    ConfirmationInvalid,
    /// A live ledger entry was evicted to make room.
    LedgerEvicted,
}

impl Counter {
    /// Every counter, in [`Counter::index`] order.
    pub const ALL: [Counter; 14] = [
        Counter::Decision(Verdict::Allow),
        Counter::Decision(Verdict::Confirm),
        Counter::Decision(Verdict::Confirmed),
        Counter::Decision(Verdict::Conflict),
        Counter::Decision(Verdict::Deny),
        Counter::Decision(Verdict::Mismatch),
        Counter::Decision(Verdict::BadRequest),
        Counter::Decision(Verdict::TooLarge),
        Counter::Decision(Verdict::StaleToken),
        Counter::ShadowWouldBlock,
        Counter::TokenStripped,
        Counter::TokenRejected,
        Counter::ConfirmationInvalid,
        Counter::LedgerEvicted,
    ];

    /// Position in [`Counter::ALL`].
    pub fn index(self) -> usize {
        match self {
            Counter::Decision(v) => v.index(),
            Counter::ShadowWouldBlock => 9,
            Counter::TokenStripped => 10,
            Counter::TokenRejected => 11,
            Counter::ConfirmationInvalid => 12,
            Counter::LedgerEvicted => 13,
        }
    }

    /// The metric name as defined with the host.
    pub fn name(self) -> String {
        match self {
            Counter::Decision(v) => format!("retry_guard.decision.{}", v.name()),
            Counter::ShadowWouldBlock => "retry_guard.shadow.would_block".into(),
            Counter::TokenStripped => "retry_guard.token.stripped".into(),
            Counter::TokenRejected => "retry_guard.token.rejected".into(),
            Counter::ConfirmationInvalid => "retry_guard.confirmation.invalid".into(),
            Counter::LedgerEvicted => "retry_guard.ledger.evicted".into(),
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
    }
}
