//! Credentials for scenarios: approver key files, signed confirmation tokens and unsigned test
//! JWTs. Signing and the key format are the policy core's (`retry_guard::confirm::sign`); this
//! module only reads key files.

use std::path::Path;

use ed25519_dalek::SigningKey;

pub use retry_guard::confirm::sign::{sign_payload, Claims as Confirmation};
pub use retry_guard::jwt::unsigned as unsigned_jwt;

/// Reads an approver private key file: standard base64 of the 32-byte Ed25519 seed.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    retry_guard::confirm::sign::signing_key_from_b64(&text)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The default key id for a key file: its file name without extension
/// (`approvals-test.key` → `approvals-test`).
pub fn default_kid(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "approvals".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use retry_guard::confirm::sign::public_key_b64;

    #[test]
    fn test_key_files_belong_together() {
        let dir = retry_guard::paths::repo_root().join("testdata/keys");
        let key = read_signing_key(&dir.join("approvals-test.key")).expect("key");
        let public = std::fs::read_to_string(dir.join("approvals-test.pub")).expect("pub");
        assert_eq!(public_key_b64(&key), public.trim());
        assert_eq!(
            default_kid(&dir.join("approvals-test.key")),
            "approvals-test"
        );
    }

    #[test]
    fn a_bad_key_file_names_the_file_and_the_fault() {
        let dir = std::env::temp_dir().join(format!("rg-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("short.key");
        std::fs::write(&path, "AAAA\n").expect("write");
        let err = read_signing_key(&path).unwrap_err();
        assert!(
            err.contains("short.key") && err.contains("expected 32 bytes, got 3"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
