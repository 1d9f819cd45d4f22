// layernorm.cu — LayerNorm forward over the last dimension (PyTorch nn.LayerNorm semantics):
//
//     y[r, c] = (x[r, c] - mean_r) * rstd_r * gamma[c] + beta[c]
//     mean_r  = sum_c x[r, c] / cols
//     var_r   = sum_c (x[r, c] - mean_r)^2 / cols          (biased variance)
//     rstd_r  = 1 / sqrt(var_r + eps)
//
// CPU twin: layernorm_fwd_cpu in src/ops/layernorm.rs. Launcher: src/cuda/layernorm.rs.
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
// How the work is split (one kernel, two paths, chosen from cols inside the kernel, uniform
// over the grid so there is no divergence):
//
//   Warp path, cols <= LN_WARP_MAX_COLS (1280; covers the ViT, cols = 1280, and the decoder,
//   cols = 1024). One warp owns one row; a block of blockDim.x threads holds blockDim.x / 32
//   rows, and the grid strides over rows if it has fewer warps than rows. Each lane loads its
//   part of the row into registers once (V float4 = 4V floats per lane, V = 10 for 1280 columns,
//   8 for 1024), so x is read from global memory exactly once:
//     - float4 layout when cols % 4 == 0 and all four pointers are 16-byte aligned:
//       lane l holds columns 4*(l + 32*i) .. +3, i = 0..V-1 (each i is one coalesced 512-byte
//       warp transaction);
//     - otherwise scalar layout: lane l holds columns l + 32*j, j = 0..4V-1.
//   The statistics are warp butterflies (warp_sum, warp_sum2) over the per-lane partial sums, so
//   every lane ends with the same mean, corr and rstd and writes its own columns. No shared
//   memory, no __syncthreads.
//
//   Block path, cols > LN_WARP_MAX_COLS (any size). One block owns one row (grid-strided over
//   rows); thread t handles columns t, t + blockDim.x, ... If the launch supplied at least
//   cols * 4 bytes of dynamic shared memory, the row is first copied into shared memory (float4
//   copies when aligned) and both statistics passes and the output pass read it from there, so x
//   is read from global memory once; with less shared memory the passes re-read x from global
//   memory (L1/L2-resident for one row), which keeps the kernel correct for any cols. The sums
//   are block_sum / block_sum2 reductions (warp butterflies, then one warp over the per-warp
//   partials).
//
// Launch requirements: 1-D blocks with blockDim.x a multiple of 32 and <= 256; any grid size
// >= 1 (rows are grid-strided). The launcher picks 1-4 warps per block (4 when rows >= 4 x SMs,
// fewer so that small batches still spread over every SM) and ceil(rows / warps) blocks for the
// warp path, and 256 threads, one block per row and cols * 4 bytes of dynamic shared memory
// (when that fits in the default 48 KiB) for the block path.

#include "common.cuh"

// Largest row the warp path keeps in registers: 32 lanes x 4 floats x LN_MAX_V.
// Keep in sync with LN_WARP_MAX_COLS in src/cuda/layernorm.rs (a mismatch only costs speed: both
// paths are correct for any launch that meets the requirements above).
#define LN_MAX_V 10
#define LN_WARP_MAX_COLS (HC_WARP_SIZE * 4 * LN_MAX_V)

// Column held by lane `lane` in slot (i, k) of the warp path.
template <bool VEC>
__device__ __forceinline__ int ln_col(int lane, int i, int k) {
    return VEC ? 4 * (lane + HC_WARP_SIZE * i) + k : lane + HC_WARP_SIZE * (4 * i + k);
}

// One row, one warp, the row in registers: V slots of 4 floats per lane.
template <int V, bool VEC>
__device__ __forceinline__ void ln_row_warp(const float* __restrict__ xr,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta,
                                            float* __restrict__ yr, int cols, float eps,
                                            int lane) {
    float v[V][4];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
        if (VEC) {
            const int c = ln_col<true>(lane, i, 0);
            float4 t = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (c < cols) t = *reinterpret_cast<const float4*>(xr + c);  // whole float4 in row
            v[i][0] = t.x;
            v[i][1] = t.y;
            v[i][2] = t.z;
            v[i][3] = t.w;
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = ln_col<false>(lane, i, k);
                v[i][k] = (c < cols) ? xr[c] : 0.0f;
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
                const float4 g = *reinterpret_cast<const float4*>(gamma + c);
                const float4 b = *reinterpret_cast<const float4*>(beta + c);
                float4 o;
                o.x = ((v[i][0] - mean) - corr) * rstd * g.x + b.x;
                o.y = ((v[i][1] - mean) - corr) * rstd * g.y + b.y;
                o.z = ((v[i][2] - mean) - corr) * rstd * g.z + b.z;
                o.w = ((v[i][3] - mean) - corr) * rstd * g.w + b.w;
                *reinterpret_cast<float4*>(yr + c) = o;
            }
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = ln_col<false>(lane, i, k);
                if (c < cols) yr[c] = ((v[i][k] - mean) - corr) * rstd * gamma[c] + beta[c];
            }
        }
    }
}

// Picks the smallest register footprint V (float4 slots per lane) that holds the row.
template <bool VEC>
__device__ __forceinline__ void ln_row_warp_any(const float* __restrict__ xr,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta,
                                                float* __restrict__ yr, int cols, float eps,
                                                int lane) {
    if (cols <= 128) {
        ln_row_warp<1, VEC>(xr, gamma, beta, yr, cols, eps, lane);
    } else if (cols <= 256) {
        ln_row_warp<2, VEC>(xr, gamma, beta, yr, cols, eps, lane);
    } else if (cols <= 512) {
        ln_row_warp<4, VEC>(xr, gamma, beta, yr, cols, eps, lane);
    } else if (cols <= 1024) {
        ln_row_warp<8, VEC>(xr, gamma, beta, yr, cols, eps, lane);
    } else {
        ln_row_warp<LN_MAX_V, VEC>(xr, gamma, beta, yr, cols, eps, lane);
    }
}

// Block path: one block per row, the row in dynamic shared memory when the launch provides it.
__device__ __forceinline__ void ln_rows_block(const float* __restrict__ x,
                                              const float* __restrict__ gamma,
                                              const float* __restrict__ beta,
                                              float* __restrict__ out, int rows, int cols,
                                              float eps, bool vec) {
    extern __shared__ float4 ln_smem4[];  // float4 for 16-byte alignment of the staged row
    __shared__ float scratch[2 * HC_WARP_SIZE];
    float* ln_smem = reinterpret_cast<float*>(ln_smem4);

    const bool staged = (size_t)dynamic_smem_bytes() >= (size_t)cols * sizeof(float);
    const int tid = threadIdx.x;
    const int nt = blockDim.x;
    const int cols4 = cols / 4;  // only used when vec (cols % 4 == 0)

    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + (size_t)row * cols;
        float* yr = out + (size_t)row * cols;

        const float* src = xr;
        if (staged) {
            if (vec) {
                for (int c4 = tid; c4 < cols4; c4 += nt)
                    ln_smem4[c4] = reinterpret_cast<const float4*>(xr)[c4];
            } else {
                for (int c = tid; c < cols; c += nt) ln_smem[c] = xr[c];
            }
            __syncthreads();
            src = ln_smem;
        }

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
            const float4* src4 = reinterpret_cast<const float4*>(src);
            for (int c4 = tid; c4 < cols4; c4 += nt) {
                const float4 xv = src4[c4];
                const float4 g = reinterpret_cast<const float4*>(gamma)[c4];
                const float4 b = reinterpret_cast<const float4*>(beta)[c4];
                float4 o;
                o.x = ((xv.x - mean) - corr) * rstd * g.x + b.x;
                o.y = ((xv.y - mean) - corr) * rstd * g.y + b.y;
                o.z = ((xv.z - mean) - corr) * rstd * g.z + b.z;
                o.w = ((xv.w - mean) - corr) * rstd * g.w + b.w;
                reinterpret_cast<float4*>(yr)[c4] = o;
            }
        } else {
            for (int c = tid; c < cols; c += nt)
                yr[c] = ((src[c] - mean) - corr) * rstd * gamma[c] + beta[c];
        }
        __syncthreads();  // the next row overwrites ln_smem
    }
}

// x, out: rows x cols, row-major; gamma, beta: cols. See the header for the launch layout.
extern "C" __global__ void __launch_bounds__(256)
layernorm_fwd_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                  const float* __restrict__ beta, float* __restrict__ out, int rows, int cols,
                  float eps) {
    if (rows <= 0 || cols <= 0) return;
    const bool vec = (cols % 4 == 0) && is_aligned16(x) && is_aligned16(gamma) &&
                     is_aligned16(beta) && is_aligned16(out);

    if (cols > LN_WARP_MAX_COLS) {
        ln_rows_block(x, gamma, beta, out, rows, cols, eps, vec);
        return;
    }

    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warps_per_block = blockDim.x / HC_WARP_SIZE;
    const int warp_stride = gridDim.x * warps_per_block;
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / HC_WARP_SIZE; row < rows;
         row += warp_stride) {
        const float* xr = x + (size_t)row * cols;
        float* yr = out + (size_t)row * cols;
        if (vec) {
            ln_row_warp_any<true>(xr, gamma, beta, yr, cols, eps, lane);
        } else {
            ln_row_warp_any<false>(xr, gamma, beta, yr, cols, eps, lane);
        }
    }
}
