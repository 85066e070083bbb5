//! Properties of canonical request identity, over generated paths, forms and JSON documents
//! (a fixed-seed xorshift generator: deterministic, no dependencies):
//!
//! - canonicalization is idempotent: the canonical form of a canonical form is itself;
//! - equivalent encodings of one request — escapes of unreserved characters, extra slashes
//!   and dot segments, a query string; reordered or re-encoded form pairs; JSON with other
//!   whitespace, member order, string escapes or number spellings — give one fingerprint;
//! - different requests keep different fingerprints.

use retry_guard::canonical::{canonical_form, canonical_json, canonical_path, BodyForm};
use retry_guard::fingerprint::{body_digest, Fingerprint, NaturalKey};

mod support;

use support::Rng;

impl Rng {
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const UNRESERVED: &[u8] = b"ABCXYZabcxyz0189-._~";
const OTHER: &[u8] = b"!$&'()*+,;=:@ \"<>[]{}|^`";

/// `b` as a percent escape, in upper or lower case hex.
fn escape(rng: &mut Rng, b: u8) -> String {
    let s = format!("%{b:02X}");
    if rng.coin() {
        s.to_ascii_lowercase()
    } else {
        s
    }
}

/// A path segment: unreserved characters and escapes of other bytes (never a slash).
fn segment(rng: &mut Rng) -> Vec<u8> {
    let mut seg = Vec::new();
    for _ in 0..1 + rng.below(6) {
        if rng.below(5) == 0 {
            let b = *rng.pick(OTHER);
            seg.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            seg.push(*rng.pick(UNRESERVED));
        }
    }
    if seg == b"." || seg == b".." {
        seg.push(b'x');
    }
    seg
}

/// The same segment spelled differently: some unreserved characters escaped, other escapes in
/// lower case.
fn respell(rng: &mut Rng, seg: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'%' {
            let esc = std::str::from_utf8(&seg[i..i + 3]).unwrap();
            out.push_str(&if rng.coin() {
                esc.to_ascii_lowercase()
            } else {
                esc.to_string()
            });
            i += 3;
        } else {
            if rng.coin() {
                out.push_str(&escape(rng, seg[i]));
            } else {
                out.push(seg[i] as char);
            }
            i += 1;
        }
    }
    out
}

#[test]
fn paths_canonicalize_idempotently_and_equivalent_paths_agree() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..5_000 {
        let segments: Vec<Vec<u8>> = (0..1 + rng.below(5)).map(|_| segment(&mut rng)).collect();
        let plain: String = segments
            .iter()
            .map(|s| format!("/{}", String::from_utf8_lossy(s)))
            .collect();
        let want = canonical_path(&plain).path;
        // The plain spelling, with its escapes in upper case, is canonical already.
        assert_eq!(want, plain, "{plain}");
        // Other spellings: escapes, extra slashes, `.` and `x/..` segments, a query.
        let mut spelled = String::new();
        for s in &segments {
            spelled.push('/');
            if rng.below(4) == 0 {
                spelled.push('/');
            }
            if rng.below(4) == 0 {
                spelled.push_str(if rng.coin() { "./" } else { "%2e/" });
            }
            if rng.below(4) == 0 {
                spelled.push_str("gone/../");
            }
            spelled.push_str(&respell(&mut rng, s));
        }
        if rng.coin() {
            spelled.push_str(&format!("?q={}", rng.below(100)));
        }
        let c = canonical_path(&spelled);
        assert_eq!(c.path, want, "{spelled}");
        assert!(!c.encoded_slash);
        assert_eq!(
            canonical_path(&c.path).path,
            c.path,
            "idempotent: {spelled}"
        );
    }
}

#[test]
fn arbitrary_paths_canonicalize_idempotently() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"/%.2FfEe5Cc\\aZ09-_~?#";
    for _ in 0..20_000 {
        let mut p = String::from("/");
        for _ in 0..rng.below(24) {
            p.push(*rng.pick(alphabet) as char);
        }
        let once = canonical_path(&p).path;
        let twice = canonical_path(&once);
        assert_eq!(twice.path, once, "{p}");
        assert!(!twice.encoded_slash, "{p} -> {once}");
        assert!(!once.contains("//"), "{p} -> {once}");
    }
}

/// A form field name or value: text with characters that need escaping.
fn form_text(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(6))
        .map(|_| {
            if rng.below(4) == 0 {
                *rng.pick(b" &=+%/\xc3\xa9")
            } else {
                *rng.pick(UNRESERVED)
            }
        })
        .collect()
}

/// `bytes` form-encoded, each byte spelled one of the ways a client may.
fn form_encode(rng: &mut Rng, bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b' ' if rng.coin() => out.push('+'),
            b if UNRESERVED.contains(&b) && rng.below(3) > 0 => out.push(b as char),
            b => out.push_str(&escape(rng, b)),
        }
    }
    out
}

#[test]
fn forms_canonicalize_idempotently_and_equivalent_forms_agree() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..5_000 {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.below(6))
            .map(|_| (form_text(&mut rng), form_text(&mut rng)))
            .collect();
        let encode = |rng: &mut Rng, pairs: &[(Vec<u8>, Vec<u8>)]| {
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let mut text = String::new();
            for i in order {
                if rng.below(4) == 0 {
                    text.push('&');
                }
                if !text.is_empty() && !text.ends_with('&') {
                    text.push('&');
                }
                text.push_str(&form_encode(rng, &pairs[i].0));
                text.push('=');
                text.push_str(&form_encode(rng, &pairs[i].1));
            }
            if rng.coin() {
                text.push_str("\r\n");
            }
            text
        };
        let a = encode(&mut rng, &pairs);
        let b = encode(&mut rng, &pairs);
        let ca = canonical_form(a.as_bytes()).unwrap_or_else(|| panic!("{a}"));
        assert_eq!(
            canonical_form(b.as_bytes()).as_deref(),
            Some(ca.as_str()),
            "{a} / {b}"
        );
        assert_eq!(
            canonical_form(ca.as_bytes()).as_deref(),
            Some(ca.as_str()),
            "idempotent"
        );
        assert_eq!(
            body_digest(BodyForm::Form, a.as_bytes()),
            body_digest(BodyForm::Form, b.as_bytes())
        );
    }
}

/// A JSON value as a tree the generator writes out in several spellings.
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    /// An integer mantissa and a decimal exponent: the value is m × 10^e.
    Num(i64, i32),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn gen_json(rng: &mut Rng, depth: usize) -> J {
    match rng.below(if depth > 3 { 4 } else { 6 }) {
        0 => J::Null,
        1 => J::Bool(rng.coin()),
        2 => J::Num(
            rng.below(2_000_001) as i64 - 1_000_000,
            rng.below(9) as i32 - 4,
        ),
        3 => J::Str(gen_string(rng)),
        4 => J::Arr(
            (0..rng.below(4))
                .map(|_| gen_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            // Distinct names (duplicates would make the order matter).
            let mut names: Vec<String> = Vec::new();
            for _ in 0..rng.below(5) {
                let n = gen_string(rng);
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            J::Obj(
                names
                    .into_iter()
                    .map(|n| (n, gen_json(rng, depth + 1)))
                    .collect(),
            )
        }
    }
}

fn gen_string(rng: &mut Rng) -> String {
    let chars = [
        'a', 'b', 'Z', '1', ' ', '"', '\\', '/', '\n', '\u{1}', 'é', '€', '😀', '\u{fb33}',
        '\u{2028}',
    ];
    (0..rng.below(5)).map(|_| *rng.pick(&chars)).collect()
}

fn ws(rng: &mut Rng) -> &'static str {
    const WS: [&str; 5] = ["", "", " ", "\n  ", "\t"];
    WS[rng.below(WS.len())]
}

/// One spelling of `v`.
fn write_json(rng: &mut Rng, v: &J, out: &mut String) {
    out.push_str(ws(rng));
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(m, e) => out.push_str(&spell_number(rng, *m, *e)),
        J::Str(s) => write_string(rng, s, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(rng, item, out);
                out.push_str(ws(rng));
            }
            out.push(']');
        }
        J::Obj(members) => {
            let mut order: Vec<usize> = (0..members.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            out.push('{');
            for (k, i) in order.into_iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                out.push_str(ws(rng));
                write_string(rng, &members[i].0, out);
                out.push_str(ws(rng));
                out.push(':');
                write_json(rng, &members[i].1, out);
                out.push_str(ws(rng));
            }
            out.push('}');
        }
    }
}

fn write_string(rng: &mut Rng, s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str(if rng.coin() { "\\n" } else { "\\u000A" }),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '/' if rng.coin() => out.push_str("\\/"),
            c if rng.below(3) == 0 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// m × 10^e in one of several spellings (`120`, `1.2e2`, `12E+1`, `1200e-1`, `120.00`).
fn spell_number(rng: &mut Rng, m: i64, e: i32) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let digits = m.unsigned_abs().to_string();
    match rng.below(4) {
        0 => format!("{sign}{digits}e{e}"),
        1 => format!("{sign}{digits}00E{}", e - 2),
        2 => {
            // d.ddd e x
            let (first, rest) = digits.split_at(1);
            let exp = e + rest.len() as i32;
            if rest.is_empty() {
                format!("{sign}{first}e+{exp}")
            } else {
                format!("{sign}{first}.{rest}e{exp}")
            }
        }
        _ => {
            // Plain decimal with trailing zeros.
            if e >= 0 {
                format!("{sign}{digits}{}.00", "0".repeat(e as usize))
            } else {
                let k = (-e) as usize;
                let padded = format!("{digits:0>width$}", width = k + 1);
                let (int, frac) = padded.split_at(padded.len() - k);
                format!("{sign}{int}.{frac}0")
            }
        }
    }
}

#[test]
fn json_canonicalizes_idempotently_and_equivalent_documents_agree() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..3_000 {
        let doc = J::Obj(vec![
            ("v".into(), gen_json(&mut rng, 0)),
            ("w".into(), gen_json(&mut rng, 0)),
        ]);
        let mut a = String::new();
        write_json(&mut rng, &doc, &mut a);
        let mut b = String::new();
        write_json(&mut rng, &doc, &mut b);
        let ca = canonical_json(a.as_bytes()).unwrap_or_else(|| panic!("not JSON: {a}"));
        assert_eq!(
            canonical_json(b.as_bytes()).as_deref(),
            Some(ca.as_str()),
            "{a}\n{b}"
        );
        assert_eq!(
            canonical_json(ca.as_bytes()).as_deref(),
            Some(ca.as_str()),
            "idempotent: {ca}"
        );
        // serde_json reads the canonical text as the same document.
        let va: serde_json::Value = serde_json::from_str(&a).unwrap();
        let vc: serde_json::Value = serde_json::from_str(&ca).unwrap();
        assert_eq!(strings_of(&va), strings_of(&vc), "{a}");
        // Whatever content-type a client declares, JSON is digested as JSON.
        for declared in [BodyForm::Json, BodyForm::Raw] {
            assert_eq!(
                body_digest(declared, a.as_bytes()),
                body_digest(BodyForm::Json, b.as_bytes())
            );
        }
    }
}

/// The strings (names and values) of a document, sorted: what canonicalization must keep.
fn strings_of(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| {
                out.push(k.clone());
                walk(x, out)
            }),
            _ => {}
        }
    }
    walk(v, &mut out);
    out.sort();
    out
}

#[test]
fn equivalent_requests_have_one_fingerprint_and_different_ones_do_not() {
    let mut rng = Rng(0x0bad_5eed_1234_5678);
    let fp = |path: &str, ct: BodyForm, body: &str| {
        let c = canonical_path(path);
        let digest = body_digest(ct, body.as_bytes());
        Fingerprint::compute(
            "route",
            "principal",
            None,
            &NaturalKey {
                method: "POST",
                path: &c.path,
                query: "",
                body: &digest,
            },
        )
    };
    for _ in 0..2_000 {
        let doc = J::Obj(vec![("grant".into(), gen_json(&mut rng, 1))]);
        let (mut a, mut b) = (String::new(), String::new());
        write_json(&mut rng, &doc, &mut a);
        write_json(&mut rng, &doc, &mut b);
        let base = fp("/oauth/token", BodyForm::Json, &a);
        assert_eq!(
            fp("//oauth/%74oken?x=1", BodyForm::Raw, &b),
            base,
            "{a} / {b}"
        );
        assert_eq!(fp("/oauth/./token", BodyForm::Json, &b), base);
        assert_ne!(fp("/oauth/tokens", BodyForm::Json, &a), base);
        let other = J::Obj(vec![
            ("grant".into(), J::Str("other".into())),
            ("x".into(), doc.clone()),
        ]);
        let mut c = String::new();
        write_json(&mut rng, &other, &mut c);
        assert_ne!(fp("/oauth/token", BodyForm::Json, &c), base);
    }
}
