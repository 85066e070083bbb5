//! Credentials for scenarios and the operator CLI: approver keys, signed confirmation tokens
//! (issue 2's `v1.<payload>.<signature>` format) and unsigned test JWTs.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

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

// The token format has one implementation in the workspace: the end-to-end harness's.
pub use retry_guard_e2e::tokens::{sign_payload, unsigned_jwt, Confirmation};

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
