//! A small JSON object writer for problem documents and audit lines: members in the order
//! written, strings escaped per RFC 8259. (Writing directly is smaller and faster than
//! building a `serde_json::Value` tree for every answer and audit line.)

/// A JSON object being written.
#[derive(Debug)]
pub struct Obj {
    buf: String,
}

impl Default for Obj {
    fn default() -> Obj {
        Obj::new()
    }
}

/// Appends `s` as a JSON string literal. Runs of bytes that need no escaping are copied whole.
pub fn quote(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let mut rest = s;
    // Candidates: control characters, quote, backslash, and 0xE2 (U+2028 and U+2029 are
    // escaped too: valid JSON, but not valid JavaScript).
    while let Some(i) = rest
        .bytes()
        .position(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0xe2)
    {
        let (head, tail) = rest.split_at_checked(i).unwrap_or((rest, ""));
        out.push_str(head);
        let mut chars = tail.chars();
        let c = chars.next().unwrap_or(' ');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if u32::from(c) < 0x20 => {
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX.get(b >> 4).copied().unwrap_or(b'0')));
                out.push(char::from(HEX.get(b & 15).copied().unwrap_or(b'0')));
            }
            c => out.push(c),
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
    out.push('"');
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
        let mut buf = String::with_capacity(512);
        buf.push('{');
        Obj { buf }
    }

    fn key(&mut self, k: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        quote(&mut self.buf, k);
        self.buf.push(':');
    }

    /// A string member.
    pub fn str(&mut self, k: &str, v: &str) -> &mut Obj {
        self.key(k);
        quote(&mut self.buf, v);
        self
    }

    /// A string member, or `null`.
    pub fn opt_str(&mut self, k: &str, v: Option<&str>) -> &mut Obj {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    /// An unsigned integer member.
    pub fn num(&mut self, k: &str, v: u64) -> &mut Obj {
        use std::fmt::Write as _;
        self.key(k);
        let _ = write!(self.buf, "{v}");
        self
    }

    /// An unsigned integer member, or `null`.
    pub fn opt_num(&mut self, k: &str, v: Option<u64>) -> &mut Obj {
        match v {
            Some(v) => self.num(k, v),
            None => self.null(k),
        }
    }

    /// A boolean member.
    pub fn bool(&mut self, k: &str, v: bool) -> &mut Obj {
        self.key(k);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// A `null` member.
    pub fn null(&mut self, k: &str) -> &mut Obj {
        self.key(k);
        self.buf.push_str("null");
        self
    }

    /// The finished object text.
    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json() {
        let mut o = Obj::new();
        o.str(
            "a",
            "quote \" backslash \\ newline \n ctrl \u{1} sep \u{2028} ünï",
        )
        .num("n", u64::MAX)
        .opt_num("m", None)
        .opt_str("s", None)
        .bool("b", true);
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
    }
}
