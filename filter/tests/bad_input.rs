//! Untrusted input never panics the filter: random and mutated headers, tokens, bodies and
//! configurations go through every parser of the policy core. (A panic in the wasm would kill
//! the VM for every request on that worker.) Deterministic: a fixed-seed xorshift generator.

use retry_guard::b64;
use retry_guard::canonical::{canonical_form, canonical_json, canonical_path, BodyForm};
use retry_guard::config::{Config, Confirmation};
use retry_guard::confirm::{self, ChallengeState};
use retry_guard::fingerprint::parse_idempotency_key;
use retry_guard::fingerprint::{body_digest, BodyDigester};
use retry_guard::jwt::{Claims, Credential};
use retry_guard::ledger::Set;

mod support;

use support::Rng;

impl Rng {
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        let alphabet: &[u8] = b"{}[]\":,.0123456789eE+-abcdefxyzABC_/=\\ \t\nv1.\xff\x00";
        (0..len)
            .map(|_| {
                if self.below(4) == 0 {
                    self.next() as u8
                } else {
                    alphabet[self.below(alphabet.len())]
                }
            })
            .collect()
    }
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=self.below(4) {
            if v.is_empty() {
                break;
            }
            let i = self.below(v.len());
            match self.below(4) {
                0 => v[i] = self.next() as u8,
                1 => {
                    v.remove(i);
                }
                2 => v.insert(i, self.next() as u8),
                _ => v.truncate(i),
            }
        }
        v
    }
}

const EXAMPLE: &[u8] = include_bytes!("../../testdata/configs/issue-example.json");

#[test]
fn configurations_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let _ = Config::parse(&rng.mutate(EXAMPLE));
        let _ = Config::parse(&rng.bytes(64));
    }
    for absurd in [
        r#"{"routes":[{"name":"a","match":{"path":"/"},"class":"read_only","owner":"o","escalation":"e","max_attempts":1e300}]}"#,
        r#"{"routes":[{"name":"a","match":{"path":"/"},"class":"read_only","owner":"o","escalation":"e","max_attempts":-1}]}"#,
        r#"{"window_seconds":18446744073709551616,"routes":[]}"#,
        r#"{"routes":[{"name":"a","match":{"methods":[1,2]},"class":"read_only","owner":"o","escalation":"e"}]}"#,
    ] {
        assert!(Config::parse(absurd.as_bytes()).is_err(), "{absurd}");
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Config::parse(deep.as_bytes()).is_err());
}

#[test]
fn tokens_and_headers_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let jwt_seed = format!(
        "{}.{}.{}",
        b64::url(br#"{"alg":"none"}"#),
        b64::url(br#"{"sub":"a","exp":1e300,"iat":"x","nbf":[1]}"#),
        "sig"
    );
    let conf = Confirmation {
        header: "retry-guard-confirmation".into(),
        max_ttl_seconds: 600,
        keys: vec![],
    };
    let state = ChallengeState {
        fingerprint: "fp",
        outstanding: Some([1; 16]),
        consumed: None,
    };
    for _ in 0..20_000 {
        let raw = rng.bytes(200);
        let text = String::from_utf8_lossy(&raw);
        let _ = Claims::decode(&text).map(|c| (c.times(), c.text("sub")));
        let mutated = rng.mutate(jwt_seed.as_bytes());
        let _ = Claims::decode(&String::from_utf8_lossy(&mutated)).map(|c| c.times());
        let _ = Credential::parse(&text);
        let _ = canonical_path(&text);
        let _ = canonical_form(&raw);
        let _ = canonical_json(&raw);
        let _ = BodyForm::of_content_type(Some(&raw));
        let _ = body_digest(BodyForm::Json, &raw);
        let mut d = BodyDigester::new(BodyForm::Raw);
        d.push(&raw);
        let _ = d.finish();
        let _ = parse_idempotency_key(Some(&raw), 16);
        let _ = b64::decode_url(&text);
        let _ = b64::decode_standard(&text);
        let _ = Set::decode(&raw);
        let _ = confirm::verify(&raw, Some(&conf), state, 30, 1_800_000_000);
        let mut v1 = b"v1.".to_vec();
        v1.extend_from_slice(&raw);
        let _ = confirm::verify(&v1, None, state, u64::MAX, u64::MAX);
    }
    // JSON nested beyond any stack, a huge exponent, a huge flat object: answered, no panic.
    let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(canonical_json(deep.as_bytes()).is_none());
    assert!(canonical_json(b"1e99999999999999999999").is_none());
    let flat: String = (0..20_000)
        .map(|i| format!(",\"k{}\":{i}", 20_000 - i))
        .collect();
    let flat = format!("{{\"k\":0{flat}}}");
    assert!(canonical_json(flat.as_bytes()).is_some_and(|c| c.starts_with("{\"k\":0,\"k1\":")));
    // Oversized inputs are refused without work proportional to them.
    let huge = "A".repeat(1 << 20);
    assert!(Claims::decode(&format!("a.{huge}.c")).is_none());
    assert!(confirm::verify(huge.as_bytes(), Some(&conf), state, 30, 0).is_err());
}
