//! Confirmation tokens (`confirm::verify`), three ways:
//! * mode 0: the header value as sent (mostly malformed or badly signed);
//! * mode 1: the input's bytes as the payload, signed with the test approver key, so the
//!   payload reader and every check after the signature run;
//! * mode 2: well-formed claims from the input's numbers, signed, checked against the rules
//!   written out here independently: the result must be exactly what they say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::b64;
use retry_guard::config::Confirmation;
use retry_guard::confirm::sign::{sign_payload, Claims};
use retry_guard::confirm::{verify, ChallengeState, ConfirmationError, MAX_APPROVER_LEN};
use retry_guard_fuzz::{approver_key, Bytes};
use std::sync::OnceLock;

struct Fixture {
    key: ed25519_dalek::SigningKey,
    config: Confirmation,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = approver_key();
        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        Fixture {
            config: Confirmation {
                header: "retry-guard-confirmation".into(),
                max_ttl_seconds: 600,
                keys: vec![
                    ("approvals-test".into(), key.verifying_key()),
                    ("other".into(), other),
                ],
            },
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Bytes(data);
    let mode = input.u8() % 3;
    let flags = input.u8();
    let now = input.u64();
    let skew = u64::from(input.u16());
    let ttl = u64::from(input.u16());
    let outstanding: [u8; 16] = input.array();
    let consumed: [u8; 16] = input.array();
    let mut config = f.config.clone();
    config.max_ttl_seconds = ttl;
    let config = (flags & 1 == 0).then_some(&config);
    let state = ChallengeState {
        fingerprint: "fp-of-the-request",
        outstanding: (flags & 2 == 0).then_some(outstanding),
        consumed: (flags & 4 == 0).then_some(consumed),
    };
    match mode {
        0 => {
            let _ = verify(input.rest(), config, state, skew, now);
        }
        1 => {
            let token = sign_payload(input.rest(), &f.key);
            let _ = verify(token.as_bytes(), config, state, skew, now);
        }
        _ => {
            let iat = input.u64() as i64;
            let exp = input.u64() as i64;
            let which = input.u8();
            let [kid, fp, sub] = input.strings::<3>();
            let kid = if which & 1 == 0 {
                "approvals-test".to_string()
            } else {
                kid
            };
            let fp = if which & 2 == 0 {
                state.fingerprint.to_string()
            } else {
                fp
            };
            let chl = match (which >> 2) & 3 {
                0 => outstanding,
                1 => consumed,
                _ => [which; 16],
            };
            let claims = Claims {
                kid: kid.clone(),
                chl: b64::url(&chl),
                fp: fp.clone(),
                sub: sub.clone(),
                iat,
                exp,
            };
            let token = claims.sign(&f.key);
            let got = verify(token.as_bytes(), config, state, skew, now);
            // The rules, in the order verify documents them.
            use ConfirmationError::*;
            let now_i = i64::try_from(now).unwrap_or(i64::MAX);
            let skew_i = i64::try_from(skew).unwrap_or(0);
            let want = if token.len() > retry_guard::confirm::MAX_TOKEN_LEN
                || sub.is_empty()
                || sub.len() > MAX_APPROVER_LEN
            {
                Err(Malformed)
            } else if config.is_none() || !["approvals-test", "other"].contains(&kid.as_str()) {
                Err(UnknownKey)
            } else if kid != "approvals-test" {
                Err(BadSignature)
            } else if fp != state.fingerprint {
                Err(WrongFingerprint)
            } else if exp.checked_sub(iat).is_none_or(|l| l < 0 || l as u64 > ttl)
                || iat.saturating_sub(skew_i) > now_i
                || now_i > exp
            {
                Err(Expired)
            } else if state.consumed == Some(chl) {
                Err(AlreadyUsed)
            } else if state.outstanding != Some(chl) {
                Err(WrongChallenge)
            } else {
                Ok(())
            };
            match (&got, want) {
                (Ok(a), Ok(())) => {
                    assert_eq!(
                        (a.approver.as_str(), a.kid.as_str()),
                        (sub.as_str(), "approvals-test")
                    );
                    assert_eq!(a.challenge, chl);
                }
                (Err(g), Err(w)) => assert_eq!(*g, w, "{claims:?}"),
                _ => panic!("{claims:?}: got {got:?}, want {want:?}"),
            }
        }
    }
});
