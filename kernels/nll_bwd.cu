// nll_bwd.cu — the exact Gaussian NLL of `ours` (`--ours-nll exact`, SPEC §15b.2) through a
// batched 63×63 Cholesky in fp64, forward and backward:
//
//   cholesky_nll_fwd_f64   loss_b = w_b·½(log det Σ_b + rᵀΣ_b⁻¹r)
//   cholesky_nll_bwd_f64   the same loss, and d_mu, d_s (overwritten, × scale) and per-block
//                          partial sums of d_W (reduced by column_reduce_f64 of reduce_bwd.cu,
//                          which ACCUMULATES them into d_W)
//
//   Σ_b = W·diag(e^{s_b})·Wᵀ + εI,  r = g − μ (g the ground-truth joints, joint-major 3j + c),
//   w_b = 1 iff all 21 confidences are exactly 1, else the sample contributes 0 and its
//   gradients are 0. With P = Σ⁻¹, α = P·r, G = ∂L/∂Σ = ½(P − ααᵀ) (CPU twin:
//   train::nll::nll_exact_lowrank, f64, explicit inverse):
//       ∂L/∂μ = −α,   ∂L/∂s_d = e^{s_d}·(WᵀGW)_dd,   ∂L/∂W = 2·G·W·diag(e^s).
//
// Algorithm (one block of 256 threads per sample at a time, everything fp64 in shared memory):
//   1. V = W·diag(e^{s/2}), staged transposed (Vt[d][j]); Σ = V·Vᵀ + εI, lower triangle only,
//      stored column-major (As[j][i] = Σ_ij, i ≥ j) — threads 0..135 each own one 4×4 block
//      (J, K), J ≥ K, of the 16×16 block grid of the padded 64×64 matrix (63-term fp64 FMA
//      chains). Rows of a block past 62 and the upper half of diagonal blocks are skipped.
//   2. B = [W | r] (63 × 64, row-major), and a right-looking Cholesky of Σ that carries B along
//      (Gaussian elimination on the augmented matrix): at step k, p = current A_kk,
//          A_ij −= A_ik·A_jk / p   (k < j ≤ i),      B_ic −= A_ik·B_kc / p   (i > k).
//      One barrier per step: step k reads column k of A and row k of B, and writes only columns
//      > k of A and rows > k of B. 1/p_{k+1} is computed in step k by the thread that writes the
//      final A_{k+1,k+1} (thread (0, k + 1)), so no step waits for a division. Afterwards
//      L_kk = √p_k, L_ik = A_ik/√p_k, and the rows of B scaled by 1/√p_k are
//      [Z | y] = L⁻¹[W | r]. A pivot that is not > 0 (or NaN) stops the
//      sample: status = k + 1, loss and gradients NaN, no d_W contribution.
//   3. log det Σ = Σ_k log p_k; rᵀΣ⁻¹r = ‖y‖²; and, per column c of [Z | y],
//      n_c = Σ_i B_ic², u_c = Σ_i y_i·B_ic (so u_d = αᵀW_d = yᵀZ_d, n_d = W_dᵀPW_d):
//          ∂L/∂s_d = ½·e^{s_d}·(n_d − u_d²)·scale.
//   (forward kernel: stops here; only column 63 of B is carried.)
//   4. Back substitution Lᵀ·X = [Z | y] in place, the same right-looking way (step k = 62 … 0
//      reads row k of B and column k of Lᵀ, updates rows < k; one barrier per step), then
//      X = [P·W | α] (rows scaled by 1/√p_k on read):
//          ∂L/∂μ = −α·scale,   ∂L/∂W_id = scale·e^{s_d}·((PW)_id − α_i·u_d).
//
// Work split: thread t = (ty = t / 64, c = t % 64): column c of B (and of A for the updates
// A_ic, i ≥ c), rows i ≡ ty (mod 4); reads of A's column k and of B's row k are broadcasts or
// consecutive doubles; A's column-major writes have a row stride of 65 doubles across threads
// (bank-conflict free per half-warp). The block grid-strides over samples n = blockIdx.x + k·
// gridDim.x; thread (ty, c < 63) owns ∂L/∂W[i, c] for its 16 rows i of the block's partial sum
// partial[blockIdx.x] (63×63 fp64, row-major, global memory: zeroed first, then one read-modify-
// write per sample and entry by its owner, L2-resident; keeping it in registers cost 32 of them
// and two thirds of the occupancy). The launcher fixes gridDim.x from b alone (min(b, 384)), and
// column_reduce_f64 sums the partials in block order, so d_W is bitwise reproducible.
//
// Shared memory: 2 × 63 × 64 doubles dynamic (64 512 B; above 48 KiB, the launcher raises the
// limit) + 7.2 KB static; 80 registers (__launch_bounds__(256, 3)): 3 blocks per SM on an H100.
// CPU mirror (phases, thread by thread, race-checked shared memory): src/cuda/backward/
// mirror_nll.rs.
// Work per sample: Σ ≈ 137 k FMA, elimination 42 k (A) + 127 k (B), back substitution 127 k,
// all fp64; the critical path is the 2 × 63 barrier-separated steps.
//
// Launch requirements: 1-D blocks of exactly 256 threads; any grid >= 1 (partial holds
// gridDim.x × 3969 doubles); 63·64·2·8 bytes of dynamic shared memory.

#include "common.cuh"

#define CN_DIM 63
#define CN_JOINTS 21
#define CN_LD 64                  // row stride (doubles) of As and B
#define CN_NN (CN_DIM * CN_DIM)   // 3969
#define CN_THREADS 256
#define CN_TILES 136              // 4×4 blocks (J, K), J ≥ K, of the 16×16 block grid

// Sum over the 32 lanes of a warp in fp64; every lane returns the same value.
__device__ __forceinline__ double cn_warp_sum(double v) {
#pragma unroll
    for (int offset = HC_WARP_SIZE / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(HC_FULL_MASK, v, offset);
    return v;
}

template <bool BWD>
__device__ __forceinline__ void cn_body(const float* __restrict__ mu, const float* __restrict__ s,
                                        const float* __restrict__ w, const float* __restrict__ gt,
                                        double jitter, double scale, double* __restrict__ loss,
                                        int* __restrict__ status, float* __restrict__ d_mu,
                                        float* __restrict__ d_s, double* __restrict__ partial,
                                        int b) {
    extern __shared__ double cn_smem[];
    double* As = cn_smem;              // [63][64]: As[j·64 + i] = Σ_ij (i ≥ j), then L_ij
    double* Bm = As + CN_DIM * CN_LD;  // [63][64]: Vt, then [W | r] → [Z | y] → [PW | α]
    __shared__ double ev[CN_LD];       // e^{s_d}
    __shared__ double hv[CN_LD];       // e^{s_d / 2}
    __shared__ double piv[CN_LD];      // pivots p_k
    __shared__ double rps[CN_LD];      // 1 / p_k, computed by the thread that finished A_kk
    __shared__ double rl[CN_LD];       // 1 / √p_k
    __shared__ double red[2][4][CN_LD];
    __shared__ double uv[CN_LD];       // u_c
    __shared__ double logdet_s, quad_s;
    __shared__ int fail_s;

    const int t = threadIdx.x;
    const int ty = t >> 6;  // 0..3
    const int c = t & 63;   // 0..63

    // This thread's 4×4 block of Σ (threads < 136): index t = J(J+1)/2 + K, K ≤ J.
    int tJ = 0, tK = 0;
    if (t < CN_TILES) {
        int J = (int)((sqrtf(8.0f * (float)t + 1.0f) - 1.0f) * 0.5f);
        while (J * (J + 1) / 2 > t) J--;
        while ((J + 1) * (J + 2) / 2 <= t) J++;
        tJ = J;
        tK = t - J * (J + 1) / 2;
    }

    // This block's ∂L/∂W partial: thread (ty, c < 63) owns rows ty + 4m of column c, zeroed
    // here and updated after each sample (L2-resident read-modify-writes of its own entries).
    double* pb = BWD ? partial + (size_t)blockIdx.x * CN_NN : nullptr;
    if (BWD && c < CN_DIM) {
        for (int i = ty; i < CN_DIM; i += 4) pb[i * CN_DIM + c] = 0.0;
    }

    for (size_t n = blockIdx.x; n < (size_t)b; n += gridDim.x) {
        const float* gn = gt + n * (4 * CN_JOINTS);
        // 0. Sample weight, e^s, e^{s/2}. (__syncthreads_and is a barrier with a uniform result.)
        if (t < CN_DIM) {
            const double sd = (double)s[n * CN_DIM + t];
            ev[t] = exp(sd);
            hv[t] = exp(0.5 * sd);
        }
        const bool confident = __syncthreads_and(t >= CN_JOINTS || gn[4 * t + 3] == 1.0f) != 0;
        if (!confident) {
            if (t < CN_DIM) {
                if (BWD) {
                    d_mu[n * CN_DIM + t] = 0.0f;
                    d_s[n * CN_DIM + t] = 0.0f;
                }
            }
            if (t == 0) {
                loss[n] = 0.0;
                status[n] = 0;
            }
            continue;  // uniform; nothing in shared memory was written but ev, hv (see end)
        }

        // 1. Vt[d][j] = W[j][d]·e^{s_d/2} (column 63 zero).
        for (int idx = t; idx < CN_DIM * CN_LD; idx += CN_THREADS) {
            const int d = idx >> 6;
            const int j = idx & 63;
            Bm[idx] = j < CN_DIM ? (double)w[j * CN_DIM + d] * hv[d] : 0.0;
        }
        __syncthreads();

        // 2a. Σ = V·Vᵀ + εI, lower triangle, column-major.
        if (t < CN_TILES) {
            double acc[4][4];
#pragma unroll
            for (int a = 0; a < 4; a++) {
#pragma unroll
                for (int e = 0; e < 4; e++) acc[a][e] = 0.0;
            }
#pragma unroll 2
            for (int d = 0; d < CN_DIM; d++) {
                const double2* row = reinterpret_cast<const double2*>(Bm + d * CN_LD);
                const double2 x0 = row[2 * tJ], x1 = row[2 * tJ + 1];
                const double2 y0 = row[2 * tK], y1 = row[2 * tK + 1];
                const double xa[4] = {x0.x, x0.y, x1.x, x1.y};
                const double ya[4] = {y0.x, y0.y, y1.x, y1.y};
#pragma unroll
                for (int a = 0; a < 4; a++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[a][e] = fma(xa[a], ya[e], acc[a][e]);
                }
            }
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const int i = 4 * tJ + a;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 4 * tK + e;
                    if (i < CN_DIM && j <= i)
                        As[j * CN_LD + i] = acc[a][e] + (i == j ? jitter : 0.0);
                }
            }
        }
        __syncthreads();  // Vt no longer needed: B is rewritten below

        // 2b. B = [W | r].
        for (int idx = t; idx < CN_DIM * CN_LD; idx += CN_THREADS) {
            const int i = idx >> 6;
            const int cc = idx & 63;
            Bm[idx] = cc < CN_DIM
                          ? (double)w[i * CN_DIM + cc]
                          : (double)gn[4 * (i / 3) + i % 3] - (double)mu[n * CN_DIM + i];
        }
        if (t == 0) {
            fail_s = 0;
            rps[0] = 1.0 / As[0];  // written in 2a, before the barrier
        }
        __syncthreads();

        // 2c. Elimination (Cholesky carrying B along).
        for (int k = 0; k < CN_DIM; k++) {
            const double p = As[k * CN_LD + k];
            if (!(p > 0.0)) {  // every thread reads the same p: a uniform exit
                if (t == 0) fail_s = k + 1;
                break;
            }
            const double rp = rps[k];  // 1 / p, off this step's critical path
            if (c > k && c < CN_DIM) {
                const double f = As[k * CN_LD + c] * rp;
                for (int i = c + ty; i < CN_DIM; i += 4) {
                    const double v = fma(-As[k * CN_LD + i], f, As[c * CN_LD + i]);
                    As[c * CN_LD + i] = v;
                    // i == k + 1 only for thread (0, k + 1): the final value of the next pivot.
                    if (i == k + 1) rps[k + 1] = 1.0 / v;
                }
            }
            if (BWD || c == CN_DIM) {
                const double g = Bm[k * CN_LD + c] * rp;
                for (int i = k + 1 + ty; i < CN_DIM; i += 4)
                    Bm[i * CN_LD + c] = fma(-As[k * CN_LD + i], g, Bm[i * CN_LD + c]);
            }
            if (t == 0) piv[k] = p;
            __syncthreads();
        }
        __syncthreads();  // fail_s (written before a break) is visible
        if (fail_s != 0) {  // uniform
            const float nanf_ = __int_as_float(0x7fc00000);
            if (t < CN_DIM && BWD) {
                d_mu[n * CN_DIM + t] = nanf_;
                d_s[n * CN_DIM + t] = nanf_;
            }
            if (t == 0) {
                loss[n] = __longlong_as_double(0x7ff8000000000000ll);
                status[n] = fail_s;
            }
            __syncthreads();  // everyone has read fail_s before the next sample resets it
            continue;
        }

        // 2d. 1/√p_k; scale L's columns (backward only) and B's rows.
        if (t < CN_DIM) rl[t] = 1.0 / sqrt(piv[t]);
        __syncthreads();
        for (int idx = t; idx < CN_DIM * CN_LD; idx += CN_THREADS) {
            const int i = idx >> 6;
            const int cc = idx & 63;
            if (BWD || cc == CN_DIM) Bm[idx] *= rl[i];
            // As[idx] = column i, row cc: L_cc,i = A / √p_i below the diagonal.
            if (BWD && cc > i && cc < CN_DIM) As[idx] *= rl[i];
        }
        __syncthreads();

        // 3. Column statistics n_c, u_c, and log det (warp 4).
        if (BWD || c == CN_DIM) {
            double ns = 0.0, us = 0.0;
            for (int i = ty; i < CN_DIM; i += 4) {
                const double v = Bm[i * CN_LD + c];
                ns = fma(v, v, ns);
                us = fma(Bm[i * CN_LD + CN_DIM], v, us);
            }
            red[0][ty][c] = ns;
            red[1][ty][c] = us;
        }
        if ((t >> 5) == 4) {
            const int lane = t & 31;
            double l = log(piv[lane]);
            if (lane + 32 < CN_DIM) l += log(piv[lane + 32]);
            l = cn_warp_sum(l);
            if (lane == 0) logdet_s = l;
        }
        __syncthreads();
        if (ty == 0 && (BWD || c == CN_DIM)) {
            const double nc = ((red[0][0][c] + red[0][1][c]) + red[0][2][c]) + red[0][3][c];
            const double uc = ((red[1][0][c] + red[1][1][c]) + red[1][2][c]) + red[1][3][c];
            uv[c] = uc;
            if (c == CN_DIM) quad_s = nc;
            if (BWD && c < CN_DIM)
                d_s[n * CN_DIM + c] = (float)(0.5 * scale * ev[c] * (nc - uc * uc));
        }
        __syncthreads();
        if (t == 0) {
            loss[n] = 0.5 * (logdet_s + quad_s);
            status[n] = 0;
        }

        if (BWD) {
            // 4. Back substitution with Lᵀ (rows of X scaled on read below).
            for (int k = CN_DIM - 1; k > 0; k--) {
                const double g = Bm[k * CN_LD + c] * rl[k];
                for (int i = ty; i < k; i += 4)
                    Bm[i * CN_LD + c] = fma(-As[i * CN_LD + k], g, Bm[i * CN_LD + c]);
                __syncthreads();
            }
            // X = [PW | α]: gradients of μ and the block's d_W.
            if (c == CN_DIM) {
                for (int i = ty; i < CN_DIM; i += 4)
                    d_mu[n * CN_DIM + i] = (float)(-scale * Bm[i * CN_LD + CN_DIM] * rl[i]);
            } else {
                const double se = scale * ev[c];
                const double u = uv[c];
                for (int i = ty; i < CN_DIM; i += 4) {
                    const double alpha = Bm[i * CN_LD + CN_DIM] * rl[i];
                    const double pw = Bm[i * CN_LD + c] * rl[i];
                    pb[i * CN_DIM + c] = fma(se, pw - alpha * u, pb[i * CN_DIM + c]);
                }
            }
        }
        __syncthreads();  // the next sample overwrites ev, hv, As, B, uv, fail_s
    }
}

// mu, s: [b, 63]; w: [63, 63]; gt: [b, 21, 4]; loss: [b] (fp64); status: [b] (0, or the failing
// pivot + 1). Launch: 256 threads, any grid >= 1, 64 512 bytes of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(CN_THREADS, 3)
cholesky_nll_fwd_f64(const float* __restrict__ mu, const float* __restrict__ s,
                     const float* __restrict__ w, const float* __restrict__ gt, double jitter,
                     double* __restrict__ loss, int* __restrict__ status, int b) {
    cn_body<false>(mu, s, w, gt, jitter, 1.0, loss, status, nullptr, nullptr, nullptr, b);
}

// As the forward, plus d_mu, d_s: [b, 63] (overwritten, × scale) and partial: [gridDim.x, 63, 63]
// (fp64, overwritten: this block's sum of ∂L/∂W × scale over its samples).
extern "C" __global__ void __launch_bounds__(CN_THREADS, 3)
cholesky_nll_bwd_f64(const float* __restrict__ mu, const float* __restrict__ s,
                     const float* __restrict__ w, const float* __restrict__ gt, double jitter,
                     double scale, double* __restrict__ loss, int* __restrict__ status,
                     float* __restrict__ d_mu, float* __restrict__ d_s,
                     double* __restrict__ partial, int b) {
    cn_body<true>(mu, s, w, gt, jitter, scale, loss, status, d_mu, d_s, partial, b);
}
