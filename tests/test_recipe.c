/* Tests for train/recipe: defaults (against the values documented in recipe.h), every kind of
 * load error (each message must name the file, the line and the key), overrides, the
 * write -> load round trip, the gradient-accumulation rule, every recipe under configs/,
 * and docs/recipes.md against the schema. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/fsutil.h"
#include "train/recipe.h"

static char tmpdir[256];

#define MINIMAL "model:\n  path: models/tiny\ndata:\n  train: data/train.h5\n"

static int load_text(const char *name, const char *text, recipe *r, ct_error *err) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    check_write_text(path, text);
    return recipe_load(r, path, err);
}

/* Loads `text` from `name` and expects failure with every needle in the message. */
static void expect_error(const char *name, const char *text, const char *const *needles) {
    recipe r;
    ct_error err = {{0}};
    int rc = load_text(name, text, &r, &err);
    CHECK_MSG(rc == -1, "%s loaded without error", name);
    CHECK_CONTAINS(err.msg, name);
    for (int i = 0; needles[i]; i++) CHECK_CONTAINS(err.msg, needles[i]);
}
#define EXPECT_ERROR(name, text, ...)                                                              \
    expect_error(name, text, (const char *const[]){__VA_ARGS__, NULL})

static void test_defaults(void) {
    recipe r;
    recipe_defaults(&r);
    /* Expected values are the ones documented in train/recipe.h. */
    CHECK(r.name[0] == '\0' && r.model.path[0] == '\0' && r.model.init_preset[0] == '\0');
    CHECK(r.model.init_seed == 0);
    CHECK(r.method == METHOD_LORA);
    CHECK(r.lora.r == 8);
    CHECK(r.lora.alpha == 16.0);
    CHECK(r.lora.dropout == 0.0);
    CHECK(!r.lora.use_rslora);
    CHECK(r.lora.n_targets == 2 && !strcmp(r.lora.targets[0], "q_proj") &&
          !strcmp(r.lora.targets[1], "v_proj"));
    CHECK(r.data.train[0] == '\0' && r.data.eval[0] == '\0' && r.data.synthetic_task[0] == '\0');
    CHECK(r.data.seq_len == 256);
    CHECK(r.data.synthetic_train_examples == 20000);
    CHECK(r.data.synthetic_eval_examples == 256);
    CHECK(r.data.synthetic_digits == 3);
    CHECK(r.data.synthetic_seed == 1234);
    CHECK(r.train.micro_batch_size == 8);
    CHECK(r.train.global_batch_size == 32);
    CHECK(r.train.max_steps == 100);
    CHECK(r.train.seed == 1234);
    CHECK(r.train.eval_every == 0 && r.train.eval_max_batches == 0);
    CHECK(r.train.log_every == 10);
    CHECK(!r.train.activation_checkpointing);
    CHECK(r.optim.lr == 1e-3);
    CHECK(r.optim.weight_decay == 0.0);
    CHECK(r.optim.beta1 == 0.9 && r.optim.beta2 == 0.999);
    CHECK(r.optim.eps == 1e-8);
    CHECK(r.optim.grad_clip == 1.0);
    CHECK(r.optim.schedule == SCHEDULE_COSINE);
    CHECK(r.optim.warmup_steps == 0);
    CHECK(r.optim.min_lr_ratio == 0.0);
    CHECK(r.precision == PRECISION_FP32);
    CHECK(r.device == DEVICE_AUTO);
    CHECK(r.distributed.zero_stage == 0 && r.distributed.backend == DIST_BACKEND_AUTO);
    CHECK(r.checkpoint.output_dir[0] == '\0');
    CHECK(r.checkpoint.every == 0 && r.checkpoint.keep_last == 2);
    CHECK(!strcmp(r.checkpoint.license, "apache-2.0"));
    CHECK(!strcmp(recipe_method_name(METHOD_FULL), "full"));
    CHECK(!strcmp(recipe_schedule_name(SCHEDULE_LINEAR), "linear"));
    CHECK(!strcmp(recipe_precision_name(PRECISION_BF16_MIXED), "bf16-mixed"));
    CHECK(!strcmp(recipe_device_name(DEVICE_CUDA), "cuda"));
    CHECK(!strcmp(recipe_dist_backend_name(DIST_BACKEND_NCCL), "nccl"));
}

static void test_minimal_and_derived(void) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/tiny", tmpdir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/lora.yaml", dir);
    check_write_text(path, "# comment only lines are fine\n" MINIMAL);
    recipe r;
    ct_error err = {{0}};
    CHECK_MSG(recipe_load(&r, path, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(r.name, "lora"));
    CHECK(!strcmp(r.checkpoint.output_dir, "runs/lora"));
    CHECK(!strcmp(r.model.path, "models/tiny") && !strcmp(r.data.train, "data/train.h5"));
    CHECK(!strcmp(r.source, path));

    /* Explicit name and output_dir win over the derived ones; null sections are empty. */
    CHECK_MSG(load_text("named.yaml", MINIMAL "name: exp1\noptim:\nlora: ~\n", &r, &err) == 0, "%s",
              err.msg);
    CHECK(!strcmp(r.name, "exp1") && !strcmp(r.checkpoint.output_dir, "runs/exp1"));
    CHECK_MSG(load_text("dir.yaml", MINIMAL "checkpoint:\n  output_dir: /scratch/x\n", &r, &err) ==
                  0,
              "%s", err.msg);
    CHECK(!strcmp(r.name, "dir") && !strcmp(r.checkpoint.output_dir, "/scratch/x"));

    /* recipe_load_string names its source in messages and derives the name from it. */
    recipe_defaults(&r);
    CHECK_MSG(recipe_load_string(&r, MINIMAL "optim: {lr: 2.5e-4}\n", "inline.yml", &err) == 0,
              "%s", err.msg);
    CHECK(!strcmp(r.name, "inline") && r.optim.lr == 2.5e-4);
    recipe_defaults(&r);
    CHECK(recipe_load_string(&r, MINIMAL "optim:\n  lr: x\n", "inline.yml", &err) == -1);
    CHECK_CONTAINS(err.msg, "inline.yml:6: optim.lr: expected a number, got 'x'");
}

static void test_every_key_parses(void) {
    const char *text =
        "name: all\nmethod: full\nprecision: bf16-mixed\ndevice: cuda\n"
        "model: {path: m, init_preset: tiny, init_seed: 7}\n"
        "lora:\n  r: 16\n  alpha: 32\n  dropout: 0.05\n  use_rslora: true\n"
        "  target_modules:\n    - q_proj\n    - k_proj\n    - down_proj\n"
        "data:\n  train: t.h5\n  eval: e.h5\n  seq_len: 512\n  synthetic_task: reversal\n"
        "  synthetic_train_examples: 100\n  synthetic_eval_examples: 10\n  synthetic_digits: 5\n"
        "  synthetic_seed: 99\n"
        "train:\n  micro_batch_size: 4\n  global_batch_size: 64\n  max_steps: 1000\n  seed: 5\n"
        "  eval_every: 50\n  eval_max_batches: 3\n  log_every: 1\n  activation_checkpointing: "
        "True\n"
        "optim:\n  lr: 3e-4\n  weight_decay: 0.1\n  beta1: 0.8\n  beta2: 0.95\n  eps: 1.0e-6\n"
        "  grad_clip: 0\n  schedule: linear\n  warmup_steps: 100\n  min_lr_ratio: 0.1\n"
        "distributed:\n  zero_stage: 2\n  backend: nccl\n"
        "checkpoint:\n  output_dir: out\n  every: 200\n  keep_last: 5\n  license: mit\n";
    recipe r;
    ct_error err = {{0}};
    CHECK_MSG(load_text("all.yaml", text, &r, &err) == 0, "%s", err.msg);
    CHECK(r.method == METHOD_FULL && r.precision == PRECISION_BF16_MIXED &&
          r.device == DEVICE_CUDA);
    CHECK(!strcmp(r.model.init_preset, "tiny") && r.model.init_seed == 7);
    CHECK(r.lora.r == 16 && r.lora.alpha == 32 && r.lora.dropout == 0.05 && r.lora.use_rslora);
    CHECK(r.lora.n_targets == 3 && !strcmp(r.lora.targets[2], "down_proj"));
    CHECK(!strcmp(r.data.eval, "e.h5") && r.data.seq_len == 512);
    CHECK(!strcmp(r.data.synthetic_task, "reversal") && r.data.synthetic_digits == 5);
    CHECK(r.data.synthetic_train_examples == 100 && r.data.synthetic_eval_examples == 10);
    CHECK(r.data.synthetic_seed == 99);
    CHECK(r.train.micro_batch_size == 4 && r.train.global_batch_size == 64);
    CHECK(r.train.max_steps == 1000 && r.train.seed == 5 && r.train.eval_every == 50);
    CHECK(r.train.eval_max_batches == 3 && r.train.log_every == 1 &&
          r.train.activation_checkpointing);
    CHECK(r.optim.lr == 3e-4 && r.optim.weight_decay == 0.1 && r.optim.beta1 == 0.8);
    CHECK(r.optim.beta2 == 0.95 && r.optim.eps == 1e-6 && r.optim.grad_clip == 0.0);
    CHECK(r.optim.schedule == SCHEDULE_LINEAR && r.optim.warmup_steps == 100);
    CHECK(r.optim.min_lr_ratio == 0.1);
    CHECK(r.distributed.zero_stage == 2 && r.distributed.backend == DIST_BACKEND_NCCL);
    CHECK(!strcmp(r.checkpoint.output_dir, "out") && r.checkpoint.every == 200);
    CHECK(r.checkpoint.keep_last == 5 && !strcmp(r.checkpoint.license, "mit"));
}

static void test_load_errors(void) {
    /* MINIMAL is 4 lines, so a key appended after it sits on line 5 (or 6 inside a section). */
    EXPECT_ERROR("unknown.yaml", MINIMAL "optim:\n  lrr: 1e-4\n",
                 "unknown.yaml:6: unknown key 'optim.lrr' (did you mean 'optim.lr'?)");
    EXPECT_ERROR("misplaced.yaml", MINIMAL "train:\n  lr: 0.1\n",
                 "misplaced.yaml:6: unknown key 'train.lr' (did you mean 'optim.lr'?)");
    EXPECT_ERROR("section_typo.yaml", MINIMAL "optm:\n  lr: 0.1\n",
                 "section_typo.yaml:5: unknown key 'optm' (did you mean 'optim'?)");
    EXPECT_ERROR("far.yaml", MINIMAL "optim:\n  zzzzzzzz: 1\n",
                 "far.yaml:6:", "unknown key 'optim.zzzzzzzz'",
                 "keys of 'optim': lr, weight_decay");
    EXPECT_ERROR("dotted.yaml", MINIMAL "optim.lr: 1\n", "dotted.yaml:5:", "'optim.lr'", "nest");

    EXPECT_ERROR("int.yaml", MINIMAL "train:\n  micro_batch_size: abc\n",
                 "int.yaml:6: train.micro_batch_size: expected an integer, got 'abc'");
    EXPECT_ERROR("int_float.yaml", MINIMAL "train:\n  max_steps: 8.5\n",
                 "int_float.yaml:6: train.max_steps: expected an integer, got '8.5'");
    EXPECT_ERROR(
        "int_quoted.yaml", MINIMAL "train:\n  max_steps: \"8\"\n",
        "int_quoted.yaml:6: train.max_steps: expected an integer, got the quoted string '8'");
    EXPECT_ERROR("int_empty.yaml", MINIMAL "train:\n  max_steps:\n",
                 "int_empty.yaml:6: train.max_steps: expected an integer, got an empty value");
    EXPECT_ERROR("num.yaml", MINIMAL "optim:\n  lr: fast\n",
                 "num.yaml:6: optim.lr: expected a number, got 'fast'");
    EXPECT_ERROR("num_inf.yaml", MINIMAL "optim:\n  lr: .inf\n",
                 "num_inf.yaml:6: optim.lr: expected a number, got '.inf'");
    EXPECT_ERROR("bool.yaml", MINIMAL "lora:\n  use_rslora: yes\n",
                 "bool.yaml:6: lora.use_rslora: expected true or false, got 'yes'");

    EXPECT_ERROR("range.yaml", MINIMAL "train:\n  micro_batch_size: 0\n",
                 "range.yaml:6: train.micro_batch_size: 0 is out of range [1, 65536]");
    EXPECT_ERROR(
        "range_big.yaml", MINIMAL "train:\n  max_steps: 99999999999999999999\n",
        "range_big.yaml:6: train.max_steps: 99999999999999999999 is out of range (must be >= 1)");
    EXPECT_ERROR("range_open.yaml", MINIMAL "lora:\n  dropout: 1.0\n",
                 "range_open.yaml:6: lora.dropout: 1.0 is out of range [0, 1)");
    EXPECT_ERROR("range_lr.yaml", MINIMAL "optim:\n  lr: 0\n",
                 "range_lr.yaml:6: optim.lr: 0 is out of range (must be > 0)");
    EXPECT_ERROR("range_alpha.yaml", MINIMAL "lora:\n  alpha: -2\n",
                 "range_alpha.yaml:6: lora.alpha: -2 is out of range (must be > 0)");
    EXPECT_ERROR("range_huge.yaml", MINIMAL "optim:\n  weight_decay: 1e999\n",
                 "range_huge.yaml:6: optim.weight_decay: 1e999 is out of range");

    EXPECT_ERROR("enum.yaml", MINIMAL "method: lorra\n",
                 "enum.yaml:5: method: 'lorra' is not one of lora, full (did you mean 'lora'?)");
    EXPECT_ERROR(
        "enum2.yaml", MINIMAL "optim:\n  schedule: cosin\n", "enum2.yaml:6:",
        "optim.schedule: 'cosin' is not one of constant, linear, cosine (did you mean 'cosine'?)");
    EXPECT_ERROR("dup_section.yaml", MINIMAL "data:\n  synthetic_task: add\n",
                 "dup_section.yaml:5:", "duplicate key 'data'");
    EXPECT_ERROR(
        "choice2.yaml", "model: {path: m}\ndata:\n  train: t\n  synthetic_task: add\n",
        "choice2.yaml:4: data.synthetic_task: 'add' is not one of addition, reversal, or empty");

    EXPECT_ERROR("dup.yaml", MINIMAL "optim:\n  lr: 1\n  eps: 1\n  lr: 2\n",
                 "dup.yaml:8: duplicate key 'optim.lr' (first set at line 6)");
    EXPECT_ERROR("dup_top.yaml", MINIMAL "method: lora\nmethod: full\n",
                 "dup_top.yaml:6: duplicate key 'method' (first set at line 5)");

    EXPECT_ERROR("map.yaml", MINIMAL "optim:\n  lr:\n    value: 1\n",
                 "map.yaml:7: optim.lr: expected a number, got a mapping");
    EXPECT_ERROR("seq.yaml", MINIMAL "name: [a, b]\n",
                 "seq.yaml:5: name: expected a string, got a sequence");
    EXPECT_ERROR(
        "map_enum.yaml", MINIMAL "precision: {a: 1}\n",
        "map_enum.yaml:5: precision: expected one of fp32, bf16-mixed, fp16-mixed, got a mapping");
    EXPECT_ERROR(
        "section.yaml", MINIMAL "optim: 1e-4\n",
        "section.yaml:5: 'optim' is a section: expected a mapping of its keys, got '1e-4'");
    EXPECT_ERROR("key_map.yaml", MINIMAL "? {a: 1}\n: 2\n", "key_map.yaml:5: expected a key name");

    /* libyaml's own problem, with 1-based line and column. */
    EXPECT_ERROR(
        "malformed.yaml", "model:\n  path: m\n  bad: x: y\n",
        "malformed.yaml:3:9: malformed YAML: mapping values are not allowed in this context");
    EXPECT_ERROR("tab.yaml", "model:\n\tpath: m\n",
                 "tab.yaml:2:1: malformed YAML:", "found character that cannot start any token");
    EXPECT_ERROR("unclosed.yaml", "lora:\n  target_modules: [q_proj, v_proj\n",
                 "unclosed.yaml:3:", "malformed YAML", "while parsing a flow sequence at line 2");
    EXPECT_ERROR("utf8.yaml", MINIMAL "name: \xff\n", "utf8.yaml: byte 62: malformed YAML",
                 "invalid leading UTF-8 octet");
    EXPECT_ERROR("alias.yaml", MINIMAL "name: *nope\n", "alias.yaml:5:", "malformed YAML",
                 "undefined alias");
    EXPECT_ERROR("twodocs.yaml", MINIMAL "---\nname: x\n",
                 "twodocs.yaml:6: a second YAML document");
    EXPECT_ERROR("list_root.yaml", "- a\n- b\n",
                 "list_root.yaml:1: expected a mapping of keys at the top level, got a sequence");

    char long_name[400];
    memset(long_name, 'x', sizeof long_name);
    memcpy(long_name, "name: ", 6);
    strcpy(long_name + 300, "\n" MINIMAL);
    EXPECT_ERROR("long.yaml", long_name,
                 "long.yaml:1: name:", "is too long (294 bytes, at most 255)");
    EXPECT_ERROR("nul.yaml", MINIMAL "name: \"a\\0b\"\n",
                 "nul.yaml:5: name: the value contains a NUL byte");

    /* target_modules: entries are checked one by one, each error at the entry's line. */
    EXPECT_ERROR(
        "tm_name.yaml", MINIMAL "lora:\n  target_modules:\n    - q_proj\n    - v_prj\n",
        "tm_name.yaml:8: lora.target_modules: 'v_prj' is not one of q_proj, k_proj, v_proj",
        "(did you mean 'v_proj'?)");
    EXPECT_ERROR("tm_dup.yaml", MINIMAL "lora:\n  target_modules: [q_proj, q_proj]\n",
                 "tm_dup.yaml:6: lora.target_modules: 'q_proj' is listed twice");
    EXPECT_ERROR("tm_all.yaml", MINIMAL "lora:\n  target_modules: [q_proj, all-linear]\n",
                 "tm_all.yaml:6: lora.target_modules: all-linear", "only entry");
    EXPECT_ERROR("tm_empty.yaml", MINIMAL "lora:\n  target_modules: []\n",
                 "tm_empty.yaml:6: lora.target_modules: the list is empty");
    EXPECT_ERROR("tm_scalar.yaml", MINIMAL "lora:\n  target_modules: q_proj\n",
                 "tm_scalar.yaml:6: lora.target_modules: expected a list of module names");
    EXPECT_ERROR("tm_nested.yaml", MINIMAL "lora:\n  target_modules:\n    - [q_proj]\n",
                 "tm_nested.yaml:7: lora.target_modules: expected a module name, got a sequence");

    /* Empty file: defaults, then validation names the first missing required key. */
    EXPECT_ERROR("empty.yaml", "", "empty.yaml: missing required key 'model.path'");
    EXPECT_ERROR("comments.yaml", "# nothing yet\n",
                 "comments.yaml: missing required key 'model.path'");
    EXPECT_ERROR("no_train.yaml", "model:\n  path: m\n",
                 "no_train.yaml: missing required key 'data.train'");
    EXPECT_ERROR("empty_path.yaml", "model:\n  path: ''\ndata: {train: t}\n",
                 "empty_path.yaml: missing required key 'model.path'");

    /* Cross-field rules. */
    EXPECT_ERROR("warmup.yaml", MINIMAL "optim:\n  warmup_steps: 200\n",
                 "warmup.yaml: optim.warmup_steps (200) exceeds train.max_steps (100)");
    EXPECT_ERROR(
        "batch.yaml", MINIMAL "train:\n  global_batch_size: 30\n",
        "batch.yaml: train.global_batch_size (30) is not a multiple of train.micro_batch_size (8)");
    EXPECT_ERROR("eval.yaml", MINIMAL "train:\n  eval_every: 10\n",
                 "eval.yaml: train.eval_every is 10 but data.eval is empty");
    EXPECT_ERROR("scale.yaml", MINIMAL "precision: fp16-mixed\noptim:\n  loss_scale_init: 0.5\n",
                 "optim.loss_scale_init");
    EXPECT_ERROR("interval.yaml", MINIMAL "optim:\n  loss_scale_growth_interval: 0\n",
                 "optim.loss_scale_growth_interval");
    EXPECT_ERROR("cpu_nccl.yaml", MINIMAL "device: cpu\ndistributed:\n  backend: nccl\n",
                 "cpu_nccl.yaml: distributed.backend nccl needs device cuda");
    EXPECT_ERROR("z3_fp32.yaml", MINIMAL "method: full\ndistributed:\n  zero_stage: 3\n",
                 "z3_fp32.yaml: distributed.zero_stage 3 gathers the layers' 16-bit weight copies, so it needs "
                 "precision bf16-mixed or fp16-mixed");
    EXPECT_ERROR("z3_lora.yaml", MINIMAL "method: lora\nprecision: bf16-mixed\ndistributed:\n  zero_stage: 3\n",
                 "z3_lora.yaml: distributed.zero_stage 3 shards trained weights, and LoRA trains only its adapters");
    EXPECT_ERROR("z4.yaml", MINIMAL "distributed:\n  zero_stage: 4\n", "distributed.zero_stage");
    EXPECT_ERROR("nf4_fp32.yaml", MINIMAL "lora:\n  quantize_base: nf4\n",
                 "nf4_fp32.yaml: lora.quantize_base nf4 reads the 4-bit base back into the 16-bit copies mixed "
                 "precision multiplies with, so it needs precision bf16-mixed or fp16-mixed");
    EXPECT_ERROR("nf4_full.yaml", MINIMAL "method: full\nprecision: bf16-mixed\nlora:\n  quantize_base: nf4\n",
                 "nf4_full.yaml: lora.quantize_base nf4 holds a frozen base in 4 bits, so it needs method lora");
    EXPECT_ERROR("nf8.yaml", MINIMAL "lora:\n  quantize_base: nf8\n",
                 "nf8.yaml:6: lora.quantize_base: 'nf8' is not one of none, nf4");

    recipe r;
    ct_error err = {{0}};
    char missing[512];
    snprintf(missing, sizeof missing, "%s/does-not-exist.yaml", tmpdir);
    CHECK(recipe_load(&r, missing, &err) == -1);
    CHECK_CONTAINS(err.msg, "does-not-exist.yaml: cannot open");
    CHECK(recipe_load(&r, tmpdir, &err) == -1);
    CHECK_CONTAINS(err.msg, "is a directory");
}

static void test_overrides(void) {
    recipe r, before;
    ct_error err = {{0}};
    CHECK_MSG(load_text("ov.yaml", MINIMAL, &r, &err) == 0, "%s", err.msg);

    CHECK_MSG(recipe_apply_override(&r, "optim.lr=1e-4", &err) == 0, "%s", err.msg);
    CHECK(r.optim.lr == 1e-4);
    CHECK(recipe_apply_override(&r, "train.max_steps=500", &err) == 0 && r.train.max_steps == 500);
    CHECK(recipe_apply_override(&r, "lora.use_rslora=true", &err) == 0 && r.lora.use_rslora);
    CHECK(recipe_apply_override(&r, "precision=fp16-mixed", &err) == 0 &&
          r.precision == PRECISION_FP16_MIXED);
    CHECK(recipe_apply_override(&r, "lora.target_modules=[q_proj,v_proj,o_proj]", &err) == 0);
    CHECK(r.lora.n_targets == 3 && !strcmp(r.lora.targets[2], "o_proj"));
    CHECK(recipe_apply_override(&r, "lora.target_modules=all-linear", &err) == 0);
    CHECK(r.lora.n_targets == 1 && !strcmp(r.lora.targets[0], "all-linear"));
    CHECK(recipe_apply_override(&r, "data.eval='my eval.h5'", &err) == 0 &&
          !strcmp(r.data.eval, "my eval.h5"));
    CHECK(recipe_apply_override(&r, "data.eval=", &err) == 0 && r.data.eval[0] == '\0');

    /* A failed override leaves the recipe untouched. */
    before = r;
    CHECK(recipe_apply_override(&r, "optim.lr=abc", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'optim.lr=abc': optim.lr: expected a number, got 'abc'");
    CHECK(r.optim.lr == before.optim.lr);
    CHECK(recipe_apply_override(&r, "optim.lrr=1", &err) == -1);
    CHECK_CONTAINS(err.msg,
                   "override 'optim.lrr=1': unknown key 'optim.lrr' (did you mean 'optim.lr'?)");
    CHECK(recipe_apply_override(&r, "method=lorra", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'method=lorra': method: 'lorra' is not one of lora, full");
    CHECK(recipe_apply_override(&r, "train.micro_batch_size=0", &err) == -1);
    CHECK_CONTAINS(err.msg, "train.micro_batch_size: 0 is out of range [1, 65536]");
    CHECK(recipe_apply_override(&r, "lora.target_modules=q_proj,v_proj", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'lora.target_modules=q_proj,v_proj': lora.target_modules: "
                            "expected a list of module names");
    CHECK(recipe_apply_override(&r, "lora.target_modules=[q_proj,x_proj]", &err) == -1);
    CHECK_CONTAINS(err.msg, "'x_proj' is not one of");
    CHECK(recipe_apply_override(&r, "lora.target_modules=[q_proj,", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'lora.target_modules=[q_proj,': malformed YAML value");
    CHECK(recipe_apply_override(&r, "optim=1", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'optim=1': 'optim' is a section, not a key");
    CHECK(recipe_apply_override(&r, "optim.lr", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'optim.lr': expected key=value");
    CHECK(recipe_apply_override(&r, "=1", &err) == -1);
    CHECK_CONTAINS(err.msg, "expected key=value");
    CHECK(recipe_apply_override(&r, "name={a: 1}", &err) == -1);
    CHECK_CONTAINS(err.msg, "name: expected a string, got a mapping");
    CHECK(recipe_apply_override(&r, "optim.warmup_steps=900", &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'optim.warmup_steps=900': ");
    CHECK_CONTAINS(err.msg, "optim.warmup_steps (900) exceeds train.max_steps (500)");
    CHECK(recipe_apply_override(&r, "model.path=", &err) == -1);
    CHECK_CONTAINS(err.msg, "missing required key 'model.path'");
    CHECK(memcmp(&r.optim, &before.optim, sizeof r.optim) == 0);
    CHECK(!strcmp(r.model.path, "models/tiny") && r.lora.n_targets == before.lora.n_targets);

    /* Renaming moves a derived output_dir along, never an explicit one. */
    CHECK(recipe_apply_override(&r, "name=exp2", &err) == 0);
    CHECK(!strcmp(r.name, "exp2") && !strcmp(r.checkpoint.output_dir, "runs/exp2"));
    CHECK(recipe_apply_override(&r, "checkpoint.output_dir=/scratch/run", &err) == 0);
    CHECK(recipe_apply_override(&r, "name=exp3", &err) == 0);
    CHECK(!strcmp(r.checkpoint.output_dir, "/scratch/run"));

    /* Overrides given with the load are applied before the one validation, so a required key
     * may come from the command line and batch sizes may change together. */
    char path[512];
    snprintf(path, sizeof path, "%s/partial.yaml", tmpdir);
    check_write_text(path, "data:\n  train: t.h5\n");
    char *ovs[] = {"model.path=models/x", "train.global_batch_size=30", "train.micro_batch_size=10",
                   "name=partial-run"};
    CHECK_MSG(recipe_load_with_overrides(&r, path, ovs, 4, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(r.model.path, "models/x") && r.train.global_batch_size == 30);
    CHECK(!strcmp(r.checkpoint.output_dir, "runs/partial-run"));
    char *bad[] = {"model.path=m", "optim.eps=-1"};
    CHECK(recipe_load_with_overrides(&r, path, bad, 2, &err) == -1);
    CHECK_CONTAINS(err.msg, "override 'optim.eps=-1': optim.eps: -1 is out of range (must be > 0)");
    CHECK(recipe_load_with_overrides(&r, path, bad, 1, &err) == 0);
}

static bool same_recipe(const recipe *a, const recipe *b) {
    bool same = !strcmp(a->name, b->name) && !strcmp(a->model.path, b->model.path) &&
                !strcmp(a->model.init_preset, b->model.init_preset) &&
                a->model.init_seed == b->model.init_seed && a->method == b->method &&
                a->lora.r == b->lora.r && a->lora.alpha == b->lora.alpha &&
                a->lora.dropout == b->lora.dropout && a->lora.use_rslora == b->lora.use_rslora &&
                a->lora.n_targets == b->lora.n_targets;
    for (int i = 0; same && i < a->lora.n_targets; i++)
        same = !strcmp(a->lora.targets[i], b->lora.targets[i]);
    return same && !strcmp(a->data.train, b->data.train) && !strcmp(a->data.eval, b->data.eval) &&
           a->data.seq_len == b->data.seq_len &&
           !strcmp(a->data.synthetic_task, b->data.synthetic_task) &&
           a->data.synthetic_train_examples == b->data.synthetic_train_examples &&
           a->data.synthetic_eval_examples == b->data.synthetic_eval_examples &&
           a->data.synthetic_digits == b->data.synthetic_digits &&
           a->data.synthetic_seed == b->data.synthetic_seed &&
           memcmp(&a->train, &b->train, sizeof a->train) == 0 && a->optim.lr == b->optim.lr &&
           a->optim.weight_decay == b->optim.weight_decay && a->optim.beta1 == b->optim.beta1 &&
           a->optim.beta2 == b->optim.beta2 && a->optim.eps == b->optim.eps &&
           a->optim.grad_clip == b->optim.grad_clip && a->optim.schedule == b->optim.schedule &&
           a->optim.warmup_steps == b->optim.warmup_steps &&
           a->optim.min_lr_ratio == b->optim.min_lr_ratio && a->precision == b->precision &&
           a->device == b->device && a->distributed.zero_stage == b->distributed.zero_stage &&
           a->distributed.backend == b->distributed.backend &&
           !strcmp(a->checkpoint.output_dir, b->checkpoint.output_dir) &&
           a->checkpoint.every == b->checkpoint.every &&
           a->checkpoint.keep_last == b->checkpoint.keep_last &&
           !strcmp(a->checkpoint.license, b->checkpoint.license);
}

static char *write_to_string(const recipe *r) {
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    ct_error err = {{0}};
    CHECK_MSG(recipe_write(r, f, &err) == 0, "%s", err.msg);
    fclose(f);
    return buf;
}

static void test_round_trip(void) {
    recipe r;
    recipe_defaults(&r);
    /* Strings a YAML reader would misread if written plain, and characters it would fold
     * (U+2028, U+0085) or refuse (controls) if written raw. */
    strcpy(r.name, "run: #1 \"q\" \\ 'x'");
    strcpy(r.model.path, "-models/with space");
    strcpy(r.model.init_preset, "true");
    strcpy(r.data.train, "123");
    strcpy(r.data.eval, "null");
    strcpy(r.checkpoint.output_dir, "runs/\xc3\xa9\xe2\x80\xa8x\ttab\x01\xc2\x85\x7f end ");
    strcpy(r.checkpoint.license, "");
    r.model.init_seed = LLONG_MAX;
    r.method = METHOD_FULL;
    r.lora.r = 4096;
    r.lora.alpha = 1.0 / 3.0;
    r.lora.dropout = 0.1 + 0.2;
    r.lora.use_rslora = true;
    r.lora.n_targets = 3;
    strcpy(r.lora.targets[0], "gate_proj");
    strcpy(r.lora.targets[1], "q_proj");
    strcpy(r.lora.targets[2], "down_proj");
    strcpy(r.data.synthetic_task, "addition");
    r.data.seq_len = 1048576;
    r.data.synthetic_seed = 0;
    r.train.micro_batch_size = 3;
    r.train.global_batch_size = 96;
    r.train.eval_every = 7;
    r.train.activation_checkpointing = true;
    r.optim.lr = 3e-4;
    r.optim.weight_decay = 1e20;
    r.optim.beta1 = 0.0;
    r.optim.beta2 = 0.999999999999;
    r.optim.eps = 5e-324; /* smallest subnormal */
    r.optim.grad_clip = 123456789.125;
    r.optim.schedule = SCHEDULE_CONSTANT;
    r.optim.min_lr_ratio = 1.0;
    r.precision = PRECISION_BF16_MIXED;
    r.device = DEVICE_CUDA;
    r.distributed.zero_stage = 1;
    r.distributed.backend = DIST_BACKEND_MPI;
    r.checkpoint.every = 10;
    r.checkpoint.keep_last = 1;

    char *text = write_to_string(&r);
    char path[512];
    snprintf(path, sizeof path, "%s/resolved.yaml", tmpdir);
    check_write_text(path, text);
    recipe back;
    ct_error err = {{0}};
    CHECK_MSG(recipe_load(&back, path, &err) == 0, "%s\n%s", err.msg, text);
    CHECK_MSG(same_recipe(&r, &back), "round trip changed the recipe:\n%s", text);
    char *again = write_to_string(&back);
    CHECK(!strcmp(text, again));
    /* Floats carry a '.', so YAML 1.1 readers (PyYAML) also read them as floats. */
    CHECK_CONTAINS(text, "weight_decay: 1.0e+20\n");
    CHECK_CONTAINS(text, "target_modules: [gate_proj, q_proj, down_proj]\n");
    free(text);
    free(again);

    /* all-linear is written as the single string and read back as one entry. */
    recipe_defaults(&r);
    strcpy(r.model.path, "m");
    strcpy(r.data.train, "t");
    r.lora.n_targets = 1;
    strcpy(r.lora.targets[0], "all-linear");
    text = write_to_string(&r);
    CHECK_CONTAINS(text, "target_modules: all-linear\n");
    recipe_defaults(&back);
    CHECK_MSG(recipe_load_string(&back, text, "rt.yaml", &err) == 0, "%s", err.msg);
    CHECK(back.lora.n_targets == 1 && !strcmp(back.lora.targets[0], "all-linear"));
    free(text);

    /* The writer refuses a struct it could not read back. */
    r.method = (recipe_method)7;
    FILE *devnull = fopen("/dev/null", "w");
    CHECK(recipe_write(&r, devnull, &err) == -1);
    CHECK_CONTAINS(err.msg, "method: invalid value 7");
    fclose(devnull);
}

static void test_validate_by_hand(void) {
    recipe r;
    ct_error err = {{0}};
    recipe_defaults(&r);
    strcpy(r.source, "hand.yaml");
    strcpy(r.name, "hand");
    strcpy(r.model.path, "m");
    strcpy(r.data.train, "t");
    strcpy(r.checkpoint.output_dir, "runs/hand");
    CHECK_MSG(recipe_validate(&r, &err) == 0, "%s", err.msg);
    r.lora.alpha = 0;
    CHECK(recipe_validate(&r, &err) == -1);
    CHECK_CONTAINS(err.msg, "hand.yaml: lora.alpha: 0.0 is out of range (must be > 0)");
    r.lora.alpha = 16;
    r.optim.lr = -1e-3;
    CHECK(recipe_validate(&r, &err) == -1);
    CHECK_CONTAINS(err.msg, "optim.lr: -0.001 is out of range (must be > 0)");
    r.optim.lr = 1e-3;
    r.lora.n_targets = 2;
    strcpy(r.lora.targets[1], "all-linear");
    CHECK(recipe_validate(&r, &err) == -1);
    CHECK_CONTAINS(err.msg, "only entry");
    r.lora.n_targets = 0;
    CHECK(recipe_validate(&r, &err) == -1);
    CHECK_CONTAINS(err.msg, "lora.target_modules: 0 entries");
}

static void test_grad_accum(void) {
    recipe r;
    recipe_defaults(&r); /* global 32, micro 8 */
    strcpy(r.source, "ga.yaml");
    ct_error err = {{0}};
    int steps = -1;
    CHECK(recipe_grad_accum_steps(&r, 1, &steps, &err) == 0 && steps == 4);
    CHECK(recipe_grad_accum_steps(&r, 2, &steps, &err) == 0 && steps == 2);
    CHECK(recipe_grad_accum_steps(&r, 4, &steps, &err) == 0 && steps == 1);
    CHECK(recipe_grad_accum_steps(&r, 3, &steps, &err) == -1);
    CHECK_CONTAINS(err.msg, "train.global_batch_size 32 is not divisible by "
                            "train.micro_batch_size 8 x 3 ranks (= 24");
    CHECK(recipe_grad_accum_steps(&r, 8, &steps, &err) == -1); /* 64 per pass > 32 */
    CHECK_CONTAINS(err.msg, "8 x 8 ranks");
    CHECK(recipe_grad_accum_steps(&r, 0, &steps, &err) == -1);
    CHECK_CONTAINS(err.msg, "world size 0");
    r.train.micro_batch_size = 1;
    r.train.global_batch_size = 12;
    CHECK(recipe_grad_accum_steps(&r, 3, &steps, &err) == 0 && steps == 4);
}

/* Every recipe under configs/ loads and validates (sweep files have their own format). */
static int configs_checked = 0;
static void check_configs_in(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "sweeps")) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            check_configs_in(path);
            continue;
        }
        size_t n = strlen(path);
        if (!(n > 5 && !strcmp(path + n - 5, ".yaml")) && !(n > 4 && !strcmp(path + n - 4, ".yml")))
            continue;
        recipe r;
        ct_error err = {{0}};
        CHECK_MSG(recipe_load(&r, path, &err) == 0, "%s", err.msg);
        configs_checked++;
    }
    closedir(d);
}

static void test_docs_match_schema(void) {
    char path[PATH_MAX];
    char *doc = check_slurp(check_source_path("docs/recipes.md", path, sizeof path), NULL);
    CHECK_MSG(doc != NULL, "cannot read %s", path);
    if (!doc) return;
    char *ref = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&ref, &size);
    ct_error err = {{0}};
    CHECK(recipe_write_reference(f, &err) == 0);
    fclose(f);
    bool found = strstr(doc, ref) != NULL;
    CHECK_MSG(found, "docs/recipes.md does not contain the reference from the schema; the current "
                     "one is in recipe_reference.md (build dir)");
    if (!found) check_write_text("recipe_reference.md", ref);
    CHECK_CONTAINS(ref, "| `optim.lr` | number | `1e-3` | > 0 | peak learning rate |");
    CHECK_CONTAINS(ref, "| `train.micro_batch_size` | integer | `8` | [1, 65536] |");

    /* The example recipe in the docs loads. */
    const char *start = strstr(doc, "```yaml\n");
    CHECK(start != NULL);
    if (start) {
        start += strlen("```yaml\n");
        const char *end = strstr(start, "```");
        CHECK(end != NULL);
        if (end) {
            char *example = strndup(start, (size_t)(end - start));
            recipe r;
            recipe_defaults(&r);
            CHECK_MSG(recipe_load_string(&r, example, "docs-example.yaml", &err) == 0, "%s",
                      err.msg);
            free(example);
        }
    }
    free(ref);
    free(doc);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_recipe_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_defaults();
    test_minimal_and_derived();
    test_every_key_parses();
    test_load_errors();
    test_overrides();
    test_round_trip();
    test_validate_by_hand();
    test_grad_accum();
    char configs[PATH_MAX];
    check_configs_in(check_source_path("configs", configs, sizeof configs));
    printf("recipes under configs/ checked: %d\n", configs_checked);
    test_docs_match_schema();
    nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return check_summary("test_recipe");
}
