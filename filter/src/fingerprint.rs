//! Idempotency keys, body digests and request fingerprints.

use sha2::{Digest, Sha256};

use crate::b64;

/// What the idempotency key header held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// No header.
    Absent,
    /// A header that is not a valid key; the text says why.
    Invalid(&'static str),
    /// A valid key (structured-field string unquoted, or a bare token).
    Present(String),
}

impl KeyCheck {
    /// The key, when valid.
    pub fn key(&self) -> Option<&str> {
        match self {
            KeyCheck::Present(k) => Some(k),
            _ => None,
        }
    }
}

/// Parses the idempotency key header value: a Structured Field sf-string (`"abc"`, with `\"`
/// and `\\` escapes) or a bare token. Empty, longer than `max_len`, or containing anything but
/// visible ASCII (0x21–0x7E; so no space, even inside quotes, though RFC 8941 would allow it)
/// is invalid.
pub fn parse_idempotency_key(raw: Option<&[u8]>, max_len: usize) -> KeyCheck {
    let Some(raw) = raw else {
        return KeyCheck::Absent;
    };
    let raw = trim_ows(raw);
    // Quoted keys may carry escapes, so the raw length bounds the work either way.
    if raw.len() > max_len.saturating_add(2).saturating_mul(2) {
        return KeyCheck::Invalid("longer than max_key_length");
    }
    let key = if let Some(inner) = raw.strip_prefix(b"\"") {
        let Some(inner) = inner.strip_suffix(b"\"") else {
            return KeyCheck::Invalid("unterminated structured-field string");
        };
        let mut out = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        while let Some(&b) = bytes.next() {
            match b {
                b'\\' => match bytes.next() {
                    Some(&e @ (b'"' | b'\\')) => out.push(e),
                    _ => return KeyCheck::Invalid("bad escape in structured-field string"),
                },
                b'"' => return KeyCheck::Invalid("unescaped quote in structured-field string"),
                0x21..=0x7e => out.push(b),
                _ => return KeyCheck::Invalid("not visible ASCII"),
            }
        }
        out
    } else {
        if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return KeyCheck::Invalid("not visible ASCII");
        }
        raw.to_vec()
    };
    if key.is_empty() {
        return KeyCheck::Invalid("empty");
    }
    if key.len() > max_len {
        return KeyCheck::Invalid("longer than max_key_length");
    }
    match String::from_utf8(key) {
        Ok(k) => KeyCheck::Present(k),
        Err(_) => KeyCheck::Invalid("not visible ASCII"),
    }
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// SHA-256 of a request body.
pub type BodyDigest = [u8; 32];

/// SHA-256 of the empty body (`e3b0c442…b855`), a constant: most guarded requests without a
/// body (and every `read_only` one) need no hashing for it.
pub const EMPTY_BODY_DIGEST: BodyDigest = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// SHA-256 of the empty body.
pub fn empty_body_digest() -> BodyDigest {
    EMPTY_BODY_DIGEST
}

/// The identity of a guarded request: SHA-256 over a length-prefixed encoding of route,
/// principal and either the idempotency key or method + `:path` + body digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Computes the fingerprint.
    pub fn compute(
        route: &str,
        principal: &str,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: &BodyDigest,
    ) -> Fingerprint {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(b"retry-guard/fp/v1");
        field(route.as_bytes());
        field(principal.as_bytes());
        match key {
            Some(k) => {
                field(b"key");
                field(k.as_bytes());
            }
            None => {
                field(b"natural");
                field(method.as_bytes());
                field(path.as_bytes());
                field(body);
            }
        }
        Fingerprint(h.finalize().into())
    }

    /// base64url without padding: how the fingerprint is shown and signed.
    pub fn text(&self) -> String {
        b64::url(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> KeyCheck {
        parse_idempotency_key(Some(s.as_bytes()), 16)
    }

    #[test]
    fn keys_quoted_and_bare() {
        assert_eq!(parse_idempotency_key(None, 16), KeyCheck::Absent);
        assert_eq!(key("abc-123"), KeyCheck::Present("abc-123".into()));
        assert_eq!(key("\"abc-123\""), KeyCheck::Present("abc-123".into()));
        assert_eq!(
            key("\"abc 123\""),
            KeyCheck::Invalid("not visible ASCII"),
            "space is not visible"
        );
        assert_eq!(key(r#""a\"b""#), KeyCheck::Present("a\"b".into()));
        assert_eq!(key(" abc "), KeyCheck::Present("abc".into()));
    }

    #[test]
    fn bad_keys_are_invalid() {
        for bad in [
            "",
            "\"\"",
            "a b",
            "\"abc",
            "\"a\\x\"",
            "ключ",
            "a\u{7f}",
            &"x".repeat(17),
        ] {
            assert!(matches!(key(bad), KeyCheck::Invalid(_)), "{bad:?}");
        }
        assert!(matches!(
            parse_idempotency_key(Some(&[0xff, 0x41]), 16),
            KeyCheck::Invalid(_)
        ));
        assert!(matches!(
            parse_idempotency_key(Some(&vec![b'a'; 1 << 20]), 255),
            KeyCheck::Invalid("longer than max_key_length")
        ));
    }

    #[test]
    fn the_empty_digest_constant_is_sha256_of_nothing() {
        let computed: BodyDigest = Sha256::digest(b"").into();
        assert_eq!(EMPTY_BODY_DIGEST, computed);
    }

    #[test]
    fn fingerprint_depends_on_every_part() {
        let d = empty_body_digest();
        let base = Fingerprint::compute("r", "p", None, "POST", "/x", &d);
        assert_eq!(base, Fingerprint::compute("r", "p", None, "POST", "/x", &d));
        assert_ne!(
            base,
            Fingerprint::compute("r2", "p", None, "POST", "/x", &d)
        );
        assert_ne!(
            base,
            Fingerprint::compute("r", "p2", None, "POST", "/x", &d)
        );
        assert_ne!(base, Fingerprint::compute("r", "p", None, "PUT", "/x", &d));
        assert_ne!(base, Fingerprint::compute("r", "p", None, "POST", "/y", &d));
        assert_ne!(
            base,
            Fingerprint::compute("r", "p", None, "POST", "/x", &[1; 32])
        );
        // With a key, method, path and body do not matter.
        let k = Fingerprint::compute("r", "p", Some("k"), "POST", "/x", &d);
        assert_eq!(
            k,
            Fingerprint::compute("r", "p", Some("k"), "PUT", "/y", &[1; 32])
        );
        // Length prefixes keep field boundaries apart.
        assert_ne!(
            Fingerprint::compute("ab", "c", None, "POST", "/x", &d),
            Fingerprint::compute("a", "bc", None, "POST", "/x", &d)
        );
        assert_eq!(base.text().len(), 43);
    }
}
