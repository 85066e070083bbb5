//! Credentials the tests send: confirmation tokens signed with the test key (through the
//! filter crate's one signer, `retry_guard::confirm::sign`), and unsigned JWTs.
//!
//! Confirmation token format (issue 2, "Human confirmation"):
//! `v1.<payload>.<signature>` where `<payload>` is base64url (no padding) of the JSON
//! `{"kid","chl","fp","sub","iat","exp"}` and `<signature>` is base64url (no padding) of the
//! Ed25519 signature over the ASCII bytes `v1.<payload>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};

pub use retry_guard::confirm::sign::{sign_payload, Claims as Confirmation};

use crate::{read_testdata, Error, Result};

/// Key id of the test key in `testdata/configs/*.json`.
pub const TEST_KID: &str = "approvals-test";

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The test signing key (`testdata/keys/approvals-test.key`, standard base64 of the seed).
pub fn test_signing_key() -> Result<SigningKey> {
    let rel = "keys/approvals-test.key";
    retry_guard::confirm::sign::signing_key_from_b64(&read_testdata(rel)?)
        .map_err(|e| Error(format!("testdata/{rel}: {e}")))
}

/// The test public key (`testdata/keys/approvals-test.pub`, standard base64).
pub fn test_verifying_key() -> Result<VerifyingKey> {
    let rel = "keys/approvals-test.pub";
    retry_guard::confirm::sign::verifying_key_from_b64(&read_testdata(rel)?)
        .map_err(|e| Error(format!("testdata/{rel}: {e}")))
}

/// Claims for the test key: issued now, valid for `ttl_seconds`.
pub fn test_confirmation(chl: &str, fp: &str, sub: &str, ttl_seconds: i64) -> Confirmation {
    let iat = now_unix();
    Confirmation {
        kid: TEST_KID.to_string(),
        chl: chl.to_string(),
        fp: fp.to_string(),
        sub: sub.to_string(),
        iat,
        exp: iat + ttl_seconds,
    }
}

/// Issuer, audience and key id of the TEST JWT issuer that the bundled gateway's `jwt_authn`
/// trusts (`envoy/envoy.yaml`, `testdata/keys/jwt-issuer-test.*`).
pub const TEST_ISSUER: &str = "https://issuer.retry-guard.test";
/// See [`TEST_ISSUER`].
pub const TEST_AUDIENCE: &str = "retry-guard";
/// See [`TEST_ISSUER`].
pub const TEST_ISSUER_KID: &str = "issuer-test";

/// The TEST JWT issuer's key (`testdata/keys/jwt-issuer-test.key`, standard base64 seed).
pub fn test_issuer_key() -> Result<SigningKey> {
    let rel = "keys/jwt-issuer-test.key";
    retry_guard::confirm::sign::signing_key_from_b64(&read_testdata(rel)?)
        .map_err(|e| Error(format!("testdata/{rel}: {e}")))
}

/// An EdDSA (Ed25519) JWT over `claims`, signed with `key` (kid [`TEST_ISSUER_KID`]): what
/// Envoy's `jwt_authn` verifies against a JWKS with the key's public half.
pub fn eddsa_jwt(key: &SigningKey, claims: &serde_json::Value) -> String {
    use ed25519_dalek::Signer as _;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": TEST_ISSUER_KID});
    let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(jwt.as_bytes());
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    jwt
}

/// A JWT of the TEST issuer for `sub`: issued now, valid for 10 minutes, audience
/// [`TEST_AUDIENCE`], a unique `jti` (two calls give two different tokens).
pub fn issuer_jwt(sub: &str) -> Result<String> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = now_unix();
    let claims = serde_json::json!({
        "iss": TEST_ISSUER, "aud": TEST_AUDIENCE, "sub": sub,
        "iat": now, "exp": now + 600, "jti": format!("{sub}-{now}-{n}"),
    });
    Ok(eddsa_jwt(&test_issuer_key()?, &claims))
}

/// An unsigned JWT with these claims ([`retry_guard::jwt::unsigned`]): the filter decodes
/// bearer JWTs without verifying them.
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    retry_guard::jwt::unsigned(claims)
}

/// Decodes a base64url (no padding) string, as the filter emits challenges and fingerprints.
pub fn b64url_decode(s: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| Error(format!("{s:?} is not base64url without padding: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier as _};

    #[test]
    fn test_key_files_belong_together() {
        let sk = test_signing_key().expect("signing key");
        let pk = test_verifying_key().expect("public key");
        assert_eq!(sk.verifying_key(), pk);
    }

    #[test]
    fn confirmation_token_has_the_contract_format() {
        let sk = test_signing_key().expect("signing key");
        let c = Confirmation {
            kid: TEST_KID.into(),
            chl: "Y2hhbGxlbmdl".into(),
            fp: "ZnA".into(),
            sub: "alice@example.com".into(),
            iat: 1_700_000_000,
            exp: 1_700_000_300,
        };
        let token = c.sign(&sk);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "v1");
        let payload = b64url_decode(parts[1]).expect("payload b64url");
        assert_eq!(
            String::from_utf8(payload).expect("utf8"),
            r#"{"kid":"approvals-test","chl":"Y2hhbGxlbmdl","fp":"ZnA","sub":"alice@example.com","iat":1700000000,"exp":1700000300}"#
        );
        let sig_bytes = b64url_decode(parts[2]).expect("sig b64url");
        let sig = Signature::from_slice(&sig_bytes).expect("64-byte signature");
        let signed = format!("v1.{}", parts[1]);
        test_verifying_key()
            .expect("pk")
            .verify(signed.as_bytes(), &sig)
            .expect("signature verifies over v1.<payload>");
        assert!(!token.contains('='));
    }

    #[test]
    fn unsigned_jwt_carries_the_claims() {
        let jwt = unsigned_jwt(&serde_json::json!({"sub": "ci-bot", "exp": 5}));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&b64url_decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["sub"], "ci-bot");
        assert_eq!(claims["exp"], 5);
        assert!(!jwt.contains('='));
    }
}
