/* Replays the inputs the fuzzers found (tests/fixtures/fuzz/<target>/, docs/fuzzing.md)
 * through the same entry points as the libFuzzer harnesses (tests/fuzz/fuzz_targets.h),
 * without libFuzzer, so every past crash, hang or leak stays fixed under plain CI and ASan.
 *
 * A file named bad-* must be refused with a message naming the input file (or, for a prep
 * line, with a non-empty message naming the line); ok-* must be accepted; any other name may
 * go either way, it only must not crash. The adapter and prep_line inputs start with the
 * harness's mode byte (see tests/fuzz/fuzz_adapter.c and fuzz_prep_line.c). */
#include <dirent.h>
#include <sys/stat.h>

#include "tests/check.h"
#include "tests/fuzz/fuzz_targets.h"

typedef enum { EXPECT_ANY, EXPECT_OK, EXPECT_BAD } expectation;

typedef struct replay_env {
    char scratch[512];
    model adapter_model;
    tokenizer *tok;
    chat_template tmpl;
} replay_env;

static expectation expect_of(const char *name) {
    if (strncmp(name, "bad-", 4) == 0) return EXPECT_BAD;
    if (strncmp(name, "ok-", 3) == 0) return EXPECT_OK;
    return EXPECT_ANY;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs one input; returns the entry point's status, err filled on failure; *named says
 * which string the message must contain. */
static int replay_one(replay_env *env, const char *target, const char *bytes, size_t len,
                      ct_error *err, char *named, size_t named_size) {
    char path[768];
    if (strcmp(target, "adapter") == 0 || strcmp(target, "prep_line") == 0) {
        if (len == 0) return 0; /* the harnesses skip empty inputs too */
        uint8_t mode = (uint8_t)bytes[0];
        if (target[0] == 'p') {
            snprintf(named, named_size, "line ");
            return fuzz_run_prep_line(bytes + 1, len - 1, (prep_format)(mode & 3),
                                      (mode & 4) ? 1 : 7, env->tok, &env->tmpl, err);
        }
        bool config = (mode & 1) == 0;
        char dir[640];
        snprintf(dir, sizeof dir, "%s/adapter", env->scratch);
        mkdir(dir, 0755);
        snprintf(path, sizeof path, "%s/%s", dir,
                 config ? "adapter_config.json" : "adapter_model.safetensors");
        if (fuzz_write_file(path, (const uint8_t *)bytes + 1, len - 1)) return ct_fail(err, "write %s", path);
        snprintf(named, named_size, "%s", dir);
        int rc = fuzz_run_adapter(dir, config, &env->adapter_model, err);
        unlink(path);
        return rc;
    }
    if (strcmp(target, "st_index") == 0) {
        char dir[640];
        snprintf(dir, sizeof dir, "%s/index", env->scratch);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (fuzz_write_file(path, (const uint8_t *)bytes, len)) return ct_fail(err, "write %s", path);
        snprintf(named, named_size, "%s", dir);
        int rc = fuzz_run_st_index(dir, err);
        unlink(path);
        return rc;
    }
    const char *file = strcmp(target, "safetensors") == 0   ? "model.safetensors"
                       : strcmp(target, "sweep") == 0       ? "sweep.yaml"
                       : strcmp(target, "tokenizer") == 0   ? "tokenizer.json"
                       : strcmp(target, "recipe") == 0      ? "recipe.yaml"
                                                            : "config.json";
    snprintf(path, sizeof path, "%s/%s", env->scratch, file);
    if (fuzz_write_file(path, (const uint8_t *)bytes, len)) return ct_fail(err, "write %s", path);
    /* With overrides, the error may name the override ("override 'x=y'") instead. */
    bool overrides = strcmp(target, "recipe") == 0 && strstr(bytes, "\n#overrides\n");
    snprintf(named, named_size, "%s", overrides ? "" : path);
    int rc = strcmp(target, "safetensors") == 0   ? fuzz_run_safetensors(path, err)
             : strcmp(target, "tokenizer") == 0   ? fuzz_run_tokenizer(path, err)
             : strcmp(target, "recipe") == 0      ? fuzz_run_recipe(path, err)
             : strcmp(target, "sweep") == 0       ? fuzz_run_sweep(path, err)
                                                  : fuzz_run_model_config(path, err);
    unlink(path);
    return rc;
}

static int replay_target(replay_env *env, const char *target) {
    char rel[256], dir_path[1024];
    snprintf(rel, sizeof rel, "tests/fixtures/fuzz/%s", target);
    check_source_path(rel, dir_path, sizeof dir_path);
    DIR *dir = opendir(dir_path);
    if (!dir) return 0;
    char *names[512];
    int n = 0;
    for (struct dirent *e; (e = readdir(dir)) && n < 512;)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(dir);
    qsort(names, (size_t)n, sizeof *names, compare_names);
    for (int i = 0; i < n; i++) {
        char file[1400];
        snprintf(file, sizeof file, "%s/%s", dir_path, names[i]);
        size_t len = 0;
        char *bytes = fuzz_slurp(file, &len);
        CHECK_MSG(bytes != NULL, "cannot read %s", file);
        if (!bytes) continue;
        ct_error err = {{0}};
        char named[768] = "";
        int rc = replay_one(env, target, bytes, len, &err, named, sizeof named);
        expectation want = expect_of(names[i]);
        if (want == EXPECT_OK) CHECK_MSG(rc == 0, "%s/%s: expected success: %s", target, names[i], err.msg);
        if (want == EXPECT_BAD) CHECK_MSG(rc != 0, "%s/%s: expected an error", target, names[i]);
        if (rc != 0) {
            CHECK_MSG(err.msg[0] != '\0', "%s/%s: empty error message", target, names[i]);
            CHECK_MSG(strstr(err.msg, named) != NULL, "%s/%s: error '%s' does not name '%s'",
                      target, names[i], err.msg, named);
        }
        free(bytes);
        free(names[i]);
    }
    return n;
}

int main(void) {
    replay_env env;
    memset(&env, 0, sizeof env);
    const char *tmp = getenv("TMPDIR");
    snprintf(env.scratch, sizeof env.scratch, "%s/ctune-fuzz-replay-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    CHECK(mkdtemp(env.scratch) != NULL);
    ct_error err;
    CHECK_MSG(fuzz_adapter_model(&env.adapter_model, &err) == 0, "%s", err.msg);
    char tok_path[1024];
    check_source_path("tests/fixtures/tokenizer/llama3.json", tok_path, sizeof tok_path);
    CHECK_MSG(tokenizer_load(&env.tok, tok_path, &err) == 0, "%s", err.msg);
    CHECK_MSG(chat_template_init(&env.tmpl, CHAT_TEMPLATE_LLAMA3, env.tok, &err) == 0, "%s", err.msg);
    char index_dir[640];
    snprintf(index_dir, sizeof index_dir, "%s/index", env.scratch);
    CHECK(mkdir(index_dir, 0755) == 0);
    CHECK_MSG(fuzz_copy_shards(index_dir, &err) == 0, "%s", err.msg);
    if (check_failed_count) return check_summary("test_fuzz_regressions");

    const char *targets[] = {"safetensors", "st_index", "tokenizer", "recipe",
                             "model_config", "adapter", "prep_line", "sweep"};
    int total = 0;
    for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
        int n = replay_target(&env, targets[t]);
        printf("%s: %d inputs replayed\n", targets[t], n);
        total += n;
    }
    CHECK_MSG(total > 0, "no inputs under tests/fixtures/fuzz/");

    char adapter_dir[640];
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", env.scratch);
    rmdir(adapter_dir);
    for (int i = 1; i <= 3; i++) {
        char shard[768];
        snprintf(shard, sizeof shard, "%s/model-%05d-of-00003.safetensors", index_dir, i);
        unlink(shard);
    }
    rmdir(index_dir);
    rmdir(env.scratch);
    tokenizer_free(env.tok);
    model_free(&env.adapter_model);
    return check_summary("test_fuzz_regressions");
}
