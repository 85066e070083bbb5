//! Envoy's own `jwt_authn` filter as a reference (configurations 11 and 12): it verifies one
//! JWT, RS256 or ES256, against a local JWKS on case 8's token request, so the report can put
//! what retry-guard adds on that request beside what verifying the token it reads costs.
//!
//! The keys are test keys committed under `testdata/keys/` (`bench-rs256-test.pem`,
//! `bench-es256-test.pem`, PKCS#8); the JWTs are signed here with `ring` when the run starts,
//! with the claims of case 8's JWT (`sub`, `iat`, `exp`, `jti` of the same shape; `exp` a day
//! ahead, so a long run never sends an expired one). The filter gets the public key as an
//! inline `local_jwks`, reads the JWT from `Authorization: Bearer` (its default) and forwards
//! it (`forward: true`), so the upstream sees the request case 8 forwards. Envoy's JWT cache
//! (`jwt_cache_config`) is left off, as by default: every request is verified.

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use retry_guard_e2e::{repo_root, Error, Result};
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{json, Value};

/// Envoy's name of the filter.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// The filter's one provider.
pub const PROVIDER: &str = "bench-issuer";

/// How long the run's JWTs stay valid, seconds (case 8's unsigned JWT says 600; a run of all
/// modes takes longer than that).
pub const VALID_FOR: u64 = 86_400;

/// The signature algorithm of a reference configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, a 2048-bit key.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// The JOSE name (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// The key's `kid` in the JWT header and the JWKS.
    fn kid(self) -> &'static str {
        match self {
            Alg::Rs256 => "bench-rs256",
            Alg::Es256 => "bench-es256",
        }
    }

    /// The private key's file, relative to the repository's root.
    pub fn key_file(self) -> &'static str {
        match self {
            Alg::Rs256 => "testdata/keys/bench-rs256-test.pem",
            Alg::Es256 => "testdata/keys/bench-es256-test.pem",
        }
    }
}

/// A signing key of the test issuer.
enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// The test issuer of one algorithm: its key and its public key as a JWK.
pub struct Issuer {
    alg: Alg,
    key: Key,
    jwk: Value,
}

/// The DER of a PEM `PRIVATE KEY` (PKCS#8) block.
fn pkcs8_der(pem: &str, file: &str) -> Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END PRIVATE KEY-----"))
        .collect();
    if body.is_empty() {
        return Err(Error(format!("{file}: no PEM PRIVATE KEY block")));
    }
    STANDARD
        .decode(body.trim())
        .map_err(|e| Error(format!("{file}: bad base64 in the PEM block: {e}")))
}

/// base64url without padding, as JOSE writes binary values.
fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    /// The test issuer of `alg`, its key read from [`Alg::key_file`].
    pub fn load(alg: Alg) -> Result<Issuer> {
        let file = alg.key_file();
        let path = repo_root().join(file);
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| Error(format!("{}: {e}", path.display())))?;
        let der = pkcs8_der(&pem, file)?;
        let rejected = |e: ring::error::KeyRejected| Error(format!("{file}: {e}"));
        let (key, jwk) = match alg {
            Alg::Rs256 => {
                let pair = RsaKeyPair::from_pkcs8(&der).map_err(rejected)?;
                let public = PublicKeyComponents::<Vec<u8>>::from(pair.public());
                let jwk = json!({
                    "kty": "RSA", "alg": alg.name(), "use": "sig", "kid": alg.kid(),
                    "n": b64url(&public.n), "e": b64url(&public.e),
                });
                (Key::Rsa(pair), jwk)
            }
            Alg::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &der,
                    &SystemRandom::new(),
                )
                .map_err(rejected)?;
                // The uncompressed point: 0x04, x, y (32 bytes each).
                let point = pair.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(Error(format!("{file}: not an uncompressed P-256 point")));
                }
                let jwk = json!({
                    "kty": "EC", "crv": "P-256", "alg": alg.name(), "use": "sig", "kid": alg.kid(),
                    "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
                });
                (Key::Ec(pair), jwk)
            }
        };
        Ok(Issuer { alg, key, jwk })
    }

    /// The JWKS with the issuer's public key, as `local_jwks.inline_string` takes it.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    /// A compact JWS of `claims`, signed with the issuer's key.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": self.alg.name(), "typ": "JWT", "kid": self.alg.kid()});
        let mut jwt = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let failed = |_| Error(format!("cannot sign a JWT with {}", self.alg.key_file()));
        let signature = match &self.key {
            Key::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    jwt.as_bytes(),
                    &mut sig,
                )
                .map_err(failed)?;
                sig
            }
            Key::Ec(pair) => pair
                .sign(&rng, jwt.as_bytes())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
        };
        jwt.push('.');
        jwt.push_str(&b64url(&signature));
        Ok(jwt)
    }

    /// Envoy's `jwt_authn` filter verifying this issuer's JWTs in `Authorization: Bearer` on
    /// every route, keeping them on the request (`forward: true`); a request without one, or
    /// with one that does not verify, is answered 401.
    pub fn filter(&self) -> Value {
        json!({
            "name": JWT_AUTHN_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    PROVIDER: {
                        "local_jwks": { "inline_string": self.jwks() },
                        "forward": true,
                    },
                },
                "rules": [{ "match": { "prefix": "/" }, "requires": { "provider_name": PROVIDER } }],
            },
        })
    }
}

/// The claims of case 8's JWT (`bench/wrk/load.lua`: `sub`, `iat`, `exp`, `jti` of a thread
/// tag and a six-digit counter) issued at `now`, valid for [`VALID_FOR`].
pub fn claims(now: u64) -> Value {
    json!({
        "sub": "bench-bot", "iat": now, "exp": now + VALID_FOR,
        "jti": format!("{now}-{:09}-1-100000", std::process::id()),
    })
}

/// The JWT the configuration of `alg` is sent: [`claims`] of when it was first asked for,
/// signed with the test issuer's key; the same for the whole run.
pub fn token(alg: Alg) -> Result<&'static str> {
    static TOKENS: [OnceLock<std::result::Result<String, String>>; 2] =
        [OnceLock::new(), OnceLock::new()];
    let slot = &TOKENS[alg as usize];
    slot.get_or_init(|| {
        let now = now();
        Issuer::load(alg)
            .and_then(|i| i.sign(&claims(now)))
            .map_err(|e| e.0)
    })
    .as_deref()
    .map_err(|e| Error(e.clone()))
}

/// The time now, Unix seconds.
fn now() -> u64 {
    u64::try_from(retry_guard_e2e::tokens::now_unix()).unwrap_or(0)
}

/// `jwt` with its signature's first character changed: a token `jwt_authn` must refuse. (Not
/// the last: the last base64url character of a 256- or 64-byte signature carries padding bits,
/// which a decoder may ignore, so changing it can leave the signature's bytes as they were.)
pub fn tampered(jwt: &str) -> String {
    let Some(dot) = jwt.rfind('.') else {
        return format!("{jwt}A");
    };
    let (signed, sig) = jwt.split_at(dot + 1);
    let mut chars = sig.chars();
    let first = chars.next().unwrap_or('A');
    let swapped = if first == 'A' { 'B' } else { 'A' };
    format!("{signed}{swapped}{}", chars.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};

    /// The signature of `jwt` checked against the public key in `jwks` (as a verifier that
    /// reads only the JWK would), and its claims.
    fn verify(jwt: &str, jwks: &str) -> Value {
        let jwks: Value = serde_json::from_str(jwks).unwrap();
        let jwk = &jwks["keys"][0];
        let (signed, sig) = jwt.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let field = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
        let ok = match jwk["kty"].as_str().unwrap() {
            "RSA" => PublicKeyComponents {
                n: field("n"),
                e: field("e"),
            }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &sig)
            .is_ok(),
            "EC" => {
                let point = [vec![4], field("x"), field("y")].concat();
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
            kty => panic!("kty {kty}"),
        };
        assert!(ok, "{jwt} does not verify against {jwks}");
        let (header, payload) = signed.split_once('.').unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["kid"], jwk["kid"]);
        assert_eq!(header["alg"], jwk["alg"]);
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn each_test_issuer_signs_jwts_its_jwks_verifies() {
        for alg in [Alg::Rs256, Alg::Es256] {
            let issuer = Issuer::load(alg).unwrap();
            let claims = claims(1_700_000_000);
            let jwt = issuer.sign(&claims).unwrap();
            assert_eq!(verify(&jwt, &issuer.jwks()), claims, "{alg:?}");
            let sig_len = jwt.rsplit('.').next().unwrap().len();
            let expected = match alg {
                Alg::Rs256 => 342, // 256 bytes
                Alg::Es256 => 86,  // 64 bytes, r and s
            };
            assert_eq!(sig_len, expected, "{alg:?}");
            // The run's token: valid now, a day ahead.
            let now = now();
            let run = verify(token(alg).unwrap(), &issuer.jwks());
            let exp = run["exp"].as_u64().unwrap();
            assert!(
                exp > now + VALID_FOR - 3600 && exp <= now + VALID_FOR,
                "{run}"
            );
            // The tampered JWT's signature decodes to other bytes, of the same length.
            let bad = tampered(&jwt);
            let sig_of = |t: &str| {
                URL_SAFE_NO_PAD
                    .decode(t.rsplit('.').next().unwrap())
                    .unwrap()
            };
            assert_eq!(bad.len(), jwt.len());
            assert_eq!(
                bad.rsplit_once('.').unwrap().0,
                jwt.rsplit_once('.').unwrap().0
            );
            assert_ne!(sig_of(&bad), sig_of(&jwt), "{alg:?}");
        }
    }

    #[test]
    fn the_claims_have_case_8s_shape() {
        // bench/wrk/load.lua's shape request: sub, iat, exp, jti; exp ten digits like iat.
        let c = claims(1_700_000_000);
        let mut keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["exp", "iat", "jti", "sub"]);
        assert!(c["jti"].as_str().unwrap().ends_with("-100000"));
        assert_eq!(c["exp"].to_string().len(), c["iat"].to_string().len());
    }

    #[test]
    fn the_filter_requires_the_provider_with_the_inline_jwks() {
        let issuer = Issuer::load(Alg::Es256).unwrap();
        let f = issuer.filter();
        assert_eq!(f["name"], JWT_AUTHN_FILTER);
        let provider = &f["typed_config"]["providers"][PROVIDER];
        assert_eq!(provider["local_jwks"]["inline_string"], issuer.jwks());
        assert_eq!(provider["forward"], true);
        assert_eq!(
            f["typed_config"]["rules"][0]["requires"]["provider_name"],
            PROVIDER
        );
        assert!(pkcs8_der("nothing", "x").is_err());
    }
}
