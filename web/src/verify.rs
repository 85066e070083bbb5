//! Verify mode: would the filter accept this confirmation for this 428? The answer comes from
//! the filter's own [`retry_guard::confirm::verify`], against the configuration's public keys.

use retry_guard::b64;
use retry_guard::config::{Config, Confirmation};
use retry_guard::confirm::sign::verifying_key_from_b64;
use retry_guard::confirm::{verify, ChallengeState, ConfirmationError};
use serde::Serialize;
use serde_json::Value;

/// The verdict on one token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The filter would accept it.
    pub accepted: bool,
    /// The approver it names, when accepted.
    pub approver: Option<String>,
    /// The refusal, as the filter names it (`bad_signature`, `expired`, ...).
    pub refusal: Option<String>,
    /// What the refusal means and what to do.
    pub explanation: String,
    /// The token's claims, when its payload can be read.
    pub claims: Option<Value>,
}

/// What a token is checked against.
pub struct Check<'a> {
    /// The token (`v1.<payload>.<signature>`).
    pub token: &'a str,
    /// The configuration's public keys: the whole plugin configuration, its `confirmation`
    /// object, a `{"kid": "<base64 key>"}` object, or `kid: key` lines.
    pub keys: &'a str,
    /// The 428's fingerprint.
    pub fingerprint: &'a str,
    /// The 428's challenge (the outstanding one).
    pub challenge: &'a str,
    /// The configuration's `clock_skew_seconds`.
    pub skew: u64,
    /// Now, Unix seconds.
    pub now: u64,
}

/// Reads the public keys from what the approver pasted.
pub fn read_keys(text: &str) -> Result<Confirmation, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "paste the configuration's public keys: the plugin configuration, its \
                    `confirmation` object, or lines `kid: <base64 public key>`"
                .into(),
        );
    }
    if text.starts_with('{') {
        if let Ok(config) = Config::parse(text.as_bytes()) {
            return config.confirmation.ok_or_else(|| {
                "this configuration has no `confirmation` object: the filter accepts no \
                 confirmation at all (every token is `unknown_key`)"
                    .to_string()
            });
        }
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("the keys are not valid JSON ({e})"))?;
        let conf = v.get("confirmation").unwrap_or(&v);
        let max_ttl = conf
            .get("max_ttl_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(600);
        let keys = conf.get("keys").unwrap_or(conf);
        let Some(map) = keys.as_object() else {
            return Err("expected an object of key id → base64 public key".into());
        };
        let mut out = Vec::new();
        for (kid, k) in map {
            if kid == "max_ttl_seconds" || kid == "header" {
                continue;
            }
            let Some(k) = k.as_str() else {
                return Err(format!("keys.{kid}: a base64 public key (a string)"));
            };
            out.push((kid.clone(), key(kid, k)?));
        }
        return Ok(confirmation(out, max_ttl));
    }
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (kid, k) = line
            .split_once(':')
            .or_else(|| line.split_once('='))
            .ok_or_else(|| format!("{line:?}: write `kid: <base64 public key>`"))?;
        let kid = kid.trim().trim_matches('"');
        out.push((
            kid.to_string(),
            key(kid, k.trim().trim_matches(['"', ',']))?,
        ));
    }
    Ok(confirmation(out, 600))
}

fn key(kid: &str, text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    verifying_key_from_b64(text).map_err(|e| format!("key {kid}: {e}"))
}

fn confirmation(keys: Vec<(String, ed25519_dalek::VerifyingKey)>, max_ttl: u64) -> Confirmation {
    Confirmation {
        header: "retry-guard-confirmation".into(),
        max_ttl_seconds: max_ttl,
        keys,
    }
}

/// What a refusal means, and what to do about it.
pub fn explain(e: ConfirmationError) -> &'static str {
    match e {
        ConfirmationError::BadSignature => {
            "the signature does not verify with the configured key of that id: the token was \
             altered, or signed with another key under the same id"
        }
        ConfirmationError::UnknownKey => {
            "the key id (kid) is not in confirmation.keys: sign with a configured key, or add \
             its public key to the configuration"
        }
        ConfirmationError::Expired => {
            "outside iat - skew ..= exp, or valid longer than max_ttl_seconds: sign a new one \
             with a shorter expiry"
        }
        ConfirmationError::WrongFingerprint => {
            "signed for another request: sign for the fingerprint of this 428"
        }
        ConfirmationError::WrongChallenge => {
            "signed for a challenge that is not the outstanding one: sign for the challenge of \
             the latest 428"
        }
        ConfirmationError::AlreadyUsed => {
            "this challenge was consumed by an earlier confirmation: the retry needs a new 428 \
             and a new approval"
        }
        ConfirmationError::Malformed => {
            "not a v1.<payload>.<signature> token with the members kid, chl, fp, sub, iat, exp"
        }
    }
}

fn claims_of(token: &str) -> Option<Value> {
    let payload = token.trim().strip_prefix("v1.")?.split('.').next()?;
    serde_json::from_slice(&b64::decode_url(payload)?).ok()
}

/// Checks a token as the filter would for the 428 whose challenge is outstanding.
pub fn check(c: &Check<'_>) -> Result<Verdict, String> {
    let conf = read_keys(c.keys)?;
    let outstanding =
        b64::decode_url(c.challenge.trim()).and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok());
    if outstanding.is_none() {
        return Err(
            "the 428's challenge is not a base64url 128-bit value: paste the 428 the \
                    token was signed for"
                .into(),
        );
    }
    let state = ChallengeState {
        fingerprint: c.fingerprint.trim(),
        outstanding,
        consumed: None,
    };
    let claims = claims_of(c.token);
    Ok(
        match verify(c.token.as_bytes(), Some(&conf), state, c.skew, c.now) {
            Ok(a) => Verdict {
                accepted: true,
                explanation: format!(
                    "the filter accepts it once: decision `confirmed`, approver {} (key {}), and \
                     the challenge is consumed",
                    a.approver, a.kid
                ),
                approver: Some(a.approver),
                refusal: None,
                claims,
            },
            Err(e) => Verdict {
                accepted: false,
                approver: None,
                refusal: Some(e.name().to_string()),
                explanation: explain(e).to_string(),
                claims,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approve::{ApproverKey, Request};

    const KEY: &str = include_str!("../../testdata/keys/approvals-test.key");
    const PUB: &str = include_str!("../../testdata/keys/approvals-test.pub");
    const SMOKE: &str = include_str!("../../testdata/configs/smoke.json");
    const CHL: &str = "AAAAAAAAAAAAAAAAAAAAAA";

    fn token(fp: &str) -> String {
        let key = ApproverKey::from_file(KEY, "approvals-test.key").expect("key");
        key.approve(&Request {
            challenge: CHL,
            fingerprint: fp,
            approver: "alice@example.com",
            kid: None,
            now: 1_800_000_000,
            ttl: 300,
            max_ttl: 600,
            header: "retry-guard-confirmation",
            caller_curl: "",
        })
        .expect("signed")
        .token
    }

    fn run(token: &str, keys: &str, now: u64) -> Verdict {
        check(&Check {
            token,
            keys,
            fingerprint: "fp",
            challenge: CHL,
            skew: 30,
            now,
        })
        .expect("checked")
    }

    #[test]
    fn refusals_are_the_filters() {
        let t = token("fp");
        assert!(run(&t, SMOKE, 1_800_000_001).accepted);
        assert!(
            run(
                &t,
                &format!("approvals-test: {}", PUB.trim()),
                1_800_000_001
            )
            .accepted
        );
        let r = |v: Verdict| v.refusal.unwrap_or_default();
        assert_eq!(r(run(&t, SMOKE, 1_800_000_400)), "expired");
        assert_eq!(
            r(run(&token("other"), SMOKE, 1_800_000_001)),
            "wrong_fingerprint"
        );
        let mut bad = t.clone();
        bad.pop();
        bad.push(if t.ends_with('A') { 'Q' } else { 'A' });
        assert_eq!(r(run(&bad, SMOKE, 1_800_000_001)), "bad_signature");
        assert_eq!(r(run("v1.x", SMOKE, 1_800_000_001)), "malformed");
        let other = "other: 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        assert_eq!(r(run(&t, other, 1_800_000_001)), "unknown_key");
    }
}
