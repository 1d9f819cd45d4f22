// covariance.cu — covariance assembly of the 63-vector of 3D joints from an uncertainty head's
// readout (SPEC §6), and the per-joint uncertainty u_j = Σ_c Σ[3j+c, 3j+c] (trace of joint j's
// 3×3 diagonal block), written by the same kernel.
//
//   covariance_diag_fwd_f32     Σ = diag(e^s)                      (`diag`, `ours_wo_linear`)
//   covariance_lowrank_fwd_f32  Σ = W·diag(e^s)·Wᵀ                 (`ours`)
//   covariance_full_fwd_f32     Σ = (L·Lᵀ)⁻¹ = Mᵀ·M with M = L⁻¹  (`full`)
//
// Shapes (all row-major, b samples): s [b, 63]; W [63, 63] (W[j, d], the PyTorch Linear weight
// [out, in]); full readout [b, 2016] = 63 log-diagonals d then the 1953 strictly-lower entries o
// of the precision Cholesky factor L in numpy.tril_indices(63, -1) row-major order, so
// L[r, c] = o[r(r-1)/2 + c] for c < r and L[i, i] = e^{-d_i}; cov [b, 63, 63]; u [b, 21].
//
// CPU twin: covariance_cpu in src/ops/covariance.rs (f64, rounded once to f32).
// Launcher: src/cuda/covariance.rs. Every output is written by plain stores in a fixed order
// (no atomics), so the result is bitwise deterministic for a given launch configuration, and the
// covariance is exactly symmetric (see each kernel for why).
//
// Launch requirements (the launcher guarantees them; the kernels rely on them):
//   diag:    1-D blocks of COV_DIAG_THREADS threads, any grid >= 1 (grid-stride over elements);
//   lowrank: 1-D blocks of exactly COV_LR_THREADS = 256 threads (the 16×16 thread tile below),
//            any grid >= 1 (grid-stride over samples), no dynamic shared memory;
//   full:    1-D blocks of exactly COV_FULL_THREADS = 512 threads (16 warps: the column
//            schedule below), any grid >= 1 (grid-stride over samples), no dynamic shared memory.

#include "common.cuh"

#define COV_DIM 63                  // 21 joints × 3
#define COV_JOINTS 21
#define COV_NN (COV_DIM * COV_DIM)  // 3969 entries of Σ per sample
#define COV_TRIL 1953               // 63·62/2 strictly-lower entries of L
#define COV_FULL_RAW (COV_DIM + COV_TRIL)  // 2016 readout values per sample for `full`

#define COV_DIAG_THREADS 256
#define COV_LR_THREADS 256
#define COV_FULL_THREADS 512

// ------------------------------------------------------------------------------------------------
// diag: Σ = diag(e^s).
//
// Work split: thread i of the grid (grid-strided) writes element i of the flat [b·3969] output:
// e^{s[n, r]} when it is a diagonal entry (row r == column), else an exact 0. A second
// grid-strided loop writes u[n, j] = (e^{s_3j} + e^{s_3j+1}) + e^{s_3j+2} (the twin's order).
// Stores are coalesced (consecutive threads, consecutive addresses). Indices are 64-bit: b·3969
// passes 2^31 at b ≈ 541 000.
// Numerics: expf (fp32, ≤ 2 ulp) against the twin's f64 exp rounded once.
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(COV_DIAG_THREADS)
covariance_diag_fwd_f32(const float* __restrict__ s, float* __restrict__ cov,
                        float* __restrict__ unc, int b) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

    const size_t n_cov = (size_t)b * COV_NN;
    for (size_t i = first; i < n_cov; i += stride) {
        const size_t n = i / COV_NN;
        const int r = (int)(i - n * COV_NN);  // 0..3968
        const int row = r / COV_DIM;
        const int col = r - row * COV_DIM;
        cov[i] = (row == col) ? expf(s[n * COV_DIM + row]) : 0.0f;
    }

    const size_t n_unc = (size_t)b * COV_JOINTS;
    for (size_t i = first; i < n_unc; i += stride) {
        const size_t n = i / COV_JOINTS;
        const int j = (int)(i - n * COV_JOINTS);  // 0..20
        const float* p = s + n * COV_DIM + 3 * j;
        unc[i] = (expf(p[0]) + expf(p[1])) + expf(p[2]);
    }
}

// ------------------------------------------------------------------------------------------------
// lowrank (`ours`): Σ_jk = Σ_d W_jd·e^{s_d}·W_kd.
//
// Written as Σ = V·Vᵀ with V_jd = W_jd·h_d, h_d = e^{s_d/2} (fp32). Each entry is then
// Σ_jk = fma-chain over d = 0..62 of V_jd·V_kd, and because fmaf(x, y, acc) == fmaf(y, x, acc)
// exactly, the thread computing Σ_kj performs bit-for-bit the same operations as the one
// computing Σ_jk: the output is exactly symmetric without a mirror pass.
//
// Work split: one block of 256 threads per sample (grid-strided over samples).
//   1. threads 0..62 compute h_d into shared memory; barrier;
//   2. the block fills V (64 rows × row stride 65 floats in shared memory; row 63 is a zero
//      padding row) from W (read coalesced; W is the same for every sample, so L2-resident);
//      barrier;
//   3. Σ is padded to 64×64 and split into 16×16 thread tiles: thread t (tj = t / 16,
//      tk = t % 16) owns the 4×4 entries (tj + 16a, tk + 16c), a, c = 0..3, in registers.
//      Per d it reads V[tj + 16a][d] (2 distinct addresses per warp: broadcasts) and
//      V[tk + 16c][d] (16 distinct rows; with the row stride 65 they fall in 16 distinct
//      banks) — conflict-free — and does 16 FMAs;
//   4. barrier (everyone is done reading V), the tiles are written densely (row stride 63) into
//      the same shared buffer, barrier; the block copies the 3969 floats to cov with coalesced
//      stores, and threads 0..20 write u_j from the staged diagonal; barrier before the next
//      sample reuses the buffers.
// Numerics: fp32 throughout; against the f64 twin each term carries a few ulps (expf, two
// roundings of V, the product) and the 63-term fma sum adds at most ~63 half-ulps of Σ_d|term|,
// which is ≤ max_j Σ_jj by Cauchy–Schwarz, so the error relative to max|Σ| stays < 5e-6.
// ------------------------------------------------------------------------------------------------
#define COV_LR_LD 65  // row stride of V in shared memory (odd: rows map to distinct banks)

extern "C" __global__ void __launch_bounds__(COV_LR_THREADS)
covariance_lowrank_fwd_f32(const float* __restrict__ s, const float* __restrict__ w,
                           float* __restrict__ cov, float* __restrict__ unc, int b) {
    // V (64 × COV_LR_LD, row 63 zero) during the product; Σ (63 × 63, dense) afterwards.
    __shared__ float v[64 * COV_LR_LD];
    __shared__ float h[COV_DIM];

    const int t = threadIdx.x;
    const int tj = t >> 4;  // 0..15
    const int tk = t & 15;  // 0..15

    // n is 64-bit so that n + gridDim.x cannot overflow for any b <= INT_MAX.
    for (size_t n = blockIdx.x; n < (size_t)b; n += gridDim.x) {
        const float* sn = s + n * COV_DIM;
        if (t < COV_DIM) h[t] = expf(0.5f * sn[t]);
        __syncthreads();

        // Rows 0..63, columns 0..62 of V (columns 63, 64 of the padded stride are never read).
        for (int i = t; i < 64 * COV_DIM; i += COV_LR_THREADS) {
            const int j = i / COV_DIM;
            const int d = i - j * COV_DIM;
            float x = 0.0f;
            if (j < COV_DIM) x = w[i] * h[d];  // i = j·63 + d indexes W directly
            v[j * COV_LR_LD + d] = x;
        }
        __syncthreads();

        float acc[4][4];
#pragma unroll
        for (int a = 0; a < 4; a++) {
#pragma unroll
            for (int c = 0; c < 4; c++) acc[a][c] = 0.0f;
        }
#pragma unroll 3
        for (int d = 0; d < COV_DIM; d++) {
            float x[4], y[4];
#pragma unroll
            for (int a = 0; a < 4; a++) x[a] = v[(tj + 16 * a) * COV_LR_LD + d];
#pragma unroll
            for (int c = 0; c < 4; c++) y[c] = v[(tk + 16 * c) * COV_LR_LD + d];
#pragma unroll
            for (int a = 0; a < 4; a++) {
#pragma unroll
                for (int c = 0; c < 4; c++) acc[a][c] = fmaf(x[a], y[c], acc[a][c]);
            }
        }
        __syncthreads();  // every thread is done reading V before Σ overwrites it

#pragma unroll
        for (int a = 0; a < 4; a++) {
            const int j = tj + 16 * a;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int k = tk + 16 * c;
                if (j < COV_DIM && k < COV_DIM) v[j * COV_DIM + k] = acc[a][c];
            }
        }
        __syncthreads();

        float* cn = cov + n * COV_NN;
        for (int i = t; i < COV_NN; i += COV_LR_THREADS) cn[i] = v[i];
        if (t < COV_JOINTS) {
            // Σ[3t+c, 3t+c] sits at (3t+c)·64 in the dense 63-stride layout.
            const float* p = v + 3 * t * (COV_DIM + 1);
            unc[n * COV_JOINTS + t] = (p[0] + p[COV_DIM + 1]) + p[2 * (COV_DIM + 1)];
        }
        __syncthreads();  // the next sample overwrites h and v
    }
}

// ------------------------------------------------------------------------------------------------
// full: Σ = (L·Lᵀ)⁻¹ = Mᵀ·M, M = L⁻¹ (lower-triangular), by a triangular inverse (forward
// substitution), never a general inverse.
//
// Why fp64: Σ is the inverse of the precision L·Lᵀ, so its rounding error grows with the
// conditioning of L (squared for Σ); forming M and Mᵀ·M in fp64 keeps that error far below
// fp32 resolution for any realistic L, and makes the kernel agree with the f64 CPU twin to about
// one fp32 ulp (both round once from nearly identical f64 values). fp64 is cheap here: the work
// is ~87 k fp64 FMAs per sample (42 k for L⁻¹, 46 k for Mᵀ·M) and the H100 runs fp64 FMAs at
// half the fp32 rate.
// M (63×63 doubles = 31 752 B) lives in shared memory.
//
// Work split: one block of 512 threads (16 warps) per sample (grid-strided over samples).
//   1. Stage the 1953 strictly-lower entries of L as floats (packed tril, exactly the readout),
//      and rdiag_i = 1 / L_ii = 1 / e^{-d_i} in f64 (the twin's M_ii = 1 / L_ii); barrier.
//   2. M = L⁻¹ column by column (column j solves L·m = e_j; columns are independent). One warp
//      owns a column; lane l keeps the running sums of rows l and l + 32 in registers. Step
//      k = j..62 ("right-looking" forward substitution):
//          m_k  = (δ_kj − acc_k) · rdiag_k      (computed by every lane, lane k % 32's is used)
//          broadcast m_k with one shuffle; store M[k, j] (one lane);
//          acc_i += L_ik · m_k  for the lane's rows i > k          (fp64 fma)
//      acc_i accumulates L_ik·m_k in the order k = j, j+1, ..., as the twin does. Column j
//      costs 63 − j steps; warp w takes columns w, 31 − w, 32 + w, 63 − w (zig-zag, the last
//      only when < 63), so every warp runs exactly 126 steps. The loop bounds are warp-uniform,
//      so the full-mask shuffles see all 32 lanes. M is only written in this phase (the
//      running sums stay in registers); its upper triangle is never written nor read. Barrier.
//   3. Σ_ab = Σ_{k = max(a,b)}^{62} M_ka·M_kb for the 2016 entries a ≥ b (the twin's order,
//      fp64 fma), strided over the threads; the entry is rounded once to f32 and stored at
//      (a, b) and (b, a) of a dense 63×63 float buffer that reuses the staging area of step 1
//      — the copy is the same float, so Σ is exactly symmetric. The diagonal is also kept in
//      f64 for u_j. Barrier.
//   4. Coalesced copy of Σ to cov; threads 0..20 write u_j = (Σ_aa + Σ_a+1 + Σ_a+2) in f64,
//      rounded once; barrier before the next sample reuses shared memory.
// Shared memory: 31 752 (M) + 504 (diag of Σ, f64) + 15 876 (union of staging and Σ) = 48 132 B,
// within the 48 KiB static limit.
// ------------------------------------------------------------------------------------------------
struct CovFullStage {
    float lp[COV_TRIL];       // L[r, c] = lp[r(r-1)/2 + c], c < r
    double rdiag[COV_DIM];    // 1 / L_ii
};
union CovFullScratch {
    CovFullStage in;          // phases 1-2
    float sig[COV_NN];        // phases 3-4: Σ rounded to f32, dense row-major
};

// Row a of the entry p = a(a+1)/2 + b (0 <= b <= a) of the packed lower triangle. The float
// square root is correctly rounded (no fast-math), so the estimate is off by at most one; the
// two loops make it exact. The same function is mirrored in src/cuda/covariance.rs's tests.
__device__ __forceinline__ int cov_tri_row(int p) {
    int a = (int)((sqrtf(8.0f * (float)p + 1.0f) - 1.0f) * 0.5f);
    while (a * (a + 1) / 2 > p) a--;
    while ((a + 1) * (a + 2) / 2 <= p) a++;
    return a;
}

extern "C" __global__ void __launch_bounds__(COV_FULL_THREADS)
covariance_full_fwd_f32(const float* __restrict__ raw, float* __restrict__ cov,
                        float* __restrict__ unc, int b) {
    __shared__ double m[COV_NN];        // M = L⁻¹, lower triangle, row-major stride 63
    __shared__ double sdiag[COV_DIM];   // Σ_aa in f64
    __shared__ CovFullScratch sc;

    const int t = threadIdx.x;
    const int lane = t & (HC_WARP_SIZE - 1);
    const int warp = t >> 5;  // 0..15

    // n is 64-bit so that n + gridDim.x cannot overflow for any b <= INT_MAX.
    for (size_t n = blockIdx.x; n < (size_t)b; n += gridDim.x) {
        const float* rn = raw + n * COV_FULL_RAW;

        // 1. Stage L.
        for (int i = t; i < COV_TRIL; i += COV_FULL_THREADS) sc.in.lp[i] = rn[COV_DIM + i];
        if (t < COV_DIM) sc.in.rdiag[t] = 1.0 / exp(-(double)rn[t]);
        __syncthreads();

        // 2. M = L⁻¹, one warp per column, zig-zag column schedule (see the header).
        for (int r = 0;; r++) {
            const int j = (r & 1) ? 16 * r + 15 - warp : 16 * r + warp;  // increasing in r
            if (j >= COV_DIM) break;  // warp-uniform
            const int i0 = lane;       // rows owned by this lane
            const int i1 = lane + 32;  // 32..63; row 63 does not exist
            double acc0 = 0.0, acc1 = 0.0;
            for (int k = j; k < COV_DIM; k++) {
                const double a = (k < 32) ? acc0 : acc1;
                const double cand = ((k == j ? 1.0 : 0.0) - a) * sc.in.rdiag[k];
                const double mk = __shfl_sync(HC_FULL_MASK, cand, k & 31);
                if (lane == (k & 31)) m[k * COV_DIM + j] = mk;
                if (i0 > k) acc0 = fma((double)sc.in.lp[i0 * (i0 - 1) / 2 + k], mk, acc0);
                if (i1 > k && i1 < COV_DIM)
                    acc1 = fma((double)sc.in.lp[i1 * (i1 - 1) / 2 + k], mk, acc1);
            }
        }
        __syncthreads();  // M complete; the staging area is free from here on

        // 3. Σ = Mᵀ·M, lower triangle, mirrored.
        for (int p = t; p < COV_DIM * (COV_DIM + 1) / 2; p += COV_FULL_THREADS) {
            const int a = cov_tri_row(p);
            const int bb = p - a * (a + 1) / 2;  // 0..a
            double acc = 0.0;
            for (int k = a; k < COV_DIM; k++)
                acc = fma(m[k * COV_DIM + a], m[k * COV_DIM + bb], acc);
            const float f = (float)acc;
            sc.sig[a * COV_DIM + bb] = f;
            sc.sig[bb * COV_DIM + a] = f;
            if (a == bb) sdiag[a] = acc;
        }
        __syncthreads();

        // 4. Write out.
        float* cn = cov + n * COV_NN;
        for (int i = t; i < COV_NN; i += COV_FULL_THREADS) cn[i] = sc.sig[i];
        if (t < COV_JOINTS) {
            const double* p = sdiag + 3 * t;
            unc[n * COV_JOINTS + t] = (float)((p[0] + p[1]) + p[2]);
        }
        __syncthreads();  // the next sample overwrites the staging area (= sig) and sdiag
    }
}
