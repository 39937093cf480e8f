/* Tests for train/safetensors: round trips, every rejection rule of the reference reader,
 * files written by the Python safetensors library (tests/fixtures/safetensors, made by
 * scripts/gen_safetensors_fixtures.py with expected values from torch), byte-identical output,
 * sharded folders and fp16/bf16 rounding. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <sys/stat.h>

#include "tests/check.h"
#include "train/fsutil.h"
#include "train/safetensors.h"

static char tmp_dir[256];

static const char *tmp_path(const char *name, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", tmp_dir, name);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    if (size) fwrite(data, 1, size, f);
    fclose(f);
}

/* A file with an explicit header length field, header text and zeroed data. */
static void write_crafted_n(const char *path, uint64_t n, const char *header, size_t data_len) {
    size_t header_len = strlen(header);
    unsigned char *buf = calloc(1, 8 + header_len + data_len);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, header, header_len);
    write_bytes(path, buf, 8 + header_len + data_len);
    free(buf);
}

static void write_crafted(const char *path, const char *header, size_t data_len) {
    write_crafted_n(path, strlen(header), header, data_len);
}

static cJSON *load_json(const char *relative) {
    char path[1024], *text = NULL;
    size_t size = 0;
    ct_error err = {{0}};
    check_source_path(relative, path, sizeof path);
    if (read_file(path, &text, &size, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    return root;
}

static void expect_reject(const char *label, const char *path, const char *needle) {
    st_file file;
    ct_error err = {{0}};
    int rc = st_open(&file, path, &err);
    CHECK_MSG(rc == -1, "%s: st_open accepted the file", label);
    CHECK_CONTAINS(err.msg, needle);
    CHECK_CONTAINS(err.msg, path);
    CHECK(file.map == NULL && file.tensors == NULL);
    if (rc == 0) st_close(&file);
}

static void reject_header(const char *label, const char *header, size_t data_len,
                          const char *needle) {
    char path[512];
    tmp_path("crafted.safetensors", path, sizeof path);
    write_crafted(path, header, data_len);
    expect_reject(label, path, needle);
}

static void accept_header(const char *label, const char *header, size_t data_len, int n_tensors) {
    char path[512];
    tmp_path("crafted.safetensors", path, sizeof path);
    write_crafted(path, header, data_len);
    st_file file;
    ct_error err = {{0}};
    int rc = st_open(&file, path, &err);
    CHECK_MSG(rc == 0, "%s: %s", label, err.msg);
    if (rc == 0) {
        CHECK_MSG(file.n_tensors == n_tensors, "%s: %d tensors", label, file.n_tensors);
        st_close(&file);
    }
}

static void test_dtype_names(void) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        st_dtype d;
        CHECK(st_dtype_from_name(st_dtype_name((st_dtype)i), &d) == 0 && d == (st_dtype)i);
    }
    st_dtype d;
    CHECK(st_dtype_from_name("F33", &d) == -1);
    CHECK(st_dtype_bits(ST_BF16) == 16 && st_dtype_bits(ST_F4) == 4);
    CHECK(st_dtype_bits(ST_F6_E3M2) == 6 && st_dtype_bits(ST_C64) == 64);
    CHECK(st_dtype_bits(ST_BOOL) == 8 && st_dtype_bits(ST_F8_E8M0) == 8);
}

static void test_rejections(void) {
    char path[512];
    tmp_path("crafted.safetensors", path, sizeof path);
    write_bytes(path, "\x08\0\0\0\0", 5);
    expect_reject("short file", path, "byte 0: file is 5 bytes, too short");
    write_crafted_n(path, 100000001ULL, "{}      ", 0);
    expect_reject("header limit", path, "byte 0: header length 100000001 exceeds the limit");
    write_crafted_n(path, 100, "{}      ", 0);
    expect_reject("header beyond file", path, "byte 0: header length 100 exceeds file size 16");
    write_crafted_n(path, 0, "", 0);
    expect_reject("empty header", path, "byte 8: header is not valid JSON");

    reject_header("bad utf8", "{\"a\xff\":{}}", 0, "byte 11: header is not valid UTF-8");
    reject_header("overlong utf8", "{\"\xc0\xaf\":{}}", 0, "not valid UTF-8");
    reject_header("surrogate utf8", "{\"\xed\xa0\x80\":{}}", 0, "not valid UTF-8");
    reject_header("control char", "{\"a\x01\":{}}", 0, "control character");
    reject_header("not json", "{\"a\":", 0, "header is not valid JSON");
    reject_header("text after json", "{} x", 0, "byte 11: header is not valid JSON: text after");
    reject_header("not object", "[1,2]", 0, "byte 8: header is not a JSON object");
    reject_header("entry not object", "{\"a\":1}", 0, "tensor 'a': entry is not a JSON object");

    reject_header("missing dtype", "{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "byte 8: tensor 'x': missing \"dtype\"");
    reject_header("unknown dtype", "{\"x\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                  4, "tensor 'x': invalid dtype 'F33'");
    reject_header("dtype not string", "{\"x\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'x': invalid dtype (not a string)");
    reject_header("missing shape", "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                  "tensor 'x': missing \"shape\"");
    reject_header("shape not array", "{\"x\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}",
                  4, "\"shape\" is not an array");
    reject_header("negative dim", "{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
                  4, "shape[0] is not a non-negative integer");
    reject_header("fractional dim",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4,
                  "shape[1] is not a non-negative integer");
    reject_header("too many dims",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
                  4, "9 dimensions, at most 8");
    reject_header("missing offsets", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                  "tensor 'x': missing \"data_offsets\"");
    reject_header("three offsets",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4,
                  "\"data_offsets\" must be [begin, end]");
    reject_header("negative offset",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
                  "\"data_offsets\" must be [begin, end]");
    reject_header("end before begin",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
                  "data_offsets [4, 0] end before they begin");
    reject_header("numel overflow",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                  "\"data_offsets\":[0,4]}}", 4, "overflows 64-bit size arithmetic");
    reject_header("bits overflow",
                  "{\"x\":{\"dtype\":\"F64\",\"shape\":[9007199254740992,256],"
                  "\"data_offsets\":[0,4]}}", 4, "overflows 64-bit size arithmetic");
    reject_header("f4 odd count", "{\"x\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}",
                  2, "is 12 bits, not a whole number of bytes");
    reject_header("f6 count", "{\"x\":{\"dtype\":\"F6_E2M3\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                  1, "not a whole number of bytes");
    reject_header("size mismatch",
                  "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12,
                  "byte 8: tensor 'x': data_offsets [0, 12] hold 12 bytes but shape [2, 2] of F32 "
                  "needs 16");
    /* Header "{...}" below is 108 bytes long, so the data starts at byte 116. */
    const char *gap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
    CHECK(strlen(gap) == 108);
    reject_header("gap", gap, 12, "byte 120: gap of 4 bytes between tensor 'a'");
    reject_header("overlap",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  "tensor 'b' data_offsets [4, 8] overlap tensor 'a'");
    reject_header("first not at zero",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  "first tensor 'a' starts at data offset 4");
    reject_header("trailing bytes",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6,
                  "2 trailing bytes after the last tensor");
    reject_header("data beyond file",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                  "tensor data needs 8 bytes but the file has 4");
    reject_header("metadata value not string", "{\"__metadata__\":{\"format\":\"pt\",\"k\":1}}", 0,
                  "\"__metadata__\" value of 'k' is not a string");
    reject_header("metadata not object", "{\"__metadata__\":\"pt\"}", 0,
                  "\"__metadata__\" is not a JSON object");
    reject_header("duplicate tensor",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  "tensor 'a' appears twice");

    expect_reject("directory", tmp_dir, "not a regular file");
    tmp_path("missing.safetensors", path, sizeof path);
    expect_reject("missing file", path, "cannot open");

    /* Valid corner cases the reference accepts. */
    accept_header("empty header", "{}", 0, 0);
    accept_header("scalar", "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 1);
    accept_header("zero dims",
                  "{\"e\":{\"dtype\":\"BF16\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
                  "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, 3);
    accept_header("huge dim times zero",
                  "{\"e\":{\"dtype\":\"F64\",\"shape\":[9007199254740992,0,256],"
                  "\"data_offsets\":[0,0]}}", 0, 1);
    accept_header("metadata null and extra field",
                  " {\"__metadata__\":null,\"a\":{\"dtype\":\"I8\",\"shape\":[1],"
                  "\"data_offsets\":[0,1],\"extra\":[1.5]}}\n  ", 1, 1);
    accept_header("f4 and f6", "{\"a\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[0,3]},"
                  "\"b\":{\"dtype\":\"F6_E3M2\",\"shape\":[4],\"data_offsets\":[3,6]}}", 6, 2);
}

/* Every dtype, empty tensors and a scalar: written, read back, compared byte for byte. */
static void test_roundtrip(void) {
    st_write_tensor tensors[ST_DTYPE_COUNT + 3];
    unsigned char data[ST_DTYPE_COUNT + 3][64];
    int n = 0;
    for (int d = 0; d < ST_DTYPE_COUNT; d++, n++) {
        st_write_tensor *t = &tensors[n];
        int bits = st_dtype_bits((st_dtype)d);
        char *name = malloc(32);
        snprintf(name, 32, "t.%s", st_dtype_name((st_dtype)d));
        t->name = name;
        t->dtype = (st_dtype)d;
        t->ndim = 2;
        t->shape[0] = 2;
        t->shape[1] = bits == 6 ? 4 : 3; /* 6-bit types need a multiple of 4 elements */
        for (int i = 0; i < 64; i++) data[n][i] = (unsigned char)(i * 37 + d * 11 + 1);
        t->data = data[n];
    }
    const char *extra_names[3] = {"empty", "empty_2d", "scalar"};
    st_dtype extra_types[3] = {ST_F32, ST_BF16, ST_F64};
    int extra_ndim[3] = {1, 3, 0};
    for (int k = 0; k < 3; k++, n++) {
        st_write_tensor *t = &tensors[n];
        memset(t, 0, sizeof *t);
        t->name = strdup(extra_names[k]);
        t->dtype = extra_types[k];
        t->ndim = extra_ndim[k];
        if (k == 1) { t->shape[0] = 4; t->shape[1] = 0; t->shape[2] = 2; }
        for (int i = 0; i < 64; i++) data[n][i] = (unsigned char)(255 - i);
        t->data = k == 2 ? data[n] : NULL;
    }
    const char *keys[] = {"producer", "note"}, *values[] = {"ctune test", "\"quoted\"\n\xc3\xbc"};
    char path[512], tmp[600];
    tmp_path("roundtrip.safetensors", path, sizeof path);
    ct_error err = {{0}};
    CHECK_MSG(st_write(path, tensors, n, keys, values, 2, &err) == 0, "%s", err.msg);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!path_exists(tmp));
    st_file file;
    int rc = st_open(&file, path, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc != 0) return;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | ((unsigned char *)file.map)[i];
    CHECK(header_len % 8 == 0);
    CHECK(file.n_tensors == n);
    CHECK(file.n_metadata == 3);
    CHECK(st_metadata(&file, "format") && !strcmp(st_metadata(&file, "format"), "pt"));
    CHECK(st_metadata(&file, "note") && !strcmp(st_metadata(&file, "note"), values[1]));
    CHECK(st_metadata(&file, "producer") && !strcmp(st_metadata(&file, "producer"), values[0]));
    CHECK(st_metadata(&file, "absent") == NULL);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_find(&file, tensors[i].name);
        CHECK_MSG(t != NULL, "%s missing", tensors[i].name);
        if (!t) continue;
        CHECK(t->dtype == tensors[i].dtype && t->ndim == tensors[i].ndim);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] == tensors[i].shape[d]);
            numel *= (uint64_t)tensors[i].shape[d];
        }
        CHECK(t->numel == numel);
        CHECK(t->nbytes == numel * (uint64_t)st_dtype_bits(t->dtype) / 8);
        CHECK(t->nbytes == 0 || memcmp(t->data, tensors[i].data, t->nbytes) == 0);
    }
    /* Order: larger alignment first, so every 8-byte dtype precedes every 1-byte one. */
    for (int i = 1; i < file.n_tensors; i++) {
        int prev = st_dtype_bits(file.tensors[i - 1].dtype), cur = st_dtype_bits(file.tensors[i].dtype);
        CHECK_MSG(prev >= cur || (prev == 6 && cur == 8) || (prev == 4 && cur == 6) ||
                      (prev == 4 && cur == 8),
                  "%s before %s", file.tensors[i - 1].name, file.tensors[i].name);
    }
    st_close(&file);

    /* An explicit "format" is kept, not duplicated; overwriting replaces the old file. */
    const char *fkeys[] = {"format"}, *fvalues[] = {"pt"};
    CHECK(st_write(path, tensors, 1, fkeys, fvalues, 1, &err) == 0);
    CHECK(st_open(&file, path, &err) == 0 && file.n_metadata == 1 && file.n_tensors == 1);
    st_close(&file);

    /* Writer refusals. */
    st_write_tensor bad = tensors[0];
    bad.dtype = ST_F4;
    bad.ndim = 1;
    bad.shape[0] = 3;
    CHECK(st_write(path, &bad, 1, NULL, NULL, 0, &err) == -1);
    CHECK_CONTAINS(err.msg, "not a whole number of bytes");
    st_write_tensor twice[2] = {tensors[0], tensors[0]};
    CHECK(st_write(path, twice, 2, NULL, NULL, 0, &err) == -1);
    CHECK_CONTAINS(err.msg, "given twice");
    char missing_dir[600];
    snprintf(missing_dir, sizeof missing_dir, "%s/no/such/dir/x.safetensors", tmp_dir);
    CHECK(st_write(missing_dir, tensors, 1, NULL, NULL, 0, &err) == -1);
    CHECK_CONTAINS(err.msg, "cannot create");
    for (int i = 0; i < n; i++) free((char *)tensors[i].name);
}

static void hex_decode(const char *hex, unsigned char *out, size_t cap, size_t *len) {
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n && i < cap; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
    *len = n;
}

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* A Python-written file against the expectations the generator stored beside it. */
static void check_fixture(const char *file_rel, const char *expected_rel) {
    char path[1024];
    check_source_path(file_rel, path, sizeof path);
    cJSON *expected = load_json(expected_rel);
    CHECK_MSG(expected != NULL, "cannot load %s", expected_rel);
    if (!expected) return;
    st_file file;
    ct_error err = {{0}};
    int rc = st_open(&file, path, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc != 0) {
        cJSON_Delete(expected);
        return;
    }
    const cJSON *meta = cJSON_GetObjectItem(expected, "metadata");
    CHECK(file.n_metadata == cJSON_GetArraySize(meta));
    const cJSON *item;
    cJSON_ArrayForEach(item, meta) {
        const char *v = st_metadata(&file, item->string);
        CHECK_MSG(v && !strcmp(v, item->valuestring), "metadata %s", item->string);
    }
    const cJSON *tensors = cJSON_GetObjectItem(expected, "tensors");
    CHECK(file.n_tensors == cJSON_GetArraySize(tensors));
    cJSON_ArrayForEach(item, tensors) {
        const st_tensor *t = st_find(&file, item->string);
        CHECK_MSG(t != NULL, "%s: tensor '%s' not found", file_rel, item->string);
        if (!t) continue;
        CHECK_MSG(!strcmp(st_dtype_name(t->dtype), cJSON_GetObjectItem(item, "dtype")->valuestring),
                  "%s dtype %s", item->string, st_dtype_name(t->dtype));
        const cJSON *shape = cJSON_GetObjectItem(item, "shape");
        CHECK(t->ndim == cJSON_GetArraySize(shape));
        for (int d = 0; d < t->ndim && d < cJSON_GetArraySize(shape); d++)
            CHECK(t->shape[d] == (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble);
        unsigned char raw[256];
        size_t raw_len = 0;
        hex_decode(cJSON_GetObjectItem(item, "hex")->valuestring, raw, sizeof raw, &raw_len);
        CHECK_MSG(t->nbytes == raw_len && (raw_len == 0 || !memcmp(t->data, raw, raw_len)),
                  "%s: bytes differ", item->string);
        const cJSON *bits = cJSON_GetObjectItem(item, "f32_bits");
        if (bits) {
            float values[64];
            CHECK(t->numel <= 64 && st_read_f32(t, values, &err) == 0);
            CHECK(cJSON_GetArraySize(bits) == (int)t->numel);
            for (uint64_t i = 0; i < t->numel && i < 64; i++)
                CHECK_MSG(float_bits(values[i]) ==
                              (uint32_t)cJSON_GetArrayItem(bits, (int)i)->valuedouble,
                          "%s[%llu] = %g", item->string, (unsigned long long)i, values[i]);
        } else {
            float dummy[64];
            CHECK(st_read_f32(t, dummy, &err) == -1);
        }
    }
    st_close(&file);
    cJSON_Delete(expected);
}

static void test_python_fixtures(void) {
    check_fixture("tests/fixtures/safetensors/all_dtypes.safetensors",
                  "tests/fixtures/safetensors/all_dtypes.expected.json");
    check_fixture("tests/fixtures/safetensors/metadata.safetensors",
                  "tests/fixtures/safetensors/metadata.expected.json");
}

/* The tensors of the Python-written file, handed to st_write in reverse order, must come out
 * as the very same bytes (ordering, compact JSON, escaping, padding, offsets). */
static void test_byte_identical(void) {
    char ref_path[1024], out_path[512];
    check_source_path("tests/fixtures/safetensors/all_dtypes.safetensors", ref_path,
                      sizeof ref_path);
    tmp_path("identical.safetensors", out_path, sizeof out_path);
    st_file ref;
    ct_error err = {{0}};
    int rc = st_open(&ref, ref_path, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc != 0) return;
    st_write_tensor *tensors = calloc((size_t)ref.n_tensors, sizeof *tensors);
    for (int i = 0; i < ref.n_tensors; i++) {
        const st_tensor *src = &ref.tensors[ref.n_tensors - 1 - i];
        tensors[i].name = src->name;
        tensors[i].dtype = src->dtype;
        tensors[i].ndim = src->ndim;
        memcpy(tensors[i].shape, src->shape, sizeof src->shape);
        tensors[i].data = src->data;
    }
    CHECK_MSG(st_write(out_path, tensors, ref.n_tensors, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    char *ours = NULL;
    size_t ours_size = 0;
    CHECK(read_file(out_path, &ours, &ours_size, &err) == 0);
    CHECK_MSG(ours_size == ref.map_size, "%zu vs %zu bytes", ours_size, ref.map_size);
    CHECK(ours && ours_size == ref.map_size && memcmp(ours, ref.map, ours_size) == 0);
    free(ours);
    free(tensors);
    st_close(&ref);
}

static void copy_fixture(const char *name, const char *to_dir) {
    char from[1024], rel[512], to[600];
    ct_error err = {{0}};
    snprintf(rel, sizeof rel, "tests/fixtures/safetensors/sharded/%s", name);
    check_source_path(rel, from, sizeof from);
    snprintf(to, sizeof to, "%s/%s", to_dir, name);
    CHECK_MSG(copy_file(from, to, &err) == 0, "%s", err.msg);
}

static void test_sharded(void) {
    char dir[1024];
    check_source_path("tests/fixtures/safetensors/sharded", dir, sizeof dir);
    cJSON *expected = load_json("tests/fixtures/safetensors/sharded/expected.json");
    CHECK(expected != NULL);
    st_model_files files;
    ct_error err = {{0}};
    int rc = st_model_open(&files, dir, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0 && expected) {
        CHECK(files.n_files == 3);
        for (int i = 0; i < files.n_files && i < 3; i++) { /* opened in shard order */
            char shard[64];
            snprintf(shard, sizeof shard, "model-0000%d-of-00003.safetensors", i + 1);
            CHECK_CONTAINS(files.files[i].path, shard);
        }
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItem(expected, "tensors")) {
            const st_tensor *t = st_model_find(&files, item->string);
            CHECK_MSG(t != NULL, "%s not found", item->string);
            if (!t) continue;
            const cJSON *bits = cJSON_GetObjectItem(item, "f32_bits");
            float values[64];
            CHECK(t->numel == (uint64_t)cJSON_GetArraySize(bits) && t->numel <= 64);
            CHECK(st_read_f32(t, values, &err) == 0);
            for (uint64_t i = 0; i < t->numel && i < 64; i++)
                CHECK(float_bits(values[i]) == (uint32_t)cJSON_GetArrayItem(bits, (int)i)->valuedouble);
        }
        CHECK(st_model_find(&files, "model.layers.1.mlp.up_proj.weight") == NULL);
        st_model_close(&files);
    }
    cJSON_Delete(expected);

    /* A weight_map entry pointing at the wrong shard names the tensor and the shard. */
    char broken[512], index_path[600];
    tmp_path("sharded", broken, sizeof broken);
    make_dirs(broken, &err);
    copy_fixture("model-00001-of-00003.safetensors", broken);
    copy_fixture("model-00002-of-00003.safetensors", broken);
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", broken);
    const char *wrong = "{\"metadata\":{\"total_size\":60},\"weight_map\":{"
                        "\"model.embed_tokens.weight\":\"model-00001-of-00003.safetensors\","
                        "\"model.norm.weight\":\"model-00001-of-00003.safetensors\"}}";
    write_bytes(index_path, wrong, strlen(wrong));
    CHECK(st_model_open(&files, broken, &err) == -1);
    CHECK_CONTAINS(err.msg, "tensor 'model.norm.weight' is mapped to shard "
                            "'model-00001-of-00003.safetensors'");
    CHECK(files.n_files == 0 && files.files == NULL);
    const char *missing = "{\"weight_map\":{\"lm_head.weight\":\"model-00003-of-00003.safetensors\"}}";
    write_bytes(index_path, missing, strlen(missing));
    CHECK(st_model_open(&files, broken, &err) == -1);
    CHECK_CONTAINS(err.msg, "model-00003-of-00003.safetensors: cannot open");
    const char *escape = "{\"weight_map\":{\"x\":\"../model.safetensors\"}}";
    write_bytes(index_path, escape, strlen(escape));
    CHECK(st_model_open(&files, broken, &err) == -1);
    CHECK_CONTAINS(err.msg, "expected a file name");
    write_bytes(index_path, "{\"weight_map\":", 14);
    CHECK(st_model_open(&files, broken, &err) == -1);
    CHECK_CONTAINS(err.msg, "model.safetensors.index.json: byte ");
    CHECK_CONTAINS(err.msg, "invalid JSON");

    /* A single-file folder, and an empty one. */
    char single[512], empty[512], from[1024], to[600];
    tmp_path("single", single, sizeof single);
    make_dirs(single, &err);
    check_source_path("tests/fixtures/safetensors/metadata.safetensors", from, sizeof from);
    snprintf(to, sizeof to, "%s/model.safetensors", single);
    CHECK(copy_file(from, to, &err) == 0);
    CHECK(st_model_open(&files, single, &err) == 0 && files.n_files == 1);
    CHECK(st_model_find(&files, "weight") != NULL);
    st_model_close(&files);
    tmp_path("empty", empty, sizeof empty);
    make_dirs(empty, &err);
    CHECK(st_model_open(&files, empty, &err) == -1);
    CHECK_CONTAINS(err.msg, "no model.safetensors or model.safetensors.index.json");
}

static int is_nan_bits16(uint16_t h, int bf16) {
    return bf16 ? ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) : ((h & 0x7c00) == 0x7c00 && (h & 0x3ff));
}

static void test_rounding(void) {
    cJSON *cases = load_json("tests/fixtures/safetensors/rounding.json");
    CHECK(cases != NULL);
    if (!cases) return;
    const cJSON *in = cJSON_GetObjectItem(cases, "f32_bits");
    const cJSON *bf = cJSON_GetObjectItem(cases, "bf16_bits");
    const cJSON *hf = cJSON_GetObjectItem(cases, "f16_bits");
    int n = cJSON_GetArraySize(in);
    CHECK(n > 100 && cJSON_GetArraySize(bf) == n && cJSON_GetArraySize(hf) == n);
    for (int i = 0; i < n; i++) {
        uint32_t u = (uint32_t)cJSON_GetArrayItem(in, i)->valuedouble;
        float x;
        memcpy(&x, &u, sizeof x);
        uint16_t want_bf = (uint16_t)cJSON_GetArrayItem(bf, i)->valuedouble;
        uint16_t want_hf = (uint16_t)cJSON_GetArrayItem(hf, i)->valuedouble;
        uint16_t got_bf = st_f32_to_bf16(x), got_hf = st_f32_to_f16(x);
        if (x != x) { /* torch's NaN bit patterns differ between its code paths: only NaN-ness */
            CHECK_MSG(is_nan_bits16(got_bf, 1) && is_nan_bits16(got_hf, 0), "NaN 0x%08x", u);
            continue;
        }
        CHECK_MSG(got_bf == want_bf, "bf16(0x%08x) = 0x%04x, torch 0x%04x", u, got_bf, want_bf);
        CHECK_MSG(got_hf == want_hf, "f16(0x%08x) = 0x%04x, torch 0x%04x", u, got_hf, want_hf);
    }
    const cJSON *patterns = cJSON_GetObjectItem(cases, "u16_patterns");
    const cJSON *from_hf = cJSON_GetObjectItem(cases, "f16_to_f32_bits");
    const cJSON *from_bf = cJSON_GetObjectItem(cases, "bf16_to_f32_bits");
    for (int i = 0; i < cJSON_GetArraySize(patterns); i++) {
        uint16_t h = (uint16_t)cJSON_GetArrayItem(patterns, i)->valuedouble;
        uint32_t want_hf = (uint32_t)cJSON_GetArrayItem(from_hf, i)->valuedouble;
        uint32_t want_bf = (uint32_t)cJSON_GetArrayItem(from_bf, i)->valuedouble;
        float got_hf = st_f16_to_f32(h), got_bf = st_bf16_to_f32(h);
        if (is_nan_bits16(h, 0)) CHECK(got_hf != got_hf);
        else CHECK_MSG(float_bits(got_hf) == want_hf, "f16 0x%04x -> 0x%08x", h, float_bits(got_hf));
        if (is_nan_bits16(h, 1)) CHECK(got_bf != got_bf);
        else CHECK_MSG(float_bits(got_bf) == want_bf, "bf16 0x%04x -> 0x%08x", h, float_bits(got_bf));
    }
    cJSON_Delete(cases);

    /* Exhaustive: every non-NaN half and bfloat16 survives decode + encode, and the exact
     * midpoint between two neighbouring halves rounds to the one with an even mantissa. */
    int failures = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (!is_nan_bits16((uint16_t)h, 0) && st_f32_to_f16(st_f16_to_f32((uint16_t)h)) != h)
            failures++;
        if (!is_nan_bits16((uint16_t)h, 1) && st_f32_to_bf16(st_bf16_to_f32((uint16_t)h)) != h)
            failures++;
        if ((h & 0x7fff) < 0x7bff) {
            float lo = st_f16_to_f32((uint16_t)h), hi = st_f16_to_f32((uint16_t)(h + 1));
            float mid = (float)(((double)lo + (double)hi) / 2); /* exact in fp32 */
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            if (st_f32_to_f16(mid) != even) failures++;
        }
    }
    CHECK_MSG(failures == 0, "%d exhaustive conversion failures", failures);
}

static void test_unaligned_and_find(void) {
    /* F32 and F16 data at odd offsets (legal in the format) convert correctly. */
    char path[512];
    tmp_path("unaligned.safetensors", path, sizeof path);
    const char *header = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]},"
                         "\"c\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[9,13]}}";
    size_t hl = strlen(header);
    unsigned char buf[512] = {0};
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    unsigned char *d = buf + 8 + hl;
    float b[2] = {1.5f, -2.25f};
    uint16_t c[2] = {0x3c00, 0xc000}; /* 1.0, -2.0 */
    memcpy(d + 1, b, sizeof b);
    memcpy(d + 9, c, sizeof c);
    write_bytes(path, buf, 8 + hl + 13);
    st_file file;
    ct_error err = {{0}};
    CHECK_MSG(st_open(&file, path, &err) == 0, "%s", err.msg);
    float out[2] = {0};
    CHECK(st_read_f32(st_find(&file, "b"), out, &err) == 0 && out[0] == 1.5f && out[1] == -2.25f);
    CHECK(st_read_f32(st_find(&file, "c"), out, &err) == 0 && out[0] == 1.0f && out[1] == -2.0f);
    CHECK(st_read_f32(st_find(&file, "a"), out, &err) == -1);
    CHECK_CONTAINS(err.msg, "tensor 'a' has dtype U8");
    st_close(&file);

    /* 300 tensors: st_find returns each by name. */
    enum { N = 300 };
    st_write_tensor tensors[N];
    char names[N][48];
    int32_t values[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.self_attn.q_proj.weight", i);
        values[i] = i * 7 + 1;
        tensors[i] = (st_write_tensor){names[i], ST_I32, 1, {1}, &values[i]};
    }
    tmp_path("many.safetensors", path, sizeof path);
    CHECK(st_write(path, tensors, N, NULL, NULL, 0, &err) == 0);
    CHECK(st_open(&file, path, &err) == 0);
    int found = 0;
    for (int i = 0; i < N; i++) {
        const st_tensor *t = st_find(&file, names[i]);
        int32_t v = -1;
        if (t) memcpy(&v, t->data, sizeof v);
        found += t && !strcmp(t->name, names[i]) && v == values[i];
    }
    CHECK(found == N);
    CHECK(st_find(&file, "model.layers.300.self_attn.q_proj.weight") == NULL);
    CHECK(st_find(&file, "") == NULL);
    st_close(&file);
}

/* Truncated and bit-flipped copies of a valid file: st_open may accept or reject, never crash
 * (run under ASan/UBSan to make "never crash" strict). */
static void test_corruption(void) {
    char ref_path[1024], path[512];
    check_source_path("tests/fixtures/safetensors/all_dtypes.safetensors", ref_path,
                      sizeof ref_path);
    tmp_path("corrupt.safetensors", path, sizeof path);
    char *bytes = NULL;
    size_t size = 0;
    ct_error err = {{0}};
    CHECK(read_file(ref_path, &bytes, &size, &err) == 0);
    if (!bytes) return;
    int rejected = 0;
    for (size_t len = 0; len < size; len += 7) {
        write_bytes(path, bytes, len);
        st_file file;
        if (st_open(&file, path, &err) == 0) st_close(&file);
        else rejected++;
    }
    CHECK(rejected == (int)((size + 6) / 7)); /* every truncation loses data: all rejected */
    for (size_t pos = 0; pos < size && pos < 1400; pos += 3) {
        char saved = bytes[pos];
        bytes[pos] = (char)(bytes[pos] ^ (pos % 2 ? 0x20 : 0x81));
        write_bytes(path, bytes, size);
        st_file file;
        if (st_open(&file, path, &err) == 0) st_close(&file);
        bytes[pos] = saved;
    }
    free(bytes);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/ctune-test-st-XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtype_names();
    test_rejections();
    test_roundtrip();
    test_python_fixtures();
    test_byte_identical();
    test_sharded();
    test_rounding();
    test_unaligned_and_find();
    test_corruption();
    ct_error err = {{0}};
    remove_tree(tmp_dir, &err);
    return check_summary("test_safetensors");
}
