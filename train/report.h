/* report: compares finished (or unfinished) runs. Reads each run directory's
 * recipe.resolved.yaml (through the recipe module, so values compare by meaning: 1e-3 equals
 * 0.001), summary.json and metrics.jsonl; finds the recipe keys whose values differ between
 * the runs; ranks the runs best first; renders a Markdown table, a CSV file and a PNG chart of
 * the loss curves. A sweep's output directory (with sweep.json) stands for its points.
 * Does not own: running anything, or the PNG encoding (png.h). */
#ifndef CTUNE_REPORT_H
#define CTUNE_REPORT_H

#include <stdbool.h>

#include "train/error.h"
#include "train/textbuf.h"

typedef struct report_curve {
    int n;
    double *step, *value;
} report_curve;

typedef struct report_run {
    char dir[1024];
    char label[1024];    /* the run's name in tables and the legend */
    bool complete;       /* summary.json was there */
    int steps;           /* NAN-like absent values: steps -1, doubles NAN */
    double train_loss, eval_loss, eval_accuracy, tokens_per_second, wall_seconds;
    double peak_memory_bytes; /* the largest rank's (summary.json); NAN when not known */
    int world_size;
    int n_keys;          /* the resolved recipe, flattened: "optim.lr" -> "0.001" */
    char **keys, **values;
    report_curve train, eval; /* from metrics.jsonl: loss by step, eval_loss by step */
} report_run;

typedef struct report {
    int n_runs;
    report_run *runs;
    int n_diff;          /* recipe keys that differ between runs (not name, output_dir) */
    char **diff_keys;
    textbuf notes;       /* lines for the user: sweep points left out and why */
} report;

/* Adds the run at path, or every point of the sweep whose output directory path is (points
 * never started are left out, with a line in rep->notes). A zeroed report is empty. */
int report_add(report *rep, const char *path, ct_error *err);
/* Reads one run directory. */
int report_load_run(report_run *run, const char *dir, ct_error *err);
/* After all report_add: labels made unique, differing keys found, runs ranked best first:
 * finished runs with an eval loss by eval loss, then finished runs without one by train
 * loss, then unfinished runs (by their last train loss). */
void report_finish(report *rep);
void report_free(report *rep);

/* The value of key in run, or NULL. */
const char *report_value(const report_run *run, const char *key);

void report_markdown(const report *rep, textbuf *out);
void report_csv(const report *rep, textbuf *out);

/* Draws the loss curves (train loss as lines, eval loss as squares, one colour per run, axes
 * with ticks, a legend) into a malloc'd width x height RGB image. */
int report_plot(const report *rep, int width, int height, unsigned char **rgb, ct_error *err);
int report_write_png(const report *rep, const char *path, ct_error *err);

#endif
