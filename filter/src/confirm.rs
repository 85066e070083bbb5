//! Signed, single-use human confirmations.
//!
//! An approver's tool signs `v1.<payload>` with Ed25519, where `<payload>` is base64url (no
//! padding) of `{"kid","chl","fp","sub","iat","exp"}`; the token is
//! `v1.<payload>.<base64url signature>`. [`verify`] accepts it only for the outstanding
//! challenge of the fingerprint, within its validity window.

use std::fmt;

use crate::json::Value;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::b64;
use crate::config::Confirmation;

mod sha512;
pub mod sign;

/// Longest confirmation token accepted; longer is `malformed`.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest approver name accepted.
pub const MAX_APPROVER_LEN: usize = 256;

/// Why a confirmation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmationError {
    /// The signature does not verify with the named key.
    BadSignature,
    /// The key id is not configured (or no confirmation is configured at all).
    UnknownKey,
    /// Outside `iat` − skew ..= `exp`, or valid longer than `max_ttl_seconds`.
    Expired,
    /// Signed for another fingerprint.
    WrongFingerprint,
    /// Signed for a challenge that is not the outstanding one.
    WrongChallenge,
    /// The challenge was already consumed by an earlier confirmation.
    AlreadyUsed,
    /// Not a `v1.<payload>.<signature>` token with the expected members.
    Malformed,
}

impl ConfirmationError {
    /// The `confirmation_error` member value.
    pub fn name(self) -> &'static str {
        match self {
            ConfirmationError::BadSignature => "bad_signature",
            ConfirmationError::UnknownKey => "unknown_key",
            ConfirmationError::Expired => "expired",
            ConfirmationError::WrongFingerprint => "wrong_fingerprint",
            ConfirmationError::WrongChallenge => "wrong_challenge",
            ConfirmationError::AlreadyUsed => "already_used",
            ConfirmationError::Malformed => "malformed",
        }
    }
}

impl fmt::Display for ConfirmationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A challenge id: 128 random bits.
pub type Challenge = [u8; 16];

/// An accepted confirmation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Who approved (`sub`).
    pub approver: String,
    /// Which key signed.
    pub kid: String,
    /// The challenge it consumes.
    pub challenge: Challenge,
}

struct Payload {
    kid: String,
    chl: String,
    fp: String,
    sub: String,
    iat: i64,
    exp: i64,
}

impl Payload {
    /// Reads the payload members; any missing or mistyped member is `None`. (Hand-read from a
    /// `Value` rather than derived: serde's typed errors pull float formatting into the wasm.)
    fn from_json(bytes: &[u8]) -> Option<Payload> {
        let Value::Object(mut m) = crate::json::parse(bytes).ok()? else {
            return None;
        };
        let mut text = |k: &str| match m.remove(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let (kid, chl, fp, sub) = (text("kid")?, text("chl")?, text("fp")?, text("sub")?);
        let iat = m.get("iat")?.as_i64()?;
        let exp = m.get("exp")?.as_i64()?;
        Some(Payload {
            kid,
            chl,
            fp,
            sub,
            iat,
            exp,
        })
    }
}

/// `VerifyingKey::verify_strict` with [`sha512::Sha512`]: the signature's R must be a point
/// of no small order, the key too, and the signature must verify (`raw_verify` is the
/// non-strict check, which compares R's canonical encoding).
fn verify_strict(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    let r_ok = VerifyingKey::from_bytes(signature.r_bytes()).is_ok_and(|r| !r.is_weak());
    r_ok && !key.is_weak()
        && ed25519_dalek::hazmat::raw_verify::<sha512::Sha512>(key, message, signature).is_ok()
}

/// The ledger state a confirmation is checked against.
#[derive(Clone, Copy, Debug)]
pub struct ChallengeState<'a> {
    /// The fingerprint (base64url) of the request.
    pub fingerprint: &'a str,
    /// The outstanding challenge of this fingerprint.
    pub outstanding: Option<Challenge>,
    /// The challenge most recently consumed for this fingerprint.
    pub consumed: Option<Challenge>,
}

/// Compares two byte strings in time that depends on their lengths only, not on where they
/// differ (the signature check before it is ed25519-dalek's; this is for the values the token
/// binds: fingerprint and challenge).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimizer from turning the fold into an early exit.
    core::hint::black_box(diff) == 0
}

/// Verifies a confirmation token.
pub fn verify(
    token: &[u8],
    config: Option<&Confirmation>,
    state: ChallengeState<'_>,
    skew: u64,
    now: u64,
) -> Result<Approval, ConfirmationError> {
    use ConfirmationError::*;
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed);
    }
    let token = std::str::from_utf8(token).map_err(|_| Malformed)?.trim();
    let rest = token.strip_prefix("v1.").ok_or(Malformed)?;
    let (payload_b64, sig_b64) = rest.split_once('.').ok_or(Malformed)?;
    if sig_b64.contains('.') {
        return Err(Malformed);
    }
    let payload_bytes = b64::decode_url(payload_b64).ok_or(Malformed)?;
    let payload = Payload::from_json(&payload_bytes).ok_or(Malformed)?;
    let sig_bytes = b64::decode_url(sig_b64).ok_or(Malformed)?;
    let sig_arr: [u8; 64] = sig_bytes.as_slice().try_into().map_err(|_| Malformed)?;
    let challenge: Challenge = b64::decode_url(&payload.chl)
        .and_then(|c| c.as_slice().try_into().ok())
        .ok_or(Malformed)?;
    if payload.sub.is_empty() || payload.sub.len() > MAX_APPROVER_LEN {
        return Err(Malformed);
    }
    let config = config.ok_or(UnknownKey)?;
    let key: &VerifyingKey = config
        .keys
        .iter()
        .find(|(kid, _)| *kid == payload.kid)
        .map(|(_, k)| k)
        .ok_or(UnknownKey)?;
    let signed_len = 3 + payload_b64.len();
    let signed = token.get(..signed_len).ok_or(Malformed)?;
    if !verify_strict(key, signed.as_bytes(), &Signature::from_bytes(&sig_arr)) {
        return Err(BadSignature);
    }
    if !ct_eq(payload.fp.as_bytes(), state.fingerprint.as_bytes()) {
        return Err(WrongFingerprint);
    }
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = i64::try_from(skew).unwrap_or(0);
    let ttl = i64::try_from(config.max_ttl_seconds).unwrap_or(i64::MAX);
    let lifetime = payload.exp.checked_sub(payload.iat).ok_or(Expired)?;
    if payload.iat.saturating_sub(skew) > now || now > payload.exp || lifetime < 0 || lifetime > ttl
    {
        return Err(Expired);
    }
    if state.consumed.is_some_and(|c| ct_eq(&c, &challenge)) {
        return Err(AlreadyUsed);
    }
    if !state.outstanding.is_some_and(|c| ct_eq(&c, &challenge)) {
        return Err(WrongChallenge);
    }
    Ok(Approval {
        approver: payload.sub,
        kid: payload.kid,
        challenge,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    pub const NOW: u64 = 1_800_000_000;

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"bbc"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    pub fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    pub fn confirmation_config() -> Confirmation {
        Confirmation {
            header: "retry-guard-confirmation".into(),
            max_ttl_seconds: 600,
            keys: vec![("k1".into(), signing_key().verifying_key())],
        }
    }

    /// The small SHA-512's strict check decides as `verify_strict` does: good signatures,
    /// other messages, flipped bits anywhere in the signature, small-order R, weak keys.
    #[test]
    fn strict_verification_agrees_with_ed25519_dalek() {
        use ed25519_dalek::Signer as _;
        let mut seed = 1u64;
        let mut byte = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        // The identity point (small order) as R or as the key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        for round in 0..40 {
            let key = SigningKey::from_bytes(&std::array::from_fn(|_| byte()));
            let vk = key.verifying_key();
            let msg: Vec<u8> = (0..(round * 3)).map(|_| byte()).collect();
            let sig = key.sign(&msg);
            let mut cases = vec![(vk, msg.clone(), sig)];
            let mut other = msg.clone();
            other.push(1);
            cases.push((vk, other, sig));
            let mut bytes = sig.to_bytes();
            bytes[usize::from(byte()) % 64] ^= 1 << (byte() % 8);
            cases.push((vk, msg.clone(), Signature::from_bytes(&bytes)));
            let mut small_r = sig.to_bytes();
            small_r[..32].copy_from_slice(&identity);
            cases.push((vk, msg.clone(), Signature::from_bytes(&small_r)));
            cases.push((weak, msg.clone(), sig));
            for (k, m, s) in &cases {
                assert_eq!(
                    verify_strict(k, m, s),
                    k.verify_strict(m, s).is_ok(),
                    "{round}"
                );
            }
            assert!(verify_strict(&vk, &msg, &sig));
        }
    }

    pub fn sign_raw(key: &SigningKey, payload_json: &str) -> String {
        super::sign::sign_payload(payload_json.as_bytes(), key)
    }

    pub fn sign(kid: &str, chl: &Challenge, fp: &str, iat: u64, exp: u64) -> String {
        sign_raw(
            &signing_key(),
            &format!(
                r#"{{"kid":"{kid}","chl":"{}","fp":"{fp}","sub":"alice@example.com","iat":{iat},"exp":{exp}}}"#,
                b64::url(chl)
            ),
        )
    }

    const CHL: Challenge = [9; 16];

    fn check(token: &str) -> Result<Approval, ConfirmationError> {
        let cfg = confirmation_config();
        verify(
            token.as_bytes(),
            Some(&cfg),
            ChallengeState {
                fingerprint: "fp1",
                outstanding: Some(CHL),
                consumed: Some([1; 16]),
            },
            30,
            NOW,
        )
    }

    #[test]
    fn accepts_a_valid_confirmation() {
        let a = check(&sign("k1", &CHL, "fp1", NOW - 10, NOW + 300)).unwrap();
        assert_eq!(a.approver, "alice@example.com");
        assert_eq!(a.kid, "k1");
        assert_eq!(a.challenge, CHL);
    }

    #[test]
    fn each_refusal() {
        use ConfirmationError::*;
        assert_eq!(
            check(&sign("k2", &CHL, "fp1", NOW, NOW + 60)),
            Err(UnknownKey)
        );
        assert_eq!(
            check(&sign("k1", &CHL, "fp2", NOW, NOW + 60)),
            Err(WrongFingerprint)
        );
        assert_eq!(
            check(&sign("k1", &[8; 16], "fp1", NOW, NOW + 60)),
            Err(WrongChallenge)
        );
        assert_eq!(
            check(&sign("k1", &[1; 16], "fp1", NOW, NOW + 60)),
            Err(AlreadyUsed)
        );
        assert_eq!(
            check(&sign("k1", &CHL, "fp1", NOW - 100, NOW - 1)),
            Err(Expired)
        );
        assert_eq!(
            check(&sign("k1", &CHL, "fp1", NOW + 31, NOW + 60)),
            Err(Expired),
            "iat in the future"
        );
        assert_eq!(
            check(&sign("k1", &CHL, "fp1", NOW, NOW + 601)),
            Err(Expired),
            "ttl too long"
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let forged = sign_raw(
            &other,
            &format!(
                r#"{{"kid":"k1","chl":"{}","fp":"fp1","sub":"mallory","iat":{NOW},"exp":{}}}"#,
                b64::url(&CHL),
                NOW + 60
            ),
        );
        assert_eq!(check(&forged), Err(BadSignature));
        // Tampering with the payload breaks the signature.
        let good = sign("k1", &CHL, "fp1", NOW, NOW + 60);
        let (_, sig) = good.rsplit_once('.').unwrap();
        let tampered = format!(
            "v1.{}.{sig}",
            b64::url(
                format!(
                    r#"{{"kid":"k1","chl":"{}","fp":"fp1","sub":"mallory","iat":{NOW},"exp":{}}}"#,
                    b64::url(&CHL),
                    NOW + 60
                )
                .as_bytes()
            )
        );
        assert_eq!(check(&tampered), Err(BadSignature));
        let cfg_none = verify(
            good.as_bytes(),
            None,
            ChallengeState {
                fingerprint: "fp1",
                outstanding: Some(CHL),
                consumed: None,
            },
            30,
            NOW,
        );
        assert_eq!(cfg_none, Err(UnknownKey));
    }

    #[test]
    fn malformed_tokens() {
        let good = sign("k1", &CHL, "fp1", NOW, NOW + 60);
        let truncated = &good[..good.len() - 10];
        for t in [
            "",
            "v1",
            "v2.a.b",
            "v1.a",
            "v1.!!!.b",
            truncated,
            &format!("{good}.extra"),
            &format!("v1.{}.{}", b64::url(b"{}"), b64::url(&[0; 64])),
            &format!(
                "v1.{}.{}",
                b64::url(br#"{"kid":"k1","chl":"x","fp":"f","sub":"a","iat":"1","exp":2}"#),
                b64::url(&[0; 64])
            ),
            &format!(
                "v1.{}.{}",
                b64::url(br#"{"kid":"k1","chl":"x","fp":"f","sub":"a","iat":1e300,"exp":2}"#),
                b64::url(&[0; 64])
            ),
            &"v1.".repeat(5000),
        ] {
            assert_eq!(check(t), Err(ConfirmationError::Malformed), "{t:.80}");
        }
        assert_eq!(
            verify(
                &[0xff, 0xfe],
                None,
                ChallengeState {
                    fingerprint: "",
                    outstanding: None,
                    consumed: None
                },
                0,
                0
            ),
            Err(ConfirmationError::Malformed)
        );
    }
}
