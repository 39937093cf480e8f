/* st_roundtrip: ctune's side of tests/interop_safetensors.sh, checked against the
 * `safetensors` library by scripts/interop_safetensors.py.
 *
 *   st_roundtrip dump FILE          reads FILE with st_open and prints one JSON object: the
 *                                   metadata and, per tensor in header order, name, dtype,
 *                                   shape, its bytes in hex and its values as text (exact:
 *                                   %.9g for F32/F16/BF16 through st_read_f32, %.17g for F64,
 *                                   integers in decimal). On a refused file: exit 1, the
 *                                   error on stderr.
 *   st_roundtrip write A B          writes the same tensors (every dtype, empty tensors,
 *                                   scalars, awkward names, many small tensors, metadata)
 *                                   with st_write into A and with the streaming st_writer into
 *                                   B, and prints the manifest (what was asked, not what was
 *                                   written): the Python side regenerates the data from
 *                                   the formulas below and checks what the library loads. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/safetensors.h"

static void print_json_string(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static void print_hex(const unsigned char *data, uint64_t n) {
    static const char digits[] = "0123456789abcdef";
    putchar('"');
    for (uint64_t i = 0; i < n; i++) {
        putchar(digits[data[i] >> 4]);
        putchar(digits[data[i] & 15]);
    }
    putchar('"');
}

/* NaN prints as "nan" whatever its sign: Python's %-formatting drops the sign. */
static void print_double(double v, int digits) {
    if (isnan(v)) printf("\"nan\"");
    else printf("\"%.*g\"", digits, v);
}

/* Values of integer and float tensors, read from the little-endian bytes independently of
 * st_read_f32 (except for the 16-bit floats, whose conversion is what we check). */
static int print_values(const st_tensor *t) {
    const unsigned char *p = t->data;
    if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
        float *out = malloc((t->numel ? t->numel : 1) * sizeof *out);
        ct_error err = {{0}};
        if (!out || st_read_f32(t, out, &err) != 0) {
            fprintf(stderr, "st_roundtrip: %s\n", out ? err.msg : "out of memory");
            free(out);
            return -1;
        }
        for (uint64_t i = 0; i < t->numel; i++) {
            if (i) putchar(',');
            print_double(out[i], 9);
        }
        free(out);
        return 0;
    }
    for (uint64_t i = 0; i < t->numel; i++) {
        if (i) putchar(',');
        switch (t->dtype) {
        case ST_F64: {
            double v;
            memcpy(&v, p + 8 * i, 8);
            print_double(v, 17);
            break;
        }
        case ST_BOOL: case ST_U8: printf("\"%u\"", p[i]); break;
        case ST_I8: printf("\"%d\"", (int8_t)p[i]); break;
#define INT_CASE(tag, type, fmt, cast)               \
        case tag: {                                  \
            type v;                                  \
            memcpy(&v, p + sizeof v * i, sizeof v);  \
            printf("\"" fmt "\"", (cast)v);          \
            break;                                   \
        }
        INT_CASE(ST_I16, int16_t, "%d", int)
        INT_CASE(ST_U16, uint16_t, "%u", unsigned)
        INT_CASE(ST_I32, int32_t, "%d", int)
        INT_CASE(ST_U32, uint32_t, "%u", unsigned)
        INT_CASE(ST_I64, int64_t, "%lld", long long)
        INT_CASE(ST_U64, uint64_t, "%llu", unsigned long long)
#undef INT_CASE
        default: break;
        }
    }
    return 0;
}

static int has_values(st_dtype d) {
    switch (d) {
    case ST_F64: case ST_F32: case ST_F16: case ST_BF16: case ST_BOOL: case ST_U8: case ST_I8:
    case ST_I16: case ST_U16: case ST_I32: case ST_U32: case ST_I64: case ST_U64:
        return 1;
    default:
        return 0;
    }
}

static int dump(const char *path) {
    st_file file;
    ct_error err = {{0}};
    if (st_open(&file, path, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int status = 0;
    printf("{\"metadata\":{");
    for (int i = 0; i < file.n_metadata; i++) {
        if (i) putchar(',');
        print_json_string(file.metadata_keys[i]);
        putchar(':');
        print_json_string(file.metadata_values[i]);
        /* st_metadata must find every key it listed. */
        if (st_metadata(&file, file.metadata_keys[i]) != file.metadata_values[i]) status = 1;
    }
    printf("},\"tensors\":[");
    for (int i = 0; i < file.n_tensors && status == 0; i++) {
        const st_tensor *t = &file.tensors[i];
        char shape_text[256];
        st_shape_text(t, shape_text, sizeof shape_text);
        printf("%s\n{\"name\":", i ? "," : "");
        print_json_string(t->name);
        printf(",\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? "," : "", (long long)t->shape[d]);
        printf("],\"shape_text\":\"%s\",\"numel\":%llu,\"nbytes\":%llu,\"found\":%s,\"hex\":",
               shape_text, (unsigned long long)t->numel, (unsigned long long)t->nbytes,
               st_find(&file, t->name) == t ? "true" : "false");
        print_hex(t->data, t->nbytes);
        printf(",\"values\":");
        if (has_values(t->dtype)) {
            putchar('[');
            if (print_values(t) != 0) status = 1;
            putchar(']');
        } else {
            printf("null");
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            /* Conversion to fp32 is refused for every other dtype, naming tensor and dtype. */
            float one;
            ct_error conv = {{0}};
            const st_tensor probe = {.name = t->name, .dtype = t->dtype, .numel = 0};
            printf(",\"f32_error\":");
            if (st_read_f32(&probe, &one, &conv) == 0) printf("null");
            else print_json_string(conv.msg);
        }
        putchar('}');
    }
    printf("\n],\"missing_found\":%s}\n", st_find(&file, "no such tensor") ? "true" : "false");
    st_close(&file);
    return status;
}

/* ---- write ---- */

/* The data formulas, mirrored in scripts/interop_safetensors.py:
 *   F64: (j*37 % 101 - 50) / 7.0 + k;  F32: (float)(j*37 % 101 - 50) / 7.0f + (float)k, with
 *   the first entries replaced by specials; F16/BF16: those F32 values converted
 *   (round-to-nearest-even, as torch's .to()); BOOL: byte bit; everything else: byte
 *   b of the buffer = (b*131 + k*17 + 7) mod 256. k is the tensor's index in the manifest. */
static const float f32_specials[] = {INFINITY, -INFINITY, NAN, -0.0f, 1e-8f, 65520.0f, 3.4e38f,
                                     6.0e-5f, 1.0f / 3.0f};
#define N_SPECIALS (int)(sizeof f32_specials / sizeof *f32_specials)

static float f32_value(uint64_t j, int k) {
    if (j < (uint64_t)N_SPECIALS) return f32_specials[j];
    return (float)((int)(j * 37 % 101) - 50) / 7.0f + (float)k;
}

static void fill(const st_write_tensor *t, int k, unsigned char *buf, uint64_t nbytes) {
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (uint64_t)t->shape[d];
    for (uint64_t j = 0; j < numel; j++) {
        if (t->dtype == ST_F64) {
            double v = (double)((int)(j * 37 % 101) - 50) / 7.0 + k;
            memcpy(buf + 8 * j, &v, 8);
        } else if (t->dtype == ST_F32) {
            float v = f32_value(j, k);
            memcpy(buf + 4 * j, &v, 4);
        } else if (t->dtype == ST_F16 || t->dtype == ST_BF16) {
            float v = f32_value(j, k);
            uint16_t h = t->dtype == ST_F16 ? st_f32_to_f16(v) : st_f32_to_bf16(v);
            memcpy(buf + 2 * j, &h, 2);
        }
    }
    if (t->dtype == ST_F64 || t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16)
        return;
    for (uint64_t b = 0; b < nbytes; b++) {
        unsigned v = (unsigned)((b * 131 + (uint64_t)k * 17 + 7) & 0xff);
        buf[b] = t->dtype == ST_BOOL ? (unsigned char)((v >> 3) & 1) : (unsigned char)v;
    }
}

#define MAX_WRITE 256

static int add(st_write_tensor *list, int *n, const char *name, st_dtype dtype, int ndim,
               const int64_t *shape) {
    if (*n >= MAX_WRITE) return -1;
    st_write_tensor *t = &list[(*n)++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    return 0;
}

static uint64_t byte_size(const st_write_tensor *t) {
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (uint64_t)t->shape[d];
    return numel * (uint64_t)st_dtype_bits(t->dtype) / 8;
}

static int write_files(const char *path_whole, const char *path_stream) {
    static char names[MAX_WRITE][64];
    st_write_tensor tensors[MAX_WRITE];
    int n = 0, status = 0;
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        int bits = st_dtype_bits((st_dtype)d);
        /* 4- and 6-bit types need an element count that fills whole bytes. */
        int64_t shape[2] = {bits == 4 ? 2 : bits == 6 ? 4 : 3, bits == 4 ? 6 : bits == 6 ? 4 : 5};
        snprintf(names[n], sizeof names[n], "t.%s", st_dtype_name((st_dtype)d));
        add(tensors, &n, names[n], (st_dtype)d, 2, shape);
    }
    const int64_t e1[] = {0, 4}, e2[] = {3, 0, 2}, e3[] = {0}, big[] = {64, 160}, one[] = {2};
    add(tensors, &n, "empty.f32", ST_F32, 2, e1);
    add(tensors, &n, "empty.bf16", ST_BF16, 3, e2);
    add(tensors, &n, "empty.i8", ST_I8, 1, e3);
    add(tensors, &n, "empty.f4", ST_F4, 1, e3);
    add(tensors, &n, "scalar.f64", ST_F64, 0, NULL);
    add(tensors, &n, "scalar.i32", ST_I32, 0, NULL);
    add(tensors, &n, "scalar.bool", ST_BOOL, 0, NULL);
    add(tensors, &n, "scalar.bf16", ST_BF16, 0, NULL);
    add(tensors, &n, "big.bf16", ST_BF16, 2, big);
    add(tensors, &n, "\xe5\x90\x8d\xe5\x89\x8d.weight", ST_F32, 1, one); /* 名前.weight */
    add(tensors, &n, "quote\"back\\slash/tab\t.x", ST_I16, 1, one);
    for (int i = 0; i < 150; i++) {
        snprintf(names[n], sizeof names[n], "model.layers.%d.mlp.w", i);
        add(tensors, &n, names[n], i % 3 == 0 ? ST_F32 : i % 3 == 1 ? ST_BF16 : ST_U8, 1, one);
    }
    const char *keys[] = {"description", "step", "empty", "json", "\xc3\xbcnicode key"};
    const char *values[] = {"\xc3\xbcn\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9 \"quoted\" \\ back\nslash",
                            "12", "", "{\"a\": [1, 2]}", "\xf0\x9f\xa6\x80"};
    const int n_metadata = 5;

    unsigned char **data = calloc((size_t)n, sizeof *data);
    if (!data) return 1;
    for (int k = 0; k < n; k++) {
        uint64_t size = byte_size(&tensors[k]);
        data[k] = malloc(size ? size : 1);
        if (!data[k]) status = 1;
        else fill(&tensors[k], k, data[k], size);
        tensors[k].data = data[k];
    }
    ct_error err = {{0}};
    if (status == 0 && st_write(path_whole, tensors, n, keys, values, n_metadata, &err) != 0) {
        fprintf(stderr, "st_roundtrip: st_write: %s\n", err.msg);
        status = 1;
    }
    /* The streaming writer gets descriptors without data, then each tensor when asked. */
    st_write_tensor described[MAX_WRITE];
    memcpy(described, tensors, (size_t)n * sizeof *tensors);
    for (int k = 0; k < n; k++) described[k].data = NULL;
    st_writer *writer = NULL;
    if (status == 0 &&
        st_writer_open(&writer, path_stream, described, n, keys, values, n_metadata, &err) != 0) {
        fprintf(stderr, "st_roundtrip: st_writer_open: %s\n", err.msg);
        status = 1;
    }
    for (int k; status == 0 && (k = st_writer_next(writer)) >= 0;) {
        if (st_writer_put(writer, described[k].name, data[k], &err) != 0) {
            fprintf(stderr, "st_roundtrip: st_writer_put: %s\n", err.msg);
            st_writer_abort(writer);
            status = 1;
        }
    }
    if (status == 0 && st_writer_finish(writer, &err) != 0) {
        fprintf(stderr, "st_roundtrip: st_writer_finish: %s\n", err.msg);
        status = 1;
    }
    if (status == 0) {
        printf("{\"metadata\":{");
        for (int i = 0; i < n_metadata; i++) {
            printf("%s", i ? "," : "");
            print_json_string(keys[i]);
            putchar(':');
            print_json_string(values[i]);
        }
        printf("},\"tensors\":[");
        for (int k = 0; k < n; k++) {
            printf("%s\n{\"k\":%d,\"name\":", k ? "," : "", k);
            print_json_string(tensors[k].name);
            printf(",\"dtype\":\"%s\",\"shape\":[", st_dtype_name(tensors[k].dtype));
            for (int d = 0; d < tensors[k].ndim; d++)
                printf("%s%lld", d ? "," : "", (long long)tensors[k].shape[d]);
            printf("]}");
        }
        printf("\n]}\n");
    }
    for (int k = 0; k < n; k++) free(data[k]);
    free(data);
    return status;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "dump") == 0) return dump(argv[2]);
    if (argc == 4 && strcmp(argv[1], "write") == 0) return write_files(argv[2], argv[3]);
    fprintf(stderr, "usage: st_roundtrip dump FILE | st_roundtrip write FILE STREAM_FILE\n");
    return 2;
}
