//! Host mirror of kernels/adamw.cu: the three kernels' block, chunk and thread loops (the
//! launcher's table and grid, the binary search, the tensor walk, the fp64 block trees, the
//! per-step scalars and the per-element update with IEEE f32 operations in the kernels' order),
//! every element visited exactly once per kernel, checked bit for bit against the CPU twin
//! `train::adamw::AdamW::update` over 10 steps. Keep in step with the kernels.
#![allow(clippy::needless_range_loop)]

use super::*;
use crate::model::backward::Grads;
use crate::train::adamw::{global_norm, AdamW, AdamWConfig};

/// Host copies of the tensors of one optimiser.
#[derive(Clone)]
struct Host {
    p: Vec<Vec<f32>>,
    g: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// bf16 working copies (bits), when the bf16-out kernel is mirrored.
    w: Option<Vec<Vec<u16>>>,
}

/// `adamw_find`.
fn find(offs: &[u64], n: usize, i: u64) -> usize {
    let (mut lo, mut hi) = (0usize, n - 1);
    while lo < hi {
        let mid = (lo + hi + 1) >> 1;
        if offs[mid] <= i {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// `adamw_walk` for thread `tid`: op(tensor, element).
fn walk(offs: &[u64], n: usize, c0: u64, c1: u64, tid: usize, mut op: impl FnMut(usize, usize)) {
    let mut t = find(offs, n, c0);
    let mut lo = c0;
    while lo < c1 {
        let base = offs[t];
        let end = offs[t + 1].min(c1);
        let mut i = lo + tid as u64;
        while i < end {
            op(t, (i - base) as usize);
            i += THREADS as u64;
        }
        lo = end;
        t += 1;
    }
}

/// `adamw_block_sum`: xor butterfly per warp, then the 8 warp sums in order.
fn block_sum(v: &[f64; THREADS]) -> f64 {
    let mut red = [0f64; THREADS / 32];
    for (w, r) in red.iter_mut().enumerate() {
        let mut lanes: [f64; 32] = std::array::from_fn(|l| v[w * 32 + l]);
        let mut off = 16;
        while off > 0 {
            let prev = lanes;
            for l in 0..32 {
                lanes[l] = prev[l] + prev[l ^ off];
            }
            off /= 2;
        }
        *r = lanes[0];
    }
    let mut s = red[0];
    for w in 1..THREADS / 32 {
        s += red[w];
    }
    s
}

/// `adamw_powi`.
fn powi(mut a: f32, mut k: i64) -> f32 {
    let mut r = 1.0f32;
    loop {
        if k & 1 != 0 {
            r *= a;
        }
        k >>= 1;
        if k == 0 {
            break;
        }
        a *= a;
    }
    r
}

/// The launch sequence of `adamw_step` on `blocks` blocks (any grid gives the same result).
fn emulate(
    h: &AdamWHyper,
    x: &mut Host,
    state: &mut [f64; STATE_LEN],
    skip_nonfinite: bool,
    blocks: usize,
) {
    let n = x.p.len();
    let lens: Vec<usize> = x.p.iter().map(Vec::len).collect();
    let zeros = vec![0u64; n];
    let table = build_table(&lens, [&zeros, &zeros, &zeros, &zeros, &zeros]).unwrap();
    let offs = &table[..n + 1];
    let total = table[n];
    let nchunks = (total as usize).div_ceil(CHUNK);

    // adamw_sumsq_f64
    let need_norm = h.clip_norm.is_some() || skip_nonfinite;
    let mut partial = vec![f64::NAN; nchunks.max(1)];
    let mut written = vec![false; nchunks.max(1)];
    let mut visits: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l]).collect();
    let mut nchunks_arg = 0;
    if need_norm && total > 0 {
        for bx in 0..blocks {
            let mut c = bx;
            while c < nchunks {
                let c0 = (c * CHUNK) as u64;
                let c1 = (c0 + CHUNK as u64).min(total);
                let mut acc = [0f64; THREADS];
                for tid in 0..THREADS {
                    walk(offs, n, c0, c1, tid, |t, e| {
                        visits[t][e] += 1;
                        let g = x.g[t][e] as f64;
                        acc[tid] = g.mul_add(g, acc[tid]);
                    });
                }
                assert!(!written[c], "partial {c} written twice");
                partial[c] = block_sum(&acc);
                written[c] = true;
                c += blocks;
            }
        }
        for v in &visits {
            assert!(
                v.iter().all(|&k| k == 1),
                "sumsq: an element visited 0 or 2+ times"
            );
        }
        nchunks_arg = nchunks;
    }

    // adamw_prepare_f64
    let mut acc = [0f64; THREADS];
    for tid in 0..THREADS {
        let mut i = tid;
        while i < nchunks_arg {
            assert!(written[i], "prepare reads an unwritten partial");
            acc[tid] += partial[i];
            i += THREADS;
        }
    }
    let sumsq = block_sum(&acc);
    state[STATE_SUMSQ] = sumsq;
    if skip_nonfinite && !sumsq.is_finite() {
        state[STATE_SKIP] = 1.0;
    } else {
        let t = state[STATE_STEP] as i64 + 1;
        let ti = t as i32;
        let bc1 = 1.0f32 - powi(h.beta1, ti as i64);
        let bc2 = 1.0f32 - powi(h.beta2, ti as i64);
        let mut clip = 1.0f32;
        if let Some(max) = h.clip_norm {
            let norm = sumsq.sqrt();
            if norm > max as f64 {
                clip = (max as f64 / (norm + 1e-6)) as f32;
            }
        }
        state[STATE_STEP] = t as f64;
        state[STATE_CLIP] = clip as f64;
        state[3] = (h.lr / bc1) as f64;
        state[4] = bc2.sqrt() as f64;
        state[STATE_SKIP] = 0.0;
    }

    // adamw_step_f32[_bf16out]
    if total == 0 || state[STATE_SKIP] != 0.0 {
        return;
    }
    let clip = state[STATE_CLIP] as f32;
    let step_size = state[3] as f32;
    let bc2_sqrt = state[4] as f32;
    let decay = 1.0f32 - h.lr * h.weight_decay;
    let omb1 = 1.0f32 - h.beta1;
    let omb2 = 1.0f32 - h.beta2;
    let mut visits: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l]).collect();
    for bx in 0..blocks {
        let mut c = bx;
        while c < nchunks {
            let c0 = (c * CHUNK) as u64;
            let c1 = (c0 + CHUNK as u64).min(total);
            for tid in 0..THREADS {
                walk(offs, n, c0, c1, tid, |t, e| {
                    visits[t][e] += 1;
                    let (mut p, mut m, mut v) = (x.p[t][e], x.m[t][e], x.v[t][e]);
                    let gi = x.g[t][e] * clip;
                    p *= decay;
                    m = m * h.beta1 + omb1 * gi;
                    v = v * h.beta2 + (omb2 * gi) * gi;
                    let denom = v.sqrt() / bc2_sqrt + h.eps;
                    p -= (step_size * m) / denom;
                    (x.p[t][e], x.m[t][e], x.v[t][e]) = (p, m, v);
                    if let Some(w) = x.w.as_mut() {
                        w[t][e] = half::bf16::from_f32(p).to_bits();
                    }
                });
            }
            c += blocks;
        }
    }
    for v in &visits {
        assert!(
            v.iter().all(|&k| k == 1),
            "step: an element visited 0 or 2+ times"
        );
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next()).collect()
    }
}

/// Tensor sizes: empty, single, odd, around the 16384-element chunk, several chunks in one
/// tensor, and chunks spanning several tensors.
const SIZES: [usize; 9] = [1, 0, 16383, 16385, 7, 40001, 3, 255, 2 * CHUNK];

fn names() -> Vec<String> {
    (0..SIZES.len()).map(|i| format!("t{i}")).collect()
}

/// 10 steps of the mirror (with `blocks` blocks) against `AdamW::update`, fresh gradients each
/// step (gradient magnitudes spread over ~6 decades). `nan_step`: a NaN in one gradient at that
/// step (the mirror skips it; the twin is not called for it). Returns the number of steps whose
/// clip factor was below 1.
fn run(h: AdamWHyper, bf16_out: bool, blocks: usize, nan_step: Option<usize>) -> usize {
    let mut rng = Rng(0xada3 + blocks as u64);
    let p0: Vec<Vec<f32>> = SIZES.iter().map(|&n| rng.vec(n, 0.5)).collect();
    let mut host = Host {
        p: p0.clone(),
        g: SIZES.iter().map(|&n| vec![0.0; n]).collect(),
        m: SIZES.iter().map(|&n| vec![0.0; n]).collect(),
        v: SIZES.iter().map(|&n| vec![0.0; n]).collect(),
        w: bf16_out.then(|| SIZES.iter().map(|&n| vec![0xffffu16; n]).collect()),
    };
    let mut cpu_p = p0;
    let mut opt = AdamW::new(AdamWConfig {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        clip_norm: h.clip_norm,
    });
    let mut state = initial_state(0);
    let mut clipped = 0;
    for step in 0..10 {
        let mut grads = Grads::default();
        for (i, name) in names().into_iter().enumerate() {
            let scale = 10f32.powi((i % 7) as i32 - 4);
            let mut g = rng.vec(SIZES[i], scale);
            if nan_step == Some(step) && i == 5 {
                g[123] = f32::NAN;
            }
            host.g[i] = g.clone();
            grads.put(&name, g);
        }
        let skip = nan_step.is_some();
        emulate(&h, &mut host, &mut state, skip, blocks);
        if nan_step == Some(step) {
            assert_eq!(state[STATE_SKIP], 1.0, "step {step}: not skipped");
            assert_eq!(
                state[STATE_STEP] as u64, opt.step,
                "a skipped step advanced the count"
            );
            continue;
        }
        assert_eq!(state[STATE_SKIP], 0.0);
        opt.update(
            names()
                .into_iter()
                .zip(cpu_p.iter_mut().map(|v| v.as_mut_slice())),
            &grads,
        );
        assert_eq!(state[STATE_STEP] as u64, opt.step);
        if h.clip_norm.is_some() || skip {
            // The same f64 sum in another order: the twin's sequential sum over ~1e5 squares
            // is within n·2⁻⁵³ ≈ 1e-11 of the exact one (it lands at ~2e-14 here; the chunked
            // trees are closer still).
            let n = global_norm(&grads);
            let rel = (state[STATE_SUMSQ].sqrt() - n).abs() / n;
            assert!(
                rel < 1e-11,
                "step {step}: norm {} vs {n}",
                state[STATE_SUMSQ].sqrt()
            );
        }
        if state[STATE_CLIP] < 1.0 {
            clipped += 1;
        }
        for (i, name) in names().iter().enumerate() {
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same(&host.p[i], &cpu_p[i]),
                "step {step}: {name} differs from the twin"
            );
            assert!(
                same(&host.m[i], &opt.exp_avg[name]),
                "step {step}: exp_avg of {name}"
            );
            assert!(
                same(&host.v[i], &opt.exp_avg_sq[name]),
                "step {step}: exp_avg_sq of {name}"
            );
            if let Some(w) = host.w.as_ref() {
                for (e, &bits) in w[i].iter().enumerate() {
                    assert_eq!(bits, half::bf16::from_f32(cpu_p[i][e]).to_bits());
                }
            }
        }
    }
    clipped
}

fn hyper(clip_norm: Option<f32>) -> AdamWHyper {
    AdamWHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
        clip_norm,
    }
}

#[test]
fn mirror_is_bit_identical_to_the_twin_without_clipping() {
    for blocks in [1, 3, 8] {
        assert_eq!(run(hyper(None), false, blocks, None), 0);
    }
    run(hyper(None), true, 2, None);
}

#[test]
fn mirror_matches_the_twin_with_clipping() {
    // max norm 1: the gradients' norm is ~10–60, every step clips.
    assert_eq!(run(hyper(Some(1.0)), true, 3, None), 10);
    // A max norm above the gradients' norm: never clips (factor exactly 1).
    assert_eq!(run(hyper(Some(1e6)), false, 1, None), 0);
}

#[test]
fn mirror_skips_a_step_with_a_nan_gradient() {
    run(hyper(None), false, 2, Some(4));
    run(hyper(Some(1.0)), true, 5, Some(0));
}

/// `adamw_powi` is Rust's `f32::powi` on this host, for the betas in use and others.
#[test]
fn powi_matches_rust() {
    let mut rng = Rng(3);
    let mut bases = vec![0.9f32, 0.999, 0.95, 0.98, 0.5, 1.0];
    bases.extend((0..20).map(|_| 0.5 + 0.5 * rng.next().abs()));
    for &b in &bases {
        for t in 1..20_000i32 {
            assert_eq!(powi(b, t as i64).to_bits(), b.powi(t).to_bits(), "{b}^{t}");
        }
    }
}

#[test]
fn tables_and_bad_lists() {
    let table = build_table(
        &[3, 0, 5],
        [
            &[1, 2, 3],
            &[4, 5, 6],
            &[7, 8, 9],
            &[10, 11, 12],
            &[0, 0, 0],
        ],
    )
    .unwrap();
    assert_eq!(&table[..4], &[0, 3, 3, 8]);
    assert_eq!(&table[4..7], &[1, 2, 3]);
    assert_eq!(table.len(), 4 + 15);
    // Every element of the index space has a tensor; empty tensors are skipped.
    let offs = &table[..4];
    assert_eq!(find(offs, 3, 0), 0);
    assert_eq!(find(offs, 3, 2), 0);
    assert_eq!(find(offs, 3, 3), 2);
    assert_eq!(find(offs, 3, 7), 2);
    assert!(matches!(
        build_table(&[usize::MAX, 2], [&[0, 0]; 5]),
        Err(Error::Input(_))
    ));
    assert_eq!(grid(0, 132), 1);
    assert_eq!(grid(5, 132), 5);
    assert_eq!(grid(1 << 20, 132), 8 * 132);
    let mut h = hyper(Some(f32::NAN));
    assert!(matches!(h.check(), Err(Error::Input(_))));
    h.clip_norm = None;
    h.lr = f32::INFINITY;
    assert!(matches!(h.check(), Err(Error::Input(_))));
}
