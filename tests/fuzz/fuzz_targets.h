/* fuzz_targets: the entry points the fuzz harnesses (tests/fuzz/fuzz_*.c) and their
 * regression replay (tests/test_fuzz_regressions.c) drive, so that a crashing input found by
 * libFuzzer is replayed through exactly the same calls in CI.
 *
 * Each fuzz_run_* takes a file holding the fuzzed bytes and returns the status of the
 * project's own entry point (0 accepted, -1 rejected with err filled). Whatever the status,
 * everything allocated is freed before returning, so LeakSanitizer sees real leaks only.
 * Invariants that must hold for accepted input (a recipe that was written back loads again)
 * call fuzz_invariant, which aborts: libFuzzer reports that as a crash. */
#ifndef CTUNE_FUZZ_TARGETS_H
#define CTUNE_FUZZ_TARGETS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "peft/lora.h"
#include "train/chat_template.h"
#include "train/model.h"
#include "train/prep_internal.h"
#include "train/recipe.h"
#include "train/safetensors.h"
#include "train/sweep.h"
#include "train/textbuf.h"
#include "train/tokenizer.h"

static inline void fuzz_invariant(bool ok, const char *what, const char *detail) {
    if (ok) return;
    fprintf(stderr, "fuzz invariant broken: %s: %s\n", what, detail ? detail : "");
    abort();
}

/* Reads a whole file (NUL-terminated; *len excludes the NUL); NULL if unreadable. */
static inline char *fuzz_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *grown = realloc(buf, cap * 2);
            if (!grown) { free(buf); buf = NULL; break; }
            buf = grown;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Writes bytes to path (the harness's scratch file). */
static inline int fuzz_write_file(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t put = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) == 0 && put == size ? 0 : -1;
}

/* ---- safetensors: open and validate; then read every float tensor as f32 ---- */
static inline int fuzz_run_safetensors(const char *path, ct_error *err) {
    st_file file;
    if (st_open(&file, path, err) != 0) return -1;
    char shape[128];
    for (int i = 0; i < file.n_tensors; i++) {
        const st_tensor *t = &file.tensors[i];
        fuzz_invariant(st_find(&file, t->name) != NULL, "st_find misses a header tensor", t->name);
        st_shape_text(t, shape, sizeof shape);
        fuzz_invariant(t->nbytes <= file.map_size, "tensor larger than the file", t->name);
        /* The header was checked against the file size, so numel is bounded by the input;
         * the cap only keeps a replay of a large real file from using much memory. */
        if ((t->dtype == ST_F32 || t->dtype == ST_BF16 || t->dtype == ST_F16) &&
            t->numel <= (1u << 20)) {
            float *out = malloc(t->numel ? t->numel * sizeof *out : 1);
            if (out) {
                ct_error read_err;
                (void)st_read_f32(t, out, &read_err);
                free(out);
            }
        }
    }
    (void)st_metadata(&file, "format");
    st_close(&file);
    return 0;
}

/* ---- tokenizer.json: load, then encode a varied string and decode it back ---- */
static const char fuzz_tokenizer_text[] =
    "Hello, world! 12345 ünïcödé — 日本語テキスト 🙂\t tabs  and   spaces\n"
    "<|endoftext|><s></s> don't we'll I'M  \xe2\x80\x8b zero-width; emoji 👩‍👩‍👧 end";

static inline int fuzz_run_tokenizer(const char *path, ct_error *err) {
    tokenizer *tok = NULL;
    if (tokenizer_load(&tok, path, err) != 0) return -1;
    (void)tokenizer_vocab_size(tok);
    (void)tokenizer_fingerprint(tok);
    (void)tokenizer_bos_id(tok);
    (void)tokenizer_token_to_id(tok, "<|endoftext|>");
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t n_ids = 0;
        ct_error enc_err;
        if (tokenizer_encode(tok, fuzz_tokenizer_text, sizeof fuzz_tokenizer_text - 1,
                             special, &ids, &n_ids, &enc_err) == 0) {
            char *text = NULL;
            size_t len = 0;
            if (tokenizer_decode(tok, ids, n_ids, special, &text, &len, &enc_err) == 0) {
                fuzz_invariant(text && strlen(text) == len, "decode length", path);
                free(text);
            }
        }
        free(ids);
    }
    /* Ids the vocabulary may or may not hold: decoding must refuse or succeed, not crash. */
    int32_t probe[] = {0, 1, tokenizer_vocab_size(tok) - 1, tokenizer_vocab_size(tok), -1};
    char *text = NULL;
    size_t len = 0;
    ct_error dec_err;
    if (tokenizer_decode(tok, probe, sizeof probe / sizeof probe[0], false, &text, &len,
                         &dec_err) == 0)
        free(text);
    tokenizer_free(tok);
    return 0;
}

/* ---- recipe YAML: load; the part after a line "#overrides" is one override per line ----
 * An accepted recipe is written back and must load again to the same resolved text. */
static inline int fuzz_run_recipe(const char *path, ct_error *err) {
    size_t len = 0;
    char *text = fuzz_slurp(path, &len);
    if (!text) return ct_fail(err, "%s: cannot read", path);
    char *overrides = strstr(text, "\n#overrides\n");
    char *yaml_path = NULL;
    int rc = -1;
    recipe *r = malloc(sizeof *r), *again = malloc(sizeof *again);
    char *first = NULL, *second = NULL;
    size_t first_len = 0, second_len = 0;
    if (!r || !again) { rc = ct_fail(err, "out of memory"); goto done; }
    if (overrides) {
        /* The YAML part goes to its own file so recipe_load reads it from disk. */
        *overrides = '\0';
        overrides += strlen("\n#overrides\n");
        size_t plen = strlen(path) + 6;
        yaml_path = malloc(plen);
        if (!yaml_path) { rc = ct_fail(err, "out of memory"); goto done; }
        snprintf(yaml_path, plen, "%s.yaml", path);
        if (fuzz_write_file(yaml_path, (const uint8_t *)text, strlen(text))) {
            rc = ct_fail(err, "%s: cannot write", yaml_path);
            goto done;
        }
        char *list[16];
        int n = 0;
        for (char *line = overrides; line && *line && n < 16;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = '\0';
            list[n++] = line;
            line = nl ? nl + 1 : NULL;
        }
        recipe_defaults(r);
        rc = recipe_load_with_overrides(r, yaml_path, list, n, err);
    } else {
        recipe_defaults(r);
        rc = recipe_load(r, path, err);
    }
    if (rc == 0) {
        FILE *out = open_memstream(&first, &first_len);
        ct_error werr;
        fuzz_invariant(out && recipe_write(r, out, &werr) == 0, "recipe_write", werr.msg);
        fclose(out);
        recipe_defaults(again);
        ct_error lerr;
        int again_rc = recipe_load_string(again, first, "written", &lerr);
        if (again_rc != 0) fprintf(stderr, "written recipe:\n%s\n", first);
        fuzz_invariant(again_rc == 0, "written recipe does not load", lerr.msg);
        out = open_memstream(&second, &second_len);
        fuzz_invariant(out && recipe_write(again, out, &werr) == 0, "recipe_write", werr.msg);
        fclose(out);
        fuzz_invariant(first_len == second_len && memcmp(first, second, first_len) == 0,
                       "recipe write/load/write differs", first);
    }
done:
    if (yaml_path) { unlink(yaml_path); free(yaml_path); }
    free(first);
    free(second);
    free(r);
    free(again);
    free(text);
    return rc;
}

/* ---- model config.json: load; an accepted config written back loads again ---- */
static inline int fuzz_run_model_config(const char *path, ct_error *err) {
    model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (model_config_load(&cfg, path, err) != 0) {
        model_config_free(&cfg);
        return -1;
    }
    if (cfg.head_dim > 0 && cfg.head_dim <= (1 << 16)) {
        float *inv_freq = malloc((size_t)(cfg.head_dim / 2 + 1) * sizeof *inv_freq);
        if (inv_freq) model_rope_inv_freq(&cfg, inv_freq);
        free(inv_freq);
    }
    size_t plen = strlen(path) + 8;
    char *out_path = malloc(plen);
    if (out_path) {
        snprintf(out_path, plen, "%s.w.json", path);
        ct_error werr;
        fuzz_invariant(model_config_write(&cfg, out_path, &werr) == 0, "model_config_write", werr.msg);
        model_config again;
        memset(&again, 0, sizeof again);
        ct_error lerr;
        fuzz_invariant(model_config_load(&again, out_path, &lerr) == 0,
                       "written config.json does not load", lerr.msg);
        fuzz_invariant(again.hidden_size == cfg.hidden_size && again.vocab_size == cfg.vocab_size &&
                       again.num_hidden_layers == cfg.num_hidden_layers &&
                       again.head_dim == cfg.head_dim &&
                       again.num_key_value_heads == cfg.num_key_value_heads,
                       "written config.json differs", out_path);
        model_config_free(&again);
        unlink(out_path);
        free(out_path);
    }
    model_config_free(&cfg);
    return 0;
}

/* ---- adapter folder: adapter_config.json alone, or adapter_model.safetensors loaded into
 * a small fixed LoRA model (r 2 on q_proj and v_proj) ---- */
static inline int fuzz_adapter_model(model *m, ct_error *err) {
    model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (model_config_preset(&cfg, "tiny", err)) return -1;
    cfg.vocab_size = 16;
    cfg.hidden_size = 8;
    cfg.intermediate_size = 16;
    cfg.num_hidden_layers = 1;
    cfg.num_attention_heads = 2;
    cfg.num_key_value_heads = 1;
    cfg.head_dim = 4;
    cfg.bos_token_id = cfg.pad_token_id = -1;
    cfg.n_eos = 0;
    lora_settings lora = {.r = 2, .alpha = 4.0f, .dropout = 0.0f};
    const char *targets[] = {"q_proj", "v_proj"};
    if (lora_parse_targets(&lora, targets, 2, err)) return -1;
    return model_create(m, &cfg, &lora, kernels_cpu(), err);
}

/* dir holds adapter_config.json (config true) or adapter_model.safetensors. */
static inline int fuzz_run_adapter(const char *dir, bool config, model *m, ct_error *err) {
    if (config) {
        lora_settings s;
        return lora_read_config(dir, &s, err);
    }
    return lora_load_adapter(m, dir, err);
}

/* ---- one JSONL line of `ctune prep`: parse, then tokenize with the given tokenizer ---- */
static inline int fuzz_run_prep_line(const char *line_in, size_t len, prep_format format,
                                     long line_no, const tokenizer *tok,
                                     const chat_template *tmpl, ct_error *err) {
    char *line = malloc(len + 1);
    if (!line) return ct_fail(err, "out of memory");
    memcpy(line, line_in, len);
    line[len] = '\0';
    prep_job job;
    memset(&job, 0, sizeof job);
    job.line = line_no;
    int rc = prep_parse_line(line, len, format, &job);
    if (rc == 0 && tok) {
        special_ids sp = {tokenizer_bos_id(tok), tokenizer_token_to_id(tok, "<|end_of_text|>"), -1};
        for (int train_on_inputs = 0; train_on_inputs < 2; train_on_inputs++) {
            rc = prep_encode(tok, &sp, tmpl, train_on_inputs, &job);
            if (rc != 0) break;
            free(job.ids);
            free(job.mask);
            job.ids = NULL;
            job.mask = NULL;
        }
    }
    if (rc < 0) ct_fail(err, "line %ld: %.2000s", line_no, job.err.msg);
    prep_job_clear(&job);
    free(line);
    return rc < 0 ? -1 : 0;
}

/* ---- model.safetensors.index.json: dir holds the fuzzed index beside the three shards of
 * tests/fixtures/safetensors/sharded (fuzz_copy_shards) ---- */
static inline int fuzz_copy_shards(const char *dir, ct_error *err) {
    const char *src = getenv("CTUNE_SOURCE_DIR");
    for (int i = 1; i <= 3; i++) {
        char from[1024], to[1024];
        snprintf(from, sizeof from, "%s/tests/fixtures/safetensors/sharded/model-%05d-of-00003.safetensors",
                 src ? src : ".", i);
        snprintf(to, sizeof to, "%s/model-%05d-of-00003.safetensors", dir, i);
        size_t len = 0;
        char *bytes = fuzz_slurp(from, &len);
        if (!bytes) return ct_fail(err, "%s: cannot read (set CTUNE_SOURCE_DIR)", from);
        int rc = fuzz_write_file(to, (const uint8_t *)bytes, len);
        free(bytes);
        if (rc) return ct_fail(err, "%s: cannot write", to);
    }
    return 0;
}

static inline int fuzz_run_st_index(const char *dir, ct_error *err) {
    st_model_files files;
    if (st_model_open(&files, dir, err) != 0) return -1;
    for (int f = 0; f < files.n_files; f++)
        for (int t = 0; t < files.files[f].n_tensors; t++)
            fuzz_invariant(st_model_find(&files, files.files[f].tensors[t].name) != NULL,
                           "st_model_find misses a tensor", files.files[f].tensors[t].name);
    st_model_close(&files);
    return 0;
}

/* ---- sweep YAML: load, expand the points, render the manifest and the Slurm script ---- */
static inline int fuzz_run_sweep(const char *path, ct_error *err) {
    sweep_spec *s = calloc(1, sizeof *s);
    if (!s) return ct_fail(err, "out of memory");
    int rc = sweep_load(s, path, err);
    if (rc == 0) {
        sweep_point *points = NULL;
        int n = 0;
        ct_error expand_err;
        if (sweep_expand(s, &points, &n, &expand_err) == 0) {
            textbuf out = {0};
            sweep_manifest_json(s, points, n, &out);
            textbuf_free(&out);
            textbuf script = {0};
            (void)sweep_sbatch_script(s, points, n, "/usr/bin/ctune", "/work", &script, &expand_err);
            textbuf_free(&script);
            sweep_points_free(points, n);
        }
    }
    sweep_free(s);
    free(s);
    return rc;
}

#endif
