// Host emulation stand-in for <mma.h>: the WMMA API's 16x16x16 fragments (tests/emu/cuda_emu.h
// says how kernels run here). A fragment's layout across the lanes is opaque in CUDA, so here
// every lane holds the whole tile; each operation is warp-wide (all 32 lanes reach it, then it
// runs for every lane at once), checks what the CUDA documentation requires of its operands
// (a 256-bit aligned pointer, a stride of a multiple of 16 bytes, the tile inside a device
// buffer or the launch's shared memory), and mma_sync sums each element's 16 exact products
// and the accumulator in double, rounded once to fp32.
#ifndef CTUNE_EMU_MMA_H
#define CTUNE_EMU_MMA_H

#include "cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator models the 16x16x16 shape");
    float v[16][16];  // element (row, column) of the tile, widened
};

namespace detail {

// What one lane does once the whole warp has arrived.
template <typename Frag, typename T>
struct load_args {
    Frag *frag;
    const T *ptr;
    unsigned ldm;
    bool col;  // element (r, c) at ptr[c * ldm + r]
};
template <typename Frag, typename T>
void load_act(void *p, int) {
    const load_args<Frag, T> &a = *(const load_args<Frag, T> *)p;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            a.frag->v[r][c] = emu_widen(a.col ? a.ptr[(size_t)c * a.ldm + r] : a.ptr[(size_t)r * a.ldm + c]);
}

template <typename T>
void check_tile(const T *ptr, unsigned ldm, const char *what) {
    if (((size_t)ldm * sizeof(T)) % 16 != 0)
        emu_fail("%s: stride %u elements is not a multiple of 16 bytes", what, ldm);
    emu_check_memory(ptr, ((size_t)15 * ldm + 16) * sizeof(T), 32, what);
}

template <typename Frag, typename T>
void load(Frag &frag, const T *ptr, unsigned ldm, bool col, const char *what) {
    check_tile(ptr, ldm, what);
    load_args<Frag, T> args{&frag, ptr, ldm, col};
    emu_warp_collective(what, load_act<Frag, T>, &args);
}

struct store_args {
    float *ptr;
    const float (*v)[16];
    unsigned ldm;
    bool col;
};
inline void store_act(void *p, int) {
    const store_args &a = *(const store_args *)p;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) (a.col ? a.ptr[(size_t)c * a.ldm + r] : a.ptr[(size_t)r * a.ldm + c]) = a.v[r][c];
}

struct mma_args {
    float (*d)[16];
    const float (*a)[16], (*b)[16], (*c)[16];
};
// Every lane holds the same tiles (they were loaded together), so lanes after the first
// take its result when their operands are the same bits (d may be c: operands copied first).
inline void mma_act(void *p, int lane) {
    const mma_args &m = *(const mma_args *)p;
    static thread_local struct {
        float a[16][16], b[16][16], c[16][16], d[16][16];
    } last;
    if (lane == 0 || memcmp(last.a, m.a, sizeof last.a) || memcmp(last.b, m.b, sizeof last.b) ||
        memcmp(last.c, m.c, sizeof last.c)) {
        memcpy(last.a, m.a, sizeof last.a);
        memcpy(last.b, m.b, sizeof last.b);
        memcpy(last.c, m.c, sizeof last.c);
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                double s = last.c[i][j];
                for (int k = 0; k < 16; k++) s += (double)last.a[i][k] * last.b[k][j];
                last.d[i][j] = (float)s;
            }
    }
    memcpy(m.d, last.d, sizeof last.d);
}

}  // namespace detail

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &frag, float value) {
    for (auto &row : frag.v)
        for (float &x : row) x = value;
}

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &frag, const T *ptr, unsigned ldm) {
    static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load names its layout");
    detail::load(frag, ptr, ldm, std::is_same<Layout, col_major>::value,
                 std::is_same<Use, matrix_a>::value ? "wmma::load_matrix_sync (matrix_a)"
                                                    : "wmma::load_matrix_sync (matrix_b)");
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &frag, const float *ptr, unsigned ldm,
                             layout_t layout) {
    detail::load(frag, ptr, ldm, layout == mem_col_major, "wmma::load_matrix_sync (accumulator)");
}

inline void store_matrix_sync(float *ptr, const fragment<accumulator, 16, 16, 16, float> &frag, unsigned ldm,
                              layout_t layout) {
    detail::check_tile(ptr, ldm, "wmma::store_matrix_sync");
    detail::store_args args{ptr, frag.v, ldm, layout == mem_col_major};
    emu_warp_collective("wmma::store_matrix_sync", detail::store_act, &args);
}

template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
    detail::mma_args args{d.v, a.v, b.v, c.v};
    emu_warp_collective("wmma::mma_sync", detail::mma_act, &args);
}

}  // namespace wmma
}  // namespace nvcuda

#endif
