//! CPU checks of the packing and of the kernels' index arithmetic: `emulate` mirrors the two
//! kernels' loops (blocks, threads, shared-memory staging, the same expressions) on the host,
//! with shared memory and outputs poisoned with NaN and every output write counted. The random
//! model and inputs are shared with the backward's mirror (src/cuda/backward/mirror_mano.rs).
// The emulation keeps the kernels' index loops so that it checks their index arithmetic.
#![allow(clippy::needless_range_loop)]

use super::*;
use crate::ops::mano::{mano_fwd_cpu, PARENTS, TIP_VERTICES};
use crate::tensor::rel_err;

pub(in crate::cuda) struct Rng(pub(in crate::cuda) u64);
impl Rng {
    pub(in crate::cuda) fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub(in crate::cuda) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next()).collect()
    }
}

pub(in crate::cuda) struct Model {
    nv: usize,
    nb: usize,
    v_template: Vec<f32>,
    shapedirs: Vec<f32>,
    posedirs: Vec<f32>,
    j_regressor: Vec<f32>,
    lbs_weights: Vec<f32>,
    parents: [usize; NUM_JOINTS],
    tips: [usize; 5],
}

impl Model {
    /// MANO-like magnitudes: template ±0.1 m, blend bases ±0.02, rows of J_regressor and
    /// lbs_weights non-negative and summing to 1.
    pub(in crate::cuda) fn random(rng: &mut Rng, nv: usize, nb: usize) -> Model {
        let rows = |rng: &mut Rng, n: usize, m: usize| {
            let mut w: Vec<f32> = (0..n * m).map(|_| rng.next().max(0.0)).collect();
            for r in w.chunks_mut(m) {
                r[0] += 0.01;
                let s: f32 = r.iter().sum();
                r.iter_mut().for_each(|x| *x /= s);
            }
            w
        };
        let mut tips = [0usize; 5];
        for (k, t) in tips.iter_mut().enumerate() {
            *t = TIP_VERTICES[k] % nv;
        }
        Model {
            nv,
            nb,
            v_template: rng.vec(3 * nv, 0.1),
            shapedirs: rng.vec(3 * nv * nb, 0.02),
            posedirs: rng.vec(POSE_FEATURES * 3 * nv, 0.02),
            j_regressor: rows(rng, NUM_JOINTS, nv),
            lbs_weights: rows(rng, nv, NUM_JOINTS),
            parents: PARENTS.map(|p| p.max(0) as usize),
            tips,
        }
    }
    pub(in crate::cuda) fn data(&self) -> ManoData<'_> {
        ManoData {
            num_verts: self.nv,
            num_betas: self.nb,
            v_template: &self.v_template,
            shapedirs: &self.shapedirs,
            posedirs: &self.posedirs,
            j_regressor: &self.j_regressor,
            lbs_weights: &self.lbs_weights,
            parents: &self.parents,
            tips: &self.tips,
        }
    }
}

/// Rotation about a random axis by up to ±π (Rodrigues), row-major.
pub(in crate::cuda) fn random_rot(rng: &mut Rng) -> [f32; 9] {
    let a = [rng.next(), rng.next(), rng.next() + 0.1];
    let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
    let (x, y, z) = (a[0] / n, a[1] / n, a[2] / n);
    let th = std::f32::consts::PI * rng.next();
    let (s, c) = th.sin_cos();
    let t = 1.0 - c;
    [
        t * x * x + c,
        t * x * y - s * z,
        t * x * z + s * y,
        t * x * y + s * z,
        t * y * y + c,
        t * y * z - s * x,
        t * x * z - s * y,
        t * y * z + s * x,
        t * z * z + c,
    ]
}

/// Host mirror of mano_chain_fwd_f32 followed by mano_skin_fwd_f32 (same loops, same
/// indices, same expressions; `mul_add` where the kernels call fmaf). Panics on a read of
/// an unwritten (NaN) shared-memory slot and on an output written twice or never.
#[allow(clippy::too_many_arguments)]
fn emulate(
    m: &ManoData,
    p: &ManoPacked,
    rotmats: &[f32],
    betas: &[f32],
    b: usize,
    tile: usize,
    verts: &mut [f32],
    keypoints: &mut [f32],
) {
    let (nv, nb) = (m.num_verts, m.num_betas);
    let idx = &p.indices;
    let mut chain_d = vec![f32::NAN; b * D_PER_SAMPLE];
    let mut kp_writes = vec![0u8; b * NUM_KEYPOINTS * 3];
    let mut v_writes = vec![0u8; b * nv * 3];

    // ---- mano_chain_fwd_f32 ----
    let cfg = chain_config(b);
    for bx in 0..cfg.grid_dim.0 as usize {
        let mut dsm = vec![[f32::NAN; CHAIN_THREADS + 1]; D_PER_SAMPLE];
        let s0 = bx * CHAIN_THREADS;
        let ns = CHAIN_THREADS.min(b - s0);
        for tid in 0..cfg.block_dim.0 as usize {
            if tid >= ns {
                continue;
            }
            let s = s0 + tid;
            let mut beta = [0f32; MANO_MAX_BETAS];
            for l in 0..nb {
                beta[l] = betas[s * nb + l];
            }
            let rs = &rotmats[s * 144..];
            for j in 0..NUM_JOINTS {
                let r: [f32; 9] = std::array::from_fn(|e| rs[j * 9 + e]);
                let mut jj = [0f32; 3];
                for c in 0..3 {
                    let mut a = p.j_template[j * 3 + c];
                    for l in 0..nb {
                        a = p.j_shapedirs[(j * 3 + c) * nb + l].mul_add(beta[l], a);
                    }
                    jj[c] = a;
                }
                let t: [f32; 3] = std::array::from_fn(|row| {
                    jj[row] - (r[row * 3] * jj[0] + r[row * 3 + 1] * jj[1] + r[row * 3 + 2] * jj[2])
                });
                let mut dj = [0f32; 12];
                for row in 0..3 {
                    for c in 0..3 {
                        dj[row * 4 + c] = r[row * 3 + c] - if row == c { 1.0 } else { 0.0 };
                    }
                    dj[row * 4 + 3] = t[row];
                }
                if j > 0 {
                    let pj = idx[IDX_PARENTS + j] as usize;
                    for row in 0..3 {
                        let g = |e: usize| {
                            let x = dsm[pj * 12 + row * 4 + e][tid];
                            assert!(!x.is_nan(), "chain reads an unwritten D");
                            x
                        };
                        let (pr0, pr1, pr2, pt) = (g(0), g(1), g(2), g(3));
                        for c in 0..3 {
                            dj[row * 4 + c] += pr0 * r[c] + pr1 * r[3 + c] + pr2 * r[6 + c];
                        }
                        dj[row * 4 + 3] += pr0 * t[0] + pr1 * t[1] + pr2 * t[2] + pt;
                    }
                }
                for e in 0..12 {
                    dsm[j * 12 + e][tid] = dj[e];
                }
                let slot = idx[IDX_JOINT_SLOTS + j] as usize;
                for row in 0..3 {
                    let o = s * 63 + slot * 3 + row;
                    keypoints[o] = jj[row]
                        + (dj[row * 4] * jj[0]
                            + dj[row * 4 + 1] * jj[1]
                            + dj[row * 4 + 2] * jj[2]
                            + dj[row * 4 + 3]);
                    kp_writes[o] += 1;
                }
            }
        }
        // __syncthreads, then the coalesced copy.
        for tid in 0..CHAIN_THREADS {
            let mut i = tid;
            while i < ns * D_PER_SAMPLE {
                let sl = i / D_PER_SAMPLE;
                let x = dsm[i - sl * D_PER_SAMPLE][sl];
                assert!(!x.is_nan(), "chain copies an unwritten D");
                chain_d[s0 * D_PER_SAMPLE + i] = x;
                i += CHAIN_THREADS;
            }
        }
    }

    // ---- mano_skin_fwd_f32 ----
    let cfg = skin_config(b, nv, tile);
    let nt = cfg.block_dim.0 as usize;
    let nk = nb + POSE_FEATURES;
    let n3 = 3 * nv;
    for bx in 0..cfg.grid_dim.0 as usize {
        for by in 0..cfg.grid_dim.1 as usize {
            let mut feat = vec![f32::NAN; (MANO_MAX_BETAS + POSE_FEATURES) * SKIN_TILE_LARGE];
            let mut dsm = vec![f32::NAN; SKIN_TILE_LARGE * D_PER_SAMPLE];
            let s0 = bx * tile;
            let ns = tile.min(b - s0);
            for tid in 0..nt {
                let mut i = tid;
                while i < tile * nk {
                    let (s, k) = (i / nk, i % nk);
                    let mut f = 0.0;
                    if s < ns {
                        let gs = s0 + s;
                        if k < nb {
                            f = betas[gs * nb + k];
                        } else {
                            let q = k - nb;
                            let e = q % 9;
                            f = rotmats[gs * 144 + 9 + q] - if e % 4 == 0 { 1.0 } else { 0.0 };
                        }
                    }
                    feat[k * tile + s] = f;
                    i += nt;
                }
                let mut i = tid;
                while i < tile * D_PER_SAMPLE {
                    dsm[i] = if i < ns * D_PER_SAMPLE {
                        chain_d[s0 * D_PER_SAMPLE + i]
                    } else {
                        0.0
                    };
                    i += nt;
                }
            }
            let tips: [i32; 10] = std::array::from_fn(|k| {
                if k < 5 {
                    idx[IDX_TIPS + k]
                } else {
                    idx[IDX_TIP_SLOTS + k - 5]
                }
            });
            // __syncthreads
            for tid in 0..nt {
                let v = by * nt + tid;
                if v >= nv {
                    continue;
                }
                let col = 3 * v;
                let mut acc = vec![[0f32; 3]; tile];
                for a in acc.iter_mut() {
                    *a = [
                        m.v_template[col],
                        m.v_template[col + 1],
                        m.v_template[col + 2],
                    ];
                }
                let row_step = |row: &[f32], f: &[f32], acc: &mut Vec<[f32; 3]>| {
                    for (s, a) in acc.iter_mut().enumerate() {
                        assert!(!f[s].is_nan(), "skin reads an unwritten feature");
                        for c in 0..3 {
                            a[c] = f[s].mul_add(row[c], a[c]);
                        }
                    }
                };
                for l in 0..nb {
                    let row = &p.shapedirs_t[l * n3 + col..];
                    row_step(row, &feat[l * tile..], &mut acc);
                }
                for q in 0..POSE_FEATURES {
                    let row = &m.posedirs[q * n3 + col..];
                    row_step(row, &feat[(nb + q) * tile..], &mut acc);
                }
                let w = &m.lbs_weights[v * 16..v * 16 + 16];
                for (s, pv) in acc.iter().enumerate().take(ns) {
                    let d = &dsm[s * D_PER_SAMPLE..(s + 1) * D_PER_SAMPLE];
                    let mut t = [0f32; 12];
                    for j in 0..16 {
                        for e in 0..12 {
                            assert!(!d[j * 12 + e].is_nan(), "skin reads an unwritten D");
                            t[e] = w[j].mul_add(d[j * 12 + e], t[e]);
                        }
                    }
                    let o: [f32; 3] = std::array::from_fn(|r| {
                        pv[r]
                            + (t[r * 4] * pv[0]
                                + t[r * 4 + 1] * pv[1]
                                + t[r * 4 + 2] * pv[2]
                                + t[r * 4 + 3])
                    });
                    let gs = s0 + s;
                    for c in 0..3 {
                        verts[(gs * nv + v) * 3 + c] = o[c];
                        v_writes[(gs * nv + v) * 3 + c] += 1;
                    }
                    for k in 0..5 {
                        if tips[k] as usize == v {
                            for c in 0..3 {
                                let o_i = gs * 63 + tips[5 + k] as usize * 3 + c;
                                keypoints[o_i] = o[c];
                                kp_writes[o_i] += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        v_writes.iter().all(|&n| n == 1),
        "a vertex written 0 or 2+ times"
    );
    assert!(
        kp_writes.iter().all(|&n| n == 1),
        "a keypoint written 0 or 2+ times"
    );
}

pub(in crate::cuda) fn inputs(rng: &mut Rng, b: usize, nb: usize) -> (Vec<f32>, Vec<f32>) {
    let rot: Vec<f32> = (0..b * NUM_JOINTS).flat_map(|_| random_rot(rng)).collect();
    (rot, rng.vec(b * nb, 2.0))
}

#[test]
fn emulated_kernels_match_the_cpu_twin() {
    let mut rng = Rng(0x3a70);
    for &(nv, nb) in &[(778usize, 10usize), (161, 7), (5, 16), (320, 1)] {
        let model = Model::random(&mut rng, nv, nb);
        let m = model.data();
        let packed = pack(&m).unwrap();
        for &b in &[1usize, 5, 33, 70] {
            let (rot, betas) = inputs(&mut rng, b, nb);
            let mut want_v = vec![0f32; b * nv * 3];
            let mut want_k = vec![0f32; b * 63];
            mano_fwd_cpu(&m, &rot, &betas, b, &mut want_v, &mut want_k);
            for tile in [SKIN_TILE_SMALL, SKIN_TILE_LARGE] {
                let mut got_v = vec![f32::NAN; b * nv * 3];
                let mut got_k = vec![f32::NAN; b * 63];
                emulate(&m, &packed, &rot, &betas, b, tile, &mut got_v, &mut got_k);
                let (ev, ek) = (rel_err(&got_v, &want_v), rel_err(&got_k, &want_k));
                // Tolerance 1e-5: both sides fp32, differing in summation order, FMA
                // contraction and J folded in f64; the emulation lands at <= 8.1e-7 here.
                assert!(
                    ev < 1e-5 && ek < 1e-5,
                    "nv={nv} nb={nb} b={b} tile={tile}: {ev:e} {ek:e}"
                );
            }
        }
    }
}

#[test]
fn emulated_identity_pose_gives_the_template_exactly() {
    let mut rng = Rng(11);
    let model = Model::random(&mut rng, 778, 10);
    let m = model.data();
    let packed = pack(&m).unwrap();
    let b = 3;
    let mut rot = vec![0f32; b * 144];
    for r in rot.chunks_mut(9) {
        (r[0], r[4], r[8]) = (1.0, 1.0, 1.0);
    }
    let betas = vec![0f32; b * 10];
    let mut v = vec![f32::NAN; b * 778 * 3];
    let mut k = vec![f32::NAN; b * 63];
    emulate(
        &m,
        &packed,
        &rot,
        &betas,
        b,
        SKIN_TILE_SMALL,
        &mut v,
        &mut k,
    );
    for s in 0..b {
        assert_eq!(&v[s * 2334..(s + 1) * 2334], &model.v_template[..]);
    }
}

#[test]
fn packing_and_launch_layouts() {
    // Slots: the OpenPose order puts fingertip k at 4(k+1); joints and tips fill 0..21 once.
    let mut rng = Rng(5);
    let model = Model::random(&mut rng, 50, 10);
    let p = pack(&model.data()).unwrap();
    let slots: Vec<i32> = p.indices[IDX_TIP_SLOTS..IDX_TIP_SLOTS + 5].to_vec();
    assert_eq!(slots, [4, 8, 12, 16, 20]);
    let mut all: Vec<i32> = p.indices[IDX_JOINT_SLOTS..IDX_LEN].to_vec();
    all.extend(&slots);
    all.sort();
    assert_eq!(all, (0..21).collect::<Vec<_>>());
    // Grids cover every sample and vertex; the tile is one of the two the kernel has.
    for num_sms in [1, 132] {
        for b in [1usize, 5, 33, 1000, 1024, 100_000] {
            let tile = skin_tile(b, 778, num_sms);
            let c = skin_config(b, 778, tile);
            assert!(tile == 4 || tile == 16);
            assert!(c.grid_dim.0 as usize * tile >= b);
            assert!(c.grid_dim.1 as usize * SKIN_THREADS >= 778);
            assert_eq!(chain_config(b).grid_dim.0 as usize, b.div_ceil(32));
        }
    }
    assert_eq!(skin_tile(1024, 778, 132), 16);
    assert_eq!(skin_tile(33, 778, 132), 4);
}

#[test]
fn pack_rejects_bad_models() {
    let mut rng = Rng(9);
    let model = Model::random(&mut rng, 40, 10);
    let mut bad_parents = model.parents;
    bad_parents[3] = 3;
    let mut d = model.data();
    d.parents = &bad_parents;
    assert!(matches!(pack(&d), Err(Error::Input(_))));
    let bad_tips = [0, 1, 2, 3, 40];
    let mut d = model.data();
    d.tips = &bad_tips;
    assert!(matches!(pack(&d), Err(Error::Input(_))));
    let mut d = model.data();
    d.num_betas = 17;
    assert!(matches!(pack(&d), Err(Error::Input(_))));
    let mut d = model.data();
    d.posedirs = &model.posedirs[1..];
    assert!(matches!(pack(&d), Err(Error::Input(_))));
    let mut d = model.data();
    d.num_verts = 0;
    assert!(matches!(pack(&d), Err(Error::Input(_))));
}
