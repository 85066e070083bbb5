//! What the fuzz targets share: an input reader, the test approver key, a base
//! configuration, and the oracles of the differential targets (a JSON object's members in
//! document order, with duplicates; RFC 3339 from `chrono`).

use std::sync::OnceLock;

use retry_guard::config::Config;
use serde::de::{Deserializer as _, MapAccess, Visitor};

/// Reads fixed-size parameters off the front of a fuzz input; past its end every read is
/// zero, so any input is a valid one.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    /// The next `N` bytes, zero-filled past the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.u8();
        }
        out
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// The rest split at 0xFF bytes (never part of UTF-8) into `N` strings, each read as
    /// UTF-8 with invalid sequences replaced; missing ones are empty.
    pub fn strings<const N: usize>(&mut self) -> [String; N] {
        let mut parts = self.rest().split(|&b| b == 0xff);
        std::array::from_fn(|_| {
            parts
                .next()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default()
        })
    }
}

/// The repository's TEST approver seed (`testdata/keys/approvals-test.key`).
pub const APPROVER_KEY_B64: &str = include_str!("../../testdata/keys/approvals-test.key");

/// The TEST approver signing key.
pub fn approver_key() -> ed25519_dalek::SigningKey {
    let seed = retry_guard::b64::decode_standard(APPROVER_KEY_B64.trim()).unwrap_or_default();
    let seed: [u8; 32] = seed.try_into().unwrap_or([7; 32]);
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// A one-route configuration, parsed once: cheap to clone for every input of the
/// document targets (the gateway's seven routes made cloning the cost of an execution).
pub fn small_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = br#"{"routes":[{"name":"r","match":{"path":"/oauth/token"},"class":"token_issuing","owner":"o","escalation":"e"}]}"#;
        Config::parse(text).unwrap_or_else(|e| panic!("the small configuration: {e}"))
    })
}

/// A JSON object's members in document order, duplicates kept (serde_json's own `Map`
/// would keep the last of equal names silently).
#[derive(Debug, PartialEq)]
pub struct Members(pub Vec<(String, serde_json::Value)>);

/// Parses `text` as one JSON object with serde_json, members in order; panics (a finding)
/// when it is not one, or when it is not one line.
pub fn object_members(text: &str) -> Members {
    // A byte scan (not a char one): the oracle's own work counts against the executions.
    let b = text.as_bytes();
    let breaks = b.iter().enumerate().any(|(i, &c)| {
        c == b'\n'
            || c == b'\r'
            || (c == 0xe2
                && b.get(i + 1) == Some(&0x80)
                && matches!(b.get(i + 2), Some(0xa8 | 0xa9)))
    });
    assert!(!breaks, "not one line: {text:?}");
    let mut de = serde_json::Deserializer::from_str(text);
    let members = (&mut de)
        .deserialize_map(MembersVisitor)
        .unwrap_or_else(|e| panic!("serde_json rejects {text:?}: {e}"));
    de.end()
        .unwrap_or_else(|e| panic!("trailing text in {text:?}: {e}"));
    members
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            out.push((k, v));
        }
        Ok(Members(out))
    }
}

/// RFC 3339 (`YYYY-MM-DDTHH:MM:SSZ`) of Unix seconds by `chrono`, clamped as the filter
/// documents (past 9999-12-31T23:59:59Z, that instant).
pub fn rfc3339_oracle(unix_seconds: u64) -> String {
    const MAX: u64 = 253_402_300_799;
    let secs = i64::try_from(unix_seconds.min(MAX)).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Base64url without padding by the `base64` crate.
pub fn b64url_oracle(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The expected members of a document: `(name, value)` in order.
pub type Expected = Vec<(&'static str, serde_json::Value)>;

/// Asserts a written document has exactly the expected members, in order, each once.
pub fn assert_members(text: &str, expected: &Expected) {
    let got = object_members(text);
    let names: Vec<&str> = got.0.iter().map(|(k, _)| k.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, want, "members of {text:?}");
    for ((k, g), (_, w)) in got.0.iter().zip(expected) {
        assert_eq!(g, w, "member {k} of {text:?}");
    }
}

/// One request's decision and everything the documents about it are written from, read
/// from a fuzz input: the route's strings, the caller's strings and the decision's fields.
pub struct DocInput {
    /// The configuration ([`small_config`], with a fuzzed confirmation header name).
    pub config: Config,
    /// The route ([`small_config`]'s, with fuzzed name, owner, escalation, class and mode).
    pub route: retry_guard::config::Route,
    /// The decision.
    pub decision: retry_guard::engine::Decision,
    /// `Facts` fields, owned: now, Unix milliseconds, and in seconds.
    pub now_ms: u64,
    /// Now, Unix seconds (`now_ms / 1000`).
    pub now: u64,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// The principal.
    pub principal: String,
    /// The idempotency key check.
    pub key: retry_guard::fingerprint::KeyCheck,
    /// The fingerprint.
    pub fingerprint: Option<[u8; 32]>,
    /// Stale reason.
    pub stale: Option<retry_guard::token::StaleReason>,
    /// Credential holder.
    pub holder: Option<String>,
    /// Credential shared with.
    pub shared_with: Option<String>,
    /// `x-envoy-attempt-count`.
    pub client_attempt: Option<u32>,
    /// Milliseconds since a same-body attempt under another idempotency key.
    pub key_regenerated_ms: Option<u64>,
}

/// Every `StaleReason`.
pub const STALE: [retry_guard::token::StaleReason; 5] = {
    use retry_guard::token::StaleReason::*;
    [Expired, NotYetValid, TooOld, NoExpiry, Malformed]
};

/// Every `ConfirmationError`.
pub const CONFIRMATION_ERRORS: [retry_guard::confirm::ConfirmationError; 7] = {
    use retry_guard::confirm::ConfirmationError::*;
    [
        BadSignature,
        UnknownKey,
        Expired,
        WrongFingerprint,
        WrongChallenge,
        AlreadyUsed,
        Malformed,
    ]
};

/// Every `TokenAction`.
pub const TOKEN_ACTIONS: [retry_guard::engine::TokenAction; 5] = {
    use retry_guard::engine::TokenAction::*;
    [None, Strip, Reject, WouldStrip, WouldReject]
};

/// `Some(ALL[i])` for `i` below the list's length, else `None` (so `None` is as likely as a
/// value when the byte is taken modulo twice the length).
pub fn pick<T: Copy>(all: &[T], byte: u8) -> Option<T> {
    all.get(usize::from(byte) % (2 * all.len())).copied()
}

impl DocInput {
    /// Reads one from fuzz bytes.
    pub fn read(data: &[u8]) -> DocInput {
        use retry_guard::config::Mode;
        use retry_guard::engine::{Decision, Verdict};
        use retry_guard::fingerprint::KeyCheck;
        use retry_guard::policy::{Outcome, Policy, RouteClass};
        use retry_guard::problem::ProblemType;
        let base = small_config();
        let mut b = Bytes(data);
        let flags = b.u16();
        let picks: [u8; 12] = b.array();
        let now_ms = b.u64();
        let since_previous_ms = b.u64();
        let attempt = b.u32();
        let status = b.u16();
        let first_seen = b.u64();
        let window_ends = b.u64();
        let client_attempt = b.u32();
        let fingerprint: [u8; 32] = b.array();
        let challenge: [u8; 16] = b.array();
        let [name, owner, escalation, reason, request_id, principal, header, approver, holder, shared, key] =
            b.strings::<11>();
        let bit = |i: u32| flags & (1 << i) != 0;
        let mut config = base.clone();
        config.confirmation_header = header;
        let mut route = base.routes[usize::from(picks[0]) % base.routes.len()].clone();
        route.name = name;
        route.owner = owner;
        route.escalation = escalation;
        route.class = RouteClass::ALL[usize::from(picks[1]) % RouteClass::ALL.len()];
        let mode = if bit(0) { Mode::Shadow } else { Mode::Enforce };
        route.mode = mode;
        route.refresh_identity();
        let verdict = Verdict::ALL[usize::from(picks[2]) % Verdict::ALL.len()];
        let decision = Decision {
            verdict,
            policy: pick(&Policy::ALL, picks[3]),
            reason,
            attempt,
            previous: pick(&Outcome::ALL, picks[4]).map(|o| (o, status)),
            first_seen: bit(1).then_some(first_seen),
            window_ends: bit(2).then_some(window_ends),
            since_previous_ms: bit(11).then_some(since_previous_ms),
            mode,
            would_block: bit(3),
            write: None,
            token_action: TOKEN_ACTIONS[usize::from(picks[5]) % TOKEN_ACTIONS.len()],
            token_reason: pick(&STALE, picks[6]),
            approver: bit(4).then_some(approver),
            challenge: bit(5).then_some(challenge),
            confirmation_error: pick(&CONFIRMATION_ERRORS, picks[7]),
            problem: pick(&ProblemType::ALL, picks[8]),
        };
        DocInput {
            config,
            route,
            decision,
            now_ms,
            now: now_ms / 1000,
            request_id: bit(6).then_some(request_id),
            principal,
            key: match picks[9] % 3 {
                0 => KeyCheck::Absent,
                1 => KeyCheck::Invalid("empty"),
                _ => KeyCheck::Present(key),
            },
            fingerprint: bit(7).then_some(fingerprint),
            stale: pick(&STALE, picks[10]),
            holder: bit(8).then_some(holder),
            shared_with: bit(9).then_some(shared),
            client_attempt: bit(10).then_some(client_attempt),
            key_regenerated_ms: bit(12).then_some(since_previous_ms.rotate_left(23)),
        }
    }

    /// The request facts.
    pub fn facts(&self) -> retry_guard::engine::Facts<'_> {
        retry_guard::engine::Facts {
            now_ms: self.now_ms,
            request_id: self.request_id.as_deref(),
            principal: &self.principal,
            key: &self.key,
            fingerprint: self.fingerprint.map(retry_guard::fingerprint::Fingerprint),
            body_digest: [0; 32],
            stale: self.stale,
            confirmation: None,
            credential_holder: self.holder.as_deref(),
            credential_shared_with: self.shared_with.as_deref(),
            client_attempt: self.client_attempt,
            key_regenerated_ms: self.key_regenerated_ms,
        }
    }
}

/// A JSON string, or `null`.
pub fn opt_str(v: Option<&str>) -> serde_json::Value {
    v.map_or(serde_json::Value::Null, |s| {
        serde_json::Value::String(s.into())
    })
}

/// A JSON number, or `null`.
pub fn opt_num(v: Option<u64>) -> serde_json::Value {
    v.map_or(serde_json::Value::Null, serde_json::Value::from)
}
