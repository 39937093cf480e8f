/* safetensors reader (mmap + full validation), the dtype table and model-folder opening; the
 * writer and the fp16/bf16 conversions live in safetensors_write.c. Rules and layout:
 * shared/spec/INTEROP.md; user-facing summary: docs/safetensors.md. */
#include "train/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/fsutil.h"
#include "train/jsonfile.h"
#include "train/safetensors_internal.h"
#include "train/utf8.h"

/* Bits per element and the rank the reference writer sorts by: its Rust Dtype enum order
 * (roughly alignment; checked against safetensors 0.8 output by the fixture test). */
static const struct {
    const char *name;
    int bits;
    int sort_rank;
} dtype_table[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 8, 0},          [ST_F4] = {"F4", 4, 1},
    [ST_F6_E2M3] = {"F6_E2M3", 6, 2},    [ST_F6_E3M2] = {"F6_E3M2", 6, 3},
    [ST_U8] = {"U8", 8, 4},              [ST_I8] = {"I8", 8, 5},
    [ST_F8_E5M2] = {"F8_E5M2", 8, 6},    [ST_F8_E4M3] = {"F8_E4M3", 8, 7},
    [ST_F8_E8M0] = {"F8_E8M0", 8, 8},    [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, 9},
    [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, 10}, [ST_I16] = {"I16", 16, 11},
    [ST_U16] = {"U16", 16, 12},          [ST_F16] = {"F16", 16, 13},
    [ST_BF16] = {"BF16", 16, 14},        [ST_I32] = {"I32", 32, 15},
    [ST_U32] = {"U32", 32, 16},          [ST_F32] = {"F32", 32, 17},
    [ST_C64] = {"C64", 64, 18},          [ST_F64] = {"F64", 64, 19},
    [ST_I64] = {"I64", 64, 20},          [ST_U64] = {"U64", 64, 21},
};

const char *st_dtype_name(st_dtype dtype) {
    return (unsigned)dtype < ST_DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

int st_dtype_from_name(const char *name, st_dtype *out) {
    for (int i = 0; name && i < ST_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (st_dtype)i;
            return 0;
        }
    }
    return -1;
}

int st_dtype_bits(st_dtype dtype) {
    return (unsigned)dtype < ST_DTYPE_COUNT ? dtype_table[dtype].bits : 0;
}

int st_dtype_sort_rank(st_dtype dtype) { return dtype_table[dtype].sort_rank; }

int st_read_f32(const st_tensor *tensor, float *out, ct_error *err) {
    const unsigned char *src = tensor->data;
    switch (tensor->dtype) {
    case ST_F32:
        if (tensor->numel) memcpy(out, src, tensor->numel * sizeof(float));
        return 0;
    case ST_BF16:
    case ST_F16:
        for (uint64_t i = 0; i < tensor->numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h); /* the data may be unaligned */
            out[i] = tensor->dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
        }
        return 0;
    default:
        return ct_fail(err, "tensor '%s' has dtype %s; only F32, BF16 and F16 convert to fp32",
                       tensor->name, st_dtype_name(tensor->dtype));
    }
}

/* ---- reader ---- */

static int fail_at(ct_error *err, const char *path, uint64_t byte, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(ct_error *err, const char *path, uint64_t byte, const char *fmt, ...) {
    char problem[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    return ct_fail(err, "%s: byte %llu: %s", path, (unsigned long long)byte, problem);
}

static int json_to_u64(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > ST_MAX_EXACT_INT || v != (double)(uint64_t)v) return -1;
    *out = (uint64_t)v;
    return 0;
}

int st_tensor_size(st_dtype dtype, int ndim, const int64_t *shape, uint64_t *numel,
                   uint64_t *nbytes) {
    uint64_t n = 1, bits = (uint64_t)dtype_table[dtype].bits;
    *numel = *nbytes = 0;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) return ST_SIZE_OK;
    for (int d = 0; d < ndim; d++) {
        if (n > UINT64_MAX / (uint64_t)shape[d]) return ST_SIZE_OVERFLOW;
        n *= (uint64_t)shape[d];
    }
    if (n > UINT64_MAX / bits) return ST_SIZE_OVERFLOW;
    *numel = n;
    if (n * bits % 8 != 0) return ST_SIZE_PARTIAL_BYTE;
    *nbytes = n * bits / 8;
    return ST_SIZE_OK;
}

void st_shape_text(const st_tensor *t, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < t->ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? ", " : "",
                                 (long long)t->shape[d]);
    if (used < size) snprintf(buf + used, size - used, "]");
}

/* Fills t from one header entry; begin/end are the tensor's data_offsets. */
static int parse_tensor_entry(const cJSON *entry, st_tensor *t, uint64_t *begin, uint64_t *end,
                              const char *path, ct_error *err) {
    const char *name = t->name;
    if (!cJSON_IsObject(entry))
        return fail_at(err, path, 8, "tensor '%s': entry is not a JSON object", name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!dtype) return fail_at(err, path, 8, "tensor '%s': missing \"dtype\"", name);
    if (!cJSON_IsString(dtype) || st_dtype_from_name(dtype->valuestring, &t->dtype) != 0)
        return fail_at(err, path, 8, "tensor '%s': invalid dtype %s%s%s (expected one of BOOL, "
                       "U8, I8, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64, C64, F8_*, F4, "
                       "F6_*)", name, cJSON_IsString(dtype) ? "'" : "",
                       cJSON_IsString(dtype) ? dtype->valuestring : "(not a string)",
                       cJSON_IsString(dtype) ? "'" : "");
    if (!shape) return fail_at(err, path, 8, "tensor '%s': missing \"shape\"", name);
    if (!cJSON_IsArray(shape))
        return fail_at(err, path, 8, "tensor '%s': \"shape\" is not an array", name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return fail_at(err, path, 8, "tensor '%s': shape has %d dimensions, at most %d supported",
                       name, ndim, ST_MAX_DIMS);
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        uint64_t dim;
        if (json_to_u64(cJSON_GetArrayItem(shape, d), &dim) != 0)
            return fail_at(err, path, 8, "tensor '%s': shape[%d] is not a non-negative integer "
                           "(at most 2^53)", name, d);
        t->shape[d] = (int64_t)dim;
    }
    if (!offsets) return fail_at(err, path, 8, "tensor '%s': missing \"data_offsets\"", name);
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_to_u64(cJSON_GetArrayItem(offsets, 0), begin) != 0 ||
        json_to_u64(cJSON_GetArrayItem(offsets, 1), end) != 0)
        return fail_at(err, path, 8, "tensor '%s': \"data_offsets\" must be [begin, end] with "
                       "non-negative integers", name);
    if (*end < *begin)
        return fail_at(err, path, 8, "tensor '%s': data_offsets [%llu, %llu] end before they "
                       "begin", name, (unsigned long long)*begin, (unsigned long long)*end);
    char shape_buf[256];
    st_shape_text(t, shape_buf, sizeof shape_buf);
    int size = st_tensor_size(t->dtype, ndim, t->shape, &t->numel, &t->nbytes);
    if (size == ST_SIZE_OVERFLOW)
        return fail_at(err, path, 8, "tensor '%s': shape %s of %s overflows 64-bit size "
                       "arithmetic", name, shape_buf, st_dtype_name(t->dtype));
    if (size == ST_SIZE_PARTIAL_BYTE)
        return fail_at(err, path, 8, "tensor '%s': shape %s of %s is %llu bits, not a whole "
                       "number of bytes", name, shape_buf, st_dtype_name(t->dtype),
                       (unsigned long long)(t->numel * (uint64_t)st_dtype_bits(t->dtype)));
    if (*end - *begin != t->nbytes)
        return fail_at(err, path, 8, "tensor '%s': data_offsets [%llu, %llu] hold %llu bytes "
                       "but shape %s of %s needs %llu", name, (unsigned long long)*begin,
                       (unsigned long long)*end, (unsigned long long)(*end - *begin), shape_buf,
                       st_dtype_name(t->dtype), (unsigned long long)t->nbytes);
    return 0;
}

static int parse_metadata(const cJSON *meta, st_file *file, ct_error *err) {
    if (cJSON_IsNull(meta)) return 0; /* the reference reader accepts null */
    if (!cJSON_IsObject(meta))
        return fail_at(err, file->path, 8, "\"__metadata__\" is not a JSON object");
    int n = cJSON_GetArraySize(meta);
    file->metadata_keys = calloc((size_t)n + 1, sizeof(char *));
    file->metadata_values = calloc((size_t)n + 1, sizeof(char *));
    if (!file->metadata_keys || !file->metadata_values) return ct_fail(err, "out of memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, meta) {
        if (!cJSON_IsString(item))
            return fail_at(err, file->path, 8, "\"__metadata__\" value of '%s' is not a string",
                           item->string);
        file->metadata_keys[file->n_metadata] = strdup(item->string);
        file->metadata_values[file->n_metadata] = strdup(item->valuestring);
        file->n_metadata++;
        if (!file->metadata_keys[file->n_metadata - 1] ||
            !file->metadata_values[file->n_metadata - 1])
            return ct_fail(err, "out of memory");
    }
    return 0;
}

typedef struct span {
    uint64_t begin, end;
    int index;
} span;

static int span_compare(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

typedef struct named_index {
    const char *name;
    int index;
} named_index;

static int named_index_compare(const void *a, const void *b) {
    return strcmp(((const named_index *)a)->name, ((const named_index *)b)->name);
}

static int build_name_order(st_file *file, ct_error *err) {
    size_t n = (size_t)file->n_tensors;
    named_index *order = malloc(sizeof *order * (n ? n : 1));
    file->name_order = malloc(sizeof(int) * (n ? n : 1));
    if (!order || !file->name_order) {
        free(order);
        return ct_fail(err, "out of memory");
    }
    for (size_t i = 0; i < n; i++) order[i] = (named_index){file->tensors[i].name, (int)i};
    qsort(order, n, sizeof *order, named_index_compare);
    int status = 0;
    for (size_t i = 0; i < n; i++) {
        file->name_order[i] = order[i].index;
        if (i && status == 0 && strcmp(order[i].name, order[i - 1].name) == 0)
            status = fail_at(err, file->path, 8, "tensor '%s' appears twice in the header",
                             order[i].name);
    }
    free(order);
    return status;
}

/* Everything after the mapping: header JSON, entries, data layout. */
static int parse_and_validate(st_file *file, uint64_t header_len, ct_error *err) {
    const char *path = file->path;
    const unsigned char *header = (const unsigned char *)file->map + 8;
    size_t bad = utf8_invalid_at(header, (size_t)header_len);
    if (bad < header_len)
        return fail_at(err, path, 8 + bad, "header is not valid UTF-8");
    for (size_t i = 0; i < header_len; i++)
        if (header[i] < 0x20 && header[i] != ' ' && header[i] != '\t' && header[i] != '\n' &&
            header[i] != '\r')
            return fail_at(err, path, 8 + i, "header is not valid JSON: control character 0x%02x",
                           header[i]);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)header, (size_t)header_len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - (const char *)header) : 0;
        return fail_at(err, path, 8 + at, "header is not valid JSON");
    }
    int status = -1;
    for (const char *p = end; p < (const char *)header + header_len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            fail_at(err, path, 8 + (uint64_t)(p - (const char *)header),
                    "header is not valid JSON: text after the closing brace");
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        fail_at(err, path, 8, "header is not a JSON object");
        goto done;
    }
    int n = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) if (strcmp(item->string, "__metadata__") != 0) n++;
    file->tensors = calloc((size_t)(n > 0 ? n : 1), sizeof(st_tensor));
    span *spans = calloc((size_t)(n > 0 ? n : 1), sizeof(span));
    if (!file->tensors || !spans) {
        free(spans);
        ct_fail(err, "out of memory");
        goto done;
    }
    /* A repeated key: cJSON keeps both and finds the first, the reference keeps the last
     * (__metadata__) or refuses the file (a tensor entry's fields); here it is an error. */
    bool seen_metadata = false;
    char dup[256];
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (seen_metadata) {
                fail_at(err, path, 8, "\"__metadata__\" appears twice in the header");
                goto done_spans;
            }
            seen_metadata = true;
            if (jsonfile_duplicate_key(item, dup, sizeof dup) != 0) {
                fail_at(err, path, 8, "\"__metadata__\" key '%s' appears twice", dup);
                goto done_spans;
            }
            if (parse_metadata(item, file, err) != 0) goto done_spans;
            continue;
        }
        if (jsonfile_duplicate_key(item, dup, sizeof dup) != 0) {
            fail_at(err, path, 8, "tensor '%s': key '%s' appears twice", item->string, dup);
            goto done_spans;
        }
        st_tensor *t = &file->tensors[file->n_tensors];
        t->name = strdup(item->string);
        if (!t->name) {
            ct_fail(err, "out of memory");
            goto done_spans;
        }
        file->n_tensors++;
        span *s = &spans[file->n_tensors - 1];
        s->index = file->n_tensors - 1;
        if (parse_tensor_entry(item, t, &s->begin, &s->end, path, err) != 0) goto done_spans;
    }
    if (build_name_order(file, err) != 0) goto done_spans;
    qsort(spans, (size_t)n, sizeof(span), span_compare);
    uint64_t data_start = 8 + header_len, expected = 0;
    for (int i = 0; i < n; i++) {
        const char *name = file->tensors[spans[i].index].name;
        if (spans[i].begin != expected) {
            if (i == 0)
                fail_at(err, path, data_start, "first tensor '%s' starts at data offset %llu; the "
                        "data must start at offset 0", name, (unsigned long long)spans[i].begin);
            else if (spans[i].begin > expected)
                fail_at(err, path, data_start + expected, "gap of %llu bytes between tensor '%s' "
                        "(ends at offset %llu) and tensor '%s' (starts at offset %llu)",
                        (unsigned long long)(spans[i].begin - expected),
                        file->tensors[spans[i - 1].index].name, (unsigned long long)expected,
                        name, (unsigned long long)spans[i].begin);
            else
                fail_at(err, path, data_start + spans[i].begin, "tensor '%s' data_offsets "
                        "[%llu, %llu] overlap tensor '%s' which ends at offset %llu", name,
                        (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end,
                        file->tensors[spans[i - 1].index].name, (unsigned long long)expected);
            goto done_spans;
        }
        expected = spans[i].end;
    }
    uint64_t available = (uint64_t)file->map_size - data_start;
    if (expected > available) {
        fail_at(err, path, data_start, "tensor data needs %llu bytes but the file has %llu after "
                "the header", (unsigned long long)expected, (unsigned long long)available);
        goto done_spans;
    }
    if (expected < available) {
        fail_at(err, path, data_start + expected, "%llu trailing bytes after the last tensor",
                (unsigned long long)(available - expected));
        goto done_spans;
    }
    for (int i = 0; i < n; i++)
        file->tensors[spans[i].index].data = (const unsigned char *)file->map + data_start +
                                             spans[i].begin;
    status = 0;
done_spans:
    free(spans);
done:
    cJSON_Delete(root);
    return status;
}

int st_open(st_file *file, const char *path, ct_error *err) {
    memset(file, 0, sizeof *file);
    file->path = strdup(path);
    if (!file->path) return ct_fail(err, "out of memory");
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        ct_fail(err, "%s: cannot open: %s", path, strerror(errno));
        st_close(file);
        return -1;
    }
    struct stat info;
    int status = -1;
    if (fstat(fd, &info) != 0) {
        ct_fail(err, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(info.st_mode)) {
        ct_fail(err, "%s: not a regular file", path);
    } else if (info.st_size < 8) {
        fail_at(err, path, 0, "file is %lld bytes, too short for the 8-byte header length",
                (long long)info.st_size);
    } else {
        void *map = mmap(NULL, (size_t)info.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            ct_fail(err, "%s: cannot map: %s", path, strerror(errno));
        } else {
            file->map = map;
            file->map_size = (size_t)info.st_size;
            status = 0;
        }
    }
    close(fd); /* the mapping stays valid without the descriptor */
    if (status == 0) {
        const unsigned char *p = file->map;
        uint64_t header_len = 0;
        for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | p[i];
        if (header_len > ST_MAX_HEADER)
            status = fail_at(err, path, 0, "header length %llu exceeds the limit of %llu bytes",
                             (unsigned long long)header_len, ST_MAX_HEADER);
        else if (header_len > file->map_size - 8)
            status = fail_at(err, path, 0, "header length %llu exceeds file size %zu (needs "
                             "%llu bytes)", (unsigned long long)header_len, file->map_size,
                             (unsigned long long)(header_len + 8));
        else
            status = parse_and_validate(file, header_len, err);
    }
    if (status != 0) st_close(file);
    return status;
}

void st_close(st_file *file) {
    if (!file) return;
    if (file->map) munmap(file->map, file->map_size);
    for (int i = 0; i < file->n_tensors; i++) free(file->tensors[i].name);
    for (int i = 0; i < file->n_metadata; i++) {
        free(file->metadata_keys[i]);
        free(file->metadata_values[i]);
    }
    free(file->tensors);
    free(file->metadata_keys);
    free(file->metadata_values);
    free(file->name_order);
    free(file->path);
    memset(file, 0, sizeof *file);
}

const st_tensor *st_find(const st_file *file, const char *name) {
    int lo = 0, hi = file->n_tensors - 1;
    if (!file->name_order) return NULL;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor *t = &file->tensors[file->name_order[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const st_file *file, const char *key) {
    for (int i = 0; i < file->n_metadata; i++)
        if (strcmp(file->metadata_keys[i], key) == 0) return file->metadata_values[i];
    return NULL;
}

/* ---- a model folder's weights ---- */

static int string_ptr_compare(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int open_sharded(st_model_files *files, const char *dir, const char *index_path,
                        ct_error *err) {
    cJSON *root;
    if (jsonfile_read(index_path, &root, err) != 0) return -1;
    int status = -1;
    const char **shards = NULL;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int n = cJSON_GetArraySize(map);
    if (!cJSON_IsObject(map) || n == 0) {
        ct_fail(err, "%s: expected a non-empty \"weight_map\" object", index_path);
        goto done;
    }
    shards = calloc((size_t)n, sizeof *shards);
    files->files = calloc((size_t)n, sizeof(st_file));
    if (!shards || !files->files) {
        ct_fail(err, "out of memory");
        goto done;
    }
    /* Distinct shard names, opened in file-name order so shard 1 comes first. Sorted, then
     * deduplicated: a scan per entry would be quadratic in a weight_map of 100k names. */
    int n_shards = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, map) {
        const char *shard = cJSON_IsString(entry) ? entry->valuestring : NULL;
        if (!shard || !shard[0] || strchr(shard, '/') || !strcmp(shard, ".") || !strcmp(shard, "..")) {
            ct_fail(err, "%s: tensor '%s' maps to %s; expected a file name in %s", index_path,
                    entry->string, shard ? shard : "a non-string", dir);
            goto done;
        }
        shards[n_shards++] = shard;
    }
    qsort(shards, (size_t)n_shards, sizeof *shards, string_ptr_compare);
    int n_distinct = 0;
    for (int k = 0; k < n_shards; k++)
        if (n_distinct == 0 || strcmp(shards[n_distinct - 1], shards[k]) != 0) shards[n_distinct++] = shards[k];
    n_shards = n_distinct;
    for (int k = 0; k < n_shards; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, shards[k]);
        if (st_open(&files->files[k], path, err) != 0) {
            ct_error_prefix(err, "%s: shard '%s'", index_path, shards[k]);
            goto done;
        }
        files->n_files++;
    }
    cJSON_ArrayForEach(entry, map) {
        const char **shard = bsearch(&entry->valuestring, shards, (size_t)n_shards,
                                     sizeof *shards, string_ptr_compare);
        if (!st_find(&files->files[shard - shards], entry->string)) {
            ct_fail(err, "%s: tensor '%s' is mapped to shard '%s', which does not contain it",
                    index_path, entry->string, entry->valuestring);
            goto done;
        }
    }
    status = 0;
done:
    cJSON_Delete(root);
    free(shards);
    return status;
}

int st_model_open(st_model_files *files, const char *dir, ct_error *err) {
    memset(files, 0, sizeof *files);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int status;
    if (path_exists(path)) {
        files->files = calloc(1, sizeof(st_file));
        if (!files->files) return ct_fail(err, "out of memory");
        status = st_open(&files->files[0], path, err);
        if (status == 0) files->n_files = 1;
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (!path_exists(path))
            return ct_fail(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
        status = open_sharded(files, dir, path, err);
    }
    if (status != 0) st_model_close(files);
    return status;
}

void st_model_close(st_model_files *files) {
    if (!files) return;
    for (int i = 0; i < files->n_files; i++) st_close(&files->files[i]);
    free(files->files);
    memset(files, 0, sizeof *files);
}

const st_tensor *st_model_find(const st_model_files *files, const char *name) {
    for (int i = 0; i < files->n_files; i++) {
        const st_tensor *t = st_find(&files->files[i], name);
        if (t) return t;
    }
    return NULL;
}
