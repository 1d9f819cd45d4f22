// bwd_common.cuh — small helpers shared by the backward kernels (*_bwd.cu).
//
// Loop helpers with 64-bit indices for grid-stride kernels; every index is visited by exactly
// one thread of the grid, so kernels built on them need no synchronisation between threads.
#pragma once

#include <stdint.h>

__device__ __forceinline__ long long bwd_thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long bwd_thread_count() {
    return (long long)gridDim.x * blockDim.x;
}

// Calls vec_op(i) for i = 0, 4, 8, ... < n - n % 4 (when vec) and then scalar_op(i) for every
// remaining element, each index exactly once over the whole 1-D grid.
template <typename VecOp, typename ScalarOp>
__device__ __forceinline__ void bwd_flat(long long n, bool vec, VecOp vec_op, ScalarOp scalar_op) {
    long long done = 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = bwd_thread_index(); i < n4; i += bwd_thread_count()) vec_op(4 * i);
        done = 4 * n4;
    }
    for (long long i = done + bwd_thread_index(); i < n; i += bwd_thread_count()) scalar_op(i);
}
