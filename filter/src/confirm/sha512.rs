//! SHA-512 (FIPS 180-4) for Ed25519 verification, written small. The `sha2` crate's SHA-512,
//! built at opt-level 3 for SHA-256's sake (see the workspace Cargo.toml), was 11 KB of the
//! wasm module for a hash that only confirmation tokens need; this one is a plain loop.
//! It is a `digest::Digest` so that `ed25519_dalek::hazmat::raw_verify` can use it.

use digest::consts::U64;
use digest::{FixedOutput, HashMarker, Output, OutputSizeUser, Update};

#[rustfmt::skip]
const K: [u64; 80] = [
    0x428a_2f98_d728_ae22, 0x7137_4491_23ef_65cd, 0xb5c0_fbcf_ec4d_3b2f, 0xe9b5_dba5_8189_dbbc,
    0x3956_c25b_f348_b538, 0x59f1_11f1_b605_d019, 0x923f_82a4_af19_4f9b, 0xab1c_5ed5_da6d_8118,
    0xd807_aa98_a303_0242, 0x1283_5b01_4570_6fbe, 0x2431_85be_4ee4_b28c, 0x550c_7dc3_d5ff_b4e2,
    0x72be_5d74_f27b_896f, 0x80de_b1fe_3b16_96b1, 0x9bdc_06a7_25c7_1235, 0xc19b_f174_cf69_2694,
    0xe49b_69c1_9ef1_4ad2, 0xefbe_4786_384f_25e3, 0x0fc1_9dc6_8b8c_d5b5, 0x240c_a1cc_77ac_9c65,
    0x2de9_2c6f_592b_0275, 0x4a74_84aa_6ea6_e483, 0x5cb0_a9dc_bd41_fbd4, 0x76f9_88da_8311_53b5,
    0x983e_5152_ee66_dfab, 0xa831_c66d_2db4_3210, 0xb003_27c8_98fb_213f, 0xbf59_7fc7_beef_0ee4,
    0xc6e0_0bf3_3da8_8fc2, 0xd5a7_9147_930a_a725, 0x06ca_6351_e003_826f, 0x1429_2967_0a0e_6e70,
    0x27b7_0a85_46d2_2ffc, 0x2e1b_2138_5c26_c926, 0x4d2c_6dfc_5ac4_2aed, 0x5338_0d13_9d95_b3df,
    0x650a_7354_8baf_63de, 0x766a_0abb_3c77_b2a8, 0x81c2_c92e_47ed_aee6, 0x9272_2c85_1482_353b,
    0xa2bf_e8a1_4cf1_0364, 0xa81a_664b_bc42_3001, 0xc24b_8b70_d0f8_9791, 0xc76c_51a3_0654_be30,
    0xd192_e819_d6ef_5218, 0xd699_0624_5565_a910, 0xf40e_3585_5771_202a, 0x106a_a070_32bb_d1b8,
    0x19a4_c116_b8d2_d0c8, 0x1e37_6c08_5141_ab53, 0x2748_774c_df8e_eb99, 0x34b0_bcb5_e19b_48a8,
    0x391c_0cb3_c5c9_5a63, 0x4ed8_aa4a_e341_8acb, 0x5b9c_ca4f_7763_e373, 0x682e_6ff3_d6b2_b8a3,
    0x748f_82ee_5def_b2fc, 0x78a5_636f_4317_2f60, 0x84c8_7814_a1f0_ab72, 0x8cc7_0208_1a64_39ec,
    0x90be_fffa_2363_1e28, 0xa450_6ceb_de82_bde9, 0xbef9_a3f7_b2c6_7915, 0xc671_78f2_e372_532b,
    0xca27_3ece_ea26_619c, 0xd186_b8c7_21c0_c207, 0xeada_7dd6_cde0_eb1e, 0xf57d_4f7f_ee6e_d178,
    0x06f0_67aa_7217_6fba, 0x0a63_7dc5_a2c8_98a6, 0x113f_9804_bef9_0dae, 0x1b71_0b35_131c_471b,
    0x28db_77f5_2304_7d84, 0x32ca_ab7b_40c7_2493, 0x3c9e_be0a_15c9_bebc, 0x431d_67c4_9c10_0d4c,
    0x4cc5_d4be_cb3e_42b6, 0x597f_299c_fc65_7e2a, 0x5fcb_6fab_3ad6_faec, 0x6c44_198c_4a47_5817,
];

const H0: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

/// A SHA-512 computation.
#[derive(Clone)]
pub struct Sha512 {
    state: [u64; 8],
    /// The bytes of the block being filled.
    block: [u8; 128],
    /// How many bytes `block` holds.
    filled: usize,
    /// The message length so far, in bytes.
    length: u128,
}

impl Default for Sha512 {
    fn default() -> Sha512 {
        Sha512 {
            state: H0,
            block: [0; 128],
            filled: 0,
            length: 0,
        }
    }
}

fn compress(state: &mut [u64; 8], block: &[u8; 128]) {
    let mut w = [0u64; 80];
    for (wi, bytes) in w.iter_mut().zip(block.chunks_exact(8)) {
        *wi = u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]));
    }
    for t in 16..80 {
        let at = |i: usize| w.get(i).copied().unwrap_or(0);
        let (w15, w2) = (at(t - 15), at(t - 2));
        let s0 = w15.rotate_right(1) ^ w15.rotate_right(8) ^ (w15 >> 7);
        let s1 = w2.rotate_right(19) ^ w2.rotate_right(61) ^ (w2 >> 6);
        let v = at(t - 16)
            .wrapping_add(s0)
            .wrapping_add(at(t - 7))
            .wrapping_add(s1);
        if let Some(wt) = w.get_mut(t) {
            *wt = v;
        }
    }
    let mut v = *state;
    for (k, wt) in K.iter().zip(w.iter()) {
        let [a, b, c, d, e, f, g, h] = v;
        let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(*k)
            .wrapping_add(*wt);
        let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
    }
    for (s, x) in state.iter_mut().zip(v) {
        *s = s.wrapping_add(x);
    }
}

impl Update for Sha512 {
    fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u128);
        while !data.is_empty() {
            let free = self.block.get_mut(self.filled..).unwrap_or(&mut []);
            let n = free.len().min(data.len());
            let (now, rest) = data.split_at(n);
            free.get_mut(..n).unwrap_or(&mut []).copy_from_slice(now);
            self.filled += n;
            data = rest;
            if self.filled == 128 {
                compress(&mut self.state, &self.block);
                self.filled = 0;
            }
        }
    }
}

impl OutputSizeUser for Sha512 {
    type OutputSize = U64;
}

impl HashMarker for Sha512 {}

impl FixedOutput for Sha512 {
    fn finalize_into(mut self, out: &mut Output<Self>) {
        let bits = self.length.wrapping_mul(8);
        // The padding: 0x80, zeros, then the length in bits (16 bytes, big-endian) ending a block.
        let zeros = (128 + 112 - 1 - self.filled % 128) % 128;
        self.update(&[0x80]);
        for _ in 0..zeros {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        for (chunk, s) in out.chunks_exact_mut(8).zip(self.state) {
            chunk.copy_from_slice(&s.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use digest::Digest as _;

    #[test]
    fn agrees_with_the_sha2_crate() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in (0..300).chain([511, 512, 1000]) {
            let msg = &data[..len];
            let ours = Sha512::digest(msg);
            let theirs = sha2::Sha512::digest(msg);
            assert_eq!(ours.as_slice(), theirs.as_slice(), "length {len}");
            // Fed in pieces.
            let mut h = Sha512::new();
            for piece in msg.chunks(7) {
                Update::update(&mut h, piece);
            }
            assert_eq!(
                h.finalize().as_slice(),
                theirs.as_slice(),
                "length {len} in pieces"
            );
        }
    }
}
