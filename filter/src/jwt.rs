//! Bearer credentials and unverified JWT claims.
//!
//! retry-guard never trusts a JWT: it reads claims only to name the principal and to judge
//! staleness. Anything that is not a well-formed JWT is an opaque token. Inputs are bounded so
//! a hostile header cannot make the filter allocate or work without limit.

use serde_json::{Map, Value};

use crate::b64;

/// Longest credential the filter will decode as a JWT; longer ones are opaque.
pub const MAX_JWT_LEN: usize = 16 * 1024;

/// The credential of an `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// `Basic <credentials>`.
    Basic(&'a str),
    /// Any other scheme: the whole value.
    Other(&'a str),
}

impl<'a> Credential<'a> {
    /// Parses an `Authorization` value (scheme case-insensitive). `None` if empty.
    pub fn parse(value: &'a str) -> Option<Credential<'a>> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        let (scheme, rest) = match value.split_once(' ') {
            Some((s, r)) => (s, r.trim()),
            None => (value, ""),
        };
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            Some(Credential::Bearer(rest))
        } else if scheme.eq_ignore_ascii_case("basic") && !rest.is_empty() {
            Some(Credential::Basic(rest))
        } else {
            Some(Credential::Other(value))
        }
    }

    /// The secret part that identifies the caller.
    pub fn secret(self) -> &'a str {
        match self {
            Credential::Bearer(s) | Credential::Basic(s) | Credential::Other(s) => s,
        }
    }
}

/// Claims of a JWT payload, decoded without verification.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// Decodes the payload of `header.payload.signature` (base64url segments, JSON object
    /// payload). `None` when the token is not such a JWT.
    pub fn decode(token: &str) -> Option<Claims> {
        if token.len() > MAX_JWT_LEN {
            return None;
        }
        let mut parts = token.split('.');
        let (header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || header.is_empty() || payload.is_empty() {
            return None;
        }
        let bytes = b64::decode_url(payload)?;
        match serde_json::from_slice::<Value>(&bytes).ok()? {
            Value::Object(map) => Some(Claims(map)),
            _ => None,
        }
    }

    /// A numeric claim as seconds; strings, booleans and non-finite values count as absent.
    pub fn seconds(&self, name: &str) -> Option<f64> {
        self.0.get(name)?.as_f64().filter(|f| f.is_finite())
    }

    /// A claim as principal text: strings as they are, integers formatted; others absent.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Some(u.to_string()),
                (None, Some(i)) => Some(i.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The time claims staleness looks at.
    pub fn times(&self) -> JwtTimes {
        JwtTimes {
            exp: self.seconds("exp"),
            nbf: self.seconds("nbf"),
            iat: self.seconds("iat"),
        }
    }
}

/// `exp`, `nbf` and `iat` of a JWT, in Unix seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JwtTimes {
    /// Expiry.
    pub exp: Option<f64>,
    /// Not before.
    pub nbf: Option<f64>,
    /// Issued at.
    pub iat: Option<f64>,
}

/// An unsigned JWT `header.payload.signature` (base64url, no padding) carrying `claims`, for
/// the tools and tests that send bearer tokens through the filter.
///
/// The header says HS256 and the signature segment is 32 bytes that no key produced (the
/// SHA-256 of the signing input): the filter decodes bearer JWTs without verifying them, so
/// only the claims matter to it. Never accepted by a server that verifies.
pub fn unsigned(claims: &Value) -> String {
    use sha2::{Digest as _, Sha256};
    let mut jwt = String::new();
    b64::push_url(&mut jwt, br#"{"alg":"HS256","typ":"JWT"}"#);
    jwt.push('.');
    b64::push_url(&mut jwt, claims.to_string().as_bytes());
    let fake_signature = Sha256::digest(jwt.as_bytes());
    jwt.push('.');
    b64::push_url(&mut jwt, &fake_signature);
    jwt
}

#[cfg(test)]
pub(crate) fn make_jwt(payload: &str) -> String {
    format!(
        "{}.{}.{}",
        b64::url(br#"{"alg":"none"}"#),
        b64::url(payload.as_bytes()),
        b64::url(b"sig")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes() {
        assert_eq!(
            Credential::parse("Bearer abc"),
            Some(Credential::Bearer("abc"))
        );
        assert_eq!(
            Credential::parse("bearer  abc "),
            Some(Credential::Bearer("abc"))
        );
        assert_eq!(
            Credential::parse("Basic dXNlcg=="),
            Some(Credential::Basic("dXNlcg=="))
        );
        assert_eq!(
            Credential::parse("Bearer"),
            Some(Credential::Other("Bearer"))
        );
        assert_eq!(Credential::parse("   "), None);
    }

    #[test]
    fn decodes_claims_and_ignores_wrong_types() {
        let c = Claims::decode(&make_jwt(
            r#"{"sub":"ci-bot","exp":1e300,"iat":"100","nbf":5}"#,
        ))
        .unwrap();
        assert_eq!(c.text("sub").as_deref(), Some("ci-bot"));
        assert_eq!(c.seconds("exp"), Some(1e300));
        assert_eq!(c.seconds("iat"), None, "a string is not a time");
        assert_eq!(c.seconds("nbf"), Some(5.0));
    }

    #[test]
    fn malformed_tokens_are_opaque() {
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.@@@.###",
            ".e30.",
            &format!("x.{}.y", b64::url(b"[1,2]")),
            &format!("x.{}.y", b64::url(b"not json")),
            &format!("x.{}.y", b64::url(&[0xff, 0xfe])),
        ] {
            assert!(Claims::decode(t).is_none(), "{t}");
        }
        let huge = format!("a.{}.c", "A".repeat(MAX_JWT_LEN));
        assert!(Claims::decode(&huge).is_none());
    }
}
