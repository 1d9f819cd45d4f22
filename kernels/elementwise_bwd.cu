// elementwise_bwd.cu — backward passes without reductions over rows:
//
//   gelu_bwd_{f32,bf16}   dy ← dy·gelu'(pre) in place, gelu' of the exact erf GELU:
//                         gelu'(x) = Φ(x) + x·φ(x) = ½·erfc(−x/√2) + x·e^{−x²/2}/√(2π)
//   scale_rows_f32        x[i·per_sample + j] *= scales[i] in place (drop-path: the forward on the
//                         branch output and the backward on its gradient are the same op); a
//                         scale of exactly 0 writes +0 (even over inf/NaN), a scale of exactly 1
//                         leaves the row untouched
//   rot6d_bwd_f32         d(6D code) from d(rotation matrix), overwritten (SPEC §3.3)
//   camera_bwd_f32        the camera of SPEC §4 backwards: d(kp2d) → d(kp) (overwritten) and
//                         d(cam) (overwritten) through cam_t and the perspective projection
//
// CPU twins: ops::math::gelu_bwd_inplace, ops::drop_path::scale_rows,
// ops::geometry::{rot6d_to_rotmat_bwd_cpu, project_bwd_cpu, cam_translation_bwd}.
// Launchers: src/cuda/backward/elementwise.rs.
//
// How the work is split (no shared memory, no barriers, no reductions across threads: every
// output element is written by exactly one thread):
//   * gelu_bwd: 1-D grid-stride over the n elements, float4 / 8-byte groups of 4 when dy and pre
//     are aligned for them (then the last n % 4 one per thread), else one element per thread.
//   * scale_rows: 2-D grid; blockIdx.y strides over the samples (gridDim.y <= 65535), the
//     x-dimension strides over the sample's elements in groups of 4 (per_sample % 4 == 0 and x
//     16-byte aligned: every row starts aligned) or one by one. The scale is uniform per row, so
//     the 0 / 1 special cases are block-uniform branches.
//   * rot6d_bwd: one thread per code; camera_bwd: one thread per image, which loops over the
//     image's n keypoints in order (d cam_t is a sum over the keypoints, summed in the twin's
//     order). Both grid-strided.
//
// Numerics: gelu_bwd uses erfcf and expf (a few ulp) against the twin's polynomial erfc
// (1.2e-7 relative) and its exp: agreement to ~1e-6 relative. rot6d_bwd and camera_bwd repeat
// the CPU twin's operations in its order with the rounding intrinsics (__fmul_rn, __fadd_rn,
// __fsub_rn, __fdiv_rn, __fsqrt_rn), which nvcc never contracts into FMAs, so they reproduce
// the twin bit for bit (as rot6d_fwd_f32 and camera_fwd_f32 do).
//
// Launch requirements: 1-D blocks of at most 256 threads (any count: no warp-level operations);
// any grid >= 1 (2-D with gridDim.y <= 65535 for scale_rows). In-place kernels need their other
// inputs not to overlap the updated buffer (Rust borrows in the launchers; __restrict__ here).

#include "bf16.cuh"
#include "bwd_common.cuh"
#include "common.cuh"

#define EWB_THREADS 256
#define EWB_MIN_BLOCKS 4

// ---------------------------------------------------------------------------------------------
// GELU backward.

__device__ __forceinline__ float gelu_grad(float x) {
    const float kInvSqrt2 = 0.70710678118654752440f;
    const float kInvSqrt2Pi = 0.39894228040143267794f;
    return 0.5f * erfcf(-x * kInvSqrt2) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
}

template <typename T>
__device__ __forceinline__ void gelu_bwd(const T* __restrict__ pre, T* __restrict__ dy,
                                         long long n) {
    const bool vec = is_aligned_vec4(pre) && is_aligned_vec4(dy);
    bwd_flat(
        n, vec,
        [&](long long i) {
            const float4 x = load4(pre + i);
            float4 g = load4(dy + i);
            g.x *= gelu_grad(x.x);
            g.y *= gelu_grad(x.y);
            g.z *= gelu_grad(x.z);
            g.w *= gelu_grad(x.w);
            store4(dy + i, g);
        },
        [&](long long i) { dy[i] = from_f32<T>(to_f32(dy[i]) * gelu_grad(to_f32(pre[i]))); });
}

// pre: the GELU's input; dy: the gradient of its output, replaced by that of its input.
extern "C" __global__ void __launch_bounds__(EWB_THREADS, EWB_MIN_BLOCKS)
gelu_bwd_f32(const float* __restrict__ pre, float* __restrict__ dy, long long n) {
    gelu_bwd(pre, dy, n);
}

// As gelu_bwd_f32 on bf16 storage: both widened to f32, the product rounded to nearest even.
extern "C" __global__ void __launch_bounds__(EWB_THREADS, EWB_MIN_BLOCKS)
gelu_bwd_bf16(const bf16_t* __restrict__ pre, bf16_t* __restrict__ dy, long long n) {
    gelu_bwd(pre, dy, n);
}

// ---------------------------------------------------------------------------------------------
// Drop-path row scaling.

// x: [samples, per_sample] (in place); scales: [samples].
extern "C" __global__ void __launch_bounds__(EWB_THREADS, EWB_MIN_BLOCKS)
scale_rows_f32(float* __restrict__ x, const float* __restrict__ scales, int samples,
               long long per_sample) {
    const bool vec = (per_sample % 4 == 0) && is_aligned16(x);
    const long long groups = vec ? per_sample / 4 : per_sample;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.y; i < samples; i += gridDim.y) {
        const float s = scales[i];
        if (s == 1.0f) continue;  // untouched, as the twin (block-uniform)
        float* row = x + (size_t)i * per_sample;
        for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
             g += stride) {
            if (vec) {
                float4 v = load4(row + 4 * g);
                if (s == 0.0f) {
                    v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                } else {
                    v.x *= s;
                    v.y *= s;
                    v.z *= s;
                    v.w *= s;
                }
                store4(row + 4 * g, v);
            } else {
                row[g] = s == 0.0f ? 0.0f : row[g] * s;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rot6d backward (ops::geometry::rot6d_to_rotmat_bwd_g in f32, operation for operation).

struct R6V {
    float x, y, z;
};

__device__ __forceinline__ float r6b_dot(R6V a, R6V b) {  // (a0·b0 + a1·b1) + a2·b2
    return __fadd_rn(__fadd_rn(__fmul_rn(a.x, b.x), __fmul_rn(a.y, b.y)), __fmul_rn(a.z, b.z));
}

__device__ __forceinline__ R6V r6b_cross(R6V a, R6V b) {
    return {__fsub_rn(__fmul_rn(a.y, b.z), __fmul_rn(a.z, b.y)),
            __fsub_rn(__fmul_rn(a.z, b.x), __fmul_rn(a.x, b.z)),
            __fsub_rn(__fmul_rn(a.x, b.y), __fmul_rn(a.y, b.x))};
}

// normalize: b = v / n with n = max(‖v‖, 1e-12); clamped = ‖v‖ <= 1e-12.
__device__ __forceinline__ R6V r6b_normalize(R6V v, float& n, bool& clamped) {
    const float raw = __fsqrt_rn(r6b_dot(v, v));
    n = fmaxf(raw, 1e-12f);
    clamped = raw <= 1e-12f;
    return {__fdiv_rn(v.x, n), __fdiv_rn(v.y, n), __fdiv_rn(v.z, n)};
}

// normalize_bwd: (g − b·(b·g)) / n, or g / n where the clamp was active.
__device__ __forceinline__ R6V r6b_normalize_bwd(R6V b, float n, bool clamped, R6V g) {
    const float bg = clamped ? 0.0f : r6b_dot(b, g);
    return {__fdiv_rn(__fsub_rn(g.x, __fmul_rn(b.x, bg)), n),
            __fdiv_rn(__fsub_rn(g.y, __fmul_rn(b.y, bg)), n),
            __fdiv_rn(__fsub_rn(g.z, __fmul_rn(b.z, bg)), n)};
}

// x: [n, 6]; d_r: [n, 3, 3] row-major (columns b1, b2, b3); dx: [n, 6] (overwritten).
extern "C" __global__ void __launch_bounds__(EWB_THREADS, EWB_MIN_BLOCKS)
rot6d_bwd_f32(const float* __restrict__ x, const float* __restrict__ d_r,
              float* __restrict__ dx, long long n) {
    for (long long i = bwd_thread_index(); i < n; i += bwd_thread_count()) {
        const float* a = x + 6 * i;
        const float* g = d_r + 9 * i;
        const R6V a1 = {a[0], a[1], a[2]};
        const R6V a2 = {a[3], a[4], a[5]};

        // Forward intermediates (gram_schmidt).
        float n1, n2;
        bool clamp1, clamp2;
        const R6V b1 = r6b_normalize(a1, n1, clamp1);
        const float dot = r6b_dot(b1, a2);
        const R6V u = {__fsub_rn(a2.x, __fmul_rn(dot, b1.x)), __fsub_rn(a2.y, __fmul_rn(dot, b1.y)),
                       __fsub_rn(a2.z, __fmul_rn(dot, b1.z))};
        const R6V b2 = r6b_normalize(u, n2, clamp2);

        // Columns of the matrix gradient: col(c) = (d_r[c], d_r[3 + c], d_r[6 + c]).
        const R6V g1 = {g[0], g[3], g[6]};
        const R6V g2 = {g[1], g[4], g[7]};
        const R6V g3 = {g[2], g[5], g[8]};
        const R6V c1 = r6b_cross(b2, g3);
        const R6V c2 = r6b_cross(g3, b1);
        R6V gb1 = {__fadd_rn(g1.x, c1.x), __fadd_rn(g1.y, c1.y), __fadd_rn(g1.z, c1.z)};
        const R6V gb2 = {__fadd_rn(g2.x, c2.x), __fadd_rn(g2.y, c2.y), __fadd_rn(g2.z, c2.z)};
        const R6V gu = r6b_normalize_bwd(b2, n2, clamp2, gb2);
        const float gdot = -r6b_dot(gu, b1);
        // gb1 += gdot·a2 − dot·gu;  ga2 = gu + gdot·b1.
        gb1.x = __fadd_rn(gb1.x, __fsub_rn(__fmul_rn(gdot, a2.x), __fmul_rn(dot, gu.x)));
        gb1.y = __fadd_rn(gb1.y, __fsub_rn(__fmul_rn(gdot, a2.y), __fmul_rn(dot, gu.y)));
        gb1.z = __fadd_rn(gb1.z, __fsub_rn(__fmul_rn(gdot, a2.z), __fmul_rn(dot, gu.z)));
        const R6V ga2 = {__fadd_rn(gu.x, __fmul_rn(gdot, b1.x)),
                         __fadd_rn(gu.y, __fmul_rn(gdot, b1.y)),
                         __fadd_rn(gu.z, __fmul_rn(gdot, b1.z))};
        const R6V ga1 = r6b_normalize_bwd(b1, n1, clamp1, gb1);

        float* o = dx + 6 * i;
        o[0] = ga1.x;
        o[1] = ga1.y;
        o[2] = ga1.z;
        o[3] = ga2.x;
        o[4] = ga2.y;
        o[5] = ga2.z;
    }
}

// ---------------------------------------------------------------------------------------------
// Camera backward (ops::geometry::{project_bwd_g, cam_translation_bwd_g} in f32, in order).

// cam: [b, 3] = (s, tx, ty); kp: [b, n, 3]; d_kp2d: [b, n, 2]. d_kp: [b, n, 3] and d_cam: [b, 3]
// (both overwritten). cam_t = (tx, ty, 2f / (S·s + 1e-9)) is recomputed as camera_fwd_f32 does.
extern "C" __global__ void __launch_bounds__(EWB_THREADS, EWB_MIN_BLOCKS)
camera_bwd_f32(const float* __restrict__ cam, const float* __restrict__ kp,
               const float* __restrict__ d_kp2d, float* __restrict__ d_kp,
               float* __restrict__ d_cam, int b, int n, float focal, float image_size) {
    const float focal_norm = __fdiv_rn(focal, image_size);
    for (long long bi = bwd_thread_index(); bi < b; bi += bwd_thread_count()) {
        const float s = cam[3 * bi], tx = cam[3 * bi + 1], ty = cam[3 * bi + 2];
        const float den = __fadd_rn(__fmul_rn(image_size, s), 1e-9f);
        const float tz = __fdiv_rn(__fmul_rn(2.0f, focal), den);
        float dt0 = 0.0f, dt1 = 0.0f, dt2 = 0.0f;
        for (int j = 0; j < n; j++) {
            const size_t k = (size_t)bi * n + j;
            const float* p = kp + 3 * k;
            const float g0 = d_kp2d[2 * k], g1 = d_kp2d[2 * k + 1];
            const float X = __fadd_rn(p[0], tx);
            const float Y = __fadd_rn(p[1], ty);
            const float Z = __fadd_rn(p[2], tz);
            const float fz = __fdiv_rn(focal_norm, Z);
            const float gx = __fmul_rn(fz, g0);
            const float gy = __fmul_rn(fz, g1);
            const float gz =
                -__fdiv_rn(__fmul_rn(fz, __fadd_rn(__fmul_rn(g0, X), __fmul_rn(g1, Y))), Z);
            float* o = d_kp + 3 * k;
            o[0] = gx;
            o[1] = gy;
            o[2] = gz;
            dt0 = __fadd_rn(dt0, gx);
            dt1 = __fadd_rn(dt1, gy);
            dt2 = __fadd_rn(dt2, gz);
        }
        // tz = 2f / den: ∂tz/∂s = −2f·S / den², in the twin's order ((dt2·2)·f)·S / (den·den).
        const float ds = -__fdiv_rn(
            __fmul_rn(__fmul_rn(__fmul_rn(dt2, 2.0f), focal), image_size), __fmul_rn(den, den));
        d_cam[3 * bi] = ds;
        d_cam[3 * bi + 1] = dt0;
        d_cam[3 * bi + 2] = dt1;
    }
}
