/* model_card: README.md of a hub folder — YAML front matter that the Hub (and
 * huggingface_hub's ModelCard) reads, then a body a person reads: what was trained, the
 * results, the whole resolved recipe, how to load the folder, and its limitations.
 *
 * Every string in the front matter is written double-quoted with escapes, so a base model
 * or dataset name with ':' or '#' cannot change the YAML's structure. Numbers always carry
 * a '.' (1.0e-05, not 1e-05): PyYAML's YAML 1.1 resolver reads "1e-05" as a string. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "train/checkpoint.h"
#include "train/fsutil.h"

static void yaml_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void yaml_float(FILE *f, double x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.8g", x);
    char *e = strpbrk(buf, "eE");
    if (!strchr(buf, '.')) {
        if (e) {
            char tail[32];
            snprintf(tail, sizeof tail, "%s", e);
            snprintf(e, sizeof buf - (size_t)(e - buf), ".0%s", tail);
        } else {
            strcat(buf, ".0");
        }
    }
    fputs(buf, f);
}

/* "owner/name" with no leading '/', '.', '~' and exactly one '/': a Hub id, not a path. */
static bool looks_like_hub_id(const char *s) {
    if (!s || !*s || *s == '/' || *s == '.' || *s == '~') return false;
    const char *slash = strchr(s, '/');
    return slash && slash[1] && !strchr(slash + 1, '/');
}

void checkpoint_base_model_id(const model *m, const char *base_dir, bool for_loading, char *out,
                              size_t size) {
    out[0] = '\0';
    const cJSON *raw = m->cfg.raw_json;
    const cJSON *name = raw ? cJSON_GetObjectItemCaseSensitive(raw, "_name_or_path") : NULL;
    if (cJSON_IsString(name) && looks_like_hub_id(name->valuestring)) {
        snprintf(out, size, "%s", name->valuestring);
        return;
    }
    if (!base_dir || !*base_dir) return;
    if (for_loading)
        snprintf(out, size, "%s", base_dir);
    else
        path_basename(base_dir, out, size);
}

static void front_matter(FILE *f, const recipe *r, bool lora, const char *base,
                         const char *dataset, const char *eval_set, const run_summary *s) {
    fputs("---\n", f);
    if (base[0]) {
        fputs("base_model: ", f);
        yaml_string(f, base);
        fputc('\n', f);
    }
    fprintf(f, "library_name: %s\n", lora ? "peft" : "transformers");
    fputs("license: ", f);
    yaml_string(f, r->checkpoint.license[0] ? r->checkpoint.license : "other");
    fputs("\ntags:\n- ctune\n", f);
    fprintf(f, "- %s\n", lora ? "lora" : "full-fine-tune");
    fputs("- text-generation\n", f);
    if (base[0]) {
        char tag[4200];
        snprintf(tag, sizeof tag, "base_model:%s:%s", lora ? "adapter" : "finetune", base);
        fputs("- ", f);
        yaml_string(f, tag);
        fputc('\n', f);
    }
    if (dataset[0]) {
        fputs("datasets:\n- ", f);
        yaml_string(f, dataset);
        fputc('\n', f);
    }
    fputs("pipeline_tag: text-generation\n", f);

    bool has_loss = isfinite(s->eval_loss), has_accuracy = isfinite(s->eval_accuracy);
    if (has_loss || has_accuracy) {
        fputs("model-index:\n- name: ", f);
        yaml_string(f, r->name[0] ? r->name : "ctune-model");
        fputs("\n  results:\n  - task:\n      type: text-generation\n"
              "      name: Causal language modeling\n    dataset:\n      name: ", f);
        yaml_string(f, eval_set[0] ? eval_set : "eval");
        fputs("\n      type: ", f);
        yaml_string(f, eval_set[0] ? eval_set : "eval");
        fputs("\n      split: eval\n    metrics:\n", f);
        if (has_loss) {
            fputs("    - type: loss\n      name: Eval loss\n      value: ", f);
            yaml_float(f, s->eval_loss);
            fputc('\n', f);
        }
        if (has_accuracy) {
            fputs("    - type: accuracy\n      name: Exact-match accuracy\n      value: ", f);
            yaml_float(f, s->eval_accuracy);
            fputc('\n', f);
        }
    }
    fputs("---\n\n", f);
}

static void table_number(FILE *f, const char *label, double value, const char *format) {
    fprintf(f, "| %s | ", label);
    if (isfinite(value))
        fprintf(f, format, value);
    else
        fputs("not measured", f);
    fputs(" |\n", f);
}

static void body(FILE *f, const model *m, const recipe *r, bool lora, const char *base,
                 const char *base_path, const char *dataset, const run_summary *s) {
    fprintf(f, "# %s\n\n", r->name[0] ? r->name : "ctune model");
    const char *shown_base = base[0] ? base : "an unnamed base model";
    size_t trainable = model_count_params(m, true), total = model_count_params(m, false);
    if (lora) {
        fprintf(f, "A %s adapter for `%s` (%s, %d layers), trained with ctune. Rank r = %d, "
                   "alpha = %g%s, dropout %g, on ", m->lora.use_dora ? "DoRA (weight-decomposed LoRA)" : "LoRA",
                shown_base, m->cfg.model_type, m->cfg.num_hidden_layers, m->lora.r, (double)m->lora.alpha,
                m->lora.use_rslora ? " (rsLoRA scaling alpha/sqrt(r))" : "", (double)m->lora.dropout);
        bool first = true;
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
            if (!m->lora.targets[kind]) continue;
            fprintf(f, "%s`%s`", first ? "" : ", ", linear_kind_name((linear_kind)kind));
            first = false;
        }
        fprintf(f, ": %zu trainable parameters beside %zu frozen ones.\n\n", trainable,
                total - trainable);
        if (m->nf4_base)
            fputs("QLoRA: the base's decoder-layer Linear weights were held in 4 bits during training "
                  "(NF4, blocks of 64, as bitsandbytes' `load_in_4bit` with `bnb_4bit_quant_type=\"nf4\"`). "
                  "Load the base that way, or pass `--quantize-base nf4` to `ctune merge`, `ctune eval` or "
                  "`ctune generate`, to use the weights the adapter was trained with.\n\n",
                  f);
    } else {
        fprintf(f, "A full fine-tune of `%s` (%s, %d layers, %zu parameters, all trained), "
                   "made with ctune. Weights are stored in float32.\n\n",
                shown_base, m->cfg.model_type, m->cfg.num_hidden_layers, total);
    }
    fprintf(f, "Trained on `%s`%s%s%s for %d optimizer steps of %d sequences (up to %d tokens "
               "each), AdamW at peak learning rate %g with a %s schedule (%d warmup steps), "
               "%s precision.\n\n",
            dataset[0] ? dataset : "(no dataset recorded)",
            r->data.synthetic_task[0] ? " (the built-in synthetic task `" : "",
            r->data.synthetic_task, r->data.synthetic_task[0] ? "`)" : "", s->steps,
            r->train.global_batch_size, r->data.seq_len, r->optim.lr,
            recipe_schedule_name(r->optim.schedule), r->optim.warmup_steps,
            recipe_precision_name(r->precision));

    fputs("## Results\n\n| metric | value |\n|---|---|\n", f);
    fprintf(f, "| optimizer steps | %d |\n", s->steps);
    table_number(f, "final train loss", s->train_loss, "%.4f");
    table_number(f, "eval loss", s->eval_loss, "%.4f");
    table_number(f, "eval accuracy (exact match)", s->eval_accuracy, "%.4f");
    fprintf(f, "| loss tokens seen | %lld |\n", s->tokens_seen);
    table_number(f, "throughput (tokens/s)", s->tokens_per_second, "%.1f");
    table_number(f, "wall time (s)", s->wall_seconds, "%.1f");
    fprintf(f, "| world size (ranks) | %d |\n\n", s->world_size);

    fputs("## Training recipe\n\nThe fully resolved recipe; `ctune train` on it repeats the "
          "run.\n\n```yaml\n", f);
    ct_error ignored;
    if (recipe_write(r, f, &ignored) != 0) fprintf(f, "# recipe not available: %s\n", ignored.msg);
    fputs("```\n\n", f);

    fputs("## How to load\n\n```python\nimport torch\n"
          "from transformers import AutoModelForCausalLM\n", f);
    if (lora) {
        fprintf(f, "from peft import PeftModel\n\n"
                   "base = AutoModelForCausalLM.from_pretrained(\"%s\", dtype=torch.float32)\n"
                   "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
                   "model = model.merge_and_unload()  # optional: plain transformers weights\n",
                base_path[0] ? base_path : "path/to/base");
    } else {
        fputs("from transformers import AutoTokenizer\n\n"
              "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n"
              "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n", f);
    }
    fputs("```\n\n", f);

    fputs("## Limitations\n\n", f);
    fprintf(f, "- Trained only on `%s`; behaviour outside that data is whatever the base model "
               "does, including its biases and failure modes.\n",
            dataset[0] ? dataset : "the training set");
    fputs("- The numbers above are measured on the held-out evaluation split of the same "
          "data, not on a general benchmark; no safety evaluation was made.\n", f);
    if (r->data.synthetic_task[0])
        fputs("- The data is a synthetic task meant to test the training stack; the model is "
              "not useful as a general assistant.\n", f);
    if (lora)
        fputs("- The adapter only works with the exact base weights it was trained on.\n", f);
}

int checkpoint_write_card(const char *dir, const model *m, const recipe *r, const char *base_dir,
                          const run_summary *summary, ct_error *err) {
    char base[4096], base_path[4096], dataset[512], eval_set[512];
    checkpoint_base_model_id(m, base_dir, false, base, sizeof base);
    checkpoint_base_model_id(m, base_dir, true, base_path, sizeof base_path);
    dataset[0] = '\0';
    if (r->data.train[0]) path_stem(r->data.train, dataset, sizeof dataset);
    /* The model-index names the set the numbers were measured on. */
    snprintf(eval_set, sizeof eval_set, "%s", dataset);
    if (r->data.eval[0]) path_stem(r->data.eval, eval_set, sizeof eval_set);
    run_summary empty = {.eval_loss = NAN, .eval_accuracy = NAN, .train_loss = NAN,
                         .tokens_per_second = NAN, .wall_seconds = NAN, .world_size = 1};
    const run_summary *s = summary ? summary : &empty;

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return ct_fail(err, "%s/README.md: cannot allocate the card text", dir);
    front_matter(f, r, m->has_lora, base, dataset, eval_set, s);
    body(f, m, r, m->has_lora, base, base_path, dataset, s);
    if (fclose(f) != 0 || !text) {
        free(text);
        return ct_fail(err, "%s/README.md: cannot build the card text", dir);
    }
    char path[4200];
    if (snprintf(path, sizeof path, "%s/README.md", dir) >= (int)sizeof path) {
        free(text);
        return ct_fail(err, "%s: path too long", dir);
    }
    int rc = write_file_atomic(path, text, len, err);
    free(text);
    return rc;
}
