/* kernels_profile: every op of a backend timed, with a wait for the device after each. */
#include "kernels/profile.h"

#include <stdlib.h>
#include <string.h>

#include "train/clock.h"

#define PROFILE_MAX_ROWS 512
#define PROFILE_KEY 96
#define PROFILE_CALIBRATION_WAITS 64

typedef struct {
    char key[PROFILE_KEY];
    long long calls;
    double seconds;
    double flops; /* matrix-product FLOPs of all calls (0: not a product) */
    double bytes; /* bytes every call must move at least (0: not counted) */
} profile_row;

/* The wrapper's state: the table functions take no context (kernels.h), so it lives here. */
static struct {
    bool running;
    const kernels *inner;
    kernels table;
    void *probe;        /* 4 bytes of backend memory downloaded to wait for the device */
    double empty_wait;  /* seconds one wait costs with nothing queued */
    int n_rows;
    profile_row rows[PROFILE_MAX_ROWS];
    long long dropped; /* calls whose key found no free row */
} prof;

static void wait_device(void) {
    float sink;
    prof.inner->download(&sink, prof.probe, sizeof sink);
}

/* Waits for what earlier ops queued, so the timed op starts on an idle device. */
static double begin(void) {
    wait_device();
    return ct_monotonic_seconds();
}

static void end(double t0, const char *key, double flops, double bytes) {
    wait_device();
    double t = ct_monotonic_seconds() - t0 - prof.empty_wait;
    if (t < 0) t = 0;
    for (int i = 0; i < prof.n_rows; i++) {
        profile_row *row = &prof.rows[i];
        if (strcmp(row->key, key) != 0) continue;
        row->calls++;
        row->seconds += t;
        row->flops += flops;
        row->bytes += bytes;
        return;
    }
    if (prof.n_rows == PROFILE_MAX_ROWS) {
        prof.dropped++;
        return;
    }
    profile_row *row = &prof.rows[prof.n_rows++];
    snprintf(row->key, sizeof row->key, "%s", key);
    row->calls = 1;
    row->seconds = t;
    row->flops = flops;
    row->bytes = bytes;
}

#define TIMED(flops, bytes, call, ...)                      \
    do {                                                    \
        char key_[PROFILE_KEY];                             \
        snprintf(key_, sizeof key_, __VA_ARGS__);           \
        double t0_ = begin();                               \
        call;                                               \
        end(t0_, key_, (double)(flops), (double)(bytes));   \
    } while (0)

static const char *fmt_name(kernels_half_format fmt) { return fmt == KERNELS_BF16 ? "bf16" : "fp16"; }

static char tr(bool t) { return t ? 'T' : 'N'; }

/* ---- memory ---- */
static void *p_alloc(size_t bytes) {
    void *p = NULL;
    TIMED(0, 0, p = prof.inner->alloc(bytes), "alloc");
    return p;
}
static void p_release(void *p) { TIMED(0, 0, prof.inner->release(p), "release"); }
static void p_zero(void *p, size_t bytes) { TIMED(0, bytes, prof.inner->zero(p, bytes), "zero"); }
static void p_copy(void *d, const void *s, size_t bytes) {
    TIMED(0, 2.0 * bytes, prof.inner->copy(d, s, bytes), "copy");
}
static void p_upload(void *d, const void *h, size_t bytes) {
    TIMED(0, bytes, prof.inner->upload(d, h, bytes), "upload");
}
static void p_download(void *h, const void *s, size_t bytes) {
    TIMED(0, bytes, prof.inner->download(h, s, bytes), "download");
}

/* ---- algebra and element-wise ---- */
static void p_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                   int ldb, float beta, float *c, int ldc) {
    TIMED(2.0 * m * n * k, 0, prof.inner->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc),
          "gemm fp32 %c%c m %d n %d k %d", tr(ta), tr(tb), m, n, k);
}
static void p_add(float *out, const float *a, const float *b, size_t n) {
    TIMED(0, 12.0 * n, prof.inner->add(out, a, b, n), "add");
}
static void p_axpy(float *y, float alpha, const float *x, size_t n) {
    TIMED(0, 12.0 * n, prof.inner->axpy(y, alpha, x, n), "axpy");
}
static void p_scale(float *x, float alpha, size_t n) { TIMED(0, 8.0 * n, prof.inner->scale(x, alpha, n), "scale"); }
static void p_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    TIMED(0, 8.0 * n, prof.inner->dropout(out, x, p, seed, offset, n), "dropout");
}

static void p_dropout_add(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    TIMED(0, 12.0 * n, prof.inner->dropout_add(y, x, p, seed, offset, n), "dropout_add");
}

static void p_dropout_half(kernels_half_format fmt, uint16_t *out_half, const float *x, float p, uint64_t seed,
                           uint64_t offset, size_t n) {
    TIMED(0, 6.0 * n, prof.inner->dropout_half(fmt, out_half, x, p, seed, offset, n), "dropout_half %s",
          fmt_name(fmt));
}
static double p_sum_squares(const float *x, size_t n) {
    double s = 0;
    TIMED(0, 4.0 * n, s = prof.inner->sum_squares(x, n), "sum_squares");
    return s;
}
static void p_sum_squares_blocks(const float *x, size_t n, size_t block, double *sums) {
    TIMED(0, 4.0 * n, prof.inner->sum_squares_blocks(x, n, block, sums), "sum_squares_blocks");
}
static void p_sum_squares_blocks_to(const float *x, size_t n, size_t block, double *sums) {
    TIMED(0, 4.0 * n, prof.inner->sum_squares_blocks_to(x, n, block, sums), "sum_squares_blocks_to");
}
static void p_clip_factor(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                          float *factor) {
    TIMED(0, 8.0 * n_blocks, prof.inner->clip_factor(sums, n_blocks, max_norm, loss_scale, norm, factor),
          "clip_factor");
}
static void p_embedding_fwd(float *out, const float *table, const int32_t *ids, int n, int h) {
    TIMED(0, 8.0 * n * h, prof.inner->embedding_fwd(out, table, ids, n, h), "embedding_fwd");
}
static void p_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, const int32_t *order, int n,
                            int h) {
    TIMED(0, 12.0 * n * h, prof.inner->embedding_bwd(dtable, dout, ids, order, n, h), "embedding_bwd%s",
          order ? " (sorted)" : "");
}
static void p_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int rows, int dim, float eps) {
    TIMED(0, 8.0 * rows * dim, prof.inner->rmsnorm_fwd(out, rstd, x, w, rows, dim, eps), "rmsnorm_fwd");
}
static void p_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                          const float *rstd, int rows, int dim, bool add) {
    TIMED(0, (add ? 16.0 : 12.0) * rows * dim, prof.inner->rmsnorm_bwd(dx, dw, dout, x, w, rstd, rows, dim, add),
          "rmsnorm_bwd%s%s", dw ? "" : " (frozen weight)", add ? " (adds to dx)" : "");
}
static void p_rope_fwd(float *x, const int32_t *pos, const float *inv_freq, int n, int heads, int d) {
    TIMED(0, 8.0 * n * heads * d, prof.inner->rope_fwd(x, pos, inv_freq, n, heads, d), "rope_fwd");
}
static void p_rope_bwd(float *dx, const int32_t *pos, const float *inv_freq, int n, int heads, int d) {
    TIMED(0, 8.0 * n * heads * d, prof.inner->rope_bwd(dx, pos, inv_freq, n, heads, d), "rope_bwd");
}
/* 4 bytes read and 2 written per element, whatever the row stride. */
static void p_rope_fwd_half(kernels_half_format fmt, uint16_t *oh, int ld, const float *x, const int32_t *pos,
                            const float *inv_freq, int n, int heads, int d) {
    TIMED(0, 6.0 * n * heads * d, prof.inner->rope_fwd_half(fmt, oh, ld, x, pos, inv_freq, n, heads, d),
          "rope_fwd_half %s", fmt_name(fmt));
}
static void p_rope_bwd_half(kernels_half_format fmt, uint16_t *oh, int ld, const float *dx, const int32_t *pos,
                            const float *inv_freq, int n, int heads, int d) {
    TIMED(0, 6.0 * n * heads * d, prof.inner->rope_bwd_half(fmt, oh, ld, dx, pos, inv_freq, n, heads, d),
          "rope_bwd_half %s", fmt_name(fmt));
}
static void p_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    TIMED(0, 12.0 * n, prof.inner->swiglu_fwd(out, gate, up, n), "swiglu_fwd");
}
static void p_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                         size_t n) {
    TIMED(0, 20.0 * n, prof.inner->swiglu_bwd(dgate, dup, dout, gate, up, n), "swiglu_bwd");
}

/* ---- attention: FLOPs of the causal half of the score and output products ---- */
static double attention_flops(int batch, int seq, int heads, int d) {
    return 2.0 * batch * heads * (double)seq * seq * d; /* QK^T and PV, each 2*s*s*d, halved */
}
static void p_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                            const int32_t *doc, int b, int s, int nh, int nkv, int d, float scale) {
    TIMED(attention_flops(b, s, nh, d), 0,
          prof.inner->attention_fwd(out, lse, q, k, v, doc, b, s, nh, nkv, d, scale),
          "attention_fwd fp32 b %d s %d h %d/%d d %d", b, s, nh, nkv, d);
}
static void p_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *out, const float *lse, const int32_t *doc, int b,
                            int s, int nh, int nkv, int d, float scale) {
    TIMED(2.5 * attention_flops(b, s, nh, d), 0,
          prof.inner->attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, doc, b, s, nh, nkv, d, scale),
          "attention_bwd fp32 b %d s %d h %d/%d d %d", b, s, nh, nkv, d);
}
/* a cache's attention: every query against every key up to its own (n_new x (n_past + its index)) */
static double attention_cached_flops(int n_new, int n_past, int heads, int d) {
    return 4.0 * heads * d * n_new * ((double)n_past + (n_new + 1) / 2.0);
}
static void p_attention_cached(float *out, const float *q, const float *k, const float *v, int n_new, int n_past,
                               int nh, int nkv, int d, float scale) {
    TIMED(attention_cached_flops(n_new, n_past, nh, d), 0,
          prof.inner->attention_cached(out, q, k, v, n_new, n_past, nh, nkv, d, scale),
          "attention_cached fp32 new %d past %d h %d/%d d %d", n_new, n_past, nh, nkv, d);
}
static void p_cross_entropy(float *logits, float *loss, const int32_t *targets, int rows, int vocab,
                            float grad_scale) {
    TIMED(0, (grad_scale != 0 ? 8.0 : 4.0) * rows * vocab,
          prof.inner->cross_entropy(logits, loss, targets, rows, vocab, grad_scale),
          "cross_entropy rows %d vocab %d", rows, vocab);
}

/* ---- 16-bit ---- */
static void p_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt) {
    TIMED(0, 6.0 * n, prof.inner->to_half(out, x, n, fmt), "to_half %s", fmt_name(fmt));
}
static void p_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt) {
    TIMED(0, 6.0 * n, prof.inner->from_half(out, x, n, fmt), "from_half %s", fmt_name(fmt));
}
static void p_embedding_fwd_half(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                                 const int32_t *ids, int n, int h) {
    TIMED(0, 6.0 * n * h, prof.inner->embedding_fwd_half(fmt, out, table, ld, ids, n, h), "embedding_fwd_half %s",
          fmt_name(fmt));
}
/* Only the block moves: 4 bytes read and 2 written per element, whatever the strides. */
static void p_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x, int ld_x, int rows,
                         int cols, float scale) {
    TIMED(0, 6.0 * rows * cols, prof.inner->to_half_2d(fmt, out, ld_out, x, ld_x, rows, cols, scale),
          "to_half_2d %s", fmt_name(fmt));
}
/* The blocks' sizes sit in backend memory: no bytes counted. */
static void p_to_half_2d_many(kernels_half_format fmt, const kernels_half_block *blocks, int n) {
    TIMED(0, 0, prof.inner->to_half_2d_many(fmt, blocks, n), "to_half_2d_many %s (%d blocks)", fmt_name(fmt), n);
}
/* Half a byte of code, 2 bytes out, and a 4-byte absmax per 64 values. */
static void p_nf4_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                             const float *absmax, int rows, int cols) {
    TIMED(0, 2.5625 * rows * cols, prof.inner->nf4_to_half_2d(fmt, out, ld_out, codes, absmax, rows, cols),
          "nf4_to_half_2d %s", fmt_name(fmt));
}
static void p_gemm_half(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, float alpha,
                        const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta, float *c, int ldc) {
    TIMED(2.0 * m * n * k, 0, prof.inner->gemm_half(fmt, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc),
          "gemm_half %s %c%c m %d n %d k %d%s", fmt_name(fmt), tr(ta), tr(tb), m, n, k, beta != 0 ? " +C" : "");
}
static void p_gemm_half_add(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, const uint16_t *a,
                            int lda, const uint16_t *b, int ldb, const float *r, float *c, int ldc) {
    TIMED(2.0 * m * n * k, 0, prof.inner->gemm_half_add(fmt, ta, tb, m, n, k, a, lda, b, ldb, r, c, ldc),
          "gemm_half %s %c%c m %d n %d k %d +R", fmt_name(fmt), tr(ta), tr(tb), m, n, k);
}
static void p_gemm_half_to_half(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, const uint16_t *a,
                                int lda, const uint16_t *b, int ldb, uint16_t *c_half, int ldc) {
    TIMED(2.0 * m * n * k, 0, prof.inner->gemm_half_to_half(fmt, ta, tb, m, n, k, a, lda, b, ldb, c_half, ldc),
          "gemm_half %s %c%c m %d n %d k %d ->16", fmt_name(fmt), tr(ta), tr(tb), m, n, k);
}
/* Bytes moved by the producers of 16-bit operands: fp32 in, 16-bit (and optional fp32) out. */
static void p_rmsnorm_fwd_half(kernels_half_format fmt, uint16_t *oh, int ld_half, float *out, float *rstd,
                               const float *x, const float *w, int rows, int dim, float eps) {
    TIMED(0, (out ? 10.0 : 6.0) * rows * dim,
          prof.inner->rmsnorm_fwd_half(fmt, oh, ld_half, out, rstd, x, w, rows, dim, eps),
          "rmsnorm_fwd_half %s%s", fmt_name(fmt), out ? " +fp32" : "");
}
static void p_rmsnorm_bwd_half(kernels_half_format fmt, uint16_t *dxh, int ld_half, float *dx, float *dw,
                               const float *dout, const float *x, const float *w, const float *rstd, int rows, int dim,
                               bool add) {
    TIMED(0, (add ? 18.0 : 14.0) * rows * dim,
          prof.inner->rmsnorm_bwd_half(fmt, dxh, ld_half, dx, dw, dout, x, w, rstd, rows, dim, add),
          "rmsnorm_bwd_half %s%s%s", fmt_name(fmt), dw ? "" : " (frozen weight)", add ? " (adds to dx)" : "");
}
static void p_swiglu_fwd_half(kernels_half_format fmt, uint16_t *oh, int ld_half, float *out, uint16_t *gh,
                              uint16_t *uh, const float *gate, const float *up, int rows, int cols) {
    /* gate and up NULL: the 16-bit gate and up are its inputs (2 + 2 bytes read, none written). */
    const double per = gate ? 14.0 : 6.0;
    TIMED(0, (out ? per + 4.0 : per) * rows * cols,
          prof.inner->swiglu_fwd_half(fmt, oh, ld_half, out, gh, uh, gate, up, rows, cols), "swiglu_fwd_half %s%s%s",
          fmt_name(fmt), gate ? "" : " (16-bit in)", out ? " +fp32" : "");
}
static void p_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgh, uint16_t *duh, int ld_half, const float *dout,
                              const uint16_t *gh, const uint16_t *uh, int rows, int cols) {
    TIMED(0, 12.0 * rows * cols, prof.inner->swiglu_bwd_half(fmt, dgh, duh, ld_half, dout, gh, uh, rows, cols),
          "swiglu_bwd_half %s", fmt_name(fmt));
}
static void p_cross_entropy_half(kernels_half_format fmt, uint16_t *dh, const float *logits, float *loss,
                                 const int32_t *targets, int rows, int vocab, float grad_scale) {
    TIMED(0, (grad_scale != 0 ? 6.0 : 4.0) * rows * vocab,
          prof.inner->cross_entropy_half(fmt, dh, logits, loss, targets, rows, vocab, grad_scale),
          "cross_entropy_half %s rows %d vocab %d", fmt_name(fmt), rows, vocab);
}
static void p_attention_fwd_half(kernels_half_format fmt, uint16_t *oh, int ld_out, float *out, float *lse,
                                 const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *doc, int b,
                                 int s, int nh, int nkv, int d, float scale) {
    TIMED(attention_flops(b, s, nh, d), 0,
          prof.inner->attention_fwd_half(fmt, oh, ld_out, out, lse, q, k, v, doc, b, s, nh, nkv, d, scale),
          "attention_fwd %s b %d s %d h %d/%d d %d%s", fmt_name(fmt), b, s, nh, nkv, d, out ? " +fp32" : "");
}
static void p_attention_cached_half(kernels_half_format fmt, uint16_t *oh, int ld_out, float *out, const uint16_t *q,
                                    const uint16_t *k, const uint16_t *v, int n_new, int n_past, int nh, int nkv, int d,
                                    float scale) {
    TIMED(attention_cached_flops(n_new, n_past, nh, d), 0,
          prof.inner->attention_cached_half(fmt, oh, ld_out, out, q, k, v, n_new, n_past, nh, nkv, d, scale),
          "attention_cached %s new %d past %d h %d/%d d %d", fmt_name(fmt), n_new, n_past, nh, nkv, d);
}
static void p_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                                 const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *oh,
                                 int ld_out, const float *lse, const int32_t *doc, int b, int s, int nh, int nkv,
                                 int d, float scale) {
    TIMED(2.5 * attention_flops(b, s, nh, d), 0,
          prof.inner->attention_bwd_half(fmt, dq, dk, dv, dout, q, k, v, oh, ld_out, lse, doc, b, s, nh, nkv, d,
                                         scale),
          "attention_bwd %s b %d s %d h %d/%d d %d", fmt_name(fmt), b, s, nh, nkv, d);
}
/* ---- DoRA ---- */
static void p_dora_norm_scale(float *norm, float *scale, const float *combined, const float *magnitude, int rows,
                              int cols) {
    TIMED(0, 4.0 * rows * cols + 12.0 * rows,
          prof.inner->dora_norm_scale(norm, scale, combined, magnitude, rows, cols), "dora_norm_scale");
}
static void p_scale_cols(float *y, const float *x, const float *scale, float offset, int rows, int cols, bool add) {
    TIMED(0, (add ? 12.0 : 8.0) * rows * cols, prof.inner->scale_cols(y, x, scale, offset, rows, cols, add),
          "scale_cols%s", add ? " (adds)" : "");
}
static void p_dora_magnitude_grad(float *dmag, const float *dy, const float *z, const float *norm, int rows,
                                  int cols, bool accumulate) {
    TIMED(0, 8.0 * rows * cols, prof.inner->dora_magnitude_grad(dmag, dy, z, norm, rows, cols, accumulate),
          "dora_magnitude_grad");
}
static void p_adamw(float *param, const float *grad, float *m, float *v, size_t n, const kernels_adamw_step *st) {
    TIMED(0, (st->half ? 30.0 : 28.0) * n, prof.inner->adamw(param, grad, m, v, n, st), "adamw%s",
          st->half ? " (+16-bit copy)" : "");
}

int kernels_profile_start(const kernels *inner, const kernels **out, ct_error *err) {
    if (prof.running) return ct_fail(err, "kernels_profile_start: a profile is already running");
    void *probe = inner->alloc(sizeof(float));
    if (!probe) return ct_fail(err, "kernels_profile_start: cannot allocate 4 bytes on backend %s", inner->name);
    memset(&prof, 0, sizeof prof);
    prof.running = true;
    prof.inner = inner;
    prof.probe = probe;
    /* The cost of a wait alone: the least of several, as the noise only adds. */
    wait_device();
    prof.empty_wait = 1e30;
    for (int i = 0; i < PROFILE_CALIBRATION_WAITS; i++) {
        double t0 = ct_monotonic_seconds();
        wait_device();
        double t = ct_monotonic_seconds() - t0;
        if (t < prof.empty_wait) prof.empty_wait = t;
    }
    prof.table = (kernels){
        .name = inner->name,
        .host_memory = inner->host_memory,
        .alloc = p_alloc,
        .release = p_release,
        .memory_info = inner->memory_info, /* a query, not an op: untimed */
        .memory_held = inner->memory_held,
        .attention_scratch_bytes = inner->attention_scratch_bytes,
        .half_workspace_bytes = inner->half_workspace_bytes,
        .zero = p_zero,
        .copy = p_copy,
        .upload = p_upload,
        .download = p_download,
        .gemm = p_gemm,
        .add = p_add,
        .axpy = p_axpy,
        .scale = p_scale,
        .dropout = p_dropout,
        .dropout_add = p_dropout_add,
        .dropout_half = p_dropout_half,
        .sum_squares = p_sum_squares,
        .sum_squares_blocks = p_sum_squares_blocks,
        .sum_squares_blocks_to = p_sum_squares_blocks_to,
        .clip_factor = p_clip_factor,
        .embedding_fwd = p_embedding_fwd,
        .embedding_bwd = p_embedding_bwd,
        .rmsnorm_fwd = p_rmsnorm_fwd,
        .rmsnorm_bwd = p_rmsnorm_bwd,
        .rope_fwd = p_rope_fwd,
        .rope_bwd = p_rope_bwd,
        .rope_fwd_half = p_rope_fwd_half,
        .rope_bwd_half = p_rope_bwd_half,
        .swiglu_fwd = p_swiglu_fwd,
        .swiglu_bwd = p_swiglu_bwd,
        .attention_fwd = p_attention_fwd,
        .attention_bwd = p_attention_bwd,
        .attention_cached = p_attention_cached,
        .cross_entropy = p_cross_entropy,
        .to_half = p_to_half,
        .from_half = p_from_half,
        .embedding_fwd_half = p_embedding_fwd_half,
        .to_half_2d = p_to_half_2d,
        .to_half_2d_many = p_to_half_2d_many,
        .nf4_to_half_2d = p_nf4_to_half_2d,
        .gemm_half = p_gemm_half,
        .gemm_half_add = p_gemm_half_add,
        .gemm_half_to_half = p_gemm_half_to_half,
        .rmsnorm_fwd_half = p_rmsnorm_fwd_half,
        .rmsnorm_bwd_half = p_rmsnorm_bwd_half,
        .swiglu_fwd_half = p_swiglu_fwd_half,
        .swiglu_bwd_half = p_swiglu_bwd_half,
        .cross_entropy_half = p_cross_entropy_half,
        .attention_fwd_half = p_attention_fwd_half,
        .attention_bwd_half = p_attention_bwd_half,
        .attention_cached_half = p_attention_cached_half,
        .dora_norm_scale = p_dora_norm_scale,
        .scale_cols = p_scale_cols,
        .dora_magnitude_grad = p_dora_magnitude_grad,
        .adamw = p_adamw,
    };
    *out = &prof.table;
    return 0;
}

void kernels_profile_reset(void) {
    prof.n_rows = 0;
    prof.dropped = 0;
}

static int slower_first(const void *a, const void *b) {
    double x = ((const profile_row *)a)->seconds, y = ((const profile_row *)b)->seconds;
    return (x < y) - (x > y);
}

void kernels_profile_report(FILE *out, int steps, double wall_s) {
    if (!prof.running || steps <= 0) return;
    qsort(prof.rows, (size_t)prof.n_rows, sizeof prof.rows[0], slower_first);
    double total = 0;
    for (int i = 0; i < prof.n_rows; i++) total += prof.rows[i].seconds;
    fprintf(out, "profile (CTUNE_PROFILE=1, backend %s): %d step(s), %.1f ms of wall time per step, of which "
                 "%.1f ms in ops (a wait after each; one empty wait, %.1f us, subtracted per call)\n",
            prof.inner->name, steps, 1e3 * wall_s / steps, 1e3 * total / steps, 1e6 * prof.empty_wait);
    fprintf(out, "%10s %6s %9s %10s %8s %8s  %s\n", "ms/step", "%ops", "calls/st", "us/call", "TFLOP/s", "GB/s",
            "op");
    for (int i = 0; i < prof.n_rows; i++) {
        const profile_row *row = &prof.rows[i];
        char tflops[16] = "", gbs[16] = "";
        if (row->flops > 0 && row->seconds > 0) snprintf(tflops, sizeof tflops, "%.1f", row->flops / row->seconds / 1e12);
        if (row->bytes > 0 && row->seconds > 0) snprintf(gbs, sizeof gbs, "%.0f", row->bytes / row->seconds / 1e9);
        fprintf(out, "%10.2f %6.1f %9.1f %10.1f %8s %8s  %s\n", 1e3 * row->seconds / steps,
                total > 0 ? 100 * row->seconds / total : 0, (double)row->calls / steps,
                1e6 * row->seconds / (double)row->calls, tflops, gbs, row->key);
    }
    fprintf(out, "%10.2f %6s %9s %10s %8s %8s  outside the ops (host work, waits)\n",
            1e3 * (wall_s - total) / steps, "", "", "", "", "");
    if (prof.dropped) fprintf(out, "(%lld calls not counted: more than %d distinct ops)\n", prof.dropped, PROFILE_MAX_ROWS);
    fflush(out);
}

void kernels_profile_stop(void) {
    if (!prof.running) return;
    prof.inner->release(prof.probe);
    memset(&prof, 0, sizeof prof);
}
