//! Differential: the filter's base64 (`b64`) against the `base64` crate. Encoding agrees
//! byte for byte (base64url unpadded, standard padded); decoding accepts exactly what the
//! crate accepts with canonical padding or none at all (not `AA=`, which the crate's
//! "indifferent" mode would take) and non-zero trailing bits refused, with the same bytes.
#![no_main]

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, Engine as _};
use libfuzzer_sys::fuzz_target;
use retry_guard::b64;

const fn config(padding: DecodePaddingMode) -> GeneralPurposeConfig {
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(padding)
        .with_decode_allow_trailing_bits(false)
}
const URL: GeneralPurpose =
    GeneralPurpose::new(&alphabet::URL_SAFE, config(DecodePaddingMode::RequireNone));
const URL_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    config(DecodePaddingMode::RequireCanonical),
);
const STD: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, config(DecodePaddingMode::RequireNone));
const STD_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    config(DecodePaddingMode::RequireCanonical),
);

fuzz_target!(|data: &[u8]| {
    assert_eq!(b64::url(data), URL.encode(data));
    assert_eq!(b64::standard(data), STANDARD.encode(data));
    let mut appended = String::from("x.");
    b64::push_url(&mut appended, data);
    assert_eq!(appended, format!("x.{}", URL.encode(data)));
    // Round trips.
    assert_eq!(b64::decode_url(&b64::url(data)).as_deref(), Some(data));
    assert_eq!(
        b64::decode_standard(&b64::standard(data)).as_deref(),
        Some(data)
    );
    if let Ok(text) = std::str::from_utf8(data) {
        let padded = text.contains('=');
        let (url, std) = if padded {
            (URL_PADDED, STD_PADDED)
        } else {
            (URL, STD)
        };
        assert_eq!(b64::decode_url(text), url.decode(text).ok(), "url {text:?}");
        assert_eq!(
            b64::decode_standard(text),
            std.decode(text).ok(),
            "std {text:?}"
        );
    }
});
