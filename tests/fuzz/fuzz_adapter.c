/* libFuzzer harness: a PEFT adapter folder. The first byte picks the file: even, the rest is
 * adapter_config.json (lora_read_config); odd, it is adapter_model.safetensors loaded into a
 * small LoRA model (lora_load_adapter: key names, shapes, dtypes).
 * FUZZ_WRITE_SEEDS=DIR writes seed inputs of both kinds (from lora_write_adapter) and exits. */
#include <sys/stat.h>

#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

static model fuzz_model;

static void write_seeds(const char *out_dir) {
    ct_error err;
    char dir[512], src[640], dst[640];
    fuzz_scratch_path(dir, sizeof dir, "seed");
    mkdir(dir, 0755);
    model_init_weights(&fuzz_model, 1);
    if (lora_write_adapter(dir, &fuzz_model, "fuzz-base", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    const char *names[] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", dir, names[i]);
        snprintf(dst, sizeof dst, "%s/seed_%s", out_dir, names[i]);
        size_t len = 0;
        char *bytes = fuzz_slurp(src, &len);
        FILE *f = fopen(dst, "wb");
        if (!bytes || !f) exit(1);
        fputc(i == 0 ? 0 : 1, f);
        fwrite(bytes, 1, len, f);
        fclose(f);
        free(bytes);
    }
    exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    ct_error err;
    if (fuzz_adapter_model(&fuzz_model, &err)) {
        fprintf(stderr, "fuzz_adapter: %s\n", err.msg);
        abort();
    }
    const char *seeds = getenv("FUZZ_WRITE_SEEDS");
    if (seeds) write_seeds(seeds);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    bool config = (data[0] & 1) == 0;
    char dir[512], path[640];
    fuzz_scratch_path(dir, sizeof dir, "adapter");
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/%s", dir, config ? "adapter_config.json" : "adapter_model.safetensors");
    if (fuzz_write_file(path, data + 1, size - 1)) abort();
    ct_error err = {{0}};
    if (fuzz_run_adapter(dir, config, &fuzz_model, &err) != 0)
        fuzz_invariant(strstr(err.msg, dir) != NULL, "error does not name the file", err.msg);
    unlink(path);
    return 0;
}
