// emu_ptx.h — host versions of the inline PTX in kernels/ptx.cuh, written from the PTX ISA's
// description of each instruction (included by ptx.cuh when HANDCOV_EMU is defined).
//
// The warp-collective instructions (ldmatrix, mma) are emulated as collectives: every lane
// deposits its operands in the warp's scratch, the warp synchronises, each lane computes its
// own result from everybody's operands, and the warp synchronises again. A lane that does not
// take part (divergence) is reported by the runtime. cp.async is a synchronous copy: the
// commit/wait calls have nothing left to wait for, which is the strongest ordering the real
// instruction can give, so the emulator cannot show a missing wait (the GPU check can).
#pragma once

#include <stdint.h>
#include <string.h>

namespace emu {
// Scratch of the calling thread's warp, at least 32 · 64 bytes.
void* warp_scratch();

// f32 → bf16 bits, round to nearest even; NaN → the canonical 0x7fff (cvt.rn.bf16.f32).
static inline uint16_t f32_to_bf16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float bf16_to_f32(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void check_aligned(const void* p, unsigned n, const char* what) {
    if (((uintptr_t)p & (n - 1)) != 0) fail(what);
}
}  // namespace emu

// cvt.rn.bf16x2.f32 d, hi, lo: lo in bits 0-15, hi in bits 16-31.
static inline uint32_t attn_pack_bf16x2(float lo, float hi) {
    return (uint32_t)emu::f32_to_bf16_rn(lo) | ((uint32_t)emu::f32_to_bf16_rn(hi) << 16);
}

// cp.async.cg.shared.global [smem], [gmem], 16, src_bytes: src_bytes (16 or 0) copied, the rest
// of the 16 bytes zero-filled; both addresses 16-byte aligned.
static inline void attn_cp_async16(void* smem, const void* gmem, bool valid) {
    emu::check_aligned(smem, 16, "cp.async: shared address not 16-byte aligned");
    emu::check_aligned(gmem, 16, "cp.async: global address not 16-byte aligned");
    if (valid)
        memcpy(smem, gmem, 16);
    else
        memset(smem, 0, 16);
}
static inline void attn_cp_async_commit() {}
template <int N>
static inline void attn_cp_async_wait() {}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lane l gives the address of row l % 8 of
// matrix l / 8 (16 bytes: 8 b16 elements); register i of lane l receives, of matrix i, the
// transposed matrix's row l / 4, columns 2·(l % 4) and 2·(l % 4) + 1, i.e. the stored
// elements (row 2·(l % 4), column l / 4) in bits 0-15 and (row 2·(l % 4) + 1, column l / 4) in
// bits 16-31.
static inline void attn_ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
    emu::check_aligned(p, 16, "ldmatrix: row address not 16-byte aligned");
    const unsigned lane = emu::cur_thread->lane;
    const uint16_t** rows = static_cast<const uint16_t**>(emu::warp_scratch());
    rows[lane] = static_cast<const uint16_t*>(p);
    __syncwarp();
    for (int i = 0; i < 4; ++i) {
        const uint16_t* r0 = rows[8 * i + 2 * (lane % 4)];
        const uint16_t* r1 = rows[8 * i + 2 * (lane % 4) + 1];
        r[i] = (uint32_t)r0[lane / 4] | ((uint32_t)r1[lane / 4] << 16);
    }
    __syncwarp();
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: D = A·B + C with A 16×16, B 16×8, C/D
// 16×8 fp32. Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4,
// t = lane % 4: A element a_i (i = 0..7, two per register, lower index in the low half) is at
// row g + 8·((i / 2) % 2), column 2t + (i % 2) + 8·(i / 4); B element b_i (i = 0..3) at row
// (k) 2t + (i % 2) + 8·(i / 2), column (n) g; C/D element c_i at row g + 8·(i / 2), column
// 2t + (i % 2). Products accumulate in fp32 in k order onto C (the hardware's order is
// unspecified; the tests' bf16 tolerances cover it).
static inline void attn_mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    struct Frag {
        uint32_t a[4];
        uint32_t b[2];
    };
    const unsigned lane = emu::cur_thread->lane;
    Frag* f = static_cast<Frag*>(emu::warp_scratch());
    for (int i = 0; i < 4; ++i) f[lane].a[i] = a[i];
    f[lane].b[0] = b0;
    f[lane].b[1] = b1;
    __syncwarp();
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l / 4, t = l % 4;
        for (unsigned i = 0; i < 8; ++i) {
            const uint16_t bits = (uint16_t)(f[l].a[i / 2] >> (16 * (i % 2)));
            A[g + 8 * ((i / 2) % 2)][2 * t + (i % 2) + 8 * (i / 4)] = emu::bf16_to_f32(bits);
        }
        for (unsigned i = 0; i < 4; ++i) {
            const uint16_t bits = (uint16_t)(f[l].b[i / 2] >> (16 * (i % 2)));
            B[2 * t + (i % 2) + 8 * (i / 2)][g] = emu::bf16_to_f32(bits);
        }
    }
    __syncwarp();
    const unsigned g = lane / 4, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = g + 8 * (i / 2), col = 2 * t + (i % 2);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        c[i] = acc;
    }
}

static inline unsigned dynamic_smem_bytes() { return emu::cur_block->dyn_smem_bytes; }
