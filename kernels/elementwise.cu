// elementwise.cu — the small memory-bound passes between the GEMMs, and the small geometry ops
// of the MANO head:
//
//   cast_fwd_f32_to_bf16      y = bf16(x)  (round to nearest even, as half::bf16::from_f32)
//   cast_fwd_bf16_to_f32      y = f32(x)   (exact)
//   bias_gelu_fwd_{f32,bf16}  y[r, c] = act(y[r, c] + bias[c]) in place; bias optional (null),
//                             act = exact GELU 0.5·v·erfc(−v/√2) or identity (flag gelu)
//   add_rows_fwd_f32          x[r, j] += v[j]                 (same body, no GELU)
//   add_fwd_f32               x += y
//   add_pos_embed_fwd_f32     x[b, t, c] = (x[b, t, c] + pos[1 + t, c]) + pos[0, c]
//   im2col_fwd_{f32,bf16}     patch-embedding im2col (ops::patch_embed::im2col_cpu)
//   rot6d_fwd_f32             6D code → 3×3 rotation (ops::geometry::rot6d_to_rotmat)
//   camera_fwd_f32            cam → cam_t and the perspective projection of keypoints
//                             (ops::geometry::{cam_translation, project_cpu})
//
// CPU twins: src/ops/elementwise.rs (casts, bias/GELU, add, add_rows, pos-embed), src/ops/
// patch_embed.rs (im2col) and src/ops/geometry.rs (rot6d, camera). Launchers:
// src/cuda/elementwise.rs. Arithmetic is fp32; bf16 arrays are stored as raw bits (bf16.cuh),
// converted to fp32 on load and rounded to nearest even on store.
//
// How the work is split:
//   * Flat kernels (casts, add): a 1-D grid-stride loop with 64-bit indices. When every pointer
//     is aligned for 4-element vectors (16 B for fp32, 8 B for bf16), thread i handles elements
//     4i .. 4i+3 (one float4 / 8-byte access each), and the last n % 4 elements are done one per
//     thread afterwards; otherwise every element is done one per thread.
//   * Row kernels (bias_gelu, add_rows, add_pos_embed) over a rows × cols matrix: a 2-D grid;
//     blockIdx.y strides over rows (gridDim.y <= 65535), and the x-dimension of the grid strides
//     over the columns of a row, in groups of 4 (vector accesses; needs cols % 4 == 0 and aligned
//     pointers, which makes every row start aligned) or one column per thread. The column of an
//     element is then known without a division, and bias / pos are read coalesced.
//   * im2col: one block per output row (one token of one image: blockIdx.x grid-strides over
//     b·tokens), threads stride over the row's 3·P·P features in (channel, ky, kx) order, so the
//     writes are contiguous and each run of P kx values is a contiguous read of the image.
//   * rot6d, camera: one thread per code / per keypoint, 1-D grid-stride loop.
// No shared memory, no barriers, no reductions: every output element is written by exactly one
// thread and depends only on inputs (in-place kernels read and write the same element in the
// same thread). The in-place kernels need x not to overlap their other inputs (guaranteed by
// Rust borrows in the launchers; the kernels use __restrict__).
//
// rot6d and camera repeat the CPU twin's operations in its order with the rounding intrinsics
// (__fmul_rn, __fadd_rn, ...), which nvcc never contracts into FMAs, and IEEE-rounded division
// and square root, so they reproduce the twin bit for bit.
//
// Launch requirements: 1-D blocks of at most 256 threads (any count: nothing here uses warp-level
// operations); any grid >= 1 (1-D, or 2-D with gridDim.y <= 65535 for the row kernels). The
// launchers use 256 threads (fewer, in whole warps, for short rows and small im2col patches).

#include "bf16.cuh"
#include "common.cuh"

// Launch bounds of every kernel here: at most 256 threads per block and at least 4 such blocks
// per SM, i.e. at most 64 registers per thread. (With the thread bound alone, ptxas of CUDA 13.0
// targeted 32 registers and spilled in add_rows_fwd_f32.)
#define EW_THREADS 256
#define EW_MIN_BLOCKS 4

__device__ __forceinline__ long long ew_thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long ew_thread_count() {
    return (long long)gridDim.x * blockDim.x;
}

// Calls vec_op(i) for i = 0, 4, 8, ... < n - n % 4 (when vec) and then scalar_op(i) for every
// remaining element, each index exactly once over the whole grid.
template <typename VecOp, typename ScalarOp>
__device__ __forceinline__ void ew_flat(long long n, bool vec, VecOp vec_op, ScalarOp scalar_op) {
    long long done = 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = ew_thread_index(); i < n4; i += ew_thread_count()) vec_op(4 * i);
        done = 4 * n4;
    }
    for (long long i = done + ew_thread_index(); i < n; i += ew_thread_count()) scalar_op(i);
}

// Calls vec_op(row, c) for c = 0, 4, ... < cols (when vec; cols % 4 == 0) or scalar_op(row, c)
// for c = 0, 1, ... < cols, for every row < rows, each (row, c) exactly once over the grid.
template <typename VecOp, typename ScalarOp>
__device__ __forceinline__ void ew_rows(int rows, int cols, bool vec, VecOp vec_op,
                                        ScalarOp scalar_op) {
    const long long groups = vec ? cols / 4 : cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    // 64-bit loop counters (row + gridDim.y and g + stride must not wrap); the values passed on
    // are < rows and < cols, so they fit in an int.
    for (long long row = blockIdx.y; row < rows; row += gridDim.y) {
        for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
             g += stride) {
            if (vec) {
                vec_op((int)row, (int)(4 * g));
            } else {
                scalar_op((int)row, (int)g);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Casts.

extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
cast_fwd_f32_to_bf16(const float* __restrict__ x, bf16_t* __restrict__ y, long long n) {
    const bool vec = is_aligned_vec4(x) && is_aligned_vec4(y);
    ew_flat(
        n, vec, [&](long long i) { store4(y + i, load4(x + i)); },
        [&](long long i) { y[i] = f32_to_bf16(x[i]); });
}

extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
cast_fwd_bf16_to_f32(const bf16_t* __restrict__ x, float* __restrict__ y, long long n) {
    const bool vec = is_aligned_vec4(x) && is_aligned_vec4(y);
    ew_flat(
        n, vec, [&](long long i) { store4(y + i, load4(x + i)); },
        [&](long long i) { y[i] = bf16_to_f32(x[i]); });
}

// ---------------------------------------------------------------------------------------------
// Bias + exact GELU, add_rows.

// Exact GELU, x·Φ(x) = ½·x·erfc(−x/√2), in the CPU twin's order (ops::math::gelu). erfcf has
// a maximum error of a few ulp over the whole range, and no cancellation in the negative tail.
__device__ __forceinline__ float gelu_exact(float v) {
    return 0.5f * v * erfcf(-v * 0.70710678118654752440f);
}

template <typename T>
__device__ __forceinline__ void bias_act(T* __restrict__ y, const float* __restrict__ bias,
                                         int rows, int cols, bool gelu) {
    const bool has_bias = bias != nullptr;
    const bool vec = (cols % 4 == 0) && is_aligned_vec4(y) && (!has_bias || is_aligned16(bias));
    ew_rows(
        rows, cols, vec,
        [&](int row, int c) {
            T* p = y + (size_t)row * cols + c;
            float4 v = load4(p);
            if (has_bias) {
                const float4 b = load4(bias + c);
                v.x += b.x;
                v.y += b.y;
                v.z += b.z;
                v.w += b.w;
            }
            if (gelu) {
                v.x = gelu_exact(v.x);
                v.y = gelu_exact(v.y);
                v.z = gelu_exact(v.z);
                v.w = gelu_exact(v.w);
            }
            store4(p, v);
        },
        [&](int row, int c) {
            T* p = y + (size_t)row * cols + c;
            float v = to_f32(*p);
            if (has_bias) v += bias[c];
            if (gelu) v = gelu_exact(v);
            *p = from_f32<T>(v);
        });
}

// y: rows x cols (in place); bias: cols floats or null; gelu: 0 or 1.
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
bias_gelu_fwd_f32(float* __restrict__ y, const float* __restrict__ bias, int rows, int cols,
                  int gelu) {
    bias_act(y, bias, rows, cols, gelu != 0);
}

// As bias_gelu_fwd_f32 on bf16 storage: bf16 → f32, + bias, GELU in f32, → bf16.
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
bias_gelu_fwd_bf16(bf16_t* __restrict__ y, const float* __restrict__ bias, int rows, int cols,
                   int gelu) {
    bias_act(y, bias, rows, cols, gelu != 0);
}

// x: rows x n (in place) += v: n, broadcast over rows (the mean parameters onto head readouts).
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
add_rows_fwd_f32(float* __restrict__ x, const float* __restrict__ v, int rows, int n) {
    bias_act(x, v, rows, n, false);
}

// ---------------------------------------------------------------------------------------------
// Residual add, positional embedding.

// x += y over n elements.
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
add_fwd_f32(float* __restrict__ x, const float* __restrict__ y, long long n) {
    const bool vec = is_aligned16(x) && is_aligned16(y);
    ew_flat(
        n, vec,
        [&](long long i) {
            float4 a = load4(x + i);
            const float4 b = load4(y + i);
            a.x += b.x;
            a.y += b.y;
            a.z += b.z;
            a.w += b.w;
            store4(x + i, a);
        },
        [&](long long i) { x[i] += y[i]; });
}

// x: [b, t, c] (in place), rows = b·t; pos: [1 + t, c]. x = (x + pos[1 + token]) + pos[0], the
// order of SPEC §2.2 step 2 (`x + pos_embed[:, 1:] + pos_embed[:, :1]`).
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
add_pos_embed_fwd_f32(float* __restrict__ x, const float* __restrict__ pos, int rows, int t,
                      int c) {
    if (t <= 0) return;
    const bool vec = (c % 4 == 0) && is_aligned16(x) && is_aligned16(pos);
    ew_rows(
        rows, c, vec,
        [&](int row, int j) {
            float* p = x + (size_t)row * c + j;
            const float4 s = load4(pos + (size_t)(1 + row % t) * c + j);
            const float4 s0 = load4(pos + j);
            float4 v = load4(p);
            v.x = (v.x + s.x) + s0.x;
            v.y = (v.y + s.y) + s0.y;
            v.z = (v.z + s.z) + s0.z;
            v.w = (v.w + s.w) + s0.w;
            store4(p, v);
        },
        [&](int row, int j) {
            float* p = x + (size_t)row * c + j;
            *p = (*p + pos[(size_t)(1 + row % t) * c + j]) + pos[j];
        });
}

// ---------------------------------------------------------------------------------------------
// im2col for the patch embedding.

// img: [b, 3, S, S] fp32. out: [b·grid_rows·grid_cols, 3·P·P] in (channel, ky, kx) order. Token
// (ti, tj) reads window rows ti·P + ky − pad and window columns tj·P + kx − pad; a window row
// outside [0, win_h) or column outside [0, win_w) is zero padding, window column x is image
// column col0 + x. The launcher checks win_h <= S and col0 + win_w <= S, so every read is inside
// the image.
template <typename T>
__device__ __forceinline__ void im2col(const float* __restrict__ img, T* __restrict__ out, int b,
                                       int S, int win_h, int win_w, int col0, int P, int pad,
                                       int grid_rows, int grid_cols) {
    const int tokens = grid_rows * grid_cols;
    const int pp = P * P;
    const int plen = 3 * pp;
    const long long rows = (long long)b * tokens;
    for (long long bt = blockIdx.x; bt < rows; bt += gridDim.x) {
        const int bi = (int)(bt / tokens);
        const int tok = (int)(bt - (long long)bi * tokens);
        const int ti = tok / grid_cols;
        const int tj = tok - ti * grid_cols;
        T* o = out + bt * plen;
        for (int f = threadIdx.x; f < plen; f += blockDim.x) {
            const int ch = f / pp;
            const int rem = f - ch * pp;
            const int ky = rem / P;
            const int kx = rem - ky * P;
            const long long yy = (long long)ti * P + ky - pad;
            const long long xx = (long long)tj * P + kx - pad;
            float v = 0.0f;
            if (yy >= 0 && yy < win_h && xx >= 0 && xx < win_w)
                v = img[(((long long)bi * 3 + ch) * S + yy) * S + col0 + xx];
            o[f] = from_f32<T>(v);
        }
    }
}

extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
im2col_fwd_f32(const float* __restrict__ img, float* __restrict__ out, int b, int S, int win_h,
               int win_w, int col0, int P, int pad, int grid_rows, int grid_cols) {
    im2col(img, out, b, S, win_h, win_w, col0, P, pad, grid_rows, grid_cols);
}

extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
im2col_fwd_bf16(const float* __restrict__ img, bf16_t* __restrict__ out, int b, int S,
                int win_h, int win_w, int col0, int P, int pad, int grid_rows, int grid_cols) {
    im2col(img, out, b, S, win_h, win_w, col0, P, pad, grid_rows, grid_cols);
}

// ---------------------------------------------------------------------------------------------
// Geometry of the MANO head, bit-exact with the CPU twins (see the header).

// max(sqrt(v·v), 1e-12), summed left to right as the twin: (v0² + v1²) + v2².
__device__ __forceinline__ float r6_norm(float a, float b, float c) {
    const float s = __fadd_rn(__fadd_rn(__fmul_rn(a, a), __fmul_rn(b, b)), __fmul_rn(c, c));
    return fmaxf(__fsqrt_rn(s), 1e-12f);
}

// x: [n, 6] = (a1, a2); out: [n, 3, 3] row-major with columns b1, b2, b3 (Gram–Schmidt,
// SPEC §3.3).
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
rot6d_fwd_f32(const float* __restrict__ x, float* __restrict__ out, long long n) {
    for (long long i = ew_thread_index(); i < n; i += ew_thread_count()) {
        const float* a = x + 6 * i;
        const float a10 = a[0], a11 = a[1], a12 = a[2];
        const float a20 = a[3], a21 = a[4], a22 = a[5];

        const float n1 = r6_norm(a10, a11, a12);
        const float b10 = __fdiv_rn(a10, n1), b11 = __fdiv_rn(a11, n1), b12 = __fdiv_rn(a12, n1);
        const float dot =
            __fadd_rn(__fadd_rn(__fmul_rn(b10, a20), __fmul_rn(b11, a21)), __fmul_rn(b12, a22));
        const float u0 = __fsub_rn(a20, __fmul_rn(dot, b10));
        const float u1 = __fsub_rn(a21, __fmul_rn(dot, b11));
        const float u2 = __fsub_rn(a22, __fmul_rn(dot, b12));
        const float n2 = r6_norm(u0, u1, u2);
        const float b20 = __fdiv_rn(u0, n2), b21 = __fdiv_rn(u1, n2), b22 = __fdiv_rn(u2, n2);
        const float b30 = __fsub_rn(__fmul_rn(b11, b22), __fmul_rn(b12, b21));
        const float b31 = __fsub_rn(__fmul_rn(b12, b20), __fmul_rn(b10, b22));
        const float b32 = __fsub_rn(__fmul_rn(b10, b21), __fmul_rn(b11, b20));

        float* r = out + 9 * i;
        r[0] = b10;
        r[1] = b20;
        r[2] = b30;
        r[3] = b11;
        r[4] = b21;
        r[5] = b31;
        r[6] = b12;
        r[7] = b22;
        r[8] = b32;
    }
}

// cam: [b, 3] = (s, tx, ty); kp: [b, n, 3]. cam_t: [b, 3] = (tx, ty, 2f / (S·s + 1e-9));
// kp2d: [b, n, 2] = f' · (X/Z, Y/Z) of kp + cam_t, with f' = f / S. One thread per (image,
// keypoint), and one per image when n == 0; the thread of keypoint 0 writes cam_t (every thread
// of the image computes the same cam_t, bit for bit).
extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS)
camera_fwd_f32(const float* __restrict__ cam, const float* __restrict__ kp,
               float* __restrict__ cam_t, float* __restrict__ kp2d, int b, int n, float focal,
               float image_size) {
    const int per = n > 0 ? n : 1;
    const long long total = (long long)b * per;
    const float focal_norm = __fdiv_rn(focal, image_size);
    for (long long i = ew_thread_index(); i < total; i += ew_thread_count()) {
        const long long bi = i / per;
        const int j = (int)(i - bi * per);
        const float s = cam[3 * bi], tx = cam[3 * bi + 1], ty = cam[3 * bi + 2];
        const float tz =
            __fdiv_rn(__fmul_rn(2.0f, focal), __fadd_rn(__fmul_rn(image_size, s), 1e-9f));
        if (j == 0) {
            cam_t[3 * bi] = tx;
            cam_t[3 * bi + 1] = ty;
            cam_t[3 * bi + 2] = tz;
        }
        if (n > 0) {
            const float* p = kp + 3 * i;  // i = bi·n + j
            const float X = __fadd_rn(p[0], tx);
            const float Y = __fadd_rn(p[1], ty);
            const float Z = __fadd_rn(p[2], tz);
            kp2d[2 * i] = __fmul_rn(focal_norm, __fdiv_rn(X, Z));
            kp2d[2 * i + 1] = __fmul_rn(focal_norm, __fdiv_rn(Y, Z));
        }
    }
}
