// emu_runtime.cpp — CUDA threads as fibers: blocks, barriers, warp collectives, the kernel
// registry.
//
// A launch runs its blocks one after another. The threads of a block are fibers on the calling
// OS thread (a hand-written x86-64 stack switch: ucontext's swapcontext makes a system call per
// switch, which cost 85 % of the run time); the scheduler resumes them in a fixed order (HANDCOV_EMU_ORDER: `forward`,
// the default, `reverse`, or `random` with HANDCOV_EMU_SEED), each running until it waits at a
// barrier or returns. Running the suite under two orders shows a kernel whose result depends on
// which thread of a phase writes shared memory first (a race a barrier should have ordered).
//
// A pass over the block's threads in which no thread arrives anywhere, passes a barrier or
// returns is a deadlock: reported with where each thread waits, and the launch fails. So are a
// __syncthreads that some threads of the block reach after others returned, a warp collective
// whose mask names a lane that returned or does not exist, and lanes of one collective that
// disagree on the mask.

#include <stdio.h>
#include <stdlib.h>

#include <map>
#include <mutex>
#include <algorithm>
#include <random>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

// ---------------------------------------------------------------------------------------------
// Stack switching. emu_switch(from, to) saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *from, loads *to's and
// restores the same set from there: a function call that returns on another stack. A new
// fiber's stack is laid out as if it had switched away just before calling its entry.

#if !defined(__x86_64__)
#error "cuda_emu's fibers switch stacks in x86-64 assembly"
#endif

extern "C" void emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

// The initial stack pointer of a fiber that starts in entry().
static void* fiber_stack_init(char* stack, size_t bytes, void (*entry)()) {
#ifdef EMU_ASAN
    // The stack is reused: frames of a fiber that never unwound leave their redzones behind.
    ASAN_UNPOISON_MEMORY_REGION(stack, bytes);
#endif
    uintptr_t top = ((uintptr_t)(stack + bytes)) & ~(uintptr_t)15;
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                    // entry's return address slot (it never returns): rsp ≡ 8 mod 16
    *--sp = (uint64_t)entry;      // where emu_switch's ret goes
    for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    *--sp = (uint64_t)csr[0] | ((uint64_t)(csr[1] & 0xffff) << 32);
    return sp;
}

namespace emu {

ThreadState* cur_thread = nullptr;
BlockState* cur_block = nullptr;

// ---------------------------------------------------------------------------------------------
// Registry.

static std::map<std::string, KernelInfo>& registry() {
    static std::map<std::string, KernelInfo> r;
    return r;
}

Registration::Registration(KernelInfo info) {
    if (!registry().emplace(info.name, info).second) {
        fprintf(stderr, "cuda_emu: kernel %s defined twice\n", info.name);
        abort();
    }
}

const KernelInfo* find_kernel(const std::string& name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : &it->second;
}

static std::recursive_mutex g_mutex;
void lock() { g_mutex.lock(); }
void unlock() { g_mutex.unlock(); }

// ---------------------------------------------------------------------------------------------
// Fibers.

static const size_t STACK_BYTES = 512 << 10;

struct Fiber {
    ThreadState ts;
    void* sp = nullptr;  // saved stack pointer while switched out
    char* stack = nullptr;
    bool done = false;
    // While waiting: the generation counter it waits on and the value it saw.
    const uint64_t* wait_on = nullptr;
    uint64_t wait_gen = 0;
    const char* where = "";  // what it waits at (for deadlock reports)
};

struct WarpState {
    unsigned exist_mask = 0;  // lanes this warp has (the last warp of a block may be partial)
    unsigned live_mask = 0;   // lanes that have not returned
    unsigned arrived = 0;     // lanes waiting at the current collective
    unsigned mask = 0;        // its mask
    uint64_t gen = 0;
    uint64_t slot[32];
    alignas(16) unsigned char scratch[32 * 64];
};

struct Launch {
    const KernelInfo* k;
    void** params;
    BlockState bs;
    std::vector<Fiber> fibers;
    std::vector<WarpState> warps;
    unsigned live = 0;
    // Block barrier.
    unsigned bar_arrived = 0;
    uint64_t bar_gen = 0;
    int bar_and = 1;      // __syncthreads_and of the threads arrived so far
    int bar_res_and = 0;  // and of the last completed barrier
    void* main_sp = nullptr;  // the scheduler's stack pointer while a fiber runs
    uint64_t events = 0;
    std::string error;
    bool aborted = false;
    std::map<const void*, void*> shared;  // static __shared__ variables of the running block
#ifdef EMU_ASAN
    void* fake_stack = nullptr;
#endif
};

static Launch* L = nullptr;
static std::vector<char*> g_stacks;  // reused between launches

void fail(const char* what) {
    if (L == nullptr) {
        fprintf(stderr, "cuda_emu: %s (outside a launch)\n", what);
        return;
    }
    if (L->error.empty()) {
        char buf[512];
        const ThreadState* t = cur_thread;
        snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", L->k->name,
                 L->bs.bid.x, L->bs.bid.y, L->bs.bid.z, t ? t->tid.x : 0, t ? t->tid.y : 0,
                 t ? t->tid.z : 0, what);
        L->error = buf;
    }
}

static Fiber& me() { return L->fibers[cur_thread->linear]; }

// Back to the scheduler.
static void yield() {
    Fiber& f = me();
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&L->fake_stack, nullptr, 0);
#endif
    emu_switch(&f.sp, L->main_sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(L->fake_stack, nullptr, nullptr);
#endif
}

static void wait_for(const uint64_t* gen, uint64_t seen, const char* where) {
    Fiber& f = me();
    f.wait_on = gen;
    f.wait_gen = seen;
    f.where = where;
    while (*gen == seen) yield();
    f.wait_on = nullptr;
    L->events++;
}

static void release_block_barrier() {
    L->bar_arrived = 0;
    L->bar_res_and = L->bar_and;
    L->bar_and = 1;
    L->bar_gen++;
    L->events++;
}

static void block_barrier(int pred) {
    L->bar_and &= pred != 0;
    L->events++;
    if (L->live < L->fibers.size())
        fail("__syncthreads reached after other threads of the block returned");
    if (++L->bar_arrived == L->live) {
        release_block_barrier();
        return;
    }
    wait_for(&L->bar_gen, L->bar_gen, "__syncthreads");
}

void sync_block() { block_barrier(1); }
int sync_block_and(int p) {
    block_barrier(p);
    return L->bar_res_and;
}

void sync_warp(unsigned mask) {
    WarpState& w = L->warps[cur_thread->warp];
    const unsigned bit = 1u << cur_thread->lane;
    if (!(mask & bit)) fail("warp collective called by a lane outside its mask");
    if (mask & ~w.exist_mask) fail("warp collective: the mask names lanes the block does not have");
    if (mask & ~w.live_mask) fail("warp collective: a lane of the mask has returned");
    if (w.arrived == 0)
        w.mask = mask;
    else if (w.mask != mask)
        fail("warp collective: the lanes disagree on the mask");
    w.arrived |= bit;
    L->events++;
    if ((w.arrived & w.mask & w.live_mask) == (w.mask & w.live_mask)) {
        w.arrived = 0;
        w.gen++;
        return;
    }
    wait_for(&w.gen, w.gen, "a warp collective");
}

uint64_t warp_exchange(unsigned mask, uint64_t v, unsigned src) {
    WarpState& w = L->warps[cur_thread->warp];
    if (src >= 32 || !(mask & (1u << src))) fail("shuffle from a lane outside the mask");
    w.slot[cur_thread->lane] = v;
    sync_warp(mask);
    const uint64_t r = w.slot[src & 31];
    sync_warp(mask);
    return r;
}

void* block_shared_alloc(const void* tag, size_t bytes, size_t align) {
    void*& p = L->shared[tag];
    if (p == nullptr) {
        if (posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, bytes) != 0) {
            fprintf(stderr, "cuda_emu: out of memory for shared memory\n");
            abort();
        }
        memset(p, 0xff, bytes);
    }
    return p;
}

static void free_block_shared() {
    for (auto& [tag, p] : L->shared) free(p);
    L->shared.clear();
}

void* warp_scratch() { return L->warps[cur_thread->warp].scratch; }

static void fiber_main() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    L->k->invoke(L->params);
    Fiber& f = me();
    f.done = true;
    L->live--;
    L->events++;
    WarpState& w = L->warps[cur_thread->warp];
    w.live_mask &= ~(1u << cur_thread->lane);
    if (w.arrived != 0) fail("returned while other lanes of its warp wait at a collective");
    if (L->bar_arrived > 0) {
        fail("returned while other threads of the block wait at __syncthreads");
        if (L->bar_arrived == L->live) release_block_barrier();
    }
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, nullptr, 0);  // this stack is finished
#endif
    void* dead;
    emu_switch(&dead, L->main_sp);  // never resumed
    __builtin_unreachable();
}

enum class Order { Forward, Reverse, Random };

static Order parse_order(const char* o) {
    if (o == nullptr || strcmp(o, "forward") == 0) return Order::Forward;
    if (strcmp(o, "reverse") == 0) return Order::Reverse;
    if (strcmp(o, "random") == 0) return Order::Random;
    fprintf(stderr, "cuda_emu: HANDCOV_EMU_ORDER=%s is not forward, reverse or random\n", o);
    exit(2);
}

static Order g_order = parse_order(getenv("HANDCOV_EMU_ORDER"));

void set_order(const char* order) { g_order = parse_order(order); }

static std::string describe_deadlock() {
    std::string s = "deadlock: every thread waits (";
    std::map<std::string, unsigned> at;
    for (const Fiber& f : L->fibers)
        if (!f.done) at[f.where]++;
    bool first = true;
    for (auto& [where, n] : at) {
        s += (first ? "" : ", ") + std::to_string(n) + " at " + where;
        first = false;
    }
    return s + ")";
}

static void run_block(Order order, std::mt19937_64& rng) {
    const unsigned n = (unsigned)L->fibers.size();
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = L->fibers[i];
        f.done = false;
        f.wait_on = nullptr;
        f.sp = fiber_stack_init(f.stack, STACK_BYTES, fiber_main);
    }
    for (WarpState& w : L->warps) {
        w.live_mask = w.exist_mask;
        w.arrived = 0;
    }
    L->live = n;
    L->bar_arrived = 0;
    if (L->bs.dyn_smem_bytes) memset(L->bs.dyn_smem, 0xff, L->bs.dyn_smem_bytes);

    std::vector<unsigned> seq(n);
    for (unsigned i = 0; i < n; ++i) seq[i] = order == Order::Reverse ? n - 1 - i : i;
    while (L->live > 0) {
        if (order == Order::Random) std::shuffle(seq.begin(), seq.end(), rng);
        const uint64_t before = L->events;
        for (unsigned i : seq) {
            Fiber& f = L->fibers[i];
            if (f.done || (f.wait_on != nullptr && *f.wait_on == f.wait_gen)) continue;
            cur_thread = &f.ts;
#ifdef EMU_ASAN
            void* fs = nullptr;
            __sanitizer_start_switch_fiber(&fs, f.stack, STACK_BYTES);
#endif
            emu_switch(&L->main_sp, f.sp);
#ifdef EMU_ASAN
            __sanitizer_finish_switch_fiber(fs, nullptr, nullptr);
#endif
            cur_thread = nullptr;
        }
        if (L->live > 0 && L->events == before) {
            if (L->error.empty()) L->error = std::string("kernel ") + L->k->name + ": " + describe_deadlock();
            L->aborted = true;
            return;
        }
    }
}

std::string run_launch(const KernelInfo& k, dim3 grid, dim3 block, unsigned dyn_smem,
                       void** params) {
    const Order order = g_order;
    static std::mt19937_64 rng([] {
        const char* s = getenv("HANDCOV_EMU_SEED");
        return s ? strtoull(s, nullptr, 10) : 1ull;
    }());
    const unsigned n = block.x * block.y * block.z;
    Launch launch;
    launch.k = &k;
    launch.params = params;
    launch.bs.grid = grid;
    launch.bs.block = block;
    launch.bs.dyn_smem_bytes = dyn_smem;
    std::vector<unsigned char> smem(dyn_smem ? dyn_smem : 1);
    launch.bs.dyn_smem = dyn_smem ? smem.data() : nullptr;
    launch.fibers.resize(n);
    launch.warps.resize((n + 31) / 32);
    while (g_stacks.size() < n) g_stacks.push_back(static_cast<char*>(malloc(STACK_BYTES)));
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = launch.fibers[i];
        f.stack = g_stacks[i];
        f.ts.tid = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
        f.ts.linear = i;
        f.ts.lane = i % 32;
        f.ts.warp = i / 32;
        launch.warps[i / 32].exist_mask |= 1u << (i % 32);
    }

    Launch* saved = L;
    BlockState* saved_block = cur_block;
    L = &launch;
    cur_block = &launch.bs;
    for (unsigned z = 0; z < grid.z && !launch.aborted; ++z)
        for (unsigned y = 0; y < grid.y && !launch.aborted; ++y)
            for (unsigned x = 0; x < grid.x && !launch.aborted; ++x) {
                launch.bs.bid = uint3{x, y, z};
                run_block(order, rng);
                free_block_shared();
                if (!launch.error.empty()) launch.aborted = true;
            }
    L = saved;
    cur_block = saved_block;
    return launch.error;
}

}  // namespace emu
