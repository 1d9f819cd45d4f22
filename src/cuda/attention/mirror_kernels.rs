//! Plain-Rust mirrors of the three kernels of kernels/attention.cu, statement by statement:
//! threads of a warp in lockstep, warps in turn between barriers, every shared-memory access
//! through the checker of mirror.rs. Used by the unit tests in ../attention.rs.
// Index loops on purpose: they mirror the CUDA code's loops statement by statement.
#![allow(clippy::needless_range_loop)]

use super::mirror::*;
use super::*;
use half::bf16;

pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(super) const SA_WARPS_USIZE: usize = SA_THREADS as usize / 32;

/// Block decomposition shared by both self-attention kernels (sa_block).
pub(super) fn sa_block(
    block: usize,
    s: usize,
    heads: usize,
    d: usize,
) -> (usize, usize, usize, usize) {
    let nqt = s.div_ceil(SA_QTILE);
    let (qt, bh) = (block % nqt, block / nqt);
    let (head, bi) = (bh % heads, bh / heads);
    let hd = heads * d;
    (bi, head * d, qt * SA_QTILE, bi * s * 3 * hd + head * d) // (bi, head·d, q0, q_off)
}

/// sa_bf16_stage: rows r0.. of one of q/k/v into the tile at `dst`.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_bf16(
    sm: &mut Shared<u16>,
    dst: usize,
    qkv: &[u16],
    src: usize,
    row_stride: usize,
    r0: usize,
    s: usize,
    d: usize,
    vec: bool,
) {
    let dp = padded_head_dim(d);
    let lds = dp + 8;
    for tid in 0..SA_THREADS as usize {
        let warp = (tid / 32) as u32;
        if vec {
            let ch = dp / 8;
            for idx in (tid..SA_KTILE * ch).step_by(SA_THREADS as usize) {
                let (r, c) = (idx / ch, (idx % ch) * 8);
                let valid = r0 + r < s && c < d;
                assert_eq!((dst + r * lds + c) % 8, 0, "cp.async destination alignment");
                for e in 0..8 {
                    let v = if valid {
                        qkv[src + (r0 + r) * row_stride + c + e]
                    } else {
                        0
                    };
                    sm.cp_async(dst + r * lds + c + e, warp, v);
                }
            }
        } else {
            for idx in (tid..SA_KTILE * dp).step_by(SA_THREADS as usize) {
                let (r, c) = (idx / dp, idx % dp);
                let v = if r0 + r < s && c < d {
                    qkv[src + (r0 + r) * row_stride + c]
                } else {
                    0
                };
                sm.write(dst + r * lds + c, warp, v);
            }
        }
    }
}

/// Mirror of self_attention_fwd_bf16. `out` starts as NaN bits; `hits` counts the writes.
#[allow(clippy::too_many_arguments)]
pub(super) fn emulate_self_bf16(
    qkv: &[u16],
    out: &mut [u16],
    hits: &mut [u32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    vec_in: bool,
) {
    let dp = padded_head_dim(d);
    let (lds, ks_n, nt) = (dp + 8, dp / 16, dp / 8);
    let qreg = dp <= 80;
    let hd = heads * d;
    let row_stride = 3 * hd;
    let sl2 = scale * LOG2E;
    let vec = d % 8 == 0 && vec_in;
    let nkt = s.div_ceil(SA_KTILE);
    let blocks = self_attention_config::<bf16>(b, s, heads, d).grid_dim.0 as usize;
    let smem_elems = self_attention_smem_bytes::<bf16>(d) / 2;
    for block in 0..blocks {
        let (bi, hoff, q0, q_off) = sa_block(block, s, heads, d);
        let mut sm = Shared::new(smem_elems, 0u16);
        let (sq, sk, sv) = (0, SA_QTILE * lds, (SA_QTILE + SA_KTILE) * lds);
        let (k_off, v_off) = (q_off + hd, q_off + 2 * hd);
        stage_bf16(&mut sm, sq, qkv, q_off, row_stride, q0, s, d, vec);
        stage_bf16(&mut sm, sk, qkv, k_off, row_stride, 0, s, d, vec);
        sm.commit();
        stage_bf16(&mut sm, sv, qkv, v_off, row_stride, 0, s, d, vec);
        sm.commit();

        let qaddr = |warp: usize, lane: usize, hi: bool, ks: usize, k8: bool| {
            sq + (warp * 16 + (lane >> 2) + if hi { 8 } else { 0 }) * lds
                + 2 * (lane & 3)
                + 16 * ks
                + if k8 { 8 } else { 0 }
        };
        let qfrag = |sm: &mut Shared<u16>, warp: usize, ks: usize| {
            let mut a = [[0u32; 4]; 32];
            for (lane, al) in a.iter_mut().enumerate() {
                let w = warp as u32;
                al[0] = lds32(sm, qaddr(warp, lane, false, ks, false), w);
                al[1] = lds32(sm, qaddr(warp, lane, true, ks, false), w);
                al[2] = lds32(sm, qaddr(warp, lane, false, ks, true), w);
                al[3] = lds32(sm, qaddr(warp, lane, true, ks, true), w);
            }
            a
        };
        let mut qf = vec![vec![[[0u32; 4]; 32]; ks_n]; SA_WARPS_USIZE];
        let mut o = vec![vec![[[0f32; 4]; 32]; nt]; SA_WARPS_USIZE];
        let mut m_run = vec![[[f32::NEG_INFINITY; 2]; 32]; SA_WARPS_USIZE];
        let mut l_run = vec![[[0f32; 2]; 32]; SA_WARPS_USIZE];
        for kt in 0..nkt {
            let key0 = kt * SA_KTILE;
            sm.wait(1);
            sm.barrier();
            let mut sc = vec![vec![[[0f32; 4]; 32]; 8]; SA_WARPS_USIZE];
            for warp in 0..SA_WARPS_USIZE {
                if qreg && kt == 0 {
                    for ks in 0..ks_n {
                        qf[warp][ks] = qfrag(&mut sm, warp, ks);
                    }
                }
                for ks in 0..ks_n {
                    let a = if qreg {
                        qf[warp][ks]
                    } else {
                        qfrag(&mut sm, warp, ks)
                    };
                    for j in 0..8 {
                        let mut bfr = [[0u32; 2]; 32];
                        for (lane, bl) in bfr.iter_mut().enumerate() {
                            let kp = sk + (8 * j + (lane >> 2)) * lds + 16 * ks + 2 * (lane & 3);
                            bl[0] = lds32(&mut sm, kp, warp as u32);
                            bl[1] = lds32(&mut sm, kp + 8, warp as u32);
                        }
                        mma(&mut sc[warp][j], &a, &bfr);
                    }
                }
            }
            sm.barrier();
            let more = kt + 1 < nkt;
            if more {
                stage_bf16(
                    &mut sm,
                    sk,
                    qkv,
                    k_off,
                    row_stride,
                    key0 + SA_KTILE,
                    s,
                    d,
                    vec,
                );
            }
            sm.commit();

            let mut pf = vec![[[[0u32; 4]; 32]; 4]; SA_WARPS_USIZE];
            for warp in 0..SA_WARPS_USIZE {
                let sw = &mut sc[warp];
                let mut mx = [[f32::NEG_INFINITY; 32]; 2];
                for j in 0..8 {
                    for lane in 0..32 {
                        for e in 0..4 {
                            let key = key0 + 8 * j + 2 * (lane & 3) + (e & 1);
                            let x = if key < s {
                                sw[j][lane][e] * sl2
                            } else {
                                f32::NEG_INFINITY
                            };
                            sw[j][lane][e] = x;
                            mx[e >> 1][lane] = mx[e >> 1][lane].max(x);
                        }
                    }
                }
                for (r, mxr) in mx.iter_mut().enumerate() {
                    butterfly(mxr, &[1, 2], f32::max);
                    for lane in 0..32 {
                        let m_new = m_run[warp][lane][r].max(mxr[lane]);
                        assert!(m_new.is_finite());
                        let alpha = (m_run[warp][lane][r] - m_new).exp2();
                        m_run[warp][lane][r] = m_new;
                        l_run[warp][lane][r] *= alpha;
                        for on in o[warp].iter_mut() {
                            on[lane][2 * r] *= alpha;
                            on[lane][2 * r + 1] *= alpha;
                        }
                    }
                }
                for j in 0..8 {
                    for lane in 0..32 {
                        for e in 0..4 {
                            let p = (sw[j][lane][e] - m_run[warp][lane][e >> 1]).exp2();
                            sw[j][lane][e] = p;
                            l_run[warp][lane][e >> 1] += p;
                        }
                    }
                }
                for kk in 0..4 {
                    for lane in 0..32 {
                        let (s0, s1) = (sw[2 * kk][lane], sw[2 * kk + 1][lane]);
                        pf[warp][kk][lane] = [
                            pack(s0[0], s0[1]),
                            pack(s0[2], s0[3]),
                            pack(s1[0], s1[1]),
                            pack(s1[2], s1[3]),
                        ];
                    }
                }
            }

            sm.wait(1);
            sm.barrier();
            for warp in 0..SA_WARPS_USIZE {
                for kk in 0..4 {
                    for np in 0..nt / 2 {
                        let mut addr = [0usize; 32];
                        for (lane, a) in addr.iter_mut().enumerate() {
                            *a = sv + (16 * kk + (lane & 15)) * lds + 16 * np + 8 * (lane >> 4);
                        }
                        let r = ldsm_x4_trans(&mut sm, &addr, warp as u32);
                        let b01: [[u32; 2]; 32] = std::array::from_fn(|l| [r[l][0], r[l][1]]);
                        let b23: [[u32; 2]; 32] = std::array::from_fn(|l| [r[l][2], r[l][3]]);
                        mma(&mut o[warp][2 * np], &pf[warp][kk], &b01);
                        mma(&mut o[warp][2 * np + 1], &pf[warp][kk], &b23);
                    }
                }
            }
            sm.barrier();
            if more {
                stage_bf16(
                    &mut sm,
                    sv,
                    qkv,
                    v_off,
                    row_stride,
                    key0 + SA_KTILE,
                    s,
                    d,
                    vec,
                );
            }
            sm.commit();
        }
        sm.wait(0);

        for warp in 0..SA_WARPS_USIZE {
            let w = warp as u32;
            let mut inv = [[0f32; 32]; 2];
            for (r, invr) in inv.iter_mut().enumerate() {
                let mut l: [f32; 32] = std::array::from_fn(|lane| l_run[warp][lane][r]);
                butterfly(&mut l, &[1, 2], |a, b| a + b);
                for lane in 0..32 {
                    assert!(l[lane] >= 1.0);
                    invr[lane] = 1.0 / l[lane];
                }
            }
            let so = sq + warp * 16 * lds;
            for n in 0..nt {
                for lane in 0..32 {
                    let (g, c) = (lane >> 2, 8 * n + 2 * (lane & 3));
                    let on = o[warp][n][lane];
                    for (row, lo, hi, iv) in [
                        (g, on[0], on[1], inv[0][lane]),
                        (g + 8, on[2], on[3], inv[1][lane]),
                    ] {
                        let word = pack(lo * iv, hi * iv);
                        assert_eq!((so + row * lds + c) % 2, 0);
                        sm.write(so + row * lds + c, w, word as u16);
                        sm.write(so + row * lds + c + 1, w, (word >> 16) as u16);
                    }
                }
            }
            let qw = q0 + warp * 16;
            let ob = bi * s * hd + hoff;
            let mut store = |r: usize, c: usize, sm: &mut Shared<u16>| {
                if qw + r < s {
                    let i = ob + (qw + r) * hd + c;
                    out[i] = sm.read(so + r * lds + c, w);
                    hits[i] += 1;
                }
            };
            if d % 8 == 0 {
                let ch = d / 8;
                for lane in 0..32 {
                    for idx in (lane..16 * ch).step_by(32) {
                        let (r, c) = (idx / ch, (idx % ch) * 8);
                        assert_eq!((so + r * lds + c) % 8, 0);
                        for e in 0..8 {
                            store(r, c + e, &mut sm);
                        }
                    }
                }
            } else {
                for lane in 0..32 {
                    for idx in (lane..16 * d).step_by(32) {
                        store(idx / d, idx % d, &mut sm);
                    }
                }
            }
        }
    }
}

/// sf_stage_t: rows r0.. of q or k, transposed, into the tile at `dst` ([d][SF_LD]).
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_f32_t(
    sm: &mut Shared<f32>,
    dst: usize,
    qkv: &[f32],
    src: usize,
    row_stride: usize,
    r0: usize,
    s: usize,
    d: usize,
) {
    for tid in 0..SA_THREADS as usize {
        let (warp, lane) = (tid / 32, tid % 32);
        for r in (warp..SA_KTILE).step_by(SA_WARPS_USIZE) {
            for c in (lane..d).step_by(32) {
                let v = if r0 + r < s {
                    qkv[src + (r0 + r) * row_stride + c]
                } else {
                    0.0
                };
                sm.write(dst + c * SF_LD + r, warp as u32, v);
            }
        }
    }
}

/// sf_stage_v: rows r0.. of v into the tile at `dst` ([64][DP]).
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_f32_v(
    sm: &mut Shared<f32>,
    dst: usize,
    qkv: &[f32],
    src: usize,
    row_stride: usize,
    r0: usize,
    s: usize,
    d: usize,
) {
    let dp = padded_head_dim(d);
    for tid in 0..SA_THREADS as usize {
        let (warp, lane) = (tid / 32, tid % 32);
        for r in (warp..SA_KTILE).step_by(SA_WARPS_USIZE) {
            for c in (lane..dp).step_by(32) {
                let v = if r0 + r < s && c < d {
                    qkv[src + (r0 + r) * row_stride + c]
                } else {
                    0.0
                };
                sm.write(dst + r * dp + c, warp as u32, v);
            }
        }
    }
}

/// Mirror of self_attention_fwd_f32 (thread by thread, warps in turn between barriers).
#[allow(clippy::too_many_arguments)]
pub(super) fn emulate_self_f32(
    qkv: &[f32],
    out: &mut [f32],
    hits: &mut [u32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
) {
    let dp = padded_head_dim(d);
    let nc = dp / 16;
    let hd = heads * d;
    let row_stride = 3 * hd;
    let sl2 = scale * LOG2E;
    let nkt = s.div_ceil(SA_KTILE);
    let nthreads = SA_THREADS as usize;
    let blocks = self_attention_config::<f32>(b, s, heads, d).grid_dim.0 as usize;
    let smem_elems = self_attention_smem_bytes::<f32>(d) / 4;
    for block in 0..blocks {
        let (bi, hoff, q0, q_off) = sa_block(block, s, heads, d);
        let mut sm = Shared::new(smem_elems, 0f32);
        let sqt = 0;
        let skp = d * SF_LD;
        let sv = skp + d.max(SA_KTILE) * SF_LD;
        assert_eq!(sv + SA_KTILE * dp, smem_elems);
        let (k_off, v_off) = (q_off + hd, q_off + 2 * hd);
        let tx = |tid: usize| (tid % 32) & 7;
        let rb = |tid: usize| (tid / 32) * 16 + ((tid % 32) >> 3) * 4;
        stage_f32_t(&mut sm, sqt, qkv, q_off, row_stride, q0, s, d);
        let mut o = vec![vec![[[0f32; 2]; 4]; nc]; nthreads]; // [tid][j][i][e]
        let mut m_run = vec![[f32::NEG_INFINITY; 4]; nthreads];
        let mut l_run = vec![[0f32; 4]; nthreads];
        for kt in 0..nkt {
            let key0 = kt * SA_KTILE;
            stage_f32_t(&mut sm, skp, qkv, k_off, row_stride, key0, s, d);
            stage_f32_v(&mut sm, sv, qkv, v_off, row_stride, key0, s, d);
            sm.barrier();
            let mut acc = vec![[[0f32; 8]; 4]; nthreads];
            for tid in 0..nthreads {
                let w = (tid / 32) as u32;
                for c in 0..d {
                    for i in 0..4 {
                        let q = sm.read(sqt + c * SF_LD + rb(tid) + i, w);
                        for j in 0..8 {
                            let k = sm.read(skp + c * SF_LD + 8 * tx(tid) + j, w);
                            acc[tid][i][j] = q.mul_add(k, acc[tid][i][j]);
                        }
                    }
                }
            }
            for warp in 0..SA_WARPS_USIZE {
                for i in 0..4 {
                    let mut mx = [f32::NEG_INFINITY; 32];
                    for lane in 0..32 {
                        let tid = warp * 32 + lane;
                        for j in 0..8 {
                            let key = key0 + 8 * tx(tid) + j;
                            let x = if key < s {
                                acc[tid][i][j] * sl2
                            } else {
                                f32::NEG_INFINITY
                            };
                            acc[tid][i][j] = x;
                            mx[lane] = mx[lane].max(x);
                        }
                    }
                    butterfly(&mut mx, &[1, 2, 4], f32::max);
                    for lane in 0..32 {
                        let tid = warp * 32 + lane;
                        let m_new = m_run[tid][i].max(mx[lane]);
                        assert!(m_new.is_finite());
                        let alpha = (m_run[tid][i] - m_new).exp2();
                        m_run[tid][i] = m_new;
                        let mut l = l_run[tid][i] * alpha;
                        for j in 0..8 {
                            let p = (acc[tid][i][j] - m_new).exp2();
                            acc[tid][i][j] = p;
                            l += p;
                        }
                        l_run[tid][i] = l;
                        for oj in o[tid].iter_mut() {
                            oj[i][0] *= alpha;
                            oj[i][1] *= alpha;
                        }
                    }
                }
            }
            sm.barrier();
            for tid in 0..nthreads {
                let w = (tid / 32) as u32;
                for i in 0..4 {
                    let pr = skp + (rb(tid) + i) * SF_LD + 8 * tx(tid);
                    assert_eq!(pr % 4, 0, "float4 store alignment");
                    for j in 0..8 {
                        sm.write(pr + j, w, acc[tid][i][j]);
                    }
                }
            }
            let rem = s - key0;
            let kend = if rem >= SA_KTILE {
                SA_KTILE
            } else {
                (rem + 3) & !3
            };
            for tid in 0..nthreads {
                let w = (tid / 32) as u32;
                for k in (0..kend).step_by(4) {
                    let mut p4 = [[0f32; 4]; 4];
                    for (i, p4i) in p4.iter_mut().enumerate() {
                        let a = skp + (rb(tid) + i) * SF_LD + k;
                        assert_eq!(a % 4, 0, "float4 load alignment");
                        for (kk, p) in p4i.iter_mut().enumerate() {
                            *p = sm.read(a + kk, w);
                        }
                    }
                    for kk in 0..4 {
                        for j in 0..nc {
                            let a = sv + (k + kk) * dp + 16 * j + 2 * tx(tid);
                            assert_eq!(a % 2, 0, "float2 load alignment");
                            let (vx, vy) = (sm.read(a, w), sm.read(a + 1, w));
                            for (i, p4i) in p4.iter().enumerate() {
                                let p = p4i[kk];
                                o[tid][j][i][0] = p.mul_add(vx, o[tid][j][i][0]);
                                o[tid][j][i][1] = p.mul_add(vy, o[tid][j][i][1]);
                            }
                        }
                    }
                }
            }
            sm.barrier();
        }
        let ob = bi * s * hd + hoff;
        for warp in 0..SA_WARPS_USIZE {
            for i in 0..4 {
                let mut l: [f32; 32] = std::array::from_fn(|lane| l_run[warp * 32 + lane][i]);
                butterfly(&mut l, &[1, 2, 4], |a, b| a + b);
                for lane in 0..32 {
                    let tid = warp * 32 + lane;
                    assert!(l[lane] >= 1.0);
                    let inv = 1.0 / l[lane];
                    let q = q0 + rb(tid) + i;
                    if q < s {
                        for j in 0..nc {
                            for e in 0..2 {
                                let c = 16 * j + 2 * tx(tid) + e;
                                if c < d {
                                    out[ob + q * hd + c] = o[tid][j][i][e] * inv;
                                    hits[ob + q * hd + c] += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Mirror of cross_attention_1q_fwd (f32 arithmetic on values already rounded as T).
#[allow(clippy::too_many_arguments)]
pub(super) fn emulate_cross(
    q: &[f32],
    kv: &[f32],
    out: &mut [f32],
    hits: &mut [u32],
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    scale: f32,
) {
    const WARPS: usize = CA_THREADS as usize / 32;
    const U: usize = 4;
    let sl2 = scale * LOG2E;
    let hd = heads * d;
    for block in 0..b * heads {
        let (head, bi) = (block % heads, block / heads);
        let qh = bi * hd + head * d;
        let kb = bi * t * 2 * hd + head * d;
        let vb = kb + hd;
        let mut sm = Shared::new(WARPS * 2 + WARPS * ATTENTION_MAX_HEAD_DIM, 0f32);
        let (s_m, s_l, s_o) = (0, WARPS, 2 * WARPS);
        for warp in 0..WARPS {
            let col = |lane: usize, i: usize| lane + 32 * i;
            let qr: Vec<[f32; 4]> = (0..32)
                .map(|lane| {
                    std::array::from_fn(|i| {
                        if col(lane, i) < d {
                            q[qh + col(lane, i)]
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            let mut o = [[0f32; 4]; 32];
            for j0 in (warp * U..t).step_by(WARPS * U) {
                let mut x = [0f32; U];
                let mut vr = [[[0f32; 4]; 32]; U];
                for (u, xu) in x.iter_mut().enumerate() {
                    let j = j0 + u;
                    let mut dots = [0f32; 32];
                    for lane in 0..32 {
                        for i in 0..4 {
                            let c = col(lane, i);
                            let ok = j < t && c < d;
                            let kr = if ok { kv[kb + j * 2 * hd + c] } else { 0.0 };
                            vr[u][lane][i] = if ok { kv[vb + j * 2 * hd + c] } else { 0.0 };
                            dots[lane] = qr[lane][i].mul_add(kr, dots[lane]);
                        }
                    }
                    butterfly(&mut dots, &[16, 8, 4, 2, 1], |a, b| a + b);
                    assert!(dots.iter().all(|&v| v == dots[0]));
                    *xu = dots[0];
                }
                let mut mx = m;
                for (u, xu) in x.iter_mut().enumerate() {
                    *xu = if j0 + u < t {
                        *xu * sl2
                    } else {
                        f32::NEG_INFINITY
                    };
                    mx = mx.max(*xu);
                }
                assert!(mx.is_finite());
                let alpha = (m - mx).exp2();
                m = mx;
                let p: [f32; U] = std::array::from_fn(|u| (x[u] - mx).exp2());
                l = l * alpha + p.iter().sum::<f32>();
                for (lane, ol) in o.iter_mut().enumerate() {
                    for (i, oi) in ol.iter_mut().enumerate() {
                        let mut acc = *oi * alpha;
                        for u in 0..U {
                            acc = p[u].mul_add(vr[u][lane][i], acc);
                        }
                        *oi = acc;
                    }
                }
            }
            sm.write(s_m + warp, warp as u32, m);
            sm.write(s_l + warp, warp as u32, l);
            for (lane, ol) in o.iter().enumerate() {
                for (i, &oi) in ol.iter().enumerate() {
                    if col(lane, i) < d {
                        sm.write(
                            s_o + warp * ATTENTION_MAX_HEAD_DIM + col(lane, i),
                            warp as u32,
                            oi,
                        );
                    }
                }
            }
        }
        sm.barrier();
        for tid in 0..CA_THREADS as usize {
            let w = (tid / 32) as u32;
            for c in (tid..d).step_by(CA_THREADS as usize) {
                let mut mm = sm.read(s_m, w);
                for k in 1..WARPS {
                    mm = mm.max(sm.read(s_m + k, w));
                }
                let (mut ll, mut acc) = (0f32, 0f32);
                for k in 0..WARPS {
                    let f = (sm.read(s_m + k, w) - mm).exp2();
                    ll = sm.read(s_l + k, w).mul_add(f, ll);
                    acc = sm
                        .read(s_o + k * ATTENTION_MAX_HEAD_DIM + c, w)
                        .mul_add(f, acc);
                }
                out[qh + c] = acc / ll;
                hits[qh + c] += 1;
            }
        }
    }
}
