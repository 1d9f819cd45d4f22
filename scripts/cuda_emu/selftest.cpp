// selftest.cpp — the emulator's own tests: that it runs correct kernels correctly, and that it
// catches the bugs it claims to (a missing barrier, a barrier not every thread reaches, a
// deadlock, a shuffle from a lane outside the mask), and that ldmatrix / mma follow the PTX
// ISA's fragment layouts. Built and run by run_tests.sh before the GPU tests; exit status 1 on
// any failure.

#include <stdio.h>
#include <stdlib.h>

#include <cmath>
#include <string>
#include <string.h>

#include "emu_internal.h"
#include "emu_ptx.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

// ---- launching -----------------------------------------------------------------------------

std::string launch(const char* name, unsigned threads, unsigned smem, std::vector<void*> args) {
    const emu::KernelInfo* k = emu::find_kernel(name);
    if (k == nullptr) {
        printf("FAIL kernel %s is not registered\n", name);
        exit(1);
    }
    std::vector<void*> params;
    for (void*& a : args) params.push_back(&a);
    return emu::run_launch(*k, dim3{1, 1, 1}, dim3{threads, 1, 1}, smem, params.data());
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

}  // namespace

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "--oob") == 0) {
        // Under AddressSanitizer this never returns (run_tests.sh --asan checks the report).
        std::vector<float> out(32);
        launch("shared_overrun", 32, 0, {out.data()});
        printf("shared_overrun ran to the end: no sanitizer caught it\n");
        return 0;
    }
    std::vector<float> in(256), out(256, 0.0f);
    for (int i = 0; i < 256; ++i) in[i] = (float)(i % 7);
    float want = 0;
    for (float v : in) want += v;

    std::string e = launch("sum_with_barrier", 256, 0, {in.data(), out.data()});
    expect(e.empty() && out[0] == want, "a block reduction with its barrier sums correctly");

    // Without the barrier the summing thread reads the slots of threads the schedule has not
    // run yet: fresh shared memory holds NaN there.
    launch("sum_without_barrier", 256, 0, {in.data(), out.data()});
    const float forward = out[0];
    expect(forward == want, "without the barrier, forward order happens to work (last thread sums)");
    emu::set_order("reverse");
    launch("sum_without_barrier", 256, 0, {in.data(), out.data()});
    expect(out[0] != want, "... and reverse order shows the missing barrier");
    emu::set_order("forward");

    e = launch("early_return", 64, 0, {out.data()});
    expect(contains(e, "returned"), "a barrier after half the block returned is reported");

    e = launch("deadlock", 64, 0, {out.data()});
    expect(contains(e, "deadlock") || contains(e, "returned"), "a deadlock is reported");

    for (int i = 0; i < 32; ++i) in[i] = (float)i;
    e = launch("warp_sum_kernel", 32, 0, {in.data(), out.data()});
    bool all = e.empty();
    for (int i = 0; i < 32; ++i) all &= out[i] == 496.0f;
    expect(all, "xor-shuffle butterfly gives every lane the warp's sum");

    e = launch("shuffle_outside_mask", 32, 0, {out.data()});
    expect(contains(e, "outside the mask"), "a shuffle from a lane outside the mask is reported");

    // ldmatrix.trans: register i of lane l = (matrix i's element (2(l%4), l/4), then
    // (2(l%4)+1, l/4)).
    std::vector<uint16_t> tile(32 * 8);
    for (int i = 0; i < 32 * 8; ++i) tile[i] = (uint16_t)i;
    std::vector<uint32_t> regs(32 * 4);
    e = launch("ldmatrix_kernel", 32, 32 * 8 * 2, {tile.data(), regs.data()});
    all = e.empty();
    for (unsigned l = 0; l < 32; ++l)
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned r0 = 8 * i + 2 * (l % 4), c = l / 4;
            const uint32_t want_r = tile[r0 * 8 + c] | ((uint32_t)tile[(r0 + 1) * 8 + c] << 16);
            all &= regs[l * 4 + i] == want_r;
        }
    expect(all, "ldmatrix.x4.trans hands out the transposed fragments");

    // mma: small integers are exact in bf16 and in the fp32 sums.
    std::vector<uint16_t> A(16 * 16), B(16 * 8);
    std::vector<float> D(16 * 8, NAN), Af(16 * 16), Bf(16 * 8);
    for (int i = 0; i < 256; ++i) {
        Af[i] = (float)((i * 7) % 11 - 5);
        A[i] = emu::f32_to_bf16_rn(Af[i]);
    }
    for (int i = 0; i < 128; ++i) {
        Bf[i] = (float)((i * 5) % 13 - 6);
        B[i] = emu::f32_to_bf16_rn(Bf[i]);
    }
    e = launch("mma_kernel", 32, 0, {A.data(), B.data(), D.data()});
    all = e.empty();
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            float s = 0;
            for (int k = 0; k < 16; ++k) s += Af[r * 16 + k] * Bf[k * 8 + c];
            all &= D[r * 8 + c] == s;
        }
    expect(all, "mma.m16n8k16 with the PTX ISA's fragments computes A·B");

    expect(emu::f32_to_bf16_rn(1.0f + 1.0f / 256.0f) == 0x3f80 &&
               emu::f32_to_bf16_rn(1.0f + 3.0f / 256.0f) == 0x3f82 && emu::f32_to_bf16_rn(NAN) == 0x7fff,
           "bf16 rounding is to nearest even");

    printf("cuda_emu selftest: %s\n", failures ? "FAILED" : "passed");
    return failures ? 1 : 0;
}
