//! The approver's side of a confirmation: key files and signing.
//!
//! Every tool that signs (the `retry-guard approve` command, host-sim scenarios, the real-Envoy
//! tests, the benchmark) goes through [`Claims::sign`], so the token the tools make and the
//! token [`super::verify`] accepts have one definition. Nothing here is called by the filter
//! itself; the release wasm does not contain it.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::{b64, json};

/// The claims an approver signs: `{"kid","chl","fp","sub","iat","exp"}`, in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Key id: which of `confirmation.keys` verifies the signature.
    pub kid: String,
    /// The challenge of the 428 (base64url), consumed by the confirmation.
    pub chl: String,
    /// The fingerprint of the 428 (base64url).
    pub fp: String,
    /// Who approves (audited as `approver`).
    pub sub: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

impl Claims {
    /// The JSON payload, members in the documented order.
    pub fn payload_json(&self) -> String {
        let mut out = String::with_capacity(96 + self.chl.len() + self.fp.len());
        for (i, (name, value)) in [
            ("kid", &self.kid),
            ("chl", &self.chl),
            ("fp", &self.fp),
            ("sub", &self.sub),
        ]
        .into_iter()
        .enumerate()
        {
            out.push_str(if i == 0 { "{\"" } else { ",\"" });
            out.push_str(name);
            out.push_str("\":");
            json::quote(&mut out, value);
        }
        out.push_str(&format!(",\"iat\":{},\"exp\":{}}}", self.iat, self.exp));
        out
    }

    /// The token: `v1.<base64url payload>.<base64url Ed25519 signature over "v1.<payload>">`.
    pub fn sign(&self, key: &SigningKey) -> String {
        sign_payload(self.payload_json().as_bytes(), key)
    }
}

/// Signs any payload bytes in the token format (tests use it for malformed claims).
pub fn sign_payload(payload: &[u8], key: &SigningKey) -> String {
    let mut token = String::with_capacity(3 + payload.len() * 4 / 3 + 90);
    token.push_str("v1.");
    b64::push_url(&mut token, payload);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    b64::push_url(&mut token, &signature.to_bytes());
    token
}

/// Why a key file's text is not an Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFileError {
    /// Not standard base64.
    NotBase64,
    /// Decoded to this many bytes instead of 32.
    WrongLength(usize),
    /// The 32 bytes are not a valid Ed25519 public key (public key files only).
    NotAPublicKey,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::NotBase64 => f.write_str(
                "not standard base64; a key file holds the base64 of 32 bytes (an Ed25519 seed \
                 or public key), as `retry-guard keygen` writes it",
            ),
            KeyFileError::WrongLength(n) => write!(f, "expected 32 bytes, got {n}"),
            KeyFileError::NotAPublicKey => f.write_str("not a valid Ed25519 public key"),
        }
    }
}

impl std::error::Error for KeyFileError {}

fn key_bytes(text: &str) -> Result<[u8; 32], KeyFileError> {
    let bytes = b64::decode_standard(text.trim()).ok_or(KeyFileError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyFileError::WrongLength(bytes.len()))
}

/// Reads a private key file's text: standard base64 of the 32-byte Ed25519 seed.
pub fn signing_key_from_b64(text: &str) -> Result<SigningKey, KeyFileError> {
    key_bytes(text).map(|seed| SigningKey::from_bytes(&seed))
}

/// Reads a public key as `confirmation.keys` holds it: standard base64 of 32 bytes.
pub fn verifying_key_from_b64(text: &str) -> Result<VerifyingKey, KeyFileError> {
    VerifyingKey::from_bytes(&key_bytes(text)?).map_err(|_| KeyFileError::NotAPublicKey)
}

/// The seed in the key-file format (standard base64).
pub fn private_key_b64(key: &SigningKey) -> String {
    b64::standard(&key.to_bytes())
}

/// The public key in the configuration's format (standard base64 of 32 bytes).
pub fn public_key_b64(key: &SigningKey) -> String {
    b64::standard(&key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Confirmation;
    use crate::confirm::{verify, Challenge, ChallengeState};

    const NOW: u64 = 1_800_000_000;
    const CHL: Challenge = [9; 16];

    fn claims(sub: &str) -> Claims {
        Claims {
            kid: "k1".into(),
            chl: b64::url(&CHL),
            fp: "fp1".into(),
            sub: sub.into(),
            iat: NOW as i64 - 10,
            exp: NOW as i64 + 300,
        }
    }

    #[test]
    fn payload_has_the_documented_members_in_order() {
        let c = Claims {
            kid: "k".into(),
            chl: "c".into(),
            fp: "f".into(),
            sub: "alice \"a\"".into(),
            iat: 10,
            exp: 20,
        };
        assert_eq!(
            c.payload_json(),
            r#"{"kid":"k","chl":"c","fp":"f","sub":"alice \"a\"","iat":10,"exp":20}"#
        );
    }

    #[test]
    fn the_verifier_accepts_what_the_signer_makes() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let config = Confirmation {
            header: "retry-guard-confirmation".into(),
            max_ttl_seconds: 600,
            keys: vec![("k1".into(), key.verifying_key())],
        };
        let state = ChallengeState {
            fingerprint: "fp1",
            outstanding: Some(CHL),
            consumed: None,
        };
        let token = claims("alice@example.com").sign(&key);
        assert!(token.starts_with("v1.") && !token.contains('='));
        let approval = verify(token.as_bytes(), Some(&config), state, 30, NOW).unwrap();
        assert_eq!(approval.approver, "alice@example.com");
        assert_eq!(approval.challenge, CHL);
        // Another key's signature is refused.
        let other = claims("alice@example.com").sign(&SigningKey::from_bytes(&[8u8; 32]));
        assert!(verify(other.as_bytes(), Some(&config), state, 30, NOW).is_err());
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_say_why() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let back = signing_key_from_b64(&format!("{}\n", private_key_b64(&key))).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        let public = verifying_key_from_b64(&public_key_b64(&key)).unwrap();
        assert_eq!(public, key.verifying_key());
        assert_eq!(
            signing_key_from_b64("not base64!").unwrap_err(),
            KeyFileError::NotBase64
        );
        assert_eq!(
            signing_key_from_b64(&b64::standard(&[1; 31])).unwrap_err(),
            KeyFileError::WrongLength(31)
        );
    }
}
