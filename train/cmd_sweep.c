/* ctune sweep SWEEP.yaml [--slurm] [--dry-run] [--mpirun PREFIX] [--force] */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "train/bootstrap.h"
#include "train/cli.h"
#include "train/clock.h"
#include "train/fsutil.h"
#include "train/sweep.h"

static void sweep_usage(FILE *out) {
    fprintf(out,
            "usage: ctune sweep SWEEP.yaml [--slurm] [--dry-run] [--mpirun PREFIX] [--force]\n"
            "\n"
            "Expands a sweep (a base recipe, a grid and/or random samples over recipe keys; see\n"
            "docs/sweeps.md) into points, writes each point's full recipe to\n"
            "<output_dir>/<point>/recipe.yaml and the manifest <output_dir>/sweep.json, then runs\n"
            "the points one after another (each `ctune train`, its output in <point>/train.log),\n"
            "going on past a failed point. Points already finished with the same recipe are skipped.\n"
            "Summarise the runs with: ctune report <output_dir>\n"
            "\n"
            "  --slurm          submit one Slurm job array (a task per point) instead of running here;\n"
            "                   the script is <output_dir>/sweep.sbatch\n"
            "  --dry-run        print the points (and the sbatch script with --slurm); write nothing\n"
            "  --mpirun PREFIX  run each point under this launcher, e.g. --mpirun \"scripts/mpirun.sh -np 2\"\n"
            "                   (split at spaces)\n"
            "  --force          run points again even when they have finished\n"
            "  --help           this text\n");
}

/* This binary's absolute path, so that children and Slurm tasks run the same ctune. */
static void own_path(char *out, size_t size) {
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    if (n > 0) out[n] = '\0';
    else snprintf(out, size, "ctune"); /* found through PATH */
}

/* Runs prefix... exe train recipe with stdout and stderr in log; the exit status, or 128+signal. */
static int run_child(char **prefix, int n_prefix, const char *exe, const char *recipe_path,
                     const char *log_path, ct_error *err) {
    int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log < 0) return ct_fail(err, "%s: cannot open for writing: %s", log_path, strerror(errno));
    char **argv = calloc((size_t)n_prefix + 4, sizeof *argv);
    if (!argv) {
        close(log);
        return ct_fail(err, "out of memory");
    }
    for (int i = 0; i < n_prefix; i++) argv[i] = prefix[i];
    argv[n_prefix] = (char *)exe;
    argv[n_prefix + 1] = "train";
    argv[n_prefix + 2] = (char *)recipe_path;
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(log, STDOUT_FILENO), dup2(log, STDERR_FILENO);
        close(log);
        execvp(argv[0], argv);
        fprintf(stderr, "ctune sweep: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(log);
    free(argv);
    if (pid < 0) return ct_fail(err, "cannot start a process: %s", strerror(errno));
    int wstatus;
    while (waitpid(pid, &wstatus, 0) < 0)
        if (errno != EINTR) return ct_fail(err, "waiting for the training process: %s", strerror(errno));
    return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

static void print_log_tail(const char *log_path, int lines) {
    char *text = NULL;
    size_t size = 0;
    ct_error ignored;
    if (read_file(log_path, &text, &size, &ignored)) return;
    size_t start = size;
    for (int seen = 0; start > 0; start--)
        if (text[start - 1] == '\n' && start != size && ++seen == lines) break;
    printf("    --- last lines of %s ---\n", log_path);
    for (char *line = strtok(text + start, "\n"); line; line = strtok(NULL, "\n"))
        printf("    %s\n", line);
    free(text);
}

static bool finished(const sweep_point *p) {
    char path[sizeof p->dir + 16];
    snprintf(path, sizeof path, "%s/summary.json", p->dir);
    return path_exists(path);
}

static int run_locally(const sweep_spec *s, sweep_point *points, int n, char *mpirun, const char *exe,
                       ct_error *err) {
    char *prefix[64];
    int n_prefix = 0;
    for (char *tok = mpirun ? strtok(mpirun, " \t") : NULL; tok && n_prefix < 64; tok = strtok(NULL, " \t"))
        prefix[n_prefix++] = tok;
    int failed = 0, skipped = 0;
    for (int i = 0; i < n; i++) {
        sweep_point *p = &points[i];
        if (p->finished) {
            printf("[%d/%d] %s: already finished, skipped\n", i + 1, n, p->name);
            skipped++;
            continue;
        }
        char recipe_path[sizeof p->dir + 16], log_path[sizeof p->dir + 16];
        snprintf(recipe_path, sizeof recipe_path, "%s/recipe.yaml", p->dir);
        snprintf(log_path, sizeof log_path, "%s/train.log", p->dir);
        printf("[%d/%d] %s ... ", i + 1, n, p->name);
        fflush(stdout);
        double start = ct_monotonic_seconds();
        int rc = run_child(prefix, n_prefix, exe, recipe_path, log_path, err);
        if (rc < 0) return -1;
        p->seconds = ct_monotonic_seconds() - start;
        p->exit_status = rc;
        bool ok = rc == 0 && finished(p);
        snprintf(p->status, sizeof p->status, "%s", ok ? "ok" : "failed");
        if (ok) {
            printf("ok (%.1f s)\n", p->seconds);
        } else {
            failed++;
            printf("FAILED (exit status %d, %.1f s)\n", rc, p->seconds);
            print_log_tail(log_path, 5);
        }
        if (sweep_write_manifest(s, points, n, err)) return -1;
    }
    printf("sweep %s: %d of %d points ran, %d failed, %d skipped (already finished)\n", s->name,
           n - skipped, n, failed, skipped);
    if (failed) {
        printf("failed points:");
        for (int i = 0; i < n; i++)
            if (!strcmp(points[i].status, "failed")) printf(" %s", points[i].name);
        printf("\n");
    }
    printf("report: ctune report %s\n", s->output_dir);
    return failed ? 1 : 0;
}

/* Makes the model and data that the points create on first use, once, here: the array tasks
 * would otherwise all create the same files at the same time. */
static int prepare_inputs(const recipe *r, ct_error *err) {
    char config[RECIPE_PATH_MAX + 16];
    snprintf(config, sizeof config, "%s/config.json", r->model.path);
    if (!path_exists(config) && r->model.init_preset[0]) {
        printf("ctune sweep: creating model '%s' at %s\n", r->model.init_preset, r->model.path);
        if (bootstrap_model(r->model.path, r->model.init_preset, (uint64_t)r->model.init_seed, err)) return -1;
    }
    if (r->data.synthetic_task[0] && !path_exists(r->data.train))
        printf("ctune sweep: generating the synthetic '%s' task into %s\n", r->data.synthetic_task, r->data.train);
    return bootstrap_synthetic_data(r, err);
}

/* sbatch --parsable SCRIPT; the job id, or -1. */
static int submit(const char *script, char *job_id, size_t size, ct_error *err) {
    int pipefd[2];
    if (pipe(pipefd)) return ct_fail(err, "pipe: %s", strerror(errno));
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        close(pipefd[0]), close(pipefd[1]);
        execlp("sbatch", "sbatch", "--parsable", script, (char *)NULL);
        fprintf(stderr, "ctune sweep: cannot run sbatch: %s (is Slurm installed?)\n", strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        return ct_fail(err, "cannot start sbatch: %s", strerror(errno));
    }
    size_t len = 0;
    ssize_t got;
    while (len + 1 < size && ((got = read(pipefd[0], job_id + len, size - 1 - len)) > 0 || (got < 0 && errno == EINTR)))
        if (got > 0) len += (size_t)got;
    job_id[len] = '\0';
    close(pipefd[0]);
    int wstatus;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {}
    job_id[strcspn(job_id, ";\n")] = '\0'; /* --parsable: "id" or "id;cluster" */
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0 || !job_id[0])
        return ct_fail(err, "sbatch %s failed (status %d)", script, WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);
    return 0;
}

static int run_slurm(const sweep_spec *s, sweep_point *points, int n, const char *exe, ct_error *err) {
    char workdir[PATH_MAX], script_path[RECIPE_PATH_MAX + 32], job[64];
    if (!getcwd(workdir, sizeof workdir)) return ct_fail(err, "getcwd: %s", strerror(errno));
    textbuf script = {0};
    int status = sweep_sbatch_script(s, points, n, exe, workdir, &script, err);
    snprintf(script_path, sizeof script_path, "%s/sweep.sbatch", s->output_dir);
    if (!status) status = write_file_atomic(script_path, script.data, script.len, err);
    textbuf_free(&script);
    recipe r;
    for (int i = 0; !status && i < n; i++) {
        status = sweep_point_recipe(s, &points[i], &r, err);
        if (!status) status = prepare_inputs(&r, err);
    }
    if (!status) status = submit(script_path, job, sizeof job, err);
    if (status) return -1;
    int submitted = 0;
    for (int i = 0; i < n; i++) {
        if (points[i].finished) continue;
        snprintf(points[i].status, sizeof points[i].status, "submitted");
        snprintf(points[i].job, sizeof points[i].job, "%.40s_%d", job, i);
        submitted++;
    }
    if (sweep_write_manifest(s, points, n, err)) return -1;
    printf("sweep %s: submitted job array %s (%d of %d points; script %s)\n"
           "watch: squeue -j %s   report when done: ctune report %s\n",
           s->name, job, submitted, n, script_path, job, s->output_dir);
    return 0;
}

int cmd_sweep(int argc, char **argv) {
    const char *path = NULL;
    char *mpirun = NULL;
    bool slurm = false, dry_run = false, force = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            sweep_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--slurm")) {
            slurm = true;
        } else if (!strcmp(argv[i], "--dry-run")) {
            dry_run = true;
        } else if (!strcmp(argv[i], "--force")) {
            force = true;
        } else if (!strcmp(argv[i], "--mpirun") && i + 1 < argc) {
            mpirun = argv[++i];
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "ctune sweep: unexpected argument '%s'\n", argv[i]);
            sweep_usage(stderr);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        sweep_usage(stderr);
        return 2;
    }
    if (slurm && mpirun) {
        fprintf(stderr, "ctune sweep: --mpirun is for local runs; under Slurm set slurm.launcher in the sweep\n");
        return 2;
    }
    char exe[PATH_MAX];
    own_path(exe, sizeof exe);
    ct_error err = {{0}};
    sweep_spec s;
    sweep_point *points = NULL;
    int n = 0, status = 0;
    recipe r;
    if (sweep_load(&s, path, &err) || sweep_expand(&s, &points, &n, &err)) status = -1;
    if (!status && !path_exists(s.base)) {
        char cwd[PATH_MAX];
        status = ct_fail(&err, "%s:%d: base recipe '%s' not found (relative paths start from the working directory %s)",
                         s.source, s.base_line, s.base, getcwd(cwd, sizeof cwd) ? cwd : ".");
    }
    /* Every point's recipe is checked before anything runs. */
    for (int i = 0; !status && i < n; i++) status = sweep_point_recipe(&s, &points[i], &r, &err);
    if (!status) {
        printf("sweep %s: %d point%s of %s -> %s\n", s.name, n, n == 1 ? "" : "s", s.base, s.output_dir);
        if (dry_run)
            for (int i = 0; i < n; i++) {
                printf("  [%d] %s:", i, points[i].name);
                for (int k = 0; k < points[i].n_settings; k++)
                    printf(" %s=%s", points[i].settings[k].key, points[i].settings[k].value);
                printf("\n      %s%s%s train %s/recipe.yaml\n", mpirun ? mpirun : "", mpirun ? " " : "", exe,
                       points[i].dir);
            }
    }
    int rc = status ? 1 : 0;
    if (!status && dry_run && slurm) {
        char workdir[PATH_MAX];
        textbuf script = {0};
        if (!getcwd(workdir, sizeof workdir)) status = ct_fail(&err, "getcwd: %s", strerror(errno));
        if (!status) status = sweep_sbatch_script(&s, points, n, exe, workdir, &script, &err);
        if (!status) printf("\n--- %s/sweep.sbatch ---\n%s", s.output_dir, script.data);
        textbuf_free(&script);
        rc = status ? 1 : 0;
    } else if (!status && !dry_run) {
        for (int i = 0; !status && i < n; i++) {
            bool unchanged;
            status = sweep_point_recipe(&s, &points[i], &r, &err);
            if (!status) status = sweep_write_point_recipe(&points[i], &r, &unchanged, &err);
            if (!status && unchanged && !force && finished(&points[i])) {
                points[i].finished = true;
                snprintf(points[i].status, sizeof points[i].status, "ok");
            }
        }
        if (!status) status = sweep_write_manifest(&s, points, n, &err);
        if (!status) {
            rc = slurm ? run_slurm(&s, points, n, exe, &err) : run_locally(&s, points, n, mpirun, exe, &err);
            status = rc < 0 ? -1 : 0;
        }
        rc = status ? 1 : rc;
    }
    if (status) fprintf(stderr, "ctune sweep: error: %s\n", err.msg);
    sweep_points_free(points, n);
    sweep_free(&s);
    return rc;
}
