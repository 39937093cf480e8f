/* The CUDA backend against the CPU reference backend (label gpu; exit 77 = skipped where
 * no GPU is usable). For every op of kernels/kernels.h: fresh random inputs (fixed seeds),
 * several shapes including odd ones, the CPU op on host copies and the CUDA op on device
 * copies, the outputs of both POISONED with NaN first (an element the CUDA op fails to
 * write stays NaN and fails the comparison), then ||cuda - cpu|| / ||cpu|| < 1e-5
 * (dropout: identical bits; AdamW: 1e-6; pure copies: exact). After every op the backend's
 * sticky error state (kernels/cuda/cuda_status.h) must be clean. The 16-bit ops (to_half,
 * from_half, gemm_half) are tested in test_kernels_cuda_half.c, the fused producers of 16-bit
 * operands (rmsnorm_fwd_half, swiglu_*_half, cross_entropy_half) in test_kernels_cuda_fused.c. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/kernel_compare.h"
/* CTUNE_CUDA_EMU: built against the host emulator (tests/emu), whose memory pool is not the
 * driver's: the pool check below is for real GPUs. */
#if defined(CTUNE_HAVE_CUDA) && !defined(CTUNE_CUDA_EMU)
#include <cuda_runtime.h>
#endif

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */

/* ------------------------------------------------------------------ memory */
static void test_memory(void) {
    seed(1);
    const size_t n = 1000;
    float *d = G->alloc(n * sizeof(float)), *back = host_nan(n);
    CHECK(d != NULL);
    G->download(back, d, n * sizeof(float));
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += back[i] != 0.0f;
    CHECK_MSG(nonzero == 0, "alloc: %zu of %zu elements not zero", nonzero, n);
    void *empty = G->alloc(0);
    CHECK(empty != NULL);
    G->release(empty);
    /* memory_info: the device's free memory drops by (at least) what is allocated */
    size_t free0 = 0, total = 0, free1 = 0;
    CHECK(G->memory_info && G->memory_info(&free0, &total) == 0 && total > 0 && free0 <= total);
    void *big = G->alloc((size_t)256 << 20);
    CHECK(big != NULL && G->memory_info(&free1, &total) == 0);
    CHECK_MSG(free1 + ((size_t)256 << 20) <= free0, "memory_info: free %zu -> %zu after 256 MiB", free0, free1);
    G->release(big);
#if defined(CTUNE_HAVE_CUDA) && !defined(CTUNE_CUDA_EMU)
    /* Stream-ordered scratch stays reserved across a synchronisation (the pool keeps its
     * memory: allocated once, not mapped again every step), and memory_info counts what the
     * pool holds unused as free. An overlapping copy of 128 MiB goes through a pool
     * temporary; after the device sync the pool still holds it. */
    {
        const size_t bytes = (size_t)128 << 20;
        char *buf = G->alloc(bytes + 64);
        ct_error err;
        CHECK(buf != NULL && kernels_cuda_status(&err) == 0 && G->memory_info(&free0, &total) == 0);
        G->copy(buf + 64, buf, bytes);
        CHECK(kernels_cuda_status(&err) == 0 && G->memory_info(&free1, &total) == 0);
        int device = 0;
        cudaMemPool_t pool;
        uint64_t reserved = 0;
        CHECK(cudaGetDevice(&device) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess &&
              cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess);
        CHECK_MSG(reserved >= bytes, "the pool released its scratch at a sync: %llu bytes reserved",
                  (unsigned long long)reserved);
        /* free memory as before, within what others (the driver) may take meanwhile */
        CHECK_MSG(free1 + ((size_t)32 << 20) >= free0, "memory_info: free %zu -> %zu with the pool's scratch idle",
                  free0, free1);
        G->release(buf);
    }
#endif

    float *x = host_rand(n, -1, 1), *ref = host_copy(x, n);
    G->upload(d, x, n * sizeof(float));
    compare_exact(G, "upload/download", d, x, n * sizeof(float));
    /* Overlapping copies have memmove semantics, as on the CPU. */
    C->copy(ref + 10, ref, 500 * sizeof(float));
    G->copy(d + 10, d, 500 * sizeof(float));
    compare_exact(G, "copy overlapping forward", d, ref, n * sizeof(float));
    C->copy(ref, ref + 7, 600 * sizeof(float));
    G->copy(d, d + 7, 600 * sizeof(float));
    compare_exact(G, "copy overlapping backward", d, ref, n * sizeof(float));
    float *d2 = dev_nan(G, n);
    G->copy(d2, d, n * sizeof(float));
    compare_exact(G, "copy", d2, ref, n * sizeof(float));
    C->zero(ref + 3, 100 * sizeof(float));
    G->zero(d2 + 3, 100 * sizeof(float));
    compare_exact(G, "zero", d2, ref, n * sizeof(float));
    G->release(d);
    G->release(d2);
    free(x);
    free(ref);
    free(back);
}

/* ------------------------------------------------------------------ gemm */
static void gemm_case(bool ta, bool tb, int m, int n, int k, int pad, float alpha, float beta) {
    const int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    const size_t a_n = (size_t)(ta ? k : m) * lda, b_n = (size_t)(tb ? n : k) * ldb;
    const size_t c_n = (size_t)m * ldc;
    float *a = host_rand(a_n, -1, 1), *b = host_rand(b_n, -1, 1);
    /* beta == 0: C starts as NaN on both backends and must not be read. */
    float *c = beta == 0.0f ? host_nan(c_n) : host_rand(c_n, -1, 1);
    float *da = dev_from(G, a, a_n * sizeof(float)), *db = dev_from(G, b, b_n * sizeof(float));
    float *dc = dev_from(G, c, c_n * sizeof(float));
    C->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    G->gemm(ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc);
    /* Padding columns are never written: compare the m x n block only. */
    float *got = download_checked(G, "gemm", dc, c_n * sizeof(float));
    double diff = 0, norm = 0;
    int finite = 1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            size_t at = (size_t)i * ldc + j;
            finite &= isfinite(got[at]) != 0;
            diff += ((double)got[at] - c[at]) * ((double)got[at] - c[at]);
            norm += (double)c[at] * c[at];
        }
    double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    CHECK_MSG(finite && rel < 1e-5, "gemm ta %d tb %d m %d n %d k %d pad %d beta %g: rel %.3g%s",
              ta, tb, m, n, k, pad, beta, rel, finite ? "" : " (non-finite)");
    G->release(da);
    G->release(db);
    G->release(dc);
    free(a);
    free(b);
    free(c);
    free(got);
}

static void test_gemm(void) {
    seed(2);
    const int shapes[][3] = {{1, 1, 1}, {17, 33, 9}, {64, 48, 128}, {130, 7, 65}, {5, 300, 257}};
    for (int s = 0; s < 5; s++)
        for (int t = 0; t < 4; t++) {
            const int *sh = shapes[s];
            gemm_case(t & 1, t >> 1, sh[0], sh[1], sh[2], 0, 1.0f, 0.0f);
            gemm_case(t & 1, t >> 1, sh[0], sh[1], sh[2], 3, 0.7f, 0.5f);
        }
    gemm_case(false, true, 9, 11, 0, 2, 1.0f, 0.0f);  /* empty product, beta 0 */
    gemm_case(true, false, 9, 11, 0, 1, 1.0f, 0.25f); /* empty product, C scaled */
}

/* ------------------------------------------------------------------ element-wise */
static void test_elementwise(void) {
    seed(3);
    const size_t sizes[] = {1, 1000, 100003, 300007};
    for (int s = 0; s < 4; s++) {
        const size_t n = sizes[s], bytes = n * sizeof(float);
        float *a = host_rand(n, -2, 2), *b = host_rand(n, -2, 2), *out = host_nan(n);
        float *da = dev_from(G, a, bytes), *db = dev_from(G, b, bytes), *dout = dev_nan(G, n);
        C->add(out, a, b, n);
        G->add(dout, da, db, n);
        compare(G, "add", dout, out, n, 1e-7);
        float *ref = host_copy(a, n);
        C->add(ref, ref, b, n); /* aliased output */
        G->add(da, da, db, n);
        compare(G, "add aliased", da, ref, n, 1e-7);
        C->axpy(ref, -0.37f, b, n);
        G->axpy(da, -0.37f, db, n);
        compare(G, "axpy", da, ref, n, 1e-7);
        C->scale(ref, 1.9f, n);
        G->scale(da, 1.9f, n);
        compare(G, "scale", da, ref, n, 1e-7);

        float *sq = host_rand(n, -3, 3), *dsq = dev_from(G, sq, bytes);
        double want = C->sum_squares(sq, n), got = G->sum_squares(dsq, n);
        check_status("sum_squares");
        CHECK_MSG(fabs(got - want) <= 1e-12 * want, "sum_squares n %zu: %.17g vs %.17g", n, got,
                  want);
        /* Blocked (gradient norms): the bits of the GPU's own sum_squares on every block, short
         * last block included, and close to the CPU's; nothing written past the last block.
         * Block lengths off multiples of 32 and 256 (partial warps and chunks), near and at the
         * longest the one-pass kernel takes (512 chunks of 256), and one past it (fallback). */
        const size_t blocks[] = {1, 31, 255, 1000, 4096, 4113, 130000, 131071, 131072, 131073};
        for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
            const size_t block = blocks[bi], n_blocks = (n + block - 1) / block;
            if (KERNELS_EMULATED && n_blocks > 1024) continue; /* the same kernel as with fewer blocks */
            double *sums = malloc((n_blocks + 1) * sizeof(double)), *cpu = malloc((n_blocks + 1) * sizeof(double));
            sums[n_blocks] = cpu[n_blocks] = -7.0;
            G->sum_squares_blocks(dsq, n, block, sums);
            C->sum_squares_blocks(sq, n, block, cpu);
            check_status("sum_squares_blocks");
            int same = 0, close = 0;
            const size_t edge = KERNELS_EMULATED ? 2 : 32;
            for (size_t b = 0; b < n_blocks; b++) {
                size_t len = n - b * block < block ? n - b * block : block;
                same += sums[b] == G->sum_squares(dsq + b * block, len);
                close += fabs(sums[b] - cpu[b]) <= 1e-12 * cpu[b];
                if (n_blocks > 2 * edge && b == edge - 1) b = n_blocks - edge - 1; /* first and last blocks */
            }
            int checked = n_blocks > 2 * edge ? 2 * (int)edge : (int)n_blocks;
            CHECK_MSG(same == checked && close == checked && sums[n_blocks] == -7.0,
                      "sum_squares_blocks n %zu block %zu: %d/%d same bits, %d close", n, block, same, checked, close);
            free(sums);
            free(cpu);
        }
        G->release(da);
        G->release(db);
        G->release(dout);
        G->release(dsq);
        free(a);
        free(b);
        free(out);
        free(ref);
        free(sq);
    }
}

static void test_dropout(void) {
    seed(4);
    const struct { size_t n; float p; uint64_t seed, offset; } cases[] = {
        {1, 0.5f, 1, 0}, {100003, 0.1f, 1234, 77}, {4099, 0.5f, 0xDEADBEEFCAFEull, 0},
        {5000, 0.3f, 42, UINT64_MAX - 2000}, /* the counter wraps 2^64 */
        {300, 0.0f, 9, 5},                   {300, 1.0f, 9, 5}};
    for (int c = 0; c < 6; c++) {
        const size_t n = cases[c].n, bytes = n * sizeof(float);
        float *x = host_rand(n, -2, 2), *out = host_nan(n);
        float *dx = dev_from(G, x, bytes), *dout = dev_nan(G, n);
        C->dropout(out, x, cases[c].p, cases[c].seed, cases[c].offset, n);
        G->dropout(dout, dx, cases[c].p, cases[c].seed, cases[c].offset, n);
        char what[96];
        snprintf(what, sizeof what, "dropout n %zu p %g", n, cases[c].p);
        compare_exact(G, what, dout, out, bytes); /* same mask, same division: same bits */
        /* dropout_add and dropout_half: the CPU's bits too */
        float *y = host_rand(n, -3, 3), *dy = dev_from(G, y, bytes);
        C->dropout_add(y, x, cases[c].p, cases[c].seed, cases[c].offset, n);
        G->dropout_add(dy, dx, cases[c].p, cases[c].seed, cases[c].offset, n);
        snprintf(what, sizeof what, "dropout_add n %zu p %g", n, cases[c].p);
        compare_exact(G, what, dy, y, bytes);
        for (int f = KERNELS_BF16; f <= KERNELS_FP16; f++) {
            uint16_t *h = malloc(n * sizeof(uint16_t)), *dh = G->alloc(n * sizeof(uint16_t));
            C->dropout_half((kernels_half_format)f, h, x, cases[c].p, cases[c].seed, cases[c].offset, n);
            G->dropout_half((kernels_half_format)f, dh, dx, cases[c].p, cases[c].seed, cases[c].offset, n);
            snprintf(what, sizeof what, "dropout_half %s n %zu p %g", f == KERNELS_BF16 ? "bf16" : "fp16", n,
                     cases[c].p);
            compare_exact(G, what, dh, h, n * sizeof(uint16_t));
            free(h);
            G->release(dh);
        }
        G->release(dy);
        free(y);
        G->release(dx);
        G->release(dout);
        free(x);
        free(out);
    }
}

/* ------------------------------------------------------------------ embedding */
static void test_embedding(void) {
    seed(5);
    const int shapes[][3] = {{1, 1, 1}, {50, 17, 33}, {300, 1000, 64}}; /* tokens, vocab, hidden */
    for (int s = 0; s < 3; s++) {
        const int n_tokens = shapes[s][0], vocab = shapes[s][1], hidden = shapes[s][2];
        const size_t table_n = (size_t)vocab * hidden, out_n = (size_t)n_tokens * hidden;
        int32_t *ids = malloc(n_tokens * sizeof(int32_t));
        for (int t = 0; t < n_tokens; t++) ids[t] = (int32_t)(next_u64() % (uint64_t)vocab);
        if (n_tokens > 3) ids[3] = ids[1]; /* a repeated id accumulates twice */
        float *table = host_rand(table_n, -1, 1), *out = host_nan(out_n);
        int32_t *dids = dev_from(G, ids, n_tokens * sizeof(int32_t));
        float *dtable = dev_from(G, table, table_n * sizeof(float)), *dout = dev_nan(G, out_n);
        C->embedding_fwd(out, table, ids, n_tokens, hidden);
        G->embedding_fwd(dout, dtable, dids, n_tokens, hidden);
        compare_exact(G, "embedding_fwd", dout, out, out_n * sizeof(float));

        float *grad = host_rand(out_n, -1, 1), *dgrad = dev_from(G, grad, out_n * sizeof(float));
        float *before = host_copy(table, table_n);
        C->embedding_bwd(table, grad, ids, NULL, n_tokens, hidden); /* accumulates onto the table */
        G->embedding_bwd(dtable, dgrad, dids, NULL, n_tokens, hidden);
        compare(G, "embedding_bwd", dtable, table, table_n, 1e-6);
        /* With the tokens sorted by (id, t): the same bits as the column walk. */
        int32_t *order = malloc(n_tokens * sizeof(int32_t));
        for (int t = 0; t < n_tokens; t++) order[t] = t;
        for (int i = 1; i < n_tokens; i++) /* insertion sort by (id, t): stable */
            for (int j = i; j > 0 && ids[order[j - 1]] > ids[order[j]]; j--) {
                int32_t tmp = order[j];
                order[j] = order[j - 1];
                order[j - 1] = tmp;
            }
        float *unsorted = download_checked(G, "embedding_bwd", dtable, table_n * sizeof(float));
        int32_t *dorder = dev_from(G, order, n_tokens * sizeof(int32_t));
        G->upload(dtable, before, table_n * sizeof(float));
        G->embedding_bwd(dtable, dgrad, dids, dorder, n_tokens, hidden);
        compare_exact(G, "embedding_bwd sorted", dtable, unsorted, table_n * sizeof(float));
        G->release(dorder);
        free(order);
        free(unsorted);
        free(before);
        G->release(dids);
        G->release(dtable);
        G->release(dout);
        G->release(dgrad);
        free(ids);
        free(table);
        free(out);
        free(grad);
    }
}

/* ------------------------------------------------------------------ rmsnorm */
static void test_rmsnorm(void) {
    seed(6);
    /* the last: more than 65535 x 64 rows (a q/k norm's tokens x heads), past one grid
     * column of the weight gradient's row chunks */
    const int shapes[][2] = {{1, 1}, {5, 7}, {130, 64}, {70, 1000}, {3, 4097}, {4200000, 2}};
    for (int s = 0; s < 6; s++) {
        const int rows = shapes[s][0], dim = shapes[s][1];
        if (KERNELS_EMULATED && rows > 1000000) continue; /* a block a row: hours on the emulator */
        const size_t n = (size_t)rows * dim, bytes = n * sizeof(float);
        float *x = host_rand(n, -2, 2), *w = host_rand(dim, 0.5f, 1.5f);
        float *out = host_nan(n), *rstd = host_nan(rows);
        float *dx_ = dev_from(G, x, bytes), *dw = dev_from(G, w, dim * sizeof(float));
        float *dout = dev_nan(G, n), *drstd = dev_nan(G, rows);
        C->rmsnorm_fwd(out, rstd, x, w, rows, dim, 1e-5f);
        G->rmsnorm_fwd(dout, drstd, dx_, dw, rows, dim, 1e-5f);
        compare(G, "rmsnorm_fwd out", dout, out, n, 1e-6);
        compare(G, "rmsnorm_fwd rstd", drstd, rstd, rows, 1e-6);

        float *gy = host_rand(n, -1, 1), *gx = host_nan(n), *gw = host_rand(dim, -1, 1);
        float *dgy = dev_from(G, gy, bytes), *dgx = dev_nan(G, n);
        float *dgw = dev_from(G, gw, dim * sizeof(float));
        /* The backward reads the CPU's rstd on both sides, so only the backward is compared. */
        G->upload(drstd, rstd, rows * sizeof(float));
        C->rmsnorm_bwd(gx, gw, gy, x, w, rstd, rows, dim, false);
        G->rmsnorm_bwd(dgx, dgw, dgy, dx_, dw, drstd, rows, dim, false);
        compare(G, "rmsnorm_bwd dx", dgx, gx, n, 1e-5);
        compare(G, "rmsnorm_bwd dweight (accumulated)", dgw, gw, dim, 1e-5);
        float *gx2 = host_nan(n);
        G->upload(dgx, gx2, bytes);
        C->rmsnorm_bwd(gx2, NULL, gy, x, w, rstd, rows, dim, false);
        G->rmsnorm_bwd(dgx, NULL, dgy, dx_, dw, drstd, rows, dim, false); /* frozen weight */
        compare(G, "rmsnorm_bwd dx (dweight NULL)", dgx, gx2, n, 1e-5);
        /* add_to_dx: the GPU's own dx plus axpy, bit for bit */
        float *acc = host_rand(n, -2, 2), *dacc = dev_from(G, acc, bytes), *dsum = dev_from(G, acc, bytes);
        G->axpy(dsum, 1.0f, dgx, n);
        G->rmsnorm_bwd(dacc, NULL, dgy, dx_, dw, drstd, rows, dim, true);
        float *want_sum = download_checked(G, "rmsnorm_bwd write + axpy", dsum, bytes);
        compare_exact(G, "rmsnorm_bwd add_to_dx = write + axpy", dacc, want_sum, bytes);
        free(want_sum), free(acc);
        G->release(dacc), G->release(dsum);
        void *dev[] = {dx_, dw, dout, drstd, dgy, dgx, dgw};
        for (int i = 0; i < 7; i++) G->release(dev[i]);
        float *host[] = {x, w, out, rstd, gy, gx, gw, gx2};
        for (int i = 0; i < 8; i++) free(host[i]);
    }
}

/* ------------------------------------------------------------------ rope */
static void test_rope(void) {
    seed(7);
    const int shapes[][3] = {{1, 1, 2}, {5, 3, 8}, {67, 4, 64}, {33, 2, 128}, {20, 3, 40}};
    for (int s = 0; s < 5; s++) {
        const int tokens = shapes[s][0], heads = shapes[s][1], d = shapes[s][2];
        const size_t n = (size_t)tokens * heads * d, bytes = n * sizeof(float);
        int32_t *pos = malloc(tokens * sizeof(int32_t));
        for (int t = 0; t < tokens; t++) pos[t] = (int32_t)(next_u64() % 8192);
        float *inv_freq = malloc((d / 2) * sizeof(float));
        for (int j = 0; j < d / 2; j++) inv_freq[j] = powf(500000.0f, -2.0f * j / d);
        float *x = host_rand(n, -2, 2);
        float *dxv = dev_from(G, x, bytes), *dinv = dev_from(G, inv_freq, (d / 2) * sizeof(float));
        int32_t *dpos = dev_from(G, pos, tokens * sizeof(int32_t));
        C->rope_fwd(x, pos, inv_freq, tokens, heads, d);
        G->rope_fwd(dxv, dpos, dinv, tokens, heads, d);
        compare(G, "rope_fwd", dxv, x, n, 1e-5);
        float *g = host_rand(n, -1, 1);
        G->upload(dxv, g, bytes);
        C->rope_bwd(g, pos, inv_freq, tokens, heads, d);
        G->rope_bwd(dxv, dpos, dinv, tokens, heads, d);
        compare(G, "rope_bwd", dxv, g, n, 1e-5);
        G->release(dxv);
        G->release(dinv);
        G->release(dpos);
        free(pos);
        free(inv_freq);
        free(x);
        free(g);
    }
}

/* ------------------------------------------------------------------ swiglu */
static void test_swiglu(void) {
    seed(8);
    const size_t sizes[] = {1, 999, 65537};
    for (int s = 0; s < 3; s++) {
        const size_t n = sizes[s], bytes = n * sizeof(float);
        float *gate = host_rand(n, -6, 6), *up = host_rand(n, -2, 2), *gy = host_rand(n, -1, 1);
        float *out = host_nan(n), *dgate = host_nan(n), *dup = host_nan(n);
        float *d_gate = dev_from(G, gate, bytes), *d_up = dev_from(G, up, bytes);
        float *d_gy = dev_from(G, gy, bytes), *d_out = dev_nan(G, n), *d_dgate = dev_nan(G, n),
              *d_dup = dev_nan(G, n);
        C->swiglu_fwd(out, gate, up, n);
        G->swiglu_fwd(d_out, d_gate, d_up, n);
        compare(G, "swiglu_fwd", d_out, out, n, 1e-6);
        C->swiglu_bwd(dgate, dup, gy, gate, up, n);
        G->swiglu_bwd(d_dgate, d_dup, d_gy, d_gate, d_up, n);
        compare(G, "swiglu_bwd dgate", d_dgate, dgate, n, 1e-6);
        compare(G, "swiglu_bwd dup", d_dup, dup, n, 1e-6);
        void *dev[] = {d_gate, d_up, d_gy, d_out, d_dgate, d_dup};
        for (int i = 0; i < 6; i++) G->release(dev[i]);
        float *host[] = {gate, up, gy, out, dgate, dup};
        for (int i = 0; i < 6; i++) free(host[i]);
    }
}

/* ------------------------------------------------------------------ attention */
static void attention_case(const attn_case *tc) {
    const int batch = tc->batch, seq = tc->seq, nh = tc->n_heads, nkv = tc->n_kv, d = tc->d;
    attn_problem p = attn_problem_make(G, tc);
    const size_t q_n = p.q_n, kv_n = p.kv_n;
    char what[160];
    const int len = snprintf(what, sizeof what, "attention b %d seq %d heads %d/%d d %d docs %d: ",
                             batch, seq, nh, nkv, d, tc->doc_len);
    C->attention_fwd(p.out, p.lse, p.q, p.k, p.v, p.doc, batch, seq, nh, nkv, d, p.scale);
    G->attention_fwd(p.d_out, p.d_lse, p.d_q, p.d_k, p.d_v, p.d_doc, batch, seq, nh, nkv, d,
                     p.scale);
    snprintf(what + len, sizeof what - len, "out");
    compare(G, what, p.d_out, p.out, q_n, 1e-5);
    snprintf(what + len, sizeof what - len, "lse");
    compare(G, what, p.d_lse, p.lse, p.lse_n, 1e-5);

    attn_problem_upload_cpu_forward(G, &p);
    C->attention_bwd(p.gq, p.gk, p.gv, p.gy, p.q, p.k, p.v, p.out, p.lse, p.doc, batch, seq, nh,
                     nkv, d, p.scale);
    G->attention_bwd(p.d_gq, p.d_gk, p.d_gv, p.d_gy, p.d_q, p.d_k, p.d_v, p.d_out, p.d_lse,
                     p.d_doc, batch, seq, nh, nkv, d, p.scale);
    /* One token: softmax is constant, dq and dk are 0 up to rounding noise on both sides, so
     * they are compared with zero (absolutely, at 1e-5 of dv's size), not with each other. */
    double dv_norm = 0.0;
    for (size_t i = 0; i < kv_n; i++) dv_norm += (double)p.gv[i] * p.gv[i];
    if (seq == 1) {
        for (size_t i = 0; i < q_n; i++) p.gq[i] = 0.0f;
        for (size_t i = 0; i < kv_n; i++) p.gk[i] = 0.0f;
    }
    const double dqk_tol = seq == 1 ? 1e-5 * (sqrt(dv_norm) + 1.0) : 1e-5;
    snprintf(what + len, sizeof what - len, "dq");
    compare(G, what, p.d_gq, p.gq, q_n, dqk_tol);
    snprintf(what + len, sizeof what - len, "dk");
    compare(G, what, p.d_gk, p.gk, kv_n, dqk_tol);
    snprintf(what + len, sizeof what - len, "dv");
    compare(G, what, p.d_gv, p.gv, kv_n, 1e-5);

    /* No atomics: a second run gives the same bits. */
    snprintf(what + len, sizeof what - len, "dq download");
    float *first = download_checked(G, what, p.d_gq, q_n * sizeof(float)), *again = dev_nan(G, q_n);
    G->attention_bwd(again, p.d_gk, p.d_gv, p.d_gy, p.d_q, p.d_k, p.d_v, p.d_out, p.d_lse,
                     p.d_doc, batch, seq, nh, nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "dq repeats bitwise");
    compare_exact(G, what, again, first, q_n * sizeof(float));
    G->release(again);
    free(first);
    attn_problem_free(G, &p);
}

static void test_attention(void) {
    seed(9);
    const attn_case cases[] = {
        {1, 1, 1, 1, 64, 0},   /* a single token */
        {2, 37, 4, 4, 64, 0},  /* GQA ratio 1, ragged tile */
        {2, 70, 4, 2, 128, 9}, /* ratio 2, documents */
        {1, 100, 8, 2, 40, 0}, /* ratio 4, odd head_dim */
        {3, 33, 4, 1, 64, 5},  /* multi-query, short documents */
        {1, 130, 4, 1, 40, 30},
        {1, 96, 2, 1, 256, 0}, /* the largest supported head_dim */
        {2, 200, 4, 2, 128, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) attention_case(&cases[c]);
}

/* ------------------------------------------------------------------ cross-entropy */
static void test_cross_entropy(void) {
    seed(10);
    const int shapes[][2] = {{1, 1}, {7, 5003}, {33, 128}, {4, 150001}};
    for (int s = 0; s < 4; s++) {
        const int rows = shapes[s][0], vocab = shapes[s][1];
        const size_t n = (size_t)rows * vocab, bytes = n * sizeof(float);
        int32_t *targets = malloc(rows * sizeof(int32_t));
        for (int r = 0; r < rows; r++) targets[r] = (int32_t)(next_u64() % (uint64_t)vocab);
        if (rows > 2) targets[2] = -100; /* ignored row */
        int32_t *d_targets = dev_from(G, targets, rows * sizeof(int32_t));
        for (int with_grad = 0; with_grad < 2; with_grad++) {
            float grad_scale = with_grad ? 1.0f / 37.0f : 0.0f;
            float *logits = host_rand(n, -20, 20), *loss = host_nan(rows);
            float *d_logits = dev_from(G, logits, bytes), *d_loss = dev_nan(G, rows);
            C->cross_entropy(logits, loss, targets, rows, vocab, grad_scale);
            G->cross_entropy(d_logits, d_loss, d_targets, rows, vocab, grad_scale);
            compare(G, with_grad ? "cross_entropy loss (grad)" : "cross_entropy loss", d_loss, loss,
                    rows, 1e-5);
            if (with_grad)
                compare(G, "cross_entropy gradient", d_logits, logits, n, 1e-5);
            else /* grad_scale 0 leaves the logits untouched */
                compare_exact(G, "cross_entropy logits unchanged", d_logits, logits, bytes);
            G->release(d_logits);
            G->release(d_loss);
            free(logits);
            free(loss);
        }
        G->release(d_targets);
        free(targets);
    }
}

/* Rows that exercise pass 1's online max and sum: the first half of a row at -inf (a masked
 * vocabulary: every thread starts on -inf logits, so its running max is -inf when they
 * arrive), logits rising along the row (the running max grows at every element) and falling,
 * a single logit far above the rest at the end (its rescaling carries the whole sum), on the four-column
 * path (vocab % 4 == 0, aligned) and the one-column path (an odd vocabulary, and the same
 * even one one float off alignment). Loss and gradient against the CPU. */
static void test_cross_entropy_online(void) {
    seed(29);
    const int rows = 5;
    const int vocabs[] = {4096, 4099, 37};
    for (size_t vi = 0; vi < sizeof vocabs / sizeof vocabs[0]; vi++)
        for (int offset = 0; offset < 2; offset++) {
            const int vocab = vocabs[vi];
            const size_t n = (size_t)rows * vocab, bytes = n * sizeof(float);
            float *logits = host_rand(n, -6, 6), *loss = host_nan(rows);
            for (int i = 0; i < vocab; i++) {
                if (i < vocab / 2) logits[i] = -INFINITY;        /* row 0: masked first half */
                logits[vocab + i] = -10.0f + 20.0f * i / vocab;  /* row 1: rising */
                logits[2 * vocab + i] = 10.0f - 20.0f * i / vocab; /* row 2: falling */
            }
            /* row 3: one logit 200 above the rest, last: exp(z - m) overflows unless the running
             * max has reached it before its term is added (the group's max, not a part of it). */
            logits[4 * vocab - 1] = 200.0f;
            int32_t targets[5] = {vocab - 1, vocab / 3, 0, vocab - 1, vocab / 2};
            int32_t *d_targets = dev_from(G, targets, sizeof targets);
            for (int with_grad = 0; with_grad < 2; with_grad++) {
                const float grad_scale = with_grad ? 0.5f : 0.0f;
                float *ref = malloc(bytes);
                memcpy(ref, logits, bytes);
                C->cross_entropy(ref, loss, targets, rows, vocab, grad_scale);
                /* offset 1: the rows start one float after a 16-byte boundary. */
                float *d_buf = G->alloc(bytes + sizeof(float)), *d_loss = dev_nan(G, rows);
                float *d_logits = d_buf + offset;
                G->upload(d_logits, logits, bytes);
                G->cross_entropy(d_logits, d_loss, d_targets, rows, vocab, grad_scale);
                char what[96];
                snprintf(what, sizeof what, "cross_entropy online vocab %d offset %d%s: loss", vocab,
                         offset, with_grad ? " (grad)" : "");
                compare(G, what, d_loss, loss, rows, 1e-6);
                /* A masked logit's gradient is exactly 0 (on both sides, then compared). */
                snprintf(what, sizeof what, "cross_entropy online vocab %d offset %d%s: logits", vocab,
                         offset, with_grad ? " (gradient)" : " (unchanged)");
                if (with_grad) {
                    /* -inf inputs became 0: compare finite rows, relative over all. */
                    compare(G, what, d_logits, ref, n, 1e-5);
                } else {
                    compare_exact(G, what, d_logits, ref, bytes);
                }
                G->release(d_buf);
                G->release(d_loss);
                free(ref);
            }
            G->release(d_targets);
            free(logits);
            free(loss);
        }
}

/* ------------------------------------------------------------------ adamw */
static void test_adamw(void) {
    seed(11);
    const size_t n = 10007, bytes = n * sizeof(float);
    float *p = host_rand(n, -1, 1), *m = host_rand(n, -0.01f, 0.01f), *v = host_rand(n, 0, 1e-4f);
    float *dp = dev_from(G, p, bytes), *dm = dev_from(G, m, bytes), *dv = dev_from(G, v, bytes);
    uint16_t *half = malloc(n * sizeof *half), *half_gpu = malloc(n * sizeof *half_gpu);
    uint16_t *dhalf = G->alloc(n * sizeof *dhalf);
    const double lr = 3e-4, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    /* Step 1 plain, 2 with a gradient scale and a bf16 copy, 3 with an fp16 copy. */
    for (int step = 1; step <= 3; step++) {
        float *g = host_rand(n, -1, 1), *dg = dev_from(G, g, bytes);
        kernels_adamw_step st = {lr, b1, b2, eps, wd, 1.0 - pow(b1, step), 1.0 - pow(b2, step),
                                 step == 1 ? 1.0f : 0.37f, NULL, step == 2 ? KERNELS_BF16 : KERNELS_FP16, NULL};
        kernels_adamw_step st_gpu = st;
        if (step > 1) st.half = half, st_gpu.half = dhalf;
        C->adamw(p, g, m, v, n, &st);
        G->adamw(dp, dg, dm, dv, n, &st_gpu);
        /* the same operations in the same order, each rounded (docs/kernels.md): same bits */
        compare_exact(G, "adamw param", dp, p, bytes);
        compare_exact(G, "adamw m", dm, m, bytes);
        compare_exact(G, "adamw v", dv, v, bytes);
        if (step > 1) {
            G->download(half_gpu, dhalf, n * sizeof *dhalf);
            size_t differ = 0;
            for (size_t i = 0; i < n; i++) differ += half[i] != half_gpu[i];
            CHECK_MSG(differ == 0, "adamw step %d: %zu of %zu 16-bit copies differ from the CPU's", step, differ, n);
        }
        G->release(dg);
        free(g);
    }
    /* The factor from device memory (clip_factor's): the CPU's bits with the same factor by
     * value; a NaN there writes nothing (a skipped step). */
    for (int nan_case = 0; nan_case <= 1; nan_case++) {
        float *g = host_rand(n, -1, 1), *dg = dev_from(G, g, bytes);
        const float factor = nan_case ? NAN : 0.61f;
        float *dfactor = dev_from(G, &factor, sizeof factor);
        kernels_adamw_step st = {lr, b1, b2, eps, wd, 1.0 - pow(b1, 4), 1.0 - pow(b2, 4), factor, half,
                                 KERNELS_BF16, NULL};
        kernels_adamw_step st_gpu = st;
        st_gpu.grad_scale = 2.0f; /* ignored: the factor comes from memory */
        st_gpu.half = dhalf;
        st_gpu.grad_scale_at = dfactor;
        if (!nan_case) C->adamw(p, g, m, v, n, &st);
        else G->download(half, dhalf, n * sizeof *half);
        G->adamw(dp, dg, dm, dv, n, &st_gpu);
        const char *what = nan_case ? "adamw skipped (NaN factor)" : "adamw factor from memory";
        compare_exact(G, what, dp, p, bytes);
        compare_exact(G, what, dm, m, bytes);
        compare_exact(G, what, dv, v, bytes);
        G->download(half_gpu, dhalf, n * sizeof *dhalf);
        size_t differ = 0;
        for (size_t i = 0; i < n; i++) differ += half[i] != half_gpu[i];
        CHECK_MSG(differ == 0, "%s: %zu of %zu 16-bit copies differ", what, differ, n);
        G->release(dfactor);
        G->release(dg);
        free(g);
    }
    G->release(dhalf);
    free(half);
    free(half_gpu);
    G->release(dp);
    G->release(dm);
    G->release(dv);
    free(p);
    free(m);
    free(v);
}

/* ------------------------------------------------------------------ clip_factor */
/* The norm and clipping factor decided on the device: the CPU's bits (the same grouped order
 * and double arithmetic), from the device's own block sums; sums that overflowed give a
 * non-finite norm and a NaN factor. */
static void test_clip_factor(void) {
    seed(12);
    const size_t counts[] = {1, 255, 256, 257, 3 * 256 + 17, 5000};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        const size_t n_blocks = counts[c], block = 64, n = n_blocks * block - 5;
        float *x = host_rand(n, -3, 3), *dx = dev_from(G, x, n * sizeof(float));
        for (size_t i = 0; i < n; i += 97) x[i] *= 1e6f; /* sums over many binades */
        G->upload(dx, x, n * sizeof(float));
        double *sums = malloc(n_blocks * sizeof(double)), *dsums = G->alloc((n_blocks + 1) * sizeof(double));
        double *dnorm = G->alloc(sizeof(double));
        float *dfactor = (float *)(dsums + n_blocks);
        G->sum_squares_blocks(dx, n, block, sums);
        const double max_norms[] = {0.0, 1.0, 1e12};
        for (int mi = 0; mi < 3; mi++) {
            /* the device's sums, the blocked op's bits (no wait), then the rule on each side */
            G->sum_squares_blocks_to(dx, n, block, dsums);
            double *check = malloc(n_blocks * sizeof(double));
            G->download(check, dsums, n_blocks * sizeof(double));
            CHECK_MSG(memcmp(check, sums, n_blocks * sizeof(double)) == 0,
                      "sum_squares_blocks_to %zu blocks: not sum_squares_blocks' bits", n_blocks);
            free(check);
            const double S = mi == 1 ? 4.0 : 1.0;
            double norm = 0.0, gpu_norm = -1.0;
            float factor = 0.0f, gpu_factor = -1.0f;
            double *cpu_sums = malloc(n_blocks * sizeof(double));
            memcpy(cpu_sums, sums, n_blocks * sizeof(double));
            C->clip_factor(cpu_sums, n_blocks, max_norms[mi], S, &norm, &factor);
            G->clip_factor(dsums, n_blocks, max_norms[mi], S, dnorm, dfactor);
            check_status("clip_factor");
            G->download(&gpu_norm, dnorm, sizeof gpu_norm);
            G->download(&gpu_factor, dfactor, sizeof gpu_factor);
            CHECK_MSG(gpu_norm == norm && gpu_factor == factor,
                      "clip_factor %zu blocks, max_norm %g: gpu %.17g %.9g, cpu %.17g %.9g", n_blocks, max_norms[mi],
                      gpu_norm, gpu_factor, norm, factor);
            if (mi == 1) CHECK(factor < 0.25f); /* it clipped */
            free(cpu_sums);
        }
        const double inf = INFINITY;
        G->upload(dsums + n_blocks / 2, &inf, sizeof inf);
        G->clip_factor(dsums, n_blocks, 1.0, 1.0, dnorm, dfactor);
        double gpu_norm = 0.0;
        float gpu_factor = 0.0f;
        G->download(&gpu_norm, dnorm, sizeof gpu_norm);
        G->download(&gpu_factor, dfactor, sizeof gpu_factor);
        CHECK_MSG(!isfinite(gpu_norm) && isnan(gpu_factor), "clip_factor with an infinite sum: %g %g", gpu_norm,
                  gpu_factor);
        G->release(dnorm);
        G->release(dsums);
        G->release(dx);
        free(sums);
        free(x);
    }
}

/* ------------------------------------------------------------------ errors */
/* A shape the kernels cannot run is recorded, reported once by kernels_cuda_status, and
 * cleared; nothing is written. */
static void test_error_state(void) {
    const int d = 300; /* above the supported 256 */
    float *x = dev_nan(G, (size_t)2 * d), *lse = dev_nan(G, 2);
    G->attention_fwd(x, lse, x, x, x, NULL, 1, 2, 1, 1, d, 1.0f);
    ct_error err = {{0}};
    CHECK(kernels_cuda_status(&err) == -1);
    CHECK_CONTAINS(err.msg, "attention");
    CHECK_CONTAINS(err.msg, "head_dim");
    ct_error again = {{0}};
    CHECK(kernels_cuda_status(&again) == 0); /* cleared by the first report */
    G->release(x);
    G->release(lse);
}

int main(void) {
    if (!open_backends(&C, &G)) return 77;
    test_memory();
    test_gemm();
    test_elementwise();
    test_dropout();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_attention();
    test_cross_entropy();
    test_cross_entropy_online();
    test_adamw();
    test_clip_factor();
    test_error_state();
    check_status("end of tests");
    return check_summary("test_kernels_cuda");
}
