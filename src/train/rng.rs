//! Counter-based random numbers: Philox-4x32-10 (Salmon et al., "Parallel random numbers: as
//! easy as 1, 2, 3", SC'11; the generator behind cuRAND's `curand_Philox4x32_10`).
//!
//! Every value is a pure function of (seed, stream, step, sample, index), so the numbers do not
//! depend on how the work is split over threads, on the batch order, or on the device: a CUDA
//! thread computing value `i` gets the same bits as the CPU loop here.
//!
//! Layout of one Philox call: key = (seed low 32 bits, seed high 32 bits); counter =
//! (block, sample, step low 32 bits, (step bits 32..56) << 8 | stream). Block `q` yields the
//! four 32-bit words `4q .. 4q+3` of the (seed, stream, step, sample) sequence, so one sequence
//! holds 2³⁴ words. Steps beyond 2⁵⁶ wrap (never reached: training runs ~3·10⁵ steps).
//!
//! Conversions: `uniform` = the word's top 24 bits · 2⁻²⁴ ∈ [0, 1) (exact in f32);
//! `uniform_f64` uses words 2i, 2i+1 (53 bits) ∈ [0, 1); `normal` is Box–Muller in f64 on the
//! word pair (2p, 2p+1): `r = √(−2 ln u₁)`, `u₁ = (w₀ + 1)·2⁻³² ∈ (0, 1]`, `θ = 2π·w₁·2⁻³²`,
//! normal 2p = r·cos θ and normal 2p+1 = r·sin θ, rounded once to f32. |normal| ≤ 6.67.

use rayon::prelude::*;

/// Streams: independent sequences for the different random decisions of training.
pub const STREAM_SAMPLE_NOISE: u8 = 1;
/// Drop-path keep/drop decisions.
pub const STREAM_DROP_PATH: u8 = 2;
/// Data augmentation (scale, rotation, flip, colour, crop).
pub const STREAM_AUGMENT: u8 = 3;
/// Order in which the data set is visited.
pub const STREAM_DATA_ORDER: u8 = 4;
/// Initialisation of fresh parameters (sample = the parameter's index in its module).
pub const STREAM_INIT: u8 = 5;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// One Philox-4x32-10 block: 10 rounds on `ctr` under `key` (Random123's reference algorithm).
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The random sequence of one (seed, stream, step, sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Philox {
    key: [u32; 2],
    /// Counter words 1..3 (word 0 is the block index).
    ctr: [u32; 3],
}

impl Philox {
    pub fn new(seed: u64, stream: u8, step: u64, sample: u32) -> Philox {
        Philox {
            key: [seed as u32, (seed >> 32) as u32],
            ctr: [
                sample,
                step as u32,
                (((step >> 32) as u32) << 8) | stream as u32,
            ],
        }
    }

    /// Block `q`: words `4q .. 4q+3`.
    pub fn block(&self, q: u32) -> [u32; 4] {
        philox4x32_10([q, self.ctr[0], self.ctr[1], self.ctr[2]], self.key)
    }

    /// Word `i` of the sequence (`i` < 2³⁴; higher bits of the block index wrap).
    pub fn word(&self, i: u64) -> u32 {
        self.block((i >> 2) as u32)[(i & 3) as usize]
    }

    /// Words `start ..` into `out`.
    pub fn fill_u32(&self, start: u64, out: &mut [u32]) {
        let mut i = start;
        let mut o = 0;
        while o < out.len() {
            let blk = self.block((i >> 2) as u32);
            let mut lane = (i & 3) as usize;
            while lane < 4 && o < out.len() {
                out[o] = blk[lane];
                o += 1;
                lane += 1;
                i += 1;
            }
        }
    }

    /// Uniform `i` in [0, 1) (24 bits, exact in f32).
    pub fn uniform(&self, i: u64) -> f32 {
        word_to_uniform(self.word(i))
    }

    /// Uniforms `0 .. out.len()` (uniform `i` is word `i`).
    pub fn fill_uniform(&self, out: &mut [f32]) {
        for (q, chunk) in out.chunks_mut(4).enumerate() {
            let blk = self.block(q as u32);
            for (o, &w) in chunk.iter_mut().zip(&blk) {
                *o = word_to_uniform(w);
            }
        }
    }

    /// Uniform `i` in [0, 1) with 53 bits, from words `2i`, `2i+1`.
    pub fn uniform_f64(&self, i: u64) -> f64 {
        let blk = self.block((i >> 1) as u32);
        let (a, b) = if i & 1 == 0 {
            (blk[0], blk[1])
        } else {
            (blk[2], blk[3])
        };
        let bits = ((a as u64) << 21) ^ ((b as u64) >> 11);
        (bits & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normals `0 .. out.len()` (normal `i` uses the word pair `2⌊i/2⌋, 2⌊i/2⌋+1`).
    pub fn fill_normal(&self, out: &mut [f32]) {
        for (q, chunk) in out.chunks_mut(4).enumerate() {
            let blk = self.block(q as u32);
            let (a0, a1) = box_muller(blk[0], blk[1]);
            let (b0, b1) = box_muller(blk[2], blk[3]);
            for (o, v) in chunk.iter_mut().zip([a0, a1, b0, b1]) {
                *o = v as f32;
            }
        }
    }

    /// Standard normal `i` of the sequence that [`Philox::fill_normal`] writes.
    pub fn normal(&self, i: u64) -> f32 {
        let blk = self.block((i >> 2) as u32);
        let (w0, w1) = if i & 2 == 0 {
            (blk[0], blk[1])
        } else {
            (blk[2], blk[3])
        };
        let (z0, z1) = box_muller(w0, w1);
        (if i & 1 == 0 { z0 } else { z1 }) as f32
    }
}

fn word_to_uniform(w: u32) -> f32 {
    (w >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

fn box_muller(w0: u32, w1: u32) -> (f64, f64) {
    const TWO_M32: f64 = 1.0 / 4_294_967_296.0;
    let u1 = (w0 as f64 + 1.0) * TWO_M32;
    let theta = std::f64::consts::TAU * (w1 as f64 * TWO_M32);
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = theta.sin_cos();
    (r * c, r * s)
}

/// `n` standard normals of (seed, stream, step, sample).
pub fn normals(seed: u64, stream: u8, step: u64, sample: u32, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Philox::new(seed, stream, step, sample).fill_normal(&mut v);
    v
}

/// `out` `[B, per_sample]`: row `b` holds the normals of sample `first_sample + b` (in parallel
/// over rows; the bits do not depend on the thread count). The `ours` sample noise ε of one
/// step is `fill_normals_batch(seed, STREAM_SAMPLE_NOISE, step, first, 25 · 63, eps)`.
pub fn fill_normals_batch(
    seed: u64,
    stream: u8,
    step: u64,
    first_sample: u32,
    per_sample: usize,
    out: &mut [f32],
) {
    if per_sample == 0 {
        return;
    }
    out.par_chunks_mut(per_sample)
        .enumerate()
        .for_each(|(b, row)| {
            let sample = first_sample.wrapping_add(b as u32);
            Philox::new(seed, stream, step, sample).fill_normal(row);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_random123_known_answers() {
        // Random123 tests/kat_vectors, philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn values_depend_only_on_their_coordinates() {
        let p = Philox::new(7, STREAM_SAMPLE_NOISE, 123, 5);
        let mut all = vec![0f32; 1001];
        p.fill_normal(&mut all);
        for (i, &v) in all.iter().enumerate() {
            assert_eq!(v.to_bits(), p.normal(i as u64).to_bits(), "normal {i}");
        }
        let mut u = vec![0f32; 37];
        p.fill_uniform(&mut u);
        let mut w = vec![0u32; 30];
        p.fill_u32(5, &mut w);
        for (i, &x) in u.iter().enumerate() {
            assert_eq!(x, p.uniform(i as u64));
        }
        for (i, &x) in w.iter().enumerate() {
            assert_eq!(x, p.word(5 + i as u64));
        }
        assert_eq!(normals(7, STREAM_SAMPLE_NOISE, 123, 5, 1001), all);

        // A batch filled in parallel equals the per-sample sequences.
        let per = 25 * 63;
        let mut eps = vec![0f32; 9 * per];
        fill_normals_batch(7, STREAM_SAMPLE_NOISE, 123, 3, per, &mut eps);
        for b in 0..9 {
            assert_eq!(
                &eps[b * per..(b + 1) * per],
                &normals(7, STREAM_SAMPLE_NOISE, 123, 3 + b as u32, per)[..]
            );
        }
        // Single-threaded pool: same bits.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        if let Ok(pool) = pool {
            let mut eps1 = vec![0f32; 9 * per];
            pool.install(|| fill_normals_batch(7, STREAM_SAMPLE_NOISE, 123, 3, per, &mut eps1));
            assert_eq!(eps, eps1);
        }
    }

    #[test]
    fn coordinates_give_different_sequences() {
        let base = normals(1, 1, 2, 3, 8);
        for other in [
            normals(2, 1, 2, 3, 8),
            normals(1, 2, 2, 3, 8),
            normals(1, 1, 3, 3, 8),
            normals(1, 1, 2, 4, 8),
            normals(1, 1, 2 + (1 << 32), 3, 8),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn moments_are_those_of_the_distributions() {
        let n = 200_000;
        let p = Philox::new(42, STREAM_AUGMENT, 0, 0);
        let mut z = vec![0f32; n];
        p.fill_normal(&mut z);
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt =
            z.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
        // Standard errors at n = 2·10⁵: mean 0.0022, variance 0.0032, kurtosis ≈ 0.011; the
        // bounds are ~5 standard errors.
        assert!(mean.abs() < 0.012, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
        let mut u = vec![0f32; n];
        p.fill_uniform(&mut u);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let um = u.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        // Standard error of the mean of U(0,1): 0.289/√n = 0.00065.
        assert!((um - 0.5).abs() < 0.0035, "uniform mean {um}");
        let uf: f64 = (0..n as u64).map(|i| p.uniform_f64(i)).sum::<f64>() / n as f64;
        assert!((uf - 0.5).abs() < 0.0035, "uniform_f64 mean {uf}");
    }
}
