// attention.cu — softmax attention, out = softmax(scale · q · kᵀ) · v per (batch, head), softmax
// over the keys, for the two shapes of the model. CPU twins: self_attention_packed_cpu and
// cross_attention_1q_cpu in src/ops/attention.rs. Launchers: src/cuda/attention.rs.
//
//   self_attention_fwd_{f32,bf16}(qkv, out, b, s, heads, d, scale)       (SPEC §2.2 step 3)
//       qkv [b, s, 3·heads·d], feature which·(heads·d) + head·d + i (which = q, k, v);
//       out [b, s, heads·d], heads concatenated (the layout the proj GEMM reads).
//   cross_attention_1q_fwd_{f32,bf16}(q, kv, out, b, t, heads, d, scale) (SPEC §3.2 step 3)
//       q [b, heads·d]; kv [b, t, 2·heads·d] (keys in the first heads·d features, values in the
//       second); out [b, heads·d]. One query per sample.
//
// Numerics: scores, softmax statistics (running max and sum) and all accumulators are fp32; the
// softmax is evaluated as exp2(x·scale·log2 e − m) with m the running max of x·scale·log2 e
// (the same function as exp(x·scale − max), to fp32 rounding). bf16 kernels read bf16 and write
// bf16 (round to nearest even); the self-attention one rounds the probabilities P to bf16 for
// the P·V tensor-core product (as flash attention does), but sums them in fp32. Reductions have
// fixed orders (register loops, fixed shuffle trees, fixed loops over per-warp partials): no
// atomics, same bits on every run for a given shape.
//
// ------------------------------------------------------------------------------------------
// Self-attention: a fused, flash-style kernel. The s×s score matrix never leaves the chip.
//
//   Grid: one block per (batch, head, tile of SA_QTILE = 64 queries), 1-D, the query tile
//   fastest (block = (bi·heads + head)·nqt + qt, nqt = ceil(s/64)), so the blocks that share one
//   head's K and V run side by side and the re-reads of K and V hit L2. 128 threads (4 warps);
//   warp w owns query rows 16w … 16w+15 of the tile. Keys are processed in tiles of
//   SA_KTILE = 64 with an online softmax: per row a running max m and sum l, and the output
//   accumulator rescaled by exp2(m_old − m_new) when the max grows. Rows ≥ s (query padding)
//   and keys ≥ s are zero-filled in shared memory; keys ≥ s get score −inf. Any s ≥ 1 works
//   (the key loop has ceil(s/64) steps); the head dimension is padded to DP = round_up(d, 16)
//   (a template parameter, 16 … 128), the padding zero-filled, so any d ≤ 128 works.
//
//   bf16 (tensor cores, mma.sync.m16n8k16 bf16 → fp32):
//     shared memory (dynamic): sQ [64][DP+8], sK [64][DP+8], sV [64][DP+8] bf16
//       ((192·(DP+8)·2 bytes: 33 792 for d = 80, 52 224 for d = 128). The row stride of
//       DP+8 elements = 4·(DP/8 + 1) words, an odd multiple of 4 words, makes every fragment
//       load below conflict-free (8 rows land on 8 distinct 4-bank groups).
//     staging: cp.async 16-byte copies (zero-fill for rows ≥ s / columns ≥ d) when d % 8 == 0
//       and qkv is 16-byte aligned, else plain element copies. Pipeline with one buffer each:
//       {Q, K_0} and {V_0} are two cp.async groups; the copy of K_{t+1} runs during the softmax
//       and P·V of tile t, the copy of V_{t+1} during Q·K_{t+1}ᵀ.
//     per warp and key tile: S (16×64) = Q_w (16×DP, A fragments kept in registers for the
//       whole kernel, loaded once from sQ) · K_tᵀ — 8 n-tiles × DP/16 k-steps of mma, the B
//       fragments 32-bit loads from sK (a key row holds two consecutive d's); the online softmax
//       on the accumulator registers (each row lives in the 4 lanes of a quad: row max = local
//       max + 2 xor-shuffles); P packed to bf16 A fragments straight from the accumulators (the
//       m16n8 C layout of two adjacent n-tiles is the m16k16 A layout); O (16×DP) += P · V_t —
//       4 k-steps × DP/8 n-tiles, B fragments by ldmatrix.x4.trans from sV (row-major [key][d]).
//     epilogue: row sums reduced over the quad, O / l rounded to bf16 into the warp's own 16
//       rows of sQ (no other warp reads them), then copied out as 16-byte rows (or elements).
//
//   f32 (CUDA cores, fp32 FMA; TF32 is never used, this is the accuracy reference):
//     shared memory (dynamic): sQt [d][68] (Q transposed: query index fastest), sKP
//       [max(d,64)][68] holding Kᵀ during the score phase and then P [64][68] (row-major
//       [query][key]), sV [64][DP] (64 000 bytes for d = 80, 102 400 for d = 128: above 48 KiB,
//       the launcher raises the function's dynamic shared memory limit).
//     thread (warp w, lane = 8·ty + tx) owns query rows rb … rb+3 (rb = 16w + 4ty):
//       scores for keys 8tx … 8tx+7 of the tile (a 4×8 register tile: per d, one float4 of Qᵀ
//       and two float4 of Kᵀ for 32 FMA), row max/sum over the 8 lanes tx (3 xor-shuffles);
//       output columns 16j + 2tx + {0,1}, j < DP/16 (a 4 × DP/8 register tile: per 4 keys,
//       one float4 of P per row and a float2 of V per column pair).
//     staging: plain loads (float4 when d % 4 == 0 and qkv is 16-byte aligned), Q and K stored
//       transposed. Barriers per key tile: after staging; after the score phase (Kᵀ is then
//       overwritten by P, whose rows are warp-private: __syncwarp); after P·V (before restaging).
//
//   Work and traffic at the hamer shape (b = 64, heads = 16, s = 192, d = 80):
//     FLOPs: 2·s²·d for Q·Kᵀ + 2·s²·d for P·V = 11.80 MFLOP per (batch, head) ·1024
//            = 12.08 GFLOP, plus s² = 36 864 exp2 per head (37.7 M).
//     bytes (each input read once, output written once): qkv 64·192·3840 + out 64·192·1280
//            elements = 62.9 M elements: 125.8 MB bf16, 251.7 MB f32. (Each head's K and V are
//            read by ceil(192/64) = 3 blocks; the 2nd and 3rd reads come from L2.)
//     H100 SXM bounds: memory 3.0 TB/s → 42 µs (bf16) / 84 µs (f32). bf16 mma.sync at a
//       realistic ~600 TFLOP/s → 20 µs, so bf16 is bound by memory traffic (96 FLOP/byte, below
//       the tensor-core ridge); f32 on CUDA cores (≈ 60 TFLOP/s fp32 FMA) → ≈ 200 µs: bound by
//       FMA throughput.
//
// ------------------------------------------------------------------------------------------
// Cross-attention with one query: a block per (batch, head), 256 threads (8 warps), grid
//   b·heads. Each warp walks its own keys in groups of CA_U = 4 consecutive keys (warp w takes
//   keys 4w … 4w+3, then 4w+32 …), single pass: lane l holds columns l, l+32, l+64, l+96 (< d)
//   of q (registers), of the 4 keys and of the 4 values; the 4 dot products are warp
//   butterflies; a per-warp online softmax (running max m_w, sum l_w, output o_w in 4 registers
//   per lane). The 8 warps' partials go through shared memory and thread c (< d) combines them
//   in warp order: m = max m_w, l = Σ l_w·2^(m_w−m), o = Σ o_w[c]·2^(m_w−m), out = o / l.
//   Any t ≥ 1 and d ≤ 128; no shared memory that grows with t. At the decoder shape (b = 64,
//   t = 192, heads = 8, d = 64) it moves 25 MB (bf16) / 50 MB (f32) of kv for 25 MFLOP: bound
//   by memory traffic (≈ 8 / 17 µs at 3 TB/s).

#include <stdint.h>

#include "common.cuh"

#define SA_THREADS 128
#define SA_WARPS 4
#define SA_QTILE 64   // queries per block (16 per warp)
#define SA_KTILE 64   // keys per shared-memory tile
#define SA_MAX_D 128  // largest head dimension (keep in sync with src/cuda/attention.rs)
#define SF_LD 68      // f32 kernel: row stride (floats) of sQt, sKP (64 + 4: float4-aligned)

#define CA_THREADS 256
#define CA_WARPS 8
#define CA_U 4  // keys per warp per step

#define ATTN_LOG2E 1.4426950408889634f

// ------------------------------------------------------------------------------------------
// bf16 storage as raw bits (bf16 = the high 16 bits of an fp32).

__device__ __forceinline__ float attn_bf16_to_f32(uint16_t b) {
    return __uint_as_float((uint32_t)b << 16);
}

__device__ __forceinline__ uint16_t attn_f32_to_bf16(float f) {
    return (uint16_t)(attn_pack_bf16x2(f, 0.0f) & 0xffffu);
}

__device__ __forceinline__ float attn_ld(const float* p) { return *p; }
__device__ __forceinline__ float attn_ld(const uint16_t* p) { return attn_bf16_to_f32(*p); }
__device__ __forceinline__ void attn_st(float* p, float v) { *p = v; }
__device__ __forceinline__ void attn_st(uint16_t* p, float v) { *p = attn_f32_to_bf16(v); }

__device__ __forceinline__ uint32_t attn_lds32(const uint16_t* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// ------------------------------------------------------------------------------------------
// Self-attention, shared by both precisions: which block does what.

struct SaBlock {
    int bi, head, q0;
    size_t hd;          // heads·d: offset of k (and 2·hd of v) within a token's features
    size_t row_stride;  // 3·heads·d: elements between consecutive tokens
    size_t q_off;       // offset of q[bi, token 0, head, 0] in qkv
};

__device__ __forceinline__ SaBlock sa_block(int s, int heads, int d) {
    const int nqt = (s + SA_QTILE - 1) / SA_QTILE;
    const int qt = (int)(blockIdx.x % (unsigned)nqt);
    const int bh = (int)(blockIdx.x / (unsigned)nqt);
    SaBlock blk;
    blk.head = bh % heads;
    blk.bi = bh / heads;
    blk.q0 = qt * SA_QTILE;
    blk.hd = (size_t)heads * d;
    blk.row_stride = 3 * blk.hd;
    blk.q_off = (size_t)blk.bi * s * blk.row_stride + (size_t)blk.head * d;
    return blk;
}

// Calls BODY<DP>(...) with DP = round_up(d, 16), 16 … 128 (d > 128 is rejected by the launcher).
#define SA_DISPATCH_DP(BODY, d, ...)                       \
    switch (((d) + 15) / 16) {                             \
        case 1: BODY<16>(__VA_ARGS__); break;              \
        case 2: BODY<32>(__VA_ARGS__); break;              \
        case 3: BODY<48>(__VA_ARGS__); break;              \
        case 4: BODY<64>(__VA_ARGS__); break;              \
        case 5: BODY<80>(__VA_ARGS__); break;              \
        case 6: BODY<96>(__VA_ARGS__); break;              \
        case 7: BODY<112>(__VA_ARGS__); break;             \
        case 8: BODY<128>(__VA_ARGS__); break;             \
        default: break;                                    \
    }

// ------------------------------------------------------------------------------------------
// Self-attention, bf16, tensor cores.

// Stages rows r0 … r0+63 of one of q / k / v into dst [64][DP+8]: element (r, c) of the tile is
// src[(r0 + r)·row_stride + c] for r0 + r < s and c < d, zero otherwise (columns < DP; the
// last 8 columns of a row are never read). vec: 16-byte cp.async (d % 8 == 0, src 16-byte
// aligned); else synchronous element copies.
template <int DP>
__device__ __forceinline__ void sa_bf16_stage(uint16_t* __restrict__ dst,
                                              const uint16_t* __restrict__ src,
                                              size_t row_stride, int r0, int s, int d, bool vec) {
    constexpr int LDS = DP + 8;
    if (vec) {
        constexpr int CH = DP / 8;  // 16-byte chunks per row
        for (int idx = threadIdx.x; idx < SA_KTILE * CH; idx += SA_THREADS) {
            const int r = idx / CH;
            const int c = (idx % CH) * 8;
            const bool valid = (r0 + r < s) && (c < d);  // d % 8 == 0: a chunk is all in or out
            const uint16_t* g = valid ? src + (size_t)(r0 + r) * row_stride + c : src;
            attn_cp_async16(dst + r * LDS + c, g, valid);
        }
    } else {
        for (int idx = threadIdx.x; idx < SA_KTILE * DP; idx += SA_THREADS) {
            const int r = idx / DP;
            const int c = idx % DP;
            uint16_t v = 0;
            if (r0 + r < s && c < d) v = src[(size_t)(r0 + r) * row_stride + c];
            dst[r * LDS + c] = v;
        }
    }
}

// A fragment of k-step ks of a warp's 16 query rows; q_lo = &sQ[row g][2tig] of the warp,
// q_hi = &sQ[row g+8][2tig]. Registers: {a0,a1} row g, k 2tig+{0,1}; {a2,a3} row g+8; {a4,a5}
// row g, k 2tig+8+{0,1}; {a6,a7} row g+8.
__device__ __forceinline__ void sa_bf16_qfrag(uint32_t (&a)[4], const uint16_t* q_lo,
                                              const uint16_t* q_hi, int ks) {
    a[0] = attn_lds32(q_lo + 16 * ks);
    a[1] = attn_lds32(q_hi + 16 * ks);
    a[2] = attn_lds32(q_lo + 16 * ks + 8);
    a[3] = attn_lds32(q_hi + 16 * ks + 8);
}

template <int DP>
__device__ __forceinline__ void sa_bf16_body(const uint16_t* __restrict__ qkv,
                                             uint16_t* __restrict__ out, int s, int heads, int d,
                                             float scale_log2) {
    constexpr int LDS = DP + 8;  // shared row stride (elements)
    constexpr int KS = DP / 16;  // k-steps of Q·Kᵀ
    constexpr int NT = DP / 8;   // n-tiles (8 columns) of O
    static_assert(DP % 16 == 0 && DP >= 16 && DP <= SA_MAX_D, "DP");
    static_assert(SA_QTILE == 16 * SA_WARPS && SA_KTILE == 64, "tiling");

    extern __shared__ float4 sa_smem[];  // float4: 16-byte alignment for cp.async / ldmatrix
    uint16_t* sQ = reinterpret_cast<uint16_t*>(sa_smem);
    uint16_t* sK = sQ + SA_QTILE * LDS;
    uint16_t* sV = sK + SA_KTILE * LDS;

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int g = lane >> 2;   // mma groupID: fragment row (and row + 8)
    const int tig = lane & 3;  // mma threadID_in_group: fragment column pair

    const SaBlock blk = sa_block(s, heads, d);
    const uint16_t* qb = qkv + blk.q_off;
    const uint16_t* kb = qb + blk.hd;
    const uint16_t* vb = qb + 2 * blk.hd;
    const bool vec = (d % 8 == 0) && is_aligned16(qkv);

    // Two cp.async groups: {Q, K_0}, {V_0}.
    sa_bf16_stage<DP>(sQ, qb, blk.row_stride, blk.q0, s, d, vec);
    sa_bf16_stage<DP>(sK, kb, blk.row_stride, 0, s, d, vec);
    attn_cp_async_commit();
    sa_bf16_stage<DP>(sV, vb, blk.row_stride, 0, s, d, vec);
    attn_cp_async_commit();

    // This warp's 16 query rows as A fragments: kept in registers for the whole kernel when
    // DP <= 80; for larger DP re-read from sQ at every k-step (sQ is intact until the epilogue)
    // so that every DP fits the register budget of __launch_bounds__(128, 3) without spills.
    constexpr bool QREG = DP <= 80;
    uint32_t qf[QREG ? KS : 1][4];
    const uint16_t* q_lo = sQ + (warp * 16 + g) * LDS + 2 * tig;  // row g,   k 2tig
    const uint16_t* q_hi = q_lo + 8 * LDS;                        // row g+8
    float o[NT][4];      // O accumulator (C layout): rows g, g+8; columns 8n + 2·tig + {0,1}
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    }
    float m_run[2] = {-INFINITY, -INFINITY};  // rows g, g+8: running max (log2 domain)
    float l_run[2] = {0.0f, 0.0f};            // partial sums over this lane's columns

    const int nkt = (s + SA_KTILE - 1) / SA_KTILE;
    for (int kt = 0; kt < nkt; kt++) {
        const int key0 = kt * SA_KTILE;
        attn_cp_async_wait<1>();  // K_kt (and Q) have landed; only V_kt may still be in flight
        __syncthreads();

        if (QREG && kt == 0) {
#pragma unroll
            for (int ks = 0; ks < (QREG ? KS : 1); ks++) sa_bf16_qfrag(qf[ks], q_lo, q_hi, ks);
        }

        // S = Q · K_ktᵀ: n-tile j covers keys key0 + 8j … 8j+7.
        float sc[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) sc[j][e] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            uint32_t a[4];
            if (QREG) {
#pragma unroll
                for (int e = 0; e < 4; e++) a[e] = qf[QREG ? ks : 0][e];
            } else {
                sa_bf16_qfrag(a, q_lo, q_hi, ks);
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                // B fragment: (k = d index 2tig + {0,1} [+8], n = key 8j + g) = K[key][d].
                const uint16_t* kp = sK + (8 * j + g) * LDS + 16 * ks + 2 * tig;
                attn_mma_bf16(sc[j], a, attn_lds32(kp), attn_lds32(kp + 8));
            }
        }
        __syncthreads();  // every warp is done with sK
        const bool more = kt + 1 < nkt;
        if (more) sa_bf16_stage<DP>(sK, kb, blk.row_stride, key0 + SA_KTILE, s, d, vec);
        attn_cp_async_commit();  // K_{kt+1} (an empty group on the last tile)

        // Online softmax on the registers. Element e of n-tile j: row g + 8·(e/2),
        // key key0 + 8j + 2tig + (e%2).
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = key0 + 8 * j + 2 * tig + (e & 1);
                const float x = (key < s) ? sc[j][e] * scale_log2 : -INFINITY;
                sc[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            // The 4 lanes of a quad hold one row: all end with the same max.
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(HC_FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(HC_FULL_MASK, mx[r], 2));
            const float m_new = fmaxf(m_run[r], mx[r]);  // finite: key0 < s is a valid key
            const float alpha = exp2f(m_run[r] - m_new);  // 0 on the first tile (−inf)
            m_run[r] = m_new;
            l_run[r] *= alpha;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                o[n][2 * r] *= alpha;
                o[n][2 * r + 1] *= alpha;
            }
        }
        uint32_t pf[4][4];  // P as A fragments: k-step kk = keys 16kk … 16kk+15
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = exp2f(sc[j][e] - m_run[e >> 1]);  // masked keys: exp2(−inf) = 0
                sc[j][e] = p;
                l_run[e >> 1] += p;
            }
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            pf[kk][0] = attn_pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]);          // row g,   k 2tig
            pf[kk][1] = attn_pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]);          // row g+8, k 2tig
            pf[kk][2] = attn_pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);  // row g,   k+8
            pf[kk][3] = attn_pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);  // row g+8, k+8
        }

        attn_cp_async_wait<1>();  // V_kt has landed; only K_{kt+1} may still be in flight
        __syncthreads();
        // O += P · V_kt. ldmatrix.x4.trans: lane l addresses key 16kk + (l % 16), columns
        // 16np + 8·(l / 16) …+7; registers 0,1 = B fragment (k 0-7, 8-15) of n-tile 2np,
        // registers 2,3 = that of n-tile 2np+1.
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t b[4];
                attn_ldsm_x4_trans(b, sV + (16 * kk + (lane & 15)) * LDS + 16 * np + 8 * (lane >> 4));
                attn_mma_bf16(o[2 * np], pf[kk], b[0], b[1]);
                attn_mma_bf16(o[2 * np + 1], pf[kk], b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with sV
        if (more) sa_bf16_stage<DP>(sV, vb, blk.row_stride, key0 + SA_KTILE, s, d, vec);
        attn_cp_async_commit();  // V_{kt+1} (an empty group on the last tile)
    }
    attn_cp_async_wait<0>();  // nothing is in flight any more (the last groups are empty)

    // Epilogue: full row sums over the quad, normalise, stage the warp's rows in its own rows
    // of sQ (read only by this warp, at kt == 0, before several barriers), copy out.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_run[r];
        l += __shfl_xor_sync(HC_FULL_MASK, l, 1);
        l += __shfl_xor_sync(HC_FULL_MASK, l, 2);
        inv[r] = 1.0f / l;  // l >= 1: the row max contributes exp2(0) = 1
    }
    uint16_t* sO = sQ + warp * 16 * LDS;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const int c = 8 * n + 2 * tig;
        *reinterpret_cast<uint32_t*>(sO + g * LDS + c) =
            attn_pack_bf16x2(o[n][0] * inv[0], o[n][1] * inv[0]);
        *reinterpret_cast<uint32_t*>(sO + (g + 8) * LDS + c) =
            attn_pack_bf16x2(o[n][2] * inv[1], o[n][3] * inv[1]);
    }
    __syncwarp();

    const int qw = blk.q0 + warp * 16;  // first query row of this warp
    uint16_t* ob = out + ((size_t)blk.bi * s) * blk.hd + (size_t)blk.head * d;
    if ((d % 8 == 0) && is_aligned16(out)) {
        const int ch = d / 8;  // 16-byte chunks per row
        for (int idx = lane; idx < 16 * ch; idx += HC_WARP_SIZE) {
            const int r = idx / ch;
            const int c = (idx % ch) * 8;
            if (qw + r < s) {
                *reinterpret_cast<uint4*>(ob + (size_t)(qw + r) * blk.hd + c) =
                    *reinterpret_cast<const uint4*>(sO + r * LDS + c);
            }
        }
    } else {
        for (int idx = lane; idx < 16 * d; idx += HC_WARP_SIZE) {
            const int r = idx / d;
            const int c = idx % d;
            if (qw + r < s) ob[(size_t)(qw + r) * blk.hd + c] = sO[r * LDS + c];
        }
    }
}

// qkv: [b, s, 3·heads·d] bf16; out: [b, s, heads·d] bf16. Launch: grid b·heads·ceil(s/64),
// 128 threads, 192·(round_up(d,16)+8)·2 bytes of dynamic shared memory; 1 ≤ d ≤ 128.
extern "C" __global__ void __launch_bounds__(SA_THREADS, 3)
self_attention_fwd_bf16(const uint16_t* __restrict__ qkv, uint16_t* __restrict__ out, int b,
                        int s, int heads, int d, float scale) {
    (void)b;  // the grid covers the batch
    const float sl2 = scale * ATTN_LOG2E;
    SA_DISPATCH_DP(sa_bf16_body, d, qkv, out, s, heads, d, sl2);
}

// ------------------------------------------------------------------------------------------
// Self-attention, f32, CUDA cores.

// Stages rows r0 … r0+63 of q or k transposed into dst [d][SF_LD]: dst[c·SF_LD + r] =
// src[(r0 + r)·row_stride + c] for r0 + r < s, zero otherwise. Warp w takes rows w, w+4, …;
// lanes run along c (coalesced global reads).
__device__ __forceinline__ void sf_stage_t(float* __restrict__ dst, const float* __restrict__ src,
                                           size_t row_stride, int r0, int s, int d, bool vec) {
    const int lane = threadIdx.x % HC_WARP_SIZE;
    for (int r = threadIdx.x / HC_WARP_SIZE; r < SA_KTILE; r += SA_WARPS) {
        const bool valid = r0 + r < s;
        if (vec) {
            for (int c4 = lane; c4 < d / 4; c4 += HC_WARP_SIZE) {
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (valid)
                    v = reinterpret_cast<const float4*>(src + (size_t)(r0 + r) * row_stride)[c4];
                float* col = dst + 4 * c4 * SF_LD + r;
                col[0] = v.x;
                col[SF_LD] = v.y;
                col[2 * SF_LD] = v.z;
                col[3 * SF_LD] = v.w;
            }
        } else {
            for (int c = lane; c < d; c += HC_WARP_SIZE)
                dst[c * SF_LD + r] = valid ? src[(size_t)(r0 + r) * row_stride + c] : 0.0f;
        }
    }
}

// Stages rows r0 … r0+63 of v into dst [64][DP] (row-major): element (r, c) is
// src[(r0 + r)·row_stride + c] for r0 + r < s and c < d, zero otherwise.
template <int DP>
__device__ __forceinline__ void sf_stage_v(float* __restrict__ dst, const float* __restrict__ src,
                                           size_t row_stride, int r0, int s, int d, bool vec) {
    const int lane = threadIdx.x % HC_WARP_SIZE;
    for (int r = threadIdx.x / HC_WARP_SIZE; r < SA_KTILE; r += SA_WARPS) {
        const bool valid = r0 + r < s;
        if (vec) {
            for (int c4 = lane; c4 < DP / 4; c4 += HC_WARP_SIZE) {
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (valid && 4 * c4 < d)  // d % 4 == 0: a float4 is all in or all out
                    v = reinterpret_cast<const float4*>(src + (size_t)(r0 + r) * row_stride)[c4];
                reinterpret_cast<float4*>(dst + r * DP)[c4] = v;
            }
        } else {
            for (int c = lane; c < DP; c += HC_WARP_SIZE)
                dst[r * DP + c] =
                    (valid && c < d) ? src[(size_t)(r0 + r) * row_stride + c] : 0.0f;
        }
    }
}

template <int DP>
__device__ __forceinline__ void sa_f32_body(const float* __restrict__ qkv, float* __restrict__ out,
                                            int s, int heads, int d, float scale_log2) {
    constexpr int NC = DP / 16;  // column pairs per thread
    static_assert(DP % 16 == 0 && DP >= 16 && DP <= SA_MAX_D, "DP");
    static_assert(SA_QTILE == 16 * SA_WARPS && SA_KTILE == 64 && SF_LD % 4 == 0, "tiling");

    extern __shared__ float4 sa_smem[];
    float* sQt = reinterpret_cast<float*>(sa_smem);                // [d][SF_LD]
    float* sKP = sQt + d * SF_LD;                                   // [max(d,64)][SF_LD]
    float* sV = sKP + (d > SA_KTILE ? d : SA_KTILE) * SF_LD;       // [64][DP]

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int tx = lane & 7;                       // key / column group
    const int rb = warp * 16 + (lane >> 3) * 4;    // first of this thread's 4 query rows

    const SaBlock blk = sa_block(s, heads, d);
    const float* qb = qkv + blk.q_off;
    const float* kb = qb + blk.hd;
    const float* vb = qb + 2 * blk.hd;
    const bool vec = (d % 4 == 0) && is_aligned16(qkv);

    sf_stage_t(sQt, qb, blk.row_stride, blk.q0, s, d, vec);

    float o[4][NC][2];  // rows rb+i, columns 16j + 2tx + e
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < NC; j++) o[i][j][0] = o[i][j][1] = 0.0f;
    }
    float m_run[4], l_run[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m_run[i] = -INFINITY;
        l_run[i] = 0.0f;  // partial: this lane's keys only
    }

    const int nkt = (s + SA_KTILE - 1) / SA_KTILE;
    for (int kt = 0; kt < nkt; kt++) {
        const int key0 = kt * SA_KTILE;
        sf_stage_t(sKP, kb, blk.row_stride, key0, s, d, vec);
        sf_stage_v<DP>(sV, vb, blk.row_stride, key0, s, d, vec);
        __syncthreads();  // Qᵀ, Kᵀ, V staged

        // Scores for rows rb+i, keys key0 + 8tx + j.
        float acc[4][8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
        }
#pragma unroll 4
        for (int c = 0; c < d; c++) {
            const float4 qv = *reinterpret_cast<const float4*>(sQt + c * SF_LD + rb);
            const float4 k0 = *reinterpret_cast<const float4*>(sKP + c * SF_LD + 8 * tx);
            const float4 k1 = *reinterpret_cast<const float4*>(sKP + c * SF_LD + 8 * tx + 4);
            const float qa[4] = {qv.x, qv.y, qv.z, qv.w};
            const float ka[8] = {k0.x, k0.y, k0.z, k0.w, k1.x, k1.y, k1.z, k1.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] = fmaf(qa[i], ka[j], acc[i][j]);
            }
        }

        // Online softmax; a row's 64 keys live in the 8 lanes tx of one group.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float x = (key0 + 8 * tx + j < s) ? acc[i][j] * scale_log2 : -INFINITY;
                acc[i][j] = x;
                mx = fmaxf(mx, x);
            }
            mx = fmaxf(mx, __shfl_xor_sync(HC_FULL_MASK, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(HC_FULL_MASK, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(HC_FULL_MASK, mx, 4));
            const float m_new = fmaxf(m_run[i], mx);  // finite: key0 < s is a valid key
            const float alpha = exp2f(m_run[i] - m_new);
            m_run[i] = m_new;
            float l = l_run[i] * alpha;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float p = exp2f(acc[i][j] - m_new);
                acc[i][j] = p;
                l += p;
            }
            l_run[i] = l;
#pragma unroll
            for (int j = 0; j < NC; j++) {
                o[i][j][0] *= alpha;
                o[i][j][1] *= alpha;
            }
        }
        __syncthreads();  // every warp is done reading Kᵀ: P overwrites it

        // P [64][SF_LD], row-major; this thread's rows belong to its warp only.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float* pr = sKP + (rb + i) * SF_LD + 8 * tx;
            reinterpret_cast<float4*>(pr)[0] =
                make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
            reinterpret_cast<float4*>(pr)[1] =
                make_float4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]);
        }
        __syncwarp();

        // O += P · V over the valid keys, rounded up to 4 (P = 0 and V = 0 beyond s).
        const int rem = s - key0;
        const int kend = rem >= SA_KTILE ? SA_KTILE : ((rem + 3) & ~3);
        for (int k = 0; k < kend; k += 4) {
            float4 p4[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                p4[i] = *reinterpret_cast<const float4*>(sKP + (rb + i) * SF_LD + k);
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
#pragma unroll
                for (int j = 0; j < NC; j++) {
                    const float2 v =
                        *reinterpret_cast<const float2*>(sV + (k + kk) * DP + 16 * j + 2 * tx);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float p = kk == 0 ? p4[i].x
                                      : kk == 1 ? p4[i].y
                                      : kk == 2 ? p4[i].z
                                                : p4[i].w;
                        o[i][j][0] = fmaf(p, v.x, o[i][j][0]);
                        o[i][j][1] = fmaf(p, v.y, o[i][j][1]);
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with P and V before the next tile is staged
    }

    // Epilogue: full row sums over the 8 lanes tx, normalise, write.
    float* ob = out + ((size_t)blk.bi * s) * blk.hd + (size_t)blk.head * d;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float l = l_run[i];
        l += __shfl_xor_sync(HC_FULL_MASK, l, 1);
        l += __shfl_xor_sync(HC_FULL_MASK, l, 2);
        l += __shfl_xor_sync(HC_FULL_MASK, l, 4);
        const float inv = 1.0f / l;  // l >= 1: the row max contributes exp2(0) = 1
        const int q = blk.q0 + rb + i;
        if (q < s) {
            float* orow = ob + (size_t)q * blk.hd;
#pragma unroll
            for (int j = 0; j < NC; j++) {
                const int c = 16 * j + 2 * tx;
                if (c < d) orow[c] = o[i][j][0] * inv;
                if (c + 1 < d) orow[c + 1] = o[i][j][1] * inv;
            }
        }
    }
}

// qkv: [b, s, 3·heads·d] f32; out: [b, s, heads·d] f32. Launch: grid b·heads·ceil(s/64),
// 128 threads, (d·68 + max(d,64)·68 + 64·round_up(d,16))·4 bytes of dynamic shared memory;
// 1 ≤ d ≤ 128.
extern "C" __global__ void __launch_bounds__(SA_THREADS, 3)
self_attention_fwd_f32(const float* __restrict__ qkv, float* __restrict__ out, int b, int s,
                       int heads, int d, float scale) {
    (void)b;
    const float sl2 = scale * ATTN_LOG2E;
    SA_DISPATCH_DP(sa_f32_body, d, qkv, out, s, heads, d, sl2);
}

// ------------------------------------------------------------------------------------------
// Cross-attention, one query per sample.

template <typename T>
__device__ __forceinline__ void ca_body(const T* __restrict__ q, const T* __restrict__ kv,
                                        T* __restrict__ out, int t, int heads, int d,
                                        float scale_log2) {
    __shared__ float s_m[CA_WARPS];
    __shared__ float s_l[CA_WARPS];
    __shared__ float s_o[CA_WARPS][SA_MAX_D];

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int head = (int)(blockIdx.x % (unsigned)heads);
    const int bi = (int)(blockIdx.x / (unsigned)heads);
    const size_t hd = (size_t)heads * d;
    const T* qh = q + (size_t)bi * hd + (size_t)head * d;
    const T* kb = kv + (size_t)bi * t * 2 * hd + (size_t)head * d;  // key j at kb + j·2hd
    const T* vb = kb + hd;

    float qr[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = lane + HC_WARP_SIZE * i;
        qr[i] = c < d ? attn_ld(qh + c) : 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};

    for (int j0 = warp * CA_U; j0 < t; j0 += CA_WARPS * CA_U) {
        float kr[CA_U][4], vr[CA_U][4];
#pragma unroll
        for (int u = 0; u < CA_U; u++) {
            const int j = j0 + u;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int c = lane + HC_WARP_SIZE * i;
                const bool ok = (j < t) && (c < d);
                const size_t off = (size_t)j * 2 * hd + c;
                kr[u][i] = ok ? attn_ld(kb + off) : 0.0f;
                vr[u][i] = ok ? attn_ld(vb + off) : 0.0f;
            }
        }
        float x[CA_U];
#pragma unroll
        for (int u = 0; u < CA_U; u++) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++) dot = fmaf(qr[i], kr[u][i], dot);
            x[u] = warp_sum(dot);
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < CA_U; u++) {
            x[u] = (j0 + u < t) ? x[u] * scale_log2 : -INFINITY;
            mx = fmaxf(mx, x[u]);
        }
        const float alpha = exp2f(m - mx);  // mx finite: key j0 < t is valid
        m = mx;
        float p[CA_U];
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < CA_U; u++) {
            p[u] = exp2f(x[u] - mx);
            psum += p[u];
        }
        l = l * alpha + psum;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float acc = o[i] * alpha;
#pragma unroll
            for (int u = 0; u < CA_U; u++) acc = fmaf(p[u], vr[u][i], acc);
            o[i] = acc;
        }
    }

    // Combine the warps' partials in warp order. A warp without keys has m = −inf, l = 0,
    // o = 0 and contributes exactly 0.
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = lane + HC_WARP_SIZE * i;
        if (c < d) s_o[warp][c] = o[i];
    }
    __syncthreads();
    T* oh = out + (size_t)bi * hd + (size_t)head * d;
    for (int c = threadIdx.x; c < d; c += CA_THREADS) {
        float mm = s_m[0];
#pragma unroll
        for (int w = 1; w < CA_WARPS; w++) mm = fmaxf(mm, s_m[w]);
        float ll = 0.0f, acc = 0.0f;
#pragma unroll
        for (int w = 0; w < CA_WARPS; w++) {
            const float f = exp2f(s_m[w] - mm);
            ll = fmaf(s_l[w], f, ll);
            acc = fmaf(s_o[w][c], f, acc);
        }
        attn_st(oh + c, acc / ll);
    }
}

// q: [b, heads·d]; kv: [b, t, 2·heads·d]; out: [b, heads·d]. Launch: grid b·heads, 256 threads,
// no dynamic shared memory; t ≥ 1, 1 ≤ d ≤ 128.
extern "C" __global__ void __launch_bounds__(CA_THREADS)
cross_attention_1q_fwd_f32(const float* __restrict__ q, const float* __restrict__ kv,
                           float* __restrict__ out, int b, int t, int heads, int d, float scale) {
    (void)b;
    ca_body<float>(q, kv, out, t, heads, d, scale * ATTN_LOG2E);
}

extern "C" __global__ void __launch_bounds__(CA_THREADS)
cross_attention_1q_fwd_bf16(const uint16_t* __restrict__ q, const uint16_t* __restrict__ kv,
                            uint16_t* __restrict__ out, int b, int t, int heads, int d,
                            float scale) {
    (void)b;
    ca_body<uint16_t>(q, kv, out, t, heads, d, scale * ATTN_LOG2E);
}
