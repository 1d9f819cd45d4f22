// emu_internal.h — what the emulator's parts (runtime, driver API, cuBLASLt) share.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "emu_device.h"

namespace emu {

// One kernel of kernels/*.cu, registered by the generated file of its source (gen.py).
struct KernelInfo {
    const char* name;
    void (*invoke)(void** params);     // calls the kernel with the launch's parameter array
    std::vector<size_t> param_sizes;   // sizeof of each parameter (to copy them into a graph)
    unsigned max_threads;              // __launch_bounds__'s first argument, else 1024
};

struct Registration {
    explicit Registration(KernelInfo info);
};
const KernelInfo* find_kernel(const std::string& name);

template <class F>
struct Invoker;
template <class... A>
struct Invoker<void(A...)> {
    template <void (*F)(A...), size_t... I>
    static void call(void** p, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
    }
    template <void (*F)(A...)>
    static void invoke(void** p) {
        call<F>(p, std::index_sequence_for<A...>{});
    }
    static std::vector<size_t> sizes() { return {sizeof(A)...}; }
};

// Runs a launch to completion on the calling thread. Returns an empty string, or what went wrong
// (a deadlock, a barrier not every thread reached, a collective with a lane missing, ...).
std::string run_launch(const KernelInfo& k, dim3 grid, dim3 block, unsigned dyn_smem,
                       void** params);

// The order the scheduler resumes a block's threads in: "forward", "reverse" or "random"
// (default: $HANDCOV_EMU_ORDER, else forward).
void set_order(const char* order);

// With $HANDCOV_EMU_STATS set: adds `n` to the count of `what`, a host-side API operation (a
// kernel launch by kernel name, a GEMM, a copy and its bytes, a synchronisation); the counts go
// to stderr at exit.
// What a real GPU's per-call overhead is made of; callers hold the lock.
void count(const std::string& what, unsigned long long n = 1);

// Serialises the whole emulator: every API entry point holds it.
void lock();
void unlock();
struct Guard {
    Guard() { lock(); }
    ~Guard() { unlock(); }
};

// Runs `op` on `stream` now, or records it when the stream is being captured into a graph.
// Returns a CUresult.
int enqueue(void* stream, std::function<int()> op);

}  // namespace emu
