// A stand-in libcuda.so that runs kernels/*.cu on the CPU, for tests/cuda_emulated.rs: the CUDA backend
// (cudarc, argument packing, launch shapes, memory handling) and the kernels' source run unchanged,
// with "device" memory in host RAM and each block's threads as fibers. It checks the kernels' logic
// (indexing, tiling, barriers, shuffles, rounding); it says nothing about speed, the memory model of a
// real GPU, or the machine code nvcc emits. Built by the test with g++; kernels.inc (written by the test)
// includes every kernels/*.cu and registers each `extern "C" __global__` function.
#include "cuda_shim.h"
#include <mma.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <map>
#include <string>
#include <utility>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;
unsigned char emu_shfl_slots[32][32][8];

// Fiber switch (x86-64 System V): save the callee-saved registers on the current stack, swap stack
// pointers, restore. glibc's swapcontext also saves the signal mask with a system call per switch,
// which made the emulator ten times slower.
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
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");
extern "C" void emu_switch(void** save_sp, void* load_sp);

namespace {
enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
struct Fiber {
    void* sp;
    State state;
};
std::vector<Fiber> fibers;
std::vector<std::vector<char>> stacks;
void* scheduler_sp;
int current;
void (*entry_kernel)(void**);
void** entry_params;

[[noreturn]] void fiber_start() {
    entry_kernel(entry_params);
    fibers[current].state = DONE;
    emu_switch(&fibers[current].sp, scheduler_sp);
    abort();  // a finished fiber is never resumed
}

void wait(State s) {
    fibers[current].state = s;
    emu_switch(&fibers[current].sp, scheduler_sp);
}

// A new fiber's stack as emu_switch leaves one: six zero registers, then fiber_start as the return
// address, then a null "caller" slot so fiber_start starts with the ABI's stack alignment.
void* initial_stack(std::vector<char>& stack) {
    uintptr_t top = ((uintptr_t)(stack.data() + stack.size())) & ~(uintptr_t)15;
    void** sp = (void**)(top - 8);
    *sp = nullptr;
    *--sp = (void*)&fiber_start;
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    return sp;
}

void set_thread(int t) {
    threadIdx = {(unsigned)t % blockDim.x, ((unsigned)t / blockDim.x) % blockDim.y, (unsigned)t / (blockDim.x * blockDim.y)};
}

// EMU_SHUFFLE=seed runs the threads between two barriers in a new pseudo-random order each time
// instead of thread order: a result that depends on the order is a race (a missing barrier).
uint64_t shuffle_state = [] {
    const char* s = getenv("EMU_SHUFFLE");
    return s ? strtoull(s, nullptr, 10) * 2 + 1 : 0;
}();
std::vector<int> order;

// Runs one block to completion; false on a barrier deadlock (threads waiting that can never meet).
bool run_block(int threads) {
    fibers.assign(threads, Fiber{});
    if ((int)stacks.size() < threads) stacks.resize(threads, std::vector<char>(256 * 1024));
    for (int t = 0; t < threads; ++t) fibers[t] = {initial_stack(stacks[t]), RUNNABLE};
    order.resize(threads);
    for (int t = 0; t < threads; ++t) order[t] = t;
    for (;;) {
        for (int i = threads - 1; shuffle_state && i > 0; --i) {
            shuffle_state = shuffle_state * 6364136223846793005ull + 1442695040888963407ull;
            std::swap(order[i], order[(shuffle_state >> 33) % (i + 1)]);
        }
        for (int t : order) {
            if (fibers[t].state != RUNNABLE) continue;
            current = t;
            set_thread(t);
            emu_switch(&scheduler_sp, fibers[t].sp);
        }
        bool released = false, all_done = true, all_at_block = true;
        for (int w = 0; w * 32 < threads; ++w) {
            bool any = false, all_at_warp = true;
            for (int t = w * 32; t < threads && t < w * 32 + 32; ++t) {
                if (fibers[t].state == DONE) continue;
                any = true;
                all_at_warp = all_at_warp && fibers[t].state == AT_WARP_BARRIER;
            }
            if (any && all_at_warp) {
                for (int t = w * 32; t < threads && t < w * 32 + 32; ++t)
                    if (fibers[t].state == AT_WARP_BARRIER) fibers[t].state = RUNNABLE;
                released = true;
            }
        }
        for (auto& f : fibers) {
            all_done = all_done && f.state == DONE;
            all_at_block = all_at_block && (f.state == DONE || f.state == AT_BLOCK_BARRIER);
        }
        if (all_done) return true;
        if (!released && all_at_block) {
            // CUDA requires every thread of the block at __syncthreads; one that exited is a bug.
            for (auto& f : fibers)
                if (f.state == DONE) return false;
            for (auto& f : fibers) f.state = RUNNABLE;
            released = true;
        }
        if (!released) return false;
    }
}
}  // namespace

void emu_block_barrier() { wait(AT_BLOCK_BARRIER); }
void emu_warp_barrier() { wait(AT_WARP_BARRIER); }

// Calls kernel K with its parameters unpacked from cuLaunchKernel's void** array.
template <typename F>
struct Unpack;
template <typename... A>
struct Unpack<void(A...)> {
    template <void (*K)(A...), size_t... I>
    static void call(void** p, std::index_sequence<I...>) {
        K(*static_cast<A*>(p[I])...);
    }
    template <void (*K)(A...)>
    static void call(void** p) {
        call<K>(p, std::index_sequence_for<A...>{});
    }
};
#define EMU_KERNEL(k) {#k, &Unpack<decltype(k)>::template call<k>},

#include "kernels.inc"

// ---- the driver API subset cudarc uses ----
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_LAUNCH_FAILED = 719 };
static int context_token, module_token;

extern "C" {
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) { *d = ordinal; return ordinal == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
CUresult cuDeviceGetName(char* name, int len, CUdevice) { snprintf(name, len, "xaiclip kernel emulator (CPU)"); return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int* v, int, CUdevice) { *v = 0; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) { *ctx = &context_token; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = &context_token; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(void*) { return CUDA_SUCCESS; }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) { *free_bytes = (size_t)4 << 30; *total = (size_t)8 << 30; return CUDA_SUCCESS; }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { *p = (CUdeviceptr)malloc(bytes ? bytes : 1); return *p ? CUDA_SUCCESS : 2; }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { free((void*)p); return CUDA_SUCCESS; }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { memset((void*)p, v, n); return CUDA_SUCCESS; }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(p, v, n); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { memcpy((void*)d, s, n); return CUDA_SUCCESS; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { return cuMemcpyHtoD_v2(d, s, n); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { memcpy(d, (const void*)s, n); return CUDA_SUCCESS; }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoH_v2(d, s, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { memcpy((void*)d, (const void*)s, n); return CUDA_SUCCESS; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }
CUresult cuModuleLoadData(void** m, const void*) { *m = &module_token; return CUDA_SUCCESS; }
CUresult cuModuleUnload(void*) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    for (auto& k : emu_kernels)
        if (strcmp(k.first, name) == 0) {
            *f = (void*)k.second;
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_NOT_FOUND;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned, void*, void** params, void**) {
    entry_kernel = (void (*)(void**))f;
    entry_params = params;
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                if (!run_block((int)(bx * by * bz))) {
                    fprintf(stderr, "emulator: barrier deadlock in block (%u, %u, %u)\n", x, y, z);
                    return CUDA_ERROR_LAUNCH_FAILED;
                }
            }
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) { *s = e == CUDA_SUCCESS ? "CUDA_SUCCESS" : e == CUDA_ERROR_LAUNCH_FAILED ? "CUDA_ERROR_LAUNCH_FAILED" : "CUDA_ERROR_EMULATED"; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }
}
