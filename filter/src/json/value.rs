//! A JSON document tree read from bytes, for the plugin configuration, JWT claims,
//! confirmation payloads and etcd answers. (It replaces `serde_json::Value`, whose generic
//! deserializer, `BTreeMap` and error formatting were about 40 KB of the wasm module.)
//!
//! What it accepts, and the values it gives, are serde_json's (`from_slice` into a `Value`,
//! default features): RFC 8259 over UTF-8; strings with paired surrogate escapes only and no
//! raw control characters; at most 127 nested lists and objects; of duplicate member names the
//! last counts and members are kept sorted by name. A number is a `u64` when it is a
//! non-negative integer that fits, an `i64` when a negative one fits, else an `f64` (`-0`,
//! fractions, exponents, integers beyond 64 bits), computed as serde_json computes it without
//! its `float_roundtrip` feature: the first 19 or 20 significant digits times a power of ten.
//! A number beyond the `f64` range is an error.
//!
//! [`scan_object`] reads an object's members without building the tree: what a caller that
//! needs a few members (a JWT's claims) looks at, with the same texts accepted and refused.

use std::fmt;

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// A list.
    Array(Vec<Value>),
    /// An object.
    Object(Map),
}

/// A JSON number, as serde_json keeps it (or, read by [`parse_exact`], as its exact text).
#[derive(Clone, Debug, PartialEq)]
pub enum Number {
    /// A non-negative integer.
    PosInt(u64),
    /// A negative integer.
    NegInt(i64),
    /// Any other number.
    Float(f64),
    /// The number's exact decimal value in RFC 8785's layout
    /// ([`crate::canonical::read_decimal`]); only in a tree read by [`parse_exact`].
    Exact(String),
}

impl Number {
    /// The number as a `u64`, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Number::PosInt(n) => Some(n),
            _ => None,
        }
    }

    /// The number as an `i64`, when it is an integer in its range.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Number::PosInt(n) => i64::try_from(n).ok(),
            Number::NegInt(n) => Some(n),
            Number::Float(_) | Number::Exact(_) => None,
        }
    }

    /// The number as an `f64` (`None` for an [`Number::Exact`] text).
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Number::PosInt(n) => n as f64,
            Number::NegInt(n) => n as f64,
            Number::Float(f) => f,
            Number::Exact(_) => return None,
        })
    }
}

/// The members of a JSON object, sorted by name (bytewise), names unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map(Vec<(String, Value)>);

impl Map {
    fn find(&self, name: &str) -> Option<usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok()
    }

    /// The member named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(self.find(name)?).map(|(_, v)| v)
    }

    /// Takes the member named `name` out.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.find(name)?;
        (i < self.0.len()).then(|| self.0.remove(i).1)
    }

    /// The member names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// The members, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, (String, Value)> {
        self.0.iter()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Are there none?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The map of `members` in document order: sorted by name, the last of equal names kept.
    fn from_members(members: Vec<(String, Value)>) -> Map {
        let sorted = members.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0));
        if sorted {
            return Map(members);
        }
        let order = crate::canonical::sorted_indices(members.len(), &|a, b| {
            let name = |i: usize| members.get(i).map_or("", |m| m.0.as_str());
            name(a) < name(b)
        });
        let mut slots: Vec<Option<(String, Value)>> = members.into_iter().map(Some).collect();
        let mut out: Vec<(String, Value)> = Vec::with_capacity(slots.len());
        for &i in &order {
            let Some(member) = slots.get_mut(i).and_then(Option::take) else {
                continue;
            };
            // Equal names are adjacent, in document order: a later one replaces this one.
            match out.last_mut() {
                Some(last) if last.0 == member.0 => *last = member,
                _ => out.push(member),
            }
        }
        Map(out)
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a String, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Value {
    /// The member `name` of an object (`None` for other values).
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(m) => m.get(name),
            _ => None,
        }
    }

    /// A string's text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A list's items.
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Is this an object?
    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    fn number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// A non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        self.number()?.as_u64()
    }

    /// An integer in the `i64` range.
    pub fn as_i64(&self) -> Option<i64> {
        self.number()?.as_i64()
    }

    /// A number as an `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        self.number()?.as_f64()
    }
}

/// Why a text is not JSON, and where (serde_json's wording).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    what: &'static str,
    line: usize,
    column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(self.what.len() + 32);
        s.push_str(self.what);
        s.push_str(" at line ");
        super::push_u64(&mut s, self.line as u64);
        s.push_str(" column ");
        super::push_u64(&mut s, self.column as u64);
        f.write_str(&s)
    }
}

const EOF_VALUE: &str = "EOF while parsing a value";
const EOF_STRING: &str = "EOF while parsing a string";
const INVALID_NUMBER: &str = "invalid number";
const OUT_OF_RANGE: &str = "number out of range";
const INVALID_ESCAPE: &str = "invalid escape";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";

/// serde_json's nesting limit: its 128th nested list or object is an error.
const MAX_DEPTH: usize = 127;

type Parsed<T> = Result<T, &'static str>;

/// Reads `bytes` as one JSON value (whitespace around it allowed).
pub fn parse(bytes: &[u8]) -> Result<Value, Error> {
    read(&mut Parser::new(bytes, MAX_DEPTH, false, false))
}

/// Reads `bytes` as [`parse`] does, but keeps every number as its exact decimal value
/// ([`Number::Exact`]: no rounding to a double, no range limit but an exponent within
/// ±100000) and accepts at most `max_depth` nested lists and objects: the tree
/// [`crate::canonical::canonical_json`] writes out.
pub fn parse_exact(bytes: &[u8], max_depth: usize) -> Option<Value> {
    read(&mut Parser::new(bytes, max_depth, true, false)).ok()
}

/// Where a string is in the text [`scan_object`] read: the bytes between its quotes, as
/// written (escapes not decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    start: usize,
    /// The closing quote.
    end: usize,
    /// It has an escape, so its text differs from its bytes.
    escaped: bool,
}

impl Span {
    /// The string's text in `text` (the text [`scan_object`] read to find the span).
    pub fn text(self, text: &[u8]) -> Option<String> {
        // Read again with its closing quote (the scan checked it), decoding any escapes.
        let mut p = Parser::new(text.get(self.start..=self.end)?, MAX_DEPTH, false, false);
        p.string().ok()
    }

    /// Is the string's text `s`? Compared without decoding when the string has no escape.
    pub fn is(self, text: &[u8], s: &str) -> bool {
        match self.escaped {
            false => text.get(self.start..self.end) == Some(s.as_bytes()),
            true => self.text(text).is_some_and(|t| t == s),
        }
    }
}

/// An object member's value as [`scan_object`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A string, where it is.
    Str(Span),
    /// A number, as [`parse`] gives it.
    Number(Number),
    /// `null`, `true`, `false`, a list or an object.
    Other,
}

/// Reads `bytes` as [`parse`] does and, if they are one JSON object, returns each member's
/// name and value in document order (equal names as often as they occur: the last is the one
/// [`parse`] keeps). Builds no tree: strings are reported where they are, lists and objects
/// inside are checked and skipped. `None` when the text is not JSON (exactly when [`parse`]
/// fails) or not an object.
pub fn scan_object(bytes: &[u8]) -> Option<Vec<(Span, Scalar)>> {
    let mut p = Parser::new(bytes, MAX_DEPTH, false, true);
    match read(&mut p) {
        Ok(Value::Object(_)) => Some(p.members),
        _ => None,
    }
}

fn read(p: &mut Parser<'_>) -> Result<Value, Error> {
    let bytes = p.s;
    let result = p.value(0).and_then(|v| {
        p.ws();
        match p.peek() {
            None => Ok(v),
            Some(_) => {
                p.at += 1;
                Err("trailing characters")
            }
        }
    });
    result.map_err(|what| {
        // serde_json reports the position of the last byte read.
        let read = bytes.get(..p.at.min(bytes.len())).unwrap_or(&[]);
        let line_start = read.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Error {
            what,
            line: 1 + read.iter().filter(|&&b| b == b'\n').count(),
            column: (read.len() - line_start).saturating_sub(p.back),
        }
    })
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    /// How far before `at` the error is (invalid UTF-8, found at a string's end).
    back: usize,
    /// How many lists and objects may nest.
    max_depth: usize,
    /// Numbers as their exact text ([`parse_exact`]).
    exact: bool,
    /// Check the text without building values ([`scan_object`]): strings are read as `null`,
    /// lists and objects as empty ones.
    skip: bool,
    /// When skipping, the outermost object's members.
    members: Vec<(Span, Scalar)>,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8], max_depth: usize, exact: bool, skip: bool) -> Parser<'a> {
        Parser {
            s,
            at: 0,
            back: 0,
            max_depth,
            exact,
            skip,
            members: Vec::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// The next byte, consumed; `eof` at the end.
    fn next(&mut self, eof: &'static str) -> Parsed<u8> {
        let b = self.peek().ok_or(eof)?;
        self.at += 1;
        Ok(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn ident(&mut self, rest: &[u8], v: Value) -> Parsed<Value> {
        for &b in rest {
            if self.next(EOF_VALUE)? != b {
                return Err("expected ident");
            }
        }
        Ok(v)
    }

    fn value(&mut self, depth: usize) -> Parsed<Value> {
        self.ws();
        let b = self.next(EOF_VALUE)?;
        Ok(match b {
            b'n' => self.ident(b"ull", Value::Null)?,
            b't' => self.ident(b"rue", Value::Bool(true))?,
            b'f' => self.ident(b"alse", Value::Bool(false))?,
            b'"' if self.skip => {
                self.span()?;
                Value::Null
            }
            b'"' => Value::String(self.string()?),
            b'-' | b'0'..=b'9' if self.exact => {
                self.at -= 1;
                let text = crate::canonical::read_decimal(self.s, &mut self.at);
                Value::Number(Number::Exact(text.ok_or(INVALID_NUMBER)?))
            }
            b'-' => Value::Number(self.number(false)?),
            b'0'..=b'9' => {
                self.at -= 1;
                Value::Number(self.number(true)?)
            }
            b'[' | b'{' => {
                if depth >= self.max_depth {
                    return Err("recursion limit exceeded");
                }
                if b == b'[' {
                    Value::Array(self.array(depth + 1)?)
                } else {
                    Value::Object(self.object(depth + 1)?)
                }
            }
            _ => return Err("expected value"),
        })
    }

    /// The items of a list, after its `[`.
    fn array(&mut self, depth: usize) -> Parsed<Vec<Value>> {
        const EOF: &str = "EOF while parsing a list";
        let mut items = Vec::new();
        self.ws();
        match self.peek() {
            Some(b']') => {
                self.at += 1;
                return Ok(items);
            }
            None => return Err(EOF),
            _ => {}
        }
        loop {
            let item = self.value(depth)?;
            if !self.skip {
                items.push(item);
            }
            self.ws();
            match self.next(EOF)? {
                b']' => return Ok(items),
                b',' => {
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                        return Err("trailing comma");
                    }
                }
                _ => return Err("expected `,` or `]`"),
            }
        }
    }

    /// The members of an object, after its `{`. When skipping, the members of the outermost
    /// object (`depth` 1) are recorded in `self.members` instead.
    fn object(&mut self, depth: usize) -> Parsed<Map> {
        const EOF: &str = "EOF while parsing an object";
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Map(members));
        }
        loop {
            match self.next(EOF)? {
                b'"' => {}
                b'}' => return Err("trailing comma"),
                _ => return Err("key must be a string"),
            }
            if self.skip {
                let name = self.span()?;
                self.colon(EOF)?;
                self.ws();
                let value = if self.peek() == Some(b'"') {
                    self.at += 1;
                    Scalar::Str(self.span()?)
                } else {
                    match self.value(depth)? {
                        Value::Number(n) => Scalar::Number(n),
                        _ => Scalar::Other,
                    }
                };
                if depth == 1 {
                    self.members.push((name, value));
                }
            } else {
                let name = self.string()?;
                self.colon(EOF)?;
                members.push((name, self.value(depth)?));
            }
            self.ws();
            match self.next(EOF)? {
                b'}' => return Ok(Map::from_members(members)),
                b',' => {
                    self.ws();
                    // serde_json expects a member here: its end-of-text error says "value".
                    if self.peek().is_none() {
                        return Err(EOF_VALUE);
                    }
                }
                _ => return Err("expected `,` or `}`"),
            }
        }
    }

    /// The `:` after a member name.
    fn colon(&mut self, eof: &'static str) -> Parsed<()> {
        self.ws();
        match self.next(eof)? {
            b':' => Ok(()),
            _ => Err("expected `:`"),
        }
    }

    fn hex4(&mut self) -> Parsed<u16> {
        let end = self.at + 4;
        let Some(digits) = self.s.get(self.at..end) else {
            self.at = self.s.len();
            return Err(EOF_STRING);
        };
        self.at = end;
        let mut n = 0u16;
        for &b in digits {
            let d = (b as char).to_digit(16).ok_or(INVALID_ESCAPE)?;
            n = n << 4 | d as u16;
        }
        Ok(n)
    }

    /// A string, after its opening quote, decoded. As serde_json does, the decoded bytes are
    /// checked for UTF-8 once the closing quote is read (a bad escape, a control character or
    /// the end of the text before it is the error instead), and invalid UTF-8 is placed back
    /// from there by the decoded bytes from the first invalid one.
    fn string(&mut self) -> Parsed<String> {
        let mut out: Vec<u8> = Vec::new();
        self.string_to(Some(&mut out))?;
        String::from_utf8(out).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            self.back = e.as_bytes().len().saturating_sub(valid);
            "invalid unicode code point"
        })
    }

    /// A string, after its opening quote, checked but not decoded: where it is. The same
    /// strings pass as for [`Parser::string`] (each run between escapes is checked for UTF-8
    /// on its own, which is the same check: an escape decodes to whole characters); a
    /// failure may be reported elsewhere.
    fn span(&mut self) -> Parsed<Span> {
        let start = self.at;
        let escaped = self.string_to(None)?;
        Ok(Span {
            start,
            end: self.at.saturating_sub(1),
            escaped,
        })
    }

    /// A string, after its opening quote, up to and including its closing quote: decoded
    /// into `out`, or without `out` only checked (runs between escapes as UTF-8 too). Whether
    /// it had an escape.
    fn string_to(&mut self, mut out: Option<&mut Vec<u8>>) -> Parsed<bool> {
        const EOF: &str = EOF_STRING;
        let mut escaped = false;
        loop {
            // Copy the run up to the next quote, escape or control character whole.
            let rest = self.s.get(self.at..).unwrap_or(&[]);
            let Some(run) = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
                self.at = self.s.len();
                return Err(EOF);
            };
            let bytes = rest.get(..run).unwrap_or(&[]);
            match out.as_deref_mut() {
                Some(out) => out.extend_from_slice(bytes),
                None if std::str::from_utf8(bytes).is_err() => {
                    return Err("invalid unicode code point")
                }
                None => {}
            }
            self.at += run;
            match self.next(EOF)? {
                b'"' => return Ok(escaped),
                b'\\' => escaped = true,
                _ => {
                    return Err("control character (\\u0000-\\u001F) found while parsing a string")
                }
            }
            let c = match self.next(EOF)? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let hi = self.hex4()?;
                    let code = match hi {
                        0xdc00..=0xdfff => return Err(LONE_SURROGATE),
                        0xd800..=0xdbff => {
                            // A leading surrogate must be followed by an escaped trailing one.
                            if self.next(EOF)? != b'\\' || self.next(EOF)? != b'u' {
                                return Err("unexpected end of hex escape");
                            }
                            let lo = self.hex4()?;
                            if !(0xdc00..=0xdfff).contains(&lo) {
                                return Err(LONE_SURROGATE);
                            }
                            0x10000 + ((u32::from(hi) - 0xd800) << 10) + (u32::from(lo) - 0xdc00)
                        }
                        _ => u32::from(hi),
                    };
                    char::from_u32(code).ok_or(LONE_SURROGATE)?
                }
                _ => return Err(INVALID_ESCAPE),
            };
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
    }

    /// `what` at the byte after the one read (serde_json's "peek error").
    fn at_next(&mut self, what: &'static str) -> &'static str {
        if self.at < self.s.len() {
            self.at += 1;
        }
        what
    }

    /// The next byte when it is a digit, consumed.
    fn digit(&mut self) -> Option<u8> {
        let d = self.peek()?.wrapping_sub(b'0');
        (d < 10).then(|| {
            self.at += 1;
            d
        })
    }

    /// A number (after its `-` when `positive` is false), as serde_json reads it.
    fn number(&mut self, positive: bool) -> Parsed<Number> {
        let first = self.next(EOF_VALUE)?.wrapping_sub(b'0');
        if first >= 10 {
            return Err(INVALID_NUMBER);
        }
        let mut significand = u64::from(first);
        // Digits beyond the 64-bit significand: each one multiplies by ten.
        let mut exponent: i32 = 0;
        if first == 0 {
            if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.at_next(INVALID_NUMBER));
            }
        } else {
            while let Some(d) = self.digit() {
                match significand
                    .checked_mul(10)
                    .and_then(|s| s.checked_add(u64::from(d)))
                {
                    Some(s) if exponent == 0 => significand = s,
                    _ => exponent = exponent.saturating_add(1),
                }
            }
        }
        let mut float = exponent != 0;
        if self.peek() == Some(b'.') {
            self.at += 1;
            float = true;
            let mut any = false;
            let mut overflowed = false;
            while let Some(d) = self.digit() {
                any = true;
                if overflowed {
                    continue;
                }
                match significand
                    .checked_mul(10)
                    .and_then(|s| s.checked_add(u64::from(d)))
                {
                    Some(s) => {
                        significand = s;
                        exponent -= 1;
                    }
                    None => overflowed = true,
                }
            }
            if !any {
                return Err(match self.peek() {
                    None => EOF_VALUE,
                    Some(_) => self.at_next(INVALID_NUMBER),
                });
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            float = true;
            let positive_exp = match self.peek() {
                Some(b'+') => {
                    self.at += 1;
                    true
                }
                Some(b'-') => {
                    self.at += 1;
                    false
                }
                _ => true,
            };
            let first = self.next(EOF_VALUE)?.wrapping_sub(b'0');
            if first >= 10 {
                return Err(INVALID_NUMBER);
            }
            let mut exp = i32::from(first);
            let mut overflowed = false;
            while let Some(d) = self.digit() {
                match exp
                    .checked_mul(10)
                    .and_then(|e| e.checked_add(i32::from(d)))
                {
                    Some(e) if !overflowed => exp = e,
                    // Beyond any f64: an error upwards, zero downwards.
                    _ if significand != 0 && positive_exp => return Err(OUT_OF_RANGE),
                    _ => overflowed = true,
                }
            }
            if overflowed {
                return Ok(Number::Float(if positive { 0.0 } else { -0.0 }));
            }
            exponent = if positive_exp {
                exponent.saturating_add(exp)
            } else {
                exponent.saturating_sub(exp)
            };
        }
        if !float {
            return Ok(if positive {
                Number::PosInt(significand)
            } else {
                // `-0` and integers below i64::MIN are floats.
                match (significand as i64).wrapping_neg() {
                    n if n < 0 => Number::NegInt(n),
                    _ => Number::Float(-(significand as f64)),
                }
            });
        }
        let f = f64_from_parts(significand, exponent).ok_or(OUT_OF_RANGE)?;
        Ok(Number::Float(if positive { f } else { -f }))
    }
}

/// `significand × 10^exponent` as serde_json computes it without `float_roundtrip`; `None`
/// beyond the `f64` range.
fn f64_from_parts(significand: u64, mut exponent: i32) -> Option<f64> {
    let mut f = significand as f64;
    loop {
        match pow10(exponent.unsigned_abs()) {
            Some(pow) => {
                if exponent >= 0 {
                    f *= pow;
                    if f.is_infinite() {
                        return None;
                    }
                } else {
                    f /= pow;
                }
                return Some(f);
            }
            None => {
                if f == 0.0 {
                    return Some(f);
                }
                if exponent >= 0 {
                    return None;
                }
                f /= 1e308;
                exponent += 308;
            }
        }
    }
}

/// 10^n, the nearest `f64`, for n up to 308.
fn pow10(n: u32) -> Option<f64> {
    if n > 308 {
        return None;
    }
    POW10.get(n as usize).copied()
}

include!("pow10.rs");

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's reading of `text`, in this module's terms.
    fn serde(text: &[u8]) -> Option<Value> {
        fn conv(v: serde_json::Value) -> Value {
            match v {
                serde_json::Value::Null => Value::Null,
                serde_json::Value::Bool(b) => Value::Bool(b),
                serde_json::Value::Number(n) => Value::Number(match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => Number::PosInt(u),
                    (None, Some(i)) => Number::NegInt(i),
                    _ => Number::Float(n.as_f64().unwrap()),
                }),
                serde_json::Value::String(s) => Value::String(s),
                serde_json::Value::Array(a) => Value::Array(a.into_iter().map(conv).collect()),
                // Sorted here: in `cargo test --workspace` another member turns on
                // serde_json's `preserve_order` (document order).
                serde_json::Value::Object(m) => Value::Object(Map::from_members(
                    m.into_iter().map(|(k, v)| (k, conv(v))).collect(),
                )),
            }
        }
        serde_json::from_slice::<serde_json::Value>(text)
            .ok()
            .map(conv)
    }

    fn same(text: &[u8]) {
        let ours = parse(text).ok();
        let theirs = serde(text);
        // Compare floats by their bits (NaN never occurs; -0.0 must stay -0.0).
        assert_eq!(
            format!("{ours:?}"),
            format!("{theirs:?}"),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let cases: &[&str] = &[
            "",
            " ",
            "null",
            "nul",
            "nulx",
            "true",
            "tru",
            "false",
            "[]",
            "{}",
            "[1,]",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":1",
            "[",
            "{",
            "\"",
            "\"abc",
            "\"a\\qb\"",
            "\"\\u00e9\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"a\u{1}b\"",
            "\"\\/\\b\\f\\n\\r\\t\"",
            "0",
            "-0",
            "-",
            "01",
            "-01",
            "1.",
            "1.e5",
            ".5",
            "+1",
            "1e",
            "1e+",
            "1e-",
            "1E5",
            "1e-5",
            "0.1",
            "-0.0",
            "1.5e300",
            "1e308",
            "1e309",
            "-1e309",
            "1e-400",
            "0e999999999999",
            "1e999999999999",
            "1e-999999999999",
            "-1e-999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "184467440737095516161234.5e3",
            "1844674407370955161.6",
            "18446744073709551616.5",
            "123456789012345678901234567890e-30",
            "0.000000000000000000000000000001",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "5e-324",
            "4.9e-324",
            "{\"b\":1,\"a\":2,\"b\":3}",
            "{\"z\":{\"y\":[1,{\"x\":null}]}, \"a\":true}",
            " [ 1 , 2 ] ",
            "[1] x",
            "[1]\n\n  x",
            "\u{feff}1",
            "{\"é\":1,\"e\":2,\"f\":3}",
            "1700000000.123",
            "1.7e9",
            "[\"\\u0000\"]",
            "\"\\uDBFF\\uDFFF\"",
            "\"\\uD800\\uDBFF\"",
        ];
        for c in cases {
            same(c.as_bytes());
        }
        same(b"\"\xff\"");
        same(b"\"\xc3\xa9\"");
        same(b"[\"\xe2\x82\"]");
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for n in [126, 127, 128, 129] {
            same(deep(n).as_bytes());
        }
        let deep_obj = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        for n in [126, 127, 128] {
            same(deep_obj(n).as_bytes());
        }
    }

    #[test]
    fn random_texts_read_as_serde_json_reads_them() {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15u64);
        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"a\"",
            "\"b\"",
            "\"\\u00e9\"",
            "1",
            "-",
            "0",
            ".",
            "e",
            "E",
            "+",
            "5",
            "9",
            " ",
            "\n",
            "true",
            "null",
            "\"",
            "\\",
            "x",
            "\"aa\"",
            "12345678901234567890",
            "e308",
            "e-5",
        ];
        for _ in 0..200_000 {
            let mut text = String::new();
            for _ in 0..(next() % 12) {
                text.push_str(crate::testing::pick(&mut next, PIECES));
            }
            same(text.as_bytes());
        }
    }

    /// What [`scan_object`] reports of `text`, as the tree [`parse`] reads: the members by name
    /// (the last of equal names), or `None`.
    fn scanned(text: &[u8]) -> Option<Vec<(String, Value)>> {
        let mut out: Vec<(String, Value)> = Vec::new();
        for (name, value) in scan_object(text)? {
            let value = match value {
                Scalar::Str(at) => Value::String(at.text(text).unwrap()),
                Scalar::Number(n) => Value::Number(n),
                Scalar::Other => Value::Null,
            };
            let name = name.text(text).unwrap();
            assert!(name.is_empty() || name.len() < text.len());
            out.retain(|(n, _)| *n != name);
            out.push((name, value));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }

    /// The same of the tree, lists, objects, booleans and null as `null`.
    fn tree_members(text: &[u8]) -> Option<Vec<(String, Value)>> {
        let Ok(Value::Object(m)) = parse(text) else {
            return None;
        };
        Some(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(_) | Value::Number(_) => v.clone(),
                        _ => Value::Null,
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
    }

    #[test]
    fn the_scan_accepts_what_parse_accepts() {
        let mut next = crate::testing::xorshift(0x6a09_e667_f3bc_c909u64);
        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"a\"",
            "\"b\"",
            "\"\\u0061\"",
            "\"\\ud800\"",
            "1",
            "-",
            "0",
            ".",
            "e",
            "1e400",
            " ",
            "true",
            "null",
            "\"",
            "\\",
            "x",
            "\"\u{e9}\"",
            "{\"a\":",
            "\"a\":1",
            ",\"b\":\"s\"",
        ];
        let mut objects = 0;
        for _ in 0..200_000 {
            let mut text = String::from("{");
            for _ in 0..(next() % 10) {
                text.push_str(crate::testing::pick(&mut next, PIECES));
            }
            if next().is_multiple_of(2) {
                text.push('}');
            }
            let bytes = text.as_bytes();
            let scan = scanned(bytes);
            objects += usize::from(scan.as_ref().is_some_and(|m| !m.is_empty()));
            assert_eq!(
                format!("{scan:?}"),
                format!("{:?}", tree_members(bytes)),
                "{text:?}"
            );
        }
        assert!(objects > 300, "{objects} objects with members");
        for text in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xff\":1}",
            b"{\"a\":\"x\x01\"}",
            b" {} ",
        ] {
            assert_eq!(scanned(text), tree_members(text));
        }
        assert_eq!(scanned(b"[1]"), None, "not an object");
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = |t: &str| parse(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(e(""), "EOF while parsing a value at line 1 column 0");
        assert_eq!(
            e("{\n  \"a\": 1,\n  \"b\" 2\n}"),
            "expected `:` at line 3 column 7"
        );
        assert_eq!(e("[1] x"), "trailing characters at line 1 column 5");
        assert_eq!(
            e("{\"a\":1e999}"),
            "number out of range at line 1 column 10"
        );
    }

    #[test]
    fn maps_keep_members_sorted_and_the_last_of_equal_names() {
        let v = parse(br#"{"b":1,"a":2,"b":3,"c":{}}"#).unwrap();
        let Value::Object(m) = &v else { panic!() };
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(v.get("b").and_then(Value::as_u64), Some(3));
        assert_eq!(v.get("c").map(Value::is_object), Some(true));
        assert_eq!(v.get("d"), None);
    }

    #[test]
    fn errors_are_worded_and_placed_as_serde_json_does() {
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        let cases: &[&str] = &[
            "",
            " ",
            "nul",
            "nulx",
            "[1,]",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":1",
            "[",
            "{",
            "\"",
            "\"abc",
            "\"a\\qb\"",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"a\u{1}b\"",
            "-",
            "01",
            "-01",
            "1.",
            "1.e5",
            ".5",
            "+1",
            "1e",
            "1e+",
            "1e309",
            "1e999999999999",
            "[1] x",
            "[1]\n\n  x",
            "{\n  \"a\": 1,\n  \"b\" 2\n}",
            "{\"a\":1e999}",
            "[1,,2]",
            "{,}",
            "{\"a\":}",
            "[tru]",
            &deep,
        ];
        for c in cases {
            let ours = parse(c.as_bytes()).unwrap_err().to_string();
            let theirs = serde_json::from_str::<serde_json::Value>(c)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{c:?}");
        }
    }

    /// Found by the `json` fuzz target: the end of the text after an object's comma was
    /// "EOF while parsing an object"; serde_json expects a member there ("a value").
    #[test]
    fn end_of_text_after_an_object_comma_is_reported_as_serde_json_does() {
        for c in [
            "{\"a\":1,",
            "{\"a\":1, \n",
            "{",
            "{\"a\":1",
            "{\"a\"",
            "{\"a\":",
            "[1,",
        ] {
            let ours = parse(c.as_bytes()).unwrap_err().to_string();
            let theirs = serde_json::from_str::<serde_json::Value>(c)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{c:?}");
        }
    }

    /// Found by the `json` fuzz target: invalid UTF-8 in a string was reported where its run
    /// began, and before a bad escape, control character or end of text after it. serde_json
    /// reads the whole string first, then points back from its closing quote to the first
    /// invalid byte of the decoded text.
    #[test]
    fn invalid_utf8_is_reported_where_serde_json_reports_it() {
        let cases: &[&[u8]] = &[
            b"\"ab\xffcd\"",
            b"[\"a\xc3\", 1]",
            b"{\"\xff\":1}",
            b"\"\\u00e9\\n\xff\\txy\"",
            b"\"\xff\\q\"",
            b"\"\xff\x01\"",
            b"\"\xff",
            b"\"\xe2\x80",
            b"[1,\n \"\xf0\x9f\x98\"]",
        ];
        for c in cases {
            let ours = parse(c).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<serde_json::Value>(c)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(c));
        }
    }
}
