/* Tests for train/sweep: grid expansion (count, order, names), random samples (ranges, the
 * seed, the log-uniform shape), parse errors with file:line, each point's recipe through
 * the recipe module (and errors traced back to the sweep file's line), the manifest, the
 * job-array script, and every sweep under configs/sweeps/. */
#define _XOPEN_SOURCE 700
#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/fsutil.h"
#include "train/splitmix.h"
#include "train/sweep.h"

static char tmpdir[256];

static int load(sweep_spec *s, const char *text, ct_error *err) {
    return sweep_load_string(s, text, "sweep.yaml", err);
}

/* Loads text and expects failure naming sweep.yaml:line and every needle. */
static void expect_error(int line, const char *text, const char *const *needles) {
    sweep_spec s;
    ct_error err = {{0}};
    int rc = load(&s, text, &err);
    CHECK_MSG(rc == -1, "loaded without error: %s", text);
    char where[64];
    snprintf(where, sizeof where, "sweep.yaml:%d", line);
    CHECK_CONTAINS(err.msg, where);
    for (int i = 0; needles[i]; i++) CHECK_CONTAINS(err.msg, needles[i]);
    sweep_free(&s);
}
#define EXPECT_ERROR(line, text, ...) expect_error(line, text, (const char *const[]){__VA_ARGS__, NULL})

static void test_grid_order_and_names(void) {
    sweep_spec s;
    ct_error err = {{0}};
    int rc = load(&s,
                  "base: b.yaml\n"
                  "grid:\n"
                  "  optim.lr: [1e-3, 3.0e-3]\n"
                  "  lora:\n"
                  "    r: [4, 8, 16]\n"
                  "  train.seed: [7]\n",
                  &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    CHECK(!strcmp(s.name, "sweep"));
    CHECK(!strcmp(s.output_dir, "runs/sweeps/sweep"));
    CHECK(s.n_axes == 3);
    sweep_point *p;
    int n;
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(n == 6);
    /* First key slowest, values in file order; the single-valued key is not in the name. */
    const char *names[6] = {"lr-0.001,r-4", "lr-0.001,r-8", "lr-0.001,r-16",
                            "lr-0.003,r-4", "lr-0.003,r-8", "lr-0.003,r-16"};
    const char *lrs[6] = {"1e-3", "1e-3", "1e-3", "3.0e-3", "3.0e-3", "3.0e-3"};
    const char *rs[6] = {"4", "8", "16", "4", "8", "16"};
    for (int i = 0; i < n && i < 6; i++) {
        CHECK_MSG(!strcmp(p[i].name, names[i]), "point %d: %s", i, p[i].name);
        CHECK(p[i].index == i && p[i].n_settings == 3);
        CHECK(!strcmp(p[i].settings[0].key, "optim.lr") && !strcmp(p[i].settings[0].value, lrs[i]));
        CHECK(!strcmp(p[i].settings[1].key, "lora.r") && !strcmp(p[i].settings[1].value, rs[i]));
        CHECK(!strcmp(p[i].settings[2].key, "train.seed") && !strcmp(p[i].settings[2].value, "7"));
        char dir[600];
        snprintf(dir, sizeof dir, "runs/sweeps/sweep/%s", names[i]);
        CHECK(!strcmp(p[i].dir, dir));
        CHECK(!strcmp(p[i].status, "pending"));
    }
    CHECK(p[0].settings[0].line == 3 && p[0].settings[1].line == 5);
    sweep_points_free(p, n);
    sweep_free(&s);
}

static void test_names_are_safe_and_unique(void) {
    sweep_spec s;
    ct_error err = {{0}};
    int rc = load(&s,
                  "base: b.yaml\nname: odd\noutput_dir: out\n"
                  "grid:\n"
                  "  a.x: ['p/q r', \"..\", 'p/q:r']\n"
                  "  b.x: [[q_proj, v_proj], all-linear]\n",
                  &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    sweep_point *p;
    int n;
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(n == 6);
    /* Keys sharing their last part are shown whole; quoted values stay quoted for the override. */
    CHECK_MSG(!strcmp(p[0].name, "a.x-p_q_r,b.x-q_proj+v_proj"), "%s", p[0].name);
    CHECK(!strcmp(p[0].settings[0].value, "\"p/q r\""));
    CHECK(!strcmp(p[0].settings[1].value, "[q_proj, v_proj]"));
    for (int i = 0; i < n; i++) {
        CHECK_MSG(strcspn(p[i].name, "/ =:") == strlen(p[i].name) && p[i].name[0] != '.', "%s", p[i].name);
        for (int j = 0; j < i; j++) CHECK_MSG(strcmp(p[i].name, p[j].name), "%s twice", p[i].name);
    }
    /* 'p/q r' and 'p/q:r' both become p_q_r: the later one gets its index. */
    CHECK_MSG(!strcmp(p[4].name, "a.x-p_q_r,b.x-q_proj+v_proj_4"), "%s", p[4].name);
    sweep_points_free(p, n);
    sweep_free(&s);
}

static void test_random(void) {
    const char *text = "base: b.yaml\n"
                       "random:\n"
                       "  samples: 200\n"
                       "  seed: 42\n"
                       "  keys:\n"
                       "    optim.lr: {log_uniform: [1e-4, 1e-2]}\n"
                       "    optim.weight_decay: {uniform: [0, 0.5]}\n"
                       "    lora.r: {int_uniform: [2, 5]}\n"
                       "    optim.schedule: {choice: [cosine, linear]}\n";
    sweep_spec s;
    ct_error err = {{0}};
    int rc = load(&s, text, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    sweep_point *p, *q;
    int n, m;
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(n == 200);
    int below = 0, r_seen[8] = {0}, cosine = 0;
    uint64_t state = 42;
    for (int i = 0; i < n; i++) {
        double lr = strtod(p[i].settings[0].value, NULL), wd = strtod(p[i].settings[1].value, NULL);
        long r = strtol(p[i].settings[2].value, NULL, 10);
        CHECK(lr >= 1e-4 && lr <= 1e-2 && wd >= 0 && wd <= 0.5 && r >= 2 && r <= 5);
        below += lr < 1e-3;
        if (r >= 2 && r <= 5) r_seen[r]++;
        cosine += !strcmp(p[i].settings[3].value, "cosine");
        /* The documented stream: SplitMix64 from the seed, sample-major, one draw per key. */
        double u = (double)(splitmix64_next(&state) >> 11) * 0x1p-53;
        CHECK_CLOSE(lr, exp(log(1e-4) + u * (log(1e-2) - log(1e-4))), 1e-12);
        for (int k = 0; k < 3; k++) splitmix64_next(&state);
        /* Values are written so that they read back exactly... */
        CHECK(strlen(p[i].settings[0].value) <= 24);
    }
    /* Log-uniform over two decades puts half the samples below 1e-3 (uniform would put 9%). */
    CHECK_MSG(below > 70 && below < 130, "%d of 200 below 1e-3", below);
    for (int r = 2; r <= 5; r++) CHECK_MSG(r_seen[r] > 25, "r=%d drawn %d times", r, r_seen[r]);
    CHECK(cosine > 60 && cosine < 140);
    CHECK(strstr(p[0].name, "lr-") == p[0].name && strstr(p[0].name, ",r-") && strstr(p[0].name, "schedule-"));

    /* The same seed gives the same points; another seed others. */
    sweep_spec s2;
    CHECK(load(&s2, text, &err) == 0);
    CHECK(sweep_expand(&s2, &q, &m, &err) == 0);
    CHECK(m == n);
    for (int i = 0; i < n && i < m; i++) CHECK(!strcmp(p[i].settings[0].value, q[i].settings[0].value) && !strcmp(p[i].name, q[i].name));
    sweep_points_free(q, m);
    sweep_free(&s2);
    char other[1024];
    snprintf(other, sizeof other, "%s", text);
    memcpy(strstr(other, "seed: 42"), "seed: 43", 8);
    CHECK(load(&s2, other, &err) == 0);
    CHECK(sweep_expand(&s2, &q, &m, &err) == 0);
    int same = 0;
    for (int i = 0; i < n && i < m; i++) same += !strcmp(p[i].settings[0].value, q[i].settings[0].value);
    CHECK(same < 5);
    sweep_points_free(q, m);
    sweep_free(&s2);
    sweep_points_free(p, n);
    sweep_free(&s);

    /* Grid x samples, grid-major: every grid point gets the same samples. */
    CHECK(load(&s, "base: b.yaml\ngrid: {lora.r: [4, 8]}\nrandom: {samples: 3, keys: {optim.lr: {uniform: [0.1, 0.2]}}}\n", &err) == 0);
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(n == 6);
    for (int i = 0; i < 3 && n == 6; i++) {
        CHECK(!strcmp(p[i].settings[0].value, "4") && !strcmp(p[i + 3].settings[0].value, "8"));
        CHECK(!strcmp(p[i].settings[1].value, p[i + 3].settings[1].value));
    }
    sweep_points_free(p, n);
    sweep_free(&s);
}

static void test_parse_errors(void) {
    EXPECT_ERROR(2, "base: b.yaml\ngird:\n  optim.lr: [1]\n", "unknown key 'gird'");
    EXPECT_ERROR(3, "base: b.yaml\ngrid:\n  optim.lr: 0.1\n", "grid.optim.lr", "expected a list of values");
    EXPECT_ERROR(3, "base: b.yaml\ngrid:\n  optim.lr: []\n", "empty");
    EXPECT_ERROR(1, "grid:\n  optim.lr: [1, 2]\n", "base: missing");
    EXPECT_ERROR(4, "base: b.yaml\ngrid:\n  optim.lr: [1, 2]\n  optim.lr: [3]\n", "duplicate key 'optim.lr'");
    EXPECT_ERROR(5, "base: b.yaml\ngrid:\n  optim.lr: [1, 2]\noverrides:\n  optim: {lr: 3}\n",
                 "'optim.lr' is set twice", "line 3");
    EXPECT_ERROR(6, "base: b.yaml\nrandom:\n  samples: 2\n  keys:\n    optim.lr:\n      gaussian: [1, 2]\n",
                 "expected a distribution");
    EXPECT_ERROR(4, "base: b.yaml\nrandom:\n  samples: 2\n  keys: {optim.lr: {log_uniform: [0, 1]}}\n",
                 "must be positive");
    EXPECT_ERROR(4, "base: b.yaml\nrandom:\n  samples: 2\n  keys: {optim.lr: {uniform: [2, 1]}}\n",
                 "must be below");
    EXPECT_ERROR(4, "base: b.yaml\nrandom:\n  samples: 2\n  keys: {lora.r: {int_uniform: [1, 2.5]}}\n",
                 "expected an integer");
    EXPECT_ERROR(3, "base: b.yaml\nrandom:\n  samples: 0\n", "random.samples", "out of range");
    EXPECT_ERROR(1, "base: b.yaml\nrandom:\n  keys: {optim.lr: {uniform: [1, 2]}}\n", "without random.samples");
    EXPECT_ERROR(1, "base: b.yaml\noverrides: {optim.lr: 1}\n", "nothing to sweep");
    EXPECT_ERROR(4, "base: b.yaml\ngrid: {optim.lr: [1, 2]}\nslurm:\n  launcher: aprun\n", "srun or mpirun");
    EXPECT_ERROR(4, "base: b.yaml\ngrid: {optim.lr: [1, 2]}\nslurm:\n  ntasks: two\n", "slurm.ntasks", "integer");
    EXPECT_ERROR(3, "base: b.yaml\ngrid:\n  checkpoint.output_dir: [a, b]\n", "set by the sweep");
    EXPECT_ERROR(3, "base: b.yaml\ngrid:\n  Optim.LR: [1, 2]\n", "not a recipe key");
    EXPECT_ERROR(3, "base: b.yaml\ngrid:\n  optim.lr: [1, {a: 2}]\n", "got a mapping");
    EXPECT_ERROR(2, "base: b.yaml\ngrid: {optim.lr: [1, 2}\n", "malformed YAML");
    EXPECT_ERROR(1, "base: b.yaml\ngrid:\n  a.x: [1,2,3,4,5,6,7,8,9,10]\n  b.x: [1,2,3,4,5,6,7,8,9,10]\n"
                    "  c.x: [1,2,3,4,5,6,7,8,9,10]\n  d.x: [1,2,3,4,5,6,7,8,9,10]\n  e.x: [1,2]\n",
                 "20000 points");
    EXPECT_ERROR(1, "[1, 2]\n", "expected a mapping");
    /* A file that does not exist names the path. */
    sweep_spec s;
    ct_error err = {{0}};
    CHECK(sweep_load(&s, "/nonexistent/sweep.yaml", &err) == -1);
    CHECK_CONTAINS(err.msg, "/nonexistent/sweep.yaml");
    sweep_free(&s);
}

static void test_point_recipes(void) {
    char base[512], text[2048], out[512];
    snprintf(base, sizeof base, "%s/base.yaml", tmpdir);
    check_write_text(base, "name: b\nmodel:\n  path: models/tiny\ndata:\n  train: t.h5\noptim:\n  lr: 0.5\n");
    snprintf(out, sizeof out, "%s/out", tmpdir);
    snprintf(text, sizeof text,
             "base: %s\nname: lr\noutput_dir: %s\noverrides:\n  train.max_steps: 7\n"
             "grid:\n  optim.lr: [1e-3, 3e-3]\n  lora.r: [4, 8]\n"
             "slurm: {ntasks: 2, max_parallel: 2, time: \"00:10:00\", options: [\"--exclusive\"]}\n",
             base, out);
    sweep_spec s;
    ct_error err = {{0}};
    int rc = load(&s, text, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    sweep_point *p;
    int n;
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    recipe r;
    CHECK(n == 4);
    for (int i = 0; i < n; i++) {
        rc = sweep_point_recipe(&s, &p[i], &r, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        if (rc) continue;
        CHECK(r.optim.lr == (i < 2 ? 1e-3 : 3e-3));
        CHECK(r.lora.r == (i % 2 ? 8 : 4));
        CHECK(r.train.max_steps == 7);
        CHECK(!strcmp(r.checkpoint.output_dir, p[i].dir));
        char name[300];
        snprintf(name, sizeof name, "lr-%s", p[i].name);
        CHECK_MSG(!strcmp(r.name, name), "%s", r.name);
        CHECK(!strcmp(r.model.path, "models/tiny")); /* from the base */
    }
    /* Written recipes load back with the point's values; an identical rewrite is noticed. */
    bool unchanged = true;
    CHECK(sweep_point_recipe(&s, &p[3], &r, &err) == 0);
    CHECK(sweep_write_point_recipe(&p[3], &r, &unchanged, &err) == 0);
    CHECK(!unchanged);
    CHECK(sweep_write_point_recipe(&p[3], &r, &unchanged, &err) == 0);
    CHECK(unchanged);
    char path[1400];
    snprintf(path, sizeof path, "%s/recipe.yaml", p[3].dir);
    recipe back;
    CHECK(recipe_load(&back, path, &err) == 0);
    CHECK(back.optim.lr == 3e-3 && back.lora.r == 8 && !strcmp(back.checkpoint.output_dir, p[3].dir));

    /* The manifest is JSON with every point. */
    snprintf(p[1].status, sizeof p[1].status, "failed");
    p[1].exit_status = 3;
    CHECK(sweep_write_manifest(&s, p, n, &err) == 0);
    snprintf(path, sizeof path, "%s/sweep.json", out);
    char *json;
    size_t size;
    CHECK(read_file(path, &json, &size, &err) == 0);
    cJSON *root = cJSON_Parse(json);
    free(json);
    CHECK(root != NULL);
    const cJSON *points = cJSON_GetObjectItem(root, "points");
    CHECK(cJSON_GetArraySize(points) == 4);
    const cJSON *second = cJSON_GetArrayItem(points, 1);
    CHECK(second && !strcmp(cJSON_GetObjectItem(second, "name")->valuestring, "lr-0.001,r-8"));
    CHECK(second && !strcmp(cJSON_GetObjectItem(second, "status")->valuestring, "failed"));
    CHECK(second && cJSON_GetObjectItem(second, "exit_status")->valueint == 3);
    CHECK(second && !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(second, "settings"), "lora.r")->valuestring, "8"));
    cJSON_Delete(root);

    /* The job array: every point listed, finished ones left out of --array. */
    textbuf script = {0};
    CHECK(sweep_sbatch_script(&s, p, n, "/opt/ct une", "/work dir", &script, &err) == 0);
    CHECK_CONTAINS(script.data, "#SBATCH --array=0-3%2\n");
    CHECK_CONTAINS(script.data, "#SBATCH --ntasks=2\n");
    CHECK_CONTAINS(script.data, "#SBATCH --time=00:10:00\n");
    CHECK_CONTAINS(script.data, "#SBATCH --exclusive\n");
    CHECK_CONTAINS(script.data, "#SBATCH --chdir=/work dir\n");
    CHECK_CONTAINS(script.data, "SLURM_ARRAY_TASK_ID");
    CHECK_CONTAINS(script.data, "'/opt/ct une'");
    CHECK_CONTAINS(script.data, "srun --mpi=pmix");
    for (int i = 0; i < n; i++) CHECK_CONTAINS(script.data, p[i].dir);
    textbuf_free(&script);
    p[1].finished = true;
    CHECK(sweep_sbatch_script(&s, p, n, "ctune", "/w", &script, &err) == 0);
    CHECK_CONTAINS(script.data, "#SBATCH --array=0,2-3%2\n");
    textbuf_free(&script);
    for (int i = 0; i < n; i++) p[i].finished = true;
    CHECK(sweep_sbatch_script(&s, p, n, "ctune", "/w", &script, &err) == -1);
    CHECK_CONTAINS(err.msg, "nothing to submit");
    textbuf_free(&script);
    sweep_points_free(p, n);
    sweep_free(&s);

    /* A bad recipe key or value is reported at the sweep file's line that set it. */
    snprintf(text, sizeof text, "base: %s\noverrides:\n  train.max_steps: 7\ngrid:\n  optim.lrr: [1, 2]\n", base);
    CHECK(load(&s, text, &err) == 0);
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(sweep_point_recipe(&s, &p[0], &r, &err) == -1);
    CHECK_CONTAINS(err.msg, "sweep.yaml:5");
    CHECK_CONTAINS(err.msg, "did you mean 'optim.lr'");
    sweep_points_free(p, n);
    sweep_free(&s);
    snprintf(text, sizeof text, "base: %s\noverrides:\n  train.max_steps: many\ngrid:\n  optim.lr: [1, 2]\n", base);
    CHECK(load(&s, text, &err) == 0);
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(sweep_point_recipe(&s, &p[1], &r, &err) == -1);
    CHECK_CONTAINS(err.msg, "sweep.yaml:3");
    CHECK_CONTAINS(err.msg, "train.max_steps");
    sweep_points_free(p, n);
    sweep_free(&s);
    /* A rule across keys has no one line: the point is named instead. */
    snprintf(text, sizeof text, "base: %s\ngrid:\n  optim.warmup_steps: [1, 500]\n", base);
    CHECK(load(&s, text, &err) == 0);
    CHECK(sweep_expand(&s, &p, &n, &err) == 0);
    CHECK(sweep_point_recipe(&s, &p[0], &r, &err) == 0);
    CHECK(sweep_point_recipe(&s, &p[1], &r, &err) == -1);
    CHECK_CONTAINS(err.msg, "point 'warmup_steps-500'");
    CHECK_CONTAINS(err.msg, "exceeds train.max_steps");
    sweep_points_free(p, n);
    sweep_free(&s);
}

/* Every sweep under configs/sweeps/ loads and every point's recipe validates (bases and paths
 * are relative to the repository root, where users run them). */
static void test_config_sweeps(void) {
    char root[PATH_MAX], here[PATH_MAX];
    check_source_path("", root, sizeof root);
    if (!getcwd(here, sizeof here) || chdir(root) != 0) {
        CHECK_MSG(0, "cannot enter %s", root);
        return;
    }
    DIR *d = opendir("configs/sweeps");
    CHECK(d != NULL);
    int checked = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n < 6 || strcmp(e->d_name + n - 5, ".yaml")) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "configs/sweeps/%s", e->d_name);
        sweep_spec s;
        sweep_point *p = NULL;
        int np = 0;
        ct_error err = {{0}};
        int rc = sweep_load(&s, path, &err);
        if (!rc) rc = sweep_expand(&s, &p, &np, &err);
        recipe r;
        for (int i = 0; !rc && i < np; i++) rc = sweep_point_recipe(&s, &p[i], &r, &err);
        CHECK_MSG(rc == 0 && np > 1, "%s: %s", path, err.msg);
        sweep_points_free(p, np);
        sweep_free(&s);
        checked++;
    }
    if (d) closedir(d);
    CHECK(checked > 0);
    CHECK(chdir(here) == 0);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ctune_test_sweep_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_grid_order_and_names();
    test_names_are_safe_and_unique();
    test_random();
    test_parse_errors();
    test_point_recipes();
    test_config_sweeps();
    ct_error err;
    remove_tree(tmpdir, &err);
    return check_summary("test_sweep");
}
