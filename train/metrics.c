#include "train/metrics.h"

#include "train/fsutil.h"
#include "train/textbuf.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

int metrics_open(metrics_log *log, const char *path, ct_error *err) {
    *log = (metrics_log){0}; /* no TensorBoard file until metrics_open_tensorboard */
    log->file = fopen(path, "w");
    if (!log->file) return ct_fail(err, "%s: cannot open for writing: %s", path, strerror(errno));
    return 0;
}

int metrics_open_resumed(metrics_log *log, const char *path, long last_step, ct_error *err) {
    *log = (metrics_log){0};
    char *old = NULL;
    size_t size = 0;
    textbuf kept = {0};
    if (path_exists(path) && read_file(path, &old, &size, err)) return -1;
    for (char *line = old; line && *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line + 1) : strlen(line);
        long step = 0;
        /* Every line starts with {"step":N (metrics_step and metrics_eval write it first). */
        if (sscanf(line, "{\"step\":%ld", &step) == 1 && step <= last_step) textbuf_put(&kept, line, len);
        line += len;
    }
    free(old);
    int status = kept.failed ? ct_fail(err, "%s: out of memory", path)
                             : write_file_atomic(path, kept.data ? kept.data : "", kept.len, err);
    textbuf_free(&kept);
    if (status) return -1;
    log->file = fopen(path, "a");
    if (!log->file) return ct_fail(err, "%s: cannot open for appending: %s", path, strerror(errno));
    return 0;
}

int metrics_open_tensorboard(metrics_log *log, const char *dir, long first_step, const char *recipe_yaml,
                             ct_error *err) {
    if (tfevents_open(&log->tensorboard, dir, err)) return -1;
    int status = first_step > 1 ? tfevents_restart(&log->tensorboard, first_step, err) : 0;
    if (!status && recipe_yaml) {
        textbuf text = {0};
        textbuf_printf(&text, "```yaml\n%s```\n", recipe_yaml); /* Markdown: as written, monospaced */
        status = text.failed ? ct_fail(err, "out of memory")
                             : tfevents_text(&log->tensorboard, first_step - 1, "recipe", text.data, err);
        textbuf_free(&text);
    }
    if (status) tfevents_close(&log->tensorboard);
    return status;
}

void metrics_close(metrics_log *log) {
    if (log->file) fclose(log->file);
    log->file = NULL;
    tfevents_close(&log->tensorboard);
}

const char *metrics_take_warning(metrics_log *log) {
    if (!log->warning_pending) return NULL;
    log->warning_pending = false;
    return log->warning.msg;
}

/* One TensorBoard event; the first failure closes the event file and leaves a warning. */
static void tensorboard_event(metrics_log *log, int step, const tfevents_scalar *scalars, int n) {
    if (!log->tensorboard.file) return;
    if (tfevents_scalars(&log->tensorboard, step, scalars, n, &log->warning) == 0) return;
    tfevents_close(&log->tensorboard);
    log->warning_pending = true;
}

/* JSON has no NaN or Infinity; a diverged loss is logged as null so every line still parses. */
/* Losses, norms and rates with 17 digits (exact: runs are compared bit for bit through this
 * file); timings with 8. */
static void write_number(FILE *f, const char *key, double value) {
    bool timing = !strcmp(key, "tok_s") || !strcmp(key, "elapsed_s");
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.*g", key, timing ? 8 : 17, value);
    else
        fprintf(f, ",\"%s\":null", key);
}

void metrics_step(metrics_log *log, const metrics_step_values *v) {
    if (!log || !log->file) return;
    FILE *f = log->file;
    fprintf(f, "{\"step\":%d", v->step);
    write_number(f, "loss", v->loss);
    write_number(f, "lr", v->lr);
    write_number(f, "grad_norm", v->grad_norm);
    fprintf(f, ",\"tokens\":%lld", v->tokens);
    write_number(f, "tok_s", v->tokens_per_second);
    write_number(f, "elapsed_s", v->elapsed_seconds);
    if (v->loss_scale > 0) write_number(f, "loss_scale", v->loss_scale);
    if (v->skipped) fputs(",\"skipped\":true", f);
    if (v->peak_memory_bytes >= 0) fprintf(f, ",\"peak_memory_bytes\":%lld", v->peak_memory_bytes);
    fputs("}\n", f);
    fflush(f);
    tfevents_scalar scalars[8] = {{"train/loss", v->loss},
                                  {"train/lr", v->lr},
                                  {"train/grad_norm", v->grad_norm},
                                  {"train/tokens", (double)v->tokens},
                                  {"train/tokens_per_second", v->tokens_per_second}};
    int n = 5;
    if (v->loss_scale > 0) {
        scalars[n++] = (tfevents_scalar){"train/loss_scale", v->loss_scale};
        scalars[n++] = (tfevents_scalar){"train/skipped", v->skipped ? 1.0 : 0.0};
    }
    if (v->peak_memory_bytes >= 0)
        scalars[n++] = (tfevents_scalar){"train/peak_memory_gib", (double)v->peak_memory_bytes / (1024.0 * 1024.0 * 1024.0)};
    tensorboard_event(log, v->step, scalars, n);
}

void metrics_eval(metrics_log *log, int step, double eval_loss, long long eval_tokens,
                  double accuracy) {
    if (!log || !log->file) return;
    FILE *f = log->file;
    fprintf(f, "{\"step\":%d", step);
    write_number(f, "eval_loss", eval_loss);
    fprintf(f, ",\"eval_tokens\":%lld", eval_tokens);
    const bool has_accuracy = !isnan(accuracy) && accuracy >= 0.0;
    if (has_accuracy) write_number(f, "eval_accuracy", accuracy);
    fputs("}\n", f);
    fflush(f);
    const tfevents_scalar scalars[2] = {{"eval/loss", eval_loss}, {"eval/accuracy", accuracy}};
    tensorboard_event(log, step, scalars, has_accuracy ? 2 : 1);
}
