/* checkpoint: hub folders written atomically.
 *
 * A folder is built under "<dir>.tmp-<pid>" (every file fsynced, then the folder), then
 * swapped in: an existing <dir> is renamed to "<dir>.old-<pid>", the new folder renamed to
 * <dir>, the parent fsynced, the old folder removed. A crash before the swap leaves the
 * old <dir> untouched (plus a stray .tmp folder); a crash between the two renames leaves
 * the complete old folder under its .old name. The model card lives in model_card.c. */
#include "train/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peft/lora.h"
#include "train/fsutil.h"
#include "train/safetensors.h"

#define PATH_CAP 4096

/* ------------------------------------------------------------- file system ---- */

static bool is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ------------------------------------------------------------- folder content ---- */

/* Files of the base model that a full fine-tune keeps unchanged, so the folder is a
 * complete model that AutoTokenizer and generate() can use. */
static const char *const BASE_FILES[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "chat_template.jinja",
};

int checkpoint_copy_base_files(const char *dir, const char *base_dir, ct_error *err) {
    char path[PATH_CAP];
    if (!base_dir || !*base_dir) return 0;
    for (size_t i = 0; i < sizeof BASE_FILES / sizeof BASE_FILES[0]; i++) {
        char src[PATH_CAP];
        if (path_join(src, sizeof src, base_dir, BASE_FILES[i], NULL) || !is_regular_file(src))
            continue;
        if (path_join(path, sizeof path, dir, BASE_FILES[i], err) || copy_file(src, path, err))
            return -1;
    }
    return 0;
}

typedef struct base_weights {
    const model *m;
    const int *param_of; /* tensor index -> parameter index */
    const checkpoint_values *values;
} base_weights;

static int fetch_param(void *ctx, int index, void *out, ct_error *err) {
    const base_weights *w = ctx;
    const int i = w->param_of[index];
    const model_param *p = &w->m->params[i];
    if (!p->sharded) {
        model_param_download(w->m, p, out);
        return 0;
    }
    /* its 16-bit copy is not the fp32 value the file promises: the ranks hold that */
    if (!w->values) return ct_fail(err, "%s: its fp32 values are sharded over the ranks, and no gather was given", p->name);
    return w->values->fetch(w->values->ctx, i, out, err);
}

/* The base weights in parameter (state-dict) order, fp32, one tensor in host memory at a
 * time, in one file or shards of at most max_shard_bytes. */
static int write_weights(const char *dir, const model *m, long long max_shard_bytes,
                         const checkpoint_values *values, ct_error *err) {
    st_write_tensor *tensors = calloc((size_t)m->n_params, sizeof *tensors);
    int *param_of = calloc((size_t)m->n_params, sizeof *param_of);
    int n = 0, rc = -1;
    if (!tensors || !param_of) {
        ct_fail(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (p->is_lora) continue;
        tensors[n] = (st_write_tensor){.name = p->name, .dtype = ST_F32, .ndim = p->ndim};
        for (int d = 0; d < p->ndim; d++) tensors[n].shape[d] = p->shape[d];
        param_of[n++] = i;
    }
    base_weights w = {m, param_of, values};
    rc = st_write_model(dir, tensors, n, max_shard_bytes, fetch_param, &w, err);
done:
    free(param_of);
    free(tensors);
    return rc;
}

static int write_full(const char *dir, model *m, const recipe *r, const char *base_dir,
                      const checkpoint_values *values, ct_error *err) {
    char path[PATH_CAP];
    long long max_shard = r && r->checkpoint.max_shard_bytes > 0 ? r->checkpoint.max_shard_bytes
                                                                  : 5000000000LL;
    if (write_weights(dir, m, max_shard, values, err)) return -1;

    /* The weights are fp32 whatever the base was stored in; say so, or transformers would
     * load them into the base's dtype. */
    model_config cfg = m->cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "float32");
    if (path_join(path, sizeof path, dir, "config.json", err) ||
        model_config_write(&cfg, path, err))
        return -1;
    return checkpoint_copy_base_files(dir, base_dir, err);
}

typedef struct hub_content {
    model *m;
    const recipe *r;
    const char *base_dir;
    const run_summary *summary;
    const checkpoint_values *values;
} hub_content;

static int fill_hub(const char *tmp, void *ctx, ct_error *err) {
    hub_content *c = ctx;
    int rc;
    if (c->m->has_lora) {
        char base_id[PATH_CAP];
        checkpoint_base_model_id(c->m, c->base_dir, true, base_id, sizeof base_id);
        rc = lora_write_adapter(tmp, c->m, base_id[0] ? base_id : NULL, err);
    } else {
        rc = write_full(tmp, c->m, c->r, c->base_dir, c->values, err);
    }
    if (rc == 0) rc = checkpoint_write_card(tmp, c->m, c->r, c->base_dir, c->summary, err);
    return rc;
}

int checkpoint_write_hub(const char *dir, model *m, const recipe *r, const char *base_dir,
                         const run_summary *summary, ct_error *err) {
    return checkpoint_write_hub_from(dir, m, r, base_dir, summary, NULL, err);
}

int checkpoint_write_hub_from(const char *dir, model *m, const recipe *r, const char *base_dir,
                              const run_summary *summary, const checkpoint_values *values, ct_error *err) {
    hub_content content = {m, r, base_dir, summary, values};
    return checkpoint_write_folder(dir, fill_hub, &content, err);
}

int checkpoint_write_folder(const char *dir, checkpoint_fill_fn fill, void *ctx,
                            ct_error *err) {
    char target[PATH_CAP];
    if (!dir || !*dir) return ct_fail(err, "checkpoint: empty output directory");
    if ((size_t)snprintf(target, sizeof target, "%s", dir) >= sizeof target - 32)
        return ct_fail(err, "%s: path too long", dir);
    size_t len = strlen(target);
    while (len > 1 && target[len - 1] == '/') target[--len] = '\0';
    if (strcmp(target, "/") == 0 || strcmp(target, ".") == 0 || strcmp(target, "..") == 0)
        return ct_fail(err, "%s: refusing to replace this directory with a checkpoint", dir);

    char parent[PATH_CAP], tmp[PATH_CAP + 32], old[PATH_CAP + 32];
    path_parent(target, parent, sizeof parent);
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", target, (long)getpid());
    snprintf(old, sizeof old, "%s.old-%ld", target, (long)getpid());
    if (make_dirs(parent, err) != 0) return ct_error_prefix(err, "checkpoint %s", target);
    /* A folder of this name can only be left over from a killed process with our pid. */
    if (remove_tree(tmp, err) != 0) return ct_error_prefix(err, "checkpoint %s", target);
    if (mkdir(tmp, 0755) != 0)
        return ct_fail(err, "%s: cannot create directory: %s", tmp, strerror(errno));

    int rc = fill(tmp, ctx, err);
    if (rc == 0) rc = fsync_dir(tmp, err);
    if (rc != 0) {
        ct_error cleanup;
        remove_tree(tmp, &cleanup);
        return ct_error_prefix(err, "checkpoint %s", target);
    }

    struct stat st;
    bool replacing = lstat(target, &st) == 0;
    if (replacing) {
        if (remove_tree(old, err) != 0) return ct_error_prefix(err, "checkpoint %s", target);
        if (rename(target, old) != 0) {
            int saved = errno;
            ct_error cleanup;
            remove_tree(tmp, &cleanup);
            return ct_fail(err, "checkpoint %s: cannot move the previous folder aside: %s",
                           target, strerror(saved));
        }
    }
    if (rename(tmp, target) != 0) {
        int saved = errno;
        if (replacing) rename(old, target);
        ct_error cleanup;
        remove_tree(tmp, &cleanup);
        return ct_fail(err, "checkpoint %s: cannot rename %s into place: %s", target, tmp,
                       strerror(saved));
    }
    if (fsync_dir(parent, err) != 0) return ct_error_prefix(err, "checkpoint %s", target);
    /* The new folder is in place; a failure to delete the old one only leaves a stray
     * "<dir>.old-<pid>" folder, which is not worth failing a finished run for. */
    if (replacing) {
        ct_error cleanup;
        remove_tree(old, &cleanup);
    }
    return 0;
}
