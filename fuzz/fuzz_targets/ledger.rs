//! Ledger bytes (`ledger::Entry::from_bytes`, `ledger::Set::decode`): shared data or an etcd
//! value another VM, replica or version wrote. Decoding is stable (what decodes re-encodes to
//! bytes that decode the same), a set's update keeps it within its ways and holds the new
//! entry, and a credential record's holder reads back as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::ledger::{Entry, Set, ENTRY_BYTES, HOLDER_BYTES, WAYS};
use retry_guard_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let entry = Entry::from_bytes(data);
    if let Some(e) = &entry {
        assert_eq!(Entry::from_bytes(&e.to_bytes()).as_ref(), Some(e));
        let _ = (
            e.holder(),
            e.expires_at_ms(u64::MAX),
            e.is_live(u64::MAX, 1),
        );
    }
    if let Some(set) = Set::decode(data) {
        assert!(set.0.len() <= WAYS);
        assert_eq!(Set::decode(&set.encode()).as_ref(), Some(&set));
    }
    // A set from the front, an entry to write from what follows, then now, window and a
    // holder identity.
    let mut input = Bytes(data);
    let set_len = usize::from(input.u8() % (WAYS as u8 + 1));
    let mut set = Vec::new();
    for _ in 0..set_len {
        if let Some(e) = Entry::from_bytes(&input.array::<ENTRY_BYTES>()) {
            set.push(e);
        }
    }
    let set = Set(set);
    let Some(mut entry) = Entry::from_bytes(&input.array::<ENTRY_BYTES>()) else {
        return;
    };
    let now = input.u64();
    let window = input.u64();
    match set.with(&entry, now, window) {
        Some((new, _evicted)) => {
            assert!(new.0.len() <= WAYS);
            assert_eq!(new.0.iter().filter(|e| e.id == entry.id).count(), 1);
            assert!(new.0.contains(&entry));
        }
        None => {
            // Refused only when the set is full and every other live entry is sensitive or an
            // attempt in flight.
            let live: Vec<_> = set
                .0
                .iter()
                .filter(|e| e.id != entry.id && e.is_live(now, window))
                .collect();
            assert!(
                live.len() >= WAYS
                    && live
                        .iter()
                        .all(|e| e.sensitive || e.outcome == retry_guard::policy::Outcome::InFlight)
            );
        }
    }
    let [identity] = input.strings::<1>();
    entry.set_holder(&identity);
    assert!(entry.holder_is(&identity));
    let holder = entry.holder();
    if identity.is_empty() {
        assert_eq!(holder, None);
    } else if identity.len() <= HOLDER_BYTES {
        assert_eq!(holder.as_deref(), Some(identity.as_str()));
    } else {
        let h = holder.unwrap();
        let kept = h.strip_suffix('…').unwrap();
        assert!(identity.starts_with(kept) && kept.len() <= HOLDER_BYTES);
    }
    let again = Entry::from_bytes(&entry.to_bytes()).unwrap();
    assert!(again.holder_is(&identity));
});
