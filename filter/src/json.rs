//! A small JSON object writer for problem documents and audit lines: members in the order
//! written, strings escaped per RFC 8259. (Writing directly is smaller and faster than
//! building a `serde_json::Value` tree for every answer and audit line.)
//!
//! Single characters are appended with `push_str("x")`, not `push('x')`: at the size levels ("s", "z")
//! `String::push` stays an out-of-line UTF-8 encoder call, measurably slower here.
#![allow(clippy::single_char_add_str)]

pub mod value;

pub use value::{parse, scan_object, Map, Number, Scalar, Span, Value};

/// A member name as it is written after another member, `,"name":` (the object's first
/// member drops the comma). Made by [`key!`](crate::key) at compile time, so writing a name
/// is one copy, not three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key(&'static str);

impl Key {
    /// A key from its written form `,"name":`; use [`key!`](crate::key), which writes it.
    pub const fn written(text: &'static str) -> Key {
        Key(text)
    }

    /// The member name.
    pub fn name(self) -> &'static str {
        self.0
            .get(2..self.0.len().saturating_sub(2))
            .unwrap_or_default()
    }
}

/// The [`Key`] of a member name: `key!("route")` is `,"route":`, put together at compile time.
/// Member names are the filter's own literals: plain ASCII, never escaped.
#[macro_export]
macro_rules! key {
    ($name:literal) => {
        $crate::json::Key::written(concat!(",\"", $name, "\":"))
    };
}

/// A JSON object being written.
#[derive(Debug)]
pub struct Obj {
    buf: String,
    /// No member written yet (the next one needs no comma).
    first: bool,
}

impl Default for Obj {
    fn default() -> Obj {
        Obj::new()
    }
}

/// Bytes that end a run of bytes copied as they are: control characters, quote, backslash,
/// and 0xE2 (the lead byte of U+2028 and U+2029, escaped too: valid JSON, but not valid
/// JavaScript).
const fn stops_run(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0xe2
}

/// Whether any of the eight bytes of `x` [`stops_run`]: a byte below 0x20, or equal to `"`,
/// `\\` or 0xE2, found eight at a time (a zero byte of `x ^ c` is a byte equal to `c`).
/// Exact, not an estimate: each test is non-zero iff some byte qualifies.
#[inline]
fn chunk_stops_run(x: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x;
    (below_space
        | zero(x ^ (ONES * u64::from(b'"')))
        | zero(x ^ (ONES * u64::from(b'\\')))
        | zero(x ^ (ONES * 0xe2)))
        & HIGHS
        != 0
}

/// The index of the first byte of `bytes` at or after `from` that [`stops_run`], or its
/// length: eight bytes at a time while none does.
fn next_stop(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    let rest = bytes.get(from..).unwrap_or_default();
    // Arrays, not slices: each word is one load (a slice's `copy_from_slice` stays a call at
    // the size levels, a `memory.copy` per eight bytes).
    let (words, _) = rest.as_chunks::<8>();
    for word in words {
        if chunk_stops_run(u64::from_ne_bytes(*word)) {
            break;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if stops_run(b) {
            return i;
        }
        i += 1;
    }
    i
}

/// Appends `s` as a JSON string literal. Runs of bytes that need no escaping are copied whole.
pub fn quote(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push_str("\"");
    // Most values (names, ids, principals, the problem's detail) need no escaping: one scan,
    // eight bytes at a time, and one copy.
    if next_stop(s.as_bytes(), 0) == s.len() {
        out.push_str(s);
        out.push_str("\"");
        return;
    }
    escape_rest(out, s, false);
}

/// Appends `s` as RFC 8785 (JSON canonicalization) writes a string: as [`quote`] does, except
/// that U+2028 and U+2029 are written as they are.
pub fn quote_canonical(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push_str("\"");
    escape_rest(out, s, true);
}

/// The rest of a string literal after its opening quote, with the escapes of both: `"`,
/// `\\`, `\b \f \n \r \t`, other control characters as `\u00xx` (lower-case hex; RFC 8785
/// §3.2.2.2), U+2028 and U+2029 as `\u2028`, `\u2029` unless `canonical`.
fn escape_rest(out: &mut String, s: &str, canonical: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    loop {
        i = next_stop(bytes, i);
        let Some(&b) = bytes.get(i) else {
            break;
        };
        out.push_str(s.get(run..i).unwrap_or(""));
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0xe2 => match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(0x80), Some(0xa8)) if !canonical => "\\u2028",
                (Some(0x80), Some(0xa9)) if !canonical => "\\u2029",
                // Another character with this lead byte (e.g. €), or U+2028/U+2029 written
                // canonically: copied with the next run.
                _ => {
                    run = i;
                    i += 1;
                    continue;
                }
            },
            _ => {
                out.push_str("\\u00");
                let hex = [
                    HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
                    HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'),
                ];
                out.push_str(std::str::from_utf8(&hex).unwrap_or("00"));
                ""
            }
        };
        out.push_str(escape);
        i += if b == 0xe2 { 3 } else { 1 };
        run = i;
    }
    out.push_str(s.get(run..).unwrap_or(""));
    out.push_str("\"");
}

/// Appends `v` in decimal (without the `core::fmt` machinery, which costs more than the
/// digits on the hot path).
pub fn push_u64(out: &mut String, v: u64) {
    let mut digits = [0u8; 20];
    let mut n = v;
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(d) = digits.get_mut(start) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(digits.get(start..).unwrap_or(b"0")).unwrap_or("0"));
}

/// `s` as a JSON string literal.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    quote(&mut out, s);
    out
}

impl Obj {
    /// An empty object.
    pub fn new() -> Obj {
        Obj::after("")
    }

    /// An empty object written after `prefix` (e.g. an audit line's `retry-guard audit `), so
    /// the finished text needs no second copy.
    pub fn after(prefix: &str) -> Obj {
        // Room for a whole audit line (a decision line is about 560 bytes), so it is written
        // without growing the buffer.
        let mut buf = String::with_capacity(prefix.len() + 1024);
        buf.push_str(prefix);
        buf.push_str("{");
        Obj { buf, first: true }
    }

    /// Starts a member: its name, put together at compile time by [`key!`] (one copy).
    fn key(&mut self, k: Key) {
        debug_assert!(k.name().bytes().all(|b| !stops_run(b)), "member name {k:?}");
        let text = if self.first {
            k.0.get(1..).unwrap_or_default()
        } else {
            k.0
        };
        self.first = false;
        self.buf.push_str(text);
    }

    /// A string member holding `t` (Unix seconds) as an RFC 3339 timestamp.
    pub fn time(&mut self, k: Key, t: u64) -> &mut Obj {
        self.key(k);
        self.buf.push_str("\"");
        crate::time::push_rfc3339(&mut self.buf, t);
        self.buf.push_str("\"");
        self
    }

    /// A string member holding `bytes` as base64url without padding, or `null`.
    pub fn opt_b64url(&mut self, k: Key, bytes: Option<&[u8]>) -> &mut Obj {
        let Some(bytes) = bytes else {
            return self.null(k);
        };
        self.key(k);
        self.buf.push_str("\"");
        crate::b64::push_url(&mut self.buf, bytes);
        self.buf.push_str("\"");
        self
    }

    /// A string member.
    pub fn str(&mut self, k: Key, v: &str) -> &mut Obj {
        self.key(k);
        quote(&mut self.buf, v);
        self
    }

    /// A string member whose value the filter made itself and needs no escaping: a name from
    /// its own vocabulary (`token_issuing`, `allow`), a timestamp, base64url. Written without
    /// the escape scan; debug builds check the promise.
    pub fn word(&mut self, k: Key, v: &str) -> &mut Obj {
        debug_assert!(
            v.bytes().all(|b| !stops_run(b)),
            "{k:?}: {v:?} needs escaping"
        );
        self.key(k);
        self.buf.push_str("\"");
        self.buf.push_str(v);
        self.buf.push_str("\"");
        self
    }

    /// A [`Obj::word`] member, or `null`.
    pub fn opt_word(&mut self, k: Key, v: Option<&str>) -> &mut Obj {
        match v {
            Some(v) => self.word(k, v),
            None => self.null(k),
        }
    }

    /// A string member, or `null`.
    pub fn opt_str(&mut self, k: Key, v: Option<&str>) -> &mut Obj {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    /// An unsigned integer member.
    pub fn num(&mut self, k: Key, v: u64) -> &mut Obj {
        self.key(k);
        push_u64(&mut self.buf, v);
        self
    }

    /// An unsigned integer member, or `null`.
    pub fn opt_num(&mut self, k: Key, v: Option<u64>) -> &mut Obj {
        match v {
            Some(v) => self.num(k, v),
            None => self.null(k),
        }
    }

    /// A boolean member.
    pub fn bool(&mut self, k: Key, v: bool) -> &mut Obj {
        self.key(k);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// A `null` member.
    pub fn null(&mut self, k: Key) -> &mut Obj {
        self.key(k);
        self.buf.push_str("null");
        self
    }

    /// Members written before, as [`Obj::finish_members`] returned them: appended as they
    /// are (the text of the filter's own writer, so already valid).
    pub fn members(&mut self, text: &str) -> &mut Obj {
        if text.is_empty() {
            return self;
        }
        self.buf.push_str(if self.first { "" } else { "," });
        self.first = false;
        self.buf.push_str(text);
        self
    }

    /// The members written so far without the opening brace, for another object's
    /// [`Obj::members`] (an object from [`Obj::new`]; one from [`Obj::after`] keeps its
    /// prefix).
    pub fn finish_members(self) -> String {
        match self.buf.strip_prefix('{') {
            Some(members) => members.to_string(),
            None => self.buf,
        }
    }

    /// The finished object text.
    pub fn finish(mut self) -> String {
        self.buf.push_str("}");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_written_once_read_as_if_written_in_place() {
        let mut once = Obj::new();
        once.str(key!("route"), "r\"1")
            .word(key!("class"), "token_issuing");
        let members = once.finish_members();
        let mut a = Obj::new();
        a.num(key!("n"), 1).members(&members).bool(key!("b"), true);
        let mut b = Obj::new();
        b.num(key!("n"), 1)
            .str(key!("route"), "r\"1")
            .word(key!("class"), "token_issuing")
            .bool(key!("b"), true);
        assert_eq!(a.finish(), b.finish());
        let mut first = Obj::new();
        first.members(&members).members("");
        assert_eq!(
            first.finish(),
            r#"{"route":"r\"1","class":"token_issuing"}"#
        );
    }

    #[test]
    fn eight_bytes_at_a_time_finds_what_one_at_a_time_finds() {
        // Every byte value at every place among harmless ones, and next to other stops.
        for b in 0..=255u8 {
            for at in 0..8 {
                for fill in [b'a', b' ', 0x7f, 0xff, 0x21] {
                    let mut w = [fill; 8];
                    w[at] = b;
                    let want = w.iter().any(|&c| stops_run(c));
                    assert_eq!(chunk_stops_run(u64::from_ne_bytes(w)), want, "{w:?}");
                }
            }
        }
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 6 {
                    0 => (next() % 256) as u8,
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            let from = if len == 0 { 0 } else { (next() as usize) % len };
            let want = bytes
                .iter()
                .skip(from)
                .position(|&c| stops_run(c))
                .map_or(len, |p| p + from);
            assert_eq!(next_stop(&bytes, from), want, "{bytes:?} from {from}");
        }
    }

    #[test]
    fn long_strings_are_escaped_wherever_the_escape_falls() {
        for at in 0..24 {
            for (c, esc) in [
                ("\"", "\\\""),
                ("\n", "\\n"),
                ("\u{2028}", "\\u2028"),
                ("€", "€"),
            ] {
                let text = format!("{}{c}{}", "x".repeat(at), "y".repeat(17));
                let want = format!("\"{}{esc}{}\"", "x".repeat(at), "y".repeat(17));
                assert_eq!(quoted(&text), want);
                let back: String = serde_json::from_str(&quoted(&text)).unwrap();
                assert_eq!(back, text);
            }
        }
    }

    #[test]
    fn writes_valid_json() {
        let mut o = Obj::new();
        o.str(
            key!("a"),
            "quote \" backslash \\ newline \n ctrl \u{1} sep \u{2028} ünï",
        )
        .num(key!("n"), u64::MAX)
        .opt_num(key!("m"), None)
        .opt_str(key!("s"), None)
        .bool(key!("b"), true);
        let text = o.finish();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["a"],
            "quote \" backslash \\ newline \n ctrl \u{1} sep \u{2028} ünï"
        );
        assert_eq!(v["n"], u64::MAX);
        assert!(v["m"].is_null() && v["s"].is_null());
        assert_eq!(v["b"], true);
        assert_eq!(Obj::new().finish(), "{}");
        let mut o = Obj::after("line ");
        o.num(key!("a"), 0)
            .num(key!("b"), 10)
            .num(key!("c"), 1_000_000_007);
        assert_eq!(o.finish(), r#"line {"a":0,"b":10,"c":1000000007}"#);
    }

    #[test]
    fn integers_match_display() {
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            65_535,
            1_795_864_586,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut s = String::new();
            push_u64(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }

    #[test]
    fn every_character_class_round_trips() {
        let samples = [
            "",
            "plain",
            "\u{0}\u{1f}\u{7f}",
            "é€𝄞",
            "\u{2028}x\u{2029}",
            "\u{e2}",
            "a\"b\\c\n\r\t",
            "€\u{2028}€",
            "\u{2027}\u{202a}",
        ];
        for s in samples {
            let q = quoted(s);
            assert!(!q.contains('\u{2028}') && !q.contains('\u{2029}'), "{q}");
            let back: String = serde_json::from_str(&q).unwrap();
            assert_eq!(back, s);
        }
        // Every character from U+0000 to U+2FFF, alone and between neighbours, round-trips.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let back: String = serde_json::from_str(&quoted(&all)).unwrap();
        assert_eq!(back, all);
        for c in all.chars() {
            let s = format!("a{c}\u{2028}{c}");
            let back: String = serde_json::from_str(&quoted(&s)).unwrap();
            assert_eq!(back, s);
        }
    }
}
