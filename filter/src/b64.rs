//! Base64 (RFC 4648) without a dependency: base64url without padding for fingerprints,
//! challenge ids, JWT and confirmation-token segments; standard base64 for configured public
//! keys. Decoding accepts padding or none, rejects any other byte and non-canonical trailing
//! bits, and never allocates more than the input length.

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Input bytes per stack block of [`encode_into`]: a multiple of 3, so only the last block
/// can need padding.
const BLOCK: usize = 48;

/// Appends the encoding of `bytes` to `out`, a block at a time through a stack buffer: no
/// allocation of its own, one copy into `out` per 64 characters.
fn encode_into(out: &mut String, bytes: &[u8], alphabet: &[u8; 64], pad: bool) {
    let sym = |i: u32| alphabet.get((i & 63) as usize).copied().unwrap_or(b'A');
    for block in bytes.chunks(BLOCK) {
        let mut buf = [0u8; BLOCK / 3 * 4];
        let mut n = 0;
        // Arrays, not slices: plain loads and stores (a slice's `copy_from_slice` stays a
        // call at the size levels).
        let (triples, rest) = block.as_chunks::<3>();
        let (quads, _) = buf.as_chunks_mut::<4>();
        for (&[a, b, c], dst) in triples.iter().zip(quads.iter_mut()) {
            let v = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
            *dst = [sym(v >> 18), sym(v >> 12), sym(v >> 6), sym(v)];
            n += 4;
        }
        if !rest.is_empty() {
            let byte = |i: usize| u32::from(rest.get(i).copied().unwrap_or(0));
            let v = (byte(0) << 16) | (byte(1) << 8);
            let third = if rest.len() == 2 {
                Some(sym(v >> 6))
            } else {
                pad.then_some(b'=')
            };
            let tail = [sym(v >> 18), sym(v >> 12)]
                .into_iter()
                .chain(third)
                .chain(pad.then_some(b'='));
            for (dst, b) in buf.iter_mut().skip(n).zip(tail) {
                *dst = b;
                n += 1;
            }
        }
        out.push_str(std::str::from_utf8(buf.get(..n).unwrap_or_default()).unwrap_or_default());
    }
}

fn encode(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    encode_into(&mut out, bytes, alphabet, pad);
    out
}

/// Appends `bytes` as base64url without padding to `out` (no allocation of its own).
pub fn push_url(out: &mut String, bytes: &[u8]) {
    encode_into(out, bytes, URL_ALPHABET, false);
}

fn value(c: u8, url: bool) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' if !url => 62,
        b'/' if !url => 63,
        b'-' if url => 62,
        b'_' if url => 63,
        _ => return None,
    }))
}

fn decode(text: &[u8], url: bool) -> Option<Vec<u8>> {
    let body = match text.iter().position(|&c| c == b'=') {
        Some(i) => {
            let (body, pad) = text.split_at(i);
            if pad.len() > 2 || pad.iter().any(|&c| c != b'=') || !text.len().is_multiple_of(4) {
                return None;
            }
            body
        }
        None => text,
    };
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c, url)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        let keep = chunk.len() * 6 / 8;
        // Non-canonical: bits beyond the last whole byte must be zero.
        let dropped = n & (0x00ff_ffff >> (8 * keep));
        if keep < 3 && dropped != 0 {
            return None;
        }
        out.extend_from_slice(bytes.get(1..1 + keep)?);
    }
    Some(out)
}

/// Encodes bytes as base64url without padding.
pub fn url(bytes: &[u8]) -> String {
    encode(bytes, URL_ALPHABET, false)
}

/// Decodes base64url (padding optional); `None` on any invalid input.
pub fn decode_url(text: &str) -> Option<Vec<u8>> {
    decode(text.as_bytes(), true)
}

/// Encodes bytes as standard base64 with padding.
pub fn standard(bytes: &[u8]) -> String {
    encode(bytes, STD, true)
}

/// Decodes standard base64 (padding optional); `None` on any invalid input.
pub fn decode_standard(text: &str) -> Option<Vec<u8>> {
    decode(text.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_round_trips_across_blocks() {
        // Lengths around and past the 48-byte stack block, every remainder mod 3.
        for n in 0..=150usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let std_text = standard(&bytes);
            assert_eq!(std_text.len(), n.div_ceil(3) * 4, "{n}");
            assert_eq!(decode_standard(&std_text).unwrap(), bytes, "{n}");
            let url_text = url(&bytes);
            assert_eq!(url_text.len(), (n * 4).div_ceil(3), "{n}");
            assert_eq!(decode_url(&url_text).unwrap(), bytes, "{n}");
            assert_eq!(
                url_text,
                std_text
                    .trim_end_matches('=')
                    .replace('+', "-")
                    .replace('/', "_")
            );
            let mut appended = String::from("x");
            push_url(&mut appended, &bytes);
            assert_eq!(appended, format!("x{url_text}"));
        }
    }

    #[test]
    fn rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(standard(plain.as_bytes()), enc);
            assert_eq!(decode_standard(enc).unwrap(), plain.as_bytes());
            assert_eq!(
                decode_standard(enc.trim_end_matches('=')).unwrap(),
                plain.as_bytes()
            );
            assert_eq!(url(plain.as_bytes()), enc.trim_end_matches('='));
        }
        assert_eq!(url(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode_url("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "Z", "Zg=", "Zg===", "Z===", "Zm9v!", "Zh", "Zm9vYg=x", "=Zm9",
        ] {
            assert!(decode_standard(bad).is_none(), "{bad}");
        }
        assert!(decode_url("+/").is_none());
        assert!(decode_standard("-_").is_none());
    }

    #[test]
    fn round_trips_all_lengths() {
        let data: Vec<u8> = (0..=255).collect();
        for n in 0..64 {
            assert_eq!(decode_url(&url(&data[..n])).unwrap(), &data[..n]);
            assert_eq!(
                decode_standard(&standard(&data[n..n + 40])).unwrap(),
                &data[n..n + 40]
            );
        }
    }
}
