/* safetensors writer (the reference layout, written durably through fsutil's atomic_file) and
 * the fp32 <-> bf16/fp16 conversions. Layout rules: shared/spec/INTEROP.md. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"
#include "train/safetensors_internal.h"
#include "train/textbuf.h"
#include "train/utf8.h"

/* ---- conversions ---- */

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t st_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    /* Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even; a carry
     * into the exponent is the correct result (up to Inf on overflow). */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t st_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) /* NaN: keep the top payload bits and force quiet, as F16C does */
        return (uint16_t)(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
    if (mag >= 0x38800000u) { /* at least 2^-14: a normal half, or overflow to Inf */
        uint32_t rounded = (mag + 0xfffu + ((mag >> 13) & 1u)) >> 13;
        uint32_t half = rounded - ((127u - 15u) << 10); /* rebias the exponent */
        return (uint16_t)(sign | (half >= 0x7c00u ? 0x7c00u : half));
    }
    int exponent = (int)(mag >> 23);
    if (exponent < 102) return sign; /* below 2^-25: rounds to zero */
    /* Subnormal half: value = significand * 2^(exponent-150), in units of 2^-24. */
    uint32_t significand = (mag & 0x7fffffu) | 0x800000u;
    int shift = 126 - exponent; /* 14..24 */
    uint32_t q = significand >> shift;
    uint32_t rem = significand & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) q++; /* may carry into 2^-14: fine */
    return (uint16_t)(sign | q);
}

float st_bf16_to_f32(uint16_t x) { return f32_from_bits((uint32_t)x << 16); }

float st_f16_to_f32(uint16_t x) {
    uint32_t sign = (uint32_t)(x & 0x8000u) << 16;
    uint32_t exponent = (x >> 10) & 0x1fu, mantissa = x & 0x3ffu;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24 is exact in fp32 */
        float v = (float)mantissa * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exponent == 31) return f32_from_bits(sign | 0x7f800000u | (mantissa << 13));
    return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* ---- writer ---- */

typedef struct write_entry {
    const st_write_tensor *tensor;
    uint64_t nbytes;
} write_entry;

static int write_entry_compare(const void *a, const void *b) {
    const st_write_tensor *x = ((const write_entry *)a)->tensor;
    const st_write_tensor *y = ((const write_entry *)b)->tensor;
    int rx = st_dtype_sort_rank(x->dtype), ry = st_dtype_sort_rank(y->dtype);
    if (rx != ry) return rx > ry ? -1 : 1; /* larger alignment first, as the reference */
    return strcmp(x->name, y->name);
}

static int check_write_tensor(const st_write_tensor *t, bool need_data, uint64_t *nbytes,
                              const char *path, ct_error *err) {
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
        return ct_fail(err, "%s: invalid tensor name '%s'", path, t->name ? t->name : "(null)");
    if (utf8_invalid_at((const unsigned char *)t->name, strlen(t->name)) != strlen(t->name))
        return ct_fail(err, "%s: tensor name '%s' is not valid UTF-8", path, t->name);
    if ((unsigned)t->dtype >= ST_DTYPE_COUNT)
        return ct_fail(err, "%s: tensor '%s': unknown dtype %d", path, t->name, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return ct_fail(err, "%s: tensor '%s': %d dimensions (0..%d allowed)", path, t->name,
                       t->ndim, ST_MAX_DIMS);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || (double)t->shape[d] > ST_MAX_EXACT_INT)
            return ct_fail(err, "%s: tensor '%s': invalid shape[%d] = %lld", path, t->name, d,
                           (long long)t->shape[d]);
    uint64_t numel;
    if (st_tensor_size(t->dtype, t->ndim, t->shape, &numel, nbytes) != ST_SIZE_OK)
        return ct_fail(err, "%s: tensor '%s': %llu elements of %s are not a whole number of "
                       "bytes (or overflow)", path, t->name, (unsigned long long)numel,
                       st_dtype_name(t->dtype));
    if (need_data && *nbytes && !t->data) return ct_fail(err, "%s: tensor '%s' has no data", path, t->name);
    return 0;
}

static int build_header(textbuf *b, const write_entry *entries, int n_tensors,
                        const char *const *keys, const char *const *values, int n_metadata) {
    int has_format = 0;
    textbuf_puts(b, "{\"__metadata__\":{");
    for (int i = 0; i < n_metadata; i++) {
        if (strcmp(keys[i], "format") == 0) has_format = 1;
        if (i) textbuf_puts(b, ",");
        textbuf_json_string(b, keys[i]);
        textbuf_puts(b, ":");
        textbuf_json_string(b, values[i]);
    }
    if (!has_format) textbuf_puts(b, n_metadata ? ",\"format\":\"pt\"" : "\"format\":\"pt\"");
    textbuf_puts(b, "}");
    uint64_t offset = 0;
    for (int i = 0; i < n_tensors; i++) {
        const st_write_tensor *t = entries[i].tensor;
        textbuf_puts(b, ",");
        textbuf_json_string(b, t->name);
        textbuf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            textbuf_printf(b, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
        textbuf_printf(b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                       (unsigned long long)(offset + entries[i].nbytes));
        offset += entries[i].nbytes;
    }
    textbuf_puts(b, "}");
    while (b->len % 8 != 0) textbuf_puts(b, " "); /* tensor data starts 8-byte aligned */
    return b->failed ? -1 : 0;
}

static int check_write_inputs(const char *path, const st_write_tensor *tensors, int n_tensors,
                              const char *const *keys, const char *const *values, int n_metadata,
                              bool need_data, write_entry *entries, ct_error *err) {
    for (int i = 0; i < n_metadata; i++) {
        if (!keys[i] || !values[i])
            return ct_fail(err, "%s: metadata entry %d is NULL", path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(keys[i], keys[j]) == 0)
                return ct_fail(err, "%s: metadata key '%s' given twice", path, keys[i]);
        if (utf8_invalid_at((const unsigned char *)keys[i], strlen(keys[i])) != strlen(keys[i]) ||
            utf8_invalid_at((const unsigned char *)values[i], strlen(values[i])) !=
                strlen(values[i]))
            return ct_fail(err, "%s: metadata entry '%s' is not valid UTF-8", path, keys[i]);
    }
    for (int i = 0; i < n_tensors; i++) {
        entries[i].tensor = &tensors[i];
        if (check_write_tensor(&tensors[i], need_data, &entries[i].nbytes, path, err) != 0)
            return -1;
    }
    qsort(entries, (size_t)n_tensors, sizeof *entries, write_entry_compare);
    for (int i = 1; i < n_tensors; i++)
        if (strcmp(entries[i].tensor->name, entries[i - 1].tensor->name) == 0)
            return ct_fail(err, "%s: tensor '%s' given twice", path, entries[i].tensor->name);
    return 0;
}

/* ---- streaming writer ---- */

struct st_writer {
    atomic_file file;
    int n_tensors, next;  /* next: position in header order of the tensor expected next */
    int *order;           /* header order -> index into the descriptors given to open */
    char **names;         /* in header order (owned copies) */
    uint64_t *nbytes;     /* in header order */
    bool failed;
};

void st_writer_abort(st_writer *w) {
    if (!w) return;
    atomic_file_abort(&w->file);
    for (int i = 0; i < w->n_tensors; i++) free(w->names ? w->names[i] : NULL);
    free(w->names);
    free(w->order);
    free(w->nbytes);
    free(w);
}

/* need_data: every descriptor must carry its data now (st_write), so that a missing buffer is
 * reported before anything is written. */
static int writer_open(st_writer **out, const char *path, const st_write_tensor *tensors,
                       int n_tensors, const char *const *metadata_keys,
                       const char *const *metadata_values, int n_metadata, bool need_data,
                       ct_error *err) {
    *out = NULL;
    if (n_tensors < 0 || n_metadata < 0) return ct_fail(err, "%s: negative count", path);
    size_t count = (size_t)(n_tensors > 0 ? n_tensors : 1);
    st_writer *w = calloc(1, sizeof *w);
    write_entry *entries = calloc(count, sizeof *entries);
    textbuf header = {0};
    if (!w || !entries) goto oom;
    w->file.fd = -1;
    w->order = calloc(count, sizeof *w->order);
    w->names = calloc(count, sizeof *w->names);
    w->nbytes = calloc(count, sizeof *w->nbytes);
    if (!w->order || !w->names || !w->nbytes) goto oom;
    w->n_tensors = n_tensors;
    if (check_write_inputs(path, tensors, n_tensors, metadata_keys, metadata_values, n_metadata,
                           need_data, entries, err) != 0)
        goto fail;
    for (int i = 0; i < n_tensors; i++) {
        w->order[i] = (int)(entries[i].tensor - tensors);
        w->nbytes[i] = entries[i].nbytes;
        if (!(w->names[i] = strdup(entries[i].tensor->name))) goto oom;
    }
    if (build_header(&header, entries, n_tensors, metadata_keys, metadata_values, n_metadata))
        goto oom;
    if (header.len > ST_MAX_HEADER) {
        ct_fail(err, "%s: header of %zu bytes exceeds the %llu-byte limit", path, header.len,
                ST_MAX_HEADER);
        goto fail;
    }
    unsigned char length[8];
    for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
    if (atomic_file_open(&w->file, path, err) || atomic_file_write(&w->file, length, 8, err) ||
        atomic_file_write(&w->file, header.data, header.len, err))
        goto fail;
    textbuf_free(&header);
    free(entries);
    *out = w;
    return 0;
oom:
    ct_fail(err, "%s: out of memory", path);
fail:
    textbuf_free(&header);
    free(entries);
    st_writer_abort(w);
    return -1;
}

int st_writer_open(st_writer **out, const char *path, const st_write_tensor *tensors,
                   int n_tensors, const char *const *metadata_keys,
                   const char *const *metadata_values, int n_metadata, ct_error *err) {
    return writer_open(out, path, tensors, n_tensors, metadata_keys, metadata_values, n_metadata,
                       false, err);
}

int st_writer_next(const st_writer *w) {
    return w->next < w->n_tensors ? w->order[w->next] : -1;
}

int st_writer_put(st_writer *w, const char *name, const void *data, ct_error *err) {
    if (w->failed) return ct_fail(err, "%s: an earlier write failed", w->file.path);
    if (w->next >= w->n_tensors) {
        w->failed = true;
        return ct_fail(err, "%s: tensor '%s' given after all %d tensors were written",
                       w->file.path, name, w->n_tensors);
    }
    const char *expected = w->names[w->next];
    if (strcmp(name, expected) != 0) {
        w->failed = true;
        return ct_fail(err, "%s: tensor '%s' given where the header places '%s' next",
                       w->file.path, name, expected);
    }
    uint64_t nbytes = w->nbytes[w->next];
    if (nbytes && !data) {
        w->failed = true;
        return ct_fail(err, "%s: tensor '%s' has no data", w->file.path, name);
    }
    if (atomic_file_write(&w->file, data, nbytes, err) != 0) {
        w->failed = true;
        return -1;
    }
    w->next++;
    return 0;
}

int st_writer_finish(st_writer *w, ct_error *err) {
    int rc = -1;
    if (w->failed) {
        ct_fail(err, "%s: an earlier write failed", w->file.path);
    } else if (w->next != w->n_tensors) {
        ct_fail(err, "%s: only %d of %d tensors were written (next: '%s')", w->file.path,
                w->next, w->n_tensors, w->names[w->next]);
    } else {
        rc = atomic_file_commit(&w->file, err);
    }
    st_writer_abort(w); /* frees; the commit already happened or the file is removed */
    return rc;
}

/* The whole-file writer is the streaming one fed from the descriptors: one header builder,
 * one write path. */
int st_write(const char *path, const st_write_tensor *tensors, int n_tensors,
             const char *const *metadata_keys, const char *const *metadata_values,
             int n_metadata, ct_error *err) {
    st_writer *w;
    if (writer_open(&w, path, tensors, n_tensors, metadata_keys, metadata_values, n_metadata, true,
                    err))
        return -1;
    for (int i = st_writer_next(w); i >= 0; i = st_writer_next(w)) {
        if (st_writer_put(w, tensors[i].name, tensors[i].data, err)) {
            st_writer_abort(w);
            return -1;
        }
    }
    return st_writer_finish(w, err);
}

/* ---- a model folder, one file or shards ---- */

/* The split of huggingface_hub's split_state_dict_into_shards: greedy in state-dict order;
 * a tensor larger than the limit gets a shard of its own, placed before the shard that is
 * still filling. shard_of[i] gets the 0-based shard of tensor i; returns the shard count. */
static int plan_shards(const uint64_t *nbytes, int n, uint64_t limit, int *shard_of) {
    int n_shards = 0, start = 0;
    uint64_t filling = 0;
    bool open = false;
    for (int i = 0; i < n; i++) {
        if (nbytes[i] > limit) {
            shard_of[i] = n_shards++;
            continue;
        }
        if (open && filling + nbytes[i] > limit) {
            for (int j = start; j < i; j++)
                if (shard_of[j] < 0) shard_of[j] = n_shards;
            n_shards++;
            filling = 0;
            start = i;
        }
        shard_of[i] = -1;
        open = true;
        filling += nbytes[i];
    }
    if (open) {
        for (int j = start; j < n; j++)
            if (shard_of[j] < 0) shard_of[j] = n_shards;
        n_shards++;
    }
    return n_shards;
}

typedef struct index_entry {
    const char *name;
    int shard;
} index_entry;

static int index_entry_compare(const void *a, const void *b) {
    return strcmp(((const index_entry *)a)->name, ((const index_entry *)b)->name);
}

static int write_index(const char *path, const st_write_tensor *tensors, const int *shard_of,
                       int n, int n_shards, uint64_t total, ct_error *err) {
    index_entry *sorted = malloc((size_t)(n > 0 ? n : 1) * sizeof *sorted);
    if (!sorted) return ct_fail(err, "%s: out of memory", path);
    for (int i = 0; i < n; i++) sorted[i] = (index_entry){tensors[i].name, shard_of[i]};
    qsort(sorted, (size_t)n, sizeof *sorted, index_entry_compare);
    /* As transformers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n". */
    textbuf b = {0};
    textbuf_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {",
                   (unsigned long long)total);
    for (int i = 0; i < n; i++) {
        textbuf_puts(&b, i ? ",\n    " : "\n    ");
        textbuf_json_string(&b, sorted[i].name);
        textbuf_printf(&b, ": \"model-%05d-of-%05d.safetensors\"", sorted[i].shard + 1, n_shards);
    }
    textbuf_puts(&b, n ? "\n  }\n}\n" : "}\n}\n");
    free(sorted);
    int rc = b.failed ? ct_fail(err, "%s: out of memory", path)
                      : write_file_atomic(path, b.data, b.len, err);
    textbuf_free(&b);
    return rc;
}

int st_write_model(const char *dir, const st_write_tensor *tensors, int n_tensors,
                   long long max_shard_bytes, st_fetch_fn fetch, void *ctx, ct_error *err) {
    if (n_tensors <= 0) return ct_fail(err, "%s: no tensors to write", dir);
    if (max_shard_bytes <= 0)
        return ct_fail(err, "%s: max shard size %lld must be positive", dir, max_shard_bytes);
    size_t n = (size_t)n_tensors;
    uint64_t *nbytes = calloc(n, sizeof *nbytes);
    int *shard_of = calloc(n, sizeof *shard_of);
    int *local = calloc(n, sizeof *local); /* shard-local descriptor -> global index */
    st_write_tensor *subset = calloc(n, sizeof *subset);
    void *buffer = NULL;
    int rc = -1;
    if (!nbytes || !shard_of || !local || !subset) {
        ct_fail(err, "%s: out of memory", dir);
        goto done;
    }
    uint64_t total = 0, largest = 1;
    for (int i = 0; i < n_tensors; i++) {
        if (check_write_tensor(&tensors[i], false, &nbytes[i], dir, err) != 0) goto done;
        total += nbytes[i];
        if (nbytes[i] > largest) largest = nbytes[i];
    }
    if (!(buffer = malloc((size_t)largest))) {
        ct_fail(err, "%s: out of memory for a %llu-byte tensor", dir,
                (unsigned long long)largest);
        goto done;
    }
    int n_shards = plan_shards(nbytes, n_tensors, (uint64_t)max_shard_bytes, shard_of);
    const char *meta_key = "format", *meta_value = "pt";
    for (int s = 0; s < n_shards; s++) {
        int count = 0;
        for (int i = 0; i < n_tensors; i++)
            if (shard_of[i] == s) {
                local[count] = i;
                subset[count] = tensors[i];
                subset[count++].data = NULL;
            }
        char name[64], path[4096];
        if (n_shards == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        if (path_join(path, sizeof path, dir, name, err)) goto done;
        st_writer *w;
        if (st_writer_open(&w, path, subset, count, &meta_key, &meta_value, 1, err)) goto done;
        for (int next; (next = st_writer_next(w)) >= 0;) {
            int i = local[next];
            if (fetch(ctx, i, buffer, err) != 0 ||
                st_writer_put(w, tensors[i].name, buffer, err) != 0) {
                ct_error_prefix(err, "%s", path);
                st_writer_abort(w);
                goto done;
            }
        }
        if (st_writer_finish(w, err)) goto done;
    }
    if (n_shards > 1) {
        char path[4096];
        if (path_join(path, sizeof path, dir, "model.safetensors.index.json", err) ||
            write_index(path, tensors, shard_of, n_tensors, n_shards, total, err))
            goto done;
    }
    rc = 0;
done:
    free(buffer);
    free(subset);
    free(local);
    free(shard_of);
    free(nbytes);
    return rc;
}
