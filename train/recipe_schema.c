/* recipe_schema: the one table of recipe keys (path, type, place in the struct, default,
 * allowed values, meaning) and what it knows about values: parsing a scalar into a field,
 * checking a field, suggesting a key for a misspelt one. Private to the recipe module:
 * recipe.c reads YAML and overrides through it; the docs' key reference is printed from it. */
#include "train/recipe_schema.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Enum fields are stored through an int pointer. */
_Static_assert(sizeof(recipe_method) == sizeof(int) && sizeof(recipe_schedule) == sizeof(int) &&
                   sizeof(recipe_precision) == sizeof(int) &&
                   sizeof(recipe_device) == sizeof(int) &&
                   sizeof(recipe_dist_backend) == sizeof(int) &&
                   sizeof(recipe_base_quant) == sizeof(int),
               "enums are stored as int");

/* clang-format off */
static const char *const METHODS[] = {"lora", "full", NULL};
static const char *const SCHEDULES[] = {"constant", "linear", "cosine", NULL};
static const char *const PRECISIONS[] = {"fp32", "bf16-mixed", "fp16-mixed", NULL};
static const char *const DEVICES[] = {"auto", "cpu", "cuda", NULL};
static const char *const BACKENDS[] = {"auto", "mpi", "nccl", NULL};
static const char *const BASE_QUANTS[] = {"none", "nf4", NULL};
static const char *const TASKS[] = {"addition", "reversal", NULL};
static const char *const TARGETS[] = {"q_proj",    "k_proj",  "v_proj",    "o_proj",    "gate_proj",
                                      "up_proj",   "down_proj", "all-linear", NULL};
/* clang-format on */

#define AT(f) .offset = offsetof(recipe, f), .size = sizeof(((recipe *)0)->f)
#define IRANGE(lo, hi) .imin = (lo), .imax = (hi)
#define DRANGE(lo, hi) .dmin = (lo), .dmax = (hi)

/* clang-format off */
/* Keys of one section stay contiguous: the writer opens a section when the prefix changes. */
const recipe_key SCHEMA_KEYS[] = {
    {.path = "name", .type = KEY_STRING, AT(name), .def = "", .def_note = "the recipe file's stem",
     .doc = "run name; names the default checkpoint.output_dir"},
    {.path = "model.path", .type = KEY_STRING, AT(model.path), .def = "", .required = true,
     .doc = "Hugging Face model folder: config.json and safetensors weights"},
    {.path = "model.init_preset", .type = KEY_STRING, AT(model.init_preset), .def = "",
     .doc = "if set and model.path has no config.json, create a randomly initialised model there "
            "from this built-in config (tiny, bench-20m)"},
    {.path = "model.init_seed", .type = KEY_INT64, AT(model.init_seed), .def = "0",
     IRANGE(0, LLONG_MAX), .doc = "seed of that initialisation"},
    {.path = "method", .type = KEY_ENUM, AT(method), .def = "lora", .choices = METHODS,
     .doc = "lora: train adapters on a frozen base; full: train every weight"},
    {.path = "lora.r", .type = KEY_INT, AT(lora.r), .def = "8", IRANGE(1, 4096),
     .doc = "adapter rank"},
    {.path = "lora.alpha", .type = KEY_DOUBLE, AT(lora.alpha), .def = "16", DRANGE(0, INFINITY),
     .dmin_open = true, .doc = "adapter scaling is alpha/r (alpha/sqrt(r) with use_rslora)"},
    {.path = "lora.dropout", .type = KEY_DOUBLE, AT(lora.dropout), .def = "0.0", DRANGE(0, 1),
     .dmax_open = true, .doc = "dropout on the adapter input while training (in bf16/fp16-mixed, 0 runs the adapters' backward inside the base GEMMs and keeps no fp32 norm/SwiGLU outputs: faster and smaller; docs/precision.md)"},
    {.path = "lora.use_rslora", .type = KEY_BOOL, AT(lora.use_rslora), .def = "false",
     .doc = "rank-stabilised scaling alpha/sqrt(r)"},
    {.path = "lora.use_dora", .type = KEY_BOOL, AT(lora.use_dora), .def = "false",
     .doc = "DoRA: a trained magnitude per output row of each adapted projection (peft's use_dora; docs/model.md)"},
    {.path = "lora.quantize_base", .type = KEY_ENUM, AT(lora.quantize_base), .def = "none", .choices = BASE_QUANTS,
     .doc = "nf4: QLoRA, the decoder layers' frozen Linear weights held in 4 bits (bitsandbytes' NF4, blocks of 64) "
            "and read back into 16 bits one layer at a time; needs bf16-mixed or fp16-mixed (docs/model.md)"},
    {.path = "lora.target_modules", .type = KEY_LIST, AT(lora.targets),
     .count_offset = offsetof(recipe, lora.n_targets), .def = "[q_proj, v_proj]",
     .choices = TARGETS,
     .doc = "projections that get adapters (a list), or all-linear for all seven"},
    {.path = "data.train", .type = KEY_STRING, AT(data.train), .def = "", .required = true,
     .doc = "training set: HDF5 from ctune prep, or written here when synthetic_task is set"},
    {.path = "data.eval", .type = KEY_STRING, AT(data.eval), .def = "",
     .doc = "evaluation set (HDF5); empty: no evaluation"},
    {.path = "data.seq_len", .type = KEY_INT, AT(data.seq_len), .def = "256", IRANGE(8, 1048576),
     .doc = "tokens per sequence"},
    {.path = "data.synthetic_task", .type = KEY_STRING, AT(data.synthetic_task), .def = "",
     .choices = TASKS,
     .doc = "built-in task written to data.train (and data.eval) when those files do not exist"},
    {.path = "data.synthetic_train_examples", .type = KEY_INT, AT(data.synthetic_train_examples),
     .def = "20000", IRANGE(1, INT_MAX), .doc = "examples generated for training"},
    {.path = "data.synthetic_eval_examples", .type = KEY_INT, AT(data.synthetic_eval_examples),
     .def = "256", IRANGE(1, INT_MAX), .doc = "examples generated for evaluation"},
    {.path = "data.synthetic_digits", .type = KEY_INT, AT(data.synthetic_digits), .def = "3",
     IRANGE(1, 9), .doc = "addition: most digits per operand; reversal: strings of up to 2x this"},
    {.path = "data.synthetic_seed", .type = KEY_INT64, AT(data.synthetic_seed), .def = "1234",
     IRANGE(0, LLONG_MAX), .doc = "seed of the generated problems"},
    {.path = "data.pack", .type = KEY_BOOL, AT(data.pack), .def = "false",
     .doc = "pack several documents into each sequence; attention never crosses a document "
            "boundary and positions restart per document"},
    {.path = "train.micro_batch_size", .type = KEY_INT, AT(train.micro_batch_size), .def = "8",
     IRANGE(1, 65536), .doc = "sequences per forward/backward pass on one rank"},
    {.path = "train.global_batch_size", .type = KEY_INT, AT(train.global_batch_size), .def = "32",
     IRANGE(1, 16777216),
     .doc = "sequences per optimizer step over all ranks (= micro x ranks x accumulation)"},
    {.path = "train.max_steps", .type = KEY_INT, AT(train.max_steps), .def = "100",
     IRANGE(1, INT_MAX), .doc = "optimizer steps"},
    {.path = "train.seed", .type = KEY_INT64, AT(train.seed), .def = "1234", IRANGE(0, LLONG_MAX),
     .doc = "seed of adapter init, dropout and data order"},
    {.path = "train.eval_every", .type = KEY_INT, AT(train.eval_every), .def = "0",
     IRANGE(0, INT_MAX), .doc = "steps between evaluations; 0: only at the end"},
    {.path = "train.eval_max_batches", .type = KEY_INT, AT(train.eval_max_batches), .def = "0",
     IRANGE(0, INT_MAX), .doc = "cap on batches per evaluation; 0: the whole set"},
    {.path = "train.log_every", .type = KEY_INT, AT(train.log_every), .def = "10",
     IRANGE(1, INT_MAX), .doc = "steps between progress lines on rank 0"},
    {.path = "train.activation_checkpointing", .type = KEY_BOOL,
     AT(train.activation_checkpointing), .def = "false",
     .doc = "keep only each layer's input and recompute its activations in the backward pass: one layer's activations in memory instead of all, for about one extra forward pass; same gradients, bit for bit"},
    {.path = "train.tensorboard", .type = KEY_BOOL, AT(train.tensorboard), .def = "false",
     .doc = "also write the metrics as TensorBoard scalars (train/loss, train/lr, train/grad_norm, eval/loss, ...) "
            "and the resolved recipe (Text tab) into <output_dir>/tensorboard: tensorboard --logdir <output_dir>, or a "
            "sweep's folder to compare its points"},
    {.path = "optim.lr", .type = KEY_DOUBLE, AT(optim.lr), .def = "1e-3", DRANGE(0, INFINITY),
     .dmin_open = true, .doc = "peak learning rate"},
    {.path = "optim.weight_decay", .type = KEY_DOUBLE, AT(optim.weight_decay), .def = "0.0",
     DRANGE(0, INFINITY), .doc = "AdamW decoupled weight decay"},
    {.path = "optim.beta1", .type = KEY_DOUBLE, AT(optim.beta1), .def = "0.9", DRANGE(0, 1),
     .dmax_open = true, .doc = "AdamW first-moment decay"},
    {.path = "optim.beta2", .type = KEY_DOUBLE, AT(optim.beta2), .def = "0.999", DRANGE(0, 1),
     .dmax_open = true, .doc = "AdamW second-moment decay"},
    {.path = "optim.eps", .type = KEY_DOUBLE, AT(optim.eps), .def = "1e-8", DRANGE(0, INFINITY),
     .dmin_open = true, .doc = "AdamW denominator epsilon"},
    {.path = "optim.grad_clip", .type = KEY_DOUBLE, AT(optim.grad_clip), .def = "1.0",
     DRANGE(0, INFINITY), .doc = "max global gradient norm; 0 disables clipping"},
    {.path = "optim.schedule", .type = KEY_ENUM, AT(optim.schedule), .def = "cosine",
     .choices = SCHEDULES, .doc = "learning-rate decay after warmup"},
    {.path = "optim.warmup_steps", .type = KEY_INT, AT(optim.warmup_steps), .def = "0",
     IRANGE(0, INT_MAX), .doc = "linear warmup from 0 to lr over this many steps"},
    {.path = "optim.min_lr_ratio", .type = KEY_DOUBLE, AT(optim.min_lr_ratio), .def = "0.0",
     DRANGE(0, 1), .doc = "floor of the decay, as a fraction of lr"},
    {.path = "optim.loss_scale_init", .type = KEY_DOUBLE, AT(optim.loss_scale_init), .def = "65536.0",
     DRANGE(1, 1e30), .doc = "fp16-mixed: the first dynamic loss scale (a power of two keeps the "
                             "unscaling exact); halved on every overflow, which skips that step"},
    {.path = "optim.loss_scale_growth_interval", .type = KEY_INT,
     AT(optim.loss_scale_growth_interval), .def = "2000", IRANGE(1, INT_MAX),
     .doc = "fp16-mixed: consecutive steps without overflow before the loss scale doubles"},
    {.path = "precision", .type = KEY_ENUM, AT(precision), .def = "fp32", .choices = PRECISIONS,
     .doc = "fp32; or bf16-mixed / fp16-mixed: every matrix product on 16-bit copies of its "
            "operands with fp32 sums, fp32 master weights and optimizer state (fp16-mixed adds "
            "dynamic loss scaling). Made for the GPU; on the CPU it rounds the same way, slower "
            "than fp32, to check a recipe or compare against the GPU"},
    {.path = "device", .type = KEY_ENUM, AT(device), .def = "auto", .choices = DEVICES,
     .doc = "auto: cuda when a GPU is visible, else cpu"},
    {.path = "distributed.zero_stage", .type = KEY_INT, AT(distributed.zero_stage), .def = "0",
     IRANGE(0, 3), .doc = "0: replicate; 1: shard optimizer state; 2: also shard gradients; 3: also "
                          "gather the layers' 16-bit weights layer by layer (mixed precision, full "
                          "fine-tuning)"},
    {.path = "distributed.backend", .type = KEY_ENUM, AT(distributed.backend), .def = "auto",
     .choices = BACKENDS, .doc = "collectives: auto picks nccl on cuda, mpi on cpu"},
    {.path = "distributed.timeout_s", .type = KEY_DOUBLE, AT(distributed.timeout_s), .def = "1800.0",
     DRANGE(0, INFINITY), .dmin_open = true,
     .doc = "seconds a collective may wait for the other ranks before the job is aborted with "
            "the rank and the operation named"},
    {.path = "checkpoint.output_dir", .type = KEY_STRING, AT(checkpoint.output_dir), .def = "",
     .def_note = "`runs/<name>`", .doc = "run directory (metrics, checkpoints, final model)"},
    {.path = "checkpoint.every", .type = KEY_INT, AT(checkpoint.every), .def = "0",
     IRANGE(0, INT_MAX), .doc = "steps between checkpoints; 0: final only"},
    {.path = "checkpoint.keep_last", .type = KEY_INT, AT(checkpoint.keep_last), .def = "2",
     IRANGE(1, INT_MAX), .doc = "step checkpoints kept on disk (older ones are removed)"},
    {.path = "checkpoint.license", .type = KEY_STRING, AT(checkpoint.license),
     .def = "apache-2.0", .doc = "license in the model card"},
    {.path = "checkpoint.max_shard_bytes", .type = KEY_INT64, AT(checkpoint.max_shard_bytes),
     .def = "5000000000", IRANGE(1, LLONG_MAX),
     .doc = "full fine-tuning output: safetensors shards of at most this many bytes "
            "(model-0000k-of-0000n.safetensors + index), as transformers' max_shard_size"},
    {.path = "checkpoint.resume", .type = KEY_STRING, AT(checkpoint.resume), .def = "none",
     .doc = "none: start fresh; auto: continue from the newest complete checkpoint in "
            "output_dir (fresh when there is none); or the path of a step-N checkpoint folder"},
};
/* clang-format on */
#define N_KEYS (sizeof SCHEMA_KEYS / sizeof SCHEMA_KEYS[0])
const size_t SCHEMA_N_KEYS = N_KEYS;
/* ---- small helpers ---- */

const recipe_key *schema_find(const char *path) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(SCHEMA_KEYS[i].path, path) == 0) return &SCHEMA_KEYS[i];
    return NULL;
}

bool schema_is_section(const char *path) {
    size_t n = strlen(path);
    for (size_t i = 0; i < N_KEYS; i++)
        if (strncmp(SCHEMA_KEYS[i].path, path, n) == 0 && SCHEMA_KEYS[i].path[n] == '.')
            return true;
    return false;
}

int schema_choice_index(const char *const *choices, const char *s) {
    for (int i = 0; choices[i]; i++)
        if (strcmp(choices[i], s) == 0) return i;
    return -1;
}

static void join_choices(const char *const *choices, char *buf, size_t size) {
    buf[0] = '\0';
    for (int i = 0; choices[i]; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, size - used, "%s%s", i ? ", " : "", choices[i]);
    }
}

/* Optimal-string-alignment distance (a transposition counts as one edit). */
static int edit_distance(const char *a, const char *b) {
    enum { MAXLEN = 96 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= MAXLEN || m >= MAXLEN) return INT_MAX;
    int d[MAXLEN][MAXLEN];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

static const char *leaf(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* Closest candidate, NULL when nothing is close: a near spelling of the whole name (few edits
 * relative to its length, so "gpu" does not suggest "cpu"), else the same or nearly the same
 * leaf in another section ("train.lr" -> "optim.lr"), else the one leaf that extends what was
 * typed ("micro_batch" -> "micro_batch_size", "bf16" -> "bf16-mixed"). */
static const char *closest(const char *word, const char *const *cands, size_t n_cands) {
    const char *best = NULL;
    int best_d = INT_MAX, len = (int)strlen(word);
    for (size_t i = 0; i < n_cands; i++) {
        int d = edit_distance(word, cands[i]);
        if (d < best_d) best_d = d, best = cands[i];
    }
    if (best && best_d <= (len >= 12 ? 3 : 2) && 3 * best_d < len) return best;
    best = NULL, best_d = INT_MAX;
    for (size_t i = 0; i < n_cands; i++) {
        int d = edit_distance(leaf(word), leaf(cands[i]));
        if (d < best_d) best_d = d, best = cands[i];
    }
    if (best && (best_d == 0 || (best_d == 1 && strlen(leaf(word)) > 3))) return best;
    const char *extends = NULL;
    size_t n = strlen(leaf(word));
    for (size_t i = 0; n >= 3 && i < n_cands; i++) {
        if (strncmp(leaf(cands[i]), leaf(word), n) != 0) continue;
        if (extends) return NULL; /* ambiguous */
        extends = cands[i];
    }
    return extends;
}

/* Message for a key that is neither a leaf nor a section. */
int schema_unknown_key(const char *path, ct_error *err) {
    const char *cands[2 * N_KEYS];
    char sections[N_KEYS][32]; /* section names are the prefixes of dotted paths */
    size_t n = 0, s = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        cands[n++] = SCHEMA_KEYS[i].path;
        const char *dot = strchr(SCHEMA_KEYS[i].path, '.');
        size_t len = dot ? (size_t)(dot - SCHEMA_KEYS[i].path) : 0;
        if (dot && len < sizeof sections[0] &&
            (s == 0 || strncmp(sections[s - 1], SCHEMA_KEYS[i].path, len) ||
             sections[s - 1][len])) {
            memcpy(sections[s], SCHEMA_KEYS[i].path, len);
            sections[s][len] = '\0';
            cands[n++] = sections[s++];
        }
    }
    const char *hint = closest(path, cands, n);
    if (hint) return ct_fail(err, "unknown key '%.200s' (did you mean '%s'?)", path, hint);

    /* No close spelling: list what is valid where the key was written. */
    char parent[256] = "";
    const char *dot = strrchr(path, '.');
    if (dot && (size_t)(dot - path) < sizeof parent) {
        memcpy(parent, path, (size_t)(dot - path));
        parent[dot - path] = '\0';
    }
    if (!schema_is_section(parent)) parent[0] = '\0';
    size_t plen = strlen(parent);
    char list[1024] = "";
    const char *last = "";
    size_t last_len = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *p = SCHEMA_KEYS[i].path;
        if (plen && (strncmp(p, parent, plen) || p[plen] != '.')) continue;
        const char *rest = plen ? p + plen + 1 : p;
        const char *end = strchr(rest, '.');
        size_t len = end ? (size_t)(end - rest) : strlen(rest);
        if (len == last_len && strncmp(rest, last, len) == 0) continue;
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%.*s", used ? ", " : "", (int)len, rest);
        last = rest, last_len = len;
    }
    if (plen) return ct_fail(err, "unknown key '%.200s' (keys of '%s': %s)", path, parent, list);
    return ct_fail(err, "unknown key '%.200s' (top-level keys: %s)", path, list);
}

/* ---- values ---- */

/* Shortest text that reads back as the same double, always with a '.', so YAML 1.1
 * readers (PyYAML reads "1e-08" as a string) also see a float. */
void schema_format_double(double v, char *buf, size_t size) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!isfinite(v) || strchr(buf, '.')) return;
    char tail[32] = "";
    char *e = strchr(buf, 'e');
    if (e) {
        snprintf(tail, sizeof tail, "%s", e);
        *e = '\0';
    }
    size_t used = strlen(buf);
    snprintf(buf + used, size - used, ".0%s", tail);
}

static bool parse_integer(const char *s, long long *out, bool *overflow) {
    const char *p = s + (*s == '+' || *s == '-');
    if (!*p) return false;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q)) return false;
    errno = 0;
    *out = strtoll(s, NULL, 10);
    *overflow = errno == ERANGE;
    return true;
}

/* YAML 1.2 core-schema decimal float: [-+]? (digits [. digits?] | . digits) ([eE] [-+]? digits)?
 * (no hex, no .inf/.nan: every value here is finite). */
static bool parse_number(const char *s, double *out) {
    const char *p = s + (*s == '+' || *s == '-');
    size_t digits = 0;
    while (isdigit((unsigned char)*p)) p++, digits++;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++) digits++;
    if (digits == 0) return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        p += (*p == '+' || *p == '-');
        if (!isdigit((unsigned char)*p)) return false;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p) return false;
    *out = strtod(s, NULL);
    return true;
}

bool schema_is_null_word(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static bool double_in_range(const recipe_key *k, double v) {
    if (!isfinite(v)) return false;
    if (k->dmin_open ? v <= k->dmin : v < k->dmin) return false;
    return k->dmax_open ? v < k->dmax : v <= k->dmax;
}

static void range_text(const recipe_key *k, char *buf, size_t size) {
    buf[0] = '\0';
    if (k->type == KEY_INT || k->type == KEY_INT64) {
        long long top = k->type == KEY_INT ? INT_MAX : LLONG_MAX;
        if (k->imax == top)
            snprintf(buf, size, ">= %lld", k->imin);
        else
            snprintf(buf, size, "[%lld, %lld]", k->imin, k->imax);
    } else if (k->type == KEY_DOUBLE) {
        if (isinf(k->dmax))
            snprintf(buf, size, "%s %g", k->dmin_open ? ">" : ">=", k->dmin);
        else
            snprintf(buf, size, "%c%g, %g%c", k->dmin_open ? '(' : '[', k->dmin, k->dmax,
                     k->dmax_open ? ')' : ']');
    } else if (k->choices) {
        join_choices(k->choices, buf, size);
        if (k->type == KEY_STRING) snprintf(buf + strlen(buf), size - strlen(buf), ", or empty");
    }
}

static int out_of_range(const recipe_key *k, const char *value, ct_error *err) {
    char range[64];
    range_text(k, range, sizeof range);
    if (range[0] == '[' || range[0] == '(')
        return ct_fail(err, "%s: %.60s is out of range %s", k->path, value, range);
    return ct_fail(err, "%s: %.60s is out of range (must be %s)", k->path, value, range);
}

static int bad_choice(const recipe_key *k, const char *value, ct_error *err) {
    char list[256], hint[96] = "";
    join_choices(k->choices, list, sizeof list);
    size_t n = 0;
    while (k->choices[n]) n++;
    const char *near = closest(value, k->choices, n);
    if (near) snprintf(hint, sizeof hint, " (did you mean '%s'?)", near);
    return ct_fail(err, "%s: '%.60s' is not one of %s%s%s", k->path, value, list,
                   k->type == KEY_STRING ? ", or empty" : "", hint);
}

void schema_expected(const recipe_key *k, char *buf, size_t size) {
    static const char *const what[] = {"a string",
                                       "an integer",
                                       "an integer",
                                       "a number",
                                       "true or false",
                                       "",
                                       "a list of module names"};
    if (k->type == KEY_ENUM) {
        char list[200];
        join_choices(k->choices, list, sizeof list);
        snprintf(buf, size, "one of %s", list);
    } else {
        snprintf(buf, size, "%s", what[k->type]);
    }
}

const char SCHEMA_ALL_LINEAR[] = "all-linear";

int schema_check_list_item(const recipe_key *k, const char *item, const char *const *prev,
                           int n_prev, ct_error *err) {
    if (schema_choice_index(k->choices, item) < 0) return bad_choice(k, item, err);
    for (int i = 0; i < n_prev; i++)
        if (strcmp(prev[i], item) == 0)
            return ct_fail(err, "%s: '%s' is listed twice", k->path, item);
    if (n_prev > 0 &&
        (strcmp(item, SCHEMA_ALL_LINEAR) == 0 || strcmp(prev[0], SCHEMA_ALL_LINEAR) == 0))
        return ct_fail(err, "%s: all-linear names every projection; it must be the only entry",
                       k->path);
    if ((size_t)n_prev >= k->size / SCHEMA_LIST_ITEM_SIZE)
        return ct_fail(err, "%s: more than %zu entries", k->path, k->size / SCHEMA_LIST_ITEM_SIZE);
    return 0;
}

void schema_store_list(recipe *r, const recipe_key *k, const char *const *items, int n) {
    char *dst = schema_field(r, k);
    memset(dst, 0, k->size);
    for (int i = 0; i < n; i++)
        snprintf(dst + (size_t)i * SCHEMA_LIST_ITEM_SIZE, SCHEMA_LIST_ITEM_SIZE, "%s", items[i]);
    *(int *)((char *)r + k->count_offset) = n;
}

/* Sets one key from scalar text; the message names the key but not the place. */
int schema_set_scalar(recipe *r, const recipe_key *k, const char *text, size_t len, bool plain,
                      ct_error *err) {
    if (memchr(text, '\0', len)) return ct_fail(err, "%s: the value contains a NUL byte", k->path);
    char got[96];
    if (len == 0)
        snprintf(got, sizeof got, "an empty value");
    else
        snprintf(got, sizeof got, "%s'%.60s'", plain ? "" : "the quoted string ", text);
    switch (k->type) {
    case KEY_STRING: {
        if (plain && schema_is_null_word(text)) text = "", len = 0;
        if (len >= k->size)
            return ct_fail(err, "%s: '%.40s...' is too long (%zu bytes, at most %zu)", k->path,
                           text, len, k->size - 1);
        if (len && k->choices && schema_choice_index(k->choices, text) < 0)
            return bad_choice(k, text, err);
        char *dst = schema_field(r, k);
        memset(dst, 0, k->size);
        memcpy(dst, text, len);
        return 0;
    }
    case KEY_INT:
    case KEY_INT64: {
        long long v;
        bool overflow;
        if (!plain || !parse_integer(text, &v, &overflow))
            return ct_fail(err, "%s: expected an integer, got %s", k->path, got);
        if (overflow || v < k->imin || v > k->imax) return out_of_range(k, text, err);
        if (k->type == KEY_INT)
            *(int *)schema_field(r, k) = (int)v;
        else
            *(long long *)schema_field(r, k) = v;
        return 0;
    }
    case KEY_DOUBLE: {
        double v;
        if (!plain || !parse_number(text, &v))
            return ct_fail(err, "%s: expected a number, got %s", k->path, got);
        if (!double_in_range(k, v)) return out_of_range(k, text, err);
        *(double *)schema_field(r, k) = v;
        return 0;
    }
    case KEY_BOOL: {
        bool yes = !strcmp(text, "true") || !strcmp(text, "True") || !strcmp(text, "TRUE");
        bool no = !strcmp(text, "false") || !strcmp(text, "False") || !strcmp(text, "FALSE");
        if (!plain || (!yes && !no))
            return ct_fail(err, "%s: expected true or false, got %s", k->path, got);
        *(bool *)schema_field(r, k) = yes;
        return 0;
    }
    case KEY_ENUM: {
        int v = schema_choice_index(k->choices, text);
        if (v < 0) return bad_choice(k, text, err);
        *(int *)schema_field(r, k) = v;
        return 0;
    }
    case KEY_LIST: {
        if (strcmp(text, SCHEMA_ALL_LINEAR) != 0)
            return ct_fail(err,
                           "%s: expected a list of module names like [q_proj, v_proj], or "
                           "all-linear, got %s",
                           k->path, got);
        const char *items[] = {SCHEMA_ALL_LINEAR};
        schema_store_list(r, k, items, 1);
        return 0;
    }
    }
    return ct_fail(err, "%s: unhandled key type", k->path);
}

int schema_check_value(const recipe *r, const recipe_key *k, ct_error *err) {
    const void *f = schema_cfield(r, k);
    char text[64];
    switch (k->type) {
    case KEY_STRING: {
        const char *s = f;
        if (!memchr(s, '\0', k->size)) return ct_fail(err, "%s: not NUL-terminated", k->path);
        if (k->required && !*s)
            return ct_fail(err, "missing required key '%s' (%s)", k->path, k->doc);
        return *s && k->choices && schema_choice_index(k->choices, s) < 0 ? bad_choice(k, s, err)
                                                                          : 0;
    }
    case KEY_INT:
    case KEY_INT64: {
        long long v = k->type == KEY_INT ? *(const int *)f : *(const long long *)f;
        snprintf(text, sizeof text, "%lld", v);
        return v < k->imin || v > k->imax ? out_of_range(k, text, err) : 0;
    }
    case KEY_DOUBLE: {
        double v = *(const double *)f;
        schema_format_double(v, text, sizeof text);
        return double_in_range(k, v) ? 0 : out_of_range(k, text, err);
    }
    case KEY_BOOL: return 0;
    case KEY_ENUM: {
        int v = *(const int *)f, n = 0;
        while (k->choices[n]) n++;
        return v < 0 || v >= n ? ct_fail(err, "%s: invalid value %d", k->path, v) : 0;
    }
    case KEY_LIST: {
        int n = *(const int *)((const char *)r + k->count_offset);
        int cap = (int)(k->size / SCHEMA_LIST_ITEM_SIZE);
        if (n < 1 || n > cap)
            return ct_fail(err, "%s: %d entries; expected 1 to %d", k->path, n, cap);
        const char *items[RECIPE_MAX_TARGETS];
        for (int i = 0; i < n; i++) {
            items[i] = (const char *)f + (size_t)i * SCHEMA_LIST_ITEM_SIZE;
            if (!memchr(items[i], '\0', SCHEMA_LIST_ITEM_SIZE))
                return ct_fail(err, "%s: entry %d is not NUL-terminated", k->path, i);
            if (schema_check_list_item(k, items[i], items, i, err)) return -1;
        }
        return 0;
    }
    }
    return 0;
}

static void write_reference_rows(FILE *out, const char *section) {
    static const char *const type_names[] = {"string", "integer", "integer", "number",
                                             "bool",   "choice",  "list"};
    size_t n = strlen(section);
    fputs("| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n", out);
    for (size_t i = 0; i < N_KEYS; i++) {
        const recipe_key *k = &SCHEMA_KEYS[i];
        bool mine =
            n ? strncmp(k->path, section, n) == 0 && k->path[n] == '.' : !strchr(k->path, '.');
        if (!mine) continue;
        char range[256], def[96];
        range_text(k, range, sizeof range);
        if (k->required)
            snprintf(def, sizeof def, "required");
        else if (k->def_note)
            snprintf(def, sizeof def, "%s", k->def_note);
        else
            snprintf(def, sizeof def, "`%s`", *k->def ? k->def : "\"\"");
        fprintf(out, "| `%s` | %s | %s | %s | %s |\n", k->path, type_names[k->type], def, range,
                k->doc);
    }
}

int recipe_write_reference(FILE *out, ct_error *err) {
    fputs("### Top-level keys\n\n", out);
    write_reference_rows(out, "");
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *dot = strchr(SCHEMA_KEYS[i].path, '.');
        size_t len = dot ? (size_t)(dot - SCHEMA_KEYS[i].path) : 0;
        if (!len || (i > 0 && strncmp(SCHEMA_KEYS[i - 1].path, SCHEMA_KEYS[i].path, len + 1) == 0))
            continue;
        char section[64];
        snprintf(section, sizeof section, "%.*s", (int)len, SCHEMA_KEYS[i].path);
        fprintf(out, "\n### `%s`\n\n", section);
        write_reference_rows(out, section);
    }
    if (fflush(out) || ferror(out))
        return ct_fail(err, "cannot write the reference: %s", strerror(errno));
    return 0;
}

static const char *name_of(const char *const *names, int v) {
    int n = 0;
    while (names[n]) n++;
    return v >= 0 && v < n ? names[v] : "unknown";
}
const char *recipe_method_name(recipe_method m) {
    return name_of(METHODS, (int)m);
}
const char *recipe_schedule_name(recipe_schedule s) {
    return name_of(SCHEDULES, (int)s);
}
const char *recipe_precision_name(recipe_precision p) {
    return name_of(PRECISIONS, (int)p);
}
const char *recipe_device_name(recipe_device d) {
    return name_of(DEVICES, (int)d);
}
const char *recipe_dist_backend_name(recipe_dist_backend b) {
    return name_of(BACKENDS, (int)b);
}
