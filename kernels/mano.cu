// mano.cu — the MANO layer forward (SPEC §5.3–5.4, smplx `lbs` with rotation-matrix input), fp32.
//
// CPU twin: mano_fwd_cpu in src/ops/mano.rs (read its rigid_chain comment first). Launchers and
// the host-side packing of the model buffers: src/cuda/mano.rs.
//
// Formulation (the twin's, chosen so that the identity pose with zero betas reproduces
// v_template bit for bit):
//   v_shaped = v_template + shapedirs·β                               [V,3]
//   v_posed  = v_shaped + posedirs·vec(R[1:] − I)                     [V,3]
//   J        = J_regressor·v_shaped                                   [16,3]
//   D_0      = [R_0 − I | t_0],  t_j = J_j − R_j·J_j
//   D_j      = [R_j − I + D_p^R·R_j | t_j + D_p^R·t_j + D_p^t]        (p = parent(j) < j)
//   J'_j     = J_j + D_j^R·J_j + D_j^t                                (posed joints)
//   v        = v_posed + (Σ_j w_vj·D_j)·(v_posed, 1)                  (LBS)
//   keypoints[joint_slot[j]] = J'_j, keypoints[tip_slot[k]] = v[tips[k]]   (OpenPose order)
// D_j = A_j − [I | 0] is smplx's skinning transform minus the identity. For R_j = I every D_j
// is exactly 0, every product with it is ±0, and x + ±0 == x, so the rest pose is exact.
//
// Two host-side precomputations (src/cuda/mano.rs, in f64, once per model upload):
//   * J is linear in β, so J_regressor is folded into the shape basis:
//       J = j_template + j_shapedirs·β,  j_template = J_regressor·v_template [16,3],
//       j_shapedirs = J_regressor·shapedirs [16,3,nb].
//     The per-sample joint regression (16×V multiply-adds per coordinate) becomes 16·3·nb, and
//     v_shaped never has to be stored. The twin regresses J from its f32 v_shaped; the two agree
//     to f32 rounding (≈1e-7 relative).
//   * shapedirs is transposed to shapedirs_t [nb, 3V] so that, like posedirs [135, 3V], a row of
//     the blend basis is contiguous over the columns 3v + c that a warp's threads own.
//
// Kernels, launched in this order on one stream:
//
//   mano_chain_fwd_f32 — the kinematic chain. One thread per sample, 32 samples per block
//     (grid ⌈b/32⌉). Each thread computes J from β, then walks the 16 joints in order exactly as
//     the twin's rigid_chain, keeping every D_j in shared memory (dsm[q][thread], q = 12j + e,
//     row stride 33 floats so both the per-thread writes and the block's transposed write-out
//     are bank-conflict free), and writes the 16 posed joints straight to their OpenPose slots
//     of `keypoints`. Finally the block copies its D tile to the workspace chain_d [b,16,12],
//     coalesced. The only barrier is the one before that copy, reached by every thread.
//
//   mano_skin_fwd_f32 — blend shapes + LBS + fingertips, fused, so v_posed never leaves the
//     registers. Block (x, y) owns the S samples s0 = S·x .. s0+S−1 (S = `tile`, 16 or 4,
//     picked by the launcher: 16 when ⌈b/16⌉·⌈V/blockDim⌉ blocks fill every SM, else 4) and the
//     blockDim.x vertices v = y·blockDim.x + thread (160 threads: V = 778 is 5 chunks, 97 % of
//     the threads busy). Steps:
//       1. load into shared memory the feature tile feat[k][s] (k < nb: β_k; k ≥ nb: element
//          k − nb of vec(R[1:] − I); rows of S floats, zero for samples past b) and the D tile
//          dsm[s][16·12] from chain_d (zero past b); then one __syncthreads. Threads with
//          v ≥ V return after it: no barrier follows.
//       2. acc[c][s] = v_template[3v+c]; for each of the nb + 135 basis rows k:
//          acc[c][s] += feat[k][s] · basis[k][3v+c]. The thread reads 3 basis values (the warp's
//          3·32 consecutive floats, one L2 line set per row) and S/4 float4 broadcasts of feat,
//          and does 3·S FMAs: each basis row is read once per tile of S samples.
//       3. per sample s < b: T = Σ_j w_vj·D_j (D from shared memory, all threads of the block read
//          the same address: broadcasts), v = p + T·(p, 1) with p = acc[.][s]; write verts and,
//          if v is a fingertip vertex, its keypoint slot.
//     Adding the blend terms straight onto v_template instead of forming the two blend sums
//     first (as the twin does) changes only the rounding (≈1e-7 relative); for zero betas and
//     identity rotations every term is ±0 and acc stays exactly v_template.
//
// Sizes for MANO (V = 778, nb = 10), per sample:
//   FLOPs: pose blend 2·135·2334 = 630 k, shape blend 2·10·2334 = 47 k, LBS 778·(2·16·12 + 3·8)
//   = 317 k, joints + chain ≈ 4 k: ≈ 1.0 MFLOP (b = 1024: ≈ 1.0 GFLOP).
//   DRAM bytes: rotmats 576 + betas 40 in, verts 9 336 + keypoints 252 out, D 768 written and
//   read back once: ≈ 11.7 KB (b = 1024: ≈ 12 MB). The model constants (posedirs 1.26 MB,
//   shapedirs 93 KB, lbs_weights 50 KB, v_template 9 KB) are read from DRAM once and then from
//   L2 once per tile: ≈ 1.41 MB / S ≈ 88 KB of L2 traffic per sample at S = 16. The kernel is
//   bound by FP32 issue (≈ 1 GFLOP) and L2 bandwidth, not by DRAM.
//
// Determinism: no atomics, every sum has a fixed order; each output element is written by one
// thread. 64-bit offsets (size_t) wherever a product involves the batch size.

#include "common.cuh"

// Keep in sync with src/cuda/mano.rs.
#define MANO_J 16                      // joints
#define MANO_KP 21                     // output keypoints
#define MANO_POSE 135                  // pose features, 15 joints × 9
#define MANO_D 12                      // floats of one D_j (3×4, row-major)
#define MANO_DS (MANO_J * MANO_D)      // floats of D per sample (192)
#define MANO_MAX_BETAS 16              // largest nb the kernels accept
#define MANO_CHAIN_THREADS 32          // samples per chain block
#define MANO_SKIN_THREADS 160          // vertices per skin block
#define MANO_MAX_TILE 16               // largest samples-per-block tile of the skin kernel

// Layout of the int32 index buffer (ManoDevice::indices).
#define MANO_IDX_PARENTS 0             // [16] parent of each joint (entry 0 unused), parent < j
#define MANO_IDX_TIPS 16               // [5]  fingertip vertices, < V
#define MANO_IDX_TIP_SLOTS 21          // [5]  keypoint slot of each fingertip, < 21
#define MANO_IDX_JOINT_SLOTS 26        // [16] keypoint slot of each joint, < 21

// ---------------------------------------------------------------------------------------------
// The kinematic chain.
//
// rotmats [b,16,3,3], betas [b,nb], j_template [16,3], j_shapedirs [16,3,nb], indices (above)
// → chain_d [b,16,12] (D_j row-major 3×4) and the 16 joint slots of keypoints [b,21,3].
// Launch: blockDim.x = MANO_CHAIN_THREADS, gridDim.x = ⌈b/32⌉, 1 ≤ nb ≤ MANO_MAX_BETAS.
extern "C" __global__ void __launch_bounds__(MANO_CHAIN_THREADS)
mano_chain_fwd_f32(const float* __restrict__ rotmats, const float* __restrict__ betas,
                   const float* __restrict__ j_template, const float* __restrict__ j_shapedirs,
                   const int* __restrict__ indices, float* __restrict__ chain_d,
                   float* __restrict__ keypoints, int b, int nb) {
    // dsm[q][t] = element q = 12·j + e of D_j for the block's sample t.
    __shared__ float dsm[MANO_DS][MANO_CHAIN_THREADS + 1];
    const int tid = threadIdx.x;
    const int s0 = blockIdx.x * MANO_CHAIN_THREADS;  // < b, so no overflow
    const int ns = min(MANO_CHAIN_THREADS, b - s0);   // samples of this block, >= 1

    if (tid < ns) {
        const size_t s = (size_t)s0 + tid;
        float beta[MANO_MAX_BETAS];
#pragma unroll
        for (int l = 0; l < MANO_MAX_BETAS; l++) beta[l] = (l < nb) ? betas[s * nb + l] : 0.0f;
        const float* rs = rotmats + s * (MANO_J * 9);
        float* kp = keypoints + s * (MANO_KP * 3);

        for (int j = 0; j < MANO_J; j++) {
            float r[9];
#pragma unroll
            for (int e = 0; e < 9; e++) r[e] = rs[j * 9 + e];
            // Rest joint J_j = j_template + j_shapedirs·β.
            float jj[3];
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
            // L_j = [R_j | t_j], t_j = J_j − R_j·J_j; D_j = [R_j − I | t_j] (+ parent terms).
            float t[3];
#pragma unroll
            for (int row = 0; row < 3; row++) {
                t[row] = jj[row] - (r[row * 3] * jj[0] + r[row * 3 + 1] * jj[1] +
                                    r[row * 3 + 2] * jj[2]);
            }
            float dj[MANO_D];
#pragma unroll
            for (int row = 0; row < 3; row++) {
#pragma unroll
                for (int c = 0; c < 3; c++) {
                    dj[row * 4 + c] = r[row * 3 + c] - ((row == c) ? 1.0f : 0.0f);
                }
                dj[row * 4 + 3] = t[row];
            }
            if (j > 0) {
                // parent < j (checked on upload), so its D is already in dsm, written by this
                // same thread: no barrier needed.
                const int p = indices[MANO_IDX_PARENTS + j];
#pragma unroll
                for (int row = 0; row < 3; row++) {
                    const float pr0 = dsm[p * MANO_D + row * 4 + 0][tid];
                    const float pr1 = dsm[p * MANO_D + row * 4 + 1][tid];
                    const float pr2 = dsm[p * MANO_D + row * 4 + 2][tid];
                    const float pt = dsm[p * MANO_D + row * 4 + 3][tid];
#pragma unroll
                    for (int c = 0; c < 3; c++) {
                        dj[row * 4 + c] += pr0 * r[c] + pr1 * r[3 + c] + pr2 * r[6 + c];
                    }
                    dj[row * 4 + 3] += pr0 * t[0] + pr1 * t[1] + pr2 * t[2] + pt;
                }
            }
#pragma unroll
            for (int e = 0; e < MANO_D; e++) dsm[j * MANO_D + e][tid] = dj[e];
            // Posed joint J'_j = J_j + D_j^R·J_j + D_j^t, straight to its OpenPose slot.
            const int slot = indices[MANO_IDX_JOINT_SLOTS + j];
#pragma unroll
            for (int row = 0; row < 3; row++) {
                kp[slot * 3 + row] = jj[row] + (dj[row * 4] * jj[0] + dj[row * 4 + 1] * jj[1] +
                                                dj[row * 4 + 2] * jj[2] + dj[row * 4 + 3]);
            }
        }
    }
    __syncthreads();  // every thread gets here; dsm rows of samples < ns are complete

    // Coalesced copy of the block's D tile: chain_d[s0 + i/192][i%192] = dsm[i%192][i/192].
    float* out = chain_d + (size_t)s0 * MANO_DS;
    for (int i = tid; i < ns * MANO_DS; i += MANO_CHAIN_THREADS) {
        const int sl = i / MANO_DS;
        out[i] = dsm[i - sl * MANO_DS][sl];
    }
}

// ---------------------------------------------------------------------------------------------
// Blend shapes + LBS + fingertips.

// acc[c][s] += f[s] · basis_c for one basis row (f: S floats of shared memory, 16-byte aligned).
template <int S>
__device__ __forceinline__ void mano_blend_row(float (&acc)[3][S], float b0, float b1, float b2,
                                               const float* f) {
#pragma unroll
    for (int q = 0; q < S / 4; q++) {
        const float4 x = reinterpret_cast<const float4*>(f)[q];
        const float xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc[0][4 * q + i] = fmaf(xs[i], b0, acc[0][4 * q + i]);
            acc[1][4 * q + i] = fmaf(xs[i], b1, acc[1][4 * q + i]);
            acc[2][4 * q + i] = fmaf(xs[i], b2, acc[2][4 * q + i]);
        }
    }
}

// One tile of S samples × blockDim.x vertices; see the file header. feat, dsm: shared memory of
// at least (nb + 135)·S and S·192 floats, 16-byte aligned; tip_sm: 10 ints of shared memory.
template <int S>
__device__ __forceinline__ void mano_skin_tile(
    const float* __restrict__ rotmats, const float* __restrict__ betas,
    const float* __restrict__ v_template, const float* __restrict__ shapedirs_t,
    const float* __restrict__ posedirs, const float* __restrict__ lbs_weights,
    const float* __restrict__ chain_d, const int* __restrict__ indices,
    float* __restrict__ verts, float* __restrict__ keypoints, int b, int nv, int nb,
    float* feat, float* dsm, int* tip_sm) {
    static_assert(S % 4 == 0 && S <= MANO_MAX_TILE, "tile must be a multiple of 4, <= 16");
    const int tid = threadIdx.x;
    const int nt = blockDim.x;
    const int s0 = blockIdx.x * S;         // < b
    const int ns = min(S, b - s0);         // samples of this tile, >= 1
    const int nk = nb + MANO_POSE;         // basis rows

    // 1. Stage the features and D of the tile (coalesced global reads; zero past b).
    for (int i = tid; i < S * nk; i += nt) {
        const int s = i / nk;
        const int k = i - s * nk;
        float f = 0.0f;
        if (s < ns) {
            const size_t gs = (size_t)s0 + s;
            if (k < nb) {
                f = betas[gs * nb + k];
            } else {
                const int q = k - nb;  // element q of vec(R[1:] − I): joint 1 + q/9, entry q%9
                const int e = q % 9;
                f = rotmats[gs * (MANO_J * 9) + 9 + q] - ((e % 4 == 0) ? 1.0f : 0.0f);
            }
        }
        feat[k * S + s] = f;
    }
    const float* dsrc = chain_d + (size_t)s0 * MANO_DS;
    for (int i = tid; i < S * MANO_DS; i += nt) {
        dsm[i] = (i < ns * MANO_DS) ? dsrc[i] : 0.0f;
    }
    if (tid < 5) {
        tip_sm[tid] = indices[MANO_IDX_TIPS + tid];
        tip_sm[5 + tid] = indices[MANO_IDX_TIP_SLOTS + tid];
    }
    __syncthreads();

    const int v = blockIdx.y * nt + tid;
    if (v >= nv) return;  // no barrier below

    // 2. v_posed for the tile: acc = v_template + Σ_k feat[k]·basis[k] (basis = shapedirs_t rows,
    //    then posedirs rows), basis columns 3v .. 3v+2.
    const size_t n3 = 3 * (size_t)nv;
    const size_t col = 3 * (size_t)v;
    float acc[3][S];
    {
        const float t0 = v_template[col], t1 = v_template[col + 1], t2 = v_template[col + 2];
#pragma unroll
        for (int s = 0; s < S; s++) {
            acc[0][s] = t0;
            acc[1][s] = t1;
            acc[2][s] = t2;
        }
    }
    {
        const float* bs = shapedirs_t + col;
        for (int l = 0; l < nb; l++) {
            const float* row = bs + (size_t)l * n3;
            mano_blend_row<S>(acc, row[0], row[1], row[2], feat + l * S);
        }
    }
    {
        const float* bp = posedirs + col;
        const float* fp = feat + nb * S;
#pragma unroll 5
        for (int q = 0; q < MANO_POSE; q++) {
            const float* row = bp + (size_t)q * n3;
            mano_blend_row<S>(acc, row[0], row[1], row[2], fp + q * S);
        }
    }

    // 3. LBS per sample, fingertips.
    float w[MANO_J];
    {
        // lbs_weights is the model's own allocation (256-byte aligned) and rows are 64 bytes.
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
    int tip_mask = 0;
#pragma unroll
    for (int k = 0; k < 5; k++) tip_mask |= (tip_sm[k] == v) ? (1 << k) : 0;

#pragma unroll
    for (int s = 0; s < S; s++) {
        if (s < ns) {  // uniform over the block
            const float* d = dsm + s * MANO_DS;
            float t[MANO_D];
#pragma unroll
            for (int e = 0; e < MANO_D; e++) t[e] = 0.0f;
#pragma unroll
            for (int j = 0; j < MANO_J; j++) {
                const float4* dj = reinterpret_cast<const float4*>(d + j * MANO_D);
                const float4 r0 = dj[0], r1 = dj[1], r2 = dj[2];
                const float de[MANO_D] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y,
                                          r1.z, r1.w, r2.x, r2.y, r2.z, r2.w};
#pragma unroll
                for (int e = 0; e < MANO_D; e++) t[e] = fmaf(w[j], de[e], t[e]);
            }
            const float p[3] = {acc[0][s], acc[1][s], acc[2][s]};
            float o[3];
#pragma unroll
            for (int r = 0; r < 3; r++) {
                o[r] = p[r] + (t[r * 4] * p[0] + t[r * 4 + 1] * p[1] + t[r * 4 + 2] * p[2] +
                               t[r * 4 + 3]);
            }
            const size_t gs = (size_t)s0 + s;
            float* out = verts + (gs * nv + v) * 3;
            out[0] = o[0];
            out[1] = o[1];
            out[2] = o[2];
            if (tip_mask) {
#pragma unroll
                for (int k = 0; k < 5; k++) {
                    if (tip_mask & (1 << k)) {
                        float* kp = keypoints + gs * (MANO_KP * 3) + tip_sm[5 + k] * 3;
                        kp[0] = o[0];
                        kp[1] = o[1];
                        kp[2] = o[2];
                    }
                }
            }
        }
    }
}

// rotmats [b,16,3,3], betas [b,nb], v_template [V,3], shapedirs_t [nb,3V], posedirs [135,3V],
// lbs_weights [V,16] (16-byte aligned), chain_d [b,16,12] (from mano_chain_fwd_f32), indices
// (above) → verts [b,V,3] and the 5 fingertip slots of keypoints [b,21,3].
// Launch: blockDim.x <= MANO_SKIN_THREADS (any count; the launcher uses 160), gridDim.x =
// ⌈b/tile⌉, gridDim.y = ⌈V/blockDim.x⌉, tile ∈ {4, 16}, 1 ≤ nb ≤ MANO_MAX_BETAS.
extern "C" __global__ void __launch_bounds__(MANO_SKIN_THREADS)
mano_skin_fwd_f32(const float* __restrict__ rotmats, const float* __restrict__ betas,
                  const float* __restrict__ v_template, const float* __restrict__ shapedirs_t,
                  const float* __restrict__ posedirs, const float* __restrict__ lbs_weights,
                  const float* __restrict__ chain_d, const int* __restrict__ indices,
                  float* __restrict__ verts, float* __restrict__ keypoints, int b, int nv, int nb,
                  int tile) {
    __shared__ __align__(16) float feat[(MANO_MAX_BETAS + MANO_POSE) * MANO_MAX_TILE];
    __shared__ __align__(16) float dsm[MANO_MAX_TILE * MANO_DS];
    __shared__ int tip_sm[10];
    if (tile == 16) {
        mano_skin_tile<16>(rotmats, betas, v_template, shapedirs_t, posedirs, lbs_weights,
                           chain_d, indices, verts, keypoints, b, nv, nb, feat, dsm, tip_sm);
    } else {
        mano_skin_tile<4>(rotmats, betas, v_template, shapedirs_t, posedirs, lbs_weights,
                          chain_d, indices, verts, keypoints, b, nv, nb, feat, dsm, tip_sm);
    }
}
