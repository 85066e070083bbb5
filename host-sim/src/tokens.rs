//! Credentials for scenarios and the operator CLI: approver keys, signed confirmation tokens
//! (issue 2's `v1.<payload>.<signature>` format) and unsigned test JWTs.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest as _, Sha256};

/// Reads an approver private key file: standard base64 of the 32-byte Ed25519 seed.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let bytes = STANDARD.decode(text.trim()).map_err(|e| {
        format!(
            "{}: not standard base64 ({e}); a key file holds the base64 of a 32-byte Ed25519 \
             seed, as `retry-guard keygen` writes it",
            path.display()
        )
    })?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "{}: expected 32 bytes (an Ed25519 seed), got {}",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The default key id for a key file: its file name without extension
/// (`approvals-test.key` → `approvals-test`).
pub fn default_kid(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "approvals".into())
}

/// The public key in the configuration's format (standard base64 of 32 bytes).
pub fn public_key_b64(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().to_bytes())
}

/// A new random key pair.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The seed in the key-file format.
pub fn private_key_b64(key: &SigningKey) -> String {
    STANDARD.encode(key.to_bytes())
}

/// The claims of a confirmation token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// Key id.
    pub kid: String,
    /// Challenge id (from the 428).
    pub chl: String,
    /// Fingerprint (from the 428).
    pub fp: String,
    /// Approver.
    pub sub: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires (unix seconds).
    pub exp: i64,
}

impl Confirmation {
    /// The JSON payload, members in the documented order.
    pub fn payload_json(&self) -> String {
        let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
        format!(
            "{{\"kid\":{},\"chl\":{},\"fp\":{},\"sub\":{},\"iat\":{},\"exp\":{}}}",
            s(&self.kid),
            s(&self.chl),
            s(&self.fp),
            s(&self.sub),
            self.iat,
            self.exp
        )
    }

    /// `v1.<b64url payload>.<b64url Ed25519 signature over "v1.<b64url payload>">`.
    pub fn sign(&self, key: &SigningKey) -> String {
        sign_payload(self.payload_json().as_bytes(), key)
    }
}

/// Signs any payload bytes in the token format.
pub fn sign_payload(payload: &[u8], key: &SigningKey) -> String {
    let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// An unsigned JWT (`HS256` header, a digest as signature) carrying `claims`: the filter
/// decodes bearer JWTs without verifying them.
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let sig = Sha256::digest(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier as _};

    #[test]
    fn confirmation_format_matches_the_contract() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let c = Confirmation {
            kid: "k".into(),
            chl: "c".into(),
            fp: "f".into(),
            sub: "alice".into(),
            iat: 10,
            exp: 20,
        };
        let token = c.sign(&key);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "v1");
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("b64url");
        assert_eq!(
            payload,
            br#"{"kid":"k","chl":"c","fp":"f","sub":"alice","iat":10,"exp":20}"#
        );
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("sig"))
            .expect("64 bytes");
        key.verifying_key()
            .verify(format!("v1.{}", parts[1]).as_bytes(), &sig)
            .expect("verifies");
    }

    #[test]
    fn test_key_files_belong_together() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/keys");
        let key = read_signing_key(&dir.join("approvals-test.key")).expect("key");
        let public = std::fs::read_to_string(dir.join("approvals-test.pub")).expect("pub");
        assert_eq!(public_key_b64(&key), public.trim());
        assert_eq!(
            default_kid(&dir.join("approvals-test.key")),
            "approvals-test"
        );
    }
}
