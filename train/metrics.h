/* metrics: metrics.jsonl, one JSON object per line: training steps
 * {"step","loss","lr","grad_norm","tokens","tok_s","elapsed_s"[,"loss_scale"][,"skipped"]}
 * (fp16-mixed adds the loss scale the step ran with, and "skipped": true on an overflow) and
 * evaluations
 * {"step","eval_loss","eval_tokens"[,"eval_accuracy"]}. Flushed per line, so a killed run
 * keeps what it logged. */
#ifndef CTUNE_METRICS_H
#define CTUNE_METRICS_H

#include <stdbool.h>
#include <stdio.h>

#include "train/error.h"

typedef struct metrics_log {
    FILE *file;
} metrics_log;

int metrics_open(metrics_log *log, const char *path, ct_error *err);
/* For a resumed run: keeps the lines of steps <= last_step (those after it are redone) and
 * appends from there. A missing file starts empty. */
int metrics_open_resumed(metrics_log *log, const char *path, long last_step, ct_error *err);
void metrics_close(metrics_log *log);
/* loss_scale <= 0 leaves the key out. */
void metrics_step(metrics_log *log, int step, double loss, double lr, double grad_norm,
                  long long tokens, double tokens_per_second, double elapsed_seconds,
                  double loss_scale, bool skipped);
/* accuracy < 0 (or NAN) is left out. */
void metrics_eval(metrics_log *log, int step, double eval_loss, long long eval_tokens,
                  double accuracy);

#endif
