//! Differential: the filter's JSON reader (`json::parse`, used for the configuration, JWT
//! claims, confirmation payloads and etcd answers) against serde_json (`from_slice` into a
//! `Value`, the features the filter documents: no `float_roundtrip`, no `preserve_order`).
//! Both accept or both refuse; accepted documents are the same tree (numbers of the same
//! kind and bits); refusals have serde_json's message and position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::json::{self, Number, Value};

fn same(ours: &Value, theirs: &serde_json::Value) -> bool {
    use serde_json::Value as S;
    match (ours, theirs) {
        (Value::Null, S::Null) => true,
        (Value::Bool(a), S::Bool(b)) => a == b,
        (Value::String(a), S::String(b)) => a == b,
        (Value::Number(n), S::Number(m)) => match n {
            Number::PosInt(a) => m.as_u64() == Some(*a),
            Number::NegInt(a) => !m.is_u64() && m.as_i64() == Some(*a),
            Number::Float(a) => m.is_f64() && m.as_f64().map(f64::to_bits) == Some(a.to_bits()),
            // Only `parse_exact` (canonical JSON) makes exact numbers, never `parse`.
            Number::Exact(_) => false,
        },
        (Value::Array(a), S::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), S::Object(b)) => {
            // Both sorted by name, the last of equal names kept.
            a.len() == b.len() && a.iter().zip(b).all(|((k, v), (l, w))| k == l && same(v, w))
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = json::parse(data);
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same(a, b), "{data:?}: {a:?} vs {b}"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{data:?}"),
        _ => panic!("{data:?}: ours {ours:?}, serde_json {theirs:?}"),
    }
});
