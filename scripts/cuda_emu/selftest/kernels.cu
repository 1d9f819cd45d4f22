// kernels.cu — deliberately right and deliberately wrong kernels for the emulator's self-test
// (selftest.cpp). Compiled only by the emulator (gen.py), never by nvcc.
#include <stdint.h>

#include "ptx.cuh"

// out[0] = Σ in[0..blockDim.x) through shared memory, thread 0 summing after a barrier.
extern "C" __global__ void sum_with_barrier(const float* in, float* out) {
    __shared__ float s[256];
    s[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0;
        for (unsigned i = 0; i < blockDim.x; ++i) t += s[i];
        out[0] = t;
    }
}

// The same without the barrier, the last thread summing: it may read slots not yet written.
extern "C" __global__ void sum_without_barrier(const float* in, float* out) {
    __shared__ float s[256];
    s[threadIdx.x] = in[threadIdx.x];
    if (threadIdx.x == blockDim.x - 1) {
        float t = 0;
        for (unsigned i = 0; i < blockDim.x; ++i) t += s[i];
        out[0] = t;
    }
}

// Half the block returns before a barrier.
extern "C" __global__ void early_return(float* out) {
    if (threadIdx.x >= 32) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Warp 0 waits at a warp barrier, warp 1 at a block barrier, then warp 0 at a block barrier
// and warp 1 at a warp barrier: every thread waits for somebody.
extern "C" __global__ void deadlock(float*) {
    if (threadIdx.x < 32) {
        __syncwarp();
        __syncthreads();
    } else {
        __syncthreads();
        __syncwarp();
        __syncthreads();
    }
}

extern "C" __global__ void warp_sum_kernel(const float* in, float* out) {
    float v = in[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

extern "C" __global__ void shuffle_outside_mask(float* out) {
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 20);
}

// ldmatrix.x4.trans from a 32×8 bf16 tile in dynamic shared memory (four 8×8 matrices stacked
// by rows): lane l points at row l; each lane writes its four registers.
extern "C" __global__ void ldmatrix_kernel(const uint16_t* tile, uint32_t* out) {
    extern __shared__ uint16_t sm[];
    uint16_t* s = sm;
    for (int i = 0; i < 8; ++i) s[threadIdx.x * 8 + i] = tile[threadIdx.x * 8 + i];
    __syncwarp();
    uint32_t r[4];
    attn_ldsm_x4_trans(r, s + threadIdx.x * 8);
    for (int i = 0; i < 4; ++i) out[threadIdx.x * 4 + i] = r[i];
}

// mma.m16n8k16 with fragments gathered from row-major A [16×16] and B [16×8] (bf16 bits) by
// the PTX ISA's layout tables, written out the same way.
extern "C" __global__ void mma_kernel(const uint16_t* A, const uint16_t* B, float* D) {
    const unsigned l = threadIdx.x, g = l / 4, t = l % 4;
    uint32_t a[4];
    for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        a[r] = (uint32_t)A[row * 16 + col] | ((uint32_t)A[row * 16 + col + 1] << 16);
    }
    uint32_t b[2];
    for (unsigned r = 0; r < 2; ++r) {
        const unsigned k = 2 * t + 8 * r;
        b[r] = (uint32_t)B[k * 8 + g] | ((uint32_t)B[(k + 1) * 8 + g] << 16);
    }
    float c[4] = {0, 0, 0, 0};
    attn_mma_bf16(c, a, b[0], b[1]);
    for (unsigned i = 0; i < 4; ++i) D[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)] = c[i];
}


// Writes one float past a shared array: AddressSanitizer must stop it (selftest --oob).
extern "C" __global__ void shared_overrun(float* out) {
    __shared__ float s[32];
    s[threadIdx.x + 1] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}
