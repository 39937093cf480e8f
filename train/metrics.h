/* metrics: metrics.jsonl, one JSON object per line: training steps
 * {"step","loss","lr","grad_norm","tokens","tok_s","elapsed_s"[,"loss_scale"][,"skipped"]
 *  [,"peak_memory_bytes"]}
 * (fp16-mixed adds the loss scale the step ran with, and "skipped": true on an overflow; a
 * backend that counts its memory adds the most it has held so far) and
 * evaluations
 * {"step","eval_loss","eval_tokens"[,"eval_accuracy"]}. Flushed per line, so a killed run
 * keeps what it logged.
 *
 * Optionally (train.tensorboard) the same values as TensorBoard scalars (tfevents.h): train/loss,
 * train/lr, train/grad_norm, train/tokens, train/tokens_per_second [, train/loss_scale,
 * train/skipped] and eval/loss [, eval/accuracy], and the run's recipe as text. A failed event write does not stop training:
 * TensorBoard logging stops, and metrics_take_warning hands the reason over once. */
#ifndef CTUNE_METRICS_H
#define CTUNE_METRICS_H

#include <stdbool.h>
#include <stdio.h>

#include "train/error.h"
#include "train/tfevents.h"

typedef struct metrics_log {
    FILE *file;
    tfevents_writer tensorboard; /* .file NULL: not written */
    bool warning_pending;
    ct_error warning;
} metrics_log;

/* Both openers set every field of *log (its earlier contents are ignored). */
int metrics_open(metrics_log *log, const char *path, ct_error *err);
/* For a resumed run: keeps the lines of steps <= last_step (those after it are redone) and
 * appends from there. A missing file starts empty. */
int metrics_open_resumed(metrics_log *log, const char *path, long last_step, ct_error *err);
/* Also writes TensorBoard events into dir (a new file). first_step > 1 (a resumed run) makes
 * TensorBoard discard what earlier files logged from that step on. recipe_yaml (unless NULL)
 * goes in first, as the text "recipe" at step first_step - 1 (TensorBoard's Text tab). */
int metrics_open_tensorboard(metrics_log *log, const char *dir, long first_step, const char *recipe_yaml,
                             ct_error *err);
void metrics_close(metrics_log *log);
/* The reason TensorBoard logging stopped, once; NULL otherwise. */
const char *metrics_take_warning(metrics_log *log);
/* One training step's line. */
typedef struct metrics_step_values {
    int step;
    double loss, lr, grad_norm;
    long long tokens;
    double tokens_per_second, elapsed_seconds;
    double loss_scale;           /* <= 0: left out (not fp16-mixed); then skipped is too */
    bool skipped;
    long long peak_memory_bytes; /* < 0: left out (the backend cannot tell) */
} metrics_step_values;
void metrics_step(metrics_log *log, const metrics_step_values *v);
/* accuracy < 0 (or NAN) is left out. */
void metrics_eval(metrics_log *log, int step, double eval_loss, long long eval_tokens,
                  double accuracy);

#endif
