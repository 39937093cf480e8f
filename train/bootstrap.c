#include "train/bootstrap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "train/fsutil.h"
#include "train/model.h"
#include "train/safetensors.h"
#include "train/synth.h"
#include "train/tokenizer.h"

/* The special tokens of byte-level preset models: ids 256, 257, 258 (see model presets). */
static const char *const preset_bos = "<|begin_of_text|>";
static const char *const preset_eos = "<|end_of_text|>";
static const char *const preset_pad = "<|pad|>";

static int write_generation_config(const char *dir, const model_config *cfg, ct_error *err) {
    char path[4096], text[512];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    int len = snprintf(text, sizeof text,
                       "{\n  \"bos_token_id\": %d,\n  \"do_sample\": false,\n  \"eos_token_id\": %d,\n"
                       "  \"pad_token_id\": %d\n}\n",
                       cfg->bos_token_id, cfg->n_eos > 0 ? cfg->eos_token_ids[0] : -1, cfg->pad_token_id);
    return write_file_atomic(path, text, (size_t)len, err);
}

/* The model made here exists only to write its weights. Its buffers are plain host memory,
 * not the CPU backend's: that backend's peak counts from the start of the process, and a run
 * that creates its model (model.init_preset) would otherwise report the fp32 model it wrote as
 * its own peak (bench-20m: 166 MiB for a 54 MiB QLoRA run). Zero-filled and aligned as the
 * backend's are. */
static void *unaccounted_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    if (bytes) memset(p, 0, bytes);
    return p;
}

int bootstrap_model(const char *dir, const char *preset, uint64_t seed, ct_error *err) {
    model_config cfg;
    if (model_config_preset(&cfg, preset, err)) return -1;
    kernels host = *kernels_cpu();
    host.alloc = unaccounted_alloc;
    host.release = free;
    model m;
    if (model_create(&m, &cfg, NULL, &host, err)) {
        model_config_free(&cfg);
        return ct_error_prefix(err, "preset '%s'", preset);
    }
    model_init_weights(&m, seed);
    char path[4096];
    int status = make_dirs(dir, err);
    if (!status) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        status = model_write_weights(&m, path, false, "", err);
    }
    if (!status) status = tokenizer_write_byte_level(dir, preset_bos, preset_eos, preset_pad, err);
    if (!status) status = write_generation_config(dir, &cfg, err);
    /* config.json last: its presence is what marks the folder complete. */
    if (!status) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        status = model_config_write(&cfg, path, err);
    }
    model_free(&m);
    model_config_free(&cfg);
    return status ? ct_error_prefix(err, "creating model folder %s", dir) : 0;
}

/* One split of the recipe's synthetic task, into path (its folder created if needed). */
static int write_synthetic_split(const recipe *r, const char *path, synth_split split,
                                 int examples, const tokenizer *tok, const model_config *cfg,
                                 ct_error *err) {
    char dir[4096];
    path_parent(path, dir, sizeof dir);
    if (make_dirs(dir, err)) return -1;
    int eos = cfg->n_eos > 0 ? cfg->eos_token_ids[0] : -1;
    return synth_write_dataset(path, tok, r->data.synthetic_task, r->data.synthetic_digits,
                               (uint64_t)r->data.synthetic_seed, split, examples,
                               cfg->bos_token_id, eos, err);
}

int bootstrap_synthetic_data(const recipe *r, ct_error *err) {
    if (!r->data.synthetic_task[0]) return 0;
    bool need_train = !path_exists(r->data.train);
    bool need_eval = r->data.eval[0] && !path_exists(r->data.eval);
    if (!need_train && !need_eval) return 0;

    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", r->model.path);
    model_config cfg;
    if (model_config_load(&cfg, path, err)) return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", r->model.path);
    tokenizer *tok = NULL;
    if (tokenizer_load(&tok, path, err)) {
        model_config_free(&cfg);
        return -1;
    }
    int status = 0;
    if (need_train)
        status = write_synthetic_split(r, r->data.train, SYNTH_TRAIN,
                                       r->data.synthetic_train_examples, tok, &cfg, err);
    if (!status && need_eval)
        status = write_synthetic_split(r, r->data.eval, SYNTH_EVAL,
                                       r->data.synthetic_eval_examples, tok, &cfg, err);
    tokenizer_free(tok);
    model_config_free(&cfg);
    return status ? ct_error_prefix(err, "generating the synthetic '%s' task", r->data.synthetic_task) : 0;
}
