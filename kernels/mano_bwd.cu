// mano_bwd.cu — the MANO layer backward (SPEC §5.3–5.4), fp32.
//
// CPU twin: mano_bwd_cpu in src/ops/mano/bwd.rs (read its module doc first: the exact derivative
// of the D_j form of the chain and of the skinning that kernels/mano.cu computes). Launcher:
// CudaBackend::mano_bwd in src/cuda/backward/mano.rs; host mirror of every loop below:
// src/cuda/backward/mirror_mano.rs (keep the two in step).
//
// Inputs per sample: rotmats [16,3,3], betas [nb], d_keypoints [21,3] (OpenPose order) and
// optionally d_verts [V,3]; outputs (OVERWRITTEN): d_rotmats [16,3,3], d_betas [nb]. The model
// buffers are the forward's (ManoDevice, src/cuda/mano.rs): v_template [3V], shapedirs_t [nb,3V],
// posedirs [135,3V], lbs_weights [V,16], j_template [16,3] and j_shapedirs [16,3,nb] (J_regressor
// folded in on upload), indices (parents, fingertips and keypoint slots).
//
// The gradient, per sample (g_x = ∂L/∂x):
//   fingertips and vertices: g_v = d_verts[v] (+ the keypoint gradient if v is a fingertip);
//     g_{v_p} = g_v + T_v^{Rᵀ}·g_v, g_{D_j} += w_vj·[g_v·v_pᵀ | g_v]  (T_v = Σ_j w_vj·D_j)
//   posed joints: g_{D_j} += [g·J_jᵀ | g], g_{J_j} = g + D_j^{Rᵀ}·g
//   chain, children before parents (as the twin); g_{R_j} and g_{J_j} complete at joint j
//   g_β = Σ_j g_{J_j}·j_shapedirs[j] + Σ_v g_{v_p}·shapedirs[v]       (J = j_template + j_shapedirs·β)
//   g_{R_j} += g_p[(j−1)·9 ..], g_p = Σ_v g_{v_p}·posedirs[:, v]     (pose blend shapes, j ≥ 1)
// The twin forms g_{v_s} = J_regressorᵀ·g_J + g_{v_p} and multiplies by shapedirs; with J_regressor
// folded into j_shapedirs (f64 on upload) the J part is 16·3·nb multiply-adds instead of 3V·nb.
//
// Two paths, chosen by the launcher:
//
//   keypoints only (d_verts absent; training: no loss reads the vertices) — one kernel,
//     mano_chain_bwd_f32. g_v is non-zero only at the 5 fingertip vertices, so every vertex sum
//     above has 5 terms and the whole backward of a sample is ~10 k multiply-adds: one thread
//     per sample does it all, no vertex loop, no scratch.
//
//   with d_verts — three kernels:
//     mano_rechain_bwd_f32: the chain's D_j per sample → chain_d [b,16,12] (the forward's
//       workspace buffer), exactly as mano_chain_fwd_f32 computes it;
//     mano_skin_bwd_f32: the vertex sums over d_verts, blocked: block (x, y) = samples
//       4x .. 4x+3 × vertices 160y .. 160y+159 writes, per sample, the partial sums over its
//       160 vertices of g_{D_j} (192 floats), g_β (nb) and g_p (135) to
//       partial[y][s] (row of pl = 192 + nb + 135 floats);
//     mano_chain_bwd_f32 as above, which in addition adds the partial rows of its sample in
//       chunk order y = 0, 1, ... (a fixed two-stage reduction: no atomics).
//   The fingertip keypoint gradients are always handled by mano_chain_bwd_f32 (the split of g_v
//   into d_verts and keypoint parts is exact: everything is linear in g_v).
//
// ---------------------------------------------------------------------------------------------
// mano_chain_bwd_f32 — one thread per sample, MBW_CHAIN_THREADS = 32 samples per block (grid
//   ⌈b/32⌉). D_j and the accumulating g_{D_j} live in shared memory, dsm[q][t] and gsm[q][t]
//   (q = 12j + e, thread t's own column: conflict-free, and no thread ever touches another's
//   column, so there is no barrier in the kernel and threads past b return at once). 2 × 24 KiB
//   = 48 KiB static shared memory. Steps, in the twin's order:
//     1. D_j for the 16 joints (mbw_chain_d, the forward chain's expressions).
//     2. g_{D_j} ← Σ_y partial[y][s][12j+e] (0 without d_verts).
//     3. the 5 fingertips: v_posed (v_template + shapedirs·β + posedirs·(R − I), the forward
//        skin kernel's order), T, g_{v_p} (kept in registers), g_{D_j} += w_j·[g·pᵀ | g].
//     4. posed joints: g_{D_j} += [g·J_jᵀ | g].
//     5. chain, j = 15 … 0: g_{R_j}, the parent's g_{D_p}, g_{J_j} (posed term recomputed),
//        g_β += g_{J_j}·j_shapedirs[j], g_{R_j} += g_p of joint j (fingertip columns + partials);
//        writes d_rotmats[s][j].
//     6. g_β += fingertip columns of shapedirs + partials; writes d_betas[s].
//   Rest joints J_j are recomputed from β where needed (16·3·nb multiply-adds) instead of stored.
//   Cost (MANO): ≈ 10 k FMAs and ≈ 4 k loads per sample (the model's loads hit the same address
//   in every lane: L1-resident broadcasts), latency-bound with one warp per SM up to
//   b = 32·#SMs: estimated 10–20 µs at any batch up to ≈ 4 k (not measured yet). The big loops
//   are kept rolled (#pragma unroll 1) where unrolling made ptxas spill.
//
// mano_rechain_bwd_f32 — one thread per sample, 32 per block; D in shared memory dsm[q][t] with
//   row stride 33, then a coalesced block copy to chain_d (as mano_chain_fwd_f32).
//
// mano_skin_bwd_f32 — block (x, y): the MBW_TILE = 4 samples s0 = 4x .. and the 160 vertices
//   v0 = 160y .. (grid ⌈b/4⌉ × ⌈V/160⌉, 160 threads). Phases (barriers between):
//     1. stage the blend features feat[k][s] (β, then vec(R[1:] − I)) and the tile's D (zero past
//        b) in shared memory, as mano_skin_fwd_f32.
//     2. thread t = vertex v0 + t (< V): v_posed for the 4 samples (forward's blend loop), w_v,
//        then per sample T, g = d_verts, g_{v_p} = g + T^{Rᵀ}·g; stores g, v_posed and g_{v_p}
//        in shared memory gsm/psm/vsm[(3t + c)·4 + s] (zeros for samples past b).
//     3. g_D: unit u = (s, j, r) < 4·16·3 (threads stride over the 192 units): 4 sums over the
//        chunk's vertices in vertex order, Σ w_vj·g_r·(p_0, p_1, p_2, 1) → partial[y][s][12j + 4r ..].
//     4. g_β and g_p as one small GEMM [4 × 3·160]·[3·160 × nb+135]: thread k < nb + 135 owns
//        basis row k (shapedirs_t rows, then posedirs rows) and 4 accumulators; the chunk's 480
//        columns go through shared memory in stages of 32 (bsm[k][c], row stride 33: each warp
//        loads 32 consecutive floats of a row; each thread reads its own row conflict-free and
//        the 4 g_{v_p} of a column as one float4 broadcast), in column order.
//   The sums inside a chunk run in vertex/column order and the chunks are added in chunk order
//   by mano_chain_bwd_f32, so the result does not depend on the tile, the grid or the device.
//   Shared memory 48 460 B static. Cost (MANO): the forward's blend (≈ 0.7 MFLOP/sample) again
//   plus ≈ 0.7 MFLOP for the two vertex sums; the basis is read from L2 twice per tile of 4
//   samples (≈ 0.7 MB per sample of L2 traffic) — this path is not the training path.
//
// Numerics: fp32 throughout (as the twin). Every sum is over ≤ 3·160 terms inside a chunk, then
// over ≤ ⌈V/160⌉ chunk partials, so rounding stays ~1e-6 of the largest gradient entry (the twin
// sums 3V terms in its GEMM order); the GPU test's bound is 1e-4. fp64 would buy nothing at
// these sizes: the inputs themselves are fp32 and the twin is fp32.
//
// Determinism: no atomics; every output element is written by one thread once, every sum has a
// fixed order. 64-bit offsets wherever a product involves the batch size.

#include "common.cuh"

// Keep in sync with kernels/mano.cu and src/cuda/mano.rs.
#define MANO_J 16                  // joints
#define MANO_KP 21                 // output keypoints
#define MANO_POSE 135              // pose features, 15 joints × 9
#define MANO_D 12                  // floats of one D_j (3×4, row-major)
#define MANO_DS (MANO_J * MANO_D)  // floats of D per sample (192)
#define MANO_MAX_BETAS 16          // largest nb the kernels accept
#define MANO_IDX_PARENTS 0         // [16] parent of each joint (entry 0 unused), parent < j
#define MANO_IDX_TIPS 16           // [5]  fingertip vertices, < V
#define MANO_IDX_TIP_SLOTS 21      // [5]  keypoint slot of each fingertip, < 21
#define MANO_IDX_JOINT_SLOTS 26    // [16] keypoint slot of each joint, < 21

// Keep in sync with src/cuda/backward/mano.rs.
#define MBW_CHAIN_THREADS 32       // samples per block of the chain kernels
#define MBW_SKIN_THREADS 160       // vertices per block (one chunk) of mano_skin_bwd_f32
#define MBW_TILE 4                 // samples per block of mano_skin_bwd_f32
#define MBW_BCOLS 32               // basis columns per shared-memory stage
#define MBW_MAX_K (MANO_MAX_BETAS + MANO_POSE)  // basis rows, at most

// Rest joint J_j = j_template[j] + j_shapedirs[j]·β (the forward chain's expression).
__device__ __forceinline__ void mbw_rest_joint(int j, const float (&beta)[MANO_MAX_BETAS],
                                               const float* __restrict__ j_template,
                                               const float* __restrict__ j_shapedirs, int nb,
                                               float (&jj)[3]) {
#pragma unroll
    for (int c = 0; c < 3; c++) {
        const float* js = j_shapedirs + (j * 3 + c) * nb;
        float a = j_template[j * 3 + c];
#pragma unroll
        for (int l = 0; l < MANO_MAX_BETAS; l++) {
            if (l < nb) a = fmaf(js[l], beta[l], a);
        }
        jj[c] = a;
    }
}

// t_j = J_j − R_j·J_j.
__device__ __forceinline__ void mbw_chain_offset(const float (&r)[9], const float (&jj)[3],
                                                 float (&t)[3]) {
#pragma unroll
    for (int row = 0; row < 3; row++) {
        t[row] = jj[row] - (r[row * 3] * jj[0] + r[row * 3 + 1] * jj[1] + r[row * 3 + 2] * jj[2]);
    }
}

// The 16 D_j of one sample (rs: its 16 rotations) into d[q·ld], q = 12j + e, exactly as
// mano_chain_fwd_f32 (the twin's rigid_chain). Reads back only entries this thread wrote.
__device__ __forceinline__ void mbw_chain_d(const float* __restrict__ rs,
                                            const float (&beta)[MANO_MAX_BETAS],
                                            const float* __restrict__ j_template,
                                            const float* __restrict__ j_shapedirs,
                                            const int* __restrict__ indices, int nb, float* d,
                                            int ld) {
#pragma unroll 1
    for (int j = 0; j < MANO_J; j++) {
        float r[9];
#pragma unroll
        for (int e = 0; e < 9; e++) r[e] = rs[j * 9 + e];
        float jj[3], t[3];
        mbw_rest_joint(j, beta, j_template, j_shapedirs, nb, jj);
        mbw_chain_offset(r, jj, t);
        float dj[MANO_D];
#pragma unroll
        for (int row = 0; row < 3; row++) {
#pragma unroll
            for (int c = 0; c < 3; c++) dj[row * 4 + c] = r[row * 3 + c] - ((row == c) ? 1.0f : 0.0f);
            dj[row * 4 + 3] = t[row];
        }
        if (j > 0) {
            const int p = indices[MANO_IDX_PARENTS + j];  // < j: already in d
#pragma unroll
            for (int row = 0; row < 3; row++) {
                const float pr0 = d[(p * MANO_D + row * 4 + 0) * ld];
                const float pr1 = d[(p * MANO_D + row * 4 + 1) * ld];
                const float pr2 = d[(p * MANO_D + row * 4 + 2) * ld];
                const float pt = d[(p * MANO_D + row * 4 + 3) * ld];
#pragma unroll
                for (int c = 0; c < 3; c++) {
                    dj[row * 4 + c] += pr0 * r[c] + pr1 * r[3 + c] + pr2 * r[6 + c];
                }
                dj[row * 4 + 3] += pr0 * t[0] + pr1 * t[1] + pr2 * t[2] + pt;
            }
        }
#pragma unroll
        for (int e = 0; e < MANO_D; e++) d[(j * MANO_D + e) * ld] = dj[e];
    }
}

__device__ __forceinline__ void mbw_load_betas(const float* __restrict__ betas, size_t s, int nb,
                                               float (&beta)[MANO_MAX_BETAS]) {
#pragma unroll
    for (int l = 0; l < MANO_MAX_BETAS; l++) beta[l] = (l < nb) ? betas[s * nb + l] : 0.0f;
}

// gv = g[k] for a runtime k < 5 (an unrolled select, so g stays in registers).
__device__ __forceinline__ void mbw_pick(const float (&g)[5][3], int k, float (&gv)[3]) {
#pragma unroll
    for (int c = 0; c < 3; c++) gv[c] = g[0][c];
#pragma unroll
    for (int kk = 1; kk < 5; kk++) {
        if (kk == k) {
#pragma unroll
            for (int c = 0; c < 3; c++) gv[c] = g[kk][c];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rotmats [b,16,3,3], betas [b,nb], j_template, j_shapedirs, indices → chain_d [b,16,12].
// Launch: blockDim.x = MBW_CHAIN_THREADS, gridDim.x = ⌈b/32⌉, 1 ≤ nb ≤ MANO_MAX_BETAS.
extern "C" __global__ void __launch_bounds__(MBW_CHAIN_THREADS)
mano_rechain_bwd_f32(const float* __restrict__ rotmats, const float* __restrict__ betas,
                     const float* __restrict__ j_template, const float* __restrict__ j_shapedirs,
                     const int* __restrict__ indices, float* __restrict__ chain_d, int b, int nb) {
    __shared__ float dsm[MANO_DS][MBW_CHAIN_THREADS + 1];
    const int tid = threadIdx.x;
    const int s0 = blockIdx.x * MBW_CHAIN_THREADS;  // < b
    const int ns = min(MBW_CHAIN_THREADS, b - s0);
    if (tid < ns) {
        const size_t s = (size_t)s0 + tid;
        float beta[MANO_MAX_BETAS];
        mbw_load_betas(betas, s, nb, beta);
        mbw_chain_d(rotmats + s * (MANO_J * 9), beta, j_template, j_shapedirs, indices, nb,
                    &dsm[0][tid], MBW_CHAIN_THREADS + 1);
    }
    __syncthreads();  // every thread gets here
    float* out = chain_d + (size_t)s0 * MANO_DS;
    for (int i = tid; i < ns * MANO_DS; i += MBW_CHAIN_THREADS) {
        const int sl = i / MANO_DS;
        out[i] = dsm[i - sl * MANO_DS][sl];
    }
}

// ---------------------------------------------------------------------------------------------
// Per-tile vertex sums over d_verts. rotmats, betas, v_template, shapedirs_t, posedirs,
// lbs_weights (16-byte aligned rows), chain_d (mano_rechain_bwd_f32), d_verts [b,V,3] →
// partial [⌈V/160⌉, b, pl], pl = 192 + nb + 135: per (chunk, sample) g_D (192), g_β (nb), g_p (135).
// Launch: blockDim.x = MBW_SKIN_THREADS, grid (⌈b/4⌉, ⌈V/160⌉), 1 ≤ nb ≤ MANO_MAX_BETAS.
extern "C" __global__ void __launch_bounds__(MBW_SKIN_THREADS)
mano_skin_bwd_f32(const float* __restrict__ rotmats, const float* __restrict__ betas,
                  const float* __restrict__ v_template, const float* __restrict__ shapedirs_t,
                  const float* __restrict__ posedirs, const float* __restrict__ lbs_weights,
                  const float* __restrict__ chain_d, const float* __restrict__ d_verts,
                  float* __restrict__ partial, int b, int nv, int nb) {
    constexpr int S = MBW_TILE;
    constexpr int NT = MBW_SKIN_THREADS;
    __shared__ __align__(16) float feat[MBW_MAX_K * S];  // [k][s]
    __shared__ __align__(16) float dsm[S * MANO_DS];     // [s][q]
    __shared__ __align__(16) float gsm[3 * NT * S];      // g_v      [3t + c][s]
    __shared__ __align__(16) float psm[3 * NT * S];      // v_posed  [3t + c][s]
    __shared__ __align__(16) float vsm[3 * NT * S];      // g_{v_p}  [3t + c][s]
    __shared__ float bsm[MBW_MAX_K * (MBW_BCOLS + 1)];   // basis stage [k][c]

    const int tid = threadIdx.x;
    const int s0 = blockIdx.x * S;            // < b
    const int ns = min(S, b - s0);            // >= 1
    const int v0 = blockIdx.y * NT;           // < nv
    const int nvc = min(NT, nv - v0);         // vertices of this chunk, >= 1
    const int nk = nb + MANO_POSE;            // basis rows
    const int pl = MANO_DS + nk;              // floats of one partial row
    const size_t n3 = 3 * (size_t)nv;

    // 1. Features and D of the tile (zero past b).
    for (int i = tid; i < S * nk; i += NT) {
        const int s = i / nk;
        const int k = i - s * nk;
        float f = 0.0f;
        if (s < ns) {
            const size_t gs = (size_t)s0 + s;
            if (k < nb) {
                f = betas[gs * nb + k];
            } else {
                const int q = k - nb;
                const int e = q % 9;
                f = rotmats[gs * (MANO_J * 9) + 9 + q] - ((e % 4 == 0) ? 1.0f : 0.0f);
            }
        }
        feat[k * S + s] = f;
    }
    const float* dsrc = chain_d + (size_t)s0 * MANO_DS;
    for (int i = tid; i < S * MANO_DS; i += NT) dsm[i] = (i < ns * MANO_DS) ? dsrc[i] : 0.0f;
    __syncthreads();

    // 2. Per vertex: v_posed, T, g_{v_p}.
    if (tid < nvc) {
        const int v = v0 + tid;
        const size_t col = 3 * (size_t)v;
        float acc[3][S];
#pragma unroll
        for (int c = 0; c < 3; c++) {
            const float t0 = v_template[col + c];
#pragma unroll
            for (int s = 0; s < S; s++) acc[c][s] = t0;
        }
        for (int k = 0; k < nk; k++) {
            const float* row = (k < nb) ? shapedirs_t + (size_t)k * n3 + col
                                        : posedirs + (size_t)(k - nb) * n3 + col;
            const float4 x = *reinterpret_cast<const float4*>(feat + k * S);
            const float xs[S] = {x.x, x.y, x.z, x.w};
            const float b0 = row[0], b1 = row[1], b2 = row[2];
#pragma unroll
            for (int s = 0; s < S; s++) {
                acc[0][s] = fmaf(xs[s], b0, acc[0][s]);
                acc[1][s] = fmaf(xs[s], b1, acc[1][s]);
                acc[2][s] = fmaf(xs[s], b2, acc[2][s]);
            }
        }
        float w[MANO_J];
        {
            const float4* w4 = reinterpret_cast<const float4*>(lbs_weights + (size_t)v * MANO_J);
#pragma unroll
            for (int q = 0; q < MANO_J / 4; q++) {
                const float4 x = w4[q];
                w[4 * q] = x.x;
                w[4 * q + 1] = x.y;
                w[4 * q + 2] = x.z;
                w[4 * q + 3] = x.w;
            }
        }
#pragma unroll
        for (int s = 0; s < S; s++) {
            float g[3] = {0.0f, 0.0f, 0.0f}, gv[3] = {0.0f, 0.0f, 0.0f};
            if (s < ns) {
                const float* d = dsm + s * MANO_DS;
                float t[MANO_D];
#pragma unroll
                for (int e = 0; e < MANO_D; e++) t[e] = 0.0f;
#pragma unroll
                for (int j = 0; j < MANO_J; j++) {
#pragma unroll
                    for (int e = 0; e < MANO_D; e++) t[e] = fmaf(w[j], d[j * MANO_D + e], t[e]);
                }
                const float* gd = d_verts + (((size_t)s0 + s) * nv + v) * 3;
#pragma unroll
                for (int c = 0; c < 3; c++) g[c] = gd[c];
#pragma unroll
                for (int c = 0; c < 3; c++) {
                    gv[c] = g[c] + (t[c] * g[0] + t[4 + c] * g[1] + t[8 + c] * g[2]);
                }
            }
#pragma unroll
            for (int c = 0; c < 3; c++) {
                const int o = (3 * tid + c) * S + s;
                gsm[o] = g[c];
                psm[o] = (s < ns) ? acc[c][s] : 0.0f;
                vsm[o] = gv[c];
            }
        }
    }
    __syncthreads();

    // 3. g_D partials: unit (s, j, r), Σ_v w_vj·g_r·(p_0, p_1, p_2, 1) in vertex order.
    for (int u = tid; u < S * MANO_J * 3; u += NT) {
        const int s = u / (MANO_J * 3);
        const int rem = u - s * (MANO_J * 3);
        const int j = rem / 3;
        const int r = rem - j * 3;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (int vl = 0; vl < nvc; vl++) {
            const float wg = lbs_weights[(size_t)(v0 + vl) * MANO_J + j] * gsm[(3 * vl + r) * S + s];
            a0 = fmaf(wg, psm[(3 * vl + 0) * S + s], a0);
            a1 = fmaf(wg, psm[(3 * vl + 1) * S + s], a1);
            a2 = fmaf(wg, psm[(3 * vl + 2) * S + s], a2);
            a3 += wg;
        }
        if (s < ns) {
            float* out = partial + ((size_t)blockIdx.y * b + s0 + s) * pl + j * MANO_D + r * 4;
            out[0] = a0;
            out[1] = a1;
            out[2] = a2;
            out[3] = a3;
        }
    }

    // 4. g_β and g_p partials: thread k owns basis row k; the chunk's columns in stages of 32.
    const int ncol = 3 * nvc;
    const size_t c_base = 3 * (size_t)v0;
    float acc[S];
#pragma unroll
    for (int s = 0; s < S; s++) acc[s] = 0.0f;
    for (int c0 = 0; c0 < ncol; c0 += MBW_BCOLS) {  // uniform over the block
        for (int i = tid; i < nk * MBW_BCOLS; i += NT) {
            const int k = i / MBW_BCOLS;
            const int c = i - k * MBW_BCOLS;
            const int cl = c0 + c;
            float x = 0.0f;
            if (cl < ncol) {
                const float* row = (k < nb) ? shapedirs_t + (size_t)k * n3
                                            : posedirs + (size_t)(k - nb) * n3;
                x = row[c_base + cl];
            }
            bsm[k * (MBW_BCOLS + 1) + c] = x;
        }
        __syncthreads();
        if (tid < nk) {
            const int cmax = min(MBW_BCOLS, ncol - c0);
            for (int c = 0; c < cmax; c++) {
                const float bk = bsm[tid * (MBW_BCOLS + 1) + c];
                const float4 g4 = *reinterpret_cast<const float4*>(vsm + (c0 + c) * S);
                acc[0] = fmaf(bk, g4.x, acc[0]);
                acc[1] = fmaf(bk, g4.y, acc[1]);
                acc[2] = fmaf(bk, g4.z, acc[2]);
                acc[3] = fmaf(bk, g4.w, acc[3]);
            }
        }
        __syncthreads();  // bsm is rewritten by the next stage
    }
    if (tid < nk) {
        for (int s = 0; s < ns; s++) {
            partial[((size_t)blockIdx.y * b + s0 + s) * pl + MANO_DS + tid] = acc[s];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The per-sample backward: rotmats [b,16,3,3], betas [b,nb], d_keypoints [b,21,3], the model
// buffers, partial [nchunk, b, 192 + nb + 135] (nullptr when nchunk == 0) → d_rotmats
// [b,16,3,3], d_betas [b,nb] (overwritten).
// Launch: blockDim.x = MBW_CHAIN_THREADS, gridDim.x = ⌈b/32⌉, 1 ≤ nb ≤ MANO_MAX_BETAS.
extern "C" __global__ void __launch_bounds__(MBW_CHAIN_THREADS)
mano_chain_bwd_f32(const float* __restrict__ rotmats, const float* __restrict__ betas,
                   const float* __restrict__ d_keypoints, const float* __restrict__ v_template,
                   const float* __restrict__ shapedirs_t, const float* __restrict__ posedirs,
                   const float* __restrict__ lbs_weights, const float* __restrict__ j_template,
                   const float* __restrict__ j_shapedirs, const int* __restrict__ indices,
                   const float* __restrict__ partial, int nchunk, float* __restrict__ d_rotmats,
                   float* __restrict__ d_betas, int b, int nv, int nb) {
    __shared__ float dsm[MANO_DS][MBW_CHAIN_THREADS];  // D_j       [12j + e][thread]
    __shared__ float gsm[MANO_DS][MBW_CHAIN_THREADS];  // g_{D_j}   [12j + e][thread]
    const int tid = threadIdx.x;
    const int si = blockIdx.x * MBW_CHAIN_THREADS + tid;
    if (si >= b) return;  // no barrier in this kernel
    const size_t s = (size_t)si;
    const size_t n3 = 3 * (size_t)nv;
    const int pl = MANO_DS + nb + MANO_POSE;
    const float* rs = rotmats + s * (MANO_J * 9);
    const float* gk = d_keypoints + s * (MANO_KP * 3);
    float beta[MANO_MAX_BETAS];
    mbw_load_betas(betas, s, nb, beta);

    // 1. The chain's D_j.
    mbw_chain_d(rs, beta, j_template, j_shapedirs, indices, nb, &dsm[0][tid], MBW_CHAIN_THREADS);

    // 2. g_D from the vertex partials (chunk order), or 0.
#pragma unroll 1
    for (int q = 0; q < MANO_DS; q++) {
        float a = 0.0f;
        for (int y = 0; y < nchunk; y++) a += partial[((size_t)y * b + s) * pl + q];
        gsm[q][tid] = a;
    }

    // 3. Fingertips.
    float gvp[5][3];
    // Not unrolled (unrolled, ptxas interleaves the 5 tips and spills); gvp stays in registers
    // through the unrolled select at the end of the body.
#pragma unroll 1
    for (int k = 0; k < 5; k++) {
        const int tk = indices[MANO_IDX_TIPS + k];
        const size_t col = 3 * (size_t)tk;
        const int slot = indices[MANO_IDX_TIP_SLOTS + k];
        float g[3], p[3];
#pragma unroll
        for (int c = 0; c < 3; c++) {
            g[c] = gk[slot * 3 + c];
            p[c] = v_template[col + c];
        }
#pragma unroll
        for (int l = 0; l < MANO_MAX_BETAS; l++) {
            if (l < nb) {
                const float* row = shapedirs_t + (size_t)l * n3 + col;
#pragma unroll
                for (int c = 0; c < 3; c++) p[c] = fmaf(beta[l], row[c], p[c]);
            }
        }
#pragma unroll 5
        for (int q = 0; q < MANO_POSE; q++) {
            const int e = q % 9;
            const float f = rs[9 + q] - ((e % 4 == 0) ? 1.0f : 0.0f);
            const float* row = posedirs + (size_t)q * n3 + col;
#pragma unroll
            for (int c = 0; c < 3; c++) p[c] = fmaf(f, row[c], p[c]);
        }
        const float* w = lbs_weights + (size_t)tk * MANO_J;
        float t[MANO_D];
#pragma unroll
        for (int e = 0; e < MANO_D; e++) t[e] = 0.0f;
#pragma unroll 1
        for (int j = 0; j < MANO_J; j++) {
            const float wj = w[j];
#pragma unroll
            for (int e = 0; e < MANO_D; e++) t[e] = fmaf(wj, dsm[j * MANO_D + e][tid], t[e]);
        }
        float gt[MANO_D];
#pragma unroll
        for (int r = 0; r < 3; r++) {
#pragma unroll
            for (int c = 0; c < 3; c++) gt[r * 4 + c] = g[r] * p[c];
            gt[r * 4 + 3] = g[r];
        }
#pragma unroll
        for (int c = 0; c < 3; c++) {
            const float gv = g[c] + (t[c] * g[0] + t[4 + c] * g[1] + t[8 + c] * g[2]);
#pragma unroll
            for (int kk = 0; kk < 5; kk++) {
                if (kk == k) gvp[kk][c] = gv;
            }
        }
#pragma unroll 1
        for (int j = 0; j < MANO_J; j++) {
            const float wj = w[j];
#pragma unroll
            for (int e = 0; e < MANO_D; e++) gsm[j * MANO_D + e][tid] += wj * gt[e];
        }
    }

    // 4. Posed joints J'_j = J_j + D_j^R·J_j + D_j^t: g_D[j] += [g·J_jᵀ | g].
#pragma unroll 1
    for (int j = 0; j < MANO_J; j++) {
        const int slot = indices[MANO_IDX_JOINT_SLOTS + j];
        float jj[3];
        mbw_rest_joint(j, beta, j_template, j_shapedirs, nb, jj);
#pragma unroll
        for (int r = 0; r < 3; r++) {
            const float gp = gk[slot * 3 + r];
#pragma unroll
            for (int c = 0; c < 3; c++) gsm[j * MANO_D + r * 4 + c][tid] += gp * jj[c];
            gsm[j * MANO_D + r * 4 + 3][tid] += gp;
        }
    }

    // 5. The chain, children before parents (parents[j] < j).
    float gb[MANO_MAX_BETAS];
#pragma unroll
    for (int l = 0; l < MANO_MAX_BETAS; l++) gb[l] = 0.0f;
#pragma unroll 1
    for (int j = MANO_J - 1; j >= 0; j--) {
        float r[9], jj[3], t[3], g[MANO_D], gr[9], gj[3];
#pragma unroll
        for (int e = 0; e < 9; e++) r[e] = rs[j * 9 + e];
        mbw_rest_joint(j, beta, j_template, j_shapedirs, nb, jj);
        mbw_chain_offset(r, jj, t);
#pragma unroll
        for (int e = 0; e < MANO_D; e++) g[e] = gsm[j * MANO_D + e][tid];
        // The posed joint's g_J = g + D_j^{Rᵀ}·g.
        {
            const int slot = indices[MANO_IDX_JOINT_SLOTS + j];
            float gp[3], dj[9];
#pragma unroll
            for (int c = 0; c < 3; c++) gp[c] = gk[slot * 3 + c];
#pragma unroll
            for (int row = 0; row < 3; row++) {
#pragma unroll
                for (int c = 0; c < 3; c++) dj[row * 3 + c] = dsm[j * MANO_D + row * 4 + c][tid];
            }
#pragma unroll
            for (int c = 0; c < 3; c++) {
                gj[c] = gp[c] + (dj[c] * gp[0] + dj[3 + c] * gp[1] + dj[6 + c] * gp[2]);
            }
        }
        // D_j^R ∋ R_j − I, D_j^t ∋ t_j.
        float g_t[3] = {g[3], g[7], g[11]};
#pragma unroll
        for (int row = 0; row < 3; row++) {
#pragma unroll
            for (int c = 0; c < 3; c++) gr[row * 3 + c] = g[row * 4 + c];
        }
        if (j > 0) {
            // D_j ∋ D_p^R·[R_j | t_j] + [0 | D_p^t].
            const int p = indices[MANO_IDX_PARENTS + j];
            float dp[MANO_D];
#pragma unroll
            for (int e = 0; e < MANO_D; e++) dp[e] = dsm[p * MANO_D + e][tid];
#pragma unroll
            for (int k = 0; k < 3; k++) {
#pragma unroll
                for (int c = 0; c < 3; c++) {
                    gr[k * 3 + c] += dp[k] * g[c] + dp[4 + k] * g[4 + c] + dp[8 + k] * g[8 + c];
                }
                g_t[k] += dp[k] * g[3] + dp[4 + k] * g[7] + dp[8 + k] * g[11];
            }
#pragma unroll
            for (int row = 0; row < 3; row++) {
#pragma unroll
                for (int k = 0; k < 3; k++) {
                    gsm[p * MANO_D + row * 4 + k][tid] +=
                        g[row * 4] * r[k * 3] + g[row * 4 + 1] * r[k * 3 + 1] +
                        g[row * 4 + 2] * r[k * 3 + 2] + g[row * 4 + 3] * t[k];
                }
                gsm[p * MANO_D + row * 4 + 3][tid] += g[row * 4 + 3];
            }
        }
        // t_j = J_j − R_j·J_j.
#pragma unroll
        for (int c = 0; c < 3; c++) {
            gj[c] += g_t[c] - (r[c] * g_t[0] + r[3 + c] * g_t[1] + r[6 + c] * g_t[2]);
#pragma unroll
            for (int row = 0; row < 3; row++) gr[row * 3 + c] -= g_t[row] * jj[c];
        }
        // J_j = j_template + j_shapedirs·β.
#pragma unroll
        for (int c = 0; c < 3; c++) {
            const float* js = j_shapedirs + (j * 3 + c) * nb;
#pragma unroll
            for (int l = 0; l < MANO_MAX_BETAS; l++) {
                if (l < nb) gb[l] = fmaf(gj[c], js[l], gb[l]);
            }
        }
        // Pose blend shapes: R_j (j ≥ 1) is feature row (j − 1)·9 + e; g_p sums the fingertip
        // columns (tip-major, then coordinate) and then the vertex partials in chunk order.
        if (j > 0) {
            const float* rows = posedirs + (size_t)(j - 1) * 9 * n3;
            float a[9];
#pragma unroll
            for (int e = 0; e < 9; e++) a[e] = 0.0f;
#pragma unroll 1
            for (int k = 0; k < 5; k++) {
                float gv[3];
                mbw_pick(gvp, k, gv);
                const size_t col = 3 * (size_t)indices[MANO_IDX_TIPS + k];
#pragma unroll
                for (int e = 0; e < 9; e++) {
#pragma unroll
                    for (int c = 0; c < 3; c++) a[e] = fmaf(rows[e * n3 + col + c], gv[c], a[e]);
                }
            }
            for (int y = 0; y < nchunk; y++) {
                const float* pr = partial + ((size_t)y * b + s) * pl + MANO_DS + nb + (j - 1) * 9;
#pragma unroll
                for (int e = 0; e < 9; e++) a[e] += pr[e];
            }
#pragma unroll
            for (int e = 0; e < 9; e++) gr[e] += a[e];
        }
        float* out = d_rotmats + s * (MANO_J * 9) + j * 9;
#pragma unroll
        for (int e = 0; e < 9; e++) out[e] = gr[e];
    }

    // 6. Shape blend shapes: the fingertip columns (tip-major, then coordinate), then the vertex
    //    partials in chunk order.
#pragma unroll 1
    for (int k = 0; k < 5; k++) {
        float gv[3];
        mbw_pick(gvp, k, gv);
        const size_t col = 3 * (size_t)indices[MANO_IDX_TIPS + k];
#pragma unroll
        for (int l = 0; l < MANO_MAX_BETAS; l++) {
            if (l < nb) {
                const float* row = shapedirs_t + (size_t)l * n3 + col;
#pragma unroll
                for (int c = 0; c < 3; c++) gb[l] = fmaf(row[c], gv[c], gb[l]);
            }
        }
    }
    for (int y = 0; y < nchunk; y++) {
        const float* pr = partial + ((size_t)y * b + s) * pl + MANO_DS;
#pragma unroll
        for (int l = 0; l < MANO_MAX_BETAS; l++) {
            if (l < nb) gb[l] += pr[l];
        }
    }
#pragma unroll
    for (int l = 0; l < MANO_MAX_BETAS; l++) {
        if (l < nb) d_betas[s * nb + l] = gb[l];
    }
}
