// emu_driver.cpp — the part of the CUDA driver API that handcov (through cudarc) calls, on the
// host: one emulated device, "device memory" in host memory (so a device pointer is a host
// address), every stream synchronous, kernels run by emu_runtime.cpp, stream capture recorded
// into a graph and replayed in order.
//
// Checks the real driver makes and handcov's code could get wrong are made here too: copies
// must stay inside one allocation, frees must name an allocation, a launch must respect the
// block-size limits (1024 and the kernel's __launch_bounds__) and ask for no more dynamic shared
// memory than 48 KiB or what cuFuncSetAttribute allowed, a module's kernels must exist, and a
// kernel error is sticky, as on a GPU: every later call fails with it.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>

#include "emu_internal.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_UNKNOWN = 999,
};

namespace {

const size_t TOTAL_MEM = 80ull << 30;
const unsigned SMEM_DEFAULT = 48 << 10;
const unsigned SMEM_OPTIN = 232448;  // sm_90: 227 KiB per block

struct Module {
    std::vector<std::string> kernels;
};
struct Function {
    const emu::KernelInfo* k;
    unsigned max_dyn_smem = SMEM_DEFAULT;
};
struct Event {
    unsigned flags;
    double ms = 0;
};
struct Graph {
    std::vector<std::function<int()>> nodes;
};
struct Stream {
    Graph* capture = nullptr;  // non-null while capturing
};

std::map<uintptr_t, size_t> g_allocs;  // address → bytes
size_t g_allocated = 0;
int g_sticky = CUDA_SUCCESS;            // a failed kernel poisons the context, as on a GPU
Stream g_default_stream;
int g_ctx_token;                        // the primary context's handle points here
thread_local void* t_current_ctx = nullptr;
bool g_initialised = false;

Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &g_default_stream; }

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// The allocation holding [p, p + n), or false.
bool in_allocation(uintptr_t p, size_t n) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second && p + n >= p;
}

CUresult check_device_range(CUdeviceptr p, size_t n, const char* what) {
    if (n == 0) return CUDA_SUCCESS;
    if (!in_allocation((uintptr_t)p, n)) {
        fprintf(stderr, "cuda_emu: %s: [%#llx, +%zu) is not inside one allocation\n", what, p, n);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult alloc(CUdeviceptr* out, size_t n) {
    if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (n == 0) {
        *out = 0;
        return CUDA_SUCCESS;
    }
    if (g_allocated + n > TOTAL_MEM) return CUDA_ERROR_OUT_OF_MEMORY;
    void* p = nullptr;
    if (posix_memalign(&p, 256, n) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(p, 0xff, n);  // uninitialised device memory reads as NaN
    g_allocs[(uintptr_t)p] = n;
    g_allocated += n;
    *out = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr p) {
    if (p == 0) return CUDA_SUCCESS;
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) {
        fprintf(stderr, "cuda_emu: free of %#llx, which is not an allocation\n", p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    g_allocated -= it->second;
    g_allocs.erase(it);
    free((void*)(uintptr_t)p);
    return CUDA_SUCCESS;
}

}  // namespace

int emu::enqueue(void* stream, std::function<int()> op) {
    if (g_sticky != CUDA_SUCCESS) return g_sticky;
    Stream* s = stream_of(stream);
    if (s->capture) {
        s->capture->nodes.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    return op();
}

static std::map<std::string, unsigned long long>* g_counts = nullptr;

static void print_counts() {
    unsigned long long launches = 0;
    for (const auto& [what, n] : *g_counts) launches += what.rfind("launch ", 0) == 0 ? n : 0;
    fprintf(stderr, "cuda_emu stats: %llu kernel launches\n", launches);
    for (const auto& [what, n] : *g_counts) fprintf(stderr, "cuda_emu stats: %10llu  %s\n", n, what.c_str());
}

void emu::count(const std::string& what, unsigned long long n) {
    static const bool on = getenv("HANDCOV_EMU_STATS") != nullptr;
    if (!on) return;
    if (g_counts == nullptr) {
        g_counts = new std::map<std::string, unsigned long long>();
        atexit(print_counts);
    }
    (*g_counts)[what] += n;
}

#define API extern "C" __attribute__((visibility("default")))
#define ENTRY                 \
    emu::Guard guard_;        \
    if (g_sticky != CUDA_SUCCESS) return g_sticky

API CUresult cuInit(unsigned) {
    emu::Guard g;
    g_initialised = true;
    return CUDA_SUCCESS;
}
API CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "handcov CPU emulator (sm_90 limits)");
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) {
    *b = TOTAL_MEM;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetUuid(void* uuid, CUdevice) {
    memset(uuid, 0, 16);
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetUuid_v2(void* uuid, CUdevice) { return cuDeviceGetUuid(uuid, 0); }
API CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
        case 1: *v = 1024; break;                // MAX_THREADS_PER_BLOCK
        case 2: case 3: *v = 1024; break;        // MAX_BLOCK_DIM_X/Y
        case 4: *v = 64; break;                  // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;          // MAX_GRID_DIM_X
        case 6: case 7: *v = 65535; break;       // MAX_GRID_DIM_Y/Z
        case 8: *v = SMEM_DEFAULT; break;        // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;                 // WARP_SIZE
        case 13: *v = 1980000; break;            // CLOCK_RATE (kHz)
        case 16: *v = 132; break;                // MULTIPROCESSOR_COUNT
        case 36: *v = 2619000; break;            // MEMORY_CLOCK_RATE (kHz)
        case 37: *v = 5120; break;               // GLOBAL_MEMORY_BUS_WIDTH
        case 38: *v = 50 << 20; break;           // L2_CACHE_SIZE
        case 39: *v = 2048; break;               // MAX_THREADS_PER_MULTIPROCESSOR
        case 75: *v = 9; break;                  // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;                  // COMPUTE_CAPABILITY_MINOR
        case 81: *v = 233472; break;             // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 97: *v = SMEM_OPTIN; break;         // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 1; break;                 // MEMORY_POOLS_SUPPORTED
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    *ctx = &g_ctx_token;
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
API CUresult cuCtxSetCurrent(void* ctx) {
    t_current_ctx = ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = t_current_ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
API CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = t_current_ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSynchronize() {
    ENTRY;
    emu::count("cuCtxSynchronize");
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetLimit(int, size_t) { return CUDA_SUCCESS; }
API CUresult cuCtxGetLimit(size_t* v, int) {
    *v = 0;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetFlags(unsigned) { return CUDA_SUCCESS; }
API CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) {
    *lo = 0;
    *hi = -5;
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}
API CUresult cuGetErrorString(CUresult e, const char** s) {
    cuGetErrorName(e, s);
    if (e == CUDA_ERROR_LAUNCH_FAILED) *s = "kernel failed in the CPU emulator (see stderr)";
    return CUDA_SUCCESS;
}

// ------------------------------------------------------------------------------------------
// Memory.

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    ENTRY;
    return alloc(p, n);
}
API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) {
    ENTRY;
    return alloc(p, n);
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    emu::Guard g;
    return release(p);
}
API CUresult cuMemFreeAsync(CUdeviceptr p, void*) {
    emu::Guard g;
    return release(p);
}
API CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    emu::Guard g;
    *free_b = TOTAL_MEM - g_allocated;
    *total = TOTAL_MEM;
    return CUDA_SUCCESS;
}
API CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    *p = malloc(n ? n : 1);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
API CUresult cuMemFreeHost(void* p) {
    free(p);
    return CUDA_SUCCESS;
}

static CUresult copy(void* stream, CUdeviceptr dst, bool dst_dev, CUdeviceptr src, bool src_dev,
                     size_t n, const char* what) {
    if (dst_dev && check_device_range(dst, n, what) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_VALUE;
    if (src_dev && check_device_range(src, n, what) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_VALUE;
    emu::count(what);
    emu::count(std::string(what) + " bytes", n);
    return emu::enqueue(stream, [=] {
        memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
        return CUDA_SUCCESS;
    });
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    ENTRY;
    return copy(nullptr, dst, true, (CUdeviceptr)(uintptr_t)src, false, n, "cuMemcpyHtoD");
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    ENTRY;
    return copy(s, dst, true, (CUdeviceptr)(uintptr_t)src, false, n, "cuMemcpyHtoDAsync");
}
API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    ENTRY;
    return copy(nullptr, (CUdeviceptr)(uintptr_t)dst, false, src, true, n, "cuMemcpyDtoH");
}
API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    ENTRY;
    return copy(s, (CUdeviceptr)(uintptr_t)dst, false, src, true, n, "cuMemcpyDtoHAsync");
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    ENTRY;
    return copy(nullptr, dst, true, src, true, n, "cuMemcpyDtoD");
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    ENTRY;
    return copy(s, dst, true, src, true, n, "cuMemcpyDtoDAsync");
}
API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* s) {
    ENTRY;
    if (check_device_range(dst, n, "cuMemsetD8Async") != CUDA_SUCCESS) return CUDA_ERROR_INVALID_VALUE;
    return emu::enqueue(s, [=] {
        memset((void*)(uintptr_t)dst, v, n);
        return CUDA_SUCCESS;
    });
}
API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return cuMemsetD8Async(dst, v, n, nullptr);
}
API CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void* s) {
    ENTRY;
    if (check_device_range(dst, 4 * n, "cuMemsetD32Async") != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_VALUE;
    return emu::enqueue(s, [=] {
        unsigned* p = (unsigned*)(uintptr_t)dst;
        for (size_t i = 0; i < n; ++i) p[i] = v;
        return CUDA_SUCCESS;
    });
}

// ------------------------------------------------------------------------------------------
// Streams, events, graphs.

API CUresult cuStreamCreate(void** s, unsigned) {
    *s = new Stream();
    return CUDA_SUCCESS;
}
API CUresult cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }
API CUresult cuStreamDestroy_v2(void* s) {
    emu::Guard g;
    if (s) delete static_cast<Stream*>(s);
    return CUDA_SUCCESS;
}
API CUresult cuStreamSynchronize(void*) {
    ENTRY;
    emu::count("cuStreamSynchronize");
    return CUDA_SUCCESS;
}
API CUresult cuStreamQuery(void*) {
    ENTRY;
    return CUDA_SUCCESS;
}
API CUresult cuStreamWaitEvent(void*, void*, unsigned) {
    ENTRY;
    return CUDA_SUCCESS;
}
API CUresult cuEventCreate(void** e, unsigned flags) {
    *e = new Event{flags};
    return CUDA_SUCCESS;
}
API CUresult cuEventDestroy_v2(void* e) {
    emu::Guard g;
    delete static_cast<Event*>(e);
    return CUDA_SUCCESS;
}
API CUresult cuEventRecord(void* e, void* s) {
    ENTRY;
    Event* ev = static_cast<Event*>(e);
    return emu::enqueue(s, [ev] {
        ev->ms = now_ms();
        return CUDA_SUCCESS;
    });
}
API CUresult cuEventSynchronize(void*) {
    ENTRY;
    emu::count("cuEventSynchronize");
    return CUDA_SUCCESS;
}
API CUresult cuEventQuery(void*) {
    ENTRY;
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    ENTRY;
    const Event* ea = static_cast<Event*>(a);
    const Event* eb = static_cast<Event*>(b);
    if ((ea->flags | eb->flags) & 2) return CUDA_ERROR_INVALID_HANDLE;  // CU_EVENT_DISABLE_TIMING
    *ms = (float)(eb->ms - ea->ms);
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

API CUresult cuStreamBeginCapture_v2(void* s, int) {
    ENTRY;
    Stream* st = stream_of(s);
    if (s == nullptr || st->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    st->capture = new Graph();
    return CUDA_SUCCESS;
}
API CUresult cuStreamEndCapture(void* s, void** graph) {
    ENTRY;
    Stream* st = stream_of(s);
    if (!st->capture) return CUDA_ERROR_INVALID_VALUE;
    *graph = st->capture;
    st->capture = nullptr;
    return CUDA_SUCCESS;
}
API CUresult cuStreamIsCapturing(void* s, int* status) {
    *status = stream_of(s)->capture ? 1 : 0;
    return CUDA_SUCCESS;
}
API CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    ENTRY;
    *exec = new Graph(*static_cast<Graph*>(graph));
    return CUDA_SUCCESS;
}
API CUresult cuGraphUpload(void*, void*) { return CUDA_SUCCESS; }
API CUresult cuGraphLaunch(void* exec, void* s) {
    ENTRY;
    Graph* g = static_cast<Graph*>(exec);
    emu::count("cuGraphLaunch");
    return emu::enqueue(s, [g] {
        for (auto& node : g->nodes) {
            const int r = node();
            if (r != CUDA_SUCCESS) return r;
        }
        return (int)CUDA_SUCCESS;
    });
}
API CUresult cuGraphDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}
API CUresult cuGraphExecDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}

// ------------------------------------------------------------------------------------------
// Modules and launches.

API CUresult cuModuleLoadData(void** module, const void* image) {
    ENTRY;
    const char* ptx = static_cast<const char*>(image);
    if (strstr(ptx, ".entry") == nullptr && strstr(ptx, ".version") == nullptr) return CUDA_ERROR_INVALID_IMAGE;
    auto m = std::make_unique<Module>();
    // Every `.entry NAME(` of the PTX must be a kernel this emulator was built with.
    for (const char* p = strstr(ptx, ".entry"); p; p = strstr(p + 6, ".entry")) {
        const char* q = p + 6;
        while (*q == ' ' || *q == '\t') ++q;
        const char* e = q;
        while (*e && *e != '(' && *e != ' ' && *e != '\n') ++e;
        std::string name(q, e);
        if (!emu::find_kernel(name)) {
            fprintf(stderr, "cuda_emu: the PTX has kernel %s, which the emulator was not built with "
                            "(rebuild it: scripts/cuda_emu/build.sh)\n", name.c_str());
            return CUDA_ERROR_INVALID_IMAGE;
        }
        m->kernels.push_back(name);
    }
    *module = m.release();
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(void* m) {
    delete static_cast<Module*>(m);
    return CUDA_SUCCESS;
}
API CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    ENTRY;
    const Module* m = static_cast<Module*>(module);
    bool found = false;
    for (auto& k : m->kernels) found |= k == name;
    if (!found) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{emu::find_kernel(name)};
    return CUDA_SUCCESS;
}
API CUresult cuFuncSetAttribute(void* f, int attr, int value) {
    ENTRY;
    Function* fn = static_cast<Function*>(f);
    if (attr == 8) {  // MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || (unsigned)value > SMEM_OPTIN) return CUDA_ERROR_INVALID_VALUE;
        fn->max_dyn_smem = (unsigned)value;
    }
    return CUDA_SUCCESS;
}
API CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
    const Function* fn = static_cast<Function*>(f);
    switch (attr) {
        case 0: *v = (int)fn->k->max_threads; break;  // MAX_THREADS_PER_BLOCK
        case 4: *v = 32; break;                       // NUM_REGS (unknown here)
        case 8: *v = (int)fn->max_dyn_smem; break;
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
API CUresult cuFuncSetCacheConfig(void*, int) { return CUDA_SUCCESS; }
API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int, size_t) {
    *n = 2;
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned smem, void* stream, void** params,
                            void** extra) {
    ENTRY;
    const Function* fn = static_cast<Function*>(f);
    const emu::KernelInfo& k = *fn->k;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (extra != nullptr || (params == nullptr && !k.param_sizes.empty())) return CUDA_ERROR_INVALID_VALUE;
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || gy > 65535 || gz > 65535 || bz > 64 ||
        threads > 1024) {
        fprintf(stderr, "cuda_emu: %s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)\n", k.name, gx,
                gy, gz, bx, by, bz);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (threads > k.max_threads) {
        fprintf(stderr, "cuda_emu: %s: %llu threads per block, over its __launch_bounds__ (%u)\n",
                k.name, threads, k.max_threads);
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    if (smem > fn->max_dyn_smem) {
        fprintf(stderr, "cuda_emu: %s: %u bytes of dynamic shared memory, over the %u allowed "
                        "(cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES)\n", k.name, smem, fn->max_dyn_smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    // The parameters are copied now: the caller's array may be gone when a graph replays them.
    std::vector<std::vector<unsigned char>> copies;
    for (size_t i = 0; i < k.param_sizes.size(); ++i) {
        const unsigned char* src = static_cast<const unsigned char*>(params[i]);
        copies.emplace_back(src, src + k.param_sizes[i]);
    }
    const dim3 grid{gx, gy, gz}, block{bx, by, bz};
    const emu::KernelInfo* kp = &k;
    emu::count(std::string("launch ") + k.name);
    return emu::enqueue(stream, [kp, grid, block, smem, copies]() mutable {
        std::vector<void*> ptrs;
        for (auto& c : copies) ptrs.push_back(c.data());
        const std::string err = emu::run_launch(*kp, grid, block, smem, ptrs.data());
        if (!err.empty()) {
            fprintf(stderr, "cuda_emu: %s\n", err.c_str());
            g_sticky = CUDA_ERROR_LAUNCH_FAILED;
            return (int)CUDA_ERROR_LAUNCH_FAILED;
        }
        return (int)CUDA_SUCCESS;
    });
}
