//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
//! counter-based generator. Value i of stream s depends only on (seed, s, i), so CPU threads and CUDA
//! threads can each compute exactly the numbers they need, and the device reproduces the host bit for bit.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[derive(Clone, Copy, Debug)]
/// Counter-based random numbers: any (stream, index) is computed directly, so masks are the same on
/// every device and thread.
pub struct Philox {
    key: [u32; 2],
    stream: u64,
}

impl Philox {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { key: [seed as u32, (seed >> 32) as u32], stream: 0 }
    }

    /// An independent stream under the same seed (e.g. one per mask or per sample).
    pub fn stream(self, stream: u64) -> Self {
        Self { stream, ..self }
    }

    /// The raw 128-bit block for a counter (ctr words: index lo, index hi, stream lo, stream hi).
    pub fn block(&self, index: u64) -> [u32; 4] {
        philox4x32_10([index as u32, (index >> 32) as u32, self.stream as u32, (self.stream >> 32) as u32], self.key)
    }

    /// The i-th 32-bit word of the stream.
    pub fn word(&self, i: u64) -> u32 {
        self.block(i / 4)[(i % 4) as usize]
    }

    /// The i-th uniform in [0, 1), from the top 24 bits so every value is exact in f32.
    pub fn uniform(&self, i: u64) -> f32 {
        (self.word(i) >> 8) as f32 * (1.0 / 16_777_216.0)
    }
}

/// Philox4x32 with 10 rounds (Salmon et al. 2011), as cuRAND and the kernels compute it.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        let p0 = M0 as u64 * ctr[0] as u64;
        let p1 = M1 as u64 * ctr[2] as u64;
        ctr = [(p1 >> 32) as u32 ^ ctr[1] ^ key[0], p1 as u32, (p0 >> 32) as u32 ^ ctr[3] ^ key[1], p0 as u32];
    }
    ctr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_random123_known_answers() {
        // Known-answer vectors from Random123's kat_vectors for philox4x32 with 10 rounds.
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniforms_are_in_range_and_streams_differ() {
        let a = Philox::new(7);
        let b = a.stream(1);
        let mut mean = 0.0;
        for i in 0..10_000 {
            let u = a.uniform(i);
            assert!((0.0..1.0).contains(&u));
            mean += u as f64;
        }
        assert!((mean / 10_000.0 - 0.5).abs() < 0.01);
        assert_ne!(a.word(0), b.word(0));
    }
}
