//! The approver's side: a key file held in memory, the expiry choices a configuration allows,
//! and the signed confirmation with a ready-to-copy header line and `curl` command. Signing is
//! the policy core's ([`retry_guard::confirm::sign::Claims::sign`]), the one definition of the
//! token the filter verifies.

use ed25519_dalek::SigningKey;
use retry_guard::confirm::sign::{public_key_b64, signing_key_from_b64, Claims};
use serde::Serialize;

/// The lifetimes offered, in seconds; those over the configuration's `max_ttl_seconds` are
/// left out (the filter would refuse them as `expired`).
pub const TTL_CHOICES: &[u64] = &[60, 120, 300, 600, 900, 1800, 3600, 14_400, 86_400];

/// One expiry choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TtlChoice {
    /// Seconds.
    pub seconds: u64,
    /// In words (`5 min`).
    pub label: String,
}

/// The expiry choices for a configuration whose `confirmation.max_ttl_seconds` is `max_ttl`:
/// the standard ones up to it, and `max_ttl` itself when it is not one of them.
pub fn ttl_choices(max_ttl: u64) -> Vec<TtlChoice> {
    let mut out: Vec<u64> = TTL_CHOICES
        .iter()
        .copied()
        .filter(|t| *t <= max_ttl)
        .collect();
    if max_ttl > 0 && !out.contains(&max_ttl) {
        out.push(max_ttl);
    }
    out.into_iter()
        .map(|seconds| TtlChoice {
            seconds,
            label: crate::duration_words(seconds),
        })
        .collect()
}

/// An approver's private key, held in memory only.
pub struct ApproverKey {
    key: SigningKey,
    kid: String,
}

/// Shows the key id only: the private key never appears in a message.
impl std::fmt::Debug for ApproverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApproverKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ApproverKey {
    /// Reads a key file's text (standard base64 of the 32-byte Ed25519 seed, as `retry-guard
    /// keygen` writes it); the key id defaults to the file name without extension, as `retry-guard
    /// approve` names it.
    pub fn from_file(text: &str, file_name: &str) -> Result<ApproverKey, String> {
        let key = signing_key_from_b64(text).map_err(|e| {
            format!(
                "{file_name}: {e}. Load the approver's private key file (the .key file of \
                 `retry-guard keygen`, not the .pub)"
            )
        })?;
        let stem = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
        let kid = match stem.rsplit_once('.') {
            Some((s, _)) if !s.is_empty() => s,
            _ => stem,
        };
        Ok(ApproverKey {
            key,
            kid: if kid.is_empty() { "approvals" } else { kid }.to_string(),
        })
    }

    /// The key id: which of `confirmation.keys` verifies this key's signatures.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as `confirmation.keys` holds it.
    pub fn public_key(&self) -> String {
        public_key_b64(&self.key)
    }

    /// Signs a confirmation (see [`Request`]).
    pub fn approve(&self, r: &Request<'_>) -> Result<Approval, String> {
        let sub = r.approver.trim();
        if sub.is_empty() {
            return Err(
                "type who you are (the approver, e.g. alice@example.com): the filter \
                        audits it as `approver`"
                    .into(),
            );
        }
        if sub.len() > retry_guard::confirm::MAX_APPROVER_LEN {
            return Err(format!(
                "the approver name is {} bytes; the filter accepts at most {}",
                sub.len(),
                retry_guard::confirm::MAX_APPROVER_LEN
            ));
        }
        if r.ttl == 0 || r.ttl > r.max_ttl {
            return Err(format!(
                "an approval valid {} s is refused by a configuration whose \
                 confirmation.max_ttl_seconds is {}: choose a shorter expiry",
                r.ttl, r.max_ttl
            ));
        }
        let kid = r
            .kid
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .unwrap_or(&self.kid);
        let now = i64::try_from(r.now).map_err(|_| "the clock is out of range".to_string())?;
        let claims = Claims {
            kid: kid.to_string(),
            chl: r.challenge.to_string(),
            fp: r.fingerprint.to_string(),
            sub: sub.to_string(),
            iat: now,
            exp: now.saturating_add(i64::try_from(r.ttl).unwrap_or(i64::MAX)),
        };
        let token = claims.sign(&self.key);
        let header_line = format!("{}: {token}", r.header);
        let curl = curl_command(r.caller_curl, r.header, &token);
        Ok(Approval {
            payload: claims.payload_json(),
            expires_at: retry_guard::time::rfc3339(r.now.saturating_add(r.ttl)),
            kid: kid.to_string(),
            token,
            header_line,
            curl,
        })
    }
}

/// What an approval is for.
pub struct Request<'a> {
    /// The 428's challenge.
    pub challenge: &'a str,
    /// The 428's fingerprint.
    pub fingerprint: &'a str,
    /// Who approves.
    pub approver: &'a str,
    /// Key id; `None` or empty: the key file's name.
    pub kid: Option<&'a str>,
    /// Now, Unix seconds (`iat`).
    pub now: u64,
    /// How long the approval is valid (`exp` − `iat`).
    pub ttl: u64,
    /// The configuration's `confirmation.max_ttl_seconds`.
    pub max_ttl: u64,
    /// The confirmation header (the 428's `confirmation_header`).
    pub header: &'a str,
    /// The caller's own `curl` command for the request, if the approver has it.
    pub caller_curl: &'a str,
}

/// A signed confirmation, ready to hand to the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// `v1.<payload>.<signature>`.
    pub token: String,
    /// `retry-guard-confirmation: v1....`.
    pub header_line: String,
    /// The caller's request with the confirmation header added.
    pub curl: String,
    /// When the approval expires (RFC 3339).
    pub expires_at: String,
    /// The signed claims, as JSON.
    pub payload: String,
    /// The key id that signed.
    pub kid: String,
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The caller's `curl` command with the confirmation header added right after `curl`, or a
/// template to complete when the approver does not have it.
pub fn curl_command(caller_curl: &str, header: &str, token: &str) -> String {
    let h = shell_quote(&format!("{header}: {token}"));
    let caller = caller_curl.trim();
    match caller.strip_prefix("curl") {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
            format!("curl -H {h}{rest}")
        }
        _ => format!(
            "curl -i -H {h} -X POST \"$URL\" --data \"$BODY\"   # the same method, URL, headers \
             and body as the call that got the 428"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retry_guard::config::Confirmation;
    use retry_guard::confirm::sign::verifying_key_from_b64;
    use retry_guard::confirm::{verify, ChallengeState};

    const KEY: &str = include_str!("../../testdata/keys/approvals-test.key");
    const PUB: &str = include_str!("../../testdata/keys/approvals-test.pub");

    fn request<'a>(ttl: u64) -> Request<'a> {
        Request {
            challenge: "AAAAAAAAAAAAAAAAAAAAAA",
            fingerprint: "fp",
            approver: "alice@example.com",
            kid: None,
            now: 1_800_000_000,
            ttl,
            max_ttl: 600,
            header: "retry-guard-confirmation",
            caller_curl: "",
        }
    }

    #[test]
    fn the_token_is_one_the_filter_accepts() {
        let key = ApproverKey::from_file(KEY, "approvals-test.key").expect("key");
        assert_eq!(key.kid(), "approvals-test");
        assert_eq!(key.public_key(), PUB.trim());
        let a = key.approve(&request(300)).expect("signed");
        let config = Confirmation {
            header: "retry-guard-confirmation".into(),
            max_ttl_seconds: 600,
            keys: vec![(
                "approvals-test".into(),
                verifying_key_from_b64(PUB).expect("pub"),
            )],
        };
        let state = ChallengeState {
            fingerprint: "fp",
            outstanding: Some([0; 16]),
            consumed: None,
        };
        let ok = verify(a.token.as_bytes(), Some(&config), state, 30, 1_800_000_010).expect("ok");
        assert_eq!(ok.approver, "alice@example.com");
        assert!(a.header_line.starts_with("retry-guard-confirmation: v1."));
        assert!(a.curl.contains("-H 'retry-guard-confirmation: v1."));
    }

    #[test]
    fn expiries_stay_within_max_ttl() {
        let secs: Vec<u64> = ttl_choices(600).iter().map(|c| c.seconds).collect();
        assert_eq!(secs, vec![60, 120, 300, 600]);
        let secs: Vec<u64> = ttl_choices(450).iter().map(|c| c.seconds).collect();
        assert_eq!(secs, vec![60, 120, 300, 450]);
        let key = ApproverKey::from_file(KEY, "k.key").expect("key");
        assert!(key
            .approve(&request(900))
            .unwrap_err()
            .contains("max_ttl_seconds"));
    }

    #[test]
    fn bad_inputs_say_what_to_change() {
        assert!(ApproverKey::from_file("nope", "a.pub")
            .unwrap_err()
            .contains(".key file"));
        let key = ApproverKey::from_file(KEY, "k.key").expect("key");
        let mut r = request(60);
        r.approver = " ";
        assert!(key.approve(&r).unwrap_err().contains("who you are"));
    }

    #[test]
    fn the_callers_curl_gets_the_header() {
        assert_eq!(
            curl_command(
                "curl -s -X POST localhost:10000/oauth/token -d 'a=b'",
                "h",
                "v1.x.y"
            ),
            "curl -H 'h: v1.x.y' -s -X POST localhost:10000/oauth/token -d 'a=b'"
        );
        assert!(curl_command("", "h", "t").contains("$URL"));
    }
}
