//! CPU mirror of kernels/mano_bwd.cu: the three kernels' loops block by block and thread by
//! thread, with the same index arithmetic and expression order (`mul_add` where the kernels call
//! `fmaf`), shared memory through the race-checking [`Smem`] of `emu`, global outputs poisoned
//! with NaN and every write counted (each element exactly once), and every read of a scratch
//! buffer checked to hit a written element. Checked against the CPU twin
//! `ops::mano::mano_bwd_cpu`. Keep in step with the kernels.
// The mirror transcribes the kernels' index loops as written in CUDA.
#![allow(clippy::needless_range_loop)]

use super::emu::{Smem, Warps};
use super::mano::{
    chain_config, chunks, partial_row, skin_config, BCOLS, CHAIN_THREADS, D_PER_SAMPLE,
    SKIN_THREADS, TILE,
};
use crate::cuda::mano::ManoPacked;
use crate::ops::mano::{ManoData, NUM_JOINTS, POSE_FEATURES};

// The int32 index buffer (MANO_IDX_* in the kernels).
const IDX_PARENTS: usize = 0;
const IDX_TIPS: usize = 16;
const IDX_TIP_SLOTS: usize = 21;
const IDX_JOINT_SLOTS: usize = 26;
const MAX_BETAS: usize = 16;
const DS: usize = D_PER_SAMPLE;
const NJ: usize = NUM_JOINTS;

/// The model buffers as the kernels read them (host copies of a `ManoDevice`).
pub struct Dev<'a> {
    pub nv: usize,
    pub nb: usize,
    pub v_template: &'a [f32],
    pub shapedirs_t: &'a [f32],
    pub posedirs: &'a [f32],
    pub lbs_weights: &'a [f32],
    pub j_template: &'a [f32],
    pub j_shapedirs: &'a [f32],
    pub indices: &'a [i32],
}

impl<'a> Dev<'a> {
    pub fn new(m: &ManoData<'a>, p: &'a ManoPacked) -> Dev<'a> {
        Dev {
            nv: m.num_verts,
            nb: m.num_betas,
            v_template: m.v_template,
            shapedirs_t: &p.shapedirs_t,
            posedirs: m.posedirs,
            lbs_weights: m.lbs_weights,
            j_template: &p.j_template,
            j_shapedirs: &p.j_shapedirs,
            indices: &p.indices,
        }
    }
    fn idx(&self, i: usize) -> usize {
        self.indices[i] as usize
    }
}

/// A global buffer: NaN-poisoned, every write counted, reads only of written elements.
struct Global {
    name: &'static str,
    data: Vec<f32>,
    writes: Vec<u8>,
}

impl Global {
    fn new(name: &'static str, n: usize) -> Global {
        Global {
            name,
            data: vec![f32::NAN; n],
            writes: vec![0; n],
        }
    }
    fn wr(&mut self, i: usize, v: f32) {
        assert!(i < self.data.len(), "{}[{i}]: out of bounds", self.name);
        assert_eq!(self.writes[i], 0, "{}[{i}] written twice", self.name);
        self.writes[i] = 1;
        self.data[i] = v;
    }
    fn rd(&self, i: usize) -> f32 {
        assert!(
            self.writes[i] == 1,
            "{}[{i}] read before it was written",
            self.name
        );
        self.data[i]
    }
    /// Every element of `0..n` written exactly once.
    fn check_all(&self, n: usize) {
        let missing = self.writes[..n].iter().position(|&w| w != 1);
        assert!(
            missing.is_none(),
            "{}[{:?}] never written",
            self.name,
            missing
        );
    }
}

fn rest_joint(dev: &Dev, j: usize, beta: &[f32; MAX_BETAS]) -> [f32; 3] {
    std::array::from_fn(|c| {
        let js = &dev.j_shapedirs[(j * 3 + c) * dev.nb..];
        let mut a = dev.j_template[j * 3 + c];
        for l in 0..dev.nb {
            a = js[l].mul_add(beta[l], a);
        }
        a
    })
}

fn chain_offset(r: &[f32; 9], jj: &[f32; 3]) -> [f32; 3] {
    std::array::from_fn(|row| {
        jj[row] - (r[row * 3] * jj[0] + r[row * 3 + 1] * jj[1] + r[row * 3 + 2] * jj[2])
    })
}

fn load_betas(betas: &[f32], s: usize, nb: usize) -> [f32; MAX_BETAS] {
    std::array::from_fn(|l| if l < nb { betas[s * nb + l] } else { 0.0 })
}

/// `mbw_chain_d`: D of one sample into `d[base + q·ld]`, written and read by thread `tid`.
#[allow(clippy::too_many_arguments)]
fn chain_d(
    dev: &Dev,
    rs: &[f32],
    beta: &[f32; MAX_BETAS],
    d: &mut Smem<f32>,
    w: &Warps,
    tid: usize,
    base: usize,
    ld: usize,
) {
    for j in 0..NJ {
        let r: [f32; 9] = std::array::from_fn(|e| rs[j * 9 + e]);
        let jj = rest_joint(dev, j, beta);
        let t = chain_offset(&r, &jj);
        let mut dj = [0f32; 12];
        for row in 0..3 {
            for c in 0..3 {
                dj[row * 4 + c] = r[row * 3 + c] - if row == c { 1.0 } else { 0.0 };
            }
            dj[row * 4 + 3] = t[row];
        }
        if j > 0 {
            let p = dev.idx(IDX_PARENTS + j);
            for row in 0..3 {
                let mut at = |e: usize| d.rd(w, tid, base + (p * 12 + row * 4 + e) * ld);
                let (pr0, pr1, pr2, pt) = (at(0), at(1), at(2), at(3));
                for c in 0..3 {
                    dj[row * 4 + c] += pr0 * r[c] + pr1 * r[3 + c] + pr2 * r[6 + c];
                }
                dj[row * 4 + 3] += pr0 * t[0] + pr1 * t[1] + pr2 * t[2] + pt;
            }
        }
        for e in 0..12 {
            d.wr(w, tid, base + (j * 12 + e) * ld, dj[e]);
        }
    }
}

/// `mano_rechain_bwd_f32`.
fn rechain(dev: &Dev, rot: &[f32], betas: &[f32], b: usize, chain: &mut Global) {
    let cfg = chain_config(b);
    let nt = cfg.block_dim.0 as usize;
    assert_eq!(nt, CHAIN_THREADS);
    let ld = CHAIN_THREADS + 1;
    for bx in 0..cfg.grid_dim.0 as usize {
        let w = Warps::new(nt);
        let mut dsm = Smem::new("rechain dsm", DS * ld, f32::NAN);
        let s0 = bx * CHAIN_THREADS;
        let ns = CHAIN_THREADS.min(b - s0);
        for tid in 0..nt {
            if tid < ns {
                let s = s0 + tid;
                let beta = load_betas(betas, s, dev.nb);
                chain_d(dev, &rot[s * 144..], &beta, &mut dsm, &w, tid, tid, ld);
            }
        }
        dsm.barrier();
        for tid in 0..nt {
            let mut i = tid;
            while i < ns * DS {
                let sl = i / DS;
                let x = dsm.rd(&w, tid, (i - sl * DS) * ld + sl);
                chain.wr(s0 * DS + i, x);
                i += CHAIN_THREADS;
            }
        }
    }
}

/// `mano_skin_bwd_f32`.
fn skin(
    dev: &Dev,
    rot: &[f32],
    betas: &[f32],
    chain: &Global,
    d_verts: &[f32],
    b: usize,
    partial: &mut Global,
) {
    const S: usize = TILE;
    const NT: usize = SKIN_THREADS;
    let (nv, nb) = (dev.nv, dev.nb);
    let cfg = skin_config(b, nv);
    assert_eq!(cfg.block_dim.0 as usize, NT);
    let nk = nb + POSE_FEATURES;
    let pl = partial_row(nb);
    let n3 = 3 * nv;
    let basis = |k: usize| -> &[f32] {
        if k < nb {
            &dev.shapedirs_t[k * n3..]
        } else {
            &dev.posedirs[(k - nb) * n3..]
        }
    };
    for by in 0..cfg.grid_dim.1 as usize {
        for bx in 0..cfg.grid_dim.0 as usize {
            let w = Warps::new(NT);
            let mut feat = Smem::new("feat", (MAX_BETAS + POSE_FEATURES) * S, f32::NAN);
            let mut dsm = Smem::new("dsm", S * DS, f32::NAN);
            let mut gsm = Smem::new("gsm", 3 * NT * S, f32::NAN);
            let mut psm = Smem::new("psm", 3 * NT * S, f32::NAN);
            let mut vsm = Smem::new("vsm", 3 * NT * S, f32::NAN);
            let mut bsm = Smem::new("bsm", (MAX_BETAS + POSE_FEATURES) * (BCOLS + 1), f32::NAN);
            macro_rules! barrier {
                () => {
                    for m in [&mut feat, &mut dsm, &mut gsm, &mut psm, &mut vsm, &mut bsm] {
                        m.barrier();
                    }
                };
            }
            let s0 = bx * S;
            let ns = S.min(b - s0);
            let v0 = by * NT;
            let nvc = NT.min(nv - v0);

            // 1.
            for tid in 0..NT {
                let mut i = tid;
                while i < S * nk {
                    let s = i / nk;
                    let k = i - s * nk;
                    let mut f = 0.0;
                    if s < ns {
                        let gs = s0 + s;
                        if k < nb {
                            f = betas[gs * nb + k];
                        } else {
                            let q = k - nb;
                            let e = q % 9;
                            f = rot[gs * 144 + 9 + q] - if e % 4 == 0 { 1.0 } else { 0.0 };
                        }
                    }
                    feat.wr(&w, tid, k * S + s, f);
                    i += NT;
                }
                let mut i = tid;
                while i < S * DS {
                    let x = if i < ns * DS {
                        chain.rd(s0 * DS + i)
                    } else {
                        0.0
                    };
                    dsm.wr(&w, tid, i, x);
                    i += NT;
                }
            }
            barrier!();

            // 2.
            for tid in 0..nvc {
                let v = v0 + tid;
                let col = 3 * v;
                let mut acc = [[0f32; S]; 3];
                for c in 0..3 {
                    acc[c] = [dev.v_template[col + c]; S];
                }
                for k in 0..nk {
                    let row = &basis(k)[col..];
                    let xs: [f32; S] = std::array::from_fn(|s| feat.rd(&w, tid, k * S + s));
                    for s in 0..S {
                        for c in 0..3 {
                            acc[c][s] = xs[s].mul_add(row[c], acc[c][s]);
                        }
                    }
                }
                let wv = &dev.lbs_weights[v * NJ..(v + 1) * NJ];
                for s in 0..S {
                    let (mut g, mut gv) = ([0f32; 3], [0f32; 3]);
                    if s < ns {
                        let mut t = [0f32; 12];
                        for j in 0..NJ {
                            for e in 0..12 {
                                t[e] = wv[j].mul_add(dsm.rd(&w, tid, s * DS + j * 12 + e), t[e]);
                            }
                        }
                        let gd = &d_verts[((s0 + s) * nv + v) * 3..];
                        g = [gd[0], gd[1], gd[2]];
                        for c in 0..3 {
                            gv[c] = g[c] + (t[c] * g[0] + t[4 + c] * g[1] + t[8 + c] * g[2]);
                        }
                    }
                    for c in 0..3 {
                        let o = (3 * tid + c) * S + s;
                        gsm.wr(&w, tid, o, g[c]);
                        psm.wr(&w, tid, o, if s < ns { acc[c][s] } else { 0.0 });
                        vsm.wr(&w, tid, o, gv[c]);
                    }
                }
            }
            barrier!();

            // 3.
            for tid in 0..NT {
                let mut u = tid;
                while u < S * NJ * 3 {
                    let s = u / (NJ * 3);
                    let rem = u - s * (NJ * 3);
                    let j = rem / 3;
                    let r = rem - j * 3;
                    let (mut a0, mut a1, mut a2, mut a3) = (0f32, 0f32, 0f32, 0f32);
                    for vl in 0..nvc {
                        let wg = dev.lbs_weights[(v0 + vl) * NJ + j]
                            * gsm.rd(&w, tid, (3 * vl + r) * S + s);
                        a0 = wg.mul_add(psm.rd(&w, tid, (3 * vl) * S + s), a0);
                        a1 = wg.mul_add(psm.rd(&w, tid, (3 * vl + 1) * S + s), a1);
                        a2 = wg.mul_add(psm.rd(&w, tid, (3 * vl + 2) * S + s), a2);
                        a3 += wg;
                    }
                    if s < ns {
                        let o = (by * b + s0 + s) * pl + j * 12 + r * 4;
                        for (e, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                            partial.wr(o + e, a);
                        }
                    }
                    u += NT;
                }
            }

            // 4. (no barrier between 3 and the first stage's loads: different arrays)
            let ncol = 3 * nvc;
            let c_base = 3 * v0;
            let mut acc = vec![[0f32; S]; NT];
            let mut c0 = 0;
            while c0 < ncol {
                for tid in 0..NT {
                    let mut i = tid;
                    while i < nk * BCOLS {
                        let k = i / BCOLS;
                        let c = i - k * BCOLS;
                        let cl = c0 + c;
                        let x = if cl < ncol {
                            basis(k)[c_base + cl]
                        } else {
                            0.0
                        };
                        bsm.wr(&w, tid, k * (BCOLS + 1) + c, x);
                        i += NT;
                    }
                }
                barrier!();
                for tid in 0..nk.min(NT) {
                    let cmax = BCOLS.min(ncol - c0);
                    for c in 0..cmax {
                        let bk = bsm.rd(&w, tid, tid * (BCOLS + 1) + c);
                        for s in 0..S {
                            let g = vsm.rd(&w, tid, (c0 + c) * S + s);
                            acc[tid][s] = bk.mul_add(g, acc[tid][s]);
                        }
                    }
                }
                barrier!();
                c0 += BCOLS;
            }
            for tid in 0..nk.min(NT) {
                for s in 0..ns {
                    partial.wr((by * b + s0 + s) * pl + DS + tid, acc[tid][s]);
                }
            }
        }
    }
}

/// `mano_chain_bwd_f32` (`partial` with `nchunk` chunks, or none).
#[allow(clippy::too_many_arguments)]
fn chain_bwd(
    dev: &Dev,
    rot: &[f32],
    betas: &[f32],
    d_kp: &[f32],
    partial: Option<&Global>,
    nchunk: usize,
    b: usize,
    d_rot: &mut Global,
    d_betas: &mut Global,
) {
    let (nv, nb) = (dev.nv, dev.nb);
    let n3 = 3 * nv;
    let pl = partial_row(nb);
    let part = |i: usize| partial.expect("partials").rd(i);
    let cfg = chain_config(b);
    let nt = cfg.block_dim.0 as usize;
    assert_eq!(nt, CHAIN_THREADS);
    for bx in 0..cfg.grid_dim.0 as usize {
        let w = Warps::new(nt);
        let mut dsm = Smem::new("chain dsm", DS * CHAIN_THREADS, f32::NAN);
        let mut gsm = Smem::new("chain gsm", DS * CHAIN_THREADS, f32::NAN);
        for tid in 0..nt {
            let s = bx * CHAIN_THREADS + tid;
            if s >= b {
                continue;
            }
            let at = |q: usize| q * CHAIN_THREADS + tid;
            let rs = &rot[s * 144..(s + 1) * 144];
            let gk = &d_kp[s * 63..(s + 1) * 63];
            let beta = load_betas(betas, s, nb);

            // 1.
            chain_d(dev, rs, &beta, &mut dsm, &w, tid, tid, CHAIN_THREADS);
            // 2.
            for q in 0..DS {
                let mut a = 0f32;
                for y in 0..nchunk {
                    a += part((y * b + s) * pl + q);
                }
                gsm.wr(&w, tid, at(q), a);
            }
            // 3.
            let mut gvp = [[0f32; 3]; 5];
            for k in 0..5 {
                let tk = dev.idx(IDX_TIPS + k);
                let col = 3 * tk;
                let slot = dev.idx(IDX_TIP_SLOTS + k);
                let g: [f32; 3] = std::array::from_fn(|c| gk[slot * 3 + c]);
                let mut p: [f32; 3] = std::array::from_fn(|c| dev.v_template[col + c]);
                for l in 0..nb {
                    let row = &dev.shapedirs_t[l * n3 + col..];
                    for c in 0..3 {
                        p[c] = beta[l].mul_add(row[c], p[c]);
                    }
                }
                for q in 0..POSE_FEATURES {
                    let e = q % 9;
                    let f = rs[9 + q] - if e % 4 == 0 { 1.0 } else { 0.0 };
                    let row = &dev.posedirs[q * n3 + col..];
                    for c in 0..3 {
                        p[c] = f.mul_add(row[c], p[c]);
                    }
                }
                let wt = &dev.lbs_weights[tk * NJ..(tk + 1) * NJ];
                let mut t = [0f32; 12];
                for j in 0..NJ {
                    for e in 0..12 {
                        t[e] = wt[j].mul_add(dsm.rd(&w, tid, at(j * 12 + e)), t[e]);
                    }
                }
                let mut gt = [0f32; 12];
                for r in 0..3 {
                    for c in 0..3 {
                        gt[r * 4 + c] = g[r] * p[c];
                    }
                    gt[r * 4 + 3] = g[r];
                }
                for c in 0..3 {
                    gvp[k][c] = g[c] + (t[c] * g[0] + t[4 + c] * g[1] + t[8 + c] * g[2]);
                }
                for j in 0..NJ {
                    for e in 0..12 {
                        let x = gsm.rd(&w, tid, at(j * 12 + e));
                        gsm.wr(&w, tid, at(j * 12 + e), x + wt[j] * gt[e]);
                    }
                }
            }
            // 4.
            for j in 0..NJ {
                let slot = dev.idx(IDX_JOINT_SLOTS + j);
                let jj = rest_joint(dev, j, &beta);
                for r in 0..3 {
                    let gp = gk[slot * 3 + r];
                    for c in 0..3 {
                        let x = gsm.rd(&w, tid, at(j * 12 + r * 4 + c));
                        gsm.wr(&w, tid, at(j * 12 + r * 4 + c), x + gp * jj[c]);
                    }
                    let x = gsm.rd(&w, tid, at(j * 12 + r * 4 + 3));
                    gsm.wr(&w, tid, at(j * 12 + r * 4 + 3), x + gp);
                }
            }
            // 5.
            let mut gb = [0f32; MAX_BETAS];
            for j in (0..NJ).rev() {
                let r: [f32; 9] = std::array::from_fn(|e| rs[j * 9 + e]);
                let jj = rest_joint(dev, j, &beta);
                let t = chain_offset(&r, &jj);
                let g: [f32; 12] = std::array::from_fn(|e| gsm.rd(&w, tid, at(j * 12 + e)));
                let slot = dev.idx(IDX_JOINT_SLOTS + j);
                let gp: [f32; 3] = std::array::from_fn(|c| gk[slot * 3 + c]);
                let dj: [f32; 9] =
                    std::array::from_fn(|i| dsm.rd(&w, tid, at(j * 12 + (i / 3) * 4 + i % 3)));
                let mut gj: [f32; 3] = std::array::from_fn(|c| {
                    gp[c] + (dj[c] * gp[0] + dj[3 + c] * gp[1] + dj[6 + c] * gp[2])
                });
                let mut g_t = [g[3], g[7], g[11]];
                let mut gr: [f32; 9] = std::array::from_fn(|i| g[(i / 3) * 4 + i % 3]);
                if j > 0 {
                    let p = dev.idx(IDX_PARENTS + j);
                    let dp: [f32; 12] = std::array::from_fn(|e| dsm.rd(&w, tid, at(p * 12 + e)));
                    for k in 0..3 {
                        for c in 0..3 {
                            gr[k * 3 + c] +=
                                dp[k] * g[c] + dp[4 + k] * g[4 + c] + dp[8 + k] * g[8 + c];
                        }
                        g_t[k] += dp[k] * g[3] + dp[4 + k] * g[7] + dp[8 + k] * g[11];
                    }
                    for row in 0..3 {
                        for k in 0..3 {
                            let x = gsm.rd(&w, tid, at(p * 12 + row * 4 + k));
                            let add = g[row * 4] * r[k * 3]
                                + g[row * 4 + 1] * r[k * 3 + 1]
                                + g[row * 4 + 2] * r[k * 3 + 2]
                                + g[row * 4 + 3] * t[k];
                            gsm.wr(&w, tid, at(p * 12 + row * 4 + k), x + add);
                        }
                        let x = gsm.rd(&w, tid, at(p * 12 + row * 4 + 3));
                        gsm.wr(&w, tid, at(p * 12 + row * 4 + 3), x + g[row * 4 + 3]);
                    }
                }
                for c in 0..3 {
                    gj[c] += g_t[c] - (r[c] * g_t[0] + r[3 + c] * g_t[1] + r[6 + c] * g_t[2]);
                    for row in 0..3 {
                        gr[row * 3 + c] -= g_t[row] * jj[c];
                    }
                }
                for c in 0..3 {
                    let js = &dev.j_shapedirs[(j * 3 + c) * nb..];
                    for l in 0..nb {
                        gb[l] = gj[c].mul_add(js[l], gb[l]);
                    }
                }
                if j > 0 {
                    let rows = &dev.posedirs[(j - 1) * 9 * n3..];
                    let mut a = [0f32; 9];
                    for k in 0..5 {
                        let gv = gvp[k];
                        let col = 3 * dev.idx(IDX_TIPS + k);
                        for e in 0..9 {
                            for c in 0..3 {
                                a[e] = rows[e * n3 + col + c].mul_add(gv[c], a[e]);
                            }
                        }
                    }
                    for y in 0..nchunk {
                        let o = (y * b + s) * pl + DS + nb + (j - 1) * 9;
                        for e in 0..9 {
                            a[e] += part(o + e);
                        }
                    }
                    for e in 0..9 {
                        gr[e] += a[e];
                    }
                }
                for e in 0..9 {
                    d_rot.wr(s * 144 + j * 9 + e, gr[e]);
                }
            }
            // 6.
            for k in 0..5 {
                let gv = gvp[k];
                let col = 3 * dev.idx(IDX_TIPS + k);
                for l in 0..nb {
                    let row = &dev.shapedirs_t[l * n3 + col..];
                    for c in 0..3 {
                        gb[l] = row[c].mul_add(gv[c], gb[l]);
                    }
                }
            }
            for y in 0..nchunk {
                let o = (y * b + s) * pl + DS;
                for l in 0..nb {
                    gb[l] += part(o + l);
                }
            }
            for l in 0..nb {
                d_betas.wr(s * nb + l, gb[l]);
            }
        }
    }
}

/// The launch sequence of `CudaBackend::mano_bwd`: `(d_rotmats, d_betas)`.
pub fn emulate_mano_bwd(
    dev: &Dev,
    rot: &[f32],
    betas: &[f32],
    d_verts: Option<&[f32]>,
    d_kp: &[f32],
    b: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut d_rot = Global::new("d_rotmats", b * 144);
    let mut d_betas = Global::new("d_betas", b * dev.nb);
    match d_verts {
        None => chain_bwd(dev, rot, betas, d_kp, None, 0, b, &mut d_rot, &mut d_betas),
        Some(dv) => {
            let mut chain = Global::new("chain_d", b * DS);
            rechain(dev, rot, betas, b, &mut chain);
            chain.check_all(b * DS);
            let nchunk = chunks(dev.nv);
            let n = nchunk * b * partial_row(dev.nb);
            let mut partial = Global::new("partial", n);
            skin(dev, rot, betas, &chain, dv, b, &mut partial);
            partial.check_all(n);
            chain_bwd(
                dev,
                rot,
                betas,
                d_kp,
                Some(&partial),
                nchunk,
                b,
                &mut d_rot,
                &mut d_betas,
            );
        }
    }
    d_rot.check_all(b * 144);
    d_betas.check_all(b * dev.nb);
    (d_rot.data, d_betas.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::mano::pack;
    use crate::cuda::mano::tests::{inputs, Model, Rng};
    use crate::cuda::CudaBackend;
    use crate::ops::mano::mano_bwd_cpu;
    use crate::tensor::rel_err;

    /// The mirror of both paths against `mano_bwd_cpu`, on random MANO-like models of several
    /// sizes (1, 2 and 5 vertex chunks; 1, 7, 10 and 16 betas; V = 5 has duplicate fingertip
    /// vertices) and batches that are not multiples of the block sizes (32 samples, tiles of 4).
    #[test]
    fn mirror_matches_the_cpu_twin() {
        let mut rng = Rng(0x6d62);
        let mut worst = (0f64, 0f64);
        for &(nv, nb, batches) in &[
            (778usize, 10usize, &[1usize, 3][..]),
            (200, 7, &[5]),
            (40, 16, &[1, 37]),
            (161, 1, &[2]),
            (5, 16, &[3]),
        ] {
            let model = Model::random(&mut rng, nv, nb);
            let m = model.data();
            let packed = pack(&m).unwrap();
            let dev = Dev::new(&m, &packed);
            for &b in batches {
                let (rot, betas) = inputs(&mut rng, b, nb);
                let d_kp = rng.vec(b * 63, 1.0);
                let d_verts = rng.vec(b * nv * 3, 1.0);
                let zeros = vec![0f32; b * nv * 3];
                for with_verts in [false, true] {
                    let dv = if with_verts { &d_verts } else { &zeros };
                    let mut want_r = vec![f32::NAN; b * 144];
                    let mut want_b = vec![f32::NAN; b * nb];
                    mano_bwd_cpu(&m, &rot, &betas, b, dv, &d_kp, &mut want_r, &mut want_b);
                    let (got_r, got_b) = emulate_mano_bwd(
                        &dev,
                        &rot,
                        &betas,
                        with_verts.then_some(dv.as_slice()),
                        &d_kp,
                        b,
                    );
                    let (er, eb) = (rel_err(&got_r, &want_r), rel_err(&got_b, &want_b));
                    eprintln!(
                        "MANO bwd mirror vs twin (V = {nv}, nb = {nb}, b = {b}, d_verts: \
                         {with_verts}): d_rotmats {er:.2e}, d_betas {eb:.2e}"
                    );
                    worst = (worst.0.max(er), worst.1.max(eb));
                    // Both fp32; they differ in summation order (vertex chunks of 160, the
                    // fingertips apart from the vertex sums), FMA use and the folded J
                    // regressor: ~1e-6 of the largest entry. 1e-5 leaves a 10× margin; any
                    // wrong or missing term is O(1).
                    assert!(
                        er < 1e-5 && eb < 1e-5,
                        "V = {nv}, nb = {nb}, b = {b}, d_verts {with_verts}: {er:e} {eb:e}"
                    );
                }
            }
        }
        eprintln!(
            "MANO bwd mirror: worst d_rotmats {:.2e}, d_betas {:.2e}",
            worst.0, worst.1
        );
    }

    /// The scratch size covers the partial rows of every model the kernels take.
    #[test]
    fn scratch_and_launch_layouts() {
        for nv in [1usize, 159, 160, 161, 778] {
            for b in [1usize, 3, 4, 5, 33, 1024] {
                for nb in [1usize, 10, 16] {
                    assert!(
                        CudaBackend::mano_bwd_scratch_len(b, nv)
                            >= chunks(nv) * b * partial_row(nb)
                    );
                }
                let c = skin_config(b, nv);
                assert!(
                    c.grid_dim.0 as usize * TILE >= b && (c.grid_dim.0 as usize - 1) * TILE < b
                );
                assert!(c.grid_dim.1 as usize * SKIN_THREADS >= nv);
                assert!((c.grid_dim.1 as usize - 1) * SKIN_THREADS < nv);
                assert_eq!(
                    chain_config(b).grid_dim.0 as usize,
                    b.div_ceil(CHAIN_THREADS)
                );
            }
        }
        // Basis rows fit the block: one per thread.
        const { assert!(MAX_BETAS + POSE_FEATURES <= SKIN_THREADS) };
    }
}
