//! Idempotency keys, body digests and request fingerprints.

use sha2::{Digest, Sha256};

use crate::b64;
use crate::canonical::BodyForm;

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
/// is invalid, and so is a bare key with a comma (a list). Several header fields are refused
/// by the caller of this function.
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
        // `a,b` is a list to a server that joins repeated fields: no one key.
        if raw.contains(&b',') {
            return KeyCheck::Invalid("a list, not one key (a bare key has no comma)");
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

/// The version byte that starts every fingerprint's hashed encoding. Version 3 writes the
/// empty body as one byte instead of its 32-byte digest (a request without a body, every
/// `read_only` one, then often fits one SHA-256 block instead of two); version 2 (canonical
/// paths, query and bodies; LEB128 length prefixes) replaced version 1 (the raw `:path` and
/// body bytes, 8-byte length prefixes). Fingerprints of two versions never match (the first
/// byte hashed differs), so ledger entries and confirmations made before an upgrade are not
/// found after it.
pub const FINGERPRINT_VERSION: u8 = 3;

/// Natural key tag: the body is empty ([`EMPTY_BODY_DIGEST`]); no digest follows.
const BODY_EMPTY: u8 = 0;
/// Natural key tag: the 32-byte body digest follows.
const BODY_DIGEST: u8 = 1;

/// The natural key of a request without an idempotency key: what makes two requests the same
/// operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaturalKey<'a> {
    /// The request method.
    pub method: &'a str,
    /// The canonical path ([`crate::canonical::canonical_path`]).
    pub path: &'a str,
    /// The canonical query string; empty when the route ignores the query (the default).
    pub query: &'a str,
    /// The body digest ([`body_digest`]).
    pub body: &'a BodyDigest,
}

/// The identity of a guarded request: SHA-256 over a short, versioned encoding of route,
/// principal and either the idempotency key or the [`NaturalKey`].
///
/// The encoding (version [`FINGERPRINT_VERSION`]): the version byte; the route name and the
/// principal, each as a LEB128 length and its bytes; then either `k` and the key (length and
/// bytes), or `n`, the method, the canonical path and the canonical query (each length and
/// bytes), then the body: the byte 0 for the empty body, or the byte 1 and the 32-byte body
/// digest. Every variable field carries its length and every choice a tag, so the encoding
/// can be read back into its parts: no two requests share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// Where an encoding goes: the hash, or (in tests) a buffer.
trait Sink {
    fn put(&mut self, bytes: &[u8]);

    /// A variable field: its length (LEB128), then its bytes.
    fn field(&mut self, bytes: &[u8]) {
        let mut len = [0u8; 10];
        let n = leb128(bytes.len() as u64, &mut len);
        self.put(len.get(..n).unwrap_or(&[]));
        self.put(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

#[cfg(test)]
impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes the fingerprint's encoding (see [`Fingerprint`]) into `out`.
fn encode(
    out: &mut impl Sink,
    route: &str,
    principal: &str,
    key: Option<&str>,
    natural: &NaturalKey<'_>,
) {
    out.put(&[FINGERPRINT_VERSION]);
    out.field(route.as_bytes());
    out.field(principal.as_bytes());
    match key {
        Some(k) => {
            out.put(b"k");
            out.field(k.as_bytes());
        }
        None => {
            out.put(b"n");
            out.field(natural.method.as_bytes());
            out.field(natural.path.as_bytes());
            out.field(natural.query.as_bytes());
            if *natural.body == EMPTY_BODY_DIGEST {
                out.put(&[BODY_EMPTY]);
            } else {
                out.put(&[BODY_DIGEST]);
                out.put(natural.body);
            }
        }
    }
}

impl Fingerprint {
    /// Computes the fingerprint.
    pub fn compute(
        route: &str,
        principal: &str,
        key: Option<&str>,
        natural: &NaturalKey<'_>,
    ) -> Fingerprint {
        let mut h = Sha256::new();
        encode(&mut h, route, principal, key, natural);
        Fingerprint(h.finalize().into())
    }

    /// base64url without padding: how the fingerprint is shown and signed.
    pub fn text(&self) -> String {
        b64::url(&self.0)
    }
}

/// Writes `v` as unsigned LEB128 into `out`; returns the number of bytes written.
fn leb128(mut v: u64, out: &mut [u8; 10]) -> usize {
    let mut n = 0;
    for slot in out.iter_mut() {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        n += 1;
        if v == 0 {
            *slot = low;
            break;
        }
        *slot = low | 0x80;
    }
    n
}

/// Might `body` be JSON whatever its declared media type: does its first non-whitespace byte
/// open an object or an array? (Many servers decode a JSON body without looking at
/// `content-type`, so the caller must not be able to make it raw bytes by changing that
/// header.)
fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// The body digest of the natural key: SHA-256 of the body's canonical text, or of its bytes
/// as sent. `declared` is the form its `content-type` names. The canonical text is, in this
/// order: the canonical form of a declared form body; the canonical JSON of a declared JSON
/// body or of any body that opens an object or array. A body that is none of these, or does
/// not parse as what it is taken for, is digested as sent; the empty body is
/// [`EMPTY_BODY_DIGEST`].
pub fn body_digest(declared: BodyForm, body: &[u8]) -> BodyDigest {
    if body.is_empty() {
        return EMPTY_BODY_DIGEST;
    }
    let canonical = match declared {
        BodyForm::Form => BodyForm::Form.canonical(body),
        _ => None,
    }
    .or_else(|| {
        (declared == BodyForm::Json || looks_like_json(body))
            .then(|| BodyForm::Json.canonical(body))
            .flatten()
    });
    Sha256::digest(canonical.as_deref().unwrap_or(body)).into()
}

/// [`body_digest`] over a body that arrives in chunks. A body that may have a canonical form
/// (a declared form or JSON body, or one whose first chunk opens an object or array) is
/// buffered (at most `max_body_bytes`: larger bodies are refused before this) and digested
/// at the end; any other is hashed as it arrives, holding nothing.
#[derive(Clone, Debug)]
pub struct BodyDigester {
    declared: BodyForm,
    state: DigestState,
}

#[derive(Clone, Debug)]
enum DigestState {
    /// No byte yet.
    Start,
    /// Kept whole for [`body_digest`].
    Buffer(Vec<u8>),
    /// Raw bytes, hashed as they come.
    Hash(Sha256),
}

impl BodyDigester {
    /// A digester for a body of the declared form.
    pub fn new(declared: BodyForm) -> BodyDigester {
        BodyDigester {
            declared,
            state: DigestState::Start,
        }
    }

    /// The next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        match &mut self.state {
            DigestState::Start => {
                // A chunk of whitespace only cannot tell: keep it.
                let keep = self.declared != BodyForm::Raw
                    || looks_like_json(chunk)
                    || chunk.iter().all(u8::is_ascii_whitespace);
                self.state = if keep {
                    DigestState::Buffer(chunk.to_vec())
                } else {
                    DigestState::Hash(Sha256::new_with_prefix(chunk))
                };
            }
            DigestState::Buffer(b) => b.extend_from_slice(chunk),
            DigestState::Hash(h) => h.update(chunk),
        }
    }

    /// The digest of everything pushed.
    pub fn finish(self) -> BodyDigest {
        match self.state {
            DigestState::Start => EMPTY_BODY_DIGEST,
            DigestState::Buffer(b) => body_digest(self.declared, &b),
            DigestState::Hash(h) => h.finalize().into(),
        }
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
            "a,b",
            "\"a\", \"b\"",
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

    fn natural<'a>(method: &'a str, path: &'a str, body: &'a BodyDigest) -> NaturalKey<'a> {
        NaturalKey {
            method,
            path,
            query: "",
            body,
        }
    }

    #[test]
    fn fingerprint_depends_on_every_part() {
        let d = empty_body_digest();
        let one = [1; 32];
        let fp = |r: &str, p: &str, k: Option<&str>, n: &NaturalKey<'_>| {
            Fingerprint::compute(r, p, k, n)
        };
        let base_key = natural("POST", "/x", &d);
        let base = fp("r", "p", None, &base_key);
        assert_eq!(base, fp("r", "p", None, &natural("POST", "/x", &d)));
        assert_ne!(base, fp("r2", "p", None, &base_key));
        assert_ne!(base, fp("r", "p2", None, &base_key));
        assert_ne!(base, fp("r", "p", None, &natural("PUT", "/x", &d)));
        assert_ne!(base, fp("r", "p", None, &natural("POST", "/y", &d)));
        assert_ne!(base, fp("r", "p", None, &natural("POST", "/x", &one)));
        assert_ne!(
            base,
            fp(
                "r",
                "p",
                None,
                &NaturalKey {
                    query: "a=1",
                    ..base_key
                }
            )
        );
        // With a key, method, path and body do not matter.
        let k = fp("r", "p", Some("k"), &base_key);
        assert_eq!(k, fp("r", "p", Some("k"), &natural("PUT", "/y", &one)));
        assert_ne!(k, fp("r", "p", Some("k2"), &base_key));
        // Length prefixes keep field boundaries apart.
        assert_ne!(
            fp("ab", "c", None, &base_key),
            fp("a", "bc", None, &base_key)
        );
        assert_ne!(
            fp(
                "r",
                "p",
                None,
                &NaturalKey {
                    path: "/x",
                    query: "",
                    ..base_key
                }
            ),
            fp(
                "r",
                "p",
                None,
                &NaturalKey {
                    path: "/",
                    query: "x",
                    ..base_key
                }
            )
        );
        assert_eq!(base.text().len(), 43);
    }

    #[test]
    fn the_encoding_is_versioned_and_short() {
        // The hashed encoding of a typical read: version, route, principal, natural key, the
        // empty body as one byte.
        let d = empty_body_digest();
        let mut enc = vec![FINGERPRINT_VERSION];
        for f in ["reads", "bench-bot"] {
            enc.push(f.len() as u8);
            enc.extend_from_slice(f.as_bytes());
        }
        enc.push(b'n');
        for f in ["GET", "/v1/items", ""] {
            enc.push(f.len() as u8);
            enc.extend_from_slice(f.as_bytes());
        }
        enc.push(BODY_EMPTY);
        let want: [u8; 32] = Sha256::digest(&enc).into();
        let read = natural("GET", "/v1/items", &d);
        let got = Fingerprint::compute("reads", "bench-bot", None, &read);
        assert_eq!(got.0, want);
        // 34 bytes: one SHA-256 block (a message of up to 55 bytes fits), where version 2
        // wrote the empty body's 32-byte digest: 65 bytes, two blocks.
        assert_eq!(enc.len(), 34);
        // A body's digest follows its tag.
        let one = [1; 32];
        let mut with_body = encoding(
            "reads",
            "bench-bot",
            None,
            &natural("GET", "/v1/items", &one),
        );
        assert_eq!(with_body.len(), 34 + 32);
        assert_eq!(with_body.split_off(34), one);
        assert_eq!(with_body.last(), Some(&BODY_DIGEST));
        // Pinned: a change to the encoding changes every fingerprint, and must come with a
        // new version.
        assert_eq!(got.text(), PINNED_READ);
    }

    /// The fingerprint of the read in [`the_encoding_is_versioned_and_short`], version 3.
    const PINNED_READ: &str = "0YAgtdML4lPUm_Euv-9zZPCVKX-5AN27t6_vbMiGnNk";

    fn encoding(route: &str, principal: &str, key: Option<&str>, n: &NaturalKey<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, route, principal, key, n);
        out
    }

    /// An encoding's parts, read back: route, principal, then the key or the natural key
    /// (method, path, query, body digest).
    type Parts = (Vec<u8>, Vec<u8>, Result<Vec<u8>, [Vec<u8>; 4]>);

    /// Reads an encoding back into its parts; `None` unless it is exactly one encoding.
    fn decode(enc: &[u8]) -> Option<Parts> {
        fn byte(rest: &mut &[u8]) -> Option<u8> {
            let (&b, tail) = rest.split_first()?;
            *rest = tail;
            Some(b)
        }
        fn bytes(rest: &mut &[u8], n: usize) -> Option<Vec<u8>> {
            let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
            *rest = tail;
            Some(head.to_vec())
        }
        fn field(rest: &mut &[u8]) -> Option<Vec<u8>> {
            let mut len = 0usize;
            for shift in (0..64).step_by(7) {
                let b = byte(rest)?;
                len |= usize::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return bytes(rest, len);
                }
            }
            None
        }
        let mut rest = enc;
        if byte(&mut rest)? != FINGERPRINT_VERSION {
            return None;
        }
        let route = field(&mut rest)?;
        let principal = field(&mut rest)?;
        let tail = match byte(&mut rest)? {
            b'k' => Ok(field(&mut rest)?),
            b'n' => {
                let (m, p, q) = (field(&mut rest)?, field(&mut rest)?, field(&mut rest)?);
                let body = match byte(&mut rest)? {
                    BODY_EMPTY => EMPTY_BODY_DIGEST.to_vec(),
                    BODY_DIGEST => bytes(&mut rest, 32)?,
                    _ => return None,
                };
                Err([m, p, q, body])
            }
            _ => return None,
        };
        rest.is_empty().then_some((route, principal, tail))
    }

    /// Tricky field values: empty, bytes that read like tags and lengths, lengths around the
    /// one-byte LEB128 limit.
    fn tricky(next: &mut impl FnMut() -> u64) -> String {
        const PIECES: &[&str] = &["", "k", "n", "\u{0}", "\u{1}", "\u{7f}", "a", "/", "é"];
        match next() % 4 {
            0 => "x".repeat(120 + (next() % 20) as usize),
            _ => (0..next() % 5)
                .map(|_| crate::testing::pick(next, PIECES))
                .collect(),
        }
    }

    #[test]
    fn every_encoding_reads_back_into_its_parts() {
        // An encoding that can be read back into the request's parts is one no other request
        // has: the fingerprint hashes an injective encoding.
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1du64);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let (route, principal) = (tricky(&mut next), tricky(&mut next));
            let (method, path, query) = (tricky(&mut next), tricky(&mut next), tricky(&mut next));
            let body = match next() % 3 {
                0 => EMPTY_BODY_DIGEST,
                1 => [(next() % 3) as u8; 32],
                _ => [BODY_EMPTY; 32],
            };
            let key = next().is_multiple_of(3).then(|| tricky(&mut next));
            let n = NaturalKey {
                method: &method,
                path: &path,
                query: &query,
                body: &body,
            };
            let enc = encoding(&route, &principal, key.as_deref(), &n);
            let parts = decode(&enc).expect("an encoding reads back");
            let want: Parts = (
                route.clone().into_bytes(),
                principal.clone().into_bytes(),
                match &key {
                    Some(k) => Ok(k.clone().into_bytes()),
                    None => Err([
                        method.clone().into_bytes(),
                        path.clone().into_bytes(),
                        query.clone().into_bytes(),
                        body.to_vec(),
                    ]),
                },
            );
            assert_eq!(parts, want);
            let fp = Fingerprint::compute(&route, &principal, key.as_deref(), &n);
            assert_eq!(fp.0, <[u8; 32]>::from(Sha256::digest(&enc)));
            // Equal fingerprints only for equal parts.
            if let Some(earlier) = seen.insert(fp, want.clone()) {
                assert_eq!(earlier, want);
            }
        }
    }

    /// A request's (route, principal, key, method, path, query, body).
    type Request<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        &'a str,
        &'a str,
        &'a BodyDigest,
    );

    #[test]
    fn field_boundaries_cannot_be_moved() {
        let d = &EMPTY_BODY_DIGEST;
        let one = &[1; 32];
        // The same bytes cut into fields at other places, and tags that look like field
        // bytes: each pair is two requests with two encodings.
        let pairs: [(Request<'_>, Request<'_>); 8] = [
            (
                ("ab", "c", None, "GET", "/", "", d),
                ("a", "bc", None, "GET", "/", "", d),
            ),
            (
                ("r", "", Some("k"), "GET", "/", "", d),
                ("r", "k", None, "GET", "/", "", d),
            ),
            (
                ("r", "p", None, "GET", "/x", "", d),
                ("r", "p", None, "GET", "/", "x", d),
            ),
            (
                ("r", "p", None, "GE", "T/", "", d),
                ("r", "p", None, "GET", "/", "", d),
            ),
            (
                ("r", "p", Some("n"), "", "", "", d),
                ("r", "p", None, "", "", "", d),
            ),
            (
                ("r", "p", None, "GET", "/", "", d),
                ("r", "p", None, "GET", "/", "", one),
            ),
            (
                ("r", "p", None, "GET", "/", "\u{0}", d),
                ("r", "p", None, "GET", "/", "", d),
            ),
            (
                ("", "", Some(""), "", "", "", d),
                ("", "", None, "", "", "", d),
            ),
        ];
        let both = |(r, p, k, method, path, query, body): Request<'_>| {
            let n = NaturalKey {
                method,
                path,
                query,
                body,
            };
            (encoding(r, p, k, &n), Fingerprint::compute(r, p, k, &n))
        };
        for (a, b) in pairs {
            let ((enc_a, fp_a), (enc_b, fp_b)) = (both(a), both(b));
            assert_ne!(enc_a, enc_b, "{a:?} {b:?}");
            assert_ne!(fp_a, fp_b, "{a:?} {b:?}");
        }
        // A 128-byte field takes a two-byte length: still one reading.
        let long = "x".repeat(128);
        let (enc, _) = both((&long, "p", None, "GET", "/", "", d));
        assert_eq!(enc.get(1..3), Some(&[0x80, 0x01][..]));
        assert!(decode(&enc).is_some());
    }

    #[test]
    fn leb128_lengths() {
        let mut out = [0u8; 10];
        assert_eq!((leb128(0, &mut out), out[0]), (1, 0));
        assert_eq!((leb128(127, &mut out), out[0]), (1, 127));
        assert_eq!(leb128(128, &mut out), 2);
        assert_eq!(&out[..2], &[0x80, 0x01]);
        assert_eq!(leb128(u64::MAX, &mut out), 10);
    }

    fn sha(b: &[u8]) -> BodyDigest {
        Sha256::digest(b).into()
    }

    #[test]
    fn body_digests_follow_the_form() {
        let form = |b: &str| body_digest(BodyForm::Form, b.as_bytes());
        assert_eq!(form("b=2&a=1"), form("a=1&b=2\n"));
        assert_eq!(form("b=2&a=1"), sha(b"a=1&b=2"));
        assert_eq!(form("a=%zz"), sha(b"a=%zz"), "not a form: digested as sent");
        let json = |b: &str| body_digest(BodyForm::Json, b.as_bytes());
        assert_eq!(
            json(r#"{"b":1, "a":[true]}"#),
            json(r#"{"a":[true],"b":1.0}"#)
        );
        assert_eq!(json(" { } "), sha(b"{}"), "RFC 8785's text, hashed");
        assert_eq!(json("{"), sha(b"{"), "not JSON: digested as sent");
        // JSON is JSON whatever the content-type says.
        let raw = |b: &str| body_digest(BodyForm::Raw, b.as_bytes());
        assert_eq!(raw(r#" {"b":1,"a":2}"#), json(r#"{"a":2,"b":1}"#));
        assert_eq!(raw(r#"[1, 2]"#), sha(b"[1,2]"));
        assert_eq!(raw("b=2&a=1"), sha(b"b=2&a=1"), "an undeclared form is raw");
        assert_eq!(
            form(r#"{"a":1}"#),
            sha(b"%7B%22a%22%3A1%7D="),
            "declared form first"
        );
        for declared in [BodyForm::Raw, BodyForm::Form, BodyForm::Json] {
            assert_eq!(body_digest(declared, b""), EMPTY_BODY_DIGEST);
        }
    }

    #[test]
    fn chunking_does_not_change_the_digest() {
        let bodies: [(&[u8], BodyForm); 6] = [
            (br#"{"b": 1, "a": [1, 2]}"#, BodyForm::Raw),
            (br#"  {"b": 1}"#, BodyForm::Raw),
            (b"b=2&a=1\n", BodyForm::Form),
            (b"plain text body", BodyForm::Raw),
            (br#"{"broken"#, BodyForm::Json),
            (b"   ", BodyForm::Raw),
        ];
        for (body, declared) in bodies {
            let whole = body_digest(declared, body);
            for size in 1..=body.len() {
                let mut d = BodyDigester::new(declared);
                for chunk in body.chunks(size) {
                    d.push(chunk);
                    d.push(&[]);
                }
                assert_eq!(
                    d.finish(),
                    whole,
                    "{:?} in chunks of {size}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert_eq!(
            BodyDigester::new(BodyForm::Json).finish(),
            EMPTY_BODY_DIGEST
        );
    }
}
