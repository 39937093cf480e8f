/* recipe: reads YAML recipes and key=value overrides into the struct through the schema
 * (train/recipe_schema.c), checks cross-field rules and writes the resolved recipe. */
#include "train/recipe.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

#include "train/recipe_schema.h"

/* ---- YAML documents ---- */

static int prefix_at(ct_error *err, const char *source, const yaml_node_t *node, bool lines) {
    if (lines) return ct_error_prefix(err, "%s:%zu", source, node->start_mark.line + 1);
    return ct_error_prefix(err, "%s", source);
}

static bool is_null_node(const yaml_node_t *n) {
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           schema_is_null_word((const char *)n->data.scalar.value);
}

static void describe_node(const yaml_node_t *n, char *buf, size_t size) {
    if (n->type == YAML_SCALAR_NODE)
        snprintf(buf, size, "'%.60s'", (const char *)n->data.scalar.value);
    else
        snprintf(buf, size, "a %s", n->type == YAML_MAPPING_NODE ? "mapping" : "sequence");
}

static int set_list(recipe *r, const recipe_key *k, yaml_document_t *doc, yaml_node_t *node,
                    const char *source, bool lines, ct_error *err) {
    const char *items[RECIPE_MAX_TARGETS];
    int n = 0;
    for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top;
         it++) {
        yaml_node_t *item = yaml_document_get_node(doc, *it);
        char got[96];
        describe_node(item, got, sizeof got);
        int rc;
        if (item->type != YAML_SCALAR_NODE)
            rc = ct_fail(err, "%s: expected a module name, got %s", k->path, got);
        else if (n >= RECIPE_MAX_TARGETS)
            rc = ct_fail(err, "%s: more than %d entries", k->path, RECIPE_MAX_TARGETS);
        else
            rc = schema_check_list_item(k, (const char *)item->data.scalar.value, items, n, err);
        if (rc) return prefix_at(err, source, item, lines);
        items[n++] = (const char *)item->data.scalar.value;
    }
    if (n == 0) {
        ct_fail(err, "%s: the list is empty; name at least one module (or all-linear)", k->path);
        return prefix_at(err, source, node, lines);
    }
    schema_store_list(r, k, items, n);
    return 0;
}

static int set_from_node(recipe *r, const recipe_key *k, yaml_document_t *doc, yaml_node_t *node,
                         const char *source, bool lines, ct_error *err) {
    if (node->type == YAML_SEQUENCE_NODE && k->type == KEY_LIST)
        return set_list(r, k, doc, node, source, lines, err);
    int rc;
    if (node->type == YAML_SCALAR_NODE) {
        const char *text = (const char *)node->data.scalar.value;
        bool plain = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        rc = schema_set_scalar(r, k, text, node->data.scalar.length, plain, err);
    } else {
        char want[256];
        schema_expected(k, want, sizeof want);
        rc = ct_fail(err, "%s: expected %s, got a %s", k->path, want,
                     node->type == YAML_MAPPING_NODE ? "mapping" : "sequence");
    }
    return rc ? prefix_at(err, source, node, lines) : 0;
}

static int walk_mapping(recipe *r, yaml_document_t *doc, yaml_node_t *map, const char *prefix,
                        const char *source, ct_error *err) {
    yaml_node_pair_t *start = map->data.mapping.pairs.start, *top = map->data.mapping.pairs.top;
    for (yaml_node_pair_t *pair = start; pair < top; pair++) {
        yaml_node_t *key = yaml_document_get_node(doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(doc, pair->value);
        size_t line = key->start_mark.line + 1;
        char got[96];
        if (key->type != YAML_SCALAR_NODE) {
            describe_node(key, got, sizeof got);
            return ct_fail(err, "%s:%zu: expected a key name%s%s, got %s", source, line,
                           *prefix ? " in " : "", prefix, got);
        }
        const char *name = (const char *)key->data.scalar.value;
        char path[512];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", name);
        for (yaml_node_pair_t *prev = start; prev < pair; prev++) {
            yaml_node_t *pk = yaml_document_get_node(doc, prev->key);
            if (pk->type == YAML_SCALAR_NODE &&
                strcmp((const char *)pk->data.scalar.value, name) == 0)
                return ct_fail(err, "%s:%zu: duplicate key '%.200s' (first set at line %zu)",
                               source, line, path, pk->start_mark.line + 1);
        }
        if (strchr(name, '.'))
            return ct_fail(err,
                           "%s:%zu: key '%.200s' contains '.'; nest it under its section "
                           "instead",
                           source, line, path);
        const recipe_key *k = schema_find(path);
        if (k) {
            if (set_from_node(r, k, doc, value, source, true, err)) return -1;
        } else if (schema_is_section(path)) {
            if (value->type == YAML_MAPPING_NODE) {
                if (walk_mapping(r, doc, value, path, source, err)) return -1;
            } else if (!is_null_node(value)) { /* "optim:" with every key commented out is fine */
                describe_node(value, got, sizeof got);
                return ct_fail(err,
                               "%s:%zu: '%s' is a section: expected a mapping of its keys, got %s",
                               source, value->start_mark.line + 1, path, got);
            }
        } else {
            schema_unknown_key(path, err);
            return ct_error_prefix(err, "%s:%zu", source, line);
        }
    }
    return 0;
}

/* libyaml's own words and position (its marks are 0-based). */
static int yaml_failure(const yaml_parser_t *p, const char *source, bool lines, ct_error *err) {
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR)
        return ct_fail(err, "%s: out of memory reading YAML", source);
    if (p->error == YAML_READER_ERROR)
        return ct_fail(err, "%s: byte %zu: malformed YAML: %s", source, p->problem_offset, problem);
    char ctx[256] = "";
    if (p->context && lines)
        snprintf(ctx, sizeof ctx, " (%s at line %zu)", p->context, p->context_mark.line + 1);
    else if (p->context)
        snprintf(ctx, sizeof ctx, " (%s)", p->context);
    if (lines)
        return ct_fail(err, "%s:%zu:%zu: malformed YAML: %s%s", source, p->problem_mark.line + 1,
                       p->problem_mark.column + 1, problem, ctx);
    return ct_fail(err, "%s: malformed YAML value at column %zu: %s%s", source,
                   p->problem_mark.column + 1, problem, ctx);
}

static int parse_document(recipe *r, yaml_parser_t *parser, const char *source, ct_error *err) {
    yaml_document_t doc;
    if (!yaml_parser_load(parser, &doc)) return yaml_failure(parser, source, true, err);
    int rc = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root) { /* no root: an empty file, all defaults */
        char got[96];
        describe_node(root, got, sizeof got);
        if (root->type == YAML_MAPPING_NODE)
            rc = walk_mapping(r, &doc, root, "", source, err);
        else if (!is_null_node(root))
            rc = ct_fail(err, "%s:%zu: expected a mapping of keys at the top level, got %s", source,
                         root->start_mark.line + 1, got);
        yaml_document_t next;
        if (rc == 0 && !yaml_parser_load(parser, &next)) {
            rc = yaml_failure(parser, source, true, err);
        } else if (rc == 0) {
            yaml_node_t *extra = yaml_document_get_root_node(&next);
            if (extra)
                rc = ct_fail(err, "%s:%zu: a second YAML document; a recipe is a single document",
                             source, extra->start_mark.line + 1);
            yaml_document_delete(&next);
        }
    }
    yaml_document_delete(&doc);
    return rc;
}

static int parse_file(recipe *r, const char *path, ct_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ct_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return ct_fail(err, "%s: is a directory, expected a YAML recipe file", path);
    }
    yaml_parser_t parser;
    int rc;
    if (!yaml_parser_initialize(&parser)) {
        rc = ct_fail(err, "%s: out of memory reading YAML", path);
    } else {
        yaml_parser_set_input_file(&parser, f);
        rc = parse_document(r, &parser, path, err);
        yaml_parser_delete(&parser);
    }
    fclose(f);
    return rc;
}

/* A value given as text (override or default): a YAML scalar or flow sequence. */
static int set_from_text(recipe *r, const recipe_key *k, const char *text, const char *where,
                         ct_error *err) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return ct_fail(err, "%s: out of memory", where);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    yaml_document_t doc;
    int rc;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = yaml_failure(&parser, where, false, err);
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        if (root)
            rc = set_from_node(r, k, &doc, root, where, false, err);
        else if ((rc = schema_set_scalar(r, k, "", 0, true, err)))
            ct_error_prefix(err, "%s", where);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    return rc;
}

/* ---- public API ---- */

static void set_source(recipe *r, const char *source) {
    memset(r->source, 0, sizeof r->source);
    snprintf(r->source, sizeof r->source, "%s", source && *source ? source : "recipe");
}

/* Defaults that depend on other values: name from the file, output_dir from the name. */
static void fill_derived(recipe *r) {
    if (!r->name[0]) {
        const char *base = strrchr(r->source, '/');
        base = base ? base + 1 : r->source;
        const char *dot = strrchr(base, '.');
        size_t len = dot && dot != base ? (size_t)(dot - base) : strlen(base);
        if (len >= sizeof r->name) len = sizeof r->name - 1;
        memset(r->name, 0, sizeof r->name);
        memcpy(r->name, len ? base : "recipe", len ? len : strlen("recipe"));
    }
    if (!r->checkpoint.output_dir[0])
        snprintf(r->checkpoint.output_dir, sizeof r->checkpoint.output_dir, "runs/%s", r->name);
}

void recipe_defaults(recipe *r) {
    memset(r, 0, sizeof *r);
    ct_error ignored; /* the defaults are constants; tests/test_recipe.c checks each one */
    for (size_t i = 0; i < SCHEMA_N_KEYS; i++)
        set_from_text(r, &SCHEMA_KEYS[i], SCHEMA_KEYS[i].def, "default", &ignored);
}

static int override_into(recipe *r, const char *assignment, ct_error *err) {
    char where[320];
    snprintf(where, sizeof where, "override '%.300s'", assignment);
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return ct_fail(err, "%s: expected key=value, e.g. optim.lr=1e-4", where);
    char key[256];
    size_t len = (size_t)(eq - assignment);
    if (len >= sizeof key) len = sizeof key - 1;
    memcpy(key, assignment, len);
    key[len] = '\0';
    const recipe_key *k = schema_find(key);
    if (!k) {
        if (schema_is_section(key)) {
            size_t n = strlen(key);
            const recipe_key *first = SCHEMA_KEYS;
            while (strncmp(first->path, key, n) || first->path[n] != '.') first++;
            ct_fail(err, "'%s' is a section, not a key; set one of its keys, e.g. %s=...", key,
                    first->path);
        } else {
            schema_unknown_key(key, err);
        }
        return ct_error_prefix(err, "%s", where);
    }
    return set_from_text(r, k, eq + 1, where, err);
}

int recipe_load_with_overrides(recipe *r, const char *path, char *const *overrides, int n_overrides,
                               ct_error *err) {
    recipe tmp;
    recipe_defaults(&tmp);
    set_source(&tmp, path);
    if (parse_file(&tmp, path, err)) return -1;
    for (int i = 0; i < n_overrides; i++)
        if (override_into(&tmp, overrides[i], err)) return -1;
    fill_derived(&tmp);
    if (recipe_validate(&tmp, err)) return -1;
    *r = tmp;
    return 0;
}

int recipe_load(recipe *r, const char *path, ct_error *err) {
    return recipe_load_with_overrides(r, path, NULL, 0, err);
}

int recipe_load_string(recipe *r, const char *yaml_text, const char *source, ct_error *err) {
    recipe tmp = *r;
    set_source(&tmp, source);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return ct_fail(err, "%s: out of memory", tmp.source);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml_text, strlen(yaml_text));
    int rc = parse_document(&tmp, &parser, tmp.source, err);
    yaml_parser_delete(&parser);
    if (rc) return -1;
    fill_derived(&tmp);
    if (recipe_validate(&tmp, err)) return -1;
    *r = tmp;
    return 0;
}

int recipe_apply_override(recipe *r, const char *assignment, ct_error *err) {
    recipe tmp = *r;
    if (override_into(&tmp, assignment, err)) return -1;
    /* An output_dir that was derived from the name follows a renamed run. */
    char derived[sizeof r->checkpoint.output_dir];
    snprintf(derived, sizeof derived, "runs/%s", r->name);
    if (strcmp(tmp.name, r->name) && !strcmp(r->checkpoint.output_dir, derived) &&
        !strcmp(tmp.checkpoint.output_dir, derived))
        memset(tmp.checkpoint.output_dir, 0, sizeof tmp.checkpoint.output_dir);
    fill_derived(&tmp);
    if (recipe_validate(&tmp, err)) return ct_error_prefix(err, "override '%.300s'", assignment);
    *r = tmp;
    return 0;
}

/* Every field against its schema row (the struct may have been filled by hand), then the rules
 * that involve several keys. */
int recipe_validate(const recipe *r, ct_error *err) {
    const char *src =
        memchr(r->source, '\0', sizeof r->source) && r->source[0] ? r->source : "recipe";
    for (size_t i = 0; i < SCHEMA_N_KEYS; i++)
        if (schema_check_value(r, &SCHEMA_KEYS[i], err)) return ct_error_prefix(err, "%s", src);
    if (!r->name[0]) return ct_fail(err, "%s: name is empty", src);
    if (!r->checkpoint.output_dir[0])
        return ct_fail(err, "%s: checkpoint.output_dir is empty", src);
    if (r->optim.warmup_steps > r->train.max_steps)
        return ct_fail(err, "%s: optim.warmup_steps (%d) exceeds train.max_steps (%d)", src,
                       r->optim.warmup_steps, r->train.max_steps);
    if (r->train.global_batch_size % r->train.micro_batch_size)
        return ct_fail(err,
                       "%s: train.global_batch_size (%d) is not a multiple of "
                       "train.micro_batch_size (%d)",
                       src, r->train.global_batch_size, r->train.micro_batch_size);
    if (r->train.eval_every > 0 && !r->data.eval[0])
        return ct_fail(err,
                       "%s: train.eval_every is %d but data.eval is empty (set data.eval, or "
                       "train.eval_every: 0)",
                       src, r->train.eval_every);
    if (r->device == DEVICE_CPU && r->distributed.backend == DIST_BACKEND_NCCL)
        return ct_fail(err, "%s: distributed.backend nccl needs device cuda or auto", src);
    if (r->lora.quantize_base != BASE_QUANT_NONE && r->method != METHOD_LORA)
        return ct_fail(err,
                       "%s: lora.quantize_base nf4 holds a frozen base in 4 bits, so it needs method lora "
                       "(full fine-tuning trains every weight)",
                       src);
    if (r->lora.quantize_base != BASE_QUANT_NONE && r->precision == PRECISION_FP32)
        return ct_fail(err,
                       "%s: lora.quantize_base nf4 reads the 4-bit base back into the 16-bit copies mixed "
                       "precision multiplies with, so it needs precision bf16-mixed or fp16-mixed",
                       src);
    /* Stage 3 shards the layers' 16-bit weight copies: in fp32 there are none, and a LoRA run
     * trains adapters only (its frozen base is not sharded): stage 2 holds the same there. */
    if (r->distributed.zero_stage == 3 && r->precision == PRECISION_FP32)
        return ct_fail(err,
                       "%s: distributed.zero_stage 3 gathers the layers' 16-bit weight copies, so it needs "
                       "precision bf16-mixed or fp16-mixed (fp32 runs shard up to stage 2)",
                       src);
    if (r->distributed.zero_stage == 3 && r->method == METHOD_LORA)
        return ct_fail(err,
                       "%s: distributed.zero_stage 3 shards trained weights, and LoRA trains only its adapters "
                       "(the frozen base stays whole on every rank): use distributed.zero_stage 2, which holds "
                       "the same memory for LoRA",
                       src);
    return 0;
}

/* Plain scalars only where no YAML reader could take them for anything but this string. */
static bool plain_ok(const char *s) {
    if (!isalpha((unsigned char)s[0]) && s[0] != '_' && s[0] != '/') return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("_-./+", *p)) return false;
    static const char *const words[] = {"true", "false", "yes", "no",  "on",
                                        "off",  "y",     "n",   "null"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasecmp(s, words[i]) == 0) return false;
    return true;
}

static void write_string(FILE *out, const char *s) {
    if (plain_ok(s)) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* Escape what a YAML reader would fold (line breaks) or refuse (controls, C1, BOM). */
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '\t')
            fputs("\\t", out);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\x%02X", *p);
        else if (p[0] == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F)
            fprintf(out, "\\x%02X", p[1]), p++;
        else if (p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9))
            fputs(p[2] == 0xA8 ? "\\L" : "\\P", out), p += 2;
        else if (p[0] == 0xEF && ((p[1] == 0xBB && p[2] == 0xBF) || (p[1] == 0xBF && p[2] >= 0xBE)))
            fprintf(out, "\\u%s", p[1] == 0xBB ? "FEFF" : p[2] == 0xBE ? "FFFE" : "FFFF"), p += 2;
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

static int write_value(const recipe *r, const recipe_key *k, FILE *out, ct_error *err) {
    const void *f = schema_cfield(r, k);
    char text[64];
    switch (k->type) {
    case KEY_STRING:
        if (!memchr(f, '\0', k->size)) return ct_fail(err, "%s: not NUL-terminated", k->path);
        write_string(out, f);
        break;
    case KEY_INT: fprintf(out, "%d", *(const int *)f); break;
    case KEY_INT64: fprintf(out, "%lld", *(const long long *)f); break;
    case KEY_DOUBLE:
        schema_format_double(*(const double *)f, text, sizeof text), fputs(text, out);
        break;
    case KEY_BOOL: fputs(*(const bool *)f ? "true" : "false", out); break;
    case KEY_ENUM:
    case KEY_LIST:
        if (schema_check_value(r, k, err)) return -1;
        if (k->type == KEY_ENUM) {
            fputs(k->choices[*(const int *)f], out);
            break;
        }
        int n = *(const int *)((const char *)r + k->count_offset);
        const char *first = f;
        if (n == 1 && strcmp(first, SCHEMA_ALL_LINEAR) == 0) {
            fputs(SCHEMA_ALL_LINEAR, out);
            break;
        }
        fputc('[', out);
        for (int i = 0; i < n; i++)
            fprintf(out, "%s%s", i ? ", " : "", first + (size_t)i * SCHEMA_LIST_ITEM_SIZE);
        fputc(']', out);
        break;
    }
    return 0;
}

int recipe_write(const recipe *r, FILE *out, ct_error *err) {
    fputs("# resolved ctune recipe: every key, defaults filled in (see docs/recipes.md)\n", out);
    const char *section = "";
    size_t section_len = 0;
    for (size_t i = 0; i < SCHEMA_N_KEYS; i++) {
        const recipe_key *k = &SCHEMA_KEYS[i];
        const char *dot = strchr(k->path, '.');
        size_t len = dot ? (size_t)(dot - k->path) : 0;
        if (len && (len != section_len || strncmp(section, k->path, len)))
            fprintf(out, "%.*s:\n", (int)len, k->path);
        section = k->path, section_len = len;
        fprintf(out, "%s%s: ", len ? "  " : "", len ? dot + 1 : k->path);
        if (write_value(r, k, out, err)) return ct_error_prefix(err, "cannot write the recipe");
        fputc('\n', out);
    }
    if (fflush(out) || ferror(out))
        return ct_fail(err, "cannot write the recipe: %s", strerror(errno));
    return 0;
}

int recipe_grad_accum_steps(const recipe *r, int world_size, int *steps, ct_error *err) {
    const char *src = r->source[0] ? r->source : "recipe";
    int micro = r->train.micro_batch_size, global = r->train.global_batch_size;
    if (world_size < 1) return ct_fail(err, "world size %d: need at least one rank", world_size);
    if (micro < 1 || global < 1)
        return ct_fail(err, "%s: batch sizes must be positive (micro %d, global %d)", src, micro,
                       global);
    long long per_pass = (long long)micro * world_size;
    if (global % per_pass)
        return ct_fail(err,
                       "%s: train.global_batch_size %d is not divisible by "
                       "train.micro_batch_size %d x %d ranks (= %lld sequences per pass)",
                       src, global, micro, world_size, per_pass);
    *steps = (int)(global / per_pass);
    return 0;
}
