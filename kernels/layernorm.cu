// layernorm.cu — LayerNorm forward over the last dimension (PyTorch nn.LayerNorm semantics), and
// the same fused with the residual add that precedes every pre-norm LayerNorm:
//
//     layernorm_fwd_{f32,bf16}:      y = LN(x)
//     add_layernorm_fwd_{f32,bf16}:  x += r (in place, fp32),  then  y = LN(x)
//
//     LN(x)[r, c] = (x[r, c] - mean_r) * rstd_r * gamma[c] + beta[c]
//     mean_r  = sum_c x[r, c] / cols
//     var_r   = sum_c (x[r, c] - mean_r)^2 / cols          (biased variance)
//     rstd_r  = 1 / sqrt(var_r + eps)
//
// x, r, gamma, beta and all statistics are fp32 (x is the fp32 residual stream, r a GEMM output
// in fp32). y is fp32 (_f32) or bf16 (_bf16: the input of a bf16 GEMM; each output is computed
// in fp32 exactly as in _f32 and then rounded to nearest even, see bf16.cuh). The fused add is
// one fp32 addition per element, x[c] + r[c], written back to x before the row's statistics are
// taken from the sum, so x is read once, r once, and x written once.
//
// CPU twins: layernorm_fwd_cpu in src/ops/layernorm.rs (after r is added, for the fused kernels;
// after rounding to bf16, for the bf16 outputs). Launchers: src/cuda/layernorm.rs.
//
// Numerics: the corrected two-pass algorithm (Chan, Golub & LeVeque 1983) in fp32, over values
// the row already holds in registers or shared memory:
//   pass 1:  m    = sum(x) / n                        (fp32 mean, off by delta = m - mean_r)
//   pass 2:  d    = x - m,  S1 = sum(d),  S2 = sum(d^2)
//            corr = S1 / n                            (= -delta: measures pass 1's rounding)
//            var  = max(S2 / n - corr^2, 0)           (corr^2 = delta^2, a tiny correction)
//   output:  y    = ((x - m) - corr) * rstd * gamma + beta
// The deviations d are small numbers, so S1 and S2 are accurate whatever the row's mean; the
// correction removes the fp32 mean's rounding error (|delta| ~ ulp(mean)), which would otherwise
// show up as delta / std in every output of a row with a large mean and a small spread. The
// single-pass E[x^2] - E[x]^2 form is never used: for rows like x ≈ 50 ± 3 it cancels
// catastrophically. Reductions are fixed shuffle trees (no atomics), so the result is bitwise
// deterministic for a given launch configuration.
//
// How the work is split (the same for all four kernels; two paths, chosen from cols inside the
// kernel, uniform over the grid so there is no divergence):
//
//   Warp path, cols <= LN_WARP_MAX_COLS (1280; covers the ViT, cols = 1280, and the decoder,
//   cols = 1024). One warp owns one row; a block of blockDim.x threads holds blockDim.x / 32
//   rows, and the grid strides over rows if it has fewer warps than rows. Each lane loads its
//   part of the row into registers once (V float4 = 4V floats per lane, V = 10 for 1280 columns,
//   8 for 1024), so x (and r) are read from global memory exactly once; the fused kernels add r
//   and store the sum back to x during that load. Layouts:
//     - float4 layout when cols % 4 == 0 and all pointers are aligned for 4-element vectors
//       (16 bytes for fp32 arrays, 8 bytes for a bf16 output): lane l holds columns
//       4*(l + 32*i) .. +3, i = 0..V-1 (each i is one coalesced 512-byte warp transaction);
//     - otherwise scalar layout: lane l holds columns l + 32*j, j = 0..4V-1.
//   The statistics are warp butterflies (warp_sum, warp_sum2) over the per-lane partial sums, so
//   every lane ends with the same mean, corr and rstd and writes its own columns. No shared
//   memory, no __syncthreads. A lane only ever reads back the x columns it wrote itself.
//
//   Block path, cols > LN_WARP_MAX_COLS (any size). One block owns one row (grid-strided over
//   rows); thread t handles columns t, t + blockDim.x, ... (float4 groups t, t + blockDim.x, ...
//   in the vector passes). First the row is staged: if the launch supplied at least cols * 4
//   bytes of dynamic shared memory it is copied into shared memory (for the fused kernels, the
//   sum x + r is copied there and also written back to x); both statistics passes and the output
//   pass then read it from there, so x is read from global memory once. With less shared memory
//   the passes re-read x from global memory (L1/L2-resident for one row; for the fused kernels
//   the x that the staging pass just updated), which keeps the kernel correct for any cols. A
//   __syncthreads separates staging from the passes (they read columns other threads staged),
//   and another one ends each row (the next row overwrites shared memory and x). The sums are
//   block_sum / block_sum2 reductions (warp butterflies, then one warp over the per-warp
//   partials).
//
// Launch requirements: 1-D blocks with blockDim.x a multiple of 32 and <= 256; any grid size
// >= 1 (rows are grid-strided). The launcher picks 1-4 warps per block (4 when rows >= 4 x SMs,
// fewer so that small batches still spread over every SM) and ceil(rows / warps) blocks for the
// warp path, and 256 threads, one block per row and cols * 4 bytes of dynamic shared memory
// (when that fits in the default 48 KiB) for the block path. x must not overlap out or r (the
// launchers guarantee it through Rust borrows; the kernels use __restrict__).

#include "bf16.cuh"
#include "common.cuh"

// Largest row the warp path keeps in registers: 32 lanes x 4 floats x LN_MAX_V.
// Keep in sync with LN_WARP_MAX_COLS in src/cuda/layernorm.rs (a mismatch only costs speed: both
// paths are correct for any launch that meets the requirements above).
#define LN_MAX_V 10
#define LN_WARP_MAX_COLS (HC_WARP_SIZE * 4 * LN_MAX_V)

// Launch bounds of all four kernels: at most 256 threads per block, and at least 2 such blocks
// per SM, which caps registers at 128 per thread. (With the bound on threads alone, ptxas of CUDA
// 13.0 chose 80 registers for layernorm_fwd_bf16 and spilled; with this bound no kernel spills.)
#define LN_MAX_THREADS 256

// Column held by lane `lane` in slot (i, k) of the warp path.
template <bool VEC>
__device__ __forceinline__ int ln_col(int lane, int i, int k) {
    return VEC ? 4 * (lane + HC_WARP_SIZE * i) + k : lane + HC_WARP_SIZE * (4 * i + k);
}

// One row, one warp, the row in registers: V slots of 4 floats per lane. With ADD, x += r is
// stored back to xr while loading (rr is unused otherwise).
template <int V, bool VEC, bool ADD, typename T>
__device__ __forceinline__ void ln_row_warp(float* __restrict__ xr, const float* __restrict__ rr,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta, T* __restrict__ yr,
                                            int cols, float eps, int lane) {
    float v[V][4];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
        if (VEC) {
            const int c = ln_col<true>(lane, i, 0);
            float4 t = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (c < cols) {  // cols % 4 == 0: the whole float4 is in the row
                t = load4(xr + c);
                if (ADD) {
                    const float4 d = load4(rr + c);
                    t.x += d.x;
                    t.y += d.y;
                    t.z += d.z;
                    t.w += d.w;
                    store4(xr + c, t);
                }
            }
            v[i][0] = t.x;
            v[i][1] = t.y;
            v[i][2] = t.z;
            v[i][3] = t.w;
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = ln_col<false>(lane, i, k);
                float t = 0.0f;
                if (c < cols) {
                    t = xr[c];
                    if (ADD) {
                        t += rr[c];
                        xr[c] = t;
                    }
                }
                v[i][k] = t;
            }
        }
        sum += (v[i][0] + v[i][1]) + (v[i][2] + v[i][3]);  // padding slots hold exact zeros
    }
    const float mean = warp_sum(sum) / (float)cols;

    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (ln_col<VEC>(lane, i, k) < cols) {  // padding slots would add -mean, mean^2
                const float d = v[i][k] - mean;
                s1 += d;
                s2 += d * d;
            }
        }
    }
    warp_sum2(s1, s2);
    const float corr = s1 / (float)cols;
    const float rstd = 1.0f / sqrtf(fmaxf(s2 / (float)cols - corr * corr, 0.0f) + eps);

#pragma unroll
    for (int i = 0; i < V; i++) {
        if (VEC) {
            const int c = ln_col<true>(lane, i, 0);
            if (c < cols) {
                const float4 g = load4(gamma + c);
                const float4 b = load4(beta + c);
                float4 o;
                o.x = ((v[i][0] - mean) - corr) * rstd * g.x + b.x;
                o.y = ((v[i][1] - mean) - corr) * rstd * g.y + b.y;
                o.z = ((v[i][2] - mean) - corr) * rstd * g.z + b.z;
                o.w = ((v[i][3] - mean) - corr) * rstd * g.w + b.w;
                store4(yr + c, o);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = ln_col<false>(lane, i, k);
                if (c < cols)
                    yr[c] = from_f32<T>(((v[i][k] - mean) - corr) * rstd * gamma[c] + beta[c]);
            }
        }
    }
}

// Picks the smallest register footprint V (float4 slots per lane) that holds the row.
template <bool VEC, bool ADD, typename T>
__device__ __forceinline__ void ln_row_warp_any(float* __restrict__ xr,
                                                const float* __restrict__ rr,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta,
                                                T* __restrict__ yr, int cols, float eps,
                                                int lane) {
    if (cols <= 128) {
        ln_row_warp<1, VEC, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
    } else if (cols <= 256) {
        ln_row_warp<2, VEC, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
    } else if (cols <= 512) {
        ln_row_warp<4, VEC, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
    } else if (cols <= 1024) {
        ln_row_warp<8, VEC, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
    } else {
        ln_row_warp<LN_MAX_V, VEC, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
    }
}

// Block path: one block per row, the row in dynamic shared memory when the launch provides it.
template <bool ADD, typename T>
__device__ __forceinline__ void ln_rows_block(float* __restrict__ x, const float* __restrict__ r,
                                              const float* __restrict__ gamma,
                                              const float* __restrict__ beta,
                                              T* __restrict__ out, int rows, int cols,
                                              float eps, bool vec) {
    extern __shared__ float4 ln_smem4[];  // float4 for 16-byte alignment of the staged row
    __shared__ float scratch[2 * HC_WARP_SIZE];
    float* ln_smem = reinterpret_cast<float*>(ln_smem4);

    const bool staged = (size_t)dynamic_smem_bytes() >= (size_t)cols * sizeof(float);
    const int tid = threadIdx.x;
    const int nt = blockDim.x;
    const int cols4 = cols / 4;  // only used when vec (cols % 4 == 0)

    // 64-bit row index: row + gridDim.x must not wrap for rows near 2^31.
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        float* xr = x + (size_t)row * cols;
        const float* rr = ADD ? r + (size_t)row * cols : nullptr;
        T* yr = out + (size_t)row * cols;

        // Staging: x += r (fused kernels) and/or the copy into shared memory.
        if (ADD || staged) {
            if (vec) {
                for (int c4 = tid; c4 < cols4; c4 += nt) {
                    float4 t = load4(xr + 4 * c4);
                    if (ADD) {
                        const float4 d = load4(rr + 4 * c4);
                        t.x += d.x;
                        t.y += d.y;
                        t.z += d.z;
                        t.w += d.w;
                        store4(xr + 4 * c4, t);
                    }
                    if (staged) ln_smem4[c4] = t;
                }
            } else {
                for (int c = tid; c < cols; c += nt) {
                    float t = xr[c];
                    if (ADD) {
                        t += rr[c];
                        xr[c] = t;
                    }
                    if (staged) ln_smem[c] = t;
                }
            }
            __syncthreads();  // the passes below read columns that other threads staged
        }
        const float* src = staged ? ln_smem : xr;

        float s = 0.0f;
        for (int c = tid; c < cols; c += nt) s += src[c];
        const float mean = block_sum(s, scratch) / (float)cols;

        float s1 = 0.0f, s2 = 0.0f;
        for (int c = tid; c < cols; c += nt) {
            const float d = src[c] - mean;
            s1 += d;
            s2 += d * d;
        }
        block_sum2(s1, s2, scratch);
        const float corr = s1 / (float)cols;
        const float rstd = 1.0f / sqrtf(fmaxf(s2 / (float)cols - corr * corr, 0.0f) + eps);

        if (vec) {
            for (int c4 = tid; c4 < cols4; c4 += nt) {
                const float4 xv = load4(src + 4 * c4);
                const float4 g = load4(gamma + 4 * c4);
                const float4 b = load4(beta + 4 * c4);
                float4 o;
                o.x = ((xv.x - mean) - corr) * rstd * g.x + b.x;
                o.y = ((xv.y - mean) - corr) * rstd * g.y + b.y;
                o.z = ((xv.z - mean) - corr) * rstd * g.z + b.z;
                o.w = ((xv.w - mean) - corr) * rstd * g.w + b.w;
                store4(yr + 4 * c4, o);
            }
        } else {
            for (int c = tid; c < cols; c += nt)
                yr[c] = from_f32<T>(((src[c] - mean) - corr) * rstd * gamma[c] + beta[c]);
        }
        __syncthreads();  // the next row overwrites ln_smem
    }
}

// The body of all four kernels. x is only written when ADD (the plain kernels pass their const
// input through a const_cast and never store to it).
template <bool ADD, typename T>
__device__ __forceinline__ void ln_fwd(float* __restrict__ x, const float* __restrict__ r,
                                       const float* __restrict__ gamma,
                                       const float* __restrict__ beta, T* __restrict__ out,
                                       int rows, int cols, float eps) {
    if (rows <= 0 || cols <= 0) return;
    const bool vec = (cols % 4 == 0) && is_aligned16(x) && (!ADD || is_aligned16(r)) &&
                     is_aligned16(gamma) && is_aligned16(beta) && is_aligned_vec4(out);

    if (cols > LN_WARP_MAX_COLS) {
        ln_rows_block<ADD>(x, r, gamma, beta, out, rows, cols, eps, vec);
        return;
    }

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warps_per_block = blockDim.x / HC_WARP_SIZE;
    // 64-bit row indices: the grid's warp count and row + stride may exceed 2^31 when rows
    // is close to it.
    const long long warp_stride = (long long)gridDim.x * warps_per_block;
    for (long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / HC_WARP_SIZE;
         row < rows; row += warp_stride) {
        float* xr = x + (size_t)row * cols;
        const float* rr = ADD ? r + (size_t)row * cols : nullptr;
        T* yr = out + (size_t)row * cols;
        if (vec) {
            ln_row_warp_any<true, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
        } else {
            ln_row_warp_any<false, ADD>(xr, rr, gamma, beta, yr, cols, eps, lane);
        }
    }
}

// x, out: rows x cols, row-major; gamma, beta: cols. See the header for the launch layout.
extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
layernorm_fwd_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                  const float* __restrict__ beta, float* __restrict__ out, int rows, int cols,
                  float eps) {
    ln_fwd<false>(const_cast<float*>(x), nullptr, gamma, beta, out, rows, cols, eps);
}

// As layernorm_fwd_f32 with a bf16 output (rounded to nearest even).
extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
layernorm_fwd_bf16(const float* __restrict__ x, const float* __restrict__ gamma,
                   const float* __restrict__ beta, bf16_t* __restrict__ out, int rows, int cols,
                   float eps) {
    ln_fwd<false>(const_cast<float*>(x), nullptr, gamma, beta, out, rows, cols, eps);
}

// x += r in place, then out = LN(x). x, r, out: rows x cols; gamma, beta: cols.
extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
add_layernorm_fwd_f32(float* __restrict__ x, const float* __restrict__ r,
                      const float* __restrict__ gamma, const float* __restrict__ beta,
                      float* __restrict__ out, int rows, int cols, float eps) {
    ln_fwd<true>(x, r, gamma, beta, out, rows, cols, eps);
}

// As add_layernorm_fwd_f32 with a bf16 output (x stays fp32).
extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
add_layernorm_fwd_bf16(float* __restrict__ x, const float* __restrict__ r,
                       const float* __restrict__ gamma, const float* __restrict__ beta,
                       bf16_t* __restrict__ out, int rows, int cols, float eps) {
    ln_fwd<true>(x, r, gamma, beta, out, rows, cols, eps);
}
