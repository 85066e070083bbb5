//! Helpers shared by the unit tests (compiled only for `cargo test`).

/// A xorshift64 generator from `seed` (non-zero): the same sequence on every run, so a
/// generated case that fails can be found again.
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// One of `items` (non-empty), chosen by `next`.
pub(crate) fn pick<'a>(next: &mut impl FnMut() -> u64, items: &[&'a str]) -> &'a str {
    items[(next() % items.len() as u64) as usize]
}
