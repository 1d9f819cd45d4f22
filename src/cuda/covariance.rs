//! Launcher for the covariance assembly (kernels/covariance.cu): `covariance_diag_fwd_f32`,
//! `covariance_lowrank_fwd_f32` and `covariance_full_fwd_f32`. CPU twin:
//! `crate::ops::covariance::covariance_cpu`.

use cudarc::driver::{CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};
use crate::ops::covariance::{CovParam, DIM};

/// Entries of Σ per sample.
const NN: usize = DIM * DIM;
/// Joints per sample (`u` has one value per joint).
const JOINTS: usize = DIM / 3;
/// Threads per block of each kernel: must match `COV_DIAG_THREADS`, `COV_LR_THREADS` and
/// `COV_FULL_THREADS` in kernels/covariance.cu. The lowrank and full kernels depend on their
/// exact value (the 16×16 thread tile; the 16-warp column schedule).
const DIAG_THREADS: u32 = 256;
const LOWRANK_THREADS: u32 = 256;
const FULL_THREADS: u32 = 512;

/// The kernel for `param`.
fn kernel_name(param: CovParam) -> &'static str {
    match param {
        CovParam::Diag => "covariance_diag_fwd_f32",
        CovParam::LowRank => "covariance_lowrank_fwd_f32",
        CovParam::Full => "covariance_full_fwd_f32",
    }
}

/// The launch layout for `b >= 1` samples on a device with `num_sms` multiprocessors. Every
/// kernel grid-strides, so capping the grid only bounds the number of blocks:
/// - diag: one thread per output element, 256 per block, at most 16 blocks per SM;
/// - lowrank: one 256-thread block per sample, at most 8 blocks per SM (the thread limit);
/// - full: one 512-thread block per sample, at most 4 blocks per SM (48 KiB of shared memory
///   and 512 threads each).
fn launch_config(param: CovParam, b: usize, num_sms: usize) -> LaunchConfig {
    let num_sms = num_sms.max(1);
    let (threads, blocks, per_sm) = match param {
        CovParam::Diag => (
            DIAG_THREADS,
            (b.saturating_mul(NN)).div_ceil(DIAG_THREADS as usize),
            16,
        ),
        CovParam::LowRank => (LOWRANK_THREADS, b, 8),
        CovParam::Full => (FULL_THREADS, b, 4),
    };
    let cap = num_sms.saturating_mul(per_sm).min(i32::MAX as usize);
    LaunchConfig {
        grid_dim: (blocks.clamp(1, cap) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Covariance Σ `[b, 63, 63]` and per-joint uncertainty `u_j = Σ_c Σ_{3j+c,3j+c}` `[b, 21]`
    /// from an uncertainty readout `raw` `[b, param.raw_len()]` (SPEC §6):
    /// - `Diag`: `Σ = diag(e^s)`;
    /// - `LowRank`: `Σ = W·diag(e^s)·Wᵀ`, `w` = W `[63, 63]` is required;
    /// - `Full`: `Σ = (L·Lᵀ)⁻¹` from `raw = (d, o)`, computed in fp64 and rounded once.
    ///
    /// `w` is not read for `Diag` and `Full` (as in the CPU twin). Σ is exactly symmetric.
    /// Queued on the stream.
    pub fn covariance_fwd(
        &self,
        param: CovParam,
        raw: &CudaView<'_, f32>,
        w: Option<&CudaView<'_, f32>>,
        cov: &mut CudaViewMut<'_, f32>,
        joint_unc: &mut CudaViewMut<'_, f32>,
        b: usize,
    ) -> Result<()> {
        let too_large =
            || Error::Input(format!("covariance: batch {b} is too large for the kernel"));
        if b > i32::MAX as usize {
            return Err(too_large());
        }
        let n_raw = b.checked_mul(param.raw_len()).ok_or_else(too_large)?;
        let n_cov = b.checked_mul(NN).ok_or_else(too_large)?;
        let n_unc = b * JOINTS; // <= n_cov
        for (what, len, want) in [
            ("raw", raw.len(), n_raw),
            ("cov", cov.len(), n_cov),
            ("joint_unc", joint_unc.len(), n_unc),
        ] {
            if len != want {
                return crate::input_err!(
                    "covariance ({param:?}): {what} holds {len} floats but b = {b} needs {want}"
                );
            }
        }
        let w = match (param, w) {
            (CovParam::LowRank, None) => {
                return crate::input_err!(
                    "covariance (LowRank): the linear layer W [63, 63] is required"
                )
            }
            (CovParam::LowRank, Some(w)) => {
                if w.len() != NN {
                    return crate::input_err!(
                        "covariance (LowRank): W holds {} floats but [63, 63] needs {NN}",
                        w.len()
                    );
                }
                Some(w)
            }
            _ => None,
        };
        let mut contexts = vec![
            ("raw", raw.stream().context()),
            ("cov", cov.stream().context()),
            ("joint_unc", joint_unc.stream().context()),
        ];
        if let Some(w) = w {
            contexts.push(("W", w.stream().context()));
        }
        for (what, ctx) in contexts {
            if **ctx != *self.ctx {
                return crate::input_err!(
                    "covariance: {what} lives on another CUDA device than this backend"
                );
            }
        }
        if b == 0 {
            return Ok(());
        }

        let name = kernel_name(param);
        let func = self.function("covariance", name)?;
        let cfg = launch_config(param, b, self.num_sms);
        let b_i = b as i32;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(raw);
        if let Some(w) = w {
            launch.arg(w);
        }
        launch.arg(cov).arg(joint_unc).arg(&b_i);
        // SAFETY: the arguments match the kernel's signature in order — (const float* s|raw,
        // [const float* w,] float* cov, float* unc, int b) — and the lengths were checked above:
        // the kernel touches raw[0..b·raw_len], w[0..3969], cov[0..b·3969] and unc[0..b·21]
        // only, with the block size the launch config gives (which the kernel's tiling assumes).
        // `cov` and `joint_unc` are borrowed mutably, so they cannot alias each other or the
        // inputs (the kernels use __restrict__).
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {name} (b = {b})")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! CPU checks of the kernels' index arithmetic and algorithms (no GPU needed): the launch
    //! layouts, the thread → entry maps, and host emulations of the lowrank and full kernels'
    //! loops against the f64 twin.
    use super::*;
    use crate::ops::covariance::{covariance_cpu, TRIL};
    use crate::tensor::rel_err;

    #[test]
    fn launch_configs_meet_the_kernel_requirements() {
        for num_sms in [1, 16, 132] {
            for b in [1usize, 2, 7, 64, 1100, 1 << 20, i32::MAX as usize] {
                for (param, threads) in [
                    (CovParam::Diag, DIAG_THREADS),
                    (CovParam::LowRank, LOWRANK_THREADS),
                    (CovParam::Full, FULL_THREADS),
                ] {
                    let c = launch_config(param, b, num_sms);
                    assert_eq!(c.block_dim, (threads, 1, 1), "{param:?} b={b}");
                    assert_eq!((c.grid_dim.1, c.grid_dim.2), (1, 1));
                    assert!(c.grid_dim.0 >= 1 && c.grid_dim.0 <= i32::MAX as u32);
                    assert_eq!(c.shared_mem_bytes, 0);
                    if param != CovParam::Diag {
                        // never more blocks than samples (a block with no sample would idle)
                        assert!(c.grid_dim.0 as usize <= b);
                    }
                }
            }
        }
    }

    /// lowrank: the 256 threads' 4×4 tiles (tj + 16a, tk + 16c) cover the padded 64×64 square
    /// exactly once, so every entry of Σ is written by exactly one thread; and the conflict-free
    /// claim of the header: per warp and d, the V[tk + 16c] reads hit 16 distinct banks.
    #[test]
    fn lowrank_tiles_cover_sigma_once() {
        let mut hits = vec![0u32; 64 * 64];
        for t in 0..LOWRANK_THREADS as usize {
            let (tj, tk) = (t >> 4, t & 15);
            for a in 0..4 {
                for c in 0..4 {
                    hits[(tj + 16 * a) * 64 + tk + 16 * c] += 1;
                }
            }
        }
        assert!(hits.iter().all(|&h| h == 1));
        for d in 0..DIM {
            for c in 0..4 {
                let mut banks: Vec<usize> =
                    (0..16).map(|tk| ((tk + 16 * c) * 65 + d) % 32).collect();
                banks.sort();
                banks.dedup();
                assert_eq!(banks.len(), 16);
            }
        }
    }

    /// Mirror of the column schedule in `covariance_full_fwd_f32`: warp `warp`'s `r`-th column
    /// (increasing in `r`; the warp stops at the first one >= 63).
    fn full_column(warp: usize, r: usize) -> usize {
        if r & 1 == 1 {
            16 * r + 15 - warp
        } else {
            16 * r + warp
        }
    }

    /// full: the zig-zag schedule gives every column to exactly one of the 16 warps and every
    /// warp the same number of substitution steps (Σ (63 − j) over its columns).
    #[test]
    fn full_column_schedule_is_a_balanced_partition() {
        let warps = FULL_THREADS as usize / 32;
        let mut owner = vec![usize::MAX; DIM];
        for warp in 0..warps {
            let mut steps = 0;
            for r in 0.. {
                let j = full_column(warp, r);
                if j >= DIM {
                    break;
                }
                assert_eq!(owner[j], usize::MAX, "column {j} twice");
                owner[j] = warp;
                steps += DIM - j;
            }
            assert_eq!(steps, 126, "warp {warp}");
        }
        assert!(owner.iter().all(|&w| w < warps));
    }

    /// Mirror of `cov_tri_row` in kernels/covariance.cu (f32 square root, correctly rounded on
    /// both sides).
    fn tri_row(p: i32) -> i32 {
        let mut a = ((8.0f32 * p as f32 + 1.0).sqrt() - 1.0) * 0.5;
        a = a.trunc();
        let mut a = a as i32;
        while a * (a + 1) / 2 > p {
            a -= 1;
        }
        while (a + 1) * (a + 2) / 2 <= p {
            a += 1;
        }
        a
    }

    #[test]
    fn packed_triangle_index_inverts_exactly() {
        let mut p = 0;
        for a in 0..DIM as i32 {
            for b in 0..=a {
                assert_eq!(tri_row(p), a, "p = {p}");
                assert_eq!(p - a * (a + 1) / 2, b);
                // the raw estimate is already exact or off by one
                let est = (((8.0f32 * p as f32 + 1.0).sqrt() - 1.0) * 0.5) as i32;
                assert!((est - a).abs() <= 1);
                p += 1;
            }
        }
        assert_eq!(p as usize, DIM * (DIM + 1) / 2);
        // packed strictly-lower index of L used by the kernel and by the twin's fill order
        let mut k = 0;
        for r in 0..DIM {
            for c in 0..r {
                assert_eq!(r * (r.max(1) - 1) / 2 + c, k);
                k += 1;
            }
        }
        assert_eq!(k, TRIL);
    }

    /// SplitMix64 + Box–Muller: deterministic inputs for the emulations.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// Host emulation of `covariance_lowrank_fwd_f32` for one sample: the same fp32 operations
    /// in the same order (V = W·e^{s/2}, fma chain over d, padded tiles, u from the diagonal).
    #[allow(clippy::needless_range_loop)] // index loops, as in the kernel
    fn emulate_lowrank(s: &[f32], w: &[f32], cov: &mut [f32], unc: &mut [f32]) {
        let h: Vec<f32> = s.iter().map(|&x| (0.5f32 * x).exp()).collect();
        let mut v = vec![f32::NAN; 64 * 65];
        for i in 0..64 * DIM {
            let (j, d) = (i / DIM, i % DIM);
            v[j * 65 + d] = if j < DIM { w[i] * h[d] } else { 0.0 };
        }
        for t in 0..LOWRANK_THREADS as usize {
            let (tj, tk) = (t >> 4, t & 15);
            let mut acc = [[0f32; 4]; 4];
            for d in 0..DIM {
                for (a, row) in acc.iter_mut().enumerate() {
                    for (c, e) in row.iter_mut().enumerate() {
                        *e = v[(tj + 16 * a) * 65 + d].mul_add(v[(tk + 16 * c) * 65 + d], *e);
                    }
                }
            }
            for (a, row) in acc.iter().enumerate() {
                for (c, &e) in row.iter().enumerate() {
                    let (j, k) = (tj + 16 * a, tk + 16 * c);
                    if j < DIM && k < DIM {
                        cov[j * DIM + k] = e;
                    }
                }
            }
        }
        for (t, u) in unc.iter_mut().enumerate() {
            let p = 3 * t * (DIM + 1);
            *u = (cov[p] + cov[p + DIM + 1]) + cov[p + 2 * (DIM + 1)];
        }
    }

    /// Host emulation of `covariance_full_fwd_f32` for one sample: packed L, reciprocal
    /// diagonal, right-looking column substitution with the warp schedule (lane = row % 32),
    /// then Mᵀ·M over the packed lower triangle, rounded once and mirrored.
    #[allow(clippy::needless_range_loop)] // index loops, as in the kernel
    fn emulate_full(raw: &[f32], cov: &mut [f32], unc: &mut [f32]) {
        let lp = &raw[DIM..];
        let rdiag: Vec<f64> = raw[..DIM]
            .iter()
            .map(|&d| 1.0 / (-(d as f64)).exp())
            .collect();
        let mut m = vec![f64::NAN; NN]; // upper triangle stays NaN: it must never be read
        let warps = FULL_THREADS as usize / 32;
        for warp in 0..warps {
            for r in 0.. {
                let j = full_column(warp, r);
                if j >= DIM {
                    break;
                }
                let mut acc = [[0f64; 32]; 2]; // [slot][lane]
                for k in j..DIM {
                    let lane_k = k & 31;
                    let a = if k < 32 {
                        acc[0][lane_k]
                    } else {
                        acc[1][lane_k]
                    };
                    let mk = ((if k == j { 1.0 } else { 0.0 }) - a) * rdiag[k];
                    m[k * DIM + j] = mk;
                    for lane in 0..32 {
                        let (i0, i1) = (lane, lane + 32);
                        if i0 > k {
                            acc[0][lane] =
                                (lp[i0 * (i0 - 1) / 2 + k] as f64).mul_add(mk, acc[0][lane]);
                        }
                        if i1 > k && i1 < DIM {
                            acc[1][lane] =
                                (lp[i1 * (i1 - 1) / 2 + k] as f64).mul_add(mk, acc[1][lane]);
                        }
                    }
                }
            }
        }
        let mut sdiag = [0f64; DIM];
        for p in 0..DIM * (DIM + 1) / 2 {
            let a = tri_row(p as i32) as usize;
            let bb = p - a * (a + 1) / 2;
            let mut acc = 0f64;
            for k in a..DIM {
                acc = m[k * DIM + a].mul_add(m[k * DIM + bb], acc);
            }
            cov[a * DIM + bb] = acc as f32;
            cov[bb * DIM + a] = acc as f32;
            if a == bb {
                sdiag[a] = acc;
            }
        }
        for (t, u) in unc.iter_mut().enumerate() {
            *u = ((sdiag[3 * t] + sdiag[3 * t + 1]) + sdiag[3 * t + 2]) as f32;
        }
    }

    fn assert_symmetric(cov: &[f32]) {
        for (n, c) in cov.chunks(NN).enumerate() {
            for a in 0..DIM {
                for b in 0..a {
                    assert_eq!(
                        c[a * DIM + b].to_bits(),
                        c[b * DIM + a].to_bits(),
                        "sample {n} ({a},{b})"
                    );
                }
            }
        }
    }

    #[test]
    fn lowrank_emulation_matches_the_twin() {
        let mut rng = Rng(0x10f_a4c);
        let b = 3;
        let s: Vec<f32> = (0..b * DIM).map(|_| (rng.normal() - 6.0) as f32).collect();
        let lim = 1.0 / (DIM as f64).sqrt();
        let w: Vec<f32> = (0..NN)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * lim) as f32)
            .collect();
        let (mut want_c, mut want_u) = (vec![0f32; b * NN], vec![0f32; b * JOINTS]);
        covariance_cpu(CovParam::LowRank, &s, Some(&w), &mut want_c, &mut want_u);
        let (mut got_c, mut got_u) = (vec![f32::NAN; b * NN], vec![f32::NAN; b * JOINTS]);
        for n in 0..b {
            emulate_lowrank(
                &s[n * DIM..][..DIM],
                &w,
                &mut got_c[n * NN..][..NN],
                &mut got_u[n * JOINTS..][..JOINTS],
            );
        }
        assert_symmetric(&got_c);
        // fp32 kernel against the f64 twin: see tests/cuda_covariance.rs for the tolerance.
        let (ec, eu) = (rel_err(&got_c, &want_c), rel_err(&got_u, &want_u));
        assert!(ec <= 1e-5 && eu <= 1e-5, "cov {ec:e}, u {eu:e}");
    }

    #[test]
    fn full_emulation_matches_the_twin() {
        let mut rng = Rng(0xf011);
        let b = 3;
        let mut raw = Vec::with_capacity(b * (DIM + TRIL));
        for n in 0..b {
            let mean_d = if n == 0 { 0.0 } else { -3.0 };
            raw.extend((0..DIM).map(|_| (mean_d + 0.3 * rng.normal()) as f32));
            let off = 0.1 * f64::exp(-mean_d);
            raw.extend((0..TRIL).map(|_| (off * rng.normal()) as f32));
        }
        let (mut want_c, mut want_u) = (vec![0f32; b * NN], vec![0f32; b * JOINTS]);
        covariance_cpu(CovParam::Full, &raw, None, &mut want_c, &mut want_u);
        let (mut got_c, mut got_u) = (vec![f32::NAN; b * NN], vec![f32::NAN; b * JOINTS]);
        let rl = DIM + TRIL;
        for n in 0..b {
            emulate_full(
                &raw[n * rl..][..rl],
                &mut got_c[n * NN..][..NN],
                &mut got_u[n * JOINTS..][..JOINTS],
            );
        }
        assert_symmetric(&got_c);
        let (ec, eu) = (rel_err(&got_c, &want_c), rel_err(&got_u, &want_u));
        // both sides are f64 rounded once to f32: at most one f32 ulp apart (2^-23 ≈ 1.2e-7)
        assert!(ec <= 2.4e-7 && eu <= 2.4e-7, "cov {ec:e}, u {eu:e}");
    }
}
