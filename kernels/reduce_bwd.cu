// reduce_bwd.cu — backward kernels whose parameter gradients are sums over rows, and the
// deterministic column reduction they share:
//
//   layernorm_bwd_f32         dx (overwritten) of LayerNorm, statistics recomputed as the forward
//                             does; per-block partial sums of dgamma = Σ dy·x̂ and dbeta = Σ dy
//   bias_grad_{f32,bf16}      per-block partial column sums of dy (the bias of a linear layer whose
//                             weight gradient goes through cuBLASLt)
//   pos_embed_bwd_f32         dpos[1 + t] += Σ_b dx[b, t] (in place) and the per-token sums for
//                             dpos[0] += Σ_b Σ_t dx[b, t]
//   column_reduce_{f32,f64}   out[c] += Σ_r partial[r, c], summed in a fixed order in fp64 and
//                             rounded once; columns < split go to out0, the others to out1
//
// Gradient convention: input gradients (dx) are OVERWRITTEN, parameter gradients (dgamma, dbeta,
// db, dpos) are ACCUMULATED (+=). No float atomics anywhere: a parameter gradient is a two-stage
// tree, (1) each block of the first kernel writes the partial sum of its own fixed range of rows
// to a scratch buffer `partial` [blocks, ...] with plain stores, (2) column_reduce sums those
// partials in row order. The row ranges depend only on the launch arguments that the launchers
// derive from the shape (never from the device), so the result is bitwise reproducible for a
// given shape, on any GPU.
//
// CPU twins: ops::layernorm::layernorm_bwd_cpu, ops::linear::column_sums_acc (bias), and the
// positional-embedding loop of model::backward (ViT). Launchers: src/cuda/backward.rs.
//
// ---------------------------------------------------------------------------------------------
// layernorm_bwd_f32(x, gamma, dy, dx, partial, rows, cols, eps, rows_per_block)
//
//   With the statistics of the forward (kernels/layernorm.cu: mean m, corr, rstd from the
//   corrected two-pass method), x̂ = ((x − m) − corr)·rstd, g = dy·γ:
//       dx = rstd·((g − mean(g)) − x̂·mean(g·x̂)),   dgamma += Σ_rows dy·x̂,   dbeta += Σ_rows dy.
//
//   Work split: block b owns rows [b·rows_per_block, min(rows, (b+1)·rows_per_block)) and
//   processes them one after the other, the whole block on one row (block-wide reductions:
//   block_sum / block_sum2 of common.cuh, fixed shuffle trees). Thread t owns the same columns
//   in every row, so it accumulates its columns' dgamma/dbeta partials in registers across the
//   block's rows and writes them once, at the end, to partial[b] = [dgamma part | dbeta part]
//   (2·cols floats). Two paths, uniform over the grid:
//     * register path, cols <= 4·4·blockDim.x: V = ceil(cols / (4·blockDim.x)) <= 4 slots of 4
//       columns per thread (float4 layout when cols % 4 == 0 and x, gamma, dy, dx are 16-byte
//       aligned: thread t holds columns 4·(t + blockDim.x·i) + k; otherwise columns
//       t + blockDim.x·(4i + k)); the row (x̂ and g = dy·γ) lives in registers, so x and dy are
//       read once and dx written once (γ, the same for every row, is re-read from L1 per row:
//       keeping it in registers too made ptxas spill at V = 4);
//     * stream path, any cols: thread t owns columns t, t + blockDim.x, ...; every pass re-reads
//       the row from global memory (L1/L2-resident for one row), and the partial sums are
//       accumulated in the block's own row of `partial` (thread-owned entries: no races).
//   Per row: 3 block reductions (sum x; Σd, Σd²; Σg, Σg·x̂), each ending with a barrier; the row
//   loop is block-uniform. No shared memory besides the 64-float reduction scratch (block_sum2's
//   final barrier lets the next reduction reuse it at once). Numerics: everything fp32 as the
//   forward; against the f64 twin ~1e-6 of max|dx|.
//
// Launch requirements: 1-D blocks, blockDim.x a multiple of 32 in [32, 256]; grid = the number
//   of row blocks, partial holds grid·2·cols floats. The launcher picks blockDim.x so that V is
//   small (1280 columns: 160 threads, V = 2; 1024: 256 threads, V = 1) and rows_per_block =
//   max(16, ceil(rows / 1024)), so at most 1024 row blocks.
//
// ---------------------------------------------------------------------------------------------
// bias_grad_{f32,bf16}(dy, partial, rows, cols, rows_per_block): 2-D grid; blockIdx.y = row block
//   (rows [y·rpb, (y+1)·rpb)), x-dimension grid-strides over the columns, one column per thread
//   (consecutive threads, consecutive addresses: coalesced). A thread sums its column over the
//   row block in 4 interleaved fp32 chains combined in a fixed order, and writes
//   partial[y, c]. Then column_reduce(partial [gridDim.y, cols]) → db.
//
// pos_embed_bwd_f32(dx, dpos, partial, b, t, c): one thread per (token, channel) j < t·c
//   (1-D grid-stride): s_j = Σ_b dx[b, j] (4 fp32 chains, fixed order); dpos[c + j] += s_j (the
//   slot 1 + token: the rows 1..t of pos are contiguous) and partial[j] = s_j. Then
//   column_reduce(partial [t, c]) → dpos[0..c) (Σ over tokens). dx itself passes through
//   unchanged (the forward is an in-place add), so there is no input gradient to write.
//
// column_reduce_{f32,f64}(partial, out0, out1, nrows, ncols, split): blocks of 512 threads =
//   32 columns × 16 row groups; thread (g, x) sums column c = c0 + x over rows g, g + 16, ... in
//   fp64 (coalesced 128/256-byte row segments per warp), the 16 group sums go through shared
//   memory and thread (0, x) adds them in group order, rounds once to fp32 and does
//   out[c] += sum. Grid-strided over column tiles. Every column's summation order is fixed.

#include "bf16.cuh"
#include "common.cuh"

#define LNB_MAX_THREADS 256
#define LNB_MAX_V 4          // register path: at most 4 float4 slots (16 columns) per thread
#define LNB_SCALAR_THREADS 256

#define CR_COLS 32
#define CR_GROUPS 16
#define CR_THREADS (CR_COLS * CR_GROUPS)

// ---------------------------------------------------------------------------------------------
// LayerNorm backward.

// Column held by thread t (of nt) in slot (i, k) of the register path.
template <bool VEC>
__device__ __forceinline__ int lnb_col(int t, int nt, int i, int k) {
    return VEC ? 4 * (t + nt * i) + k : t + nt * (4 * i + k);
}

// Loads this thread's V·4 columns of row p (zeros beyond cols).
template <int V, bool VEC>
__device__ __forceinline__ void lnb_load(const float* __restrict__ p, float (&v)[V][4], int t,
                                         int nt, int cols) {
#pragma unroll
    for (int i = 0; i < V; i++) {
        if (VEC) {
            const int c = lnb_col<true>(t, nt, i, 0);
            float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (c < cols) a = load4(p + c);  // cols % 4 == 0: the float4 is all in or all out
            v[i][0] = a.x;
            v[i][1] = a.y;
            v[i][2] = a.z;
            v[i][3] = a.w;
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = lnb_col<false>(t, nt, i, k);
                v[i][k] = c < cols ? p[c] : 0.0f;
            }
        }
    }
}

// Register path: rows [r0, r1) of the block, each row in registers.
template <int V, bool VEC>
__device__ __forceinline__ void lnb_rows_reg(const float* __restrict__ x,
                                             const float* __restrict__ gamma,
                                             const float* __restrict__ dy, float* __restrict__ dx,
                                             float* __restrict__ part, long long r0, long long r1,
                                             int cols, float eps, float* scratch) {
    const int t = threadIdx.x;
    const int nt = blockDim.x;
    const float n = (float)cols;

    float accg[V][4], accb[V][4];
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < 4; k++) accg[i][k] = accb[i][k] = 0.0f;
    }

    for (long long r = r0; r < r1; r++) {  // block-uniform bounds
        const size_t off = (size_t)r * cols;
        float v[V][4];
        lnb_load<V, VEC>(x + off, v, t, nt, cols);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) sum += (v[i][0] + v[i][1]) + (v[i][2] + v[i][3]);
        const float mean = block_sum(sum, scratch) / n;

        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                if (lnb_col<VEC>(t, nt, i, k) < cols) {  // padding slots would add -mean
                    const float d = v[i][k] - mean;
                    s1 += d;
                    s2 += d * d;
                }
            }
        }
        block_sum2(s1, s2, scratch);
        const float corr = s1 / n;
        const float rstd = 1.0f / sqrtf(fmaxf(s2 / n - corr * corr, 0.0f) + eps);

        float g[V][4], gam[V][4];
        lnb_load<V, VEC>(dy + off, g, t, nt, cols);
        lnb_load<V, VEC>(gamma, gam, t, nt, cols);  // L1-resident: the same for every row
        float sg = 0.0f, sgx = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                if (lnb_col<VEC>(t, nt, i, k) < cols) {
                    const float xh = ((v[i][k] - mean) - corr) * rstd;
                    const float d = g[i][k];
                    accg[i][k] = fmaf(d, xh, accg[i][k]);
                    accb[i][k] += d;
                    const float gg = d * gam[i][k];
                    v[i][k] = xh;
                    g[i][k] = gg;
                    sg += gg;
                    sgx = fmaf(gg, xh, sgx);
                }
            }
        }
        block_sum2(sg, sgx, scratch);
        const float mg = sg / n;
        const float mgx = sgx / n;

        float* dxr = dx + off;
#pragma unroll
        for (int i = 0; i < V; i++) {
            if (VEC) {
                const int c = lnb_col<true>(t, nt, i, 0);
                if (c < cols) {
                    float4 o;
                    o.x = rstd * ((g[i][0] - mg) - v[i][0] * mgx);
                    o.y = rstd * ((g[i][1] - mg) - v[i][1] * mgx);
                    o.z = rstd * ((g[i][2] - mg) - v[i][2] * mgx);
                    o.w = rstd * ((g[i][3] - mg) - v[i][3] * mgx);
                    store4(dxr + c, o);
                }
            } else {
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const int c = lnb_col<false>(t, nt, i, k);
                    if (c < cols) dxr[c] = rstd * ((g[i][k] - mg) - v[i][k] * mgx);
                }
            }
        }
    }

    // The block's partials: [dgamma | dbeta], each thread its own columns.
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int c = lnb_col<VEC>(t, nt, i, k);
            if (c < cols) {
                part[c] = accg[i][k];
                part[cols + c] = accb[i][k];
            }
        }
    }
}

// Stream path: any cols; the block's partial row in global memory is thread-owned.
__device__ __forceinline__ void lnb_rows_stream(const float* __restrict__ x,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ dy,
                                                float* __restrict__ dx, float* __restrict__ part,
                                                long long r0, long long r1, int cols, float eps,
                                                float* scratch) {
    const int t = threadIdx.x;
    const int nt = blockDim.x;
    const float n = (float)cols;
    for (int c = t; c < cols; c += nt) part[c] = part[cols + c] = 0.0f;

    for (long long r = r0; r < r1; r++) {
        const size_t off = (size_t)r * cols;
        const float* xr = x + off;
        const float* dyr = dy + off;
        float s = 0.0f;
        for (int c = t; c < cols; c += nt) s += xr[c];
        const float mean = block_sum(s, scratch) / n;
        float s1 = 0.0f, s2 = 0.0f;
        for (int c = t; c < cols; c += nt) {
            const float d = xr[c] - mean;
            s1 += d;
            s2 += d * d;
        }
        block_sum2(s1, s2, scratch);
        const float corr = s1 / n;
        const float rstd = 1.0f / sqrtf(fmaxf(s2 / n - corr * corr, 0.0f) + eps);

        float sg = 0.0f, sgx = 0.0f;
        for (int c = t; c < cols; c += nt) {
            const float xh = ((xr[c] - mean) - corr) * rstd;
            const float d = dyr[c];
            part[c] = fmaf(d, xh, part[c]);
            part[cols + c] += d;
            const float gg = d * gamma[c];
            sg += gg;
            sgx = fmaf(gg, xh, sgx);
        }
        block_sum2(sg, sgx, scratch);
        const float mg = sg / n;
        const float mgx = sgx / n;
        float* dxr = dx + off;
        for (int c = t; c < cols; c += nt) {
            const float xh = ((xr[c] - mean) - corr) * rstd;
            const float gg = dyr[c] * gamma[c];
            dxr[c] = rstd * ((gg - mg) - xh * mgx);
        }
    }
}

template <bool VEC>
__device__ __forceinline__ void lnb_dispatch(const float* __restrict__ x,
                                             const float* __restrict__ gamma,
                                             const float* __restrict__ dy, float* __restrict__ dx,
                                             float* __restrict__ part, long long r0, long long r1,
                                             int cols, float eps, int v, float* scratch) {
    switch (v) {
        case 1: lnb_rows_reg<1, VEC>(x, gamma, dy, dx, part, r0, r1, cols, eps, scratch); break;
        case 2: lnb_rows_reg<2, VEC>(x, gamma, dy, dx, part, r0, r1, cols, eps, scratch); break;
        case 3: lnb_rows_reg<3, VEC>(x, gamma, dy, dx, part, r0, r1, cols, eps, scratch); break;
        case 4: lnb_rows_reg<4, VEC>(x, gamma, dy, dx, part, r0, r1, cols, eps, scratch); break;
        default: lnb_rows_stream(x, gamma, dy, dx, part, r0, r1, cols, eps, scratch); break;
    }
}

// x, dy, dx: rows × cols; gamma: cols; partial: gridDim.x × 2 × cols (this block's row is
// [dgamma | dbeta] of its rows). See the header for the launch layout.
extern "C" __global__ void __launch_bounds__(LNB_MAX_THREADS, 2)
layernorm_bwd_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                  const float* __restrict__ dy, float* __restrict__ dx,
                  float* __restrict__ partial, int rows, int cols, float eps,
                  int rows_per_block) {
    __shared__ float scratch[2 * HC_WARP_SIZE];  // block_sum / block_sum2 scratch
    if (rows <= 0 || cols <= 0 || rows_per_block <= 0) return;
    const long long r0 = (long long)blockIdx.x * rows_per_block;
    const long long r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : (long long)rows;
    float* part = partial + (size_t)blockIdx.x * 2 * cols;
    const int nt = blockDim.x;
    const int v = (cols + 4 * nt - 1) / (4 * nt);  // slots of 4 columns per thread
    const bool vec = (cols % 4 == 0) && is_aligned16(x) && is_aligned16(gamma) &&
                     is_aligned16(dy) && is_aligned16(dx);
    if (vec) {
        lnb_dispatch<true>(x, gamma, dy, dx, part, r0, r1, cols, eps, v, scratch);
    } else {
        lnb_dispatch<false>(x, gamma, dy, dx, part, r0, r1, cols, eps, v, scratch);
    }
}

// ---------------------------------------------------------------------------------------------
// Bias gradient partials.

template <typename T>
__device__ __forceinline__ void bias_partials(const T* __restrict__ dy, float* __restrict__ part,
                                              long long rows, int cols, int rows_per_block) {
    const long long r0 = (long long)blockIdx.y * rows_per_block;
    const long long r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    float* out = part + (size_t)blockIdx.y * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += stride) {
        const T* p = dy + c;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        long long r = r0;
        for (; r + 4 <= r1; r += 4) {
            s0 += to_f32(p[(size_t)r * cols]);
            s1 += to_f32(p[(size_t)(r + 1) * cols]);
            s2 += to_f32(p[(size_t)(r + 2) * cols]);
            s3 += to_f32(p[(size_t)(r + 3) * cols]);
        }
        for (; r < r1; r++) s0 += to_f32(p[(size_t)r * cols]);
        out[c] = (s0 + s1) + (s2 + s3);
    }
}

// dy: rows × cols; partial: gridDim.y × cols (row y = the column sums of rows
// [y·rows_per_block, (y+1)·rows_per_block)).
extern "C" __global__ void __launch_bounds__(LNB_SCALAR_THREADS)
bias_grad_f32(const float* __restrict__ dy, float* __restrict__ partial, int rows, int cols,
              int rows_per_block) {
    bias_partials(dy, partial, rows, cols, rows_per_block);
}

extern "C" __global__ void __launch_bounds__(LNB_SCALAR_THREADS)
bias_grad_bf16(const bf16_t* __restrict__ dy, float* __restrict__ partial, int rows, int cols,
               int rows_per_block) {
    bias_partials(dy, partial, rows, cols, rows_per_block);
}

// ---------------------------------------------------------------------------------------------
// Positional embedding.

// dx: [b, t, c]; dpos: [1 + t, c] (+=); partial: [t, c] (the per-token sums, overwritten).
extern "C" __global__ void __launch_bounds__(LNB_SCALAR_THREADS)
pos_embed_bwd_f32(const float* __restrict__ dx, float* __restrict__ dpos,
                  float* __restrict__ partial, int b, int t, int c) {
    const long long tc = (long long)t * c;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < tc; j += stride) {
        const float* p = dx + j;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        int bi = 0;
        for (; bi + 4 <= b; bi += 4) {
            s0 += p[(size_t)bi * tc];
            s1 += p[(size_t)(bi + 1) * tc];
            s2 += p[(size_t)(bi + 2) * tc];
            s3 += p[(size_t)(bi + 3) * tc];
        }
        for (; bi < b; bi++) s0 += p[(size_t)bi * tc];
        const float s = (s0 + s1) + (s2 + s3);
        dpos[c + j] += s;
        partial[j] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic column reduction.

template <typename T>
__device__ __forceinline__ void column_reduce(const T* __restrict__ part, float* __restrict__ out0,
                                              float* __restrict__ out1, long long nrows,
                                              long long ncols, long long split) {
    __shared__ double red[CR_GROUPS][CR_COLS];
    const int x = threadIdx.x % CR_COLS;
    const int g = threadIdx.x / CR_COLS;
    const long long tile_stride = (long long)gridDim.x * CR_COLS;
    for (long long c0 = (long long)blockIdx.x * CR_COLS; c0 < ncols; c0 += tile_stride) {
        const long long c = c0 + x;
        double s = 0.0;
        if (c < ncols) {
#pragma unroll 4
            for (long long r = g; r < nrows; r += CR_GROUPS) s += (double)part[r * ncols + c];
        }
        red[g][x] = s;
        __syncthreads();
        if (g == 0 && c < ncols) {
            double tot = red[0][x];
#pragma unroll
            for (int k = 1; k < CR_GROUPS; k++) tot += red[k][x];
            float* o = c < split ? out0 + c : out1 + (c - split);
            *o = *o + (float)tot;
        }
        __syncthreads();  // red is rewritten by the next tile
    }
}

// partial: nrows × ncols; out0 [split] += Σ_r partial[r, c] for c < split, out1 [ncols − split]
// for the others (out1 may be null when split == ncols). Launch: 512 threads, any grid >= 1.
extern "C" __global__ void __launch_bounds__(CR_THREADS)
column_reduce_f32(const float* __restrict__ partial, float* __restrict__ out0,
                  float* __restrict__ out1, long long nrows, long long ncols, long long split) {
    column_reduce(partial, out0, out1, nrows, ncols, split);
}

extern "C" __global__ void __launch_bounds__(CR_THREADS)
column_reduce_f64(const double* __restrict__ partial, float* __restrict__ out0,
                  float* __restrict__ out1, long long nrows, long long ncols, long long split) {
    column_reduce(partial, out0, out1, nrows, ncols, split);
}
