/* sweep: a hyper-parameter sweep file — a base recipe, a grid and/or random samples over
 * recipe keys, overrides common to every point — expanded into points, each a full recipe
 * in its own run directory, plus the manifest (sweep.json) and the Slurm job-array script.
 *
 *   base: configs/tiny/lora.yaml          # required; paths are relative to the working dir
 *   name: lora-lr                         # default: the sweep file's stem
 *   output_dir: runs/sweeps/lora-lr       # default: runs/sweeps/<name>
 *   overrides: {train.max_steps: 200}     # every point
 *   grid: {optim.lr: [1e-3, 3e-3], lora.r: [4, 8]}
 *   random: {samples: 4, seed: 0, keys: {optim.lr: {log_uniform: [1e-4, 1e-2]}}}
 *   slurm: {ntasks: 2, cpus_per_task: 1, time: "01:00:00", partition: debug,
 *           launcher: srun, max_parallel: 0, options: ["--gpus-per-task=1"]}
 *
 * Keys under overrides/grid/random.keys are recipe keys, dotted or nested. Points are the
 * grid's cross product (first key slowest, values in file order); with random samples too,
 * every grid point is combined with each sample (grid-major). Sample i's values are a pure
 * function of (seed, i, the order of random.keys). Point names come from the keys that vary
 * ("lr-0.001,r-4"), made filesystem-safe and unique.
 *
 * Strict like the recipe: unknown keys, wrong types and bad ranges are errors naming the file
 * and line. Recipe keys and values are checked by building each point's recipe through
 * train/recipe.h, and a bad one is reported at the sweep file's line that set it.
 * Does not own: running the points (cmd_sweep.c) or reading their results (report.h). */
#ifndef CTUNE_SWEEP_H
#define CTUNE_SWEEP_H

#include <stdbool.h>

#include "train/error.h"
#include "train/recipe.h"
#include "train/textbuf.h"

#define SWEEP_MAX_POINTS 10000

/* One recipe key set to one value: the override "key=value" and where it was written. */
typedef struct sweep_setting {
    char *key;   /* dotted recipe key */
    char *value; /* YAML text an override takes: 0.001, "a b", [q_proj, v_proj] */
    char *label; /* short form for point names: 0.001, q_proj+v_proj */
    int line;    /* 1-based line in the sweep file (0: made by the sweep itself) */
} sweep_setting;

typedef struct sweep_axis {
    char *key;
    int line;
    int n_values;
    sweep_setting *values;
} sweep_axis;

typedef enum { SWEEP_UNIFORM, SWEEP_LOG_UNIFORM, SWEEP_INT_UNIFORM, SWEEP_CHOICE } sweep_distribution;

typedef struct sweep_random_key {
    char *key;
    int line;
    sweep_distribution distribution;
    double lo, hi;             /* uniform, log_uniform, int_uniform (inclusive) */
    int n_choices;             /* choice */
    sweep_setting *choices;
} sweep_random_key;

typedef struct sweep_slurm {
    int nodes;          /* 0: leave to Slurm */
    int ntasks;         /* ranks per point, default 1 */
    int cpus_per_task;  /* threads per rank, default 1 */
    int max_parallel;   /* array tasks at once (the %N of --array); 0: no limit */
    char time[32];      /* "" or a Slurm time limit */
    char partition[128];
    char launcher[16];  /* srun (default) | mpirun */
    int n_options;      /* extra #SBATCH options, written as they are */
    char **options;
} sweep_slurm;

typedef struct sweep_spec {
    char source[RECIPE_PATH_MAX]; /* the sweep file, for messages */
    char name[200];
    char base[RECIPE_PATH_MAX];
    int base_line;
    char output_dir[RECIPE_PATH_MAX];
    int n_overrides;
    sweep_setting *overrides;
    int n_axes;
    sweep_axis *axes;
    int samples; /* random samples; 0 = no random part */
    long long seed;
    int n_random;
    sweep_random_key *random;
    sweep_slurm slurm;
} sweep_spec;

typedef struct sweep_point {
    int index;
    char name[220];
    char dir[RECIPE_PATH_MAX + 240]; /* output_dir/name */
    int n_settings;                 /* this point's grid and random values, in key order */
    sweep_setting *settings;
    /* Filled by whoever runs the point (cmd_sweep), for the manifest. */
    bool finished;   /* finished earlier with the same recipe: not run again */
    char status[16]; /* pending | ok | failed | submitted */
    int exit_status;
    double seconds;
    char job[64];    /* Slurm array task id "JOB_I" */
} sweep_point;

/* Parses a sweep file; on failure *s is left empty (safe to sweep_free). */
int sweep_load(sweep_spec *s, const char *path, ct_error *err);
/* The same from text; source names it in messages and gives the default name. */
int sweep_load_string(sweep_spec *s, const char *yaml_text, const char *source, ct_error *err);
void sweep_free(sweep_spec *s);

/* The points in order, names and directories filled, status "pending". */
int sweep_expand(const sweep_spec *s, sweep_point **points, int *n_points, ct_error *err);
void sweep_points_free(sweep_point *points, int n_points);

/* The point's recipe: base, then overrides, then the point's settings, then its run
 * directory as checkpoint.output_dir and name "<sweep>-<point>". A bad key or value is
 * reported at the sweep file's line that set it. */
int sweep_point_recipe(const sweep_spec *s, const sweep_point *p, recipe *r, ct_error *err);

/* Writes p->dir/recipe.yaml (atomically). *unchanged: the file already held the same text. */
int sweep_write_point_recipe(const sweep_point *p, const recipe *r, bool *unchanged,
                             ct_error *err);

/* sweep.json: the sweep, then one entry per point (name, dir, recipe, settings, status). */
void sweep_manifest_json(const sweep_spec *s, const sweep_point *points, int n_points,
                         textbuf *out);
int sweep_write_manifest(const sweep_spec *s, const sweep_point *points, int n_points,
                         ct_error *err);

/* The job-array script: one array task per point not finished, selecting the point's recipe by
 * SLURM_ARRAY_TASK_ID and running ctune_exe train on it under srun or mpirun, with the
 * signal forwarding and requeue of scripts/slurm/train.sbatch. workdir: absolute. */
int sweep_sbatch_script(const sweep_spec *s, const sweep_point *points, int n_points,
                        const char *ctune_exe, const char *workdir, textbuf *out, ct_error *err);

/* YAML double-quoted form of text (for values the sweep makes: paths, names). */
void sweep_yaml_quote(const char *text, textbuf *out);

#endif
