/* report: reading run directories, comparing their recipes, ranking, Markdown and CSV. */
#include "train/report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"
#include "train/jsonfile.h"
#include "train/recipe.h"
#include "train/units.h"

/* ---- one run ---- */

static int push_point(report_curve *c, double step, double value) {
    double *s = realloc(c->step, (size_t)(c->n + 1) * sizeof *s);
    if (!s) return -1;
    c->step = s;
    double *v = realloc(c->value, (size_t)(c->n + 1) * sizeof *v);
    if (!v) return -1;
    c->value = v;
    c->step[c->n] = step, c->value[c->n] = value;
    c->n++;
    return 0;
}

static double json_number_or_nan(const cJSON *obj, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(item) ? item->valuedouble : NAN;
}

/* Every line a JSON object; a last line cut short (a run killed mid-write) is ignored. */
static int read_metrics(report_run *run, const char *path, ct_error *err) {
    char *text;
    size_t size;
    if (read_file(path, &text, &size, err)) return -1;
    int line_no = 0, status = 0;
    for (char *line = text; !status && line < text + size;) {
        char *end = strchr(line, '\n');
        bool last_unterminated = !end;
        if (end) *end = '\0';
        line_no++;
        if (*line) {
            cJSON *obj = cJSON_Parse(line);
            if (!cJSON_IsObject(obj)) {
                if (!last_unterminated) status = ct_fail(err, "%s:%d: expected a JSON object", path, line_no);
            } else {
                double step = json_number_or_nan(obj, "step");
                double eval = json_number_or_nan(obj, "eval_loss"), loss = json_number_or_nan(obj, "loss");
                if (isfinite(step) && isfinite(eval)) status = push_point(&run->eval, step, eval);
                else if (isfinite(step) && isfinite(loss)) status = push_point(&run->train, step, loss);
                if (status) ct_fail(err, "out of memory");
            }
            cJSON_Delete(obj);
        }
        line = end ? end + 1 : text + size;
    }
    free(text);
    return status;
}

static int read_summary(report_run *run, const char *path, ct_error *err) {
    cJSON *root;
    if (jsonfile_read(path, &root, err)) return -1;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ct_fail(err, "%s: expected a JSON object", path);
    }
    double steps = json_number_or_nan(root, "steps"), world = json_number_or_nan(root, "world_size");
    run->steps = isfinite(steps) ? (int)steps : -1;
    run->world_size = isfinite(world) ? (int)world : 0;
    run->train_loss = json_number_or_nan(root, "train_loss");
    run->eval_loss = json_number_or_nan(root, "eval_loss");
    run->eval_accuracy = json_number_or_nan(root, "eval_accuracy");
    run->tokens_per_second = json_number_or_nan(root, "tokens_per_second");
    run->wall_seconds = json_number_or_nan(root, "wall_seconds");
    run->peak_memory_bytes = json_number_or_nan(root, "peak_memory_bytes");
    cJSON_Delete(root);
    run->complete = true;
    return 0;
}

/* The recipe as the recipe module writes it ("section:" then "  key: value"), flattened. */
static int read_recipe(report_run *run, const char *path, ct_error *err) {
    recipe r;
    if (recipe_load(&r, path, err)) return -1;
    char *text = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&text, &size);
    if (!mem) return ct_fail(err, "out of memory");
    int status = recipe_write(&r, mem, err);
    if (fclose(mem) && !status) status = ct_fail(err, "out of memory");
    char section[128] = "", *save = NULL;
    for (char *line = status ? NULL : strtok_r(text, "\n", &save); line && !status;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        bool nested = line[0] == ' ';
        while (*line == ' ') line++;
        char *colon = strstr(line, ": ");
        size_t len = strlen(line);
        if (!colon && len && line[len - 1] == ':' && !nested) {
            snprintf(section, sizeof section, "%.*s", (int)(len - 1), line);
            continue;
        }
        if (!colon) continue;
        *colon = '\0';
        char key[256];
        snprintf(key, sizeof key, "%s%s%s", nested ? section : "", nested ? "." : "", line);
        char **keys = realloc(run->keys, (size_t)(run->n_keys + 1) * sizeof *keys);
        if (keys) run->keys = keys;
        char **values = keys ? realloc(run->values, (size_t)(run->n_keys + 1) * sizeof *values) : NULL;
        if (values) run->values = values;
        if (!keys || !values) {
            status = ct_fail(err, "out of memory");
            break;
        }
        run->keys[run->n_keys] = strdup(key);
        run->values[run->n_keys] = strdup(colon + 2);
        run->n_keys++;
        if (!run->keys[run->n_keys - 1] || !run->values[run->n_keys - 1]) status = ct_fail(err, "out of memory");
    }
    free(text);
    return status;
}

static void free_run(report_run *run) {
    for (int i = 0; i < run->n_keys; i++) free(run->keys[i]), free(run->values[i]);
    free(run->keys), free(run->values);
    free(run->train.step), free(run->train.value), free(run->eval.step), free(run->eval.value);
    memset(run, 0, sizeof *run);
}

int report_load_run(report_run *run, const char *dir, ct_error *err) {
    memset(run, 0, sizeof *run);
    run->steps = -1;
    run->train_loss = run->eval_loss = run->eval_accuracy = NAN;
    run->tokens_per_second = run->wall_seconds = run->peak_memory_bytes = NAN;
    snprintf(run->dir, sizeof run->dir, "%s", dir);
    path_basename(dir, run->label, sizeof run->label);
    char path[sizeof run->dir + 32];
    snprintf(path, sizeof path, "%s/recipe.resolved.yaml", dir);
    if (!path_is_dir(dir)) return ct_fail(err, "%s: not a directory", dir);
    if (!path_exists(path))
        return ct_fail(err, "%s: no recipe.resolved.yaml (not a run directory, or the run never started)", dir);
    int status = read_recipe(run, path, err);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (!status && path_exists(path)) status = read_metrics(run, path, err);
    snprintf(path, sizeof path, "%s/summary.json", dir);
    if (!status && path_exists(path)) status = read_summary(run, path, err);
    if (!status && !run->complete && run->train.n > 0) { /* unfinished: its last logged step */
        run->steps = (int)run->train.step[run->train.n - 1];
        run->train_loss = run->train.value[run->train.n - 1];
    }
    if (status) free_run(run);
    return status;
}

/* ---- many runs ---- */

static int add_dir(report *rep, const char *dir, const char *label, ct_error *err) {
    report_run *runs = realloc(rep->runs, (size_t)(rep->n_runs + 1) * sizeof *runs);
    if (!runs) return ct_fail(err, "out of memory");
    rep->runs = runs;
    if (report_load_run(&runs[rep->n_runs], dir, err)) return -1;
    if (label) snprintf(runs[rep->n_runs].label, sizeof runs[rep->n_runs].label, "%s", label);
    rep->n_runs++;
    return 0;
}

int report_add(report *rep, const char *path, ct_error *err) {
    char manifest[1100];
    snprintf(manifest, sizeof manifest, "%s/sweep.json", path);
    if (!path_exists(manifest)) return add_dir(rep, path, NULL, err);
    cJSON *root;
    if (jsonfile_read(manifest, &root, err)) return -1;
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(root, "points");
    int status = cJSON_IsArray(points) ? 0 : ct_fail(err, "%s: expected \"points\": [...]", manifest);
    int added = 0;
    const cJSON *point;
    cJSON_ArrayForEach(point, points) {
        if (status) break;
        const cJSON *dir = cJSON_GetObjectItemCaseSensitive(point, "dir");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(point, "name");
        if (!cJSON_IsString(dir) || !cJSON_IsString(name)) {
            status = ct_fail(err, "%s: a point without \"dir\" and \"name\" strings", manifest);
            break;
        }
        char resolved[1100];
        snprintf(resolved, sizeof resolved, "%s/recipe.resolved.yaml", dir->valuestring);
        if (!path_exists(resolved)) {
            textbuf_printf(&rep->notes, "%s: point %s has not started; left out\n", path, name->valuestring);
            continue;
        }
        status = add_dir(rep, dir->valuestring, name->valuestring, err);
        added++;
    }
    cJSON_Delete(root);
    if (!status && !added) status = ct_fail(err, "%s: no point of this sweep has started yet", path);
    return status;
}

const char *report_value(const report_run *run, const char *key) {
    for (int i = 0; i < run->n_keys; i++)
        if (!strcmp(run->keys[i], key)) return run->values[i];
    return NULL;
}

static bool key_differs(const report *rep, const char *key) {
    const char *first = report_value(&rep->runs[0], key);
    for (int i = 1; i < rep->n_runs; i++) {
        const char *v = report_value(&rep->runs[i], key);
        if ((v == NULL) != (first == NULL) || (v && strcmp(v, first))) return true;
    }
    return false;
}

static void find_differences(report *rep) {
    for (int i = 0; i < rep->n_runs; i++)
        for (int k = 0; k < rep->runs[i].n_keys; k++) {
            const char *key = rep->runs[i].keys[k];
            /* The name and run directory differ between any two runs; the run column shows them. */
            if (!strcmp(key, "name") || !strcmp(key, "checkpoint.output_dir")) continue;
            bool seen = false;
            for (int d = 0; d < rep->n_diff && !seen; d++) seen = !strcmp(rep->diff_keys[d], key);
            if (seen || !key_differs(rep, key)) continue;
            char **grown = realloc(rep->diff_keys, (size_t)(rep->n_diff + 1) * sizeof *grown);
            if (!grown) return; /* fewer columns, not a failure */
            rep->diff_keys = grown;
            if ((grown[rep->n_diff] = strdup(key))) rep->n_diff++;
        }
}

/* 0: finished with an eval loss, 1: finished with a train loss only, 2: the rest. */
static int rank_class(const report_run *r) {
    if (!r->complete) return 2;
    if (isfinite(r->eval_loss)) return 0;
    return isfinite(r->train_loss) ? 1 : 2;
}

static int compare_doubles(double a, double b) {
    if (isfinite(a) != isfinite(b)) return isfinite(a) ? -1 : 1;
    if (!isfinite(a)) return 0;
    return a < b ? -1 : a > b ? 1 : 0;
}

static int compare_runs(const void *pa, const void *pb) {
    const report_run *a = pa, *b = pb;
    int ca = rank_class(a), cb = rank_class(b);
    if (ca != cb) return ca < cb ? -1 : 1;
    int c = ca == 0 ? compare_doubles(a->eval_loss, b->eval_loss) : 0;
    if (!c) c = compare_doubles(a->train_loss, b->train_loss);
    if (!c) c = strcmp(a->label, b->label);
    return c ? c : strcmp(a->dir, b->dir);
}

void report_finish(report *rep) {
    /* Two runs with the same folder name (runs/a/x, runs/b/x) are told apart by their paths. */
    for (int i = 0; i < rep->n_runs; i++)
        for (int j = i + 1; j < rep->n_runs; j++)
            if (!strcmp(rep->runs[i].label, rep->runs[j].label)) {
                snprintf(rep->runs[i].label, sizeof rep->runs[i].label, "%s", rep->runs[i].dir);
                snprintf(rep->runs[j].label, sizeof rep->runs[j].label, "%s", rep->runs[j].dir);
            }
    if (rep->n_runs > 1) find_differences(rep);
    qsort(rep->runs, (size_t)rep->n_runs, sizeof *rep->runs, compare_runs);
}

void report_free(report *rep) {
    for (int i = 0; i < rep->n_runs; i++) free_run(&rep->runs[i]);
    free(rep->runs);
    for (int i = 0; i < rep->n_diff; i++) free(rep->diff_keys[i]);
    free(rep->diff_keys);
    textbuf_free(&rep->notes);
    memset(rep, 0, sizeof *rep);
}

/* ---- tables ---- */

static void md_cell(textbuf *out, const char *text) {
    textbuf_puts(out, " ");
    for (const char *p = text; *p; p++) {
        if (*p == '|') textbuf_puts(out, "\\|");
        else if (*p == '\n') textbuf_puts(out, " ");
        else textbuf_put(out, p, 1);
    }
    textbuf_puts(out, " |");
}

static void format_number(char *buf, size_t size, const char *fmt, double v) {
    if (isfinite(v)) snprintf(buf, size, fmt, v);
    else snprintf(buf, size, "-");
}

static void format_memory(char *buf, size_t size, double bytes) {
    if (!isfinite(bytes) || bytes < 0) snprintf(buf, size, "-");
    else units_format_bytes((unsigned long long)bytes, buf, size);
}

void report_markdown(const report *rep, textbuf *out) {
    textbuf_puts(out, "| # | run |");
    for (int d = 0; d < rep->n_diff; d++) md_cell(out, rep->diff_keys[d]);
    textbuf_puts(out, " steps | train loss | eval loss | accuracy | tok/s | wall | peak memory |\n|---:|---|");
    for (int d = 0; d < rep->n_diff; d++) textbuf_puts(out, "---|");
    textbuf_puts(out, "---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < rep->n_runs; i++) {
        const report_run *r = &rep->runs[i];
        char cell[1100];
        textbuf_printf(out, "| %d |", i + 1);
        snprintf(cell, sizeof cell, "%s%s", r->label, r->complete ? "" : " (unfinished)");
        md_cell(out, cell);
        for (int d = 0; d < rep->n_diff; d++) {
            const char *v = report_value(r, rep->diff_keys[d]);
            md_cell(out, v ? v : "-");
        }
        if (r->steps >= 0) snprintf(cell, sizeof cell, "%d", r->steps);
        else snprintf(cell, sizeof cell, "-");
        md_cell(out, cell);
        format_number(cell, sizeof cell, "%.4f", r->train_loss), md_cell(out, cell);
        format_number(cell, sizeof cell, "%.4f", r->eval_loss), md_cell(out, cell);
        format_number(cell, sizeof cell, "%.1f%%", r->eval_accuracy * 100.0), md_cell(out, cell);
        format_number(cell, sizeof cell, "%.0f", r->tokens_per_second), md_cell(out, cell);
        units_format_duration(r->wall_seconds, true, cell, sizeof cell), md_cell(out, cell);
        format_memory(cell, sizeof cell, r->peak_memory_bytes), md_cell(out, cell);
        textbuf_puts(out, "\n");
    }
}

/* RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled. */
static void csv_field(textbuf *out, const char *text, bool first) {
    if (!first) textbuf_puts(out, ",");
    if (!strpbrk(text, ",\"\r\n")) {
        textbuf_puts(out, text);
        return;
    }
    textbuf_puts(out, "\"");
    for (const char *p = text; *p; p++) {
        if (*p == '"') textbuf_puts(out, "\"\"");
        else textbuf_put(out, p, 1);
    }
    textbuf_puts(out, "\"");
}

static void csv_number(textbuf *out, double v) {
    char buf[40];
    if (isfinite(v)) snprintf(buf, sizeof buf, "%.10g", v);
    else buf[0] = '\0';
    csv_field(out, buf, false);
}

void report_csv(const report *rep, textbuf *out) {
    csv_field(out, "rank", true);
    csv_field(out, "run", false);
    csv_field(out, "dir", false);
    for (int d = 0; d < rep->n_diff; d++) csv_field(out, rep->diff_keys[d], false);
    static const char *const cols[] = {"status", "steps", "train_loss", "eval_loss", "eval_accuracy",
                                       "tokens_per_second", "wall_seconds", "world_size", "peak_memory_bytes"};
    for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++) csv_field(out, cols[c], false);
    textbuf_puts(out, "\n");
    for (int i = 0; i < rep->n_runs; i++) {
        const report_run *r = &rep->runs[i];
        textbuf_printf(out, "%d", i + 1);
        csv_field(out, r->label, false);
        csv_field(out, r->dir, false);
        for (int d = 0; d < rep->n_diff; d++) {
            const char *v = report_value(r, rep->diff_keys[d]);
            csv_field(out, v ? v : "", false);
        }
        csv_field(out, r->complete ? "finished" : "unfinished", false);
        csv_number(out, r->steps >= 0 ? r->steps : NAN);
        csv_number(out, r->train_loss);
        csv_number(out, r->eval_loss);
        csv_number(out, r->eval_accuracy);
        csv_number(out, r->tokens_per_second);
        csv_number(out, r->wall_seconds);
        csv_number(out, r->world_size > 0 ? r->world_size : NAN);
        csv_number(out, r->peak_memory_bytes);
        textbuf_puts(out, "\n");
    }
}
