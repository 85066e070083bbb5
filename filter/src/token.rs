//! Stale bearer tokens: expired, not yet valid, too old for the action, or without expiry.

use std::fmt;

use crate::jwt::{Claims, Credential, JwtTimes, TokenShape};

/// Why a bearer token is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleReason {
    /// `exp` + skew < now.
    Expired,
    /// `nbf` > now + skew.
    NotYetValid,
    /// Older than the route's `token_max_age_seconds`.
    TooOld,
    /// A JWT without `exp` on a sensitive route.
    NoExpiry,
    /// Not a credential a server should accept: a `Bearer` value that is not one token
    /// (trailing junk, a second word), a JWT-shaped token that does not decode (a trailing
    /// `.`), or several `Authorization` fields.
    Malformed,
}

impl StaleReason {
    /// The reason token used in headers, answers and audit lines.
    pub fn name(self) -> &'static str {
        match self {
            StaleReason::Expired => "expired",
            StaleReason::NotYetValid => "not_yet_valid",
            StaleReason::TooOld => "too_old",
            StaleReason::NoExpiry => "no_expiry",
            StaleReason::Malformed => "malformed",
        }
    }
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bearer token of a request, as staleness sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BearerToken {
    /// No bearer token.
    None,
    /// A JWT with these time claims.
    Jwt(JwtTimes),
    /// Not a JWT.
    Opaque,
    /// A malformed credential (see [`StaleReason::Malformed`]).
    Malformed,
}

impl BearerToken {
    /// The bearer token of a request whose `Authorization` header has `fields` fields, the
    /// first parsed as `credential`; with the claims of a JWT. Several fields, a malformed
    /// `Bearer` value and a JWT-shaped token that does not decode are
    /// [`BearerToken::Malformed`]; a JWE and a token with at most one dot are opaque.
    pub fn classify(
        credential: Option<Credential<'_>>,
        fields: usize,
    ) -> (BearerToken, Option<Claims>) {
        if fields > 1 {
            return (BearerToken::Malformed, None);
        }
        match credential {
            Some(Credential::MalformedBearer(_)) => (BearerToken::Malformed, None),
            Some(Credential::Bearer(t)) => match TokenShape::of(t) {
                TokenShape::Opaque | TokenShape::Jwe => (BearerToken::Opaque, None),
                TokenShape::Malformed => (BearerToken::Malformed, None),
                TokenShape::Jws => match Claims::decode(t) {
                    Some(c) => (BearerToken::Jwt(c.times()), Some(c)),
                    None => (BearerToken::Malformed, None),
                },
            },
            _ => (BearerToken::None, None),
        }
    }
}

/// The rules staleness applies on one route.
#[derive(Clone, Copy, Debug)]
pub struct TokenRules {
    /// The route is sensitive (a JWT without `exp` is stale).
    pub sensitive: bool,
    /// The route's `token_max_age_seconds`.
    pub max_age: Option<u64>,
    /// Tolerated clock skew.
    pub skew: u64,
}

impl TokenRules {
    /// Does judging this token need the time the ledger first saw it? True for opaque tokens,
    /// and JWTs without `iat`, on routes with a maximum token age.
    pub fn needs_first_seen(&self, token: &BearerToken) -> bool {
        self.max_age.is_some()
            && match token {
                BearerToken::None | BearerToken::Malformed => false,
                BearerToken::Opaque => true,
                BearerToken::Jwt(t) => t.iat.is_none(),
            }
    }

    /// Judges a token at `now`; `first_seen` is when the ledger first saw it (if looked up).
    pub fn assess(
        &self,
        token: &BearerToken,
        now: u64,
        first_seen: Option<u64>,
    ) -> Option<StaleReason> {
        let nowf = now as f64;
        let skew = self.skew as f64;
        let too_old_since_seen = || match (self.max_age, first_seen) {
            (Some(max), Some(seen)) if now.saturating_sub(seen) > max => Some(StaleReason::TooOld),
            _ => None,
        };
        match token {
            BearerToken::None => None,
            BearerToken::Malformed => Some(StaleReason::Malformed),
            BearerToken::Opaque => too_old_since_seen(),
            BearerToken::Jwt(t) => {
                if let Some(exp) = t.exp {
                    if exp + skew < nowf {
                        return Some(StaleReason::Expired);
                    }
                }
                if let Some(nbf) = t.nbf {
                    if nbf > nowf + skew {
                        return Some(StaleReason::NotYetValid);
                    }
                }
                if self.sensitive && t.exp.is_none() {
                    return Some(StaleReason::NoExpiry);
                }
                match (self.max_age, t.iat) {
                    (Some(max), Some(iat)) if nowf - iat > max as f64 => Some(StaleReason::TooOld),
                    (Some(_), Some(_)) => None,
                    _ => too_old_since_seen(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn jwt(exp: Option<f64>, nbf: Option<f64>, iat: Option<f64>) -> BearerToken {
        BearerToken::Jwt(JwtTimes { exp, nbf, iat })
    }

    fn rules(sensitive: bool, max_age: Option<u64>) -> TokenRules {
        TokenRules {
            sensitive,
            max_age,
            skew: 30,
        }
    }

    #[test]
    fn each_reason() {
        let n = NOW as f64;
        let r = rules(true, Some(300));
        assert_eq!(
            r.assess(&jwt(Some(n - 31.0), None, Some(n - 10.0)), NOW, None),
            Some(StaleReason::Expired)
        );
        assert_eq!(
            r.assess(&jwt(Some(n - 29.0), None, Some(n - 10.0)), NOW, None),
            None,
            "within skew"
        );
        assert_eq!(
            r.assess(&jwt(Some(n + 600.0), Some(n + 31.0), Some(n)), NOW, None),
            Some(StaleReason::NotYetValid)
        );
        assert_eq!(
            r.assess(&jwt(None, None, Some(n)), NOW, None),
            Some(StaleReason::NoExpiry)
        );
        assert_eq!(
            r.assess(&jwt(Some(n + 600.0), None, Some(n - 301.0)), NOW, None),
            Some(StaleReason::TooOld)
        );
        assert_eq!(
            r.assess(&jwt(Some(n + 600.0), None, Some(n - 299.0)), NOW, None),
            None
        );
        assert_eq!(
            r.assess(&jwt(Some(1e300), None, Some(n)), NOW, None),
            None,
            "absurd exp is not expired"
        );
        assert_eq!(
            r.assess(&jwt(Some(-1e300), None, None), NOW, None),
            Some(StaleReason::Expired)
        );
    }

    #[test]
    fn tokens_are_classified_as_servers_see_them() {
        use crate::jwt::make_jwt;
        let jwt = make_jwt(r#"{"sub":"a","exp":1}"#);
        let class = |v: &str, fields: usize| BearerToken::classify(Credential::parse(v), fields).0;
        assert!(matches!(
            class(&format!("Bearer {jwt}"), 1),
            BearerToken::Jwt(_)
        ));
        assert!(matches!(
            class(&format!("Bearer\t{jwt}"), 1),
            BearerToken::Jwt(_)
        ));
        assert_eq!(class(&format!("Bearer {jwt}."), 1), BearerToken::Malformed);
        assert_eq!(class(&format!("Bearer {jwt} x"), 1), BearerToken::Malformed);
        assert_eq!(class(&format!("Bearer {jwt}"), 2), BearerToken::Malformed);
        assert_eq!(
            class("Bearer a.b.c", 1),
            BearerToken::Malformed,
            "not a JWT"
        );
        assert_eq!(class("Bearer opaque", 1), BearerToken::Opaque);
        assert_eq!(class("Bearer ya29.opaque", 1), BearerToken::Opaque);
        assert_eq!(class("Bearer a.b.c.d.e", 1), BearerToken::Opaque, "a JWE");
        assert_eq!(class("Basic dXNlcg==", 1), BearerToken::None);
        assert_eq!(BearerToken::classify(None, 0).0, BearerToken::None);
    }

    #[test]
    fn malformed_is_stale_everywhere() {
        for r in [rules(true, None), rules(false, Some(300))] {
            assert_eq!(
                r.assess(&BearerToken::Malformed, NOW, None),
                Some(StaleReason::Malformed)
            );
            assert!(!r.needs_first_seen(&BearerToken::Malformed));
        }
    }

    #[test]
    fn no_expiry_only_on_sensitive_routes() {
        assert_eq!(
            rules(false, None).assess(&jwt(None, None, None), NOW, None),
            None
        );
    }

    #[test]
    fn opaque_tokens_age_from_first_sighting() {
        let r = rules(true, Some(300));
        assert!(r.needs_first_seen(&BearerToken::Opaque));
        assert!(r.needs_first_seen(&jwt(Some(1e12), None, None)));
        assert!(!r.needs_first_seen(&jwt(Some(1e12), None, Some(1.0))));
        assert!(!rules(true, None).needs_first_seen(&BearerToken::Opaque));
        assert_eq!(
            r.assess(&BearerToken::Opaque, NOW, Some(NOW - 301)),
            Some(StaleReason::TooOld)
        );
        assert_eq!(r.assess(&BearerToken::Opaque, NOW, Some(NOW - 300)), None);
        assert_eq!(r.assess(&BearerToken::Opaque, NOW, None), None);
        assert_eq!(
            rules(true, None).assess(&BearerToken::Opaque, NOW, Some(0)),
            None
        );
        assert_eq!(r.assess(&BearerToken::None, NOW, Some(0)), None);
    }
}
