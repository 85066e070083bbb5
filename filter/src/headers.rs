//! Zero-copy reading of a header map in the proxy-wasm wire format, so the stream state
//! machine can fetch a matched request's headers in one host call instead of one call (and one
//! allocation) per header.
//!
//! Format (proxy-wasm ABI 0.2.1, `proxy_get_header_map_pairs`): `u32` count, then `count` pairs
//! of (`u32` name length, `u32` value length), then each name and value followed by a NUL byte;
//! all integers little-endian.

/// A parsed header map borrowing the host's buffer.
#[derive(Debug, Default)]
pub struct HeaderPairs<'a> {
    pairs: Vec<(&'a [u8], &'a [u8])>,
}

fn u32_at(buf: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

/// The pairs of a buffer in the wire format, in order. The walk ends early, with
/// `malformed` set, where the buffer turns out malformed (a length past the end, a missing
/// NUL terminator).
struct Walk<'a> {
    buf: &'a [u8],
    count: usize,
    malformed: bool,
    /// The next pair's index.
    i: usize,
    /// Where the next pair's name starts.
    data: usize,
}

impl<'a> Walk<'a> {
    /// `None` if the header count is unreadable or more than the buffer can hold. An empty
    /// buffer is an empty map.
    fn new(buf: &'a [u8]) -> Option<Walk<'a>> {
        if buf.is_empty() {
            return Some(Walk {
                buf,
                count: 0,
                malformed: false,
                i: 0,
                data: 0,
            });
        }
        let count = u32_at(buf, 0)?;
        // Each pair needs 8 bytes of lengths and 2 NUL bytes: bounds the count by the buffer.
        if count > buf.len() / 10 {
            return None;
        }
        let data = 4usize.checked_add(count.checked_mul(8)?)?;
        Some(Walk {
            buf,
            count,
            malformed: false,
            i: 0,
            data,
        })
    }

    /// The next pair; `None` if the buffer is malformed there.
    #[inline]
    fn pair(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let buf = self.buf;
        let name_len = u32_at(buf, 4 + self.i * 8)?;
        let value_len = u32_at(buf, 8 + self.i * 8)?;
        let mut data = self.data;
        let name = buf.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?;
        if buf.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        let value = buf.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?;
        if buf.get(data) != Some(&0) {
            return None;
        }
        self.data = data + 1;
        Some((name, value))
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.count {
            return None;
        }
        let pair = self.pair();
        if pair.is_some() {
            self.i += 1;
        } else {
            self.malformed = true;
            self.i = self.count;
        }
        pair
    }
}

impl<'a> HeaderPairs<'a> {
    /// Parses the wire format; `None` if the buffer is malformed (truncated, lengths past the
    /// end, missing NUL terminators). An empty buffer is an empty map.
    pub fn parse(buf: &'a [u8]) -> Option<HeaderPairs<'a>> {
        let mut walk = Walk::new(buf)?;
        let mut pairs = Vec::with_capacity(walk.count);
        pairs.extend(&mut walk);
        (!walk.malformed).then_some(HeaderPairs { pairs })
    }

    /// The first value of header `name` in the wire format `buf`, without building the map
    /// (no allocation): for a lookup or two. `None` when absent, or when the buffer is
    /// malformed before the header is found.
    pub fn lookup(buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        // A header found before any malformed part is found; past one, the walk has ended.
        Walk::new(buf)?
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first value of a header (names as Envoy keeps them: lower-case).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| *v)
    }

    /// Every value of a header, in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.pairs
            .iter()
            .filter(move |(n, _)| *n == name.as_bytes())
            .map(|(_, v)| *v)
    }

    /// How many fields of a header there are.
    pub fn count(&self, name: &str) -> usize {
        self.all(name).count()
    }

    /// The first value as UTF-8 text; `None` when absent or not UTF-8.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True if there are no header fields.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Serializes pairs in the wire format (for tests and tools).
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_finds_headers() {
        let buf = serialize(&[
            (":method", b"POST"),
            ("authorization", b"Bearer x"),
            ("x-bin", &[0xff, 0x00, 0x01]),
            ("empty", b""),
        ]);
        let h = HeaderPairs::parse(&buf).unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h.text(":method"), Some("POST"));
        assert_eq!(h.get("x-bin"), Some(&[0xff, 0x00, 0x01][..]));
        assert_eq!(h.text("x-bin"), None, "not UTF-8");
        assert_eq!(h.get("empty"), Some(&b""[..]));
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.count("x-bin"), 1);
        assert_eq!(h.count("missing"), 0);
        let twice = serialize(&[("k", b"1"), ("a", b"x"), ("k", b"2")]);
        let t = HeaderPairs::parse(&twice).unwrap();
        assert_eq!(t.all("k").collect::<Vec<_>>(), [&b"1"[..], b"2"]);
        assert_eq!(t.count("k"), 2);
        assert!(HeaderPairs::parse(&[]).unwrap().is_empty());
        for name in [":method", "authorization", "x-bin", "empty", "missing", ""] {
            assert_eq!(HeaderPairs::lookup(&buf, name), h.get(name), "{name}");
        }
        assert_eq!(HeaderPairs::lookup(&[], ":method"), None);
    }

    #[test]
    fn malformed_buffers_are_refused() {
        let good = serialize(&[("a", b"b"), ("c", b"d")]);
        for cut in 1..good.len() {
            assert!(HeaderPairs::parse(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(HeaderPairs::parse(&no_nul).is_none());
        assert!(HeaderPairs::parse(&u32::MAX.to_le_bytes()).is_none());
        let mut huge_len = serialize(&[("a", b"b")]);
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderPairs::parse(&huge_len).is_none());
        // The allocation-free lookup refuses the same buffers before it reaches the header.
        for cut in 1..good.len() {
            assert_eq!(HeaderPairs::lookup(&good[..cut], "c"), None, "cut at {cut}");
        }
        assert_eq!(HeaderPairs::lookup(&no_nul, "c"), None);
        assert_eq!(HeaderPairs::lookup(&huge_len, "a"), None);
        assert_eq!(HeaderPairs::lookup(&u32::MAX.to_le_bytes(), "a"), None);
    }
}
