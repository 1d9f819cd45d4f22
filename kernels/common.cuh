// common.cuh — small helpers shared by the kernels in this directory.
//
// Conventions (see DESIGN.md, "Conventions"):
//   * Reductions are deterministic: fixed shuffle trees, no float atomics. The xor butterfly in
//     warp_sum leaves the same bits in every lane (a + b == b + a exactly in IEEE arithmetic),
//     so every lane of a warp, and every thread of a block in block_sum, sees one identical value.
//   * Block-wide helpers assume blockDim.x is a multiple of 32 and blockDim.y == blockDim.z == 1
//     (the launchers in src/cuda/ guarantee it): full-mask shuffles need whole warps.
#pragma once

#include <stdint.h>

#include "ptx.cuh"

#define HC_WARP_SIZE 32
#define HC_FULL_MASK 0xffffffffu

// Sum of v over the 32 lanes of a warp; every lane returns the same value.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = HC_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(HC_FULL_MASK, v, offset);
    }
    return v;
}

// Sums a and b over the 32 lanes of a warp at once (two independent shuffle chains, interleaved
// for instruction-level parallelism); every lane ends with the same two values.
__device__ __forceinline__ void warp_sum2(float& a, float& b) {
#pragma unroll
    for (int offset = HC_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        const float ta = __shfl_xor_sync(HC_FULL_MASK, a, offset);
        const float tb = __shfl_xor_sync(HC_FULL_MASK, b, offset);
        a += ta;
        b += tb;
    }
}

// Max of v over the 32 lanes of a warp; every lane returns the same value.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = HC_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(HC_FULL_MASK, v, offset));
    }
    return v;
}

// Sum of v over the whole (1-D) block; every thread returns the same value.
// `scratch` is a __shared__ float[32] owned by the caller. The function ends with a barrier, so
// the caller may call it again (with the same scratch) right away. Every thread of the block must
// call it (it contains __syncthreads()).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int num_warps = blockDim.x / HC_WARP_SIZE;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    // Every warp reduces the per-warp partials in the same order, so all threads agree bitwise.
    float t = (lane < num_warps) ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();  // scratch may be overwritten by the next call
    return t;
}

// Sums a and b over the whole (1-D) block at once; every thread ends with the same two values.
// `scratch` is a __shared__ float[64] owned by the caller; same rules as block_sum.
__device__ __forceinline__ void block_sum2(float& a, float& b, float* scratch) {
    const int lane = threadIdx.x % HC_WARP_SIZE;
    const int warp = threadIdx.x / HC_WARP_SIZE;
    const int num_warps = blockDim.x / HC_WARP_SIZE;
    warp_sum2(a, b);
    if (lane == 0) {
        scratch[warp] = a;
        scratch[HC_WARP_SIZE + warp] = b;
    }
    __syncthreads();
    a = (lane < num_warps) ? scratch[lane] : 0.0f;
    b = (lane < num_warps) ? scratch[HC_WARP_SIZE + lane] : 0.0f;
    warp_sum2(a, b);
    __syncthreads();  // scratch may be overwritten by the next call
}

// True when p is aligned for 16-byte (float4) accesses.
__device__ __forceinline__ bool is_aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}
