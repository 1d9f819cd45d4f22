// attention_bwd.cu — backward of softmax attention, out = softmax(scale · q · kᵀ) · v per
// (batch, head), for the two shapes of the model (kernels/attention.cu is the forward). CPU
// twins: self_attention_packed_bwd_cpu and cross_attention_1q_bwd_cpu in src/ops/attention.rs.
// Launchers: src/cuda/backward/attention.rs.
//
// With P = softmax(scale·Q·Kᵀ) (row-wise), dP = dO·Vᵀ and D_i = rowsum(dO ∘ O)_i = Σ_j P_ij dP_ij:
//     dS = P ∘ (dP − D)   (D broadcast over the row),
//     dQ = scale · dS·K,   dK = scale · dSᵀ·Q,   dV = Pᵀ·dO.
// Input gradients are OVERWRITTEN (dqkv, dq, dkv); nothing is accumulated, so there is no
// parameter-gradient reduction here.
//
// Numerics: everything in fp32 (bf16 variants: bf16 storage widened to fp32 on load, results
// rounded to nearest even on store; scores, probabilities, statistics and accumulators stay
// fp32). The softmax is evaluated in base 2 as the forward does: x = scale·log2(e)·q·k,
// P = exp2(x − lse) with lse = m + log2(l) the row's log-sum-exp (m the row max, l = Σ exp2(x −
// m)). No atomics: every output element is written once, by one thread, with a sum over a fixed
// order; results are the same bits on every run.
//
// ------------------------------------------------------------------------------------------
// Self-attention (qkv [b, s, 3·heads·d] packed as in the forward, dout and out [b, s, heads·d],
// dqkv [b, s, 3·heads·d] overwritten), FlashAttention-2 style, three kernels:
//
//   1. self_attention_bwd_prep_{f32,bf16}(out, dout, stats, b, s, heads, d): D_i = dO_i · O_i.
//      One warp per (batch, query, head) row of d values (lanes stride the row, warp_sum),
//      grid-strided; writes stats[(bi·heads + head)·s + q]. 256 threads.
//   2. self_attention_bwd_dq_{f32,bf16}_d<DP>: one block of 128 threads per (batch, head, tile
//      of 64 queries), the query tile fastest (as the forward). Q and dO of the tile are staged
//      once. Pass 1 over the key tiles recomputes S = Q·Kᵀ and the online row max / sum, which
//      gives lse; it is written to stats[b·heads·s + (bi·heads + head)·s + q] for kernel 3.
//      Pass 2 over the key tiles: S again and P = exp2(x − lse) into the thread's own entries of
//      the score buffer; dP = dO·Vᵀ (4 columns at a time) turns them into dS = P ∘ (dP − D);
//      __syncwarp; dQ += dS·K. dQ·scale is written to the q slot of dqkv.
//   3. self_attention_bwd_dkv_{f32,bf16}_d<DP>: one block per (batch, head, tile of 64 keys).
//      K and V of the tile are staged once; for every query tile: Q, dO, lse and D staged;
//      Sᵀ = K·Qᵀ and Pᵀ = exp2(x − lse) into the score buffer; __syncwarp; dV += Pᵀ·dO;
//      __syncwarp; dPᵀ = V·dOᵀ turns the thread's own entries into dSᵀ = Pᵀ ∘ (dPᵀ − D);
//      __syncwarp; dK += dSᵀ·Q. dK·scale and dV are written to the k and v slots of dqkv.
//   Kernel 2 must run before kernel 3 (lse), kernel 1 before both (D); one stream orders them.
//
//   Thread layout (both tile kernels, fp32 CUDA-core FMAs, no TF32): 4 warps; thread (warp w,
//   lane = 8·ty + tx) owns tile rows rb … rb+3, rb = 16w + 4ty (query rows in kernel 2, key rows
//   in kernel 3), and
//     * in a 64 × 64 score tile, the columns tx + 8j, j < 8 (a 4 × 8 register tile; row-wise
//       max / sum over the 8 lanes tx: xor-shuffles 1, 2, 4), computed by sab_dot from two
//       row-major [64][DP+4] operands: per 4 values of the head dimension, 4 float4 of the A
//       rows (broadcast within a quarter-warp) and 8 float4 of the B rows (rows tx + 8j: row
//       stride DP/4 + 1 sixteen-byte units, an odd number, so the 8 lanes of a quarter-warp hit
//       8 distinct bank groups) for 128 FMAs;
//     * in a 64 × DP output tile, the columns 16j + 2tx + {0, 1}, j < DP/16 (sab_mm: per 4 keys
//       one float4 of the score row per row, one float2 of the B row per column pair:
//       conflict-free).
//   The 64 × 64 score buffer sP [64][68] is written and read by rows: a warp only touches its own
//   16 rows, so __syncwarp orders it; the __syncthreads at the top of each tile loop orders
//   every re-staging of a shared operand after the previous tile's readers.
//   Padding: rows ≥ s of every staged operand and head-dimension columns ≥ d are zero-filled
//   (DP ∈ {32, 64, 80, 128}, a template parameter); keys ≥ s get P = 0 (and −∞ in the
//   statistics); queries ≥ s get P = 0 in kernel 3 (and are never written). Any s ≥ 1 and
//   1 ≤ d ≤ 128.
//   Shared memory (dynamic, both tile kernels): 4 operands [64][DP+4] + sP [64][68] + lse and
//   D [64] each = (256·(DP+4) + 4480)·4 bytes: 103 936 at d = 80, 153 088 at d = 128 (above
//   48 KiB: the launcher raises the kernels' limit).
//   Registers (no spills): 168 (dq) / 254 (dkv) at DP = 80, up to 255 at DP = 128; with
//   __launch_bounds__(128, 2) and the shared memory above: 2 blocks per SM for DP ≥ 64, 3 at 32.
//   Work at the hamer shape (b 64, heads 16, s 192, d 80): S is computed three times, dP twice,
//   plus dQ, dK, dV: 14·s²·d FLOP per head (41 GFLOP in all) against the forward's 4·s²·d.
//   CPU mirrors (thread by thread, race-checked shared memory): src/cuda/backward/
//   mirror_attention.rs.
//
// ------------------------------------------------------------------------------------------
// Cross-attention with one query, cross_attention_1q_bwd_{f32,bf16}(q, kv, dout, dq, dkv, b, t,
//   heads, d, scale): a block of 256 threads (8 warps) per (batch, head), grid b·heads. Each warp
//   walks its own keys in groups of 4 (warp w: keys 4w … 4w+3, then 4w + 32, …); lane l holds
//   columns l, l+32, l+64, l+96 (< d). Pass 1: x_j = scale·log2e·q·k_j and y_j = dO·v_j (warp
//   butterflies), a per-warp online softmax that also carries a_w = Σ p_j·y_j; the 8 warps are
//   combined in warp order (every thread computes the same m, l, and Σ_j P_j·y_j = a / l).
//   Pass 2 recomputes x_j, y_j (same operations, same bits), P_j = exp2(x_j − m)/l,
//   dS_j = scale·P_j·(y_j − Σ_k P_k·y_k), writes dk_j = dS_j·q and dv_j = P_j·dO, and
//   accumulates dq_w = Σ_j dS_j·k_j per warp; the 8 partial dq go through shared memory and
//   thread c sums them in warp order. Any t ≥ 1 (the launcher handles t = 0) and d ≤ 128; no
//   shared memory that grows with t.

#include <stdint.h>

#include "bf16.cuh"
#include "common.cuh"

#define SAB_THREADS 128
#define SAB_WARPS 4
#define SAB_TILE 64   // queries (kernel 2) or keys (kernel 3) per block, and the inner tile
#define SAB_MAX_D 128
#define SAB_LDP 68    // row stride (floats) of the score buffer sP
#define SAB_PREP_THREADS 256

#define CAB_THREADS 256
#define CAB_WARPS 8
#define CAB_U 4

#define SAB_LOG2E 1.4426950408889634f

// ------------------------------------------------------------------------------------------
// Self-attention: building blocks.

// Stages rows r0 … r0+63 of one operand into dst [64][DP+4] (fp32): element (r, c) is
// src[(r0 + r)·row_stride + c] for r0 + r < s and c < d, zero otherwise (c < DP; the 4 padding
// columns of a row are never read). vec: 4-element vector loads (d % 4 == 0 and src aligned for
// them, so every row offset is aligned too).
template <int DP, typename T>
__device__ __forceinline__ void sab_stage(float* __restrict__ dst, const T* __restrict__ src,
                                          size_t row_stride, int r0, int s, int d, bool vec) {
    constexpr int LD = DP + 4;
    if (vec) {
        constexpr int C4 = DP / 4;
        for (int idx = threadIdx.x; idx < SAB_TILE * C4; idx += SAB_THREADS) {
            const int r = idx / C4;
            const int c = (idx % C4) * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r0 + r < s && c < d) v = load4(src + (size_t)(r0 + r) * row_stride + c);
            *reinterpret_cast<float4*>(dst + r * LD + c) = v;
        }
    } else {
        for (int idx = threadIdx.x; idx < SAB_TILE * DP; idx += SAB_THREADS) {
            const int r = idx / DP;
            const int c = idx % DP;
            dst[r * LD + c] =
                (r0 + r < s && c < d) ? to_f32(src[(size_t)(r0 + r) * row_stride + c]) : 0.0f;
        }
    }
}

// acc[i][j] = Σ_{c < DP} A[rb + i][c] · B[tx + 8·(j0 + j)][c], j < NJ   (A, B: [64][DP+4]).
template <int DP, int NJ>
__device__ __forceinline__ void sab_dot(const float* __restrict__ A, const float* __restrict__ B,
                                        int rb, int tx, int j0, float (&acc)[4][NJ]) {
    constexpr int LD = DP + 4;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = 0.0f;
    }
#pragma unroll 1
    for (int c = 0; c < DP; c += 4) {
        float4 a[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = *reinterpret_cast<const float4*>(A + (rb + i) * LD + c);
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const float4 bv =
                *reinterpret_cast<const float4*>(B + (tx + 8 * (j0 + j)) * LD + c);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float t = acc[i][j];
                t = fmaf(a[i].x, bv.x, t);
                t = fmaf(a[i].y, bv.y, t);
                t = fmaf(a[i].z, bv.z, t);
                t = fmaf(a[i].w, bv.w, t);
                acc[i][j] = t;
            }
        }
    }
}

// Replaces this thread's own 16 entries (rows rb + i, columns tx + 8·(j0 + j), j < 4) of the
// score buffer, P, by P·(dP − D), with dP = A·Bᵀ computed here (sab_dot, 4 columns at a time to
// keep register pressure down) and D[i][j] from drow (per row) or dcol (per column).
template <int DP>
__device__ __forceinline__ void sab_ds_half(float* __restrict__ sP, const float* __restrict__ A,
                                            const float* __restrict__ B, int rb, int tx, int j0,
                                            const float (&drow)[4],
                                            const float* __restrict__ dcol) {
    float dp[4][4];
    sab_dot<DP, 4>(A, B, rb, tx, j0, dp);
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int col = tx + 8 * (j0 + j);
            const float dd = dcol != nullptr ? dcol[col] : drow[i];
            float* e = sP + (rb + i) * SAB_LDP + col;
            *e = *e * (dp[i][j] - dd);
        }
    }
}

// out[i][j][e] += Σ_{k < kend} P[rb + i][k] · B[k][16j + 2tx + e]   (P: [64][68], B: [64][DP+4];
// kend a multiple of 4, <= 64).
template <int DP>
__device__ __forceinline__ void sab_mm(const float* __restrict__ P, const float* __restrict__ B,
                                       int rb, int tx, int kend, float (&out)[4][DP / 16][2]) {
    constexpr int LD = DP + 4;
    constexpr int NC = DP / 16;
    for (int k = 0; k < kend; k += 4) {
        float4 p4[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            p4[i] = *reinterpret_cast<const float4*>(P + (rb + i) * SAB_LDP + k);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int j = 0; j < NC; j++) {
                const float2 v =
                    *reinterpret_cast<const float2*>(B + (k + kk) * LD + 16 * j + 2 * tx);
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float p = kk == 0 ? p4[i].x : kk == 1 ? p4[i].y : kk == 2 ? p4[i].z
                                                                                    : p4[i].w;
                    out[i][j][0] = fmaf(p, v.x, out[i][j][0]);
                    out[i][j][1] = fmaf(p, v.y, out[i][j][1]);
                }
            }
        }
    }
}

template <int DP>
__device__ __forceinline__ void sab_zero(float (&o)[4][DP / 16][2]) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < DP / 16; j++) o[i][j][0] = o[i][j][1] = 0.0f;
    }
}

// Writes o·mul for the thread's rows r0 + rb + i < s and columns < d: dst[row·row_stride + c].
template <int DP, typename T>
__device__ __forceinline__ void sab_store(T* __restrict__ dst, size_t row_stride,
                                          const float (&o)[4][DP / 16][2], float mul, int r0,
                                          int rb, int tx, int s, int d) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = r0 + rb + i;
        if (r >= s) continue;
        T* row = dst + (size_t)r * row_stride;
#pragma unroll
        for (int j = 0; j < DP / 16; j++) {
            const int c = 16 * j + 2 * tx;
            if (c < d) row[c] = from_f32<T>(o[i][j][0] * mul);
            if (c + 1 < d) row[c + 1] = from_f32<T>(o[i][j][1] * mul);
        }
    }
}

// Rounds kept columns of a 64-wide tile starting at r0 up to a multiple of 4 (the scores beyond s
// are zero, as are the staged rows beyond s).
__device__ __forceinline__ int sab_tile_end(int s, int r0) {
    const int rem = s - r0;
    return rem >= SAB_TILE ? SAB_TILE : ((rem + 3) & ~3);
}

// Where a block's operands are: the per-(batch, head) bases of q, k, v, dout and the stats.
template <typename T>
struct SabHead {
    const T* q;
    const T* k;
    const T* v;
    const T* dout;
    size_t qkv_off;  // offset of q[bi, 0, head, 0] in qkv (and dqkv)
    size_t hd;       // heads·d
    int bh;          // bi·heads + head
};

template <typename T>
__device__ __forceinline__ SabHead<T> sab_head(const T* qkv, const T* dout, int bh, int s,
                                               int heads, int d) {
    SabHead<T> h;
    const int head = bh % heads;
    const int bi = bh / heads;
    h.hd = (size_t)heads * d;
    h.bh = bh;
    h.qkv_off = (size_t)bi * s * 3 * h.hd + (size_t)head * d;
    h.q = qkv + h.qkv_off;
    h.k = h.q + h.hd;
    h.v = h.q + 2 * h.hd;
    h.dout = dout + (size_t)bi * s * h.hd + (size_t)head * d;
    return h;
}

// ------------------------------------------------------------------------------------------
// Kernel 1: D = rowsum(dO ∘ O).

template <typename T>
__device__ __forceinline__ void sab_prep(const T* __restrict__ out, const T* __restrict__ dout,
                                         float* __restrict__ stats, int b, int s, int heads,
                                         int d) {
    const int lane = threadIdx.x % HC_WARP_SIZE;
    const long long rows = (long long)b * s * heads;
    const long long warps = (long long)gridDim.x * (blockDim.x / HC_WARP_SIZE);
    for (long long r = (long long)blockIdx.x * (blockDim.x / HC_WARP_SIZE) +
                       threadIdx.x / HC_WARP_SIZE;
         r < rows; r += warps) {
        const T* o = out + (size_t)r * d;  // row r = (bi·s + q)·heads + head
        const T* g = dout + (size_t)r * d;
        float acc = 0.0f;
        for (int c = lane; c < d; c += HC_WARP_SIZE) acc = fmaf(to_f32(g[c]), to_f32(o[c]), acc);
        acc = warp_sum(acc);
        if (lane == 0) {
            const long long bq = r / heads;  // bi·s + q
            const int head = (int)(r - bq * heads);
            const long long bi = bq / s;
            const int q = (int)(bq - bi * s);
            stats[((size_t)bi * heads + head) * s + q] = acc;
        }
    }
}

// out, dout: [b, s, heads·d]; stats: [2, b·heads, s] (D written here). Launch: 256 threads,
// any grid >= 1 (grid-strided warps).
extern "C" __global__ void __launch_bounds__(SAB_PREP_THREADS)
self_attention_bwd_prep_f32(const float* __restrict__ out, const float* __restrict__ dout,
                            float* __restrict__ stats, int b, int s, int heads, int d) {
    sab_prep(out, dout, stats, b, s, heads, d);
}

extern "C" __global__ void __launch_bounds__(SAB_PREP_THREADS)
self_attention_bwd_prep_bf16(const bf16_t* __restrict__ out, const bf16_t* __restrict__ dout,
                             float* __restrict__ stats, int b, int s, int heads, int d) {
    sab_prep(out, dout, stats, b, s, heads, d);
}

// ------------------------------------------------------------------------------------------
// Kernel 2: lse and dQ, one block per (batch, head, query tile).

template <int DP, typename T>
__device__ __forceinline__ void sab_dq_body(const T* __restrict__ qkv, const T* __restrict__ dout,
                                            float* __restrict__ stats, T* __restrict__ dqkv,
                                            int b, int s, int heads, int d, float sl2,
                                            float scale) {
    constexpr int LD = DP + 4;
    static_assert(DP % 16 == 0 && DP >= 16 && DP <= SAB_MAX_D, "DP");
    static_assert(SAB_TILE == 16 * SAB_WARPS, "tiling");

    extern __shared__ float4 sab_smem[];
    float* sQ = reinterpret_cast<float*>(sab_smem);
    float* sdO = sQ + SAB_TILE * LD;
    float* sK = sdO + SAB_TILE * LD;
    float* sV = sK + SAB_TILE * LD;
    float* sP = sV + SAB_TILE * LD;  // [64][SAB_LDP]

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int tx = lane & 7;
    const int rb = warp * 16 + (lane >> 3) * 4;

    const int ntiles = (s + SAB_TILE - 1) / SAB_TILE;
    const int q0 = (int)(blockIdx.x % (unsigned)ntiles) * SAB_TILE;
    const SabHead<T> h = sab_head(qkv, dout, (int)(blockIdx.x / (unsigned)ntiles), s, heads, d);
    const size_t row3 = 3 * h.hd;
    const float* Dv = stats + (size_t)h.bh * s;
    float* lse_out = stats + ((size_t)b * heads + h.bh) * s;
    const bool vec = (d % 4 == 0) && is_aligned_vec4(qkv) && is_aligned_vec4(dout);

    sab_stage<DP>(sQ, h.q, row3, q0, s, d, vec);
    sab_stage<DP>(sdO, h.dout, h.hd, q0, s, d, vec);
    float Drow[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = q0 + rb + i;
        Drow[i] = q < s ? Dv[q] : 0.0f;
    }

    // Pass 1: the row statistics (online max; l is this lane's partial sum).
    float m_run[4], l_run[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m_run[i] = -INFINITY;
        l_run[i] = 0.0f;
    }
    for (int key0 = 0; key0 < s; key0 += SAB_TILE) {
        __syncthreads();  // the previous tile's readers of sK are done
        sab_stage<DP>(sK, h.k, row3, key0, s, d, vec);
        __syncthreads();  // sK (and, on the first tile, sQ and sdO) staged
        float acc[4][8];
        sab_dot<DP, 8>(sQ, sK, rb, tx, 0, acc);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float x = (key0 + tx + 8 * j < s) ? acc[i][j] * sl2 : -INFINITY;
                acc[i][j] = x;
                mx = fmaxf(mx, x);
            }
            mx = fmaxf(mx, __shfl_xor_sync(HC_FULL_MASK, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(HC_FULL_MASK, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(HC_FULL_MASK, mx, 4));
            const float m_new = fmaxf(m_run[i], mx);  // finite: key0 < s is a valid key
            float l = l_run[i] * exp2f(m_run[i] - m_new);
#pragma unroll
            for (int j = 0; j < 8; j++) l += exp2f(acc[i][j] - m_new);
            m_run[i] = m_new;
            l_run[i] = l;
        }
    }
    float lse[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float l = l_run[i];
        l += __shfl_xor_sync(HC_FULL_MASK, l, 1);
        l += __shfl_xor_sync(HC_FULL_MASK, l, 2);
        l += __shfl_xor_sync(HC_FULL_MASK, l, 4);
        lse[i] = m_run[i] + log2f(l);  // l >= 1: the row max contributes exp2(0)
        const int q = q0 + rb + i;
        if (tx == 0 && q < s) lse_out[q] = lse[i];
    }

    // Pass 2: dS and dQ.
    float o[4][DP / 16][2];
    sab_zero<DP>(o);
    for (int key0 = 0; key0 < s; key0 += SAB_TILE) {
        __syncthreads();  // the previous tile's readers of sK, sV (and of this warp's sP) done
        sab_stage<DP>(sK, h.k, row3, key0, s, d, vec);
        sab_stage<DP>(sV, h.v, row3, key0, s, d, vec);
        __syncthreads();
        float sc[4][8];
        sab_dot<DP, 8>(sQ, sK, rb, tx, 0, sc);
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int kc = tx + 8 * j;
                const float x = sc[i][j] * sl2;
                sP[(rb + i) * SAB_LDP + kc] = (key0 + kc < s) ? exp2f(x - lse[i]) : 0.0f;
            }
        }
        // dS = P ∘ (dO·Vᵀ − D) over the thread's own entries (no other lane reads them yet).
        sab_ds_half<DP>(sP, sdO, sV, rb, tx, 0, Drow, nullptr);
        sab_ds_half<DP>(sP, sdO, sV, rb, tx, 4, Drow, nullptr);
        __syncwarp();  // the warp's 16 rows of dS are complete
        sab_mm<DP>(sP, sK, rb, tx, sab_tile_end(s, key0), o);
    }
    sab_store<DP>(dqkv + h.qkv_off, row3, o, scale, q0, rb, tx, s, d);
}

// ------------------------------------------------------------------------------------------
// Kernel 3: dK and dV, one block per (batch, head, key tile).

template <int DP, typename T>
__device__ __forceinline__ void sab_dkv_body(const T* __restrict__ qkv,
                                             const T* __restrict__ dout,
                                             const float* __restrict__ stats,
                                             T* __restrict__ dqkv, int b, int s, int heads, int d,
                                             float sl2, float scale) {
    constexpr int LD = DP + 4;
    static_assert(DP % 16 == 0 && DP >= 16 && DP <= SAB_MAX_D, "DP");

    extern __shared__ float4 sab_smem[];
    float* sK = reinterpret_cast<float*>(sab_smem);
    float* sV = sK + SAB_TILE * LD;
    float* sQ = sV + SAB_TILE * LD;
    float* sdO = sQ + SAB_TILE * LD;
    float* sP = sdO + SAB_TILE * LD;  // [64][SAB_LDP]: Pᵀ, then dSᵀ (rows = keys)
    float* sL = sP + SAB_TILE * SAB_LDP;
    float* sD = sL + SAB_TILE;

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int tx = lane & 7;
    const int rb = warp * 16 + (lane >> 3) * 4;

    const int ntiles = (s + SAB_TILE - 1) / SAB_TILE;
    const int k0 = (int)(blockIdx.x % (unsigned)ntiles) * SAB_TILE;
    const SabHead<T> h = sab_head(qkv, dout, (int)(blockIdx.x / (unsigned)ntiles), s, heads, d);
    const size_t row3 = 3 * h.hd;
    const float* Dv = stats + (size_t)h.bh * s;
    const float* Lv = stats + ((size_t)b * heads + h.bh) * s;
    const bool vec = (d % 4 == 0) && is_aligned_vec4(qkv) && is_aligned_vec4(dout);

    sab_stage<DP>(sK, h.k, row3, k0, s, d, vec);
    sab_stage<DP>(sV, h.v, row3, k0, s, d, vec);

    const float dummy_row[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // D comes per column (sD) here
    float dk[4][DP / 16][2], dv[4][DP / 16][2];
    sab_zero<DP>(dk);
    sab_zero<DP>(dv);
    for (int q0 = 0; q0 < s; q0 += SAB_TILE) {
        __syncthreads();  // the previous tile's readers of sQ, sdO, sL, sD (and sP) are done
        sab_stage<DP>(sQ, h.q, row3, q0, s, d, vec);
        sab_stage<DP>(sdO, h.dout, h.hd, q0, s, d, vec);
        if (threadIdx.x < SAB_TILE) {
            const int q = q0 + threadIdx.x;
            sL[threadIdx.x] = q < s ? Lv[q] : 0.0f;
            sD[threadIdx.x] = q < s ? Dv[q] : 0.0f;
        }
        __syncthreads();  // sQ, sdO, sL, sD (and, on the first tile, sK and sV) staged

        float st[4][8];
        sab_dot<DP, 8>(sK, sQ, rb, tx, 0, st);  // Sᵀ: rows = keys, columns = queries tx + 8j
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int qc = tx + 8 * j;
                const float x = st[i][j] * sl2;
                sP[(rb + i) * SAB_LDP + qc] = (q0 + qc < s) ? exp2f(x - sL[qc]) : 0.0f;
            }
        }
        __syncwarp();  // the warp's 16 rows of Pᵀ are complete
        const int qend = sab_tile_end(s, q0);
        sab_mm<DP>(sP, sdO, rb, tx, qend, dv);  // dV += Pᵀ·dO

        __syncwarp();  // every lane of the warp is done reading Pᵀ (the dV product)
        // dSᵀ = Pᵀ ∘ (V·dOᵀ − D) over the thread's own entries.
        sab_ds_half<DP>(sP, sV, sdO, rb, tx, 0, dummy_row, sD);
        sab_ds_half<DP>(sP, sV, sdO, rb, tx, 4, dummy_row, sD);
        __syncwarp();  // the warp's 16 rows of dSᵀ are complete
        sab_mm<DP>(sP, sQ, rb, tx, qend, dk);  // dK += dSᵀ·Q (scaled on store)
    }
    sab_store<DP>(dqkv + h.qkv_off + h.hd, row3, dk, scale, k0, rb, tx, s, d);
    sab_store<DP>(dqkv + h.qkv_off + 2 * h.hd, row3, dv, 1.0f, k0, rb, tx, s, d);
}

// One kernel per padded head dimension DP and precision, so that each gets its own register
// allocation (a single kernel switching over DP is allocated for the largest branch and
// spilled): self_attention_bwd_{dq,dkv}_{f32,bf16}_d<DP>, DP ∈ {32, 64, 80, 128}, the smallest
// that is ≥ d. Four classes cover every d ≤ 128 (the tiny test model's 32, ViT-H's 80) while
// keeping the module small: each class costs nvcc ~2 s per kernel and the driver's JIT at load.
//   qkv, dqkv: [b, s, 3·heads·d]; dout: [b, s, heads·d]; stats: [2, b·heads, s] (D read; lse
//   written by dq, read by dkv). Launch: grid b·heads·ceil(s/64), 128 threads,
//   (256·(DP+4) + 4480)·4 bytes of dynamic shared memory; d ≤ DP.
#define SAB_ENTRIES(DP)                                                                         \
    extern "C" __global__ void __launch_bounds__(SAB_THREADS, 2)                                \
        self_attention_bwd_dq_f32_d##DP(const float* __restrict__ qkv,                          \
                                        const float* __restrict__ dout,                         \
                                        float* __restrict__ stats, float* __restrict__ dqkv,    \
                                        int b, int s, int heads, int d, float scale) {          \
        sab_dq_body<DP, float>(qkv, dout, stats, dqkv, b, s, heads, d, scale * SAB_LOG2E,       \
                               scale);                                                          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(SAB_THREADS, 2)                                \
        self_attention_bwd_dq_bf16_d##DP(const bf16_t* __restrict__ qkv,                        \
                                         const bf16_t* __restrict__ dout,                       \
                                         float* __restrict__ stats, bf16_t* __restrict__ dqkv,  \
                                         int b, int s, int heads, int d, float scale) {         \
        sab_dq_body<DP, bf16_t>(qkv, dout, stats, dqkv, b, s, heads, d, scale * SAB_LOG2E,      \
                                scale);                                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(SAB_THREADS, 2)                                \
        self_attention_bwd_dkv_f32_d##DP(const float* __restrict__ qkv,                         \
                                         const float* __restrict__ dout,                        \
                                         const float* __restrict__ stats,                       \
                                         float* __restrict__ dqkv, int b, int s, int heads,     \
                                         int d, float scale) {                                  \
        sab_dkv_body<DP, float>(qkv, dout, stats, dqkv, b, s, heads, d, scale * SAB_LOG2E,      \
                                scale);                                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(SAB_THREADS, 2)                                \
        self_attention_bwd_dkv_bf16_d##DP(const bf16_t* __restrict__ qkv,                       \
                                          const bf16_t* __restrict__ dout,                      \
                                          const float* __restrict__ stats,                      \
                                          bf16_t* __restrict__ dqkv, int b, int s, int heads,   \
                                          int d, float scale) {                                 \
        sab_dkv_body<DP, bf16_t>(qkv, dout, stats, dqkv, b, s, heads, d, scale * SAB_LOG2E,     \
                                 scale);                                                        \
    }

SAB_ENTRIES(32)
SAB_ENTRIES(64)
SAB_ENTRIES(80)
SAB_ENTRIES(128)

// ------------------------------------------------------------------------------------------
// Cross-attention with one query.

// x_u = scale·log2e·(q·k_u) (−∞ for keys ≥ t) and y_u = dO·v_u for the warp's keys j0 … j0+3;
// kr receives the keys (the lane's columns).
template <typename T>
__device__ __forceinline__ void cab_scores(const T* __restrict__ kb, const T* __restrict__ vb,
                                           size_t row, int j0, int t, int d, int lane,
                                           const float (&qr)[4], const float (&dr)[4],
                                           float (&kr)[CAB_U][4], float (&x)[CAB_U],
                                           float (&y)[CAB_U], float sl2) {
#pragma unroll
    for (int u = 0; u < CAB_U; u++) {
        const int j = j0 + u;
        float dq = 0.0f, dy = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int c = lane + HC_WARP_SIZE * i;
            const bool ok = (j < t) && (c < d);
            const size_t off = (size_t)j * row + c;
            const float kv = ok ? to_f32(kb[off]) : 0.0f;
            const float vv = ok ? to_f32(vb[off]) : 0.0f;
            kr[u][i] = kv;
            dq = fmaf(qr[i], kv, dq);
            dy = fmaf(dr[i], vv, dy);
        }
        warp_sum2(dq, dy);
        x[u] = (j < t) ? dq * sl2 : -INFINITY;
        y[u] = dy;
    }
}

template <typename T>
__device__ __forceinline__ void cab_body(const T* __restrict__ q, const T* __restrict__ kv,
                                         const T* __restrict__ dout, T* __restrict__ dq,
                                         T* __restrict__ dkv, int t, int heads, int d, float sl2,
                                         float scale) {
    __shared__ float s_m[CAB_WARPS];
    __shared__ float s_l[CAB_WARPS];
    __shared__ float s_a[CAB_WARPS];
    __shared__ float s_o[CAB_WARPS][SAB_MAX_D];

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int head = (int)(blockIdx.x % (unsigned)heads);
    const int bi = (int)(blockIdx.x / (unsigned)heads);
    const size_t hd = (size_t)heads * d;
    const size_t row = 2 * hd;
    const size_t qoff = (size_t)bi * hd + (size_t)head * d;
    const size_t koff = (size_t)bi * t * row + (size_t)head * d;  // key j at koff + j·row
    const T* kb = kv + koff;
    const T* vb = kb + hd;

    float qr[4], dr[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = lane + HC_WARP_SIZE * i;
        qr[i] = c < d ? to_f32(q[qoff + c]) : 0.0f;
        dr[i] = c < d ? to_f32(dout[qoff + c]) : 0.0f;
    }

    // Pass 1: per-warp online softmax with a = Σ p·y.
    float m = -INFINITY, l = 0.0f, a = 0.0f;
    for (int j0 = warp * CAB_U; j0 < t; j0 += CAB_WARPS * CAB_U) {
        float kr[CAB_U][4], x[CAB_U], y[CAB_U];
        cab_scores(kb, vb, row, j0, t, d, lane, qr, dr, kr, x, y, sl2);
        float mx = m;
#pragma unroll
        for (int u = 0; u < CAB_U; u++) mx = fmaxf(mx, x[u]);
        const float alpha = exp2f(m - mx);  // mx finite: key j0 < t is valid
        float ps = 0.0f, pa = 0.0f;
#pragma unroll
        for (int u = 0; u < CAB_U; u++) {
            const float p = exp2f(x[u] - mx);
            ps += p;
            pa = fmaf(p, y[u], pa);
        }
        m = mx;
        l = fmaf(l, alpha, ps);
        a = fmaf(a, alpha, pa);
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
        s_a[warp] = a;
    }
    __syncthreads();
    // Combine in warp order (a warp without keys has m = −∞, l = a = 0 and adds exactly 0).
    float mm = s_m[0];
#pragma unroll
    for (int w = 1; w < CAB_WARPS; w++) mm = fmaxf(mm, s_m[w]);
    float ll = 0.0f, aa = 0.0f;
#pragma unroll
    for (int w = 0; w < CAB_WARPS; w++) {
        const float f = exp2f(s_m[w] - mm);
        ll = fmaf(s_l[w], f, ll);
        aa = fmaf(s_a[w], f, aa);
    }
    const float inv_l = 1.0f / ll;
    const float dsum = aa * inv_l;  // Σ_k P_k·y_k

    // Pass 2: dk, dv and the warp's dq.
    float dqw[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    T* dkb = dkv + koff;
    T* dvb = dkb + hd;
    for (int j0 = warp * CAB_U; j0 < t; j0 += CAB_WARPS * CAB_U) {
        float kr[CAB_U][4], x[CAB_U], y[CAB_U];
        cab_scores(kb, vb, row, j0, t, d, lane, qr, dr, kr, x, y, sl2);
#pragma unroll
        for (int u = 0; u < CAB_U; u++) {
            const int j = j0 + u;
            if (j >= t) continue;  // warp-uniform
            const float p = exp2f(x[u] - mm) * inv_l;
            const float ds = scale * p * (y[u] - dsum);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int c = lane + HC_WARP_SIZE * i;
                if (c < d) {
                    const size_t off = (size_t)j * row + c;
                    dkb[off] = from_f32<T>(ds * qr[i]);
                    dvb[off] = from_f32<T>(p * dr[i]);
                }
                dqw[i] = fmaf(ds, kr[u][i], dqw[i]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = lane + HC_WARP_SIZE * i;
        if (c < d) s_o[warp][c] = dqw[i];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += CAB_THREADS) {
        float acc = s_o[0][c];
#pragma unroll
        for (int w = 1; w < CAB_WARPS; w++) acc += s_o[w][c];
        dq[qoff + c] = from_f32<T>(acc);
    }
}

// q, dout, dq: [b, heads·d]; kv, dkv: [b, t, 2·heads·d]. Launch: grid b·heads, 256 threads, no
// dynamic shared memory; t ≥ 1, 1 ≤ d ≤ 128.
extern "C" __global__ void __launch_bounds__(CAB_THREADS)
cross_attention_1q_bwd_f32(const float* __restrict__ q, const float* __restrict__ kv,
                           const float* __restrict__ dout, float* __restrict__ dq,
                           float* __restrict__ dkv, int b, int t, int heads, int d, float scale) {
    (void)b;  // the grid covers the batch
    cab_body(q, kv, dout, dq, dkv, t, heads, d, scale * SAB_LOG2E, scale);
}

extern "C" __global__ void __launch_bounds__(CAB_THREADS)
cross_attention_1q_bwd_bf16(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kv,
                            const bf16_t* __restrict__ dout, bf16_t* __restrict__ dq,
                            bf16_t* __restrict__ dkv, int b, int t, int heads, int d,
                            float scale) {
    (void)b;
    cab_body(q, kv, dout, dq, dkv, t, heads, d, scale * SAB_LOG2E, scale);
}
