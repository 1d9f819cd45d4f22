//! CPU mirror of `cn_body` (kernels/nll_bwd.cu): the kernel's phases, thread by thread, on the
//! race-checking shared memory of `emu`, checked against the CPU twin
//! `train::nll::nll_exact_lowrank`. Keep in step with the kernel.
// The mirror transcribes the kernel's index loops and comparisons as written in CUDA.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

use super::emu::{warp_sum_f64, Smem, Warps};

const DIM: usize = 63;
const LD: usize = 64;
const THREADS: usize = 256;
const TILES: usize = 136;

/// The kernel's outputs.
pub struct NllOut {
    pub loss: Vec<f64>,
    pub status: Vec<i32>,
    pub d_mu: Vec<f32>,
    pub d_s: Vec<f32>,
    /// `[grid, 63, 63]` per-block partial d_W.
    pub partial: Vec<f64>,
}

/// Runs the kernel's blocks `0..grid` over `b` samples (BWD = `bwd`).
#[allow(clippy::too_many_arguments)]
pub fn emulate_nll(
    mu: &[f32],
    s: &[f32],
    w: &[f32],
    gt: &[f32],
    jitter: f64,
    scale: f64,
    b: usize,
    grid: usize,
    bwd: bool,
) -> NllOut {
    let mut out = NllOut {
        loss: vec![f64::NAN; b],
        status: vec![-7; b],
        d_mu: vec![f32::NAN; b * DIM],
        d_s: vec![f32::NAN; b * DIM],
        partial: vec![f64::NAN; grid * DIM * DIM],
    };
    for blk in 0..grid {
        block(mu, s, w, gt, jitter, scale, b, grid, blk, bwd, &mut out);
    }
    out
}

/// The 4×4 Σ block of thread t < 136: t = J(J+1)/2 + K, K ≤ J (the kernel's decode).
fn tile_of(t: usize) -> (usize, usize) {
    let mut j = (((8.0f32 * t as f32 + 1.0).sqrt() - 1.0) * 0.5) as usize;
    while j * (j + 1) / 2 > t {
        j -= 1;
    }
    while (j + 1) * (j + 2) / 2 <= t {
        j += 1;
    }
    (j, t - j * (j + 1) / 2)
}

#[allow(clippy::too_many_arguments)]
fn block(
    mu: &[f32],
    s: &[f32],
    w: &[f32],
    gt: &[f32],
    jitter: f64,
    scale: f64,
    b: usize,
    grid: usize,
    blk: usize,
    bwd: bool,
    out: &mut NllOut,
) {
    let wp = Warps::new(THREADS);
    let mut a_s = Smem::new("As", DIM * LD, f64::NAN);
    let mut bm = Smem::new("Bm", DIM * LD, f64::NAN);
    let mut ev = Smem::new("ev", LD, f64::NAN);
    let mut hv = Smem::new("hv", LD, f64::NAN);
    let mut piv = Smem::new("piv", LD, f64::NAN);
    let mut rps = Smem::new("rps", LD, f64::NAN);
    let mut rl = Smem::new("rl", LD, f64::NAN);
    let mut red = Smem::new("red", 2 * 4 * LD, f64::NAN);
    let mut uv = Smem::new("uv", LD, f64::NAN);
    let mut logdet_s = Smem::new("logdet_s", 1, f64::NAN);
    let mut quad_s = Smem::new("quad_s", 1, f64::NAN);
    let mut fail_s = Smem::new("fail_s", 1, -1i32);
    macro_rules! barrier {
        () => {
            for m in [
                &mut a_s, &mut bm, &mut ev, &mut hv, &mut piv, &mut rps, &mut rl, &mut red, &mut uv,
            ] {
                m.barrier();
            }
            logdet_s.barrier();
            quad_s.barrier();
            fail_s.barrier();
        };
    }
    let ty = |t: usize| t >> 6;
    let col = |t: usize| t & 63;
    let pb = blk * DIM * DIM;
    if bwd {
        for t in 0..THREADS {
            if col(t) < DIM {
                let mut i = ty(t);
                while i < DIM {
                    out.partial[pb + i * DIM + col(t)] = 0.0;
                    i += 4;
                }
            }
        }
    }

    let mut n = blk;
    while n < b {
        let gn = &gt[n * 84..(n + 1) * 84];
        // 0.
        for t in 0..DIM {
            let sd = s[n * DIM + t] as f64;
            ev.wr(&wp, t, t, sd.exp());
            hv.wr(&wp, t, t, (0.5 * sd).exp());
        }
        let confident = (0..THREADS).all(|t| t >= 21 || gn[4 * t + 3] == 1.0);
        barrier!();
        if !confident {
            for t in 0..DIM {
                if bwd {
                    out.d_mu[n * DIM + t] = 0.0;
                    out.d_s[n * DIM + t] = 0.0;
                }
            }
            out.loss[n] = 0.0;
            out.status[n] = 0;
            n += grid;
            continue;
        }
        // 1. Vt.
        for t in 0..THREADS {
            let mut idx = t;
            while idx < DIM * LD {
                let (d, j) = (idx >> 6, idx & 63);
                let v = if j < DIM {
                    w[j * DIM + d] as f64 * hv.rd(&wp, t, d)
                } else {
                    0.0
                };
                bm.wr(&wp, t, idx, v);
                idx += THREADS;
            }
        }
        barrier!();
        // 2a. Σ.
        for t in 0..TILES {
            let (tj, tk) = tile_of(t);
            let mut acc = [[0f64; 4]; 4];
            for d in 0..DIM {
                let xa: Vec<f64> = (0..4).map(|a| bm.rd(&wp, t, d * LD + 4 * tj + a)).collect();
                let ya: Vec<f64> = (0..4).map(|e| bm.rd(&wp, t, d * LD + 4 * tk + e)).collect();
                for a in 0..4 {
                    for e in 0..4 {
                        acc[a][e] = xa[a].mul_add(ya[e], acc[a][e]);
                    }
                }
            }
            for a in 0..4 {
                let i = 4 * tj + a;
                for e in 0..4 {
                    let j = 4 * tk + e;
                    if i < DIM && j <= i {
                        a_s.wr(
                            &wp,
                            t,
                            j * LD + i,
                            acc[a][e] + if i == j { jitter } else { 0.0 },
                        );
                    }
                }
            }
        }
        barrier!();
        // 2b. B = [W | r].
        for t in 0..THREADS {
            let mut idx = t;
            while idx < DIM * LD {
                let (i, cc) = (idx >> 6, idx & 63);
                let v = if cc < DIM {
                    w[i * DIM + cc] as f64
                } else {
                    gn[4 * (i / 3) + i % 3] as f64 - mu[n * DIM + i] as f64
                };
                bm.wr(&wp, t, idx, v);
                idx += THREADS;
            }
        }
        fail_s.wr(&wp, 0, 0, 0);
        let a00 = a_s.rd(&wp, 0, 0);
        rps.wr(&wp, 0, 0, 1.0 / a00);
        barrier!();
        // 2c. Elimination.
        for k in 0..DIM {
            let mut failed = false;
            for t in 0..THREADS {
                let p = a_s.rd(&wp, t, k * LD + k);
                if !(p > 0.0) {
                    if t == 0 {
                        fail_s.wr(&wp, t, 0, k as i32 + 1);
                    }
                    failed = true;
                    continue;
                }
                let rp = rps.rd(&wp, t, k);
                let (ty, c) = (ty(t), col(t));
                if c > k && c < DIM {
                    let f = a_s.rd(&wp, t, k * LD + c) * rp;
                    let mut i = c + ty;
                    while i < DIM {
                        let v =
                            (-a_s.rd(&wp, t, k * LD + i)).mul_add(f, a_s.rd(&wp, t, c * LD + i));
                        a_s.wr(&wp, t, c * LD + i, v);
                        if i == k + 1 {
                            rps.wr(&wp, t, k + 1, 1.0 / v);
                        }
                        i += 4;
                    }
                }
                if bwd || c == DIM {
                    let g = bm.rd(&wp, t, k * LD + c) * rp;
                    let mut i = k + 1 + ty;
                    while i < DIM {
                        let v = (-a_s.rd(&wp, t, k * LD + i)).mul_add(g, bm.rd(&wp, t, i * LD + c));
                        bm.wr(&wp, t, i * LD + c, v);
                        i += 4;
                    }
                }
                if t == 0 {
                    piv.wr(&wp, t, k, p);
                }
            }
            if failed {
                break; // uniform: every thread read the same pivot
            }
            barrier!();
        }
        barrier!();
        let fail = (0..THREADS).map(|t| fail_s.rd(&wp, t, 0)).fold(0, i32::max);
        if fail != 0 {
            for t in 0..DIM {
                if bwd {
                    out.d_mu[n * DIM + t] = f32::NAN;
                    out.d_s[n * DIM + t] = f32::NAN;
                }
            }
            out.loss[n] = f64::NAN;
            out.status[n] = fail;
            barrier!();
            n += grid;
            continue;
        }
        // 2d.
        for t in 0..DIM {
            let v = 1.0 / piv.rd(&wp, t, t).sqrt();
            rl.wr(&wp, t, t, v);
        }
        barrier!();
        for t in 0..THREADS {
            let mut idx = t;
            while idx < DIM * LD {
                let (i, cc) = (idx >> 6, idx & 63);
                if bwd || cc == DIM {
                    let v = bm.rd(&wp, t, idx) * rl.rd(&wp, t, i);
                    bm.wr(&wp, t, idx, v);
                }
                if bwd && cc > i && cc < DIM {
                    let v = a_s.rd(&wp, t, idx) * rl.rd(&wp, t, i);
                    a_s.wr(&wp, t, idx, v);
                }
                idx += THREADS;
            }
        }
        barrier!();
        // 3.
        for t in 0..THREADS {
            let (ty, c) = (ty(t), col(t));
            if bwd || c == DIM {
                let (mut ns, mut us) = (0f64, 0f64);
                let mut i = ty;
                while i < DIM {
                    let v = bm.rd(&wp, t, i * LD + c);
                    ns = v.mul_add(v, ns);
                    us = bm.rd(&wp, t, i * LD + DIM).mul_add(v, us);
                    i += 4;
                }
                red.wr(&wp, t, ty * LD + c, ns);
                red.wr(&wp, t, 4 * LD + ty * LD + c, us);
            }
        }
        let mut lanes = [0f64; 32];
        for (lane, l) in lanes.iter_mut().enumerate() {
            let t = 128 + lane;
            *l = piv.rd(&wp, t, lane).ln();
            if lane + 32 < DIM {
                *l += piv.rd(&wp, t, lane + 32).ln();
            }
        }
        warp_sum_f64(&mut lanes);
        logdet_s.wr(&wp, 128, 0, lanes[0]);
        barrier!();
        for c in 0..LD {
            let t = c; // ty == 0
            if bwd || c == DIM {
                let sum = |red: &mut Smem<f64>, base: usize| {
                    ((red.rd(&wp, t, base + c) + red.rd(&wp, t, base + LD + c))
                        + red.rd(&wp, t, base + 2 * LD + c))
                        + red.rd(&wp, t, base + 3 * LD + c)
                };
                let nc = sum(&mut red, 0);
                let uc = sum(&mut red, 4 * LD);
                uv.wr(&wp, t, c, uc);
                if c == DIM {
                    quad_s.wr(&wp, t, 0, nc);
                }
                if bwd && c < DIM {
                    out.d_s[n * DIM + c] = (0.5 * scale * ev.rd(&wp, t, c) * (nc - uc * uc)) as f32;
                }
            }
        }
        barrier!();
        out.loss[n] = 0.5 * (logdet_s.rd(&wp, 0, 0) + quad_s.rd(&wp, 0, 0));
        out.status[n] = 0;
        if bwd {
            // 4. Back substitution.
            for k in (1..DIM).rev() {
                for t in 0..THREADS {
                    let (ty, c) = (ty(t), col(t));
                    let g = bm.rd(&wp, t, k * LD + c) * rl.rd(&wp, t, k);
                    let mut i = ty;
                    while i < k {
                        let v = (-a_s.rd(&wp, t, i * LD + k)).mul_add(g, bm.rd(&wp, t, i * LD + c));
                        bm.wr(&wp, t, i * LD + c, v);
                        i += 4;
                    }
                }
                barrier!();
            }
            for t in 0..THREADS {
                let (ty, c) = (ty(t), col(t));
                let mut i = ty;
                if c == DIM {
                    while i < DIM {
                        let a = bm.rd(&wp, t, i * LD + DIM) * rl.rd(&wp, t, i);
                        out.d_mu[n * DIM + i] = (-scale * a) as f32;
                        i += 4;
                    }
                } else {
                    let se = scale * ev.rd(&wp, t, c);
                    let u = uv.rd(&wp, t, c);
                    while i < DIM {
                        let alpha = bm.rd(&wp, t, i * LD + DIM) * rl.rd(&wp, t, i);
                        let pw = bm.rd(&wp, t, i * LD + c) * rl.rd(&wp, t, i);
                        let e = &mut out.partial[pb + i * DIM + c];
                        *e = se.mul_add(pw - alpha * u, *e);
                        i += 4;
                    }
                }
            }
        }
        barrier!();
        n += grid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::nll::nll_exact_lowrank;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The mirror, with more samples than blocks and unconfident samples, agrees with the f64
    /// twin: loss (f64 both sides, different factorisations: ~1e-12), gradients (rounded once to
    /// f32), d_W summed over the blocks' partials. No races, no reads of unwritten memory.
    #[test]
    fn nll_mirror_matches_the_cpu_twin() {
        let (b, grid) = (5usize, 2usize);
        let mut seed = 0x5eed;
        let mut gt = Vec::new();
        for n in 0..b {
            for j in 0..21 {
                for _ in 0..3 {
                    gt.push(0.15 * lcg(&mut seed));
                }
                gt.push(if n == 3 && j == 4 { 0.5 } else { 1.0 });
            }
        }
        let mu: Vec<f32> = (0..b * DIM)
            .map(|k| gt[(k / DIM) * 84 + 4 * ((k % DIM) / 3) + k % 3] + 0.03 * lcg(&mut seed))
            .collect();
        let s: Vec<f32> = (0..b * DIM).map(|_| -6.0 + 3.0 * lcg(&mut seed)).collect();
        let w: Vec<f32> = (0..DIM * DIM)
            .map(|_| lcg(&mut seed) / 63f32.sqrt())
            .collect();
        let (jitter, scale) = (1e-6, 0.37);

        let m = emulate_nll(&mu, &s, &w, &gt, jitter, scale, b, grid, true);
        let f = emulate_nll(&mu, &s, &w, &gt, jitter, scale, b, grid, false);
        let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (mu64, s64, w64, gt64) = (to64(&mu), to64(&s), to64(&w), to64(&gt));
        let (mut dm, mut ds, mut dw) =
            (vec![0.0; b * DIM], vec![0.0; b * DIM], vec![0.0; DIM * DIM]);
        let total = nll_exact_lowrank(
            &mu64,
            &s64,
            &w64,
            &gt64,
            jitter,
            scale,
            &mut dm,
            &mut ds,
            Some(&mut dw),
        )
        .unwrap();
        assert!(m.status.iter().all(|&v| v == 0), "{:?}", m.status);
        assert_eq!(m.loss[3], 0.0);
        let got: f64 = m.loss.iter().sum();
        assert!(
            (got - total).abs() < 1e-10 * total.abs(),
            "{got} vs {total}"
        );
        for (a, b) in f.loss.iter().zip(&m.loss) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "forward {a} vs backward {b}"
            );
        }
        let rel = |got: &[f64], want: &[f64]| {
            let den = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            got.iter()
                .zip(want)
                .fold(0f64, |a, (g, w)| a.max((g - w).abs()))
                / den
        };
        let dmu: Vec<f64> = m.d_mu.iter().map(|&v| v as f64).collect();
        let dsv: Vec<f64> = m.d_s.iter().map(|&v| v as f64).collect();
        let mut dw_sum = vec![0f64; DIM * DIM];
        for blk in 0..grid {
            for (acc, v) in dw_sum
                .iter_mut()
                .zip(&m.partial[blk * DIM * DIM..(blk + 1) * DIM * DIM])
            {
                *acc += v;
            }
        }
        // f32 rounding of d_mu, d_s (6e-8); d_W in f64 (different algorithm: ~1e-12).
        let errs = [rel(&dmu, &dm), rel(&dsv, &ds), rel(&dw_sum, &dw)];
        assert!(
            errs[0] < 1e-6 && errs[1] < 1e-6 && errs[2] < 1e-9,
            "{errs:?}"
        );
    }

    /// Σ = 0 (W = 0, no jitter) fails at pivot 0 without a race on the failure path.
    #[test]
    fn nll_mirror_failure_path() {
        let b = 2;
        let gt: Vec<f32> = (0..b * 84)
            .map(|k| if k % 4 == 3 { 1.0 } else { 0.1 })
            .collect();
        let m = emulate_nll(
            &vec![0.0; b * DIM],
            &vec![0.0; b * DIM],
            &vec![0.0; DIM * DIM],
            &gt,
            0.0,
            1.0,
            b,
            1,
            true,
        );
        assert_eq!(m.status, vec![1, 1]);
        assert!(m.loss.iter().all(|v| v.is_nan()));
        assert!(m.partial.iter().all(|&v| v == 0.0));
    }
}
