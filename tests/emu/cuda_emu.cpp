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

#include "kernels/kernels.h"

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
enum class warp_op { none, shfl, any, mma, ldmatrix };

const char *op_name(warp_op op) {
    switch (op) {
    case warp_op::shfl: return "__shfl_xor_sync";
    case warp_op::any: return "__any_sync";
    case warp_op::mma: return "mma.sync";
    case warp_op::ldmatrix: return "ldmatrix";
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
    float f;
    bool pred;
};
struct lane_out {
    uint32_t r[4];
    float d[4];
    float f;
    bool pred;
};
struct warp {
    warp_op op = warp_op::none;
    int param = 0, arrived = 0, live = 0;
    lane_in in[32];
    lane_out out[32];
};

struct allocation {
    size_t size;
    unsigned char *map;
    size_t map_size;
    bool scratch;
};

struct emulator {
    emu_options options;
    unsigned char *smem = nullptr;
    size_t smem_capacity = 0, smem_bytes = 0;
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
    size_t scratch_live = 0, scratch_peak = 0;
};

// Constructed on first use: sources that include the kernels register their shared memory
// from static initialisers, which may run before this file's.
emulator &instance() {
    static emulator e;
    return e;
}
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

void run_block(size_t n_threads) {
    memset(E.smem, 0xFF, E.smem_capacity);
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
    for (size_t i = E.smem_bytes; i < E.smem_capacity; i++)
        if (E.smem[i] != 0xFF)
            emu_fail("kernel %s wrote shared memory byte %zu, past its %zu dynamic bytes", E.kernel, i, E.smem_bytes);
}

// ------------------------------------------------------------------ warp-wide instructions

float widen(int format, uint16_t h) { return format == 1 ? emu_bf16_widen(h) : emu_fp16_widen(h); }

void compute_mma(warp &W) {
    const int format = W.param;
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        const lane_in &in = W.in[l];
        for (int h = 0; h < 2; h++) {  // h: low / high 16 bits of a register
            A[g][2 * t + h] = widen(format, (uint16_t)(in.a[0] >> (16 * h)));
            A[g + 8][2 * t + h] = widen(format, (uint16_t)(in.a[1] >> (16 * h)));
            A[g][2 * t + 8 + h] = widen(format, (uint16_t)(in.a[2] >> (16 * h)));
            A[g + 8][2 * t + 8 + h] = widen(format, (uint16_t)(in.a[3] >> (16 * h)));
            B[2 * t + h][g] = widen(format, (uint16_t)(in.b[0] >> (16 * h)));
            B[2 * t + 8 + h][g] = widen(format, (uint16_t)(in.b[1] >> (16 * h)));
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
    if (W.arrived == 0) {
        W.op = op;
        W.param = param;
    } else if (W.op != op || W.param != param) {
        emu_fail("lanes of warp %d reached different warp-wide instructions: %s (%d) and %s (%d)", f->index / 32,
                 op_name(W.op), W.param, op_name(op), param);
    }
    W.in[lane] = in;
    W.arrived++;
    f->state = fiber_state::at_warp;
    if (W.arrived == 32) {
        switch (op) {
        case warp_op::shfl:
            for (int l = 0; l < 32; l++) W.out[l].f = W.in[l ^ param].f;
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

// Whether [p, p + bytes) lies in shared memory the launch asked for.
void check_shared(const void *p, size_t bytes, size_t align, const char *what) {
    const uintptr_t a = (uintptr_t)p, base = (uintptr_t)E.smem;
    if (a < base || a + bytes > base + E.smem_bytes)
        emu_fail("%s: shared address %+td outside the launch's %zu dynamic bytes", what, (ptrdiff_t)(a - base),
                 E.smem_bytes);
    if (a % align) emu_fail("%s: shared address %zu not %zu-byte aligned", what, (size_t)(a - base), align);
}

// Whether [p, p + bytes) lies inside one device allocation.
void check_global(const void *p, size_t bytes, size_t align, const char *what) {
    const uintptr_t a = (uintptr_t)p;
    auto it = E.allocations.upper_bound(a);
    const bool inside = it != E.allocations.begin() && (--it, a + bytes <= it->first + it->second.size);
    if (!inside) emu_fail("%s: global address %p (+%zu bytes) in no device allocation", what, p, bytes);
    if (a % align) emu_fail("%s: global address %p not %zu-byte aligned", what, p, align);
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

void *allocate(size_t bytes, bool scratch) {
    size_t map_size = 0;
    unsigned char *start = nullptr, *map = guarded_map(bytes, &map_size, &start);
    if (!map) return nullptr;
    E.allocations[(uintptr_t)start] = allocation{bytes, map, map_size, scratch};
    if (scratch) {
        E.scratch_live += bytes;
        if (E.scratch_live > E.scratch_peak) E.scratch_peak = E.scratch_live;
    }
    return start;
}

void release(void *p, bool scratch) {
    auto it = E.allocations.find((uintptr_t)p);
    if (it == E.allocations.end() || it->second.scratch != scratch)
        emu_fail("free of %p, which is no %s allocation", p, scratch ? "cudaMallocAsync" : "emu_device_alloc");
    if (scratch) E.scratch_live -= it->second.size;
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

void emu_set_options(const emu_options &options) {
    E.options = options;
    E.rng = 0x9E3779B97F4A7C15ull ^ options.schedule_seed;
}

void emu_set_shared_memory(unsigned char *base, size_t bytes) {
    E.smem = base;
    E.smem_capacity = bytes;
}

void emu_run_grid(const char *name, dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()> &body) {
    if (!E.smem) emu_fail("no shared memory registered (emu_set_shared_memory)");
    if (smem_bytes > E.smem_capacity)
        emu_fail("launch of %s asks for %zu bytes of shared memory (emulated: %zu)", name, smem_bytes,
                 E.smem_capacity);
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
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                E.block_idx = emu_uint3{x, y, z};
                run_block(n_threads);
            }
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

float emu_shfl_xor(unsigned mask, float value, int lane_mask) {
    check_full_mask(mask, "__shfl_xor_sync");
    if (lane_mask < 0 || lane_mask > 31) emu_fail("__shfl_xor_sync with lane mask %d", lane_mask);
    lane_in in{};
    in.f = value;
    return warp_instruction(warp_op::shfl, lane_mask, in).f;
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
    void *p = allocate(bytes, false);
    if (!p) emu_fail("cannot allocate %zu bytes", bytes);
    return p;
}

void emu_device_free(void *p) {
    if (p) release(p, false);
}

size_t emu_scratch_peak() { return E.scratch_peak; }
void emu_scratch_peak_reset() { E.scratch_peak = E.scratch_live; }

const char *cudaGetErrorString(cudaError_t status) {
    return status == cudaSuccess ? "no error" : "out of memory";
}

cudaError_t cudaMallocAsync(void **p, size_t bytes, int stream) {
    (void)stream;
    *p = allocate(bytes, true);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeAsync(void *p, int stream) {
    (void)stream;
    if (p) release(p, true);
    return cudaSuccess;
}

void ctune_cuda_record(const char *file, int line, const char *what, const char *message) {
    emu_fail("%s:%d: %s: %s", file, line, what, message);
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

void cuda_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt) {
    for (size_t i = 0; i < n; i++) out[i] = fmt == KERNELS_BF16 ? emu_bf16_bits(x[i]) : emu_fp16_bits(x[i]);
}
