/* safetensors writer (the reference layout, written durably through fsutil's atomic_file) and
 * the fp32 <-> bf16/fp16 conversions. Layout rules: shared/spec/INTEROP.md. */
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

static int check_write_tensor(const st_write_tensor *t, uint64_t *nbytes, const char *path,
                              ct_error *err) {
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
    if (*nbytes && !t->data) return ct_fail(err, "%s: tensor '%s' has no data", path, t->name);
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
                              write_entry *entries, ct_error *err) {
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
        if (check_write_tensor(&tensors[i], &entries[i].nbytes, path, err) != 0) return -1;
    }
    qsort(entries, (size_t)n_tensors, sizeof *entries, write_entry_compare);
    for (int i = 1; i < n_tensors; i++)
        if (strcmp(entries[i].tensor->name, entries[i - 1].tensor->name) == 0)
            return ct_fail(err, "%s: tensor '%s' given twice", path, entries[i].tensor->name);
    return 0;
}

int st_write(const char *path, const st_write_tensor *tensors, int n_tensors,
             const char *const *metadata_keys, const char *const *metadata_values,
             int n_metadata, ct_error *err) {
    if (n_tensors < 0 || n_metadata < 0) return ct_fail(err, "%s: negative count", path);
    write_entry *entries = calloc((size_t)(n_tensors > 0 ? n_tensors : 1), sizeof *entries);
    if (!entries) return ct_fail(err, "out of memory");
    textbuf header = {0};
    int status = -1;
    if (check_write_inputs(path, tensors, n_tensors, metadata_keys, metadata_values, n_metadata,
                           entries, err) != 0)
        goto done;
    if (build_header(&header, entries, n_tensors, metadata_keys, metadata_values, n_metadata)) {
        ct_fail(err, "out of memory");
        goto done;
    }
    if (header.len > ST_MAX_HEADER) {
        ct_fail(err, "%s: header of %zu bytes exceeds the %llu-byte limit", path, header.len,
                ST_MAX_HEADER);
        goto done;
    }
    unsigned char length[8];
    for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
    atomic_file file;
    if (atomic_file_open(&file, path, err) || atomic_file_write(&file, length, 8, err) ||
        atomic_file_write(&file, header.data, header.len, err))
        goto done;
    for (int i = 0; i < n_tensors; i++)
        if (atomic_file_write(&file, entries[i].tensor->data, entries[i].nbytes, err)) goto done;
    status = atomic_file_commit(&file, err);
done:
    textbuf_free(&header);
    free(entries);
    return status;
}
