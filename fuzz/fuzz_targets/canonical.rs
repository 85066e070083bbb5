//! Canonical request identity (`canonical`): the request path, a form body or query string,
//! a JSON body, a content type, all as the client sent them. Each canonical form is a fixed
//! point (canonical of canonical is itself), and a canonical JSON text is JSON that
//! serde_json reads as the same document (numbers within a relative 1e-12).
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::canonical::{canonical_form, canonical_json, canonical_path, BodyForm};

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let p = canonical_path(text);
        if text.starts_with('/') && !text.contains(['?', '#']) {
            let again = canonical_path(&p.path);
            assert_eq!(again.path, p.path, "path of {text:?}");
        }
        assert!(text.contains(p.query.as_str()));
    }
    if let Some(form) = canonical_form(data) {
        assert_eq!(
            canonical_form(form.as_bytes()).as_deref(),
            Some(form.as_str())
        );
    }
    let _ = BodyForm::of_content_type(Some(data));
    for f in [BodyForm::Raw, BodyForm::Form, BodyForm::Json] {
        let _ = f.canonical(data);
    }
    if let Some(json) = canonical_json(data) {
        assert_eq!(
            canonical_json(json.as_bytes()).as_deref(),
            Some(json.as_str()),
            "{json:?}"
        );
        // serde_json refuses numbers beyond the f64 range, which are JSON all the same.
        let out_of_range = |e: &serde_json::Error| e.to_string().starts_with("number out of range");
        let before: serde_json::Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) if out_of_range(&e) => return,
            Err(e) => panic!("canonical_json accepts what serde_json rejects: {e}"),
        };
        let after: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("canonical text {json:?} is not JSON: {e}"));
        assert!(same(&before, &after), "{before} vs {after}");
    }
});
