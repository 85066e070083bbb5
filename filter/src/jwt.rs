//! Bearer credentials and unverified JWT claims.
//!
//! retry-guard never trusts a JWT: it reads claims only to name the principal and to judge
//! staleness. Anything that is not a well-formed JWT is an opaque token. Inputs are bounded so
//! a hostile header cannot make the filter allocate or work without limit.

use crate::json::{self, Scalar, Span};

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
///
/// The payload is read in one pass ([`json::scan_object`]) without building a JSON tree: the
/// decoded payload is kept with where each top-level member's name and value are, and a claim
/// is looked up among them when asked for (the last of equal names counts, as in a parsed
/// object). What is accepted, and each claim's value, are exactly those of the JSON parser.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    payload: Vec<u8>,
    members: Vec<(Span, Scalar)>,
}

/// The payload segment of `header.payload.signature`: `None` when the token is longer than
/// [`MAX_JWT_LEN`], has not exactly three segments, or its header or payload is empty. The
/// signature may be empty (an unsecured JWT, `alg: none`).
fn payload_segment(token: &str) -> Option<&str> {
    if token.len() > MAX_JWT_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || header.is_empty() || payload.is_empty() {
        return None;
    }
    Some(payload)
}

impl Claims {
    /// Decodes the payload of `header.payload.signature` (base64url segments, JSON object
    /// payload). `None` when the token is not such a JWT.
    pub fn decode(token: &str) -> Option<Claims> {
        let payload = b64::decode_url(payload_segment(token)?)?;
        let members = json::scan_object(&payload)?;
        Some(Claims { payload, members })
    }

    /// The value of claim `name` (the last member of that name).
    fn get(&self, name: &str) -> Option<&Scalar> {
        self.members
            .iter()
            .rev()
            .find(|(n, _)| n.is(&self.payload, name))
            .map(|(_, v)| v)
    }

    /// A numeric claim as seconds; strings, booleans and non-finite values count as absent.
    pub fn seconds(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Scalar::Number(n) => n.as_f64().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    /// A claim as principal text: strings as they are, integers formatted; others absent.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Scalar::Str(at) => at.text(&self.payload).filter(|s| !s.is_empty()),
            Scalar::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Some(u.to_string()),
                (None, Some(i)) => Some(i.to_string()),
                _ => None,
            },
            Scalar::Other => None,
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

    /// The claims as they were read before the one-pass scan, from the whole JSON tree: the
    /// oracle [`Claims`] must agree with.
    struct TreeClaims(crate::json::Map);

    impl TreeClaims {
        fn decode(token: &str) -> Option<TreeClaims> {
            let bytes = b64::decode_url(payload_segment(token)?)?;
            match crate::json::parse(&bytes).ok()? {
                crate::json::Value::Object(map) => Some(TreeClaims(map)),
                _ => None,
            }
        }

        fn seconds(&self, name: &str) -> Option<f64> {
            self.0.get(name)?.as_f64().filter(|f| f.is_finite())
        }

        fn text(&self, name: &str) -> Option<String> {
            use crate::json::Value;
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
    }

    /// Claim names the comparison asks for: the time claims, principal claims, names that
    /// appear only escaped or only nested in the payloads, and none at all.
    const ASKED: &[&str] = &[
        "exp",
        "nbf",
        "iat",
        "sub",
        "client_id",
        "é",
        "a\"b",
        "",
        "nested",
        "x",
    ];

    /// Asserts that the scan and the tree read `payload` alike; the claims, if it is a JWT's.
    fn agree(payload: &[u8]) -> Option<Claims> {
        let token = format!("e30.{}.c2ln", b64::url(payload));
        let (scan, tree) = (Claims::decode(&token), TreeClaims::decode(&token));
        let shown = String::from_utf8_lossy(payload);
        assert_eq!(scan.is_some(), tree.is_some(), "{shown}");
        let (Some(scan), Some(tree)) = (scan, tree) else {
            return None;
        };
        let bits = |f: Option<f64>| f.map(f64::to_bits);
        for name in ASKED {
            assert_eq!(scan.text(name), tree.text(name), "{name} in {shown}");
            assert_eq!(
                bits(scan.seconds(name)),
                bits(tree.seconds(name)),
                "{name} in {shown}"
            );
        }
        let times = scan.times();
        assert_eq!(bits(times.exp), bits(tree.seconds("exp")), "{shown}");
        assert_eq!(bits(times.nbf), bits(tree.seconds("nbf")), "{shown}");
        assert_eq!(bits(times.iat), bits(tree.seconds("iat")), "{shown}");
        Some(scan)
    }

    #[test]
    fn the_scan_reads_claims_as_the_json_tree_does() {
        for payload in [
            r#"{"exp":1,"exp":"soon"}"#,
            r#"{"exp":"soon","exp":2}"#,
            r#"{"sub":"a","sub":{"x":1}}"#,
            r#"{"\u0065xp":5,"s\u0075b":"esc\"aped","exp":6}"#,
            r#"{"exp":7,"\u0065xp":null}"#,
            r#"{"nested":{"exp":1,"sub":"inner"},"list":[{"iat":2}]}"#,
            r#"{"exp":-0,"nbf":-1.5e3,"iat":1e308,"sub":-9223372036854775808}"#,
            r#"{"exp":18446744073709551616,"sub":18446744073709551615}"#,
            r#"{"exp":1e400}"#,
            r#"{"exp":1e-400,"sub":""}"#,
            r#"{"sub":"\ud83d\ude00","é":"\u00e9","a\"b":1}"#,
            r#"{"sub":"\ud83d"}"#,
            r#"{"sub":"a"} x"#,
            r#" {"sub":"a"} "#,
            r#"["sub"]"#,
            r#""sub""#,
            "{}",
            "",
        ] {
            agree(payload.as_bytes());
        }
        agree(b"{\"sub\":\"\xff\"}");
        agree(b"{\"\xc3\xa9\":\"x\",\"sub\":\"ok\"}");
        agree(b"{\"sub\":\"a\x01\"}");
        let deep = |n: usize| format!(r#"{{"sub":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        for n in [124, 125, 126, 127] {
            agree(deep(n).as_bytes());
        }
    }

    #[test]
    fn generated_payloads_read_as_the_json_tree_reads_them() {
        let mut next = crate::testing::xorshift(0x853c_49e6_748f_ea9bu64);
        const NAMES: &[&str] = &[
            "exp",
            "nbf",
            "iat",
            "sub",
            "client_id",
            r"\u0065xp",
            r"s\u0075b",
            r"\u0069at",
            "é",
            r#"a\"b"#,
            "",
            "nested",
            "x",
            r"\ud83d\ude00",
            r"\ud800",
        ];
        const VALUES: &[&str] = &[
            "0",
            "-0",
            "1",
            "-1",
            "1700000000",
            "1700000000.5",
            "1.7e9",
            "17E+8",
            "1e300",
            "1e400",
            "-1e400",
            "1e-400",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "0.1",
            "-0.0",
            "01",
            "1.",
            ".5",
            "123456789012345678901234567890",
            r#""bob""#,
            r#""""#,
            r#""b\u00f6b""#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""a\"b\\c\/""#,
            r#""tab	raw""#,
            "null",
            "true",
            "false",
            "[]",
            r#"[1,{"exp":5}]"#,
            r#"{"exp":1,"sub":"in"}"#,
            "{}",
            "[",
            r#""open"#,
            "nul",
        ];
        const WS: &[&str] = &["", " ", "\n", "\t\r "];
        let (mut claims, mut exp, mut sub) = (0, 0, 0);
        for _ in 0..60_000 {
            let mut text = String::from(crate::testing::pick(&mut next, WS));
            text.push('{');
            for i in 0..next() % 6 {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(crate::testing::pick(&mut next, WS));
                text.push('"');
                text.push_str(crate::testing::pick(&mut next, NAMES));
                text.push('"');
                text.push_str(crate::testing::pick(&mut next, WS));
                text.push(':');
                text.push_str(crate::testing::pick(&mut next, WS));
                text.push_str(crate::testing::pick(&mut next, VALUES));
            }
            text.push('}');
            text.push_str(crate::testing::pick(&mut next, WS));
            let mut bytes = text.into_bytes();
            // Now and then a damaged text: cut, a byte changed, junk after it.
            match next() % 8 {
                0 if !bytes.is_empty() => bytes.truncate((next() % bytes.len() as u64) as usize),
                1 if !bytes.is_empty() => {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = [b'"', b'\\', b'}', b',', 0xff, 0x01, b':'][(next() % 7) as usize];
                }
                2 => bytes.extend_from_slice(b"x"),
                _ => {}
            }
            if let Some(c) = agree(&bytes) {
                claims += 1;
                exp += usize::from(c.times().exp.is_some());
                sub += usize::from(c.text("sub").is_some());
            }
        }
        // The texts reach the claims: many are JWT payloads, with times and principals.
        assert!(
            claims > 15_000 && exp > 1_000 && sub > 500,
            "{claims} {exp} {sub}"
        );
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
