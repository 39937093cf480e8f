#include "train/metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>

int metrics_open(metrics_log *log, const char *path, ct_error *err) {
    log->file = fopen(path, "w");
    if (!log->file) return ct_fail(err, "%s: cannot open for writing: %s", path, strerror(errno));
    return 0;
}

void metrics_close(metrics_log *log) {
    if (log->file) fclose(log->file);
    log->file = NULL;
}

/* JSON has no NaN or Infinity; a diverged loss is logged as null so every line still parses. */
static void write_number(FILE *f, const char *key, double value) {
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.8g", key, value);
    else
        fprintf(f, ",\"%s\":null", key);
}

void metrics_step(metrics_log *log, int step, double loss, double lr, double grad_norm,
                  long long tokens, double tokens_per_second, double elapsed_seconds) {
    if (!log || !log->file) return;
    FILE *f = log->file;
    fprintf(f, "{\"step\":%d", step);
    write_number(f, "loss", loss);
    write_number(f, "lr", lr);
    write_number(f, "grad_norm", grad_norm);
    fprintf(f, ",\"tokens\":%lld", tokens);
    write_number(f, "tok_s", tokens_per_second);
    write_number(f, "elapsed_s", elapsed_seconds);
    fputs("}\n", f);
    fflush(f);
}

void metrics_eval(metrics_log *log, int step, double eval_loss, long long eval_tokens,
                  double accuracy) {
    if (!log || !log->file) return;
    FILE *f = log->file;
    fprintf(f, "{\"step\":%d", step);
    write_number(f, "eval_loss", eval_loss);
    fprintf(f, ",\"eval_tokens\":%lld", eval_tokens);
    if (!isnan(accuracy) && accuracy >= 0.0) write_number(f, "eval_accuracy", accuracy);
    fputs("}\n", f);
    fflush(f);
}
