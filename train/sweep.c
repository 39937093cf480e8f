/* sweep: reading sweep files (the format is described in sweep.h). The recipe keys inside
 * are not checked here: sweep_point_recipe hands them to the recipe module. */
#include "train/sweep.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "train/fsutil.h"

typedef struct parse_ctx {
    const char *source;
    yaml_document_t *doc;
    sweep_spec *s;
    ct_error *err;
} parse_ctx;

static int fail_at(parse_ctx *c, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(parse_ctx *c, const yaml_node_t *node, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ct_fail(c->err, "%s:%zu: %s", c->source, node->start_mark.line + 1, msg);
}

static int line_of(const yaml_node_t *node) { return (int)node->start_mark.line + 1; }

static void describe(const yaml_node_t *n, char *buf, size_t size) {
    if (n->type == YAML_SCALAR_NODE)
        snprintf(buf, size, "'%.60s'", (const char *)n->data.scalar.value);
    else
        snprintf(buf, size, "a %s", n->type == YAML_MAPPING_NODE ? "mapping" : "sequence");
}

static bool is_plain(const yaml_node_t *n) {
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static const char *scalar(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

/* Grows *array by one zeroed element; NULL when out of memory. */
static void *push(void *array_ptr, int *n, size_t elem) {
    void **array = array_ptr;
    char *grown = realloc(*array, (size_t)(*n + 1) * elem);
    if (!grown) return NULL;
    memset(grown + (size_t)*n * elem, 0, elem);
    *array = grown;
    return grown + (size_t)(*n)++ * elem;
}

/* ---- values ---- */

void sweep_yaml_quote(const char *text, textbuf *out) {
    textbuf_put(out, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') textbuf_printf(out, "\\%c", *p);
        else if (*p == '\n') textbuf_puts(out, "\\n");
        else if (*p == '\t') textbuf_puts(out, "\\t");
        else if (*p < 0x20 || *p == 0x7f) textbuf_printf(out, "\\x%02X", *p);
        else textbuf_put(out, (const char *)p, 1);
    }
    textbuf_put(out, "\"", 1);
}

static bool parse_number(const char *text, double *value) {
    if (!*text || isspace((unsigned char)*text)) return false;
    for (const char *p = text; *p; p++) /* nan, inf, 0x1p3: not what a sweep means by a number */
        if (!strchr("0123456789+-.eE", *p)) return false;
    char *end;
    errno = 0;
    *value = strtod(text, &end);
    return *end == '\0' && errno == 0 && isfinite(*value);
}

/* Short text of a scalar for point names: numbers compact (3.0e-3 -> 0.003), the rest as is. */
static void scalar_label(const char *text, bool plain, textbuf *out) {
    double v;
    bool integer = *text != '\0';
    for (const char *p = *text == '-' ? text + 1 : text; *p; p++)
        if (!isdigit((unsigned char)*p)) integer = false;
    if (plain && !integer && parse_number(text, &v)) textbuf_printf(out, "%g", v);
    else textbuf_puts(out, text);
}

static int set_setting(sweep_setting *st, const char *key, const char *value, const char *label,
                       int line) {
    st->key = strdup(key);
    st->value = strdup(value);
    st->label = strdup(label);
    st->line = line;
    return st->key && st->value && st->label ? 0 : -1;
}

/* A value as an override takes it: a scalar (quoted scalars stay quoted) or a flow list. */
static int node_value(parse_ctx *c, yaml_node_t *node, const char *key, sweep_setting *out) {
    textbuf value = {0}, label = {0};
    char got[96];
    if (node->type == YAML_SCALAR_NODE) {
        if (is_plain(node)) textbuf_puts(&value, scalar(node));
        else sweep_yaml_quote(scalar(node), &value);
        scalar_label(scalar(node), is_plain(node), &label);
    } else if (node->type == YAML_SEQUENCE_NODE) {
        textbuf_puts(&value, "[");
        textbuf_puts(&label, "");
        int i = 0;
        for (yaml_node_item_t *it = node->data.sequence.items.start;
             it < node->data.sequence.items.top; it++, i++) {
            yaml_node_t *item = yaml_document_get_node(c->doc, *it);
            if (item->type != YAML_SCALAR_NODE) {
                describe(item, got, sizeof got);
                textbuf_free(&value), textbuf_free(&label);
                return fail_at(c, item, "%s: expected a list of plain values, got %s inside it", key, got);
            }
            textbuf_puts(&value, i ? ", " : "");
            textbuf_puts(&label, i ? "+" : "");
            if (is_plain(item)) textbuf_puts(&value, scalar(item));
            else sweep_yaml_quote(scalar(item), &value);
            scalar_label(scalar(item), is_plain(item), &label);
        }
        textbuf_puts(&value, "]");
    } else {
        return fail_at(c, node, "%s: expected a value (a scalar or a list), got a mapping", key);
    }
    int rc = value.failed || label.failed ? -1 : set_setting(out, key, value.data, label.data, line_of(node));
    textbuf_free(&value), textbuf_free(&label);
    return rc ? ct_fail(c->err, "%s: out of memory", c->source) : 0;
}

/* ---- scalars of the sweep's own keys ---- */

static bool has_control(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
    return false;
}

static int get_string(parse_ctx *c, yaml_node_t *node, const char *path, char *out, size_t size) {
    char got[96];
    if (node->type != YAML_SCALAR_NODE) {
        describe(node, got, sizeof got);
        return fail_at(c, node, "%s: expected a string, got %s", path, got);
    }
    const char *text = scalar(node);
    if (!*text) return fail_at(c, node, "%s: expected a non-empty string", path);
    if (has_control(text)) return fail_at(c, node, "%s: control characters are not allowed", path);
    if (strlen(text) >= size)
        return fail_at(c, node, "%s: longer than %zu characters", path, size - 1);
    snprintf(out, size, "%s", text);
    return 0;
}

static int get_integer(parse_ctx *c, yaml_node_t *node, const char *path, long long lo,
                       long long hi, long long *out) {
    char got[96];
    describe(node, got, sizeof got);
    if (!is_plain(node)) return fail_at(c, node, "%s: expected an integer, got %s", path, got);
    char *end;
    errno = 0;
    long long v = strtoll(scalar(node), &end, 10);
    if (!*scalar(node) || *end || errno)
        return fail_at(c, node, "%s: expected an integer, got %s", path, got);
    if (v < lo || v > hi)
        return fail_at(c, node, "%s: %lld is out of range [%lld, %lld]", path, v, lo, hi);
    *out = v;
    return 0;
}

/* Walks a mapping's pairs, refusing non-scalar and duplicate keys; calls fn for each. */
typedef int (*pair_fn)(parse_ctx *c, const char *key, yaml_node_t *key_node, yaml_node_t *value,
                       void *arg);
static int each_pair(parse_ctx *c, yaml_node_t *map, const char *where, pair_fn fn, void *arg) {
    char got[96];
    if (map->type != YAML_MAPPING_NODE) {
        describe(map, got, sizeof got);
        return fail_at(c, map, "%s: expected a mapping, got %s", where, got);
    }
    yaml_node_pair_t *start = map->data.mapping.pairs.start;
    for (yaml_node_pair_t *pair = start; pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(c->doc, pair->key);
        if (key->type != YAML_SCALAR_NODE) {
            describe(key, got, sizeof got);
            return fail_at(c, key, "expected a key name in %s, got %s", where, got);
        }
        for (yaml_node_pair_t *prev = start; prev < pair; prev++) {
            yaml_node_t *pk = yaml_document_get_node(c->doc, prev->key);
            if (pk->type == YAML_SCALAR_NODE && !strcmp(scalar(pk), scalar(key)))
                return fail_at(c, key, "duplicate key '%.200s' in %s (first at line %d)", scalar(key),
                               where, line_of(pk));
        }
        if (fn(c, scalar(key), key, yaml_document_get_node(c->doc, pair->value), arg)) return -1;
    }
    return 0;
}

/* ---- recipe keys under overrides, grid and random.keys ---- */

typedef enum { SECTION_OVERRIDES, SECTION_GRID, SECTION_RANDOM } section_kind;
typedef struct walk_arg {
    section_kind kind;
    char prefix[256];
} walk_arg;

static const char *const DISTRIBUTIONS[] = {"uniform", "log_uniform", "int_uniform", "choice", NULL};

static int distribution_index(const char *name) {
    for (int i = 0; DISTRIBUTIONS[i]; i++)
        if (!strcmp(DISTRIBUTIONS[i], name)) return i;
    return -1;
}

/* The line where a key was set before, or 0. Keys may be set once across all three sections. */
static int previous_line(const sweep_spec *s, const char *key) {
    for (int i = 0; i < s->n_overrides; i++)
        if (!strcmp(s->overrides[i].key, key)) return s->overrides[i].line;
    for (int i = 0; i < s->n_axes; i++)
        if (!strcmp(s->axes[i].key, key)) return s->axes[i].line;
    for (int i = 0; i < s->n_random; i++)
        if (!strcmp(s->random[i].key, key)) return s->random[i].line;
    return 0;
}

static int random_leaf(parse_ctx *c, const char *key, yaml_node_t *key_node, yaml_node_t *value) {
    if (value->data.mapping.pairs.top - value->data.mapping.pairs.start != 1)
        return fail_at(c, value, "random.keys.%s: expected one distribution (uniform, log_uniform, "
                       "int_uniform or choice)", key);
    yaml_node_pair_t *pair = value->data.mapping.pairs.start;
    yaml_node_t *dist = yaml_document_get_node(c->doc, pair->key);
    yaml_node_t *args = yaml_document_get_node(c->doc, pair->value);
    int d = distribution_index(scalar(dist));
    sweep_random_key *rk = push(&c->s->random, &c->s->n_random, sizeof *rk);
    if (!rk || !(rk->key = strdup(key))) return ct_fail(c->err, "%s: out of memory", c->source);
    rk->line = line_of(key_node);
    rk->distribution = (sweep_distribution)d;
    if (args->type != YAML_SEQUENCE_NODE)
        return fail_at(c, args, "random.keys.%s.%s: expected a list", key, scalar(dist));
    yaml_node_item_t *items = args->data.sequence.items.start;
    int n = (int)(args->data.sequence.items.top - items);
    if (rk->distribution == SWEEP_CHOICE) {
        if (n == 0) return fail_at(c, args, "random.keys.%s.choice: the list is empty", key);
        for (int i = 0; i < n; i++) {
            sweep_setting *st = push(&rk->choices, &rk->n_choices, sizeof *st);
            if (!st) return ct_fail(c->err, "%s: out of memory", c->source);
            if (node_value(c, yaml_document_get_node(c->doc, items[i]), key, st)) return -1;
        }
        return 0;
    }
    double bounds[2];
    if (n != 2) return fail_at(c, args, "random.keys.%s.%s: expected [low, high]", key, scalar(dist));
    for (int i = 0; i < 2; i++) {
        yaml_node_t *b = yaml_document_get_node(c->doc, items[i]);
        char got[96];
        describe(b, got, sizeof got);
        if (!is_plain(b) || !parse_number(scalar(b), &bounds[i]))
            return fail_at(c, b, "random.keys.%s.%s: expected a number, got %s", key, scalar(dist), got);
        if (rk->distribution == SWEEP_INT_UNIFORM &&
            (bounds[i] != floor(bounds[i]) || fabs(bounds[i]) > 1e15))
            return fail_at(c, b, "random.keys.%s.int_uniform: expected an integer, got %s", key, got);
    }
    rk->lo = bounds[0], rk->hi = bounds[1];
    if (rk->distribution == SWEEP_INT_UNIFORM ? rk->lo > rk->hi : !(rk->lo < rk->hi))
        return fail_at(c, args, "random.keys.%s.%s: low %g must be below high %g", key, scalar(dist),
                       rk->lo, rk->hi);
    if (rk->distribution == SWEEP_LOG_UNIFORM && rk->lo <= 0)
        return fail_at(c, args, "random.keys.%s.log_uniform: low %g must be positive", key, rk->lo);
    return 0;
}

static int recipe_key_pair(parse_ctx *c, const char *name, yaml_node_t *key_node,
                           yaml_node_t *value, void *arg) {
    const walk_arg *w = arg;
    char key[256];
    if (snprintf(key, sizeof key, "%s%s%s", w->prefix, *w->prefix ? "." : "", name) >= (int)sizeof key)
        return fail_at(c, key_node, "key '%.200s...' is too long", key);
    for (const char *p = name; *p; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && !strchr("_.", *p))
            return fail_at(c, key_node, "'%.200s' is not a recipe key (keys look like optim.lr)", key);
    bool random_dist = false;
    if (w->kind == SECTION_RANDOM && value->type == YAML_MAPPING_NODE)
        for (yaml_node_pair_t *p = value->data.mapping.pairs.start; p < value->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
            if (k->type == YAML_SCALAR_NODE && distribution_index(scalar(k)) >= 0) random_dist = true;
        }
    if (value->type == YAML_MAPPING_NODE && !random_dist) { /* nested: optim: {lr: ...} */
        walk_arg inner = *w;
        snprintf(inner.prefix, sizeof inner.prefix, "%s", key);
        return each_pair(c, value, key, recipe_key_pair, &inner);
    }
    if (!strcmp(key, "name") || !strcmp(key, "checkpoint.output_dir"))
        return fail_at(c, key_node, "%s is set by the sweep for each point (see output_dir)", key);
    int before = previous_line(c->s, key);
    if (before) return fail_at(c, key_node, "key '%s' is set twice (first at line %d)", key, before);
    if (w->kind == SECTION_OVERRIDES) {
        sweep_setting *st = push(&c->s->overrides, &c->s->n_overrides, sizeof *st);
        if (!st) return ct_fail(c->err, "%s: out of memory", c->source);
        return node_value(c, value, key, st);
    }
    if (w->kind == SECTION_RANDOM) {
        if (value->type != YAML_MAPPING_NODE)
            return fail_at(c, value, "random.keys.%s: expected a distribution, e.g. {log_uniform: [1e-4, 1e-2]}",
                           key);
        return random_leaf(c, key, key_node, value);
    }
    char got[96];
    describe(value, got, sizeof got);
    if (value->type != YAML_SEQUENCE_NODE)
        return fail_at(c, value, "grid.%s: expected a list of values, got %s (a single value belongs "
                       "in overrides)", key, got);
    sweep_axis *axis = push(&c->s->axes, &c->s->n_axes, sizeof *axis);
    if (!axis || !(axis->key = strdup(key))) return ct_fail(c->err, "%s: out of memory", c->source);
    axis->line = line_of(key_node);
    for (yaml_node_item_t *it = value->data.sequence.items.start; it < value->data.sequence.items.top; it++) {
        sweep_setting *st = push(&axis->values, &axis->n_values, sizeof *st);
        if (!st) return ct_fail(c->err, "%s: out of memory", c->source);
        if (node_value(c, yaml_document_get_node(c->doc, *it), key, st)) return -1;
    }
    if (axis->n_values == 0) return fail_at(c, value, "grid.%s: the list of values is empty", key);
    return 0;
}

/* ---- random: and slurm: ---- */

static int random_pair(parse_ctx *c, const char *name, yaml_node_t *key_node, yaml_node_t *value,
                       void *arg) {
    long long v;
    if (!strcmp(name, "samples")) {
        if (get_integer(c, value, "random.samples", 1, SWEEP_MAX_POINTS, &v)) return -1;
        c->s->samples = (int)v;
        return 0;
    }
    if (!strcmp(name, "seed")) return get_integer(c, value, "random.seed", 0, INT64_MAX, &c->s->seed);
    if (!strcmp(name, "keys")) {
        walk_arg w = {.kind = SECTION_RANDOM};
        return each_pair(c, value, "random.keys", recipe_key_pair, &w);
    }
    return fail_at(c, key_node, "unknown key 'random.%.100s' (expected samples, seed, keys)", name);
}

static int check_charset(parse_ctx *c, yaml_node_t *node, const char *path, const char *text,
                         const char *extra) {
    for (const char *p = text; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr(extra, *p))
            return fail_at(c, node, "%s: character '%c' is not allowed in '%.100s'", path, *p, text);
    return 0;
}

static int slurm_pair(parse_ctx *c, const char *name, yaml_node_t *key_node, yaml_node_t *value,
                      void *arg) {
    sweep_slurm *sl = &c->s->slurm;
    char path[96];
    snprintf(path, sizeof path, "slurm.%.80s", name);
    long long v;
    int *target = !strcmp(name, "nodes") ? &sl->nodes
                  : !strcmp(name, "ntasks") ? &sl->ntasks
                  : !strcmp(name, "cpus_per_task") ? &sl->cpus_per_task
                  : !strcmp(name, "max_parallel") ? &sl->max_parallel : NULL;
    if (target) {
        if (get_integer(c, value, path, !strcmp(name, "max_parallel") ? 0 : 1, 1000000, &v)) return -1;
        *target = (int)v;
        return 0;
    }
    if (!strcmp(name, "time"))
        return get_string(c, value, path, sl->time, sizeof sl->time) ||
               check_charset(c, value, path, sl->time, ":-");
    if (!strcmp(name, "partition"))
        return get_string(c, value, path, sl->partition, sizeof sl->partition) ||
               check_charset(c, value, path, sl->partition, "_,.-");
    if (!strcmp(name, "launcher")) {
        if (get_string(c, value, path, sl->launcher, sizeof sl->launcher)) return -1;
        if (strcmp(sl->launcher, "srun") && strcmp(sl->launcher, "mpirun"))
            return fail_at(c, value, "slurm.launcher: expected srun or mpirun, got '%s'", sl->launcher);
        return 0;
    }
    if (!strcmp(name, "options")) {
        if (value->type != YAML_SEQUENCE_NODE)
            return fail_at(c, value, "slurm.options: expected a list like [\"--gpus-per-task=1\"]");
        for (yaml_node_item_t *it = value->data.sequence.items.start; it < value->data.sequence.items.top; it++) {
            yaml_node_t *item = yaml_document_get_node(c->doc, *it);
            char option[512];
            if (get_string(c, item, "slurm.options", option, sizeof option)) return -1;
            if (option[0] != '-') return fail_at(c, item, "slurm.options: '%s' is not an option (--name=value)", option);
            char **slot = push(&sl->options, &sl->n_options, sizeof *slot);
            if (!slot || !(*slot = strdup(option))) return ct_fail(c->err, "%s: out of memory", c->source);
        }
        return 0;
    }
    return fail_at(c, key_node, "unknown key 'slurm.%.100s' (expected nodes, ntasks, cpus_per_task, "
                   "max_parallel, time, partition, launcher, options)", name);
}

static int top_pair(parse_ctx *c, const char *name, yaml_node_t *key_node, yaml_node_t *value,
                    void *arg) {
    sweep_spec *s = c->s;
    if (!strcmp(name, "base")) {
        s->base_line = line_of(key_node);
        return get_string(c, value, "base", s->base, sizeof s->base);
    }
    if (!strcmp(name, "name")) {
        if (get_string(c, value, "name", s->name, sizeof s->name)) return -1;
        return check_charset(c, value, "name", s->name, "_.-+,");
    }
    if (!strcmp(name, "output_dir")) return get_string(c, value, "output_dir", s->output_dir, sizeof s->output_dir);
    walk_arg w = {.kind = !strcmp(name, "grid") ? SECTION_GRID : SECTION_OVERRIDES};
    if (!strcmp(name, "overrides") || !strcmp(name, "grid")) return each_pair(c, value, name, recipe_key_pair, &w);
    if (!strcmp(name, "random")) return each_pair(c, value, "random", random_pair, NULL);
    if (!strcmp(name, "slurm")) return each_pair(c, value, "slurm", slurm_pair, NULL);
    return fail_at(c, key_node, "unknown key '%.100s' (expected base, name, output_dir, overrides, "
                   "grid, random, slurm)", name);
}

/* ---- documents ---- */

static int yaml_failure(const yaml_parser_t *p, const char *source, ct_error *err) {
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR) return ct_fail(err, "%s: out of memory reading YAML", source);
    if (p->error == YAML_READER_ERROR)
        return ct_fail(err, "%s: byte %zu: malformed YAML: %s", source, p->problem_offset, problem);
    return ct_fail(err, "%s:%zu:%zu: malformed YAML: %s", source, p->problem_mark.line + 1,
                   p->problem_mark.column + 1, problem);
}

static int check_whole(parse_ctx *c, yaml_node_t *root) {
    sweep_spec *s = c->s;
    if (!s->base[0]) return fail_at(c, root, "base: missing; name the recipe to sweep, e.g. base: configs/tiny/lora.yaml");
    if (s->samples && !s->n_random)
        return fail_at(c, root, "random.samples is %d but random.keys is empty", s->samples);
    if (s->n_random && !s->samples)
        return fail_at(c, root, "random.keys given without random.samples (how many points to draw)");
    if (!s->n_axes && !s->n_random)
        return fail_at(c, root, "nothing to sweep: give grid (lists of values) or random (samples and keys)");
    double points = s->samples ? s->samples : 1;
    for (int i = 0; i < s->n_axes; i++) points *= s->axes[i].n_values;
    if (points > SWEEP_MAX_POINTS)
        return fail_at(c, root, "the sweep has %.0f points, more than %d", points, SWEEP_MAX_POINTS);
    return 0;
}

static int parse(sweep_spec *s, yaml_parser_t *parser, const char *source, ct_error *err) {
    yaml_document_t doc;
    if (!yaml_parser_load(parser, &doc)) return yaml_failure(parser, source, err);
    parse_ctx c = {.source = source, .doc = &doc, .s = s, .err = err};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int rc;
    if (!root) rc = ct_fail(err, "%s: empty sweep file; it needs base and grid or random", source);
    else if (root->type != YAML_MAPPING_NODE) rc = fail_at(&c, root, "expected a mapping of keys at the top level");
    else rc = each_pair(&c, root, "the sweep", top_pair, NULL);
    if (!rc) rc = check_whole(&c, root);
    if (!rc) {
        yaml_document_t next;
        if (!yaml_parser_load(parser, &next)) {
            rc = yaml_failure(parser, source, err);
        } else {
            yaml_node_t *extra = yaml_document_get_root_node(&next);
            if (extra) rc = fail_at(&c, extra, "a second YAML document; a sweep is a single document");
            yaml_document_delete(&next);
        }
    }
    yaml_document_delete(&doc);
    return rc;
}

static void defaults(sweep_spec *s, const char *source) {
    memset(s, 0, sizeof *s);
    snprintf(s->source, sizeof s->source, "%s", source);
    s->slurm.ntasks = 1;
    s->slurm.cpus_per_task = 1;
    snprintf(s->slurm.launcher, sizeof s->slurm.launcher, "srun");
}

static void fill_derived(sweep_spec *s) {
    if (!s->name[0]) {
        char stem[RECIPE_PATH_MAX];
        path_stem(s->source, stem, sizeof stem);
        size_t j = 0;
        for (const char *p = stem; *p && j + 1 < sizeof s->name; p++)
            s->name[j++] = isalnum((unsigned char)*p) || strchr("_.-", *p) ? *p : '_';
        if (!j) snprintf(s->name, sizeof s->name, "sweep");
    }
    if (!s->output_dir[0]) snprintf(s->output_dir, sizeof s->output_dir, "runs/sweeps/%s", s->name);
}

int sweep_load_string(sweep_spec *s, const char *yaml_text, const char *source, ct_error *err) {
    defaults(s, source);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return ct_fail(err, "%s: out of memory", source);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml_text, strlen(yaml_text));
    int rc = parse(s, &parser, s->source, err);
    yaml_parser_delete(&parser);
    if (rc) {
        sweep_free(s);
        return -1;
    }
    fill_derived(s);
    return 0;
}

int sweep_load(sweep_spec *s, const char *path, ct_error *err) {
    defaults(s, path);
    char *text;
    size_t size;
    if (read_file(path, &text, &size, err)) return -1;
    size_t nul_at = strlen(text);
    if (nul_at != size) {
        free(text);
        return ct_fail(err, "%s: byte %zu: NUL byte in a YAML file", path, nul_at);
    }
    int rc = sweep_load_string(s, text, path, err);
    free(text);
    return rc;
}

static void free_settings(sweep_setting *st, int n) {
    for (int i = 0; i < n; i++) free(st[i].key), free(st[i].value), free(st[i].label);
    free(st);
}

void sweep_free(sweep_spec *s) {
    free_settings(s->overrides, s->n_overrides);
    for (int i = 0; i < s->n_axes; i++) free(s->axes[i].key), free_settings(s->axes[i].values, s->axes[i].n_values);
    free(s->axes);
    for (int i = 0; i < s->n_random; i++)
        free(s->random[i].key), free_settings(s->random[i].choices, s->random[i].n_choices);
    free(s->random);
    for (int i = 0; i < s->slurm.n_options; i++) free(s->slurm.options[i]);
    free(s->slurm.options);
    char source[sizeof s->source];
    memcpy(source, s->source, sizeof source);
    defaults(s, source);
}

void sweep_points_free(sweep_point *points, int n_points) {
    if (!points) return;
    for (int i = 0; i < n_points; i++) free_settings(points[i].settings, points[i].n_settings);
    free(points);
}
