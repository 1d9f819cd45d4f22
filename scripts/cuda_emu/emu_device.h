// emu_device.h — the CUDA device language as host C++, for running kernels/*.cu on the CPU.
//
// Every emulated kernel file is compiled as `#include "emu_device.h"` followed by the kernel
// source (see gen.py). A CUDA thread is a fiber (emu_runtime.cpp): the threads of a block run
// one after another on one OS thread, switching only where CUDA would let them wait for each
// other (__syncthreads, __syncwarp, shuffles, the collective PTX of emu_ptx.h). Blocks run one
// at a time; every block gets fresh shared memory (gen.py turns each static `__shared__`
// variable into a reference to the block's copy, and dynamic shared memory is a buffer of the
// launch's size), filled with 0xff bytes (NaN) so that a read of something no thread wrote
// shows.
//
// What this checks: index arithmetic, barrier placement (a barrier that not every thread of
// the block reaches is reported), warp collectives with lanes missing, out-of-bounds accesses
// (under AddressSanitizer, see build.sh), launch limits (threads per block against
// __launch_bounds__, dynamic shared memory against the function attribute). What it does not:
// timing, the memory model of a real GPU, or nvcc's code generation. Floating point: the host's
// libm (expf, erfcf) instead of CUDA's, and no FMA contraction (-ffp-contract=off), so results
// agree with a GPU to a few ulps, not bit for bit.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(16))) double2 {
    double x, y;
};
static inline float4 make_float4(float x, float y, float z, float w) {
    return float4{x, y, z, w};
}

namespace emu {

// The thread (fiber) running now and the block it belongs to; set by the scheduler.
struct ThreadState {
    uint3 tid;
    unsigned linear;  // x + y·bx + z·bx·by
    unsigned lane, warp;
};
struct BlockState {
    dim3 grid, block;
    uint3 bid;
    unsigned dyn_smem_bytes;
    void* dyn_smem;
};
extern ThreadState* cur_thread;
extern BlockState* cur_block;

// Collectives (emu_runtime.cpp).
void sync_block();
int sync_block_and(int pred);
void sync_warp(unsigned mask);
// Every lane of `mask` deposits `v`; each gets the value of lane `src` (absolute lane index).
uint64_t warp_exchange(unsigned mask, uint64_t v, unsigned src);
// The running block's copy of the static __shared__ variable `tag` stands for: allocated by its
// first use in the block, filled with 0xff bytes (NaN), freed when the block ends.
void* block_shared_alloc(const void* tag, size_t bytes, size_t align);
template <class T>
static inline T& block_shared(const void* tag, size_t align) {
    return *static_cast<T*>(block_shared_alloc(tag, sizeof(T), align > alignof(T) ? align : alignof(T)));
}
// Reports a kernel error (printed once per launch; the launch returns an error).
void fail(const char* what);

template <class T>
static inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
static inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace emu

#define threadIdx (emu::cur_thread->tid)
#define blockIdx (emu::cur_block->bid)
#define blockDim (emu::cur_block->block)
#define gridDim (emu::cur_block->grid)
#define warpSize 32

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

static inline void __syncthreads() { emu::sync_block(); }
static inline int __syncthreads_and(int p) { return emu::sync_block_and(p); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::sync_warp(mask); }

template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const unsigned lane = emu::cur_thread->lane;
    unsigned src = lane ^ (unsigned)lane_mask;
    // A source outside the caller's segment of `width` lanes returns the caller's own value.
    if ((src & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) src = lane;
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), src));
}
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const unsigned lane = emu::cur_thread->lane;
    const unsigned src = (lane & ~(unsigned)(width - 1)) + ((unsigned)src_lane & (unsigned)(width - 1));
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), src));
}
// Rounded arithmetic: with -ffp-contract=off the host performs exactly these IEEE operations.
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }

static inline float __uint_as_float(unsigned u) { return emu::from_bits<float>(u); }
static inline unsigned __float_as_uint(float f) { return (unsigned)emu::to_bits(f); }
static inline float __int_as_float(int i) { return emu::from_bits<float>((uint32_t)i); }
static inline double __longlong_as_double(long long i) { return emu::from_bits<double>((uint64_t)i); }

// CUDA's integer and floating min/max overloads (the device library has them as globals).
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) {
    return a < b ? a : b;
}
static inline unsigned long long max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
