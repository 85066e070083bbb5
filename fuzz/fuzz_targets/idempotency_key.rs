//! Idempotency keys (`fingerprint::parse_idempotency_key`): a structured-field string or a
//! bare token. A key it accepts is 1..=max_len visible ASCII; a bare key is the header value
//! as sent (without the whitespace around it) and has no comma.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::fingerprint::{parse_idempotency_key, KeyCheck};
use retry_guard_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let flags = input.u8();
    let max_len = usize::from(input.u16()) % 8193;
    let raw = input.rest();
    let header = (flags & 1 == 0).then_some(raw);
    match parse_idempotency_key(header, max_len) {
        KeyCheck::Absent => assert!(header.is_none()),
        KeyCheck::Invalid(why) => assert!(!why.is_empty()),
        KeyCheck::Present(key) => {
            assert!(
                !key.is_empty() && key.len() <= max_len,
                "{key:?} vs {max_len}"
            );
            assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{key:?}");
            let trimmed =
                raw.iter()
                    .position(|b| !matches!(b, b' ' | b'\t'))
                    .map_or(&[][..], |s| {
                        let e = raw
                            .iter()
                            .rposition(|b| !matches!(b, b' ' | b'\t'))
                            .unwrap();
                        &raw[s..=e]
                    });
            if trimmed.first() != Some(&b'"') {
                assert_eq!(key.as_bytes(), trimmed);
                assert!(!key.contains(','));
            } else {
                // The quoted form: the key quoted again (escaping `"` and `\`) is the value.
                let mut quoted = String::from("\"");
                for c in key.chars() {
                    if c == '"' || c == '\\' {
                        quoted.push('\\');
                    }
                    quoted.push(c);
                }
                quoted.push('"');
                assert_eq!(quoted.as_bytes(), trimmed);
            }
        }
    }
});
