//! Reading the filter's in-process ledger back out of shared data, for checks: the attempt
//! entries of every set key (format of `retry_guard::ledger`).

use retry_guard::ledger::{Entry, Set, KEY_PREFIX, TOKEN_KEY_PREFIX};

use crate::shared::{lock, Shared};

/// What the ledger holds now, read from shared data.
#[derive(Clone, Debug, Default)]
pub struct LedgerView {
    /// Attempt entries (every set of the attempts table).
    pub attempts: Vec<Entry>,
    /// Opaque-token sighting entries.
    pub tokens: Vec<Entry>,
    /// Keys whose value is not a set of the ledger's format (should be none).
    pub undecodable: Vec<String>,
    /// Shared-data keys in all.
    pub keys: usize,
    /// The largest value in bytes.
    pub largest_value: usize,
}

impl LedgerView {
    /// Reads the ledger of `shared`.
    pub fn read(shared: &Shared) -> LedgerView {
        let data = lock(&shared.data);
        let mut view = LedgerView {
            keys: data.len(),
            ..LedgerView::default()
        };
        for (key, value, _) in data.iter() {
            view.largest_value = view.largest_value.max(value.len());
            let key = String::from_utf8_lossy(key);
            let table = if key.starts_with(KEY_PREFIX) {
                &mut view.attempts
            } else if key.starts_with(TOKEN_KEY_PREFIX) {
                &mut view.tokens
            } else {
                continue;
            };
            match Set::decode(value) {
                Some(set) => table.extend(set.0),
                None => view.undecodable.push(key.into_owned()),
            }
        }
        view
    }

    /// The attempt entry of a fingerprint as the 428 and audit lines print it (base64url),
    /// if one is stored.
    pub fn attempt(&self, fingerprint: &str) -> Option<&Entry> {
        self.attempts
            .iter()
            .find(|e| retry_guard::b64::url(&e.id) == fingerprint)
    }
}
