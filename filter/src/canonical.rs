//! Canonical request identity: the one spelling of a request path, a query string, a form body
//! and a JSON body that route matching and the natural key use, so that a caller cannot make a
//! retry a new operation by spelling the same request differently.
//!
//! Pure functions over bytes, natively tested (the unit tests here and the property test in
//! `filter/tests/canonical_props.rs`): each is idempotent (the canonical form of a canonical
//! form is itself) and total (any input gives an answer; never a panic).
//!
//! - **Path** ([`canonical_path`]): percent-encoded unreserved characters (`A-Z a-z 0-9 - . _
//!   ~`) are decoded, other escapes get upper-case hex, a `%` that starts no escape becomes
//!   `%25`, a backslash counts as a slash (as WHATWG URL parsing does for http), slashes are
//!   merged and dot segments resolved (RFC 3986 §5.2.4). Encoded slashes (`%2F`, `%5C`) are
//!   decoded to `/` so matching sees the path a decoding server would, and reported: a guarded
//!   request carrying one is refused. The query string and fragment are split off.
//! - **Form** ([`canonical_form`], `application/x-www-form-urlencoded`, and the query string
//!   with `natural_key.query: "sorted"`): leading and trailing whitespace of the whole text is
//!   dropped, empty pairs too; each name and value is decoded (`+` is a space), the pairs are
//!   sorted bytewise (by name, then value) and written back with one encoding (unreserved
//!   characters as they are, every other byte `%XX`). A broken escape leaves the text
//!   un-canonicalized (`None`).
//! - **JSON** ([`canonical_json`], `application/json` and `+json` media types): RFC 8785 (JCS):
//!   no insignificant whitespace, object members sorted by their names' UTF-16 code units,
//!   strings with the minimal escapes, numbers as ECMAScript writes the IEEE-754 double.
//!   Invalid JSON (or more than [`MAX_JSON_DEPTH`] + 1 nested lists and objects) is `None`.
//!   Of duplicate member names the last counts (RFC 8785 forbids them; most parsers keep the
//!   last). The text is read by the filter's one JSON reader ([`crate::json::value`], keeping
//!   numbers exact) and written out.

use crate::json::{Number, Value};
use std::borrow::Cow;

/// The canonical form of a request's `:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath {
    /// The canonical path (no query string, no fragment).
    pub path: String,
    /// The query string as sent (without the `?`; empty when there is none).
    pub query: String,
    /// The path carried an encoded slash (`%2F` or `%5C`), decoded to `/` in [`Self::path`].
    pub encoded_slash: bool,
}

/// Is `b` an RFC 3986 unreserved character?
#[inline]
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    out.push(b'%');
    out.push(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
    out.push(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'));
}

/// The escape `%XY` at the start of `bytes`, decoded.
fn escape_at(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'%', h, l, ..] => Some(hex_value(*h)? << 4 | hex_value(*l)?),
        _ => None,
    }
}

/// Does a path (without its query) need the slow pass: an escape, a backslash, an empty
/// segment, or a dot segment?
fn path_needs_work(p: &[u8]) -> bool {
    let mut prev = b'/';
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' | b'\\' => return true,
            b'/' if prev == b'/' && i > 0 => return true,
            b'.' if prev == b'/' => {
                // "." or ".." as a whole segment.
                let rest = p.get(i + 1..).unwrap_or(&[]);
                match rest {
                    [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..] => return true,
                    _ => {}
                }
            }
            _ => {}
        }
        prev = b;
    }
    false
}

/// The canonical form of `raw`, a request's `:path` (see the module docs). A path that does
/// not start with `/` (`*`, an absolute URI) is left as it is.
pub fn canonical_path(raw: &str) -> CanonicalPath {
    let (before_fragment, _) = raw.split_once('#').unwrap_or((raw, ""));
    let (path, query) = before_fragment
        .split_once('?')
        .unwrap_or((before_fragment, ""));
    let query = query.to_string();
    if !path.starts_with('/') || !path_needs_work(path.as_bytes()) {
        return CanonicalPath {
            path: path.to_string(),
            query,
            encoded_slash: false,
        };
    }
    let (path, encoded_slash) = normalize(path.as_bytes());
    CanonicalPath {
        path,
        query,
        encoded_slash,
    }
}

/// The slow pass: decode, then merge slashes and resolve dot segments.
fn normalize(p: &[u8]) -> (String, bool) {
    let mut decoded = Vec::with_capacity(p.len());
    let mut encoded_slash = false;
    let mut i = 0;
    while let Some(&b) = p.get(i) {
        let rest = p.get(i..).unwrap_or(&[]);
        match b {
            b'%' => match escape_at(rest) {
                Some(d) if unreserved(d) => {
                    decoded.push(d);
                    i += 3;
                }
                Some(b'/' | b'\\') => {
                    encoded_slash = true;
                    decoded.push(b'/');
                    i += 3;
                }
                Some(d) => {
                    push_escaped(&mut decoded, d);
                    i += 3;
                }
                None => {
                    // A `%` that starts no escape: written as the escape of itself.
                    decoded.extend_from_slice(b"%25");
                    i += 1;
                }
            },
            b'\\' => {
                decoded.push(b'/');
                i += 1;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Segments are written as they come; `..` takes the last one back off.
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let mut trailing_slash = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        match seg {
            b"" | b"." => trailing_slash = true,
            b".." => {
                let last = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(last);
                trailing_slash = true;
            }
            s => {
                out.push(b'/');
                out.extend_from_slice(s);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Only ASCII was added or removed, at ASCII boundaries: still UTF-8.
    (String::from_utf8(out).unwrap_or_default(), encoded_slash)
}

/// Decodes one form component (`+` is a space); `None` on a broken escape.
fn form_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'%' => {
                out.push(escape_at(s.get(i..).unwrap_or(&[]))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn form_encode(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if unreserved(b) {
            out.push(b);
        } else {
            push_escaped(out, b);
        }
    }
}

/// The canonical form of an `application/x-www-form-urlencoded` text (see the module docs);
/// `None` when an escape is broken.
pub fn canonical_form(text: &[u8]) -> Option<String> {
    String::from_utf8(form_text(text)?.into_owned()).ok()
}

/// A form text that is canonical already (most clients write simple forms in order): only
/// unreserved characters, `=` and `&`, every pair with one `=`, pairs in canonical order.
fn form_is_canonical(text: &[u8]) -> bool {
    let mut prev: Option<(&[u8], &[u8])> = None;
    for pair in text.split(|&b| b == b'&') {
        let mut at = None;
        for (i, &b) in pair.iter().enumerate() {
            match b {
                b'=' if at.is_none() => at = Some(i),
                b if unreserved(b) => {}
                _ => return false,
            }
        }
        let Some(at) = at else { return false };
        let this = (
            pair.get(..at).unwrap_or(&[]),
            pair.get(at + 1..).unwrap_or(&[]),
        );
        if prev.is_some_and(|p| p > this) {
            return false;
        }
        prev = Some(this);
    }
    true
}

/// [`canonical_form`]'s text, borrowed from `text` when it is canonical already.
fn form_text(text: &[u8]) -> Option<Cow<'_, [u8]>> {
    let text = text.trim_ascii();
    if form_is_canonical(text) {
        return Some(Cow::Borrowed(text));
    }
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for pair in text.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (
                pair.get(..at).unwrap_or(&[]),
                pair.get(at + 1..).unwrap_or(&[]),
            ),
            None => (pair, &[][..]),
        };
        pairs.push((form_decode(name)?, form_decode(value)?));
    }
    let key = |i: usize| pairs.get(i).map(|(n, v)| (n.as_slice(), v.as_slice()));
    let order = sorted_indices(pairs.len(), &|a, b| key(a) < key(b));
    let mut out = Vec::with_capacity(text.len());
    for (i, (name, value)) in order.iter().filter_map(|&i| pairs.get(i)).enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        form_encode(&mut out, name);
        out.push(b'=');
        form_encode(&mut out, value);
    }
    Some(Cow::Owned(out))
}

/// Does `a` sort before `b` by UTF-16 code units (RFC 8785 §3.2.3)? Compared by character:
/// a character's units order as its key below does (characters beyond U+FFFF, whose first
/// unit is a surrogate, between U+D7FF and U+E000).
fn utf16_less(a: &str, b: &str) -> bool {
    let key = |c: char| match u32::from(c) {
        c if c >= 0x10000 => c - 0x10000 + 0xd800,
        c if c >= 0xe000 => c - 0xe000 + 0x10d800,
        c => c,
    };
    let (mut x, mut y) = (a.chars(), b.chars());
    loop {
        match (x.next(), y.next()) {
            (Some(p), Some(q)) if p == q => {}
            (Some(p), Some(q)) => return key(p) < key(q),
            (p, q) => return p.is_none() && q.is_some(),
        }
    }
}

/// The indices `0..n` in the order `less` defines, equal ones in their original order: a
/// bottom-up merge sort (O(n log n), no recursion). One small non-generic function instead
/// of the standard library's sorts, which would add about 12 KB to the wasm module.
pub(crate) fn sorted_indices(n: usize, less: &dyn Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut a: Vec<usize> = (0..n).collect();
    let mut b: Vec<usize> = vec![0; n];
    let mut width = 1;
    while width < n {
        let mut start = 0;
        while start < n {
            let mid = start.saturating_add(width).min(n);
            let end = start.saturating_add(width.saturating_mul(2)).min(n);
            let (mut i, mut j) = (start, mid);
            for slot in b.get_mut(start..end).into_iter().flatten() {
                let take_right = match (a.get(i), a.get(j)) {
                    (Some(&x), Some(&y)) if i < mid && j < end => less(y, x),
                    _ => i >= mid,
                };
                if take_right {
                    *slot = a.get(j).copied().unwrap_or(0);
                    j += 1;
                } else {
                    *slot = a.get(i).copied().unwrap_or(0);
                    i += 1;
                }
            }
            start = end;
        }
        std::mem::swap(&mut a, &mut b);
        width = width.saturating_mul(2);
    }
    a
}

/// How deep JSON may nest before [`canonical_json`] gives up (the body is then digested as
/// sent): at most this many lists and objects inside the outermost one.
pub const MAX_JSON_DEPTH: usize = 64;

/// The RFC 8785 canonical form of a JSON text; `None` when it is not JSON (RFC 8259, UTF-8),
/// nests deeper than [`MAX_JSON_DEPTH`], or has a number beyond 10^±100000 (its exponent as
/// `d.ddde±x`, however it is written).
///
/// Numbers are rewritten from their text, without floating point: the exact decimal value
/// with leading and trailing zeros dropped, laid out as ECMAScript lays out a number (plain up
/// to 21 integer digits and down to 6 leading zeros, else `d.ddde±x`; `-0` is `0`). For a
/// number of at most 15 significant digits this is exactly RFC 8785's text (such a decimal is
/// the shortest spelling of its IEEE-754 double). A longer one keeps all its digits where
/// RFC 8785 would round it to a double (`333333333.33333329`, not `333333333.3333333`): two
/// spellings of one decimal value still agree, and integers beyond 2^53 stay apart.
pub fn canonical_json(text: &[u8]) -> Option<String> {
    let value = crate::json::value::parse_exact(text, MAX_JSON_DEPTH + 1)?;
    let mut out = String::with_capacity(text.len());
    write_canonical(&value, &mut out)?;
    Some(out)
}

/// Writes a tree read by [`parse_exact`](crate::json::value::parse_exact) in RFC 8785's form:
/// object members sorted by their names' UTF-16 code units (the tree's names are unique: of
/// equal names the last was kept), strings with the minimal escapes, numbers as their exact
/// text. `None` for a number that is not exact text (not such a tree).
fn write_canonical(v: &Value, out: &mut String) -> Option<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(Number::Exact(text)) => out.push_str(text),
        Value::Number(_) => return None,
        Value::String(s) => crate::json::quote_canonical(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let members: Vec<&(String, Value)> = map.iter().collect();
            let name = |i: usize| members.get(i).map_or("", |m| m.0.as_str());
            out.push('{');
            let order = sorted_indices(members.len(), &|a, b| utf16_less(name(a), name(b)));
            for (n, i) in order.into_iter().enumerate() {
                let (k, v) = members.get(i)?;
                if n > 0 {
                    out.push(',');
                }
                crate::json::quote_canonical(out, k);
                out.push(':');
                write_canonical(v, out)?;
            }
            out.push('}');
        }
    }
    Some(())
}

/// The JSON number in `s` at `*at`, rewritten from its exact decimal value (see
/// [`canonical_json`]); `*at` moves past it. `None` when no number starts there, or it is
/// beyond 10^±100000.
pub(crate) fn read_decimal(s: &[u8], at: &mut usize) -> Option<String> {
    let digits_at = |at: &mut usize| -> &[u8] {
        let start = *at;
        while s.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        s.get(start..*at).unwrap_or(&[])
    };
    let eat = |at: &mut usize, b: u8| -> bool {
        let hit = s.get(*at) == Some(&b);
        if hit {
            *at += 1;
        }
        hit
    };
    let negative = eat(at, b'-');
    let int = digits_at(at);
    if int.is_empty() || (int.len() > 1 && int.first() == Some(&b'0')) {
        return None;
    }
    let frac = if eat(at, b'.') {
        let f = digits_at(at);
        if f.is_empty() {
            return None;
        }
        f
    } else {
        &[]
    };
    let mut exponent: i64 = 0;
    if eat(at, b'e') || eat(at, b'E') {
        let minus = eat(at, b'-');
        if !minus {
            eat(at, b'+');
        }
        let e = digits_at(at);
        if e.is_empty() {
            return None;
        }
        for &d in e {
            // Saturated far past any exponent the digits of a text this size could bring
            // back within the limit (checked below, on the number's own exponent).
            exponent = (exponent * 10 + i64::from(d - b'0')).min(1 << 40);
        }
        if minus {
            exponent = -exponent;
        }
    }
    let mut out = String::new();
    // All significant digits, and where the decimal point sits among them.
    let leading = int.iter().chain(frac).take_while(|&&d| d == b'0').count();
    let mut digits: Vec<u8> = int.iter().chain(frac).skip(leading).copied().collect();
    let point = i64::try_from(int.len()).ok()? + exponent - i64::try_from(leading).ok()?;
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.is_empty() {
        out.push('0');
        return Some(out);
    }
    // The limit is on the exponent of the canonical `d.ddde±x` (`point - 1`), not on the one
    // written: every spelling of a number is refused or accepted alike, and the canonical
    // text reads back as itself.
    if !(-100_000..=100_000).contains(&(point - 1)) {
        return None;
    }
    if negative {
        out.push('-');
    }
    push_es_layout(&mut out, &digits, point);
    Some(out)
}

/// Lays out significant ASCII `digits` (no leading or trailing zeros) with the decimal point
/// after `n` of them as ECMAScript's `Number.prototype.toString` does (ECMA-262,
/// Number::toString, steps for k digits and point position n).
fn push_es_layout(out: &mut String, digits: &[u8], n: i64) {
    let k = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let zeros = |out: &mut String, count: i64| (0..count).for_each(|_| out.push('0'));
    let push = |out: &mut String, d: &[u8]| d.iter().for_each(|&b| out.push(char::from(b)));
    let at = |i: i64| usize::try_from(i).unwrap_or(0).min(digits.len());
    if k <= n && n <= 21 {
        push(out, digits);
        zeros(out, n - k);
    } else if 0 < n && n <= 21 {
        push(out, digits.get(..at(n)).unwrap_or(&[]));
        out.push('.');
        push(out, digits.get(at(n)..).unwrap_or(&[]));
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        zeros(out, -n);
        push(out, digits);
    } else {
        push(out, digits.get(..1).unwrap_or(&[]));
        let rest = digits.get(1..).unwrap_or(&[]);
        if !rest.is_empty() {
            out.push('.');
            push(out, rest);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        crate::json::push_u64(out, (n - 1).unsigned_abs());
    }
}

/// How the natural key digests a request body, chosen by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyForm {
    /// The bytes as sent.
    Raw,
    /// `application/x-www-form-urlencoded`: [`canonical_form`].
    Form,
    /// `application/json` or a `+json` media type: [`canonical_json`].
    Json,
}

impl BodyForm {
    /// The form for a `content-type` value: its media type, case-insensitive, parameters
    /// ignored. Anything else (and no header) is [`BodyForm::Raw`].
    pub fn of_content_type(value: Option<&[u8]>) -> BodyForm {
        let value = value.unwrap_or(&[]);
        let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
        let media = value.get(..end).unwrap_or(&[]).trim_ascii();
        let suffix = media.get(media.len().saturating_sub(5)..).unwrap_or(&[]);
        // The exact spellings first (a memcmp), then any letter case.
        if media == b"application/x-www-form-urlencoded" {
            BodyForm::Form
        } else if media == b"application/json" {
            BodyForm::Json
        } else if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
            BodyForm::Form
        } else if media.eq_ignore_ascii_case(b"application/json")
            || (media.len() > 5 && suffix.eq_ignore_ascii_case(b"+json"))
        {
            BodyForm::Json
        } else {
            BodyForm::Raw
        }
    }

    /// The canonical text of `body` in this form (borrowed when `body` is canonical already);
    /// `None` for [`BodyForm::Raw`] or a body that is not of the form (it is then digested as
    /// sent).
    pub fn canonical(self, body: &[u8]) -> Option<Cow<'_, [u8]>> {
        match self {
            BodyForm::Raw => None,
            BodyForm::Form => form_text(body),
            BodyForm::Json => canonical_json(body).map(|s| Cow::Owned(s.into_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_order() {
        let words = [
            "",
            "a",
            "ab",
            "b",
            "\u{7f}",
            "\u{d7ff}",
            "\u{10000}",
            "\u{1f600}",
            "\u{10ffff}",
            "\u{e000}",
            "\u{fb33}",
            "\u{ffff}",
        ];
        for a in words {
            for b in words {
                let want = a.encode_utf16().lt(b.encode_utf16());
                assert_eq!(utf16_less(a, b), want, "{a:?} < {b:?}");
            }
        }
    }

    #[test]
    fn the_merge_sort_is_a_stable_sort() {
        let mut seed = 7u64;
        for n in [0usize, 1, 2, 3, 5, 8, 13, 100, 1000] {
            let keys: Vec<u64> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % 10
                })
                .collect();
            let got = sorted_indices(n, &|a, b| keys[a] < keys[b]);
            let mut want: Vec<usize> = (0..n).collect();
            want.sort_by_key(|&i| keys[i]);
            assert_eq!(got, want, "n = {n}");
        }
    }

    fn path(p: &str) -> String {
        canonical_path(p).path
    }

    #[test]
    fn paths_are_normalized() {
        for (raw, want) in [
            ("/oauth/token", "/oauth/token"),
            ("//oauth/token", "/oauth/token"),
            ("/oauth//token", "/oauth/token"),
            ("/oauth/%74oken", "/oauth/token"),
            ("/oauth/%74%6F%6b%65%6E", "/oauth/token"),
            ("/oauth/./token", "/oauth/token"),
            ("/oauth/x/../token", "/oauth/token"),
            ("/oauth/%2e/token", "/oauth/token"),
            ("/oauth/x/%2E%2e/token", "/oauth/token"),
            ("/../oauth/token", "/oauth/token"),
            ("/v1/roles/%61dmin/members", "/v1/roles/admin/members"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/", "/"),
            ("/..", "/"),
            ("//", "/"),
            ("/a%3ab", "/a%3Ab"),
            ("/a%zz", "/a%25zz"),
            ("/a%", "/a%25"),
            ("/a%4", "/a%254"),
            ("/a\\b", "/a/b"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/c.", "/a/..b/c."),
            ("/ключ", "/ключ"),
            ("*", "*"),
        ] {
            assert_eq!(path(raw), want, "{raw}");
            assert_eq!(path(want), want, "idempotent on {want}");
        }
    }

    #[test]
    fn query_and_fragment_are_split_off() {
        let c = canonical_path("/oauth/token?b=2&a=1#frag");
        assert_eq!(c.path, "/oauth/token");
        assert_eq!(c.query, "b=2&a=1");
        assert_eq!(canonical_path("/oauth/token?").query, "");
        assert_eq!(canonical_path("/oauth/token?").path, "/oauth/token");
    }

    #[test]
    fn encoded_slashes_are_reported() {
        for raw in [
            "/oauth%2Ftoken",
            "/oauth%2ftoken",
            "/oauth%5Ctoken",
            "/oauth%5ctoken",
        ] {
            let c = canonical_path(raw);
            assert_eq!(c.path, "/oauth/token", "{raw}");
            assert!(c.encoded_slash, "{raw}");
        }
        assert!(!canonical_path("/oauth/token").encoded_slash);
        assert!(!canonical_path("/oauth%252Ftoken").encoded_slash);
    }

    #[test]
    fn forms_are_sorted_and_decoded() {
        let want = "client_id=ci-bot&grant_type=client_credentials";
        for raw in [
            "grant_type=client_credentials&client_id=ci-bot",
            "client_id=ci-bot&grant_type=client_credentials",
            "grant_type=client_credentials&&client_id=ci-bot&",
            "grant%5Ftype=client_credentials&client_id=ci-bot",
            "grant_type=client_credentials&client_id=ci-bot\n",
            "  grant_type=client%5fcredentials&client%5Fid=ci%2Dbot\r\n",
        ] {
            assert_eq!(
                canonical_form(raw.as_bytes()).as_deref(),
                Some(want),
                "{raw}"
            );
        }
        assert_eq!(canonical_form(b"a=b+c").as_deref(), Some("a=b%20c"));
        assert_eq!(canonical_form(b"a=b%20c").as_deref(), Some("a=b%20c"));
        assert_eq!(canonical_form(b"flag").as_deref(), Some("flag="));
        assert_eq!(
            canonical_form(b"b=2&a=2&a=1").as_deref(),
            Some("a=1&a=2&b=2")
        );
        assert_eq!(canonical_form(b"a=%26&b==").as_deref(), Some("a=%26&b=%3D"));
        assert_eq!(canonical_form(b"").as_deref(), Some(""));
        assert_eq!(canonical_form(b"a=%zz"), None);
        assert_eq!(canonical_form(b"a=%"), None);
        assert_eq!(
            canonical_form(&[b'a', b'=', 0xff]).as_deref(),
            Some("a=%FF")
        );
        // Canonical already (the fast path) or not: pairs compare by name, then value.
        for (text, canonical) in [
            ("a=1&a1=2", true),
            ("a1=2&a=1", false),
            ("a=2&a=10", false),
            ("a=&b=", true),
            ("=x", true),
            ("a", false),
            ("a=b=c", false),
            ("a=1&&b=2", false),
            ("a=%41", false),
            ("a=1&", false),
        ] {
            assert_eq!(form_is_canonical(text.as_bytes()), canonical, "{text}");
            let c = canonical_form(text.as_bytes()).unwrap();
            assert_eq!(c == text, canonical, "{text} -> {c}");
        }
    }

    #[test]
    fn json_follows_rfc_8785() {
        // RFC 8785 §3.2.2 (the example input and its canonical form).
        let input = br#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canonical_json(input).as_deref(),
            // 333333333.33333329 has 17 significant digits: kept (see canonical_json); RFC 8785
            // writes 333333333.3333333.
            Some(
                r#"{"literals":[null,true,false],"numbers":[333333333.33333329,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
            )
        );
        // §3.2.3: members sorted by UTF-16 code units (the emoji before U+FB33, unlike UTF-8).
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let out = canonical_json(input.as_bytes()).unwrap();
        let order: Vec<&str> = [
            "\\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ]
        .to_vec();
        let mut at = 0;
        for k in order {
            let pos = out[at..].find(&format!("\"{k}\":")).map(|p| p + at);
            assert!(pos.is_some(), "{k} out of order in {out}");
            at = pos.unwrap();
        }
        assert_eq!(
            canonical_json(br#" { "b" : [1, 2.0, -0], "a":{"y":1,"x":"\u0041"} } "#).as_deref(),
            Some(r#"{"a":{"x":"A","y":1},"b":[1,2,0]}"#)
        );
        assert_eq!(
            canonical_json(b"{\"a\":1,\"b\":0,\"a\":2}").as_deref(),
            Some("{\"a\":2,\"b\":0}"),
            "of duplicate names the last counts"
        );
        assert_eq!(
            canonical_json("\"\\ud83d\\ude00\\u00e9/\"".as_bytes()).as_deref(),
            Some("\"😀é/\"")
        );
        for bad in [
            &b"{"[..],
            b"{\"a\":}",
            b"[1,]",
            b"{\"a\":1,}",
            b"nope",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\x\"",
            b"\"a\nb\"",
            b"[1] [2]",
            &[b'"', 0xff, b'"'],
            b"",
        ] {
            assert_eq!(
                canonical_json(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(canonical_json(deep(MAX_JSON_DEPTH + 1).as_bytes()).is_some());
        assert_eq!(
            canonical_json(deep(MAX_JSON_DEPTH + 2).as_bytes()),
            None,
            "too deep"
        );
        assert_eq!(
            canonical_json(deep(100_000).as_bytes()),
            None,
            "no stack overflow"
        );
    }

    #[test]
    fn numbers_as_ecmascript_writes_them() {
        // Spellings of one value agree; the layouts of ECMA-262 Number::toString (and so of
        // RFC 8785, Appendix B, for the values of at most 15 significant digits).
        for (text, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.000", "0"),
            ("0e99", "0"),
            ("1", "1"),
            ("1.0", "1"),
            ("1.000e0", "1"),
            ("10e-1", "1"),
            ("0.1e1", "1"),
            ("-12.50", "-12.5"),
            ("123.456e2", "12345.6"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("1E30", "1e+30"),
            ("9007199254740992", "9007199254740992"),
            ("295147905179352830000", "295147905179352830000"),
            ("999999999999999700000", "999999999999999700000"),
            ("1e23", "1e+23"),
            ("9.999999999999997e+22", "9.999999999999997e+22"),
            ("0.000001", "0.000001"),
            ("1e-6", "0.000001"),
            ("1e-7", "1e-7"),
            ("9.999999999999997e-7", "9.999999999999997e-7"),
            ("2e-3", "0.002"),
            ("0.000000000000000000000000001", "1e-27"),
            ("5e-324", "5e-324"),
            ("-5e-324", "-5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("-0.0000033333333333333333", "-0.0000033333333333333333"),
            // More than 15 significant digits: kept exactly (see canonical_json).
            ("333333333.33333329", "333333333.33333329"),
            ("9007199254740993", "9007199254740993"),
        ] {
            let got = canonical_json(text.as_bytes());
            assert_eq!(got.as_deref(), Some(want), "{text}");
            assert_eq!(
                canonical_json(want.as_bytes()).as_deref(),
                Some(want),
                "idempotent"
            );
        }
        for bad in [
            "01", "1.", ".5", "-", "1e", "1e+", "+1", "0x10", "1e100001", "NaN", "Infinity",
        ] {
            assert_eq!(canonical_json(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(canonical_json(b"1e100000").as_deref(), Some("1e+100000"));
    }

    #[test]
    fn body_forms_follow_the_media_type() {
        let of = |ct: &str| BodyForm::of_content_type(Some(ct.as_bytes()));
        assert_eq!(of("application/x-www-form-urlencoded"), BodyForm::Form);
        assert_eq!(
            of("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            BodyForm::Form
        );
        assert_eq!(of("application/json"), BodyForm::Json);
        assert_eq!(of(" application/json ;charset=utf-8"), BodyForm::Json);
        assert_eq!(of("application/merge-patch+json"), BodyForm::Json);
        assert_eq!(of("multipart/form-data; boundary=x"), BodyForm::Raw);
        assert_eq!(of("text/plain"), BodyForm::Raw);
        assert_eq!(of("+json"), BodyForm::Raw);
        assert_eq!(BodyForm::of_content_type(None), BodyForm::Raw);
        assert_eq!(
            BodyForm::Json.canonical(b"{ }").as_deref(),
            Some(&b"{}"[..])
        );
        assert!(matches!(
            BodyForm::Form.canonical(b"a=1&b=2"),
            Some(Cow::Borrowed(b"a=1&b=2"))
        ));
        assert_eq!(BodyForm::Json.canonical(b"{"), None);
        assert_eq!(BodyForm::Raw.canonical(b"a"), None);
    }

    /// Found by the `canonical` fuzz target: the exponent limit was on the exponent as
    /// written, so `3000000e100000` canonicalized to `3e+100006`, which was then refused: not
    /// a fixed point, and two spellings of one number digested differently (one canonical,
    /// one raw). The limit is now on the number's own exponent, however it is spelled.
    #[test]
    fn the_exponent_limit_is_the_numbers_not_the_spellings() {
        for (text, want) in [
            ("3000000e100000", None),
            ("3e100006", None),
            ("0.0000003e-99994", None),
            ("3e-100007", None),
            ("1e100000", Some("1e+100000")),
            ("0.1e100001", Some("1e+100000")),
            ("10e99999", Some("1e+100000")),
            ("1e-100000", Some("1e-100000")),
            ("0.001e-99997", Some("1e-100000")),
            ("1000e-100003", Some("1e-100000")),
            ("0e100001", Some("0")),
            ("[1e99999999999999999999999]", None),
        ] {
            let got = canonical_json(text.as_bytes());
            assert_eq!(got.as_deref(), want, "{text}");
            if let Some(c) = got {
                assert_eq!(canonical_json(c.as_bytes()).as_deref(), Some(c.as_str()));
            }
        }
    }
}
