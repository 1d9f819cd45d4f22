// emu_cublaslt.cpp — the cuBLASLt calls handcov makes, on the host: column-major layouts,
// TRANSA/TRANSB, fp32 and bf16 operands, fp32 compute and scale, alpha/beta as host floats,
// the DEFAULT and BIAS epilogues. Anything else (other epilogues, orders, batches, pointer
// modes) is CUBLAS_STATUS_NOT_SUPPORTED, so a new use shows up here instead of computing
// something else. Products accumulate in fp32 (eight-lane partial sums); with beta = 0, C is not read (it may
// hold NaN), as cuBLASLt documents.

#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <thread>

#include "emu_internal.h"
#include "emu_ptx.h"

typedef int cublasStatus_t;
enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum : int { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum : int { CUBLAS_COMPUTE_32F = 68 };

namespace {

struct Desc {
    int compute, scale;
    int transa = 0, transb = 0;
    int epilogue = 1;  // CUBLASLT_EPILOGUE_DEFAULT
    const void* bias = nullptr;
    int bias_type = -1;  // unset: D's type
    int pointer_mode = 0;
};
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
    int order = 0;  // CUBLASLT_ORDER_COL
    int batch = 1;
};
struct Pref {};

bool supported_type(int t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }

float load(const void* base, int type, uint64_t idx) {
    if (type == CUDA_R_32F) return static_cast<const float*>(base)[idx];
    return emu::bf16_to_f32(static_cast<const uint16_t*>(base)[idx]);
}
void store(void* base, int type, uint64_t idx, float v) {
    if (type == CUDA_R_32F)
        static_cast<float*>(base)[idx] = v;
    else
        static_cast<uint16_t*>(base)[idx] = emu::f32_to_bf16_rn(v);
}

// op(X) as a dense [outer][kp] fp32 copy, outer rounded up to a multiple of 4 and k to kp (a
// multiple of 8), zero-padded: row r holds op(X)[r, 0..k) for A (r = i) or op(X)[0..k, r] for B
// (r = j), so every dot product reads contiguous memory.
std::vector<float> pack(const void* x, const Layout& l, bool trans, bool is_a, uint64_t outer,
                        uint64_t k, uint64_t kp) {
    std::vector<float> out(((outer + 3) / 4 * 4) * kp, 0.0f);
    for (uint64_t r = 0; r < outer; ++r)
        for (uint64_t c = 0; c < k; ++c) {
            // A: op(A)[r, c]; B: op(B)[c, r]. Stored (row, col) of X before op:
            uint64_t row, col;
            if (is_a) {
                row = trans ? c : r;
                col = trans ? r : c;
            } else {
                row = trans ? r : c;
                col = trans ? c : r;
            }
            out[r * kp + c] = load(x, l.type, row + col * (uint64_t)l.ld);
        }
    return out;
}

typedef float v8 __attribute__((vector_size(32)));

// acc[a][b] = Σ_k pa[i0 + a][k] · pb[j0 + b][k] for a 4×4 tile: 16 eight-lane partial sums
// (fp32; the order differs from a sequential sum, as cuBLASLt's does).
__attribute__((target_clones("avx512f", "avx2", "default"))) void tile4x4(
    const float* pa, const float* pb, uint64_t kp, float (&acc)[4][4]) {
    v8 s[4][4] = {};
    for (uint64_t q = 0; q < kp; q += 8) {
        v8 a[4], b[4];
        for (int t = 0; t < 4; ++t) {
            memcpy(&a[t], pa + t * kp + q, sizeof(v8));
            memcpy(&b[t], pb + t * kp + q, sizeof(v8));
        }
        for (int x = 0; x < 4; ++x)
            for (int y = 0; y < 4; ++y) s[x][y] += a[x] * b[y];
    }
    for (int x = 0; x < 4; ++x)
        for (int y = 0; y < 4; ++y) {
            float t = 0.0f;
            for (int e = 0; e < 8; ++e) t += s[x][y][e];
            acc[x][y] = t;
        }
}

}  // namespace

#define API extern "C" __attribute__((visibility("default")))

API size_t cublasLtGetVersion() { return 130000; }
API cublasStatus_t cublasLtCreate(void** h) {
    static int token;
    *h = &token;
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtDestroy(void*) { return CUBLAS_STATUS_SUCCESS; }

API cublasStatus_t cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *d = new Desc{compute, scale};
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatmulDescDestroy(void* d) {
    delete static_cast<Desc*>(d);
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* buf, size_t n) {
    Desc* d = static_cast<Desc*>(desc);
    int32_t v32 = 0;
    if (n == 4) memcpy(&v32, buf, 4);
    switch (attr) {
        case 2: d->pointer_mode = v32; return v32 == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
        case 3: d->transa = v32; break;
        case 4: d->transb = v32; break;
        case 7:
            d->epilogue = v32;
            if (v32 != 1 && v32 != 4) return CUBLAS_STATUS_NOT_SUPPORTED;
            break;
        case 8:
            if (n != sizeof(void*)) return CUBLAS_STATUS_INVALID_VALUE;
            memcpy(&d->bias, buf, sizeof(void*));
            break;
        case 26: d->bias_type = v32; break;
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if ((attr == 3 || attr == 4) && v32 != 0 && v32 != 1) return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatrixLayoutCreate(void** l, int type, uint64_t rows, uint64_t cols,
                                              int64_t ld) {
    if (!supported_type(type)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ld < (int64_t)rows || (rows > 0 && ld <= 0)) return CUBLAS_STATUS_INVALID_VALUE;
    *l = new Layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatrixLayoutDestroy(void* l) {
    delete static_cast<Layout*>(l);
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatrixLayoutSetAttribute(void*, int, const void*, size_t) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
}
API cublasStatus_t cublasLtMatmulPreferenceCreate(void** p) {
    *p = new Pref();
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatmulPreferenceDestroy(void* p) {
    delete static_cast<Pref*>(p);
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) {
    return CUBLAS_STATUS_SUCCESS;
}

struct HeuristicResult {
    uint64_t algo[8];
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};

API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(void*, void*, void*, void*, void*, void*, void*,
                                                  int requested, HeuristicResult* results,
                                                  int* returned) {
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    memset(results, 0, sizeof(HeuristicResult));
    results[0].waves = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatmul(void*, void* desc, const void* alpha, const void* a, void* adesc,
                                  const void* b, void* bdesc, const void* beta, const void* c,
                                  void* cdesc, void* d, void* ddesc, const void*, void*, size_t,
                                  void* stream) {
    emu::Guard g;
    emu::count("cublasLtMatmul");
    const Desc& ds = *static_cast<Desc*>(desc);
    const Layout& la = *static_cast<Layout*>(adesc);
    const Layout& lb = *static_cast<Layout*>(bdesc);
    const Layout& lc = *static_cast<Layout*>(cdesc);
    const Layout& ld = *static_cast<Layout*>(ddesc);
    const bool ta = ds.transa == 1, tb = ds.transb == 1;
    const uint64_t m = ta ? la.cols : la.rows, k = ta ? la.rows : la.cols;
    const uint64_t kb = tb ? lb.cols : lb.rows, n = tb ? lb.rows : lb.cols;
    if (k != kb || ld.rows != m || ld.cols != n || lc.rows != m || lc.cols != n) {
        fprintf(stderr, "cuda_emu: cublasLtMatmul: shapes do not agree (op(A) %llux%llu, op(B) "
                        "%llux%llu, D %llux%llu)\n", (unsigned long long)m, (unsigned long long)k,
                (unsigned long long)kb, (unsigned long long)n, (unsigned long long)ld.rows,
                (unsigned long long)ld.cols);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (ds.epilogue == 4 && ds.bias == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    const int bias_type = ds.bias_type >= 0 ? ds.bias_type : ld.type;
    const bool use_bias = ds.epilogue == 4;
    const void* bias = ds.bias;
    const Layout A = la, B = lb, C = lc, D = ld;
    const int r = emu::enqueue(stream, [=] {
        const uint64_t kp = (k + 7) / 8 * 8;
        const std::vector<float> pa = pack(a, A, ta, true, m, k, kp);
        const std::vector<float> pb = pack(b, B, tb, false, n, k, kp);
        const uint64_t nb = (n + 3) / 4;
        auto columns = [&](uint64_t jb0, uint64_t jb1) {
            for (uint64_t jb = jb0; jb < jb1; ++jb)
                for (uint64_t i0 = 0; i0 < m; i0 += 4) {
                    float acc[4][4];
                    tile4x4(&pa[i0 * kp], &pb[jb * 4 * kp], kp, acc);
                    for (uint64_t y = 0; y < 4 && jb * 4 + y < n; ++y)
                        for (uint64_t x = 0; x < 4 && i0 + x < m; ++x) {
                            const uint64_t i = i0 + x, j = jb * 4 + y;
                            float v = al * acc[x][y];
                            if (be != 0.0f) v += be * load(c, C.type, i + j * (uint64_t)C.ld);
                            if (use_bias) v += load(bias, bias_type, i);
                            store(d, D.type, i + j * (uint64_t)D.ld, v);
                        }
                }
        };
        // Large products on every core (each thread owns whole columns of D).
        const unsigned nt = m * n * k > (1u << 24) ? std::max(1u, std::thread::hardware_concurrency()) : 1u;
        std::vector<std::thread> pool;
        for (unsigned t = 1; t < nt; ++t) pool.emplace_back(columns, nb * t / nt, nb * (t + 1) / nt);
        columns(0, nb / nt);
        for (auto& th : pool) th.join();
        return 0;
    });
    return r == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}
