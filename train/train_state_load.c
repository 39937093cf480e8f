/* train_state_load: reading a committed training state back on any world size, and finding
 * and pruning the checkpoints of a run. Every part is mapped (each rank needs every trainable
 * parameter whole, and any part may hold a piece of it); only the moments of the caller's
 * shard are read. All checks come before the first copy, so a bad checkpoint leaves the
 * model and the moments as they were. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "train/fsutil.h"
#include "train/safetensors.h"
#include "train/train_state_internal.h"

/* One stored tensor: elements [a, b) of one kind of one parameter. */
typedef struct piece {
    int param; /* index in m->params */
    int kind;
    size_t a, b;
    int file;
    const st_tensor *tensor;
} piece;

static int compare_pieces(const void *x, const void *y) {
    const piece *p = x, *q = y;
    if (p->param != q->param) return p->param < q->param ? -1 : 1;
    if (p->kind != q->kind) return p->kind < q->kind ? -1 : 1;
    return p->a < q->a ? -1 : p->a > q->a;
}

static bool parse_count(const char **s, size_t *out) {
    const char *c = *s;
    if (*c < '0' || *c > '9') return false;
    unsigned long long v = 0;
    for (; *c >= '0' && *c <= '9'; c++) {
        if (v > (~0ull - 9) / 10) return false;
        v = v * 10 + (unsigned long long)(*c - '0');
    }
    *out = (size_t)v;
    *s = c;
    return true;
}

/* "<parameter>/<kind>[a:b]" */
static bool parse_tensor_name(const char *name, char *param, size_t size, int *kind, size_t *a,
                              size_t *b) {
    const char *slash = strrchr(name, '/');
    if (!slash || (size_t)(slash - name) >= size) return false;
    memcpy(param, name, (size_t)(slash - name));
    param[slash - name] = '\0';
    const char *bracket = strchr(slash + 1, '[');
    if (!bracket) return false;
    *kind = -1;
    for (int k = 0; k < TS_KIND_COUNT; k++) {
        const char *kn = ts_kind_name(k);
        if (strlen(kn) == (size_t)(bracket - slash - 1) && !strncmp(slash + 1, kn, strlen(kn)))
            *kind = k;
    }
    const char *c = bracket + 1;
    if (*kind < 0 || !parse_count(&c, a) || *c++ != ':' || !parse_count(&c, b) || *c++ != ']' ||
        *c)
        return false;
    return *a < *b;
}

static int find_trainable(const model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].trainable && strcmp(m->params[i].name, name) == 0) return i;
    return -1;
}

/* The pieces of one mapped part, checked against the model. */
static int collect_pieces(const model *m, const st_file *file, int file_index, piece *out,
                          int *n, ct_error *err) {
    for (int t = 0; t < file->n_tensors; t++) {
        const st_tensor *tensor = &file->tensors[t];
        char param[sizeof m->params[0].name];
        piece p = {.file = file_index, .tensor = tensor};
        if (!parse_tensor_name(tensor->name, param, sizeof param, &p.kind, &p.a, &p.b))
            return ct_fail(err, "%s: tensor '%s': expected a name '<parameter>/<param|exp_avg|"
                           "exp_avg_sq>[<begin>:<end>]'", file->path, tensor->name);
        p.param = find_trainable(m, param);
        if (p.param < 0)
            return ct_fail(err, "%s: tensor '%s': the model has no trainable parameter '%s' "
                           "(another model, method or LoRA setting?)", file->path, tensor->name,
                           param);
        const model_param *mp = &m->params[p.param];
        if (tensor->dtype != ST_F32 || tensor->ndim != 1 || (uint64_t)tensor->shape[0] != p.b - p.a)
            return ct_fail(err, "%s: tensor '%s': expected F32 of shape [%zu]", file->path,
                           tensor->name, p.b - p.a);
        if (p.b > mp->numel)
            return ct_fail(err, "%s: tensor '%s': range ends past the %zu elements of '%s' "
                           "(another model shape?)", file->path, tensor->name, mp->numel,
                           mp->name);
        out[(*n)++] = p;
    }
    return 0;
}

/* Every kind of every trainable parameter is covered exactly once by the pieces. */
static int check_coverage(const model *m, const piece *pieces, int n, const st_file *files,
                          const char *state_dir, ct_error *err) {
    int j = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (!p->trainable) continue;
        for (int kind = 0; kind < TS_KIND_COUNT; kind++) {
            size_t covered = 0;
            int previous = -1;
            for (; j < n && pieces[j].param == i && pieces[j].kind == kind; j++) {
                if (pieces[j].a > covered)
                    return ct_fail(err, "%s: '%s' %s: elements [%zu, %zu) are in no part",
                                   state_dir, p->name, ts_kind_name(kind), covered, pieces[j].a);
                if (pieces[j].a < covered)
                    return ct_fail(err, "%s: '%s' %s: element %zu is in both %s and %s", state_dir,
                                   p->name, ts_kind_name(kind), pieces[j].a,
                                   files[previous].path, files[pieces[j].file].path);
                covered = pieces[j].b;
                previous = pieces[j].file;
            }
            if (covered != p->numel)
                return ct_fail(err, "%s: '%s' %s: elements [%zu, %zu) are in no part", state_dir,
                               p->name, ts_kind_name(kind), covered, p->numel);
        }
    }
    return 0;
}

/* The part of piece p that the caller needs, in parameter coordinates: the whole parameter,
 * or for the moments the intersection with the shard. False when nothing is needed. */
static bool needed_range(const piece *p, size_t flat_offset, size_t shard_begin,
                         size_t shard_end, size_t *lo, size_t *hi) {
    if (p->kind == TS_KIND_PARAM) {
        *lo = p->a;
        *hi = p->b;
        return true;
    }
    size_t begin = flat_offset + p->a, end = flat_offset + p->b;
    if (begin < shard_begin) begin = shard_begin;
    if (end > shard_end) end = shard_end;
    if (begin >= end) return false;
    *lo = begin - flat_offset;
    *hi = end - flat_offset;
    return true;
}

static int verify_checksum(const st_file *file, const st_tensor *tensor, ct_error *err) {
    const char *stored = st_metadata(file, tensor->name);
    char *end = NULL;
    unsigned long long expected = stored ? strtoull(stored, &end, 16) : 0;
    if (!stored || strlen(stored) != 16 || *end)
        return ct_fail(err, "%s: tensor '%s': no checksum in the metadata (expected 16 hex "
                       "digits under the tensor's name)", file->path, tensor->name);
    uint64_t actual = train_state_checksum(tensor->data, tensor->nbytes);
    if (actual != expected)
        return ct_fail(err, "%s: tensor '%s': checksum %016llx, the metadata says %s: the file "
                       "is corrupted", file->path, tensor->name, (unsigned long long)actual,
                       stored);
    return 0;
}

static int open_parts(const char *checkpoint_dir, const train_state_part *parts, int n_parts,
                      st_file *files, int *opened, ct_error *err) {
    for (int i = 0; i < n_parts; i++) {
        char name[64], path[4200];
        ts_part_name(name, sizeof name, i, n_parts);
        if (ts_state_path(path, sizeof path, checkpoint_dir, name, err)) return -1;
        struct stat st;
        if (stat(path, &st) != 0)
            return ct_fail(err, "%s: %s (meta.json lists it)", path, strerror(errno));
        if ((long long)st.st_size != parts[i].bytes)
            return ct_fail(err, "%s: %lld bytes, meta.json records %lld: the file was truncated "
                           "or replaced", path, (long long)st.st_size, parts[i].bytes);
        if (st_open(&files[i], path, err)) return -1;
        (*opened)++;
    }
    return 0;
}

int train_state_load(const char *checkpoint_dir, train_state_meta *meta, model *m,
                     float *exp_avg, float *exp_avg_sq, size_t shard_begin, size_t shard_end,
                     ct_error *err) {
    train_state_part *parts = NULL;
    int n_parts = 0;
    if (ts_read_meta(checkpoint_dir, meta, &parts, &n_parts, err)) return -1;
    char state_dir[4200];
    size_t total = ts_trainable_numel(m);
    st_file *files = calloc((size_t)n_parts, sizeof *files);
    size_t *flat_offset = calloc((size_t)m->n_params + 1, sizeof *flat_offset);
    piece *pieces = NULL;
    int opened = 0, n_pieces = 0, status = -1;
    if (ts_state_path(state_dir, sizeof state_dir, checkpoint_dir, NULL, err)) goto done;
    if (!files || !flat_offset) {
        ct_fail(err, "out of memory");
        goto done;
    }
    if (meta->trainable_numel != total) {
        ct_fail(err, "%s: the checkpoint holds %zu trainable elements, the model has %zu "
                "(another model, method or LoRA setting?)", state_dir, meta->trainable_numel,
                total);
        goto done;
    }
    if (shard_begin > shard_end || shard_end > total ||
        (shard_end > shard_begin && (!exp_avg || !exp_avg_sq))) {
        ct_fail(err, "%s: shard [%zu, %zu) of %zu trainable elements (with its moments) "
                "expected", state_dir, shard_begin, shard_end, total);
        goto done;
    }
    size_t offset = 0;
    for (int i = 0; i < m->n_params; i++) {
        flat_offset[i] = offset;
        if (m->params[i].trainable) offset += m->params[i].numel;
    }
    if (open_parts(checkpoint_dir, parts, n_parts, files, &opened, err)) goto done;
    int n_tensors = 0;
    for (int i = 0; i < n_parts; i++) n_tensors += files[i].n_tensors;
    pieces = malloc((size_t)n_tensors * sizeof *pieces + 1);
    if (!pieces) {
        ct_fail(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_parts; i++)
        if (collect_pieces(m, &files[i], i, pieces, &n_pieces, err)) goto done;
    qsort(pieces, (size_t)n_pieces, sizeof *pieces, compare_pieces);
    if (check_coverage(m, pieces, n_pieces, files, state_dir, err)) goto done;
    size_t lo, hi;
    for (int j = 0; j < n_pieces; j++) {
        const piece *p = &pieces[j];
        if (needed_range(p, flat_offset[p->param], shard_begin, shard_end, &lo, &hi) &&
            verify_checksum(&files[p->file], p->tensor, err))
            goto done;
    }
    /* Checked: now copy. */
    const kernels *k = m->k;
    for (int j = 0; j < n_pieces; j++) {
        const piece *p = &pieces[j];
        if (!needed_range(p, flat_offset[p->param], shard_begin, shard_end, &lo, &hi)) continue;
        const float *src = (const float *)p->tensor->data + (lo - p->a);
        size_t bytes = (hi - lo) * sizeof(float);
        if (p->kind == TS_KIND_PARAM) {
            model_param_upload_range(m, &m->params[p->param], lo, src, hi - lo);
        } else {
            float *moment = p->kind == TS_KIND_EXP_AVG ? exp_avg : exp_avg_sq;
            k->upload(moment + (flat_offset[p->param] + lo - shard_begin), src, bytes);
        }
    }
    status = 0;
done:
    for (int i = 0; i < opened; i++) st_close(&files[i]);
    free(files);
    free(flat_offset);
    free(pieces);
    free(parts);
    return status;
}

/* ---- finding and pruning ---- */

typedef struct step_entry {
    long step;
    bool complete;
    char name[64];
} step_entry;

static int compare_steps(const void *a, const void *b) {
    const step_entry *x = a, *y = b;
    return x->step < y->step ? -1 : x->step > y->step;
}

/* Folders named exactly step-<digits>; temporary and half-removed ones have a suffix. */
static bool parse_step_name(const char *name, long *step) {
    if (strncmp(name, "step-", 5) != 0 || !name[5] || strlen(name) >= 64) return false;
    long value = 0;
    for (const char *c = name + 5; *c; c++) {
        if (*c < '0' || *c > '9' || value > (__LONG_MAX__ - 9) / 10) return false;
        value = value * 10 + (*c - '0');
    }
    *step = value;
    return true;
}

static int list_steps(const char *output_dir, step_entry **out, int *n_out, ct_error *err) {
    char root[4200], path[4400];
    *out = NULL;
    *n_out = 0;
    if (path_join(root, sizeof root, output_dir, "checkpoints", err)) return -1;
    DIR *dir = opendir(root);
    if (!dir)
        return errno == ENOENT ? 0 : ct_fail(err, "cannot open %s: %s", root, strerror(errno));
    int n = 0, cap = 0;
    step_entry *list = NULL;
    struct dirent *entry;
    int status = 0;
    while ((entry = readdir(dir)) != NULL) {
        long step;
        /* A name too long for step_entry is not one ctune wrote. */
        if (!parse_step_name(entry->d_name, &step) || strlen(entry->d_name) >= sizeof list->name)
            continue;
        if (path_join(path, sizeof path, root, entry->d_name, err)) {
            status = -1;
            break;
        }
        if (!path_is_dir(path)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            step_entry *grown = realloc(list, (size_t)cap * sizeof *list);
            if (!grown) {
                status = ct_fail(err, "out of memory");
                break;
            }
            list = grown;
        }
        list[n].step = step;
        list[n].complete = train_state_is_complete(path);
        memcpy(list[n].name, entry->d_name, strlen(entry->d_name) + 1);
        n++;
    }
    closedir(dir);
    if (status) {
        free(list);
        return -1;
    }
    if (n > 1) qsort(list, (size_t)n, sizeof *list, compare_steps);
    *out = list;
    *n_out = n;
    return 0;
}

int train_state_find_latest(const char *output_dir, char *dir, size_t size, long *step,
                            ct_error *err) {
    if (size) dir[0] = '\0';
    if (step) *step = -1;
    step_entry *list;
    int n;
    if (list_steps(output_dir, &list, &n, err)) return -1;
    int status = 0;
    for (int i = n - 1; i >= 0; i--) {
        if (!list[i].complete) continue;
        int len = snprintf(dir, size, "%s/checkpoints/%s", output_dir, list[i].name);
        if (len < 0 || (size_t)len >= size) {
            if (size) dir[0] = '\0';
            status = ct_fail(err, "%s: path too long", output_dir);
        } else if (step) {
            *step = list[i].step;
        }
        break;
    }
    free(list);
    return status;
}

/* Renamed first, so that a crash during the removal leaves no half-deleted folder that looks
 * like a checkpoint. */
static int remove_checkpoint(const char *root, const char *name, ct_error *err) {
    char path[4400], doomed[4500];
    snprintf(path, sizeof path, "%s/%s", root, name);
    snprintf(doomed, sizeof doomed, "%s.deleting", path);
    if (rename(path, doomed) != 0)
        return ct_fail(err, "cannot rename %s to %s: %s", path, doomed, strerror(errno));
    return remove_tree(doomed, err);
}

int train_state_prune(const char *output_dir, int keep_last, ct_error *err) {
    char root[4200];
    if (path_join(root, sizeof root, output_dir, "checkpoints", err)) return -1;
    step_entry *list;
    int n;
    if (list_steps(output_dir, &list, &n, err)) return -1;
    if (keep_last < 1) keep_last = 1;
    int newest = -1, kept = 0, status = 0;
    for (int i = n - 1; i >= 0; i--)
        if (list[i].complete && newest < 0) newest = i;
    for (int i = newest; i >= 0 && !status; i--) {
        if (list[i].complete && kept < keep_last) {
            kept++;
            continue;
        }
        status = remove_checkpoint(root, list[i].name, err);
    }
    free(list);
    if (status) return -1;
    /* Leftovers of a removal that a crash interrupted. */
    DIR *dir = opendir(root);
    if (!dir) return 0;
    struct dirent *entry;
    while (!status && (entry = readdir(dir)) != NULL) {
        size_t len = strlen(entry->d_name);
        if (strncmp(entry->d_name, "step-", 5) != 0 || len < 9 ||
            strcmp(entry->d_name + len - 9, ".deleting") != 0)
            continue;
        char path[4400];
        status = path_join(path, sizeof path, root, entry->d_name, err);
        if (!status) status = remove_tree(path, err);
    }
    closedir(dir);
    return status ? -1 : fsync_dir(root, err);
}
