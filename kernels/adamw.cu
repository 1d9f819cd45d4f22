// adamw.cu — the AdamW update (SPEC §8) over a list of fp32 tensors, with the deterministic
// global gradient norm it needs for clipping and for skipping a step with a non-finite gradient.
//
// CPU twin: train::adamw::AdamW::update (src/train/adamw.rs). Launcher: CudaBackend::adamw_step in
// src/cuda/adamw.rs; host mirror of these loops: the tests in that file.
//
// One step is three kernels, queued in this order with no host round trip (so the sequence can
// be captured in a CUDA graph and replayed every step):
//   adamw_sumsq_f64       per-chunk partial sums of g² (fp64)          [skipped without clipping
//   adamw_prepare_f64     the total, the clip factor, the skip flag,    and without the check]
//                         the bias corrections of the new step → state
//   adamw_step_f32 / adamw_step_f32_bf16out   the update of every element (no-op when skipped)
//
// Hyper-parameters (lr, β1, β2, ε, weight decay, max norm) are kernel arguments: constant over a
// run, so a captured graph stays valid. Everything that changes per step lives in device memory,
// in `state` (f64[8], written only by adamw_prepare_f64 and the launcher's set-step copy):
//   state[0] Σ g² over all tensors        state[3] step_size = lr / (1 − β1^t)   (an f32 value)
//   state[1] t, the number of updates     state[4] √(1 − β2^t)                     (an f32 value)
//            done so far (this one incl.) state[5] 1 if this step was skipped, else 0
//   state[2] the clip factor (an f32 value)
// The step count therefore advances on the device, only for steps that were applied, and the
// host reads it (and the norm) back whenever it syncs anyway.
//
// Bit-exactness with the twin: the per-element update uses the twin's operation order with
// explicitly rounded intrinsics (__fmul_rn, __fadd_rn, __fsqrt_rn, __fdiv_rn: no FMA contraction,
// IEEE division and square root), and the per-step scalars are computed as Rust computes them
// (f32 `powi` = compiler-builtins' square-and-multiply loop, f32 division and sqrt). Without
// clipping the updated weights and moments are bit-identical to the twin's. With clipping the
// clip factor comes from the same f64 formula but from a sum of squares taken in another order
// (chunks, fixed trees), which differs from the twin's sequential f64 sum by ~1e-14 relative
// (bounded by n·2⁻⁵³): the factor rounds to the same f32 unless the f64 value falls within that
// distance of an f32 rounding boundary (probability ~1e-7 per step), and then everything else is
// bit-identical again.
//
// The tensor list: `table` (u64, built and cached by the launcher) holds, for n tensors,
//   table[0 .. n]             offs: offs[0] = 0, offs[t + 1] = offs[t] + len(t); offs[n] = total
//   table[n + 1 + k·n + t]    for k = 0 p (master weights), 1 g (gradient), 2 m, 3 v (the moments),
//                             4 w (bf16 working copy; read only by the _bf16out kernel)
// The elements of all tensors form one index space [0, total), cut into chunks of ADAMW_CHUNK
// elements; a block takes chunks c = blockIdx.x, blockIdx.x + gridDim.x, ... (grid-stride), finds
// the tensor holding the chunk's first element by binary search over offs and walks the tensors
// the chunk covers; inside a tensor, thread i takes elements lo + i, lo + i + 256, ... (coalesced).
// Tensors of any length (even 0) and any alignment.
//
//   adamw_sumsq_f64: 256 threads; each thread sums g² of its elements of the chunk in order in
//     fp64 (fma), then the block combines the 256 sums with the xor-butterfly warp sum and the 8
//     warp sums in warp order → partial[c]. Which block takes a chunk does not matter: the
//     partial of chunk c depends only on c, so the grid (min(chunks, 8·#SMs)) may vary.
//   adamw_prepare_f64: one block of 256 threads; thread i sums partial[i], partial[i + 256], ...
//     in order, then the same block tree; thread 0 writes state.
//   adamw_step_f32[_bf16out]: 256 threads, the same chunk walk; one thread per element, the
//     update in registers: reads p, g, m, v (16 B), writes p, m, v (12 B) [+ w, 2 B].
//     Memory-bound: ≈ 28–30 B per parameter (ViT-H + heads, 0.63 G parameters: ≈ 18 GB, ≈ 6 ms at
//     3 TB/s); adamw_sumsq_f64 adds one read of the gradients (≈ 2.5 GB).
//
// Determinism: no atomics; every sum has a fixed order that depends only on the tensor lengths.

#include "bf16.cuh"
#include "common.cuh"

// Keep in sync with src/cuda/adamw.rs.
#define ADAMW_THREADS 256
#define ADAMW_CHUNK 16384  // elements per chunk (64 per thread)
#define ADAMW_STATE_SUMSQ 0
#define ADAMW_STATE_STEP 1
#define ADAMW_STATE_CLIP 2
#define ADAMW_STATE_STEP_SIZE 3
#define ADAMW_STATE_BC2_SQRT 4
#define ADAMW_STATE_SKIP 5

// Index of the tensor holding element i < offs[n]: the largest t with offs[t] <= i.
__device__ __forceinline__ int adamw_find(const long long* offs, int n, long long i) {
    int lo = 0, hi = n - 1;  // offs[lo] <= i < offs[hi + 1]
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (offs[mid] <= i) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// Calls op(t, e) for the elements [c0, c1) of the index space (tensor t, element e of it), each
// thread its strided share, tensor by tensor.
template <typename Op>
__device__ __forceinline__ void adamw_walk(const long long* offs, int n, long long c0, long long c1,
                                           Op op) {
    int t = adamw_find(offs, n, c0);
    long long lo = c0;
    while (lo < c1) {
        const long long base = offs[t];
        const long long end = min(offs[t + 1], c1);
        for (long long i = lo + threadIdx.x; i < end; i += ADAMW_THREADS) op(t, i - base);
        lo = end;
        t++;
    }
}

// Sum over the block (ADAMW_THREADS threads) in a fixed order; the result is valid in thread 0.
// red: __shared__ double[ADAMW_THREADS / 32]. Ends with a barrier (red may be reused at once).
__device__ __forceinline__ double adamw_block_sum(double v, double* red) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(HC_FULL_MASK, v, off);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double s = 0.0;
    if (threadIdx.x == 0) {
        s = red[0];
        for (int w = 1; w < ADAMW_THREADS / 32; w++) s += red[w];
    }
    __syncthreads();
    return s;
}

// ---------------------------------------------------------------------------------------------
// table (above), n tensors, total elements → partial[c] = Σ g² over chunk c, c < ⌈total/CHUNK⌉.
// Launch: blockDim.x = ADAMW_THREADS, any gridDim.x ≥ 1.
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
adamw_sumsq_f64(const unsigned long long* __restrict__ table, int n, long long total,
                double* __restrict__ partial) {
    __shared__ double red[ADAMW_THREADS / 32];
    const long long* offs = reinterpret_cast<const long long*>(table);
    const unsigned long long* gp = table + (n + 1) + n;
    const long long nchunks = (total + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {  // uniform over the block
        const long long c0 = c * ADAMW_CHUNK;
        const long long c1 = min(c0 + ADAMW_CHUNK, total);
        double acc = 0.0;
        adamw_walk(offs, n, c0, c1, [&](int t, long long e) {
            const double x = (double)reinterpret_cast<const float*>(gp[t])[e];
            acc = fma(x, x, acc);
        });
        const double s = adamw_block_sum(acc, red);
        if (threadIdx.x == 0) partial[c] = s;
    }
}

// f32 x^k for k >= 1 as Rust's f32::powi (compiler-builtins `__powisf2`): square and multiply,
// each product rounded.
__device__ __forceinline__ float adamw_powi(float a, long long k) {
    float r = 1.0f;
    while (true) {
        if (k & 1) r = __fmul_rn(r, a);
        k >>= 1;
        if (k == 0) break;
        a = __fmul_rn(a, a);
    }
    return r;
}

// partial [nchunks] (Σ g² per chunk; nchunks may be 0: sum 0) → state (above). The step count
// advances unless the step is skipped (check_finite and the sum is not finite). clip_on: scale
// the gradients by max_norm / (‖g‖ + 1e-6) when ‖g‖ > max_norm, as the twin.
// Launch: one block of ADAMW_THREADS threads.
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
adamw_prepare_f64(const double* __restrict__ partial, long long nchunks, double* __restrict__ state,
                  float lr, float beta1, float beta2, float max_norm, int clip_on,
                  int check_finite) {
    __shared__ double red[ADAMW_THREADS / 32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < nchunks; i += ADAMW_THREADS) acc += partial[i];
    const double sumsq = adamw_block_sum(acc, red);
    if (threadIdx.x != 0) return;
    state[ADAMW_STATE_SUMSQ] = sumsq;
    if (check_finite && !isfinite(sumsq)) {
        state[ADAMW_STATE_SKIP] = 1.0;
        return;
    }
    // The step count stays far below 2^53, so it is exact in f64; the twin casts it to i32.
    const long long t = (long long)state[ADAMW_STATE_STEP] + 1;
    const int ti = (int)t;
    const float bc1 = __fsub_rn(1.0f, adamw_powi(beta1, ti));
    const float bc2 = __fsub_rn(1.0f, adamw_powi(beta2, ti));
    float clip = 1.0f;
    if (clip_on) {
        const double norm = sqrt(sumsq);
        if (norm > (double)max_norm) clip = (float)((double)max_norm / (norm + 1e-6));
    }
    state[ADAMW_STATE_STEP] = (double)t;
    state[ADAMW_STATE_CLIP] = (double)clip;
    state[ADAMW_STATE_STEP_SIZE] = (double)__fdiv_rn(lr, bc1);
    state[ADAMW_STATE_BC2_SQRT] = (double)__fsqrt_rn(bc2);
    state[ADAMW_STATE_SKIP] = 0.0;
}

// The update of one element, in the twin's operation order.
__device__ __forceinline__ void adamw_update(float& p, float g, float& m, float& v, float clip,
                                             float decay, float beta1, float omb1, float beta2,
                                             float omb2, float step_size, float bc2_sqrt,
                                             float eps) {
    const float gi = __fmul_rn(g, clip);
    p = __fmul_rn(p, decay);
    m = __fadd_rn(__fmul_rn(m, beta1), __fmul_rn(omb1, gi));
    v = __fadd_rn(__fmul_rn(v, beta2), __fmul_rn(__fmul_rn(omb2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), eps);
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step_size, m), denom));
}

template <bool BF16_OUT>
__device__ __forceinline__ void adamw_step_body(const unsigned long long* __restrict__ table,
                                                int n, long long total,
                                                const double* __restrict__ state, float lr,
                                                float beta1, float beta2, float eps, float wd) {
    if (state[ADAMW_STATE_SKIP] != 0.0) return;  // uniform over the grid
    const float clip = (float)state[ADAMW_STATE_CLIP];
    const float step_size = (float)state[ADAMW_STATE_STEP_SIZE];
    const float bc2_sqrt = (float)state[ADAMW_STATE_BC2_SQRT];
    const float decay = __fsub_rn(1.0f, __fmul_rn(lr, wd));
    const float omb1 = __fsub_rn(1.0f, beta1);
    const float omb2 = __fsub_rn(1.0f, beta2);
    const long long* offs = reinterpret_cast<const long long*>(table);
    const unsigned long long* ptr = table + (n + 1);
    const long long nchunks = (total + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const long long c0 = c * ADAMW_CHUNK;
        const long long c1 = min(c0 + ADAMW_CHUNK, total);
        adamw_walk(offs, n, c0, c1, [&](int t, long long e) {
            float* pp = reinterpret_cast<float*>(ptr[t]);
            const float* gg = reinterpret_cast<const float*>(ptr[n + t]);
            float* mm = reinterpret_cast<float*>(ptr[2 * n + t]);
            float* vv = reinterpret_cast<float*>(ptr[3 * n + t]);
            float p = pp[e], m = mm[e], v = vv[e];
            adamw_update(p, gg[e], m, v, clip, decay, beta1, omb1, beta2, omb2, step_size,
                         bc2_sqrt, eps);
            pp[e] = p;
            mm[e] = m;
            vv[e] = v;
            if (BF16_OUT) reinterpret_cast<bf16_t*>(ptr[4 * n + t])[e] = f32_to_bf16(p);
        });
    }
}

// table (above), n tensors, total elements, state (adamw_prepare_f64 of this step) → p, m, v
// updated in place. Launch: blockDim.x = ADAMW_THREADS, any gridDim.x ≥ 1.
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
adamw_step_f32(const unsigned long long* __restrict__ table, int n, long long total,
               const double* __restrict__ state, float lr, float beta1, float beta2, float eps,
               float wd) {
    adamw_step_body<false>(table, n, total, state, lr, beta1, beta2, eps, wd);
}

// As adamw_step_f32, and the updated weight rounded to bf16 (nearest even) into w.
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
adamw_step_f32_bf16out(const unsigned long long* __restrict__ table, int n, long long total,
                       const double* __restrict__ state, float lr, float beta1, float beta2,
                       float eps, float wd) {
    adamw_step_body<true>(table, n, total, state, lr, beta1, beta2, eps, wd);
}
