//! Bearer credentials and unverified JWT claims.
//!
//! retry-guard never trusts a JWT: it reads claims only to name the principal and to judge
//! staleness. Anything that is not a well-formed JWT is an opaque token. Inputs are bounded so
//! a hostile header cannot make the filter allocate or work without limit.

use crate::json::{Map, Value};

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
    /// The `Bearer` scheme without a well-formed token (none, or one with spaces, commas or
    /// other characters RFC 6750's `b64token` lacks): the whole value. Stale as `malformed`.
    MalformedBearer(&'a str),
}

/// Is `t` an RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" )
/// *"="`?
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| B64TOKEN.get(usize::from(b)) == Some(&true))
}

/// The characters of a `b64token` (but `=`), by byte: one load per byte of a JWT, which the
/// filter checks on every guarded request.
// Indexing in a constant is evaluated by the compiler: out of range fails the build, it cannot
// panic at run time.
#[allow(clippy::indexing_slicing)]
const B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// The value without the spaces and tabs around it.
fn trim_ws(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |e| e + 1);
    s.get(start..end.max(start)).unwrap_or("")
}

impl<'a> Credential<'a> {
    /// Parses an `Authorization` value as servers do: the scheme case-insensitive, any run of
    /// spaces and tabs after it. A `Bearer` value whose rest is not one `b64token` (trailing
    /// junk, a second word, nothing) is [`Credential::MalformedBearer`]. `None` if empty.
    pub fn parse(value: &'a str) -> Option<Credential<'a>> {
        let value = trim_ws(value);
        if value.is_empty() {
            return None;
        }
        let (scheme, rest) = match value.bytes().position(|c| c == b' ' || c == b'\t') {
            Some(at) => (
                value.get(..at).unwrap_or(""),
                trim_ws(value.get(at..).unwrap_or("")),
            ),
            None => (value, ""),
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if is_b64token(rest) {
                Some(Credential::Bearer(rest))
            } else {
                Some(Credential::MalformedBearer(value))
            }
        } else if scheme.eq_ignore_ascii_case("basic") && !rest.is_empty() {
            Some(Credential::Basic(rest))
        } else {
            Some(Credential::Other(value))
        }
    }

    /// The secret part that identifies the caller.
    pub fn secret(self) -> &'a str {
        match self {
            Credential::Bearer(s)
            | Credential::Basic(s)
            | Credential::Other(s)
            | Credential::MalformedBearer(s) => s,
        }
    }
}

/// What a bearer token looks like before its claims are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenShape {
    /// No dot, or one: not a JWT (opaque).
    Opaque,
    /// Three dot-separated segments (a JWS, e.g. a signed JWT).
    Jws,
    /// Five segments (a JWE, encrypted): opaque to the filter.
    Jwe,
    /// Any other number of segments (a JWT with a trailing `.`, say): not a token a server
    /// should accept, stale as `malformed`.
    Malformed,
}

impl TokenShape {
    /// The shape of a bearer token by its dots.
    pub fn of(token: &str) -> TokenShape {
        // `matches` finds a char with memchr: faster than a byte-by-byte count.
        match token.matches('.').count() {
            0 | 1 => TokenShape::Opaque,
            2 => TokenShape::Jws,
            4 => TokenShape::Jwe,
            _ => TokenShape::Malformed,
        }
    }
}

/// Claims of a JWT payload, decoded without verification.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims(Map);

impl Claims {
    /// Decodes the payload of `header.payload.signature` (base64url segments, JSON object
    /// payload). `None` when the token is not such a JWT.
    pub fn decode(token: &str) -> Option<Claims> {
        if token.len() > MAX_JWT_LEN {
            return None;
        }
        let mut parts = token.split('.');
        // The signature may be empty (an unsecured JWT, `alg: none`).
        let (header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || header.is_empty() || payload.is_empty() {
            return None;
        }
        let bytes = b64::decode_url(payload)?;
        match crate::json::parse(&bytes).ok()? {
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
#[cfg(not(target_arch = "wasm32"))]
pub fn unsigned(claims: &serde_json::Value) -> String {
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
        assert_eq!(Credential::parse("   "), None);
    }

    #[test]
    fn parses_bearer_as_servers_do() {
        for ok in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer\tabc",
            "Bearer \t  abc",
            "Bearer abc\t",
            " Bearer abc ",
        ] {
            assert_eq!(
                Credential::parse(ok),
                Some(Credential::Bearer("abc")),
                "{ok:?}"
            );
        }
        assert_eq!(
            Credential::parse("Bearer a-b.c_d~e+f/g=="),
            Some(Credential::Bearer("a-b.c_d~e+f/g=="))
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer abc def",
            "Bearer abc,",
            "Bearer abc, Bearer def",
            "Bearer abc\"",
            "Bearer =abc",
            "Bearer ===",
            "Bearer абв",
        ] {
            assert_eq!(
                Credential::parse(bad),
                Some(Credential::MalformedBearer(bad.trim())),
                "{bad:?}"
            );
        }
        assert_eq!(
            Credential::parse("Bearerabc"),
            Some(Credential::Other("Bearerabc"))
        );
    }

    #[test]
    fn token_shapes() {
        assert_eq!(TokenShape::of("opaque"), TokenShape::Opaque);
        assert_eq!(TokenShape::of("ya29.opaque"), TokenShape::Opaque);
        assert_eq!(TokenShape::of("h.p.s"), TokenShape::Jws);
        assert_eq!(TokenShape::of("h.p."), TokenShape::Jws);
        assert_eq!(TokenShape::of("h.p.s."), TokenShape::Malformed);
        assert_eq!(TokenShape::of("a.b.c.d.e"), TokenShape::Jwe);
        assert_eq!(TokenShape::of("a.b.c.d.e.f"), TokenShape::Malformed);
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
