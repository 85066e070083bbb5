//! Bearer credentials, unverified JWT claims and the staleness check (`jwt`, `token`): the
//! `Authorization` value as sent, or (mode 1) a JWT whose payload segment is the input's
//! bytes, judged under random rules at a random now.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::jwt::{Claims, Credential, TokenShape};
use retry_guard::token::{BearerToken, StaleReason, TokenRules};
use retry_guard_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let flags = input.u8();
    let now = input.u64();
    let skew = u64::from(input.u16());
    let max_age = input.u32();
    let first_seen = input.u64();
    let rest = input.rest();
    let value = if flags & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut jwt = String::from("Bearer ");
        retry_guard::b64::push_url(&mut jwt, br#"{"alg":"EdDSA","typ":"JWT"}"#);
        jwt.push('.');
        retry_guard::b64::push_url(&mut jwt, rest);
        jwt.push_str(".c2ln");
        jwt
    };
    let credential = Credential::parse(&value);
    if let Some(c) = credential {
        let secret = c.secret();
        assert!(value.contains(secret));
        if let Credential::Bearer(t) = c {
            assert!(!t.is_empty() && !t.contains([' ', '\t', ',']));
            let _ = TokenShape::of(t);
        }
    }
    let fields = usize::from(flags >> 6);
    let (token, claims) = BearerToken::classify(credential, fields);
    if let Some(claims) = &claims {
        let _ = (claims.text("sub"), claims.text("client_id"), claims.times());
        if let Credential::Bearer(t) = credential.unwrap() {
            assert_eq!(Claims::decode(t).as_ref(), Some(claims));
        }
    }
    let rules = TokenRules {
        sensitive: flags & 2 != 0,
        max_age: (flags & 4 != 0).then_some(u64::from(max_age)),
        skew,
    };
    let seen = (flags & 8 != 0).then_some(first_seen);
    let needs = rules.needs_first_seen(&token);
    let stale = rules.assess(&token, now, seen.filter(|_| needs));
    match token {
        BearerToken::None => assert_eq!(stale, None),
        BearerToken::Malformed => assert_eq!(stale, Some(StaleReason::Malformed)),
        BearerToken::Opaque => assert!(matches!(stale, None | Some(StaleReason::TooOld))),
        BearerToken::Jwt(times) => {
            for t in [times.exp, times.nbf, times.iat].into_iter().flatten() {
                assert!(t.is_finite());
            }
            if let Some(exp) = times.exp {
                if exp + (skew as f64) < now as f64 {
                    assert_eq!(stale, Some(StaleReason::Expired));
                }
            }
            if stale.is_none() && rules.sensitive {
                assert!(times.exp.is_some());
            }
        }
    }
});
