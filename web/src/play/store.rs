//! The playground's shared data: Envoy's rules (CAS values from one counter, CAS 0 overwrites,
//! no CAS check for a missing key) over a map the page can list, to show the ledger.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use retry_guard::ledger::{LedgerError, SharedStore};

/// The store, shared by the attempt and token tables.
#[derive(Default)]
pub struct PlayStore {
    map: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

impl PlayStore {
    /// Every (key, value) whose key starts with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.map
            .borrow()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }
}

/// A handle on the one store (each ledger table owns one).
#[derive(Clone, Default)]
pub struct Shared(pub Rc<PlayStore>);

impl SharedStore for Shared {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
        Ok(self.0.map.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
        let next = self.0.next_cas.get().wrapping_add(1).max(1);
        self.0.next_cas.set(next);
        let mut map = self.0.map.borrow_mut();
        match map.get_mut(key) {
            Some(slot) => {
                if cas != 0 && cas != slot.1 {
                    return Err(LedgerError::CasMismatch);
                }
                *slot = (value.to_vec(), next);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}
