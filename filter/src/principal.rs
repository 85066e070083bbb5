//! Who is calling: the principal a fingerprint is scoped to.
//!
//! The principal comes from what the upstream trusts: the filter derives it after the
//! stale-token decision, from the credential as it goes upstream, so a credential the filter
//! strips or rejects (expired, malformed, a forged JWT without `exp`) never names a principal.
//! `header:<name>` and `jwt:<claim>` are caller-chosen (see
//! [`PrincipalSource::caller_chosen`]) and used only where the configuration lists them.

use sha2::{Digest, Sha256};

use crate::b64;
use crate::config::PrincipalSource;
use crate::headers::HeaderPairs;
use crate::jwt::{Claims, Credential};

/// Longest principal text taken from a header or claim; longer values are hashed.
pub const MAX_PRINCIPAL_LEN: usize = 256;

/// The principal when no source yields a value.
pub const ANONYMOUS: &str = "anonymous";

/// What principal derivation may look at.
pub struct PrincipalInputs<'a> {
    /// The mTLS peer URI SAN.
    pub peer_identity: Option<&'a str>,
    /// The `Authorization` credential as it goes upstream: `None` when there is none, or when
    /// the filter strips or rejects it.
    pub credential: Option<Credential<'a>>,
    /// Claims of that credential's JWT, if it is one.
    pub claims: Option<&'a Claims>,
    /// The request headers (`header:<name>` and `cookie:<name>` read them).
    pub headers: &'a HeaderPairs<'a>,
}

/// A source named the caller in more than one way: the upstream may take either value, so
/// the request has no one principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ambiguous {
    /// The source, as configured (`cookie:session`, `header:x-client-id`).
    pub source: String,
}

/// Derives the principal: the first source that yields a value, else `anonymous`. A source
/// with two different values (a cookie sent twice, a header field repeated) is
/// [`Ambiguous`].
pub fn derive(
    sources: &[PrincipalSource],
    inputs: &PrincipalInputs<'_>,
) -> Result<String, Ambiguous> {
    for source in sources {
        let value = match source {
            PrincipalSource::PeerIdentity => inputs
                .peer_identity
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            PrincipalSource::Header(name) => {
                let values = inputs
                    .headers
                    .all(name)
                    .filter_map(|v| std::str::from_utf8(v).ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                one_of(values)
                    .map_err(|()| Ambiguous {
                        source: format!("header:{name}"),
                    })?
                    .map(str::to_string)
            }
            PrincipalSource::JwtClaim(claim) => inputs.claims.and_then(|c| c.text(claim)),
            PrincipalSource::Token => inputs.credential.map(|c| token_principal(c.secret())),
            PrincipalSource::Cookie(name) => cookie(inputs.headers, name)
                .map_err(|()| Ambiguous {
                    source: format!("cookie:{name}"),
                })?
                .map(|v| cookie_principal(name, v)),
        };
        if let Some(v) = value {
            return Ok(bounded(v));
        }
    }
    Ok(ANONYMOUS.to_string())
}

/// The one value of `values` (equal repeats allowed); `Err` when two differ.
fn one_of<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> Result<Option<T>, ()> {
    let mut found: Option<T> = None;
    for v in values {
        match found {
            Some(f) if f != v => return Err(()),
            _ => found = Some(v),
        }
    }
    Ok(found)
}

/// The value of cookie `name` over every `cookie` field (`a=1; b=2`; a value in double quotes
/// unquoted, as servers read it); `Err` when it is sent with two different values.
fn cookie<'h>(headers: &HeaderPairs<'h>, name: &str) -> Result<Option<&'h [u8]>, ()> {
    let mut found: Option<&[u8]> = None;
    for pair in headers
        .all("cookie")
        .flat_map(|field| field.split(|&b| b == b';'))
    {
        let Some(at) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (n, v) = (
            pair.get(..at).unwrap_or(&[]),
            pair.get(at + 1..).unwrap_or(&[]),
        );
        if n.trim_ascii() != name.as_bytes() {
            continue;
        }
        let v = match v.trim_ascii() {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        match found {
            _ if v.is_empty() => {}
            Some(f) if f != v => return Err(()),
            _ => found = Some(v),
        }
    }
    Ok(found)
}

/// `token:<base64url SHA-256 of the credential>`: identifies a caller without logging the
/// credential.
pub fn token_principal(secret: &str) -> String {
    hashed(&["token:"], secret.as_bytes())
}

/// `cookie:<name>:<base64url SHA-256 of the value>`: a session without its secret.
pub fn cookie_principal(name: &str, value: &[u8]) -> String {
    hashed(&["cookie:", name, ":"], value)
}

/// The parts, then base64url of SHA-256 of `secret`.
fn hashed(parts: &[&str], secret: &[u8]) -> String {
    let mut out = parts.concat();
    b64::push_url(&mut out, &Sha256::digest(secret));
    out
}

fn bounded(v: String) -> String {
    if v.len() <= MAX_PRINCIPAL_LEN {
        v
    } else {
        hashed(&["sha256:"], v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::serialize;
    use crate::jwt::make_jwt;

    fn derive_with(
        sources: &[PrincipalSource],
        peer: Option<&str>,
        credential: Option<Credential<'_>>,
        claims: Option<&Claims>,
        headers: &[(&str, &[u8])],
    ) -> Result<String, Ambiguous> {
        let buf = serialize(headers);
        let headers = HeaderPairs::parse(&buf).unwrap();
        derive(
            sources,
            &PrincipalInputs {
                peer_identity: peer,
                credential,
                claims,
                headers: &headers,
            },
        )
    }

    #[test]
    fn first_source_with_a_value_wins() {
        let jwt = make_jwt(r#"{"sub":"alice"}"#);
        let claims = Claims::decode(&jwt).unwrap();
        let cred = Some(Credential::Bearer(&jwt));
        let sources = vec![
            PrincipalSource::PeerIdentity,
            PrincipalSource::Header("x-client-id".into()),
            PrincipalSource::JwtClaim("sub".into()),
            PrincipalSource::Cookie("session".into()),
            PrincipalSource::Token,
        ];
        let peer = Some("spiffe://cluster.local/ns/ci/sa/bot");
        let client: &[(&str, &[u8])] = &[("x-client-id", b"ci-bot")];
        assert_eq!(
            derive_with(&sources, peer, cred, Some(&claims), client).unwrap(),
            "spiffe://cluster.local/ns/ci/sa/bot"
        );
        assert_eq!(
            derive_with(&sources, None, cred, Some(&claims), client).unwrap(),
            "ci-bot"
        );
        assert_eq!(
            derive_with(&sources, None, cred, Some(&claims), &[]).unwrap(),
            "alice"
        );
        let session: &[(&str, &[u8])] = &[("cookie", b"theme=dark; session=s3cr3t")];
        let by_cookie = derive_with(&sources, None, cred, None, session).unwrap();
        assert_eq!(by_cookie, cookie_principal("session", b"s3cr3t"));
        assert!(by_cookie.starts_with("cookie:session:") && !by_cookie.contains("s3cr3t"));
        assert!(derive_with(&sources, None, cred, None, &[])
            .unwrap()
            .starts_with("token:"));
        assert_eq!(
            derive_with(&sources, None, None, None, &[]).unwrap(),
            "anonymous"
        );
    }

    #[test]
    fn cookies_are_read_as_servers_read_them() {
        let sources = [PrincipalSource::Cookie("session".into())];
        let p = |fields: &[&str]| {
            let headers: Vec<(&str, &[u8])> =
                fields.iter().map(|f| ("cookie", f.as_bytes())).collect();
            derive_with(&sources, None, None, None, &headers)
        };
        let want = Ok(cookie_principal("session", b"abc"));
        assert_eq!(p(&["session=abc"]), want);
        assert_eq!(p(&["a=1;session=abc"]), want);
        assert_eq!(
            p(&["a=1", " session = abc "]),
            want,
            "HTTP/2 sends one field per cookie"
        );
        assert_eq!(p(&["session=\"abc\""]), want);
        assert_eq!(
            p(&["session=abc; session=abc"]),
            want,
            "the same value twice"
        );
        assert_eq!(
            p(&["sessionx=abc", "Session=abc", "session="]),
            Ok("anonymous".into())
        );
        assert_eq!(
            p(&["session=abc; session=forged"]),
            Err(Ambiguous {
                source: "cookie:session".into()
            })
        );
        assert_eq!(
            p(&["session=abc", "session=forged"]),
            Err(Ambiguous {
                source: "cookie:session".into()
            })
        );
    }

    #[test]
    fn repeated_headers_are_ambiguous() {
        let sources = [PrincipalSource::Header("x-client-id".into())];
        let p = |headers: &[(&str, &[u8])]| derive_with(&sources, None, None, None, headers);
        assert_eq!(
            p(&[("x-client-id", b"a"), ("x-client-id", b" a ")]),
            Ok("a".into())
        );
        assert!(p(&[("x-client-id", b"a"), ("x-client-id", b"b")]).is_err());
        assert_eq!(p(&[("x-client-id", b"  ")]), Ok("anonymous".into()));
    }

    #[test]
    fn long_values_are_hashed() {
        let long = "x".repeat(10_000);
        let p = derive_with(
            &[PrincipalSource::Header("h".into())],
            None,
            None,
            None,
            &[("h", long.as_bytes())],
        )
        .unwrap();
        assert!(p.starts_with("sha256:") && p.len() < 64);
    }
}
