//! etcd answers (`etcd::parse_answer`, `etcd::parse_grant`): whatever comes back from the
//! cluster ledger's JSON gateway (or from whatever answers on its address), for a read, a
//! conditional put and a lease grant. A revision it reports is positive; error text for the
//! operator's log is printable ASCII and bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::etcd::{parse_answer, parse_grant, EtcdError, Expect, LedgerOp, OpResult};
use retry_guard::ledger::Entry;
use retry_guard_fuzz::Bytes;

fn check_error(e: &EtcdError) {
    if let EtcdError::Status(_, text) = e {
        assert!(text.len() <= 203, "{text:?}");
        assert!(
            text.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{text:?}"
        );
    }
    let _ = e.to_string();
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let flags = input.u8();
    let status = input.u16();
    let body = input.rest();
    let status = match flags & 3 {
        0 => Some(200),
        1 => Some(status),
        2 => None,
        _ => Some(503),
    };
    let entry = Entry::from_bytes(&[0; retry_guard::ledger::ENTRY_BYTES]).unwrap();
    let ops = [
        LedgerOp::Read {
            key: "retry-guard/a/x".into(),
        },
        LedgerOp::Put {
            key: "retry-guard/a/x".into(),
            expect: Expect::Absent,
            entry: entry.clone(),
            lease: 7,
        },
        LedgerOp::Put {
            key: "retry-guard/a/x".into(),
            expect: Expect::Revision(9),
            entry,
            lease: 7,
        },
    ];
    for op in &ops {
        match parse_answer(op, status, body) {
            Ok(OpResult::Written { revision }) => {
                assert!(revision > 0);
                assert!(matches!(op, LedgerOp::Put { .. }));
            }
            Ok(OpResult::Current(c)) => {
                assert!(c.revision.is_none_or(|r| r > 0));
                if c.entry.is_some() {
                    assert!(c.revision.is_some());
                }
                let _ = c.expect();
            }
            Err(e) => check_error(&e),
        }
    }
    if let Err(e) = parse_grant(status, body) {
        check_error(&e);
    }
});
