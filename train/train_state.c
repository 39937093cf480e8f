/* train_state: meta.json, the recipe keys fixed across a resume, writing the parts and the
 * commit. Loading, finding and pruning checkpoints are in train_state_load.c. */
#include "train/train_state.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/fsutil.h"
#include "train/jsonfile.h"
#include "train/safetensors.h"
#include "train/splitmix.h"
#include "train/textbuf.h"
#include "train/train_state_internal.h"

void train_state_meta_init(train_state_meta *meta) {
    memset(meta, 0, sizeof *meta);
    meta->version = TRAIN_STATE_VERSION;
    meta->loss_scale = 1.0;
}

/* ---- recipe keys ---- */

static void add_key(train_state_meta *meta, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_key(train_state_meta *meta, const char *name, const char *fmt, ...) {
    if (meta->n_keys >= TRAIN_STATE_MAX_KEYS) return; /* the list below is shorter */
    train_state_key *key = &meta->keys[meta->n_keys++];
    snprintf(key->name, sizeof key->name, "%s", name);
    va_list args;
    va_start(args, fmt);
    vsnprintf(key->value, sizeof key->value, fmt, args);
    va_end(args);
}

void train_state_set_recipe(train_state_meta *meta, const recipe *r) {
    meta->n_keys = 0;
    meta->seed = r->train.seed;
    add_key(meta, "model.path", "%s", r->model.path);
    add_key(meta, "method", "%s", recipe_method_name(r->method));
    if (r->method == METHOD_LORA) {
        add_key(meta, "lora.r", "%d", r->lora.r);
        add_key(meta, "lora.alpha", "%.17g", r->lora.alpha);
        add_key(meta, "lora.dropout", "%.17g", r->lora.dropout);
        add_key(meta, "lora.use_rslora", "%s", r->lora.use_rslora ? "true" : "false");
        /* only when on, so that checkpoints from before the key resume unchanged */
        if (r->lora.use_dora) add_key(meta, "lora.use_dora", "true");
        char targets[RECIPE_MAX_TARGETS * 33] = "";
        for (int i = 0; i < r->lora.n_targets; i++) {
            if (i) strcat(targets, ",");
            strncat(targets, r->lora.targets[i], 32);
        }
        add_key(meta, "lora.target_modules", "%s", targets);
    }
    add_key(meta, "data.train", "%s", r->data.train);
    add_key(meta, "data.seq_len", "%d", r->data.seq_len);
    add_key(meta, "train.global_batch_size", "%d", r->train.global_batch_size);
    add_key(meta, "train.seed", "%lld", r->train.seed);
}

static const char *find_key(const train_state_meta *meta, const char *name) {
    for (int i = 0; i < meta->n_keys; i++)
        if (strcmp(meta->keys[i].name, name) == 0) return meta->keys[i].value;
    return NULL;
}

int train_state_check_recipe(const train_state_meta *meta, const recipe *r, const char *what,
                             ct_error *err) {
    train_state_meta now;
    train_state_set_recipe(&now, r);
    textbuf diff = {0};
    int n_diff = 0;
    /* Both directions: a key only one side has (lora.* when the method changed) differs too. */
    for (int side = 0; side < 2; side++) {
        const train_state_meta *from = side == 0 ? meta : &now, *to = side == 0 ? &now : meta;
        for (int i = 0; i < from->n_keys; i++) {
            const char *name = from->keys[i].name;
            const char *other = find_key(to, name);
            if (side == 1 && other) continue; /* compared in the first pass */
            const char *saved = side == 0 ? from->keys[i].value : other;
            const char *current = side == 0 ? other : from->keys[i].value;
            if (saved && current && strcmp(saved, current) == 0) continue;
            textbuf_printf(&diff, "%s%s: checkpoint %s%s%s, recipe %s%s%s", n_diff ? "; " : "",
                           name, saved ? "'" : "", saved ? saved : "(absent)", saved ? "'" : "",
                           current ? "'" : "", current ? current : "(absent)", current ? "'" : "");
            n_diff++;
        }
    }
    if (n_diff == 0) {
        textbuf_free(&diff);
        return 0;
    }
    ct_fail(err, "%s: the recipe differs from the one the checkpoint was written with in %d "
            "key%s that must stay the same across a resume (%.1500s); restore them, or train "
            "into a new checkpoint.output_dir", what, n_diff, n_diff == 1 ? "" : "s",
            diff.failed ? "out of memory" : diff.data);
    textbuf_free(&diff);
    return -1;
}

/* ---- paths ---- */

int train_state_checkpoint_dir(const char *output_dir, long step, char *out, size_t size,
                               ct_error *err) {
    int n = snprintf(out, size, "%s/checkpoints/step-%06ld", output_dir, step);
    return n >= 0 && (size_t)n < size ? 0 : ct_fail(err, "%s: path too long", output_dir);
}

int ts_state_path(char *out, size_t size, const char *checkpoint_dir, const char *name,
                  ct_error *err) {
    int n = name ? snprintf(out, size, "%s/state/%s", checkpoint_dir, name)
                 : snprintf(out, size, "%s/state", checkpoint_dir);
    return n >= 0 && (size_t)n < size ? 0 : ct_fail(err, "%s: path too long", checkpoint_dir);
}

void ts_part_name(char *out, size_t size, int rank, int world_size) {
    snprintf(out, size, "rank-%05d-of-%05d.safetensors", rank, world_size);
}

void train_state_even_shard(size_t numel, int rank, int world_size, size_t *begin, size_t *end) {
    size_t w = world_size > 0 ? (size_t)world_size : 1, r = rank > 0 ? (size_t)rank : 0;
    if (r > w) r = w;
    size_t base = numel / w, extra = numel % w;
    *begin = r * base + (r < extra ? r : extra);
    *end = *begin + (r < w ? base + (r < extra ? 1 : 0) : 0);
}

size_t ts_trainable_numel(const model *m) {
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].trainable) n += m->params[i].numel;
    return n;
}

/* Four lanes of 8-byte words mixed by multiply-rotate (independent chains keep the multiplier
 * busy: about 6 GB/s on one core), folded with SplitMix64's finaliser. Words are read
 * little-endian, as safetensors stores the data, so the sums agree across hosts. */
static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t load_le64(const unsigned char *p) {
    uint64_t w;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&w, p, 8);
#else
    w = 0;
    for (int b = 7; b >= 0; b--) w = (w << 8) | p[b];
#endif
    return w;
}

uint64_t train_state_checksum(const void *data, size_t size) {
    const unsigned char *p = data;
    const uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
    uint64_t l0 = k1 + k2, l1 = k2, l2 = 0, l3 = 0 - k1;
    size_t i = 0;
    for (; i + 32 <= size; i += 32) {
        l0 = rotl64(l0 + load_le64(p + i) * k2, 31) * k1;
        l1 = rotl64(l1 + load_le64(p + i + 8) * k2, 31) * k1;
        l2 = rotl64(l2 + load_le64(p + i + 16) * k2, 31) * k1;
        l3 = rotl64(l3 + load_le64(p + i + 24) * k2, 31) * k1;
    }
    uint64_t h = (uint64_t)size;
    h = splitmix64(h ^ l0);
    h = splitmix64(h ^ l1);
    h = splitmix64(h ^ l2);
    h = splitmix64(h ^ l3);
    for (; i < size; i++) h = splitmix64(h ^ p[i]);
    return h;
}

/* ---- meta.json ---- */

static void put_int(textbuf *b, const char *key, long long value) {
    textbuf_printf(b, "  \"%s\": %lld,\n", key, value);
}

int ts_write_meta(const char *path, const train_state_meta *meta, const train_state_part *parts,
                  int n_parts, ct_error *err) {
    textbuf b = {0};
    textbuf_puts(&b, "{\n  \"format\": \"ctune-train-state\",\n");
    put_int(&b, "version", TRAIN_STATE_VERSION);
    put_int(&b, "step", meta->step);
    put_int(&b, "optimizer_step", meta->optimizer_step);
    put_int(&b, "next_sample", meta->next_sample);
    put_int(&b, "tokens_seen", meta->tokens_seen);
    /* A string: seeds go up to 2^63 and JSON readers hold numbers as doubles. */
    textbuf_printf(&b, "  \"seed\": \"%lld\",\n", meta->seed);
    textbuf_printf(&b, "  \"loss_scaling\": %s,\n", meta->loss_scaling ? "true" : "false");
    textbuf_printf(&b, "  \"loss_scale\": %.17g,\n", meta->loss_scale);
    put_int(&b, "loss_scale_good_steps", meta->loss_scale_good_steps);
    textbuf_printf(&b, "  \"wall_seconds\": %.17g,\n", meta->wall_seconds);
    put_int(&b, "world_size", n_parts);
    put_int(&b, "zero_stage", meta->zero_stage);
    put_int(&b, "trainable_numel", (long long)meta->trainable_numel);
    textbuf_puts(&b, "  \"recipe\": {");
    for (int i = 0; i < meta->n_keys; i++) {
        textbuf_puts(&b, i ? ",\n    " : "\n    ");
        textbuf_json_string(&b, meta->keys[i].name);
        textbuf_puts(&b, ": ");
        textbuf_json_string(&b, meta->keys[i].value);
    }
    textbuf_puts(&b, meta->n_keys ? "\n  },\n  \"parts\": [" : "},\n  \"parts\": [");
    for (int i = 0; i < n_parts; i++) {
        char name[64];
        ts_part_name(name, sizeof name, i, n_parts);
        textbuf_printf(&b, "%s\n    {\"file\": \"%s\", \"begin\": %zu, \"end\": %zu, "
                       "\"bytes\": %lld}", i ? "," : "", name, parts[i].begin, parts[i].end,
                       parts[i].bytes);
    }
    textbuf_puts(&b, "\n  ]\n}\n");
    int status = b.failed ? ct_fail(err, "%s: out of memory", path)
                          : write_file_atomic(path, b.data, b.len, err);
    textbuf_free(&b);
    return status;
}

/* JSON numbers are doubles: integers are exact up to 2^53, which bounds every count here. */
static int get_int(const cJSON *root, const char *key, long long min, long long max,
                   long long *out, const char *path, ct_error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(item))
        return ct_fail(err, "%s: key '%s': expected an integer", path, key);
    double v = item->valuedouble;
    if (v != (double)(long long)v || v < (double)min || v > (double)max || v > 9007199254740992.0)
        return ct_fail(err, "%s: key '%s': expected an integer in [%lld, %lld], got %.17g", path,
                       key, min, max, v);
    *out = (long long)v;
    return 0;
}

static int get_double(const cJSON *root, const char *key, double *out, const char *path,
                      ct_error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(item)) return ct_fail(err, "%s: key '%s': expected a number", path, key);
    *out = item->valuedouble;
    return 0;
}

static int parse_meta(const cJSON *root, const char *path, train_state_meta *meta,
                      train_state_part **parts_out, int *n_parts_out, ct_error *err) {
    const long long big = 9007199254740992LL;
    train_state_meta_init(meta);
    if (!cJSON_IsObject(root)) return ct_fail(err, "%s: expected a JSON object", path);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, "ctune-train-state") != 0)
        return ct_fail(err, "%s: key 'format': expected \"ctune-train-state\"", path);
    long long v[12];
    if (get_int(root, "version", 1, 1000000, &v[0], path, err)) return -1;
    if (v[0] != TRAIN_STATE_VERSION)
        return ct_fail(err, "%s: format version %lld, this ctune reads version %d", path, v[0],
                       TRAIN_STATE_VERSION);
    if (get_int(root, "step", 0, big, &v[1], path, err) ||
        get_int(root, "optimizer_step", 0, big, &v[2], path, err) ||
        get_int(root, "next_sample", 0, big, &v[3], path, err) ||
        get_int(root, "tokens_seen", 0, big, &v[4], path, err) ||
        get_int(root, "loss_scale_good_steps", 0, big, &v[5], path, err) ||
        get_int(root, "world_size", 1, 1 << 24, &v[6], path, err) ||
        get_int(root, "zero_stage", 0, 3, &v[7], path, err) ||
        get_int(root, "trainable_numel", 0, big, &v[8], path, err) ||
        get_double(root, "loss_scale", &meta->loss_scale, path, err) ||
        get_double(root, "wall_seconds", &meta->wall_seconds, path, err))
        return -1;
    if (!(meta->loss_scale > 0) || !isfinite(meta->loss_scale))
        return ct_fail(err, "%s: key 'loss_scale': expected a positive finite number", path);
    /* Absent in states written before fp16 loss scaling existed: those never scaled. */
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(root, "loss_scaling");
    if (scaling && !cJSON_IsBool(scaling))
        return ct_fail(err, "%s: key 'loss_scaling': expected true or false", path);
    meta->loss_scaling = cJSON_IsTrue(scaling);
    meta->step = (long)v[1];
    meta->optimizer_step = (long)v[2];
    meta->next_sample = v[3];
    meta->tokens_seen = v[4];
    meta->loss_scale_good_steps = (long)v[5];
    meta->world_size = (int)v[6];
    meta->zero_stage = (int)v[7];
    meta->trainable_numel = (size_t)v[8];
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
    char *end = NULL;
    errno = 0;
    if (cJSON_IsString(seed)) meta->seed = strtoll(seed->valuestring, &end, 10);
    if (!cJSON_IsString(seed) || end == seed->valuestring || *end || errno)
        return ct_fail(err, "%s: key 'seed': expected a decimal integer in a string", path);

    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(root, "recipe");
    if (!cJSON_IsObject(keys)) return ct_fail(err, "%s: key 'recipe': expected an object", path);
    const cJSON *key;
    cJSON_ArrayForEach(key, keys) {
        if (!cJSON_IsString(key) || meta->n_keys >= TRAIN_STATE_MAX_KEYS ||
            strlen(key->string) >= sizeof meta->keys[0].name ||
            strlen(key->valuestring) >= sizeof meta->keys[0].value)
            return ct_fail(err, "%s: recipe key '%s': expected a string (at most %d keys)", path,
                           key->string, TRAIN_STATE_MAX_KEYS);
        snprintf(meta->keys[meta->n_keys].name, sizeof meta->keys[0].name, "%s", key->string);
        snprintf(meta->keys[meta->n_keys].value, sizeof meta->keys[0].value, "%s",
                 key->valuestring);
        meta->n_keys++;
    }

    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "parts");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != meta->world_size)
        return ct_fail(err, "%s: key 'parts': expected a list of world_size (%d) entries", path,
                       meta->world_size);
    if (!parts_out) return 0;
    train_state_part *parts = calloc((size_t)meta->world_size, sizeof *parts);
    if (!parts) return ct_fail(err, "%s: out of memory", path);
    int i = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, list) {
        char expected[64], where[4300];
        ts_part_name(expected, sizeof expected, i, meta->world_size);
        snprintf(where, sizeof where, "%s: parts[%d]", path, i);
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(entry, "file");
        long long begin, end_, bytes;
        if (!cJSON_IsString(file) || strcmp(file->valuestring, expected) != 0) {
            free(parts);
            return ct_fail(err, "%s: key 'file': expected \"%s\"", where, expected);
        }
        if (get_int(entry, "begin", 0, (long long)meta->trainable_numel, &begin, where, err) ||
            get_int(entry, "end", begin, (long long)meta->trainable_numel, &end_, where, err) ||
            get_int(entry, "bytes", 8, big, &bytes, where, err)) {
            free(parts);
            return -1;
        }
        parts[i++] = (train_state_part){(size_t)begin, (size_t)end_, bytes};
    }
    *parts_out = parts;
    *n_parts_out = meta->world_size;
    return 0;
}

int ts_read_meta(const char *checkpoint_dir, train_state_meta *meta, train_state_part **parts,
                 int *n_parts, ct_error *err) {
    char path[4200];
    if (ts_state_path(path, sizeof path, checkpoint_dir, "meta.json", err)) return -1;
    if (!path_exists(path))
        return ct_fail(err, "%s: not a complete checkpoint (%s is missing: the write never "
                       "finished)", checkpoint_dir, path);
    cJSON *root = NULL;
    if (jsonfile_read(path, &root, err)) return -1;
    int status = parse_meta(root, path, meta, parts, n_parts, err);
    cJSON_Delete(root);
    return status;
}

int train_state_read_meta(const char *checkpoint_dir, train_state_meta *meta, ct_error *err) {
    return ts_read_meta(checkpoint_dir, meta, NULL, NULL, err);
}

bool train_state_is_complete(const char *checkpoint_dir) {
    char path[4200];
    return ts_state_path(path, sizeof path, checkpoint_dir, "meta.json", NULL) == 0 &&
           path_exists(path);
}

/* ---- writing ---- */

int train_state_prepare(const char *checkpoint_dir, ct_error *err) {
    char dir[4200], marker[4200];
    if (ts_state_path(dir, sizeof dir, checkpoint_dir, NULL, err) ||
        ts_state_path(marker, sizeof marker, checkpoint_dir, "meta.json", err))
        return -1;
    /* A state folder left at this name (an earlier save of the same step, another world
     * size) must not mix with this one. Its marker goes first and durably, so that a crash
     * during the removal leaves an incomplete folder, never a complete-looking broken one. */
    if (path_exists(marker)) {
        if (unlink(marker) != 0)
            return ct_fail(err, "cannot remove %s: %s", marker, strerror(errno));
        if (fsync_dir(dir, err)) return -1;
    }
    if (remove_tree(dir, err) || make_dirs(dir, err) || fsync_dir(checkpoint_dir, err))
        return ct_error_prefix(err, "training state");
    return 0;
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }
static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static const char *const KIND_NAMES[TS_KIND_COUNT] = {"param", "exp_avg", "exp_avg_sq"};

const char *ts_kind_name(int kind) { return KIND_NAMES[kind]; }

int train_state_write_part(const char *checkpoint_dir, const model *m, const float *exp_avg,
                           const float *exp_avg_sq, size_t shard_begin, size_t shard_end,
                           int rank, int world_size, train_state_part *part, ct_error *err) {
    char name[64], path[4200];
    ts_part_name(name, sizeof name, rank, world_size);
    if (ts_state_path(path, sizeof path, checkpoint_dir, name, err)) return -1;
    size_t total = ts_trainable_numel(m), count = shard_end - shard_begin;
    if (rank < 0 || rank >= world_size || shard_begin > shard_end || shard_end > total)
        return ct_fail(err, "%s: rank %d of %d, shard [%zu, %zu) outside the %zu trainable "
                       "elements", path, rank, world_size, shard_begin, shard_end, total);
    if (count > 0 && (!exp_avg || !exp_avg_sq))
        return ct_fail(err, "%s: no optimizer moments given for a shard of %zu elements", path,
                       count);
    int n_pieces = 0;
    size_t offset = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (!p->trainable) continue;
        if (max_size(offset, shard_begin) < min_size(offset + p->numel, shard_end)) n_pieces++;
        offset += p->numel;
    }
    int n_tensors = TS_KIND_COUNT * n_pieces, n_meta = n_tensors + 5;
    float *host = malloc(TS_KIND_COUNT * count * sizeof(float) + 1);
    st_write_tensor *tensors = calloc((size_t)n_tensors + 1, sizeof *tensors);
    char *names = malloc((size_t)n_tensors * TS_NAME_MAX + 1);
    char *sums = malloc((size_t)n_tensors * 17 + 1);
    const char **keys = calloc((size_t)n_meta, sizeof *keys);
    const char **values = calloc((size_t)n_meta, sizeof *values);
    int status = -1;
    if (!host || !tensors || !names || !sums || !keys || !values) {
        ct_fail(err, "%s: cannot allocate %zu bytes to stage the shard", path,
                TS_KIND_COUNT * count * sizeof(float));
        goto done;
    }
    const kernels *k = m->k;
    int t = 0;
    offset = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (!p->trainable) continue;
        size_t lo = max_size(offset, shard_begin), hi = min_size(offset + p->numel, shard_end);
        if (lo < hi) {
            size_t a = lo - offset, n = hi - lo;
            const float *sources[TS_KIND_COUNT] = {model_param_fp32(p, a), exp_avg + (lo - shard_begin),
                                                   exp_avg_sq + (lo - shard_begin)};
            for (int kind = 0; kind < TS_KIND_COUNT; kind++, t++) {
                float *stage = host + kind * count + (lo - shard_begin);
                k->download(stage, sources[kind], n * sizeof(float));
                char *tensor_name = names + (size_t)t * TS_NAME_MAX;
                snprintf(tensor_name, TS_NAME_MAX, "%s/%s[%zu:%zu]", p->name, KIND_NAMES[kind],
                         a, a + n);
                tensors[t] = (st_write_tensor){.name = tensor_name, .dtype = ST_F32, .ndim = 1,
                                               .shape = {(int64_t)n}, .data = stage};
                snprintf(sums + (size_t)t * 17, 17, "%016llx",
                         (unsigned long long)train_state_checksum(stage, n * sizeof(float)));
                keys[t] = tensor_name;
                values[t] = sums + (size_t)t * 17;
            }
        }
        offset += p->numel;
    }
    char info[4][32];
    snprintf(info[0], sizeof info[0], "%d", rank);
    snprintf(info[1], sizeof info[1], "%d", world_size);
    snprintf(info[2], sizeof info[2], "%zu", shard_begin);
    snprintf(info[3], sizeof info[3], "%zu", shard_end);
    const char *info_keys[5] = {"ctune", "rank", "world_size", "begin", "end"};
    const char *info_values[5] = {"train-state", info[0], info[1], info[2], info[3]};
    for (int i = 0; i < 5; i++) {
        keys[n_tensors + i] = info_keys[i];
        values[n_tensors + i] = info_values[i];
    }
    if (st_write(path, tensors, n_tensors, keys, values, n_meta, err)) goto done;
    struct stat st;
    if (stat(path, &st) != 0) {
        ct_fail(err, "%s: %s", path, strerror(errno));
        goto done;
    }
    *part = (train_state_part){shard_begin, shard_end, (long long)st.st_size};
    status = 0;
done:
    free(host);
    free(tensors);
    free(names);
    free(sums);
    free(keys);
    free(values);
    return status;
}

static int compare_parts(const void *a, const void *b) {
    const train_state_part *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

int train_state_commit(const char *checkpoint_dir, const train_state_meta *meta,
                       const train_state_part *parts, int n_parts, ct_error *err) {
    char path[4200];
    if (n_parts < 1) return ct_fail(err, "%s: no parts to commit", checkpoint_dir);
    /* Without the keys a resume could not tell a changed recipe from the same one. */
    if (meta->n_keys == 0)
        return ct_fail(err, "%s: the training state has no recipe keys (train_state_set_recipe "
                       "was not called)", checkpoint_dir);
    train_state_part *sorted = malloc((size_t)n_parts * sizeof *sorted);
    if (!sorted) return ct_fail(err, "out of memory");
    memcpy(sorted, parts, (size_t)n_parts * sizeof *sorted);
    qsort(sorted, (size_t)n_parts, sizeof *sorted, compare_parts);
    size_t covered = 0;
    int status = 0;
    for (int i = 0; i < n_parts && !status; i++) {
        if (sorted[i].begin != covered || sorted[i].end < sorted[i].begin)
            status = ct_fail(err, "%s: the ranks' shards do not partition [0, %zu): [%zu, %zu) "
                             "follows element %zu", checkpoint_dir, meta->trainable_numel,
                             sorted[i].begin, sorted[i].end, covered);
        covered = sorted[i].end;
    }
    free(sorted);
    if (status) return -1;
    if (covered != meta->trainable_numel)
        return ct_fail(err, "%s: the ranks' shards cover [0, %zu), the model has %zu trainable "
                       "elements", checkpoint_dir, covered, meta->trainable_numel);
    /* Every part is on disk at the size its rank wrote before the marker may appear. */
    for (int i = 0; i < n_parts; i++) {
        char name[64];
        ts_part_name(name, sizeof name, i, n_parts);
        if (ts_state_path(path, sizeof path, checkpoint_dir, name, err)) return -1;
        struct stat st;
        if (stat(path, &st) != 0) return ct_fail(err, "%s: %s", path, strerror(errno));
        if ((long long)st.st_size != parts[i].bytes)
            return ct_fail(err, "%s: %lld bytes, its rank wrote %lld", path,
                           (long long)st.st_size, parts[i].bytes);
    }
    if (ts_state_path(path, sizeof path, checkpoint_dir, "meta.json", err)) return -1;
    return ts_write_meta(path, meta, parts, n_parts, err);
}

int train_state_save(const char *checkpoint_dir, const train_state_meta *meta, const model *m,
                     const float *exp_avg, const float *exp_avg_sq, size_t shard_begin,
                     size_t shard_end, const dist *d, ct_error *err) {
    int world = d->world_size;
    long long *ranges = calloc((size_t)world * 3, sizeof *ranges);
    int status = ranges ? 0 : ct_fail(err, "out of memory");
    if (!status && d->rank == 0) status = train_state_prepare(checkpoint_dir, err);
    if (dist_agree(d, status, err)) goto done;
    train_state_part part = {0};
    status = train_state_write_part(checkpoint_dir, m, exp_avg, exp_avg_sq, shard_begin,
                                    shard_end, d->rank, world, &part, err);
    if (dist_agree(d, status, err)) goto done;
    /* Gather every rank's range and size: each fills its own slots of a zeroed array. */
    ranges[3 * d->rank] = (long long)part.begin;
    ranges[3 * d->rank + 1] = (long long)part.end;
    ranges[3 * d->rank + 2] = part.bytes;
    if (dist_sum_longs(d, ranges, (size_t)world * 3, err)) goto done;
    if (d->rank == 0) {
        train_state_part *parts = calloc((size_t)world, sizeof *parts);
        train_state_meta *final = malloc(sizeof *final);
        status = parts && final ? 0 : ct_fail(err, "out of memory");
        for (int i = 0; i < world && !status; i++)
            parts[i] = (train_state_part){(size_t)ranges[3 * i], (size_t)ranges[3 * i + 1],
                                          ranges[3 * i + 2]};
        if (!status) {
            *final = *meta;
            final->trainable_numel = ts_trainable_numel(m);
            final->world_size = world;
            status = train_state_commit(checkpoint_dir, final, parts, world, err);
        }
        free(parts);
        free(final);
    }
    if (dist_agree(d, status, err)) goto done;
    free(ranges);
    return 0;
done:
    free(ranges);
    return -1;
}
