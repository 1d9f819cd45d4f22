// ptx.cuh — every inline-PTX statement of the kernels, behind small named functions.
//
// nvcc compiles the asm below. The CPU emulator (scripts/cuda_emu, which runs the kernels as
// host C++ to test their logic without a GPU) defines HANDCOV_EMU and gets the same functions
// from its own header instead, written from the PTX ISA's description of each instruction;
// nothing else in kernels/ differs between the two builds.
#pragma once

#include <stdint.h>

#ifdef HANDCOV_EMU
#include "emu_ptx.h"
#else

// Two floats to a bf16x2 word, round to nearest even: lo in bits 0-15 (the lower address /
// the lower-indexed fragment element), hi in bits 16-31.
__device__ __forceinline__ uint32_t attn_pack_bf16x2(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}


__device__ __forceinline__ uint32_t attn_smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// 16-byte asynchronous copy global → shared; when !valid nothing is read and the 16 bytes are
// zero-filled (src-size 0). `gmem` must be a valid address either way.
__device__ __forceinline__ void attn_cp_async16(void* smem, const void* gmem, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(attn_smem_addr(smem)),
                 "l"(__cvta_generic_to_global(gmem)), "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void attn_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's most recent cp.async groups are still pending.
template <int N>
__device__ __forceinline__ void attn_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four transposed 8×8 bf16 matrices from shared memory: lane l gives the address of row l % 8
// of matrix l / 8; register i receives, of matrix i, the elements (row 2·(l%4) + {0,1},
// column l/4) — the B fragment of mma.m16n8k16 when the stored rows are the k index.
__device__ __forceinline__ void attn_ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(attn_smem_addr(p))
                 : "memory");
}

// c (16×8 fp32) += a (16×16 bf16, row-major fragment) · b (16×8 bf16, column fragment).
__device__ __forceinline__ void attn_mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Bytes of dynamic shared memory this launch was given (the PTX special register
// %dynamic_smem_size), so a kernel can choose between staging data in shared memory and
// reading it again from global memory without an extra argument.
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned n;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
    return n;
}

#endif  // HANDCOV_EMU
