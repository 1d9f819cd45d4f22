//! CPU mirrors of the attention backward kernels (kernels/attention_bwd.cu): `sab_prep`,
//! `sab_dq_body`, `sab_dkv_body` and `cab_body`, thread by thread on the race-checking shared
//! memory of `emu` (warp shuffles as explicit butterflies), checked against the CPU twins. Keep
//! in step with the kernels.
// The mirror transcribes the kernels' index loops as written in CUDA.
#![allow(clippy::needless_range_loop)]

use super::emu::{Smem, Warps};

const TILE: usize = 64;
const LDP: usize = 68;
const THREADS: usize = 128;
const LOG2E: f32 = std::f32::consts::LOG2_E;

/// The thread's (rb, tx): rows rb … rb+3, columns tx + 8j.
fn place(t: usize) -> (usize, usize) {
    let (warp, lane) = (t / 32, t % 32);
    (warp * 16 + (lane >> 3) * 4, lane & 7)
}

/// Per-lane values combined over the 8 lanes tx of each group by xor-shuffles 1, 2, 4.
fn group_butterfly(v: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for off in [1usize, 2, 4] {
        let prev = v.to_vec();
        for (l, x) in v.iter_mut().enumerate() {
            *x = f(prev[l], prev[l ^ off]);
        }
    }
}

struct Tile {
    dp: usize,
    ld: usize,
    vec: bool,
}

impl Tile {
    /// sab_stage: rows r0.. of src (row_stride) into dst [64][DP+4], zero-padded.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        w: &Warps,
        dst: &mut Smem<f32>,
        src: &[f32],
        base: usize,
        row_stride: usize,
        r0: usize,
        s: usize,
        d: usize,
    ) {
        let get = |r: usize, c: usize| {
            if r0 + r < s && c < d {
                src[base + (r0 + r) * row_stride + c]
            } else {
                0.0
            }
        };
        for t in 0..THREADS {
            if self.vec {
                let c4n = self.dp / 4;
                let mut idx = t;
                while idx < TILE * c4n {
                    let (r, c) = (idx / c4n, (idx % c4n) * 4);
                    for e in 0..4 {
                        dst.wr(w, t, r * self.ld + c + e, get(r, c + e));
                    }
                    idx += THREADS;
                }
            } else {
                let mut idx = t;
                while idx < TILE * self.dp {
                    let (r, c) = (idx / self.dp, idx % self.dp);
                    dst.wr(w, t, r * self.ld + c, get(r, c));
                    idx += THREADS;
                }
            }
        }
    }

    /// sab_dot for thread t: columns tx + 8·(j0 + j), j < nj.
    #[allow(clippy::too_many_arguments)]
    fn dot(
        &self,
        w: &Warps,
        t: usize,
        a: &mut Smem<f32>,
        b: &mut Smem<f32>,
        j0: usize,
        nj: usize,
    ) -> Vec<[f32; 4]> {
        let (rb, tx) = place(t);
        let mut acc = vec![[0f32; 4]; nj];
        let mut c = 0;
        while c < self.dp {
            let av: Vec<[f32; 4]> = (0..4)
                .map(|i| std::array::from_fn(|e| a.rd(w, t, (rb + i) * self.ld + c + e)))
                .collect();
            for (j, accj) in acc.iter_mut().enumerate() {
                let bv: [f32; 4] =
                    std::array::from_fn(|e| b.rd(w, t, (tx + 8 * (j0 + j)) * self.ld + c + e));
                for (i, ai) in av.iter().enumerate() {
                    let mut x = accj[i];
                    for e in 0..4 {
                        x = ai[e].mul_add(bv[e], x);
                    }
                    accj[i] = x;
                }
            }
            c += 4;
        }
        acc // acc[j][i]
    }

    /// sab_ds_half: own entries P ← P·(dP − D).
    #[allow(clippy::too_many_arguments)]
    fn ds_half(
        &self,
        w: &Warps,
        t: usize,
        sp: &mut Smem<f32>,
        a: &mut Smem<f32>,
        b: &mut Smem<f32>,
        j0: usize,
        drow: &[f32; 4],
        dcol: Option<&mut Smem<f32>>,
    ) {
        let (rb, tx) = place(t);
        let dp = self.dot(w, t, a, b, j0, 4);
        let mut dcol = dcol;
        for i in 0..4 {
            for (j, dpj) in dp.iter().enumerate() {
                let col = tx + 8 * (j0 + j);
                let dd = match dcol.as_mut() {
                    Some(m) => m.rd(w, t, col),
                    None => drow[i],
                };
                let e = (rb + i) * LDP + col;
                let p = sp.rd(w, t, e);
                sp.wr(w, t, e, p * (dpj[i] - dd));
            }
        }
    }

    /// sab_mm for thread t: out[i][c] += Σ_{k < kend} P[rb+i][k]·B[k][c], c = 16j + 2tx + e.
    fn mm(
        &self,
        w: &Warps,
        t: usize,
        p: &mut Smem<f32>,
        b: &mut Smem<f32>,
        kend: usize,
        out: &mut [Vec<f32>; 4],
    ) {
        let (rb, tx) = place(t);
        let mut k = 0;
        while k < kend {
            let p4: Vec<[f32; 4]> = (0..4)
                .map(|i| std::array::from_fn(|e| p.rd(w, t, (rb + i) * LDP + k + e)))
                .collect();
            for kk in 0..4 {
                for j in 0..self.dp / 16 {
                    for e in 0..2 {
                        let v = b.rd(w, t, (k + kk) * self.ld + 16 * j + 2 * tx + e);
                        for i in 0..4 {
                            let o = &mut out[i][2 * j + e];
                            *o = p4[i][kk].mul_add(v, *o);
                        }
                    }
                }
            }
            k += 4;
        }
    }
}

fn tile_end(s: usize, r0: usize) -> usize {
    let rem = s - r0;
    if rem >= TILE {
        TILE
    } else {
        (rem + 3) & !3
    }
}

/// The three self-attention kernels on the CPU: returns dqkv (NaN where nothing was written).
#[allow(clippy::too_many_arguments)]
pub fn emulate_self_bwd(
    qkv: &[f32],
    out: &[f32],
    dout: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    vec: bool,
) -> Vec<f32> {
    let hd = heads * d;
    let row3 = 3 * hd;
    let mut stats = vec![f32::NAN; 2 * b * heads * s];
    // Kernel 1: D.
    for r in 0..b * s * heads {
        let acc = (0..d).fold(0f32, |a, c| dout[r * d + c].mul_add(out[r * d + c], a));
        let (bq, head) = (r / heads, r % heads);
        let (bi, q) = (bq / s, bq % s);
        stats[(bi * heads + head) * s + q] = acc;
    }
    let dp = super::attention::dp_class(d).1;
    let tile = Tile {
        dp,
        ld: dp + 4,
        vec,
    };
    let sl2 = scale * LOG2E;
    let ntiles = s.div_ceil(TILE);
    let mut dqkv = vec![f32::NAN; b * s * row3];
    let op = |n: &'static str| Smem::new(n, TILE * (dp + 4), f32::NAN);
    let store =
        |dqkv: &mut Vec<f32>, off: usize, t: usize, o: &[Vec<f32>; 4], mul: f32, r0: usize| {
            let (rb, tx) = place(t);
            for (i, oi) in o.iter().enumerate() {
                let r = r0 + rb + i;
                if r >= s {
                    continue;
                }
                for j in 0..dp / 16 {
                    for e in 0..2 {
                        let c = 16 * j + 2 * tx + e;
                        if c < d {
                            dqkv[off + r * row3 + c] = oi[2 * j + e] * mul;
                        }
                    }
                }
            }
        };
    let zero = || -> Vec<[Vec<f32>; 4]> {
        (0..THREADS)
            .map(|_| std::array::from_fn(|_| vec![0f32; dp / 8]))
            .collect()
    };

    // Kernel 2: lse and dQ.
    for blk in 0..b * heads * ntiles {
        let (q0, bh) = ((blk % ntiles) * TILE, blk / ntiles);
        let (head, bi) = (bh % heads, bh / heads);
        let qoff = bi * s * row3 + head * d;
        let dooff = bi * s * hd + head * d;
        let mut w = Warps::new(THREADS);
        let (mut sq, mut sdo, mut sk, mut sv) = (op("sQ"), op("sdO"), op("sK"), op("sV"));
        let mut sp = Smem::new("sP", TILE * LDP, f32::NAN);
        tile.stage(&w, &mut sq, qkv, qoff, row3, q0, s, d);
        tile.stage(&w, &mut sdo, dout, dooff, hd, q0, s, d);
        let drow: Vec<[f32; 4]> = (0..THREADS)
            .map(|t| {
                std::array::from_fn(|i| {
                    let q = q0 + place(t).0 + i;
                    if q < s {
                        stats[bh * s + q]
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let (mut m_run, mut l_run) = (
            vec![[f32::NEG_INFINITY; 4]; THREADS],
            vec![[0f32; 4]; THREADS],
        );
        let barrier = |ms: &mut [&mut Smem<f32>]| ms.iter_mut().for_each(|m| m.barrier());
        let mut key0 = 0;
        while key0 < s {
            barrier(&mut [&mut sq, &mut sdo, &mut sk, &mut sv, &mut sp]);
            tile.stage(&w, &mut sk, qkv, qoff + hd, row3, key0, s, d);
            barrier(&mut [&mut sq, &mut sdo, &mut sk, &mut sv, &mut sp]);
            let accs: Vec<Vec<[f32; 4]>> = (0..THREADS)
                .map(|t| tile.dot(&w, t, &mut sq, &mut sk, 0, 8))
                .collect();
            for i in 0..4 {
                let mut x = vec![[0f32; 8]; THREADS];
                let mut mx: Vec<f32> = vec![f32::NEG_INFINITY; THREADS];
                for t in 0..THREADS {
                    let tx = place(t).1;
                    for j in 0..8 {
                        x[t][j] = if key0 + tx + 8 * j < s {
                            accs[t][j][i] * sl2
                        } else {
                            f32::NEG_INFINITY
                        };
                        mx[t] = mx[t].max(x[t][j]);
                    }
                }
                group_butterfly(&mut mx, f32::max);
                for t in 0..THREADS {
                    let m_new = m_run[t][i].max(mx[t]);
                    let mut l = l_run[t][i] * (m_run[t][i] - m_new).exp2();
                    for j in 0..8 {
                        l += (x[t][j] - m_new).exp2();
                    }
                    m_run[t][i] = m_new;
                    l_run[t][i] = l;
                }
            }
            key0 += TILE;
        }
        let mut lse = vec![[0f32; 4]; THREADS];
        for i in 0..4 {
            let mut l: Vec<f32> = (0..THREADS).map(|t| l_run[t][i]).collect();
            group_butterfly(&mut l, |a, b| a + b);
            for t in 0..THREADS {
                lse[t][i] = m_run[t][i] + l[t].log2();
                let q = q0 + place(t).0 + i;
                if place(t).1 == 0 && q < s {
                    stats[(b * heads + bh) * s + q] = lse[t][i];
                }
            }
        }
        let mut o = zero();
        let mut key0 = 0;
        while key0 < s {
            barrier(&mut [&mut sq, &mut sdo, &mut sk, &mut sv, &mut sp]);
            tile.stage(&w, &mut sk, qkv, qoff + hd, row3, key0, s, d);
            tile.stage(&w, &mut sv, qkv, qoff + 2 * hd, row3, key0, s, d);
            barrier(&mut [&mut sq, &mut sdo, &mut sk, &mut sv, &mut sp]);
            for t in 0..THREADS {
                let (rb, tx) = place(t);
                let sc = tile.dot(&w, t, &mut sq, &mut sk, 0, 8);
                for i in 0..4 {
                    for (j, scj) in sc.iter().enumerate() {
                        let kc = tx + 8 * j;
                        let p = if key0 + kc < s {
                            (scj[i] * sl2 - lse[t][i]).exp2()
                        } else {
                            0.0
                        };
                        sp.wr(&w, t, (rb + i) * LDP + kc, p);
                    }
                }
                tile.ds_half(&w, t, &mut sp, &mut sdo, &mut sv, 0, &drow[t], None);
                tile.ds_half(&w, t, &mut sp, &mut sdo, &mut sv, 4, &drow[t], None);
            }
            w.syncwarp();
            for (t, ot) in o.iter_mut().enumerate() {
                tile.mm(&w, t, &mut sp, &mut sk, tile_end(s, key0), ot);
            }
            key0 += TILE;
        }
        for (t, ot) in o.iter().enumerate() {
            store(&mut dqkv, qoff, t, ot, scale, q0);
        }
    }

    // Kernel 3: dK, dV.
    for blk in 0..b * heads * ntiles {
        let (k0, bh) = ((blk % ntiles) * TILE, blk / ntiles);
        let (head, bi) = (bh % heads, bh / heads);
        let qoff = bi * s * row3 + head * d;
        let dooff = bi * s * hd + head * d;
        let mut w = Warps::new(THREADS);
        let (mut sk, mut sv, mut sq, mut sdo) = (op("sK"), op("sV"), op("sQ"), op("sdO"));
        let mut sp = Smem::new("sP", TILE * LDP, f32::NAN);
        let (mut sl, mut sd) = (
            Smem::new("sL", TILE, f32::NAN),
            Smem::new("sD", TILE, f32::NAN),
        );
        tile.stage(&w, &mut sk, qkv, qoff + hd, row3, k0, s, d);
        tile.stage(&w, &mut sv, qkv, qoff + 2 * hd, row3, k0, s, d);
        let (mut dk, mut dv) = (zero(), zero());
        let mut q0 = 0;
        while q0 < s {
            for m in [
                &mut sk, &mut sv, &mut sq, &mut sdo, &mut sp, &mut sl, &mut sd,
            ] {
                m.barrier();
            }
            tile.stage(&w, &mut sq, qkv, qoff, row3, q0, s, d);
            tile.stage(&w, &mut sdo, dout, dooff, hd, q0, s, d);
            for t in 0..TILE {
                let q = q0 + t;
                sl.wr(
                    &w,
                    t,
                    t,
                    if q < s {
                        stats[(b * heads + bh) * s + q]
                    } else {
                        0.0
                    },
                );
                sd.wr(&w, t, t, if q < s { stats[bh * s + q] } else { 0.0 });
            }
            for m in [
                &mut sk, &mut sv, &mut sq, &mut sdo, &mut sp, &mut sl, &mut sd,
            ] {
                m.barrier();
            }
            for t in 0..THREADS {
                let (rb, tx) = place(t);
                let st = tile.dot(&w, t, &mut sk, &mut sq, 0, 8);
                for i in 0..4 {
                    for (j, stj) in st.iter().enumerate() {
                        let qc = tx + 8 * j;
                        let p = if q0 + qc < s {
                            (stj[i] * sl2 - sl.rd(&w, t, qc)).exp2()
                        } else {
                            0.0
                        };
                        sp.wr(&w, t, (rb + i) * LDP + qc, p);
                    }
                }
            }
            w.syncwarp();
            let qend = tile_end(s, q0);
            for (t, dvt) in dv.iter_mut().enumerate() {
                tile.mm(&w, t, &mut sp, &mut sdo, qend, dvt);
            }
            w.syncwarp();
            for t in 0..THREADS {
                tile.ds_half(
                    &w,
                    t,
                    &mut sp,
                    &mut sv,
                    &mut sdo,
                    0,
                    &[0.0; 4],
                    Some(&mut sd),
                );
                tile.ds_half(
                    &w,
                    t,
                    &mut sp,
                    &mut sv,
                    &mut sdo,
                    4,
                    &[0.0; 4],
                    Some(&mut sd),
                );
            }
            w.syncwarp();
            for (t, dkt) in dk.iter_mut().enumerate() {
                tile.mm(&w, t, &mut sp, &mut sq, qend, dkt);
            }
            q0 += TILE;
        }
        for t in 0..THREADS {
            store(&mut dqkv, qoff + hd, t, &dk[t], scale, k0);
            store(&mut dqkv, qoff + 2 * hd, t, &dv[t], 1.0, k0);
        }
    }
    dqkv
}

/// `cab_body` on the CPU (8 warps × 32 lanes, 4 keys per warp step): returns (dq, dkv).
#[allow(clippy::too_many_arguments)]
pub fn emulate_cross_bwd(
    q: &[f32],
    kv: &[f32],
    dout: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    const WARPS: usize = 8;
    const U: usize = 4;
    let (hd, row) = (heads * d, 2 * heads * d);
    let sl2 = scale * LOG2E;
    let (mut dq, mut dkv) = (vec![f32::NAN; b * hd], vec![f32::NAN; b * t * row]);
    let butterfly = |v: &mut [f32; 32]| {
        let mut off = 16;
        while off > 0 {
            let prev = *v;
            for l in 0..32 {
                v[l] = prev[l] + prev[l ^ off];
            }
            off /= 2;
        }
    };
    for blk in 0..b * heads {
        let (head, bi) = (blk % heads, blk / heads);
        let qoff = bi * hd + head * d;
        let koff = bi * t * row + head * d;
        let w = Warps::new(WARPS * 32);
        let (mut s_m, mut s_l, mut s_a) = (
            Smem::new("s_m", WARPS, f32::NAN),
            Smem::new("s_l", WARPS, f32::NAN),
            Smem::new("s_a", WARPS, f32::NAN),
        );
        let mut s_o = Smem::new("s_o", WARPS * 128, f32::NAN);
        let col = |l: usize, i: usize| l + 32 * i;
        let qr = |l: usize, i: usize| {
            if col(l, i) < d {
                q[qoff + col(l, i)]
            } else {
                0.0
            }
        };
        let dr = |l: usize, i: usize| {
            if col(l, i) < d {
                dout[qoff + col(l, i)]
            } else {
                0.0
            }
        };
        // Scores of keys j0 … j0+3 for one warp: (kr[u][lane][i], x[u], y[u]).
        let scores = |j0: usize| {
            let mut kr = vec![[[0f32; 4]; 32]; U];
            let (mut x, mut y) = ([0f32; U], [0f32; U]);
            for u in 0..U {
                let j = j0 + u;
                let (mut dq_l, mut dy_l) = ([0f32; 32], [0f32; 32]);
                for l in 0..32 {
                    for i in 0..4 {
                        let ok = j < t && col(l, i) < d;
                        let kvv = if ok {
                            kv[koff + j * row + col(l, i)]
                        } else {
                            0.0
                        };
                        let vv = if ok {
                            kv[koff + hd + j * row + col(l, i)]
                        } else {
                            0.0
                        };
                        kr[u][l][i] = kvv;
                        dq_l[l] = qr(l, i).mul_add(kvv, dq_l[l]);
                        dy_l[l] = dr(l, i).mul_add(vv, dy_l[l]);
                    }
                }
                butterfly(&mut dq_l);
                butterfly(&mut dy_l);
                x[u] = if j < t {
                    dq_l[0] * sl2
                } else {
                    f32::NEG_INFINITY
                };
                y[u] = dy_l[0];
            }
            (kr, x, y)
        };
        for warp in 0..WARPS {
            let (mut m, mut l, mut a) = (f32::NEG_INFINITY, 0f32, 0f32);
            let mut j0 = warp * U;
            while j0 < t {
                let (_, x, y) = scores(j0);
                let mx = x.iter().fold(m, |acc, &v| acc.max(v));
                let alpha = (m - mx).exp2();
                let (mut ps, mut pa) = (0f32, 0f32);
                for u in 0..U {
                    let p = (x[u] - mx).exp2();
                    ps += p;
                    pa = p.mul_add(y[u], pa);
                }
                m = mx;
                l = l.mul_add(alpha, ps);
                a = a.mul_add(alpha, pa);
                j0 += WARPS * U;
            }
            s_m.wr(&w, warp * 32, warp, m);
            s_l.wr(&w, warp * 32, warp, l);
            s_a.wr(&w, warp * 32, warp, a);
        }
        s_m.barrier();
        s_l.barrier();
        s_a.barrier();
        // Every thread combines; thread 0's view stands for all (same reads, same order).
        let mut mm = s_m.rd(&w, 0, 0);
        for wi in 1..WARPS {
            mm = mm.max(s_m.rd(&w, 0, wi));
        }
        let (mut ll, mut aa) = (0f32, 0f32);
        for wi in 0..WARPS {
            let f = (s_m.rd(&w, 0, wi) - mm).exp2();
            ll = s_l.rd(&w, 0, wi).mul_add(f, ll);
            aa = s_a.rd(&w, 0, wi).mul_add(f, aa);
        }
        let inv_l = 1.0 / ll;
        let dsum = aa * inv_l;
        for warp in 0..WARPS {
            let mut dqw = [[0f32; 4]; 32];
            let mut j0 = warp * U;
            while j0 < t {
                let (kr, x, y) = scores(j0);
                for u in 0..U {
                    let j = j0 + u;
                    if j >= t {
                        continue;
                    }
                    let p = (x[u] - mm).exp2() * inv_l;
                    let ds = scale * p * (y[u] - dsum);
                    for (lane, dql) in dqw.iter_mut().enumerate() {
                        for i in 0..4 {
                            let c = col(lane, i);
                            if c < d {
                                dkv[koff + j * row + c] = ds * qr(lane, i);
                                dkv[koff + hd + j * row + c] = p * dr(lane, i);
                            }
                            dql[i] = ds.mul_add(kr[u][lane][i], dql[i]);
                        }
                    }
                }
                j0 += WARPS * U;
            }
            for (lane, dql) in dqw.iter().enumerate() {
                for (i, v) in dql.iter().enumerate() {
                    if col(lane, i) < d {
                        s_o.wr(&w, warp * 32 + lane, warp * 128 + col(lane, i), *v);
                    }
                }
            }
        }
        s_o.barrier();
        for c in 0..d {
            let mut acc = s_o.rd(&w, c, c);
            for wi in 1..WARPS {
                acc += s_o.rd(&w, c, wi * 128 + c);
            }
            dq[qoff + c] = acc;
        }
    }
    (dq, dkv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{
        cross_attention_1q_bwd_cpu, self_attention_packed_bwd_cpu, self_attention_packed_cpu,
    };
    use crate::tensor::rel_err;

    fn vals(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp
            })
            .collect()
    }

    /// Coverage (every dqkv element written), no races, and agreement with the twin.
    #[test]
    fn self_attention_bwd_mirror_matches_the_cpu_twin() {
        for (n, &(b, s, heads, d, vec)) in [
            (1usize, 1usize, 1usize, 32usize, true),
            (2, 7, 2, 20, true),
            (1, 33, 1, 3, false),
            (1, 70, 1, 24, false),
            (1, 130, 1, 16, true),
            (1, 70, 1, 40, true),
            (1, 66, 1, 72, false),
            (1, 20, 2, 100, true),
        ]
        .iter()
        .enumerate()
        {
            let scale = (d as f32).powf(-0.5);
            let qkv = vals(b * s * 3 * heads * d, 7 + n as u64, 2.0);
            let dout = vals(b * s * heads * d, 70 + n as u64, 1.0);
            let mut out = vec![0f32; b * s * heads * d];
            self_attention_packed_cpu(&qkv, b, s, heads, d, scale, &mut out);
            let mut want = vec![0f32; qkv.len()];
            self_attention_packed_bwd_cpu(&qkv, b, s, heads, d, scale, &dout, &mut want);
            let got = emulate_self_bwd(&qkv, &out, &dout, b, s, heads, d, scale, vec);
            // Infinite if an element stayed NaN. fp32 throughout, other orders, exp2 vs the
            // twin's exp_f32.
            let e = rel_err(&got, &want);
            assert!(e < 2e-5, "b{b} s{s} h{heads} d{d}: {e}");
        }
    }

    #[test]
    fn cross_attention_bwd_mirror_matches_the_cpu_twin() {
        for (n, &(b, t, heads, d)) in [
            (1usize, 1usize, 1usize, 32usize),
            (2, 7, 3, 20),
            (1, 48, 2, 100),
            (1, 37, 1, 128),
        ]
        .iter()
        .enumerate()
        {
            let scale = (d as f32).powf(-0.5);
            let q = vals(b * heads * d, 3 + n as u64, 2.0);
            let kv = vals(b * t * 2 * heads * d, 30 + n as u64, 2.0);
            let dout = vals(b * heads * d, 300 + n as u64, 1.0);
            let (mut wq, mut wkv) = (vec![0f32; q.len()], vec![0f32; kv.len()]);
            cross_attention_1q_bwd_cpu(&q, &kv, b, t, heads, d, scale, &dout, &mut wq, &mut wkv);
            let (gq, gkv) = emulate_cross_bwd(&q, &kv, &dout, b, t, heads, d, scale);
            let (eq, ekv) = (rel_err(&gq, &wq), rel_err(&gkv, &wkv));
            assert!(
                eq < 2e-5 && ekv < 2e-5,
                "b{b} t{t} h{heads} d{d}: {eq} {ekv}"
            );
        }
    }
}
