//! Who is calling: the principal a fingerprint is scoped to.

use sha2::{Digest, Sha256};

use crate::b64;
use crate::config::PrincipalSource;
use crate::jwt::{Claims, Credential};

/// Longest principal text taken from a header or claim; longer values are hashed.
pub const MAX_PRINCIPAL_LEN: usize = 256;

/// The principal when no source yields a value.
pub const ANONYMOUS: &str = "anonymous";

/// What principal derivation may look at.
pub struct PrincipalInputs<'a> {
    /// The mTLS peer URI SAN.
    pub peer_identity: Option<&'a str>,
    /// The parsed `Authorization` credential.
    pub credential: Option<Credential<'a>>,
    /// Claims of the bearer JWT, if it is one.
    pub claims: Option<&'a Claims>,
}

/// Derives the principal: the first source that yields a value, else `anonymous`.
/// `header` looks up a request header by lower-case name (UTF-8 values only).
pub fn derive(
    sources: &[PrincipalSource],
    inputs: &PrincipalInputs<'_>,
    header: &mut dyn FnMut(&str) -> Option<String>,
) -> String {
    for source in sources {
        let value = match source {
            PrincipalSource::PeerIdentity => inputs
                .peer_identity
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            PrincipalSource::Header(name) => header(name).filter(|v| !v.trim().is_empty()),
            PrincipalSource::JwtClaim(claim) => inputs.claims.and_then(|c| c.text(claim)),
            PrincipalSource::Token => inputs.credential.map(|c| token_principal(c.secret())),
        };
        if let Some(v) = value {
            return bounded(v);
        }
    }
    ANONYMOUS.to_string()
}

/// `token:<base64url SHA-256 of the credential>`: identifies a caller without logging the
/// credential.
pub fn token_principal(secret: &str) -> String {
    format!("token:{}", b64::url(&Sha256::digest(secret.as_bytes())))
}

fn bounded(v: String) -> String {
    if v.len() <= MAX_PRINCIPAL_LEN {
        v
    } else {
        format!("sha256:{}", b64::url(&Sha256::digest(v.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::make_jwt;

    #[test]
    fn first_source_with_a_value_wins() {
        let jwt = make_jwt(r#"{"sub":"alice"}"#);
        let claims = Claims::decode(&jwt).unwrap();
        let cred = Credential::parse("Bearer x").map(|_| Credential::Bearer(&jwt));
        let sources = vec![
            PrincipalSource::PeerIdentity,
            PrincipalSource::Header("x-client-id".into()),
            PrincipalSource::JwtClaim("sub".into()),
            PrincipalSource::Token,
        ];
        let mut no_header = |_: &str| None;
        let inputs = PrincipalInputs {
            peer_identity: Some("spiffe://cluster.local/ns/ci/sa/bot"),
            credential: cred,
            claims: Some(&claims),
        };
        assert_eq!(
            derive(&sources, &inputs, &mut no_header),
            "spiffe://cluster.local/ns/ci/sa/bot"
        );
        let inputs = PrincipalInputs {
            peer_identity: None,
            ..inputs
        };
        let mut hdr = |n: &str| (n == "x-client-id").then(|| "ci-bot".to_string());
        assert_eq!(derive(&sources, &inputs, &mut hdr), "ci-bot");
        assert_eq!(derive(&sources, &inputs, &mut no_header), "alice");
        let inputs = PrincipalInputs {
            claims: None,
            ..inputs
        };
        assert!(derive(&sources, &inputs, &mut no_header).starts_with("token:"));
        let inputs = PrincipalInputs {
            credential: None,
            ..inputs
        };
        assert_eq!(derive(&sources, &inputs, &mut no_header), "anonymous");
    }

    #[test]
    fn long_values_are_hashed() {
        let mut hdr = |_: &str| Some("x".repeat(10_000));
        let inputs = PrincipalInputs {
            peer_identity: None,
            credential: None,
            claims: None,
        };
        let p = derive(&[PrincipalSource::Header("h".into())], &inputs, &mut hdr);
        assert!(p.starts_with("sha256:") && p.len() < 64);
    }
}
