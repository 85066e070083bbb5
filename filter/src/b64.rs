//! Base64 engines used across the filter: base64url without padding (fingerprints, challenge
//! ids, JWT and confirmation-token segments) and standard base64 (configured public keys).

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// base64url: encodes without padding, decodes with or without it.
pub const URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard base64 (RFC 4648 section 4), padding optional on decode.
pub const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes bytes as base64url without padding.
pub fn url(bytes: &[u8]) -> String {
    URL.encode(bytes)
}

/// Decodes base64url (padding optional); `None` on any invalid input.
pub fn decode_url(text: &str) -> Option<Vec<u8>> {
    URL.decode(text.as_bytes()).ok()
}
