//! The header-map wire format (`proxy_get_header_map_pairs`): `HeaderPairs::parse` and the
//! allocation-free `HeaderPairs::lookup`. A map that parses serializes back to the bytes it
//! came from (up to where its last pair ends), and `lookup` finds what `get` finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::headers::{serialize, HeaderPairs};

fuzz_target!(|data: &[u8]| {
    let lookups = [
        "authorization",
        "idempotency-key",
        ":path",
        "",
        "x-request-id",
    ];
    let parsed = HeaderPairs::parse(data);
    for name in lookups {
        let found = HeaderPairs::lookup(data, name);
        if let Some(map) = &parsed {
            assert_eq!(found, map.get(name), "lookup vs get of {name:?}");
        }
    }
    let Some(map) = parsed else {
        return;
    };
    let _ = (map.len(), map.is_empty());
    let mut pairs = Vec::new();
    let mut names_utf8 = true;
    // Every pair, through the public API: walk the distinct names with `all`.
    let mut walk: Vec<(&[u8], &[u8])> = Vec::new();
    {
        // Re-read the wire format independently: count, lengths, NUL-terminated data.
        let count = u32::from_le_bytes(data.get(..4).map_or([0; 4], |b| b.try_into().unwrap()));
        let mut at = 4 + 8 * count as usize;
        for i in 0..count as usize {
            let len = |o: usize| {
                u32::from_le_bytes(data[4 + 8 * i + o..8 + 8 * i + o].try_into().unwrap()) as usize
            };
            let (nl, vl) = (len(0), len(4));
            let name = &data[at..at + nl];
            at += nl + 1;
            let value = &data[at..at + vl];
            at += vl + 1;
            walk.push((name, value));
        }
        assert_eq!(walk.len(), map.len());
        if !data.is_empty() {
            assert!(at <= data.len());
        }
    }
    for (name, value) in &walk {
        match std::str::from_utf8(name) {
            Ok(n) => {
                assert!(map.all(n).any(|v| v == *value));
                assert_eq!(map.count(n), walk.iter().filter(|(m, _)| m == name).count());
                pairs.push((n, *value));
            }
            Err(_) => names_utf8 = false,
        }
    }
    if names_utf8 && !data.is_empty() {
        let bytes = serialize(&pairs);
        assert_eq!(
            &data[..bytes.len()],
            &bytes[..],
            "serialize(parse(x)) is a prefix of x"
        );
    }
});
