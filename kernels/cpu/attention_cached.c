/* Attention of new tokens against a KV cache, the CPU reference (kernels.h:
 * attention_cached / attention_cached_half): what generation runs once the prompt is in the
 * cache, usually one query row per layer and step.
 *
 * One work item per (query, head), one pass over the keys it sees with an online softmax:
 * a running max m and sum l; a key that raises m first rescales l and the accumulator (the
 * output row itself) by exp(m_old - m_new). All fp32, exponentials by cpu_expf as in
 * attention.c. A query row is a few thousand multiply-adds per key, so the scalar loop is
 * not what generation waits for (the weight GEMMs are). No scratch: the output row is the
 * accumulator.
 *
 * The 16-bit form widens q, k and v into fp32 copies (the cache is read once per call
 * anyway) and writes its output as attention_fwd_half does (cpu_attention_half_output: the
 * rounding, or NaN where malloc failed). */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"

static bool cached_shape_valid(int n_new, int n_past, int n_heads, int n_kv_heads, int head_dim) {
    return n_new > 0 && n_past >= 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0 && n_heads % n_kv_heads == 0;
}

void cpu_attention_cached(float *out, const float *q, const float *k, const float *v, int n_new, int n_past,
                          int n_heads, int n_kv_heads, int head_dim, float scale) {
    if (!cached_shape_valid(n_new, n_past, n_heads, n_kv_heads, head_dim)) return;
    const int d = head_dim, group = n_heads / n_kv_heads;
    const size_t q_stride = (size_t)n_heads * d, kv_stride = (size_t)n_kv_heads * d;
    const long items = (long)n_new * n_heads;
#pragma omp parallel for schedule(static)
    for (long item = 0; item < items; item++) {
        const int i = (int)(item / n_heads), h = (int)(item % n_heads);
        const float *q_row = q + (size_t)i * q_stride + (size_t)h * d;
        const float *k_head = k + (size_t)(h / group) * d, *v_head = v + (size_t)(h / group) * d;
        float *acc = out + (size_t)i * q_stride + (size_t)h * d;
        for (int c = 0; c < d; c++) acc[c] = 0.0f;
        float m = -INFINITY, l = 0.0f;
        for (int j = 0; j <= n_past + i; j++) {
            const float *k_row = k_head + (size_t)j * kv_stride, *v_row = v_head + (size_t)j * kv_stride;
            float s = 0.0f;
            for (int c = 0; c < d; c++) s += q_row[c] * k_row[c];
            s *= scale;
            if (s > m) { /* exp(-inf) is 0: the first key starts from nothing */
                const float r = cpu_expf(m - s);
                l *= r;
                for (int c = 0; c < d; c++) acc[c] *= r;
                m = s;
            }
            const float p = cpu_expf(s - m);
            l += p;
            for (int c = 0; c < d; c++) acc[c] += p * v_row[c];
        }
        const float inv = 1.0f / l;
        for (int c = 0; c < d; c++) acc[c] *= inv;
    }
}

void cpu_attention_cached_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out, const uint16_t *q,
                               const uint16_t *k, const uint16_t *v, int n_new, int n_past, int n_heads,
                               int n_kv_heads, int head_dim, float scale) {
    if (!cached_shape_valid(n_new, n_past, n_heads, n_kv_heads, head_dim)) return;
    const size_t width = (size_t)n_heads * head_dim, kv_width = (size_t)n_kv_heads * head_dim;
    const size_t kv_rows = (size_t)(n_past + n_new), out_n = (size_t)n_new * width;
    float *wq = cpu_widened_copy(q, (size_t)n_new, width, width, fmt);
    float *wk = cpu_widened_copy(k, kv_rows, kv_width, kv_width, fmt);
    float *wv = cpu_widened_copy(v, kv_rows, kv_width, kv_width, fmt);
    float *o = out ? out : malloc(out_n * sizeof(float));
    const bool computed = wq && wk && wv && o;
    if (computed) cpu_attention_cached(o, wq, wk, wv, n_new, n_past, n_heads, n_kv_heads, head_dim, scale);
    cpu_attention_half_output(fmt, out_half, ld_out, o, computed, (size_t)n_new, width);
    if (o != out) free(o);
    free(wq);
    free(wk);
    free(wv);
}
