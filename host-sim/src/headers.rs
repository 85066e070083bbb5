//! An ordered header map with Envoy's behaviour: names are lower-cased on every access, several
//! values per name are kept in order, `get` returns the first one.

/// Header names and values in insertion order (pseudo-headers first, as Envoy keeps them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, Vec<u8>)>,
}

fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    /// A map from pairs (names lower-cased).
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.add(k.as_ref(), v.as_ref());
        }
        m
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let name = lower(name);
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as text (lossy).
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Appends a value (Envoy `addCopy`). Pseudo-headers go before regular headers.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let name = lower(name);
        if name.starts_with(':') {
            let at = self
                .entries
                .iter()
                .position(|(k, _)| !k.starts_with(':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(at, (name, value.to_vec()));
        } else {
            self.entries.push((name, value.to_vec()));
        }
    }

    /// Replaces every value of `name` with one value, or adds it (Envoy `setCopy`).
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        let key = lower(name);
        if let Some(pos) = self.entries.iter().position(|(k, _)| *k == key) {
            self.entries[pos].1 = value.to_vec();
            let mut i = pos + 1;
            while i < self.entries.len() {
                if self.entries[i].0 == key {
                    self.entries.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.add(name, value);
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        let key = lower(name);
        self.entries.retain(|(k, _)| *k != key);
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Every entry in order.
    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Envoy's `byteSize()`: the sum of name and value lengths (what `proxy_get_header_map_size`
    /// returns).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Entries as text pairs (lossy), for traces and reports.
    pub fn text_pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_pseudo_headers_first() {
        let mut m = HeaderMap::new();
        m.add(b"X-A", b"1");
        m.add(b":status", b"200");
        m.add(b"x-a", b"2");
        assert_eq!(m.pairs()[0].0, ":status");
        assert_eq!(m.get(b"X-a"), Some(&b"1"[..]));
        m.replace(b"x-A", b"3");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(b"x-a"), Some(&b"3"[..]));
        m.remove(b"X-A");
        assert_eq!(m.get(b"x-a"), None);
        assert_eq!(m.byte_size(), ":status".len() + 3);
    }
}
