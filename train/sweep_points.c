/* sweep: from a parsed sweep to points — expansion, random draws, names, each point's recipe,
 * the manifest and the job-array script. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"
#include "train/splitmix.h"
#include "train/sweep.h"

/* Shortest %g text that reads back as the same double. */
static void shortest_double(double v, char *buf, size_t size) {
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, size, "%.*g", precision, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static int copy_setting(sweep_setting *dst, const char *key, const char *value, const char *label,
                        int line) {
    dst->key = strdup(key), dst->value = strdup(value), dst->label = strdup(label);
    dst->line = line;
    return dst->key && dst->value && dst->label ? 0 : -1;
}

/* Sample `sample` of random key k: a draw from one stream per sweep, in sample-major order. */
static int draw(const sweep_random_key *rk, uint64_t *state, sweep_setting *out) {
    double u = (double)(splitmix64_next(state) >> 11) * 0x1p-53; /* [0, 1) */
    char value[64], label[64];
    switch (rk->distribution) {
    case SWEEP_UNIFORM:
    case SWEEP_LOG_UNIFORM: {
        double v = rk->distribution == SWEEP_UNIFORM
                       ? rk->lo + u * (rk->hi - rk->lo)
                       : exp(log(rk->lo) + u * (log(rk->hi) - log(rk->lo)));
        v = v < rk->lo ? rk->lo : v > rk->hi ? rk->hi : v; /* exp/log rounding at the ends */
        shortest_double(v, value, sizeof value);
        snprintf(label, sizeof label, "%.3g", v);
        break;
    }
    case SWEEP_INT_UNIFORM: {
        double span = rk->hi - rk->lo + 1;
        long long v = (long long)rk->lo + (long long)floor(u * span);
        if (v > (long long)rk->hi) v = (long long)rk->hi;
        snprintf(value, sizeof value, "%lld", v);
        snprintf(label, sizeof label, "%lld", v);
        break;
    }
    case SWEEP_CHOICE: {
        int i = (int)floor(u * rk->n_choices);
        if (i >= rk->n_choices) i = rk->n_choices - 1;
        return copy_setting(out, rk->key, rk->choices[i].value, rk->choices[i].label, rk->line);
    }
    }
    return copy_setting(out, rk->key, value, label, rk->line);
}

/* The part of a key a name shows: its last component, unless another varied key shares it. */
static const char *short_key(const char *key, const char *const *varied, int n_varied) {
    const char *dot = strrchr(key, '.');
    const char *last = dot ? dot + 1 : key;
    for (int i = 0; i < n_varied; i++) {
        if (!strcmp(varied[i], key)) continue;
        const char *od = strrchr(varied[i], '.');
        if (!strcmp(od ? od + 1 : varied[i], last)) return key;
    }
    return last;
}

/* Names are folder names: letters, digits and . _ - + , only; no leading dot. Not '=':
 * `ctune train` takes every argument with '=' for a key=value override, so a recipe path
 * holding one could not be passed to it. Recipe keys have no '-', so "lr-0.001" still splits
 * into key and value at the first '-'. */
static void make_name(char *name, size_t size, const sweep_setting *settings, const bool *varies,
                      const char *const *varied, int n_varied, int n_settings, int index) {
    textbuf b = {0};
    for (int i = 0; i < n_settings; i++) {
        if (!varies[i]) continue;
        textbuf_printf(&b, "%s%s-%s", b.len ? "," : "", short_key(settings[i].key, varied, n_varied),
                       settings[i].label);
    }
    if (b.failed || !b.len) snprintf(name, size, "point-%d", index);
    else snprintf(name, size, "%.150s", b.data);
    textbuf_free(&b);
    for (char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-+,", *p)) *p = '_';
    if (name[0] == '.') name[0] = '_';
}

int sweep_expand(const sweep_spec *s, sweep_point **points_out, int *n_out, ct_error *err) {
    *points_out = NULL, *n_out = 0;
    int samples = s->samples > 0 ? s->samples : 1, n_grid = 1;
    for (int a = 0; a < s->n_axes; a++) n_grid *= s->axes[a].n_values; /* bounded by sweep_load */
    int n = n_grid * samples, n_settings = s->n_axes + s->n_random;
    sweep_point *points = calloc((size_t)n, sizeof *points);
    sweep_setting *draws = calloc((size_t)samples * (s->n_random ? s->n_random : 1), sizeof *draws);
    bool *varies = calloc((size_t)n_settings + 1, sizeof *varies);
    const char **varied = calloc((size_t)n_settings + 1, sizeof *varied);
    int status = points && draws && varies && varied ? 0 : ct_fail(err, "out of memory for %d points", n);

    uint64_t state = (uint64_t)s->seed;
    for (int i = 0; !status && i < samples * s->n_random; i++)
        if (draw(&s->random[i % s->n_random], &state, &draws[i])) status = ct_fail(err, "out of memory");
    int n_varied = 0;
    for (int k = 0; !status && k < n_settings; k++) {
        varies[k] = k >= s->n_axes || s->axes[k].n_values > 1;
        if (varies[k]) varied[n_varied++] = k < s->n_axes ? s->axes[k].key : s->random[k - s->n_axes].key;
    }
    for (int p = 0; !status && p < n; p++) {
        sweep_point *pt = &points[p];
        pt->index = p;
        snprintf(pt->status, sizeof pt->status, "pending");
        pt->settings = calloc((size_t)n_settings + 1, sizeof *pt->settings);
        if (!pt->settings) {
            status = ct_fail(err, "out of memory");
            break;
        }
        /* Mixed radix over the axes, last axis fastest (itertools.product order). */
        int g = p / samples, sample = p % samples;
        for (int a = s->n_axes - 1; a >= 0; a--) {
            const sweep_setting *v = &s->axes[a].values[g % s->axes[a].n_values];
            g /= s->axes[a].n_values;
            if (copy_setting(&pt->settings[a], v->key, v->value, v->label, v->line)) status = -1;
        }
        for (int k = 0; k < s->n_random; k++) {
            const sweep_setting *d = &draws[sample * s->n_random + k];
            if (copy_setting(&pt->settings[s->n_axes + k], d->key, d->value, d->label, d->line)) status = -1;
        }
        pt->n_settings = n_settings;
        if (status) {
            status = ct_fail(err, "out of memory");
            break;
        }
        make_name(pt->name, sizeof pt->name, pt->settings, varies, varied, n_varied, n_settings, p);
        /* Rounded labels (random draws) can collide: the later point gets its index. */
        for (int q = 0; q < p; q++)
            if (!strcmp(points[q].name, pt->name)) {
                char unique[sizeof pt->name];
                snprintf(unique, sizeof unique, "%.200s_%d", pt->name, p);
                memcpy(pt->name, unique, sizeof unique);
                break;
            }
        if (snprintf(pt->dir, sizeof pt->dir, "%s/%s", s->output_dir, pt->name) >= (int)sizeof pt->dir)
            status = ct_fail(err, "%s: output_dir is too long", s->source);
    }
    for (int i = 0; draws && i < samples * s->n_random; i++)
        free(draws[i].key), free(draws[i].value), free(draws[i].label);
    free(draws), free(varies), free(varied);
    if (status) {
        sweep_points_free(points, n);
        return -1;
    }
    *points_out = points, *n_out = n;
    return 0;
}

/* ---- each point's recipe ---- */

int sweep_point_recipe(const sweep_spec *s, const sweep_point *p, recipe *r, ct_error *err) {
    int n = s->n_overrides + p->n_settings + 2;
    char **assignments = calloc((size_t)n, sizeof *assignments);
    const sweep_setting **from = calloc((size_t)n, sizeof *from);
    int status = assignments && from ? 0 : ct_fail(err, "out of memory");
    int k = 0;
    for (int i = 0; !status && i < s->n_overrides + p->n_settings; i++, k++) {
        from[k] = i < s->n_overrides ? &s->overrides[i] : &p->settings[i - s->n_overrides];
        textbuf b = {0};
        textbuf_printf(&b, "%s=%s", from[k]->key, from[k]->value);
        assignments[k] = b.data;
        if (b.failed) status = ct_fail(err, "out of memory");
    }
    char run_name[256];
    snprintf(run_name, sizeof run_name, "%.120s-%.134s", s->name, p->name);
    const char *const made[2][2] = {{"checkpoint.output_dir", p->dir}, {"name", run_name}};
    for (int i = 0; !status && i < 2; i++, k++) {
        textbuf b = {0};
        textbuf_printf(&b, "%s=", made[i][0]);
        sweep_yaml_quote(made[i][1], &b);
        assignments[k] = b.data;
        if (b.failed) status = ct_fail(err, "out of memory");
    }
    if (!status && recipe_load_with_overrides(r, s->base, assignments, n, err)) {
        status = -1;
        /* recipe.h names a failing override "override 'key=value'" (cut at 300 bytes): find
         * which setting it was, to point at the sweep file's line. */
        int line = 0;
        for (int i = 0; i < n - 2 && !line; i++) {
            char needle[320];
            snprintf(needle, sizeof needle, "override '%.300s'", assignments[i]);
            if (strstr(err->msg, needle)) line = from[i]->line;
        }
        if (line) ct_error_prefix(err, "%s:%d", s->source, line);
        else ct_error_prefix(err, "%s: point '%s'", s->source, p->name);
    }
    for (int i = 0; assignments && i < n; i++) free(assignments[i]);
    free(assignments), free(from);
    return status;
}

int sweep_write_point_recipe(const sweep_point *p, const recipe *r, bool *unchanged, ct_error *err) {
    char *text = NULL, path[sizeof p->dir + 16];
    size_t size = 0;
    *unchanged = false;
    FILE *mem = open_memstream(&text, &size);
    if (!mem) return ct_fail(err, "out of memory");
    int status = recipe_write(r, mem, err);
    if (fclose(mem) && !status) status = ct_fail(err, "out of memory");
    snprintf(path, sizeof path, "%s/recipe.yaml", p->dir);
    if (!status) status = make_dirs(p->dir, err);
    if (!status) {
        char *old = NULL;
        size_t old_size = 0;
        ct_error ignored;
        if (read_file(path, &old, &old_size, &ignored) == 0 && old_size == size && !memcmp(old, text, size))
            *unchanged = true;
        free(old);
        if (!*unchanged) status = write_file_atomic(path, text, size, err);
    }
    free(text);
    return status;
}

/* ---- manifest ---- */

void sweep_manifest_json(const sweep_spec *s, const sweep_point *points, int n_points, textbuf *out) {
    textbuf_puts(out, "{\n  \"name\": ");
    textbuf_json_string(out, s->name);
    textbuf_puts(out, ",\n  \"source\": ");
    textbuf_json_string(out, s->source);
    textbuf_puts(out, ",\n  \"base\": ");
    textbuf_json_string(out, s->base);
    textbuf_puts(out, ",\n  \"output_dir\": ");
    textbuf_json_string(out, s->output_dir);
    textbuf_puts(out, ",\n  \"keys\": [");
    for (int i = 0; n_points && i < points[0].n_settings; i++) {
        textbuf_puts(out, i ? ", " : "");
        textbuf_json_string(out, points[0].settings[i].key);
    }
    textbuf_puts(out, "],\n  \"points\": [");
    for (int p = 0; p < n_points; p++) {
        const sweep_point *pt = &points[p];
        textbuf_printf(out, "%s\n    {\"index\": %d, \"name\": ", p ? "," : "", pt->index);
        textbuf_json_string(out, pt->name);
        textbuf_puts(out, ", \"dir\": ");
        textbuf_json_string(out, pt->dir);
        textbuf_puts(out, ", \"settings\": {");
        for (int i = 0; i < pt->n_settings; i++) {
            textbuf_puts(out, i ? ", " : "");
            textbuf_json_string(out, pt->settings[i].key);
            textbuf_puts(out, ": ");
            textbuf_json_string(out, pt->settings[i].value);
        }
        textbuf_puts(out, "}, \"status\": ");
        textbuf_json_string(out, pt->status);
        textbuf_printf(out, ", \"exit_status\": %d, \"seconds\": %.3f, \"job\": ", pt->exit_status,
                       isfinite(pt->seconds) ? pt->seconds : 0.0);
        textbuf_json_string(out, pt->job);
        textbuf_puts(out, "}");
    }
    textbuf_puts(out, "\n  ]\n}\n");
}

int sweep_write_manifest(const sweep_spec *s, const sweep_point *points, int n_points, ct_error *err) {
    textbuf b = {0};
    sweep_manifest_json(s, points, n_points, &b);
    char path[RECIPE_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/sweep.json", s->output_dir);
    int status = b.failed ? ct_fail(err, "out of memory") : make_dirs(s->output_dir, err);
    if (!status) status = write_file_atomic(path, b.data, b.len, err);
    textbuf_free(&b);
    return status;
}

/* ---- the job array ---- */

static void shell_quote(const char *text, textbuf *out) {
    textbuf_puts(out, "'");
    for (const char *p = text; *p; p++) {
        if (*p == '\'') textbuf_puts(out, "'\\''");
        else textbuf_put(out, p, 1);
    }
    textbuf_puts(out, "'");
}

/* The indices of the points not finished, as Slurm writes them: "0-3", "0,2-3". */
static void array_spec(const sweep_point *points, int n, textbuf *out) {
    bool first = true;
    for (int i = 0; i < n; i++) {
        if (points[i].finished) continue;
        int j = i;
        while (j + 1 < n && !points[j + 1].finished) j++;
        textbuf_printf(out, "%s%d", first ? "" : ",", i);
        if (j > i) textbuf_printf(out, "-%d", j);
        first = false;
        i = j;
    }
}

int sweep_sbatch_script(const sweep_spec *s, const sweep_point *points, int n_points,
                        const char *ctune_exe, const char *workdir, textbuf *out, ct_error *err) {
    const sweep_slurm *sl = &s->slurm;
    textbuf_puts(out, "#!/usr/bin/env bash\n");
    textbuf_printf(out, "# Written by `ctune sweep` for the sweep '%s' (%s): one array task per point,\n"
                   "# run like scripts/slurm/train.sbatch runs one recipe. Submit again with sbatch.\n",
                   s->name, s->source);
    textbuf_printf(out, "#SBATCH --job-name=%s\n#SBATCH --array=", s->name);
    size_t before = out->len;
    array_spec(points, n_points, out);
    if (out->len == before) return ct_fail(err, "%s: every point is finished; nothing to submit", s->source);
    if (sl->max_parallel > 0) textbuf_printf(out, "%%%d", sl->max_parallel);
    textbuf_printf(out, "\n#SBATCH --ntasks=%d\n#SBATCH --cpus-per-task=%d\n", sl->ntasks, sl->cpus_per_task);
    if (sl->nodes > 0) textbuf_printf(out, "#SBATCH --nodes=%d\n", sl->nodes);
    if (sl->time[0]) textbuf_printf(out, "#SBATCH --time=%s\n", sl->time);
    if (sl->partition[0]) textbuf_printf(out, "#SBATCH --partition=%s\n", sl->partition);
    textbuf_printf(out, "#SBATCH --chdir=%s\n#SBATCH --output=%s/slurm-%%A_%%a.out\n", workdir, s->output_dir);
    textbuf_puts(out, "#SBATCH --open-mode=append\n#SBATCH --requeue\n#SBATCH --signal=B:USR1@120\n");
    for (int i = 0; i < sl->n_options; i++) textbuf_printf(out, "#SBATCH %s\n", sl->options[i]);
    textbuf_puts(out, "set -uo pipefail\n\npoints=(\n");
    for (int i = 0; i < n_points; i++) {
        textbuf_puts(out, "  ");
        shell_quote(points[i].dir, out);
        textbuf_printf(out, " # %d\n", i);
    }
    textbuf_puts(out, ")\ntask=${SLURM_ARRAY_TASK_ID:?not a job-array task: submit this script with sbatch}\n"
                      "dir=${points[$task]}\nctune=${CTUNE:-");
    shell_quote(ctune_exe, out);
    textbuf_printf(out, "}\nlauncher=${CTUNE_LAUNCHER:-%s}\n", sl->launcher);
    textbuf_puts(out,
        "ntasks=${SLURM_NTASKS:-1}\n"
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n"
        "case \"$launcher\" in\n"
        "  srun) launch=(srun --mpi=pmix --ntasks=\"$ntasks\" --cpus-per-task=\"$OMP_NUM_THREADS\" --kill-on-bad-exit=1) ;;\n"
        "  mpirun)\n"
        "    if [ \"$(id -u)\" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi\n"
        "    launch=(mpirun -np \"$ntasks\" --bind-to none -x OMP_NUM_THREADS) ;;\n"
        "  *) echo \"sweep: CTUNE_LAUNCHER must be srun or mpirun, not '$launcher'\" >&2; exit 2 ;;\n"
        "esac\n"
        "echo \"sweep: point $task in $dir (job ${SLURM_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0});\" \\\n"
        "  \"log in $dir/train.log\"\n"
        "\n"
        "# As in train.sbatch: the step runs in the background so that the signal can be passed on.\n"
        "signalled=\"\"\n"
        "forward() { signalled=$1; echo \"sweep: got SIG$1, passing it to the ranks\"; "
        "[ -n \"${step_pid:-}\" ] && kill -s \"$1\" \"$step_pid\" 2>/dev/null; }\n"
        "trap 'forward USR1' USR1\n"
        "trap 'forward TERM' TERM\n"
        "\"${launch[@]}\" \"$ctune\" train \"$dir/recipe.yaml\" >>\"$dir/train.log\" 2>&1 &\n"
        "step_pid=$!\n"
        "while :; do\n"
        "  wait \"$step_pid\"\n"
        "  status=$?\n"
        "  kill -0 \"$step_pid\" 2>/dev/null || break\n"
        "done\n"
        "echo \"sweep: point $task ended with status $status\"\n"
        "# 75: ctune wrote the checkpoint the signal asked for.\n"
        "if [ \"$signalled\" = USR1 ] && [ \"$status\" -eq 75 ]; then\n"
        "  scontrol requeue \"$SLURM_JOB_ID\" || exit \"$status\"\n"
        "  exit 0\n"
        "fi\n"
        "exit \"$status\"\n");
    return out->failed ? ct_fail(err, "out of memory") : 0;
}
