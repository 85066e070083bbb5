//! The cluster ledger's wire protocol: etcd v3's JSON gateway (`POST /v3/...`, HTTP/1.1).
//!
//! Pure functions: [`LedgerOp`]s become request bodies, answers become [`OpResult`]s or an
//! [`EtcdError`] that says what was wrong. Nothing here talks to the network; the stream state
//! machine sends what these functions build through `dispatch_http_call`.
//!
//! Facts of the gateway this relies on (etcd 3.4, checked by the tests against a real etcd):
//! keys and values are *standard, padded* base64; int64 fields are JSON strings; enum members
//! may be given by name; a missing `succeeded` means false; a gRPC error comes back as a JSON
//! object with `error` (or `message`) and `code`.
//!
//! Every write is conditional, in one transaction ([`txn_body`]): the key's `create_revision`
//! is 0 (it does not exist: insert-if-absent) or its `mod_revision` is the one read, else the
//! transaction's failure branch reads the key, so a lost race costs no extra round trip to
//! learn what won. Entries expire through leases shared per time bucket ([`LeasePlan`]): no
//! lease grant per request.

use crate::json::Value;

use crate::b64;
use crate::ledger::Entry;

/// Path of a transaction.
pub const TXN_PATH: &str = "/v3/kv/txn";
/// Path of a lease grant.
pub const LEASE_GRANT_PATH: &str = "/v3/lease/grant";
/// Path of a range read.
pub const RANGE_PATH: &str = "/v3/kv/range";

/// What a key records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// An attempt record: one fingerprint's [`Entry`] (with its challenge and consumed
    /// confirmation).
    Attempt,
    /// When an opaque bearer credential was first seen.
    TokenSeen,
}

/// The etcd key of a record: `<prefix>a/<base64url id>` or `<prefix>t/<base64url id>`.
pub fn key(prefix: &str, kind: KeyKind, id: &[u8; 32]) -> String {
    let mut k = String::with_capacity(prefix.len() + 2 + 43);
    k.push_str(prefix);
    k.push_str(match kind {
        KeyKind::Attempt => "a/",
        KeyKind::TokenSeen => "t/",
    });
    b64::push_url(&mut k, id);
    k
}

/// The condition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist (`create_revision == 0`).
    Absent,
    /// The key is unchanged since it was read (`mod_revision == r`).
    Revision(i64),
}

/// One request to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerOp {
    /// Read a key.
    Read {
        /// The etcd key.
        key: String,
    },
    /// Write `entry` under `key` with `lease` if the key is as `expect` says; else read it.
    Put {
        /// The etcd key.
        key: String,
        /// The condition.
        expect: Expect,
        /// What to write.
        entry: Entry,
        /// The lease the key expires with.
        lease: i64,
    },
}

impl LedgerOp {
    /// The request's path and JSON body.
    pub fn request(&self) -> (&'static str, String) {
        match self {
            LedgerOp::Read { key } => {
                let mut body = String::with_capacity(key.len() + 16);
                body.push_str("{\"key\":\"");
                body.push_str(&b64::standard(key.as_bytes()));
                body.push_str("\"}");
                (RANGE_PATH, body)
            }
            LedgerOp::Put {
                key,
                expect,
                entry,
                lease,
            } => (TXN_PATH, txn_body(key, *expect, &entry.to_bytes(), *lease)),
        }
    }
}

/// A conditional put in one transaction: compare, put with the lease on success, read the key
/// on failure.
pub fn txn_body(key: &str, expect: Expect, value: &[u8], lease: i64) -> String {
    let k = b64::standard(key.as_bytes());
    let v = b64::standard(value);
    let compare = match expect {
        Expect::Absent => format!(
            "{{\"key\":\"{k}\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}}"
        ),
        Expect::Revision(r) => format!(
            "{{\"key\":\"{k}\",\"target\":\"MOD\",\"result\":\"EQUAL\",\"mod_revision\":\"{r}\"}}"
        ),
    };
    format!(
        "{{\"compare\":[{compare}],\"success\":[{{\"request_put\":{{\"key\":\"{k}\",\"value\":\"{v}\",\"lease\":\"{lease}\"}}}}],\"failure\":[{{\"request_range\":{{\"key\":\"{k}\"}}}}]}}"
    )
}

/// A key as read: its entry (`None` if absent, or not an entry of this format) and its
/// `mod_revision` (`None` if absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// The stored entry.
    pub entry: Option<Entry>,
    /// The key's `mod_revision`; `None` when the key does not exist.
    pub revision: Option<i64>,
}

impl Current {
    /// The condition under which a write replaces exactly this state.
    pub fn expect(&self) -> Expect {
        self.revision.map_or(Expect::Absent, Expect::Revision)
    }
}

/// What a [`LedgerOp`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The put went through; the key's new `mod_revision`.
    Written {
        /// The revision of the write.
        revision: i64,
    },
    /// Not written (the condition failed), or a read: the key as it is now.
    Current(Current),
}

/// Why an answer from etcd could not be used. `Display` is for the operator's log; problem
/// documents and audit lines never carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdError {
    /// No answer: connection refused or reset, timeout, or the cluster has no healthy host.
    NoAnswer,
    /// An HTTP status other than 200, with etcd's error text when it gave one.
    Status(u16, String),
    /// A 200 whose body is not the answer expected.
    Malformed(&'static str),
    /// The put named a lease etcd does not have (expired or never granted).
    LeaseNotFound,
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::NoAnswer => f.write_str(
                "etcd did not answer (connection refused or reset, timeout, or no healthy host in the cluster)",
            ),
            EtcdError::Status(s, text) if text.is_empty() => write!(f, "etcd answered HTTP {s}"),
            EtcdError::Status(s, text) => write!(f, "etcd answered HTTP {s}: {text}"),
            EtcdError::Malformed(what) => write!(f, "etcd's answer is not what was expected: {what}"),
            EtcdError::LeaseNotFound => f.write_str("etcd does not know the lease the write named"),
        }
    }
}

/// The longest error text kept from an answer.
const MAX_ERROR_TEXT: usize = 200;

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Does `hay` contain `needle`? (A plain byte search: `str::contains` pulls Rust's two-way
/// searcher and its panic messages into the module.)
fn has(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// etcd's answer as error text (its JSON as is), printable ASCII only, at most
/// [`MAX_ERROR_TEXT`] bytes: it goes to the operator's log, never to a client.
fn error_text(body: &[u8]) -> String {
    let mut kept: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
        .take(MAX_ERROR_TEXT)
        .collect();
    if kept.len() < body.len() {
        kept.extend_from_slice(b"...");
    }
    String::from_utf8(kept).unwrap_or_default()
}

/// Reads an answer to `op`: the HTTP status (`None` when there was no answer at all) and the
/// body.
pub fn parse_answer(
    op: &LedgerOp,
    status: Option<u16>,
    body: &[u8],
) -> Result<OpResult, EtcdError> {
    let status = status.ok_or(EtcdError::NoAnswer)?;
    if status != 200 {
        if has(body, b"requested lease not found") {
            return Err(EtcdError::LeaseNotFound);
        }
        return Err(EtcdError::Status(status, error_text(body)));
    }
    let v = crate::json::parse(body).map_err(|_| EtcdError::Malformed("not JSON"))?;
    if !v.is_object() {
        return Err(EtcdError::Malformed("not a JSON object"));
    }
    if v.get("error").is_some() {
        if has(body, b"requested lease not found") {
            return Err(EtcdError::LeaseNotFound);
        }
        return Err(EtcdError::Status(status, error_text(body)));
    }
    let header_revision = v
        .get("header")
        .and_then(|h| h.get("revision"))
        .and_then(int);
    match op {
        LedgerOp::Read { .. } => Ok(OpResult::Current(read_range(&v)?)),
        LedgerOp::Put { .. } => {
            let succeeded = match v.get("succeeded") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(EtcdError::Malformed("succeeded is not a boolean")),
            };
            let response = v
                .get("responses")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .ok_or(EtcdError::Malformed(
                    "a transaction answer without responses",
                ))?;
            if succeeded {
                let revision = response
                    .get("response_put")
                    .and_then(|p| p.get("header"))
                    .and_then(|h| h.get("revision"))
                    .and_then(int)
                    .or(header_revision)
                    .filter(|r| *r > 0)
                    .ok_or(EtcdError::Malformed("a put without a revision"))?;
                Ok(OpResult::Written { revision })
            } else {
                let range = response.get("response_range").ok_or(EtcdError::Malformed(
                    "a failed transaction without its read",
                ))?;
                Ok(OpResult::Current(read_range(range)?))
            }
        }
    }
}

fn read_range(range: &Value) -> Result<Current, EtcdError> {
    let Some(kvs) = range.get("kvs") else {
        return Ok(Current::default());
    };
    let kv = kvs
        .as_array()
        .ok_or(EtcdError::Malformed("kvs is not a list"))?
        .first();
    let Some(kv) = kv else {
        return Ok(Current::default());
    };
    let revision = kv
        .get("mod_revision")
        .and_then(int)
        .filter(|r| *r > 0)
        .ok_or(EtcdError::Malformed("a key without mod_revision"))?;
    // A value that is not an entry of this format (another writer, an older format) reads as
    // no entry; the next write replaces it, conditional on this revision.
    let entry = kv
        .get("value")
        .and_then(Value::as_str)
        .and_then(b64::decode_standard)
        .and_then(|b| Entry::from_bytes(&b));
    Ok(Current {
        entry,
        revision: Some(revision),
    })
}

/// Leases shared per time bucket: every entry written in bucket `k` expires with lease `k`,
/// which lives until `(k + 1) * bucket + window` — between `window` and `window + bucket`
/// seconds after the entry's latest attempt. Lease ids are derived from the key prefix, the
/// window and the bucket, so every VM and every replica grants (and uses) the same lease
/// without coordination; granting one that exists is a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePlan {
    /// Bucket width, seconds.
    pub bucket_seconds: u64,
    /// The ledger window, seconds.
    pub window_seconds: u64,
    /// 30 bits that tell this ledger's leases from others'.
    tag: u64,
}

impl LeasePlan {
    /// The plan of a ledger with this key prefix and window: buckets of a thirtieth of the
    /// window, from 5 to 60 seconds.
    pub fn new(key_prefix: &str, window_seconds: u64) -> LeasePlan {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(key_prefix.as_bytes());
        h.update(window_seconds.to_le_bytes());
        let d = h.finalize();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
        LeasePlan {
            bucket_seconds: (window_seconds / 30).clamp(5, 60),
            window_seconds,
            tag: u64::from_le_bytes(tag) & 0x3fff_ffff,
        }
    }

    /// The bucket of `now`.
    pub fn bucket(&self, now: u64) -> u64 {
        now / self.bucket_seconds
    }

    /// The lease id of bucket `bucket`: positive, never 0 (etcd's "no lease").
    pub fn lease_id(&self, bucket: u64) -> i64 {
        let id = (self.tag << 32) | (bucket & 0xffff_ffff);
        i64::try_from(id).unwrap_or(i64::MAX).max(1)
    }

    /// When bucket `bucket`'s lease must expire.
    pub fn expires_at(&self, bucket: u64) -> u64 {
        bucket
            .saturating_add(1)
            .saturating_mul(self.bucket_seconds)
            .saturating_add(self.window_seconds)
    }

    /// The grant of bucket `bucket`'s lease at `now`: path and body.
    pub fn grant(&self, bucket: u64, now: u64) -> (&'static str, String) {
        let ttl = self.expires_at(bucket).saturating_sub(now).max(1);
        (
            LEASE_GRANT_PATH,
            format!("{{\"TTL\":\"{ttl}\",\"ID\":\"{}\"}}", self.lease_id(bucket)),
        )
    }
}

/// Reads the answer to a lease grant: `Ok` when the lease exists now (granted, or it already
/// existed because another VM or replica granted it first).
pub fn parse_grant(status: Option<u16>, body: &[u8]) -> Result<(), EtcdError> {
    let status = status.ok_or(EtcdError::NoAnswer)?;
    if has(body, b"lease already exists") {
        return Ok(());
    }
    if status != 200 {
        return Err(EtcdError::Status(status, error_text(body)));
    }
    let v = crate::json::parse(body).map_err(|_| EtcdError::Malformed("not JSON"))?;
    if v.get("error").is_some() {
        return Err(EtcdError::Status(status, error_text(body)));
    }
    if v.get("ID").and_then(int).is_none() {
        return Err(EtcdError::Malformed("a lease grant without an ID"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Outcome;

    fn entry() -> Entry {
        Entry {
            id: [3; 32],
            first_seen_ms: 100_000,
            last_attempt_ms: 100_000,
            window_seconds: 900,
            attempts: 1,
            outcome: Outcome::InFlight,
            status: 0,
            body_digest: [4; 32],
            challenge: None,
            consumed: None,
            sensitive: false,
        }
    }

    fn put() -> LedgerOp {
        LedgerOp::Put {
            key: "p/a/x".into(),
            expect: Expect::Absent,
            entry: entry(),
            lease: 7,
        }
    }

    #[test]
    fn a_conditional_put_is_one_transaction_with_its_read_in_the_failure_branch() {
        let (path, body) = put().request();
        assert_eq!(path, TXN_PATH);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let k = b64::standard(b"p/a/x");
        assert_eq!(v["compare"][0]["key"], k.as_str());
        assert_eq!(v["compare"][0]["target"], "CREATE");
        assert_eq!(v["compare"][0]["create_revision"], "0");
        assert_eq!(v["success"][0]["request_put"]["lease"], "7");
        let value = b64::decode_standard(v["success"][0]["request_put"]["value"].as_str().unwrap());
        assert_eq!(Entry::from_bytes(&value.unwrap()), Some(entry()));
        assert_eq!(v["failure"][0]["request_range"]["key"], k.as_str());
        let body = txn_body("k", Expect::Revision(42), b"v", 1);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["compare"][0]["target"], "MOD");
        assert_eq!(v["compare"][0]["mod_revision"], "42");
    }

    #[test]
    fn answers_are_read_as_written_or_current() {
        let ok = br#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"12"}}}]}"#;
        assert_eq!(
            parse_answer(&put(), Some(200), ok),
            Ok(OpResult::Written { revision: 12 })
        );
        let value = b64::standard(&entry().to_bytes());
        let lost = format!(
            r#"{{"header":{{"revision":"13"}},"responses":[{{"response_range":{{"kvs":[{{"key":"eA==","mod_revision":"9","value":"{value}"}}],"count":"1"}}}}]}}"#
        );
        assert_eq!(
            parse_answer(&put(), Some(200), lost.as_bytes()),
            Ok(OpResult::Current(Current {
                entry: Some(entry()),
                revision: Some(9)
            }))
        );
        // The key vanished between the compare and now: no kvs.
        let gone =
            br#"{"header":{"revision":"13"},"responses":[{"response_range":{"header":{}}}]}"#;
        assert_eq!(
            parse_answer(&put(), Some(200), gone),
            Ok(OpResult::Current(Current::default()))
        );
        // A value of another format reads as no entry, but keeps its revision.
        let other = br#"{"responses":[{"response_range":{"kvs":[{"mod_revision":"4","value":"aGVsbG8="}]}}]}"#;
        assert_eq!(
            parse_answer(&put(), Some(200), other),
            Ok(OpResult::Current(Current {
                entry: None,
                revision: Some(4)
            }))
        );
    }

    #[test]
    fn every_bad_answer_is_an_error_that_says_what() {
        assert_eq!(parse_answer(&put(), None, b""), Err(EtcdError::NoAnswer));
        assert!(matches!(
            parse_answer(&put(), Some(503), b"upstream connect error"),
            Err(EtcdError::Status(503, _))
        ));
        assert_eq!(
            parse_answer(
                &put(),
                Some(400),
                br#"{"error":"etcdserver: requested lease not found","code":5}"#
            ),
            Err(EtcdError::LeaseNotFound)
        );
        for garbage in [
            &b"<html>"[..],
            b"[]",
            br#"{"succeeded":"yes","responses":[{}]}"#,
            br#"{"succeeded":true}"#,
            br#"{"succeeded":true,"responses":[{"response_put":{}}]}"#,
            br#"{"responses":[{"response_put":{}}]}"#,
            br#"{"responses":[{"response_range":{"kvs":"x"}}]}"#,
            br#"{"responses":[{"response_range":{"kvs":[{"value":"AA=="}]}}]}"#,
        ] {
            assert!(
                matches!(
                    parse_answer(&put(), Some(200), garbage),
                    Err(EtcdError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
        // A long error text is cut and stripped of control characters.
        let long = format!("{{\"error\":\"{}\\n\"}}", "x".repeat(1000));
        match parse_answer(&put(), Some(500), long.as_bytes()) {
            Err(EtcdError::Status(500, t)) => {
                assert!(t.len() <= MAX_ERROR_TEXT + 3 && !t.contains('\n'), "{t}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leases_are_shared_per_bucket_and_outlive_the_window() {
        let plan = LeasePlan::new("retry-guard/v1/", 900);
        assert_eq!(plan.bucket_seconds, 30);
        let now = 1_800_000_015;
        let b = plan.bucket(now);
        // An entry written now expires between window and window + bucket after now.
        let expires = plan.expires_at(b);
        assert!(expires >= now + 900 && expires <= now + 930, "{expires}");
        // Same bucket, same lease; the next bucket another one; another ledger another one.
        assert_eq!(plan.lease_id(b), plan.lease_id(plan.bucket(now + 10)));
        assert_ne!(plan.lease_id(b), plan.lease_id(b + 1));
        assert_ne!(plan.lease_id(b), LeasePlan::new("other/", 900).lease_id(b));
        assert!(plan.lease_id(b) > 0);
        let (path, body) = plan.grant(b, now);
        assert_eq!(path, LEASE_GRANT_PATH);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["TTL"], (expires - now).to_string());
        assert_eq!(v["ID"], plan.lease_id(b).to_string());
        assert_eq!(LeasePlan::new("p", 60).bucket_seconds, 5);
        assert_eq!(LeasePlan::new("p", 86_400).bucket_seconds, 60);
    }

    #[test]
    fn a_grant_that_exists_already_is_a_success() {
        assert_eq!(parse_grant(Some(200), br#"{"ID":"5","TTL":"30"}"#), Ok(()));
        assert_eq!(
            parse_grant(
                Some(400),
                br#"{"error":"etcdserver: lease already exists","code":9}"#
            ),
            Ok(())
        );
        assert!(parse_grant(Some(200), b"{}").is_err());
        assert!(parse_grant(None, b"").is_err());
    }

    #[test]
    fn keys_separate_attempts_from_token_sightings() {
        assert_eq!(
            key("p/", KeyKind::Attempt, &[0; 32]),
            format!("p/a/{}", b64::url(&[0; 32]))
        );
        assert!(key("p/", KeyKind::TokenSeen, &[0; 32]).starts_with("p/t/"));
    }
}
