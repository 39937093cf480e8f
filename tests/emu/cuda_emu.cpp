// cuda_emu: the host emulator's runtime (cuda_emu.h says what it models and checks).
#include "cuda_emu.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif


// Switching fibers. On x86-64 a few instructions: the callee-saved registers, the SSE and
// x87 control words and the stack pointer (ucontext's swapcontext also saves the signal
// mask, a system call per switch: half the emulator's time); elsewhere ucontext.
#if defined(__x86_64__)
#define EMU_OWN_SWITCH 1
// Saves the running context's registers on its stack and its stack pointer in *from, then
// resumes the context whose saved stack pointer is to.
extern "C" void emu_swap_stack(void **from, void *to);
__asm__(
    ".text\n"
    ".globl emu_swap_stack\n"
    ".type emu_swap_stack,@function\n"
    "emu_swap_stack:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_swap_stack, .-emu_swap_stack\n");
#else
#define EMU_OWN_SWITCH 0
#endif

namespace {

enum class fiber_state { runnable, at_barrier, at_warp, done };
enum class warp_op { none, shfl, any, syncwarp, mma, ldmatrix, collective };

const char *op_name(warp_op op) {
    switch (op) {
    case warp_op::shfl: return "a shuffle";
    case warp_op::any: return "__any_sync";
    case warp_op::syncwarp: return "__syncwarp";
    case warp_op::mma: return "mma.sync";
    case warp_op::ldmatrix: return "ldmatrix";
    case warp_op::collective: return "a WMMA operation";
    default: return "nothing";
    }
}

struct pending_copy {
    void *dst;
    const void *src;
    int bytes;
    bool valid;
    long group;  // the commit group it belongs to (next_group when issued)
};

const size_t STACK_BYTES = 256 * 1024;

struct fiber {
#if EMU_OWN_SWITCH
    void *sp = nullptr;  // saved stack pointer
#else
    ucontext_t ctx;
#endif
    unsigned char *stack = nullptr;  // STACK_BYTES, below it one inaccessible page
    emu_uint3 tid;
    int index = 0;
    fiber_state state = fiber_state::done;
    std::vector<pending_copy> pending;
    long next_group = 0;
    void *fake_stack = nullptr;  // AddressSanitizer's, across switches
};

struct lane_in {
    uint32_t a[4], b[2];
    float c[4];
    const void *p;
    uint64_t bits;
    int src;
    bool pred;
    void (*act)(void *, int);
    void *ctx;
};
struct lane_out {
    uint32_t r[4];
    float d[4];
    uint64_t bits;
    bool pred;
};
struct warp {
    warp_op op = warp_op::none;
    int param = 0, arrived = 0, live = 0;
    const char *collective = nullptr;  // the WMMA operation's name
    lane_in in[32];
    lane_out out[32];
};

// Who allocated a device buffer, and so who may free it.
enum class origin { test, malloc, async };
const char *origin_name(origin o) {
    return o == origin::test ? "emu_device_alloc" : o == origin::malloc ? "cudaMalloc" : "cudaMallocAsync";
}

struct allocation {
    size_t size;
    unsigned char *map;
    size_t map_size;
    origin from;
};

struct shared_array {
    unsigned char *base;
    size_t capacity;
};

struct emulator {
    emu_options options;
    std::vector<shared_array> shared;         // what `extern __shared__` names
    size_t smem_bytes = 0;                    // the running launch's dynamic shared memory
    std::map<const void *, int> smem_opt_in;  // cudaFuncSetAttribute's, by kernel
    const char *kernel = nullptr;
    emu_uint3 block_idx{0, 0, 0}, block_dim{0, 0, 0}, grid_dim{0, 0, 0};
    std::vector<fiber> fibers;
    std::vector<warp> warps;
    fiber *current = nullptr;
    int live = 0, at_barrier = 0;
#if EMU_OWN_SWITCH
    void *scheduler_sp = nullptr;
#else
    ucontext_t scheduler;
#endif
    void *scheduler_fake_stack = nullptr;
    const void *scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
    const std::function<void()> *body = nullptr;
    uint64_t rng = 0;
    std::map<uintptr_t, allocation> allocations;  // by start address
    size_t live_bytes = 0, scratch_live = 0, scratch_peak = 0;
    size_t malloc_live = 0, malloc_peak = 0;  // cudaMalloc's buffers alone
    // What the host waits for or asks the driver for (CTUNE_EMU_COUNTS): a training step
    // should allocate nothing once running and wait only where it reads a result.
    size_t mallocs = 0, frees = 0, waits = 0;
};

// Constructed on first use: sources that include the kernels register their shared memory
// from static initialisers, which may run before this file's.
emulator *the_emulator = nullptr;  // set by the first call: every later one is a load
// The options start from the environment (CTUNE_EMU_SCHEDULE_SEED, CTUNE_EMU_EAGER_COPIES,
// CTUNE_EMU_GUARD_BEFORE), so a test that never sets them runs under another schedule when
// asked (CMake registers the GPU tests' shuffled runs so).
void apply_options(emulator &e, const emu_options &options) {
    e.options = options;
    e.rng = 0x9E3779B97F4A7C15ull ^ options.schedule_seed;
}

// At exit, where CTUNE_EMU_COUNTS names a file: the process's cudaMalloc and cudaFree calls
// and its waits for the device (synchronous copies to the host, cudaDeviceSynchronize), and
// the most bytes cudaMalloc's buffers and the pool's stream-ordered ones held at once, one
// "name count" per line (tests/cuda_emu_e2e.sh compares runs of different lengths, and the
// backend's own count of its memory with these).
void write_counts() {
    FILE *f = fopen(getenv("CTUNE_EMU_COUNTS"), "w");
    if (!f) return;
    fprintf(f, "cudaMalloc %zu\ncudaFree %zu\nwaits %zu\nmalloc_peak %zu\nscratch_peak %zu\n", the_emulator->mallocs,
            the_emulator->frees, the_emulator->waits, the_emulator->malloc_peak, the_emulator->scratch_peak);
    fclose(f);
}

emulator &first_instance() {
    static emulator e;
    the_emulator = &e;
    emu_options options;
    const char *seed = getenv("CTUNE_EMU_SCHEDULE_SEED");
    options.schedule_seed = seed ? (unsigned)strtoul(seed, nullptr, 10) : 0;
    options.eager_copies = getenv("CTUNE_EMU_EAGER_COPIES") != nullptr;
    options.guard_after = getenv("CTUNE_EMU_GUARD_BEFORE") == nullptr;
    apply_options(e, options);
    if (getenv("CTUNE_EMU_COUNTS")) atexit(write_counts);
    return e;
}
inline emulator &instance() { return the_emulator ? *the_emulator : first_instance(); }
#define E (instance())

fiber *running(const char *what) {
    if (!E.current) emu_fail("%s outside a kernel", what);
    return E.current;
}

uint64_t next_random() {  // xorshift64*
    E.rng ^= E.rng >> 12;
    E.rng ^= E.rng << 25;
    E.rng ^= E.rng >> 27;
    return E.rng * 2685821657736338717ull;
}

// ------------------------------------------------------------------ fibers

void switch_to(fiber *f) {
    E.current = f;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&E.scheduler_fake_stack, f->stack, STACK_BYTES);
#endif
#if EMU_OWN_SWITCH
    emu_swap_stack(&E.scheduler_sp, f->sp);
#else
    swapcontext(&E.scheduler, &f->ctx);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(E.scheduler_fake_stack, nullptr, nullptr);
#endif
    E.current = nullptr;
}

void yield() {
    fiber *f = E.current;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&f->fake_stack, E.scheduler_stack_bottom, E.scheduler_stack_size);
#endif
#if EMU_OWN_SWITCH
    emu_swap_stack(&f->sp, E.scheduler_sp);
#else
    swapcontext(&f->ctx, &E.scheduler);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

void release_barrier_if_complete() {
    if (E.at_barrier == 0 || E.at_barrier != E.live) return;
    for (fiber &f : E.fibers)
        if (f.state == fiber_state::at_barrier) f.state = fiber_state::runnable;
    E.at_barrier = 0;
}

void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &E.scheduler_stack_bottom, &E.scheduler_stack_size);
#endif
    (*E.body)();
    fiber *f = E.current;
    f->state = fiber_state::done;
    f->pending.clear();  // copies nobody waited for land in a block that is over
    E.live--;
    E.warps[f->index / 32].live--;
    release_barrier_if_complete();  // an exited thread no longer holds a barrier back
#if EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, E.scheduler_stack_bottom, E.scheduler_stack_size);
#endif
#if EMU_OWN_SWITCH
    emu_swap_stack(&f->sp, E.scheduler_sp);  // never resumed
#else
    swapcontext(&f->ctx, &E.scheduler);  // never resumed
#endif
}

// Makes f start at fiber_main on its next switch_to.
void start_fiber(fiber &f) {
#if EMU_OWN_SWITCH
    // What emu_swap_stack pops, from the saved stack pointer up: the control words (MXCSR's
    // and x87's defaults), six registers, the return address; fiber_main then starts with
    // the stack pointer 8 past a 16-byte boundary, as after a call.
    uint64_t *top = (uint64_t *)(f.stack + STACK_BYTES);
    uint64_t *sp = top - 9;
    sp[0] = 0x1F80u | (uint64_t)0x037Fu << 32;
    for (int i = 1; i <= 6; i++) sp[i] = 0;
    sp[7] = (uint64_t)(uintptr_t)&fiber_main;
    sp[8] = 0;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#endif
}

unsigned char *map_stack() {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) emu_fail("cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // an overflowing stack faults
    return (unsigned char *)m + page;
}

void report_deadlock() {
    char text[1024];
    int n = snprintf(text, sizeof text, "no thread can go on: %d of %d live threads at __syncthreads", E.at_barrier,
                     E.live);
    for (size_t w = 0; w < E.warps.size() && n < (int)sizeof text - 80; w++) {
        int waiting = 0;
        for (int l = 0; l < 32; l++) {
            const size_t i = w * 32 + l;
            waiting += i < E.fibers.size() && E.fibers[i].state == fiber_state::at_warp;
        }
        if (waiting)
            n += snprintf(text + n, sizeof text - n, "; warp %zu: %d lanes at %s", w, waiting, op_name(E.warps[w].op));
    }
    E.current = nullptr;
    emu_fail("%s", text);
}

// The dynamic arrays are all 0xFF between launches; a block starts with [0, smem_bytes) so.
void poison_shared() {
    for (const shared_array &a : E.shared) memset(a.base, 0xFF, E.smem_bytes);
}

void check_shared_tails() {
    for (size_t k = 0; k < E.shared.size(); k++)
        for (size_t i = E.smem_bytes; i < E.shared[k].capacity; i++)
            if (E.shared[k].base[i] != 0xFF)
                emu_fail("kernel %s wrote byte %zu of dynamic shared array %zu, past its %zu dynamic bytes", E.kernel,
                         i, k, E.smem_bytes);
}

void run_block(size_t n_threads, bool first) {
    if (!first) poison_shared();
    E.live = (int)n_threads;
    E.at_barrier = 0;
    for (size_t w = 0; w < E.warps.size(); w++) {
        E.warps[w] = warp();
        const size_t first = w * 32;
        E.warps[w].live = (int)(n_threads - first < 32 ? n_threads - first : 32);
    }
    for (size_t i = 0; i < n_threads; i++) {
        fiber &f = E.fibers[i];
        f.index = (int)i;
        f.tid = emu_uint3{(unsigned)(i % E.block_dim.x), (unsigned)(i / E.block_dim.x % E.block_dim.y),
                          (unsigned)(i / E.block_dim.x / E.block_dim.y)};
        f.state = fiber_state::runnable;
        f.pending.clear();
        f.next_group = 0;
        start_fiber(f);
    }
    std::vector<size_t> order;
    while (E.live > 0) {
        order.clear();
        for (size_t i = 0; i < n_threads; i++)
            if (E.fibers[i].state == fiber_state::runnable) order.push_back(i);
        if (order.empty()) report_deadlock();
        if (E.options.schedule_seed)
            for (size_t i = order.size(); i > 1; i--) std::swap(order[i - 1], order[next_random() % i]);
        for (size_t i : order)
            if (E.fibers[i].state == fiber_state::runnable) switch_to(&E.fibers[i]);
    }
}

// ------------------------------------------------------------------ warp-wide instructions

// Every 16-bit pattern of the format (1 bf16, 2 fp16) widened: the mma's hot loop looks them up.
const float *widen_table(int format) {
    static std::vector<float> tables[2];
    std::vector<float> &t = tables[format == 1 ? 0 : 1];
    if (t.empty()) {
        t.resize(65536);
        for (uint32_t h = 0; h < 65536; h++)
            t[h] = format == 1 ? emu_bf16_widen((uint16_t)h) : emu_fp16_widen((uint16_t)h);
    }
    return t.data();
}

void compute_mma(warp &W) {
    const float *widened = widen_table(W.param);
    const auto widen = [widened](uint16_t h) { return widened[h]; };
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        const lane_in &in = W.in[l];
        for (int h = 0; h < 2; h++) {  // h: low / high 16 bits of a register
            A[g][2 * t + h] = widen((uint16_t)(in.a[0] >> (16 * h)));
            A[g + 8][2 * t + h] = widen((uint16_t)(in.a[1] >> (16 * h)));
            A[g][2 * t + 8 + h] = widen((uint16_t)(in.a[2] >> (16 * h)));
            A[g + 8][2 * t + 8 + h] = widen((uint16_t)(in.a[3] >> (16 * h)));
            B[2 * t + h][g] = widen((uint16_t)(in.b[0] >> (16 * h)));
            B[2 * t + 8 + h][g] = widen((uint16_t)(in.b[1] >> (16 * h)));
        }
        C[g][2 * t] = in.c[0];
        C[g][2 * t + 1] = in.c[1];
        C[g + 8][2 * t] = in.c[2];
        C[g + 8][2 * t + 1] = in.c[3];
    }
    // Products of 16-bit values are exact in double; one rounding of the sum.
    float D[16][8];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double s = C[m][n];
            for (int k = 0; k < 16; k++) s += (double)A[m][k] * B[k][n];
            D[m][n] = (float)s;
        }
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        float *d = W.out[l].d;
        d[0] = D[g][2 * t];
        d[1] = D[g][2 * t + 1];
        d[2] = D[g + 8][2 * t];
        d[3] = D[g + 8][2 * t + 1];
    }
}

void compute_ldmatrix(warp &W) {
    const bool trans = W.param != 0;
    for (int m = 0; m < 4; m++) {
        uint16_t M[8][8];
        for (int r = 0; r < 8; r++) memcpy(M[r], W.in[8 * m + r].p, 16);
        for (int l = 0; l < 32; l++) {
            const int row = l / 4, col = 2 * (l % 4);
            const uint16_t lo = trans ? M[col][row] : M[row][col];
            const uint16_t hi = trans ? M[col + 1][row] : M[row][col + 1];
            W.out[l].r[m] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    }
}

lane_out warp_instruction(warp_op op, int param, const lane_in &in) {
    fiber *f = running(op_name(op));
    const int lane = f->index % 32;
    warp &W = E.warps[f->index / 32];
    if (W.live != 32) emu_fail("%s in a warp with %d of 32 lanes live", op_name(op), W.live);
    const char *collective = op == warp_op::collective ? (const char *)in.p : nullptr;
    if (W.arrived == 0) {
        W.op = op;
        W.param = param;
        W.collective = collective;
    } else if (W.op != op || W.param != param || (collective && strcmp(collective, W.collective) != 0)) {
        emu_fail("lanes of warp %d reached different warp-wide instructions: %s (%d%s%s) and %s (%d%s%s)",
                 f->index / 32, op_name(W.op), W.param, W.collective ? ", " : "", W.collective ? W.collective : "",
                 op_name(op), param, collective ? ", " : "", collective ? collective : "");
    }
    W.in[lane] = in;
    W.arrived++;
    f->state = fiber_state::at_warp;
    if (W.arrived == 32) {
        switch (op) {
        case warp_op::shfl:
            for (int l = 0; l < 32; l++) {
                const int kind = param / 64, arg = param % 64;
                const int from = kind == EMU_SHFL_XOR ? l ^ arg
                                 : kind == EMU_SHFL_DOWN ? (l + arg < 32 ? l + arg : l)
                                                         : W.in[l].src;
                W.out[l].bits = W.in[from].bits;
            }
            break;
        case warp_op::collective:
            for (int l = 0; l < 32; l++) W.in[l].act(W.in[l].ctx, l);
            break;
        case warp_op::any: {
            bool any = false;
            for (int l = 0; l < 32; l++) any = any || W.in[l].pred;
            for (int l = 0; l < 32; l++) W.out[l].pred = any;
            break;
        }
        case warp_op::mma: compute_mma(W); break;
        case warp_op::ldmatrix: compute_ldmatrix(W); break;
        default: break;
        }
        W.arrived = 0;
        for (int l = 0; l < 32; l++) E.fibers[(f->index / 32) * 32 + l].state = fiber_state::runnable;
    }
    yield();
    return W.out[lane];
}

void check_full_mask(unsigned mask, const char *what) {
    if (mask != 0xffffffffu) emu_fail("%s with mask %#x (the kernels use the full warp)", what, mask);
}

// The dynamic shared array p points into, or null.
const shared_array *shared_of(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    for (const shared_array &s : E.shared)
        if (a >= (uintptr_t)s.base && a < (uintptr_t)s.base + s.capacity) return &s;
    return nullptr;
}

// Whether [p, p + bytes) lies in shared memory the launch asked for.
void check_shared(const void *p, size_t bytes, size_t align, const char *what) {
    const shared_array *s = shared_of(p);
    if (!s) emu_fail("%s: address %p in no dynamic shared array", what, p);
    const uintptr_t a = (uintptr_t)p, base = (uintptr_t)s->base;
    if (a + bytes > base + E.smem_bytes)
        emu_fail("%s: shared address %+td (+%zu bytes) outside the launch's %zu dynamic bytes", what,
                 (ptrdiff_t)(a - base), bytes, E.smem_bytes);
    if (a % align) emu_fail("%s: shared address %zu not %zu-byte aligned", what, (size_t)(a - base), align);
}

// The device allocation holding address a (its start in *start), or null.
const allocation *allocation_of(uintptr_t a, uintptr_t *start) {
    auto it = E.allocations.upper_bound(a);
    if (it == E.allocations.begin()) return nullptr;
    --it;
    if (a >= it->first + (it->second.size ? it->second.size : 1)) return nullptr;
    *start = it->first;
    return &it->second;
}

// Whether [p, p + bytes) lies inside one device allocation.
void check_global(const void *p, size_t bytes, size_t align, const char *what) {
    const uintptr_t a = (uintptr_t)p;
    uintptr_t start = 0;
    const allocation *in = allocation_of(a, &start);
    if (!in || a + bytes > start + in->size)
        emu_fail("%s: global address %p (+%zu bytes) in no device allocation", what, p, bytes);
    if (a % align) emu_fail("%s: global address %p not %zu-byte aligned", what, p, align);
}

// Host memory: no byte of [p, p + bytes) in a device allocation.
void check_host(const void *p, size_t bytes, const char *what) {
    const uintptr_t a = (uintptr_t)p;
    auto it = E.allocations.lower_bound(a);
    uintptr_t start = 0;
    if (allocation_of(a, &start) || (it != E.allocations.end() && it->first < a + bytes))
        emu_fail("%s: host address %p (+%zu bytes) is device memory", what, p, bytes);
}

void do_copy(const pending_copy &c) {
    if (c.valid)
        memcpy(c.dst, c.src, (size_t)c.bytes);
    else
        memset(c.dst, 0, (size_t)c.bytes);
}

unsigned char *guarded_map(size_t bytes, size_t *map_size, unsigned char **start) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 15) / 16 * 16, span = (rounded + page - 1) / page * page;
    *map_size = span + 2 * page;
    void *m = mmap(nullptr, *map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    unsigned char *base = (unsigned char *)m;
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + span, page, PROT_NONE);
    *start = E.options.guard_after ? base + page + span - rounded : base + page;
    return base;
}

// Null when the emulated device's memory is used up (EMU_DEVICE_BYTES).
void *allocate(size_t bytes, origin from) {
    if (E.current) emu_fail("device allocation inside a kernel");
    if (bytes > EMU_DEVICE_BYTES - E.live_bytes) return nullptr;
    size_t map_size = 0;
    unsigned char *start = nullptr, *map = guarded_map(bytes, &map_size, &start);
    if (!map) return nullptr;
    E.allocations[(uintptr_t)start] = allocation{bytes, map, map_size, from};
    E.live_bytes += bytes;
    if (from == origin::async) {
        E.scratch_live += bytes;
        if (E.scratch_live > E.scratch_peak) E.scratch_peak = E.scratch_live;
    } else if (from == origin::malloc) {
        E.malloc_live += bytes;
        if (E.malloc_live > E.malloc_peak) E.malloc_peak = E.malloc_live;
    }
    return start;
}

void release(void *p, origin from) {
    auto it = E.allocations.find((uintptr_t)p);
    if (it == E.allocations.end() || it->second.from != from)
        emu_fail("%s of %p, which is no %s allocation", from == origin::async ? "cudaFreeAsync" : "free", p,
                 origin_name(from));
    if (from == origin::async) E.scratch_live -= it->second.size;
    if (from == origin::malloc) E.malloc_live -= it->second.size;
    E.live_bytes -= it->second.size;
    munmap(it->second.map, it->second.map_size);
    E.allocations.erase(it);
}

}  // namespace

// ------------------------------------------------------------------ public

const emu_uint3 &emu_thread_idx() { return running("threadIdx")->tid; }
const emu_uint3 &emu_block_idx() { return running("blockIdx"), E.block_idx; }
const emu_uint3 &emu_block_dim() { return running("blockDim"), E.block_dim; }
const emu_uint3 &emu_grid_dim() { return running("gridDim"), E.grid_dim; }

void emu_fail(const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "cuda_emu: ");
    if (E.kernel)
        fprintf(stderr, "kernel %s, block (%u, %u, %u)", E.kernel, E.block_idx.x, E.block_idx.y, E.block_idx.z);
    if (E.current)
        fprintf(stderr, ", thread %d (warp %d lane %d)", E.current->index, E.current->index / 32,
                E.current->index % 32);
    if (E.kernel) fprintf(stderr, ": ");
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "\n");
    fflush(stderr);
    _exit(1);  // from inside a fiber: no unwinding through the scheduler
}

void emu_set_options(const emu_options &options) { apply_options(E, options); }

void emu_add_shared_memory(unsigned char *base, size_t bytes) {
    memset(base, 0xFF, bytes);
    E.shared.push_back(shared_array{base, bytes});
}

void emu_run_grid(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem_bytes,
                  const std::function<void()> &body) {
    if (E.kernel) emu_fail("launch of %s from inside kernel %s", name, E.kernel);
    for (const shared_array &a : E.shared)
        if (smem_bytes > a.capacity)
            emu_fail("launch of %s asks for %zu bytes of shared memory (emulated: %zu)", name, smem_bytes, a.capacity);
    if (smem_bytes > EMU_SMEM_DEFAULT) {
        auto it = E.smem_opt_in.find(kernel);
        const int allowed = it == E.smem_opt_in.end() ? EMU_SMEM_DEFAULT : it->second;
        if (smem_bytes > (size_t)allowed)
            emu_fail("launch of %s asks for %zu bytes of dynamic shared memory; the kernel's limit is %d "
                     "(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) raises it)",
                     name, smem_bytes, allowed);
    }
    const size_t n_threads = (size_t)block.x * block.y * block.z;
    if (n_threads == 0 || n_threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535)
        emu_fail("launch of %s: invalid grid (%u, %u, %u) or block (%u, %u, %u)", name, grid.x, grid.y, grid.z,
                 block.x, block.y, block.z);
    while (E.fibers.size() < n_threads) {
        E.fibers.emplace_back();
        E.fibers.back().stack = map_stack();
    }
    E.warps.assign((n_threads + 31) / 32, warp());
    E.kernel = name;
    E.smem_bytes = smem_bytes;
    E.block_dim = emu_uint3{block.x, block.y, block.z};
    E.grid_dim = emu_uint3{grid.x, grid.y, grid.z};
    E.body = &body;
    bool first = true;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                E.block_idx = emu_uint3{x, y, z};
                run_block(n_threads, first);
                first = false;
            }
    check_shared_tails();
    poison_shared();  // all 0xFF again for the next launch
    E.kernel = nullptr;
    E.body = nullptr;
}

void emu_syncthreads() {
    fiber *f = running("__syncthreads");
    f->state = fiber_state::at_barrier;
    E.at_barrier++;
    release_barrier_if_complete();
    yield();
}

uint64_t emu_shfl(emu_shfl_kind kind, unsigned mask, uint64_t bits, int arg, int width) {
    check_full_mask(mask, "a shuffle");
    if (width != 32) emu_fail("a shuffle of width %d (the kernels use 32)", width);
    if (arg < 0 || arg > 31) emu_fail("a shuffle with lane argument %d", arg);
    lane_in in{};
    in.bits = bits;
    in.src = arg;
    // xor and down take one argument for the whole warp (a difference is reported); idx a lane each
    const int param = (int)kind * 64 + (kind == EMU_SHFL_IDX ? 0 : arg);
    return warp_instruction(warp_op::shfl, param, in).bits;
}

void emu_syncwarp(unsigned mask) {
    check_full_mask(mask, "__syncwarp");
    warp_instruction(warp_op::syncwarp, 0, lane_in{});
}

void emu_warp_collective(const char *op, void (*act)(void *, int), void *lane_context) {
    lane_in in{};
    in.p = op;
    in.act = act;
    in.ctx = lane_context;
    warp_instruction(warp_op::collective, 0, in);
}

void emu_check_memory(const void *p, size_t bytes, size_t align, const char *what) {
    if (shared_of(p))
        check_shared(p, bytes, align, what);
    else
        check_global(p, bytes, align, what);
}

void emu_check_aligned(const void *p, size_t align, const char *type) {
    if ((uintptr_t)p % align) emu_fail("%s access at %p, not %zu-byte aligned (a misaligned address on a GPU)", type, p, align);
}

void emu_check_device(const void *p, size_t bytes, size_t align, const char *what) {
    check_global(p, bytes, align, what);
}

bool emu_any(unsigned mask, bool predicate) {
    check_full_mask(mask, "__any_sync");
    lane_in in{};
    in.pred = predicate;
    return warp_instruction(warp_op::any, 0, in).pred;
}

void emu_mma(int format, float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    lane_in in{};
    memcpy(in.a, a, sizeof in.a);
    in.b[0] = b0;
    in.b[1] = b1;
    memcpy(in.c, c, sizeof in.c);
    const lane_out out = warp_instruction(warp_op::mma, format, in);
    memcpy(c, out.d, sizeof out.d);
}

void emu_ldmatrix_x4(bool trans, uint32_t r[4], const void *row) {
    running("ldmatrix");
    check_shared(row, 16, 16, "ldmatrix row");
    lane_in in{};
    in.p = row;
    const lane_out out = warp_instruction(warp_op::ldmatrix, trans ? 1 : 0, in);
    memcpy(r, out.r, sizeof out.r);
}

void emu_cp_async(void *smem, const void *gmem, int bytes, bool valid) {
    fiber *f = running("cp.async");
    check_shared(smem, (size_t)bytes, (size_t)bytes, "cp.async destination");
    if (valid) check_global(gmem, (size_t)bytes, (size_t)bytes, "cp.async source");
    const pending_copy c{smem, gmem, bytes, valid, f->next_group};
    if (E.options.eager_copies)
        do_copy(c);
    else
        f->pending.push_back(c);
}

void emu_cp_commit() { running("cp.async.commit_group")->next_group++; }

void emu_cp_wait(int n) {
    fiber *f = running("cp.async.wait_group");
    const long complete_below = f->next_group - n;  // groups older than the n most recent committed
    size_t kept = 0;
    for (size_t i = 0; i < f->pending.size(); i++) {
        if (f->pending[i].group < complete_below)
            do_copy(f->pending[i]);
        else
            f->pending[kept++] = f->pending[i];
    }
    f->pending.resize(kept);
}

void *emu_device_alloc(size_t bytes) {
    void *p = allocate(bytes, origin::test);
    if (!p) emu_fail("cannot allocate %zu bytes", bytes);
    return p;
}

void emu_device_free(void *p) {
    if (p) release(p, origin::test);
}

size_t emu_scratch_peak() { return E.scratch_peak; }
void emu_scratch_peak_reset() { E.scratch_peak = E.scratch_live; }

// ------------------------------------------------------------------ runtime API

const char *cudaGetErrorString(cudaError_t status) {
    switch (status) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    }
    return "unknown error";
}

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaDeviceGetPCIBusId(char *id, int len, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    snprintf(id, (size_t)len, "0000:00:00.0");
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = EMU_SMEM_OPTIN; return cudaSuccess;
    case cudaDevAttrMemoryPoolsSupported: *value = 1; return cudaSuccess;
    }
    return cudaErrorInvalidValue;
}

cudaError_t cudaDeviceSynchronize() {
    if (E.current) emu_fail("cudaDeviceSynchronize inside a kernel");
    E.waits++;
    return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, const void *kernel) {
    if (!kernel) return cudaErrorInvalidValue;
    auto it = E.smem_opt_in.find(kernel);
    attr->sharedSizeBytes = 0;
    attr->maxDynamicSharedSizeBytes = it == E.smem_opt_in.end() ? EMU_SMEM_DEFAULT : it->second;
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *kernel, cudaFuncAttribute attr, int value) {
    if (!kernel || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > EMU_SMEM_OPTIN)
        return cudaErrorInvalidValue;
    E.smem_opt_in[kernel] = value;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    E.mallocs++;
    *p = allocate(bytes, origin::malloc);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void *p) {
    E.frees += p != nullptr;
    if (p) release(p, origin::malloc);
    return cudaSuccess;
}

cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t stream) {
    if (stream) emu_fail("cudaMallocAsync on a stream other than the default one");
    *p = allocate(bytes, origin::async);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeAsync(void *p, cudaStream_t stream) {
    if (stream) emu_fail("cudaFreeAsync on a stream other than the default one");
    if (p) release(p, origin::async);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (E.current) emu_fail("cudaMemset inside a kernel");
    if (!bytes) return cudaSuccess;
    check_global(p, bytes, 1, "cudaMemset");
    memset(p, value, bytes);
    return cudaSuccess;
}

// The sides of a copy as its kind says (a device pointer where the kind says host, or the
// other way round, is an error the GPU would report or act on wrongly).
static void check_copy_sides(void *dst, const void *src, size_t dst_span, size_t src_span, cudaMemcpyKind kind,
                      const char *what) {
    if (E.current) emu_fail("%s inside a kernel", what);
    const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice) emu_fail("%s of kind %d", what, (int)kind);
    if (dst_device)
        check_global(dst, dst_span, 1, what);
    else
        check_host(dst, dst_span, what);
    if (src_device)
        check_global(src, src_span, 1, what);
    else
        check_host(src, src_span, what);
    const uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d < s + src_span && s < d + dst_span)
        emu_fail("%s between overlapping ranges %p and %p (+%zu bytes): undefined in CUDA", what, dst, src, dst_span);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (!bytes) return cudaSuccess;
    check_copy_sides(dst, src, bytes, bytes, kind, "cudaMemcpy");
    E.waits += kind == cudaMemcpyDeviceToHost;  // returns once the device is done
    memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t stream) {
    if (stream) emu_fail("cudaMemcpy2DAsync on a stream other than the default one");
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    if (!width || !height) return cudaSuccess;
    check_copy_sides(dst, src, dpitch * (height - 1) + width, spitch * (height - 1) + width, kind,
                     "cudaMemcpy2DAsync");
    for (size_t r = 0; r < height; r++) memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *total_bytes = EMU_DEVICE_BYTES;
    *free_bytes = EMU_DEVICE_BYTES - E.live_bytes;
    return cudaSuccess;
}

// The default pool: stream-ordered allocations here are mapped and unmapped each time, so
// it holds nothing between them.
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    static int the_pool;
    *pool = (cudaMemPool_t)&the_pool;
    return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value) {
    return pool && attr == cudaMemPoolAttrReleaseThreshold && value ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value) {
    if (!pool || !value) return cudaErrorInvalidValue;
    if (attr == cudaMemPoolAttrReservedMemCurrent || attr == cudaMemPoolAttrUsedMemCurrent)
        *(uint64_t *)value = (uint64_t)E.scratch_live;
    else if (attr == cudaMemPoolAttrUsedMemHigh)
        *(uint64_t *)value = (uint64_t)E.scratch_peak;
    else
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

// ------------------------------------------------------------------ 16-bit formats

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}
static float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t emu_bf16_bits(float x) {
    const uint32_t u = float_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

uint16_t emu_fp16_bits(float x) {
    const uint32_t u = float_bits(x), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // >= 65520: rounds to inf
    if (a < 0x38800000u) {                                    // below 2^-14: a multiple of 2^-24
        const float scaled = bits_float(a) * 16777216.0f;    // exact (a power of two)
        return (uint16_t)(sign | (uint32_t)nearbyintf(scaled));
    }
    uint32_t h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3FFu);
    const uint32_t rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float emu_bf16_widen(uint16_t h) { return bits_float((uint32_t)h << 16); }

float emu_fp16_widen(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {
        const float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (e == 31) return bits_float(sign | 0x7F800000u | m << 13);
    return bits_float(sign | (e + 112u) << 23 | m << 13);
}
