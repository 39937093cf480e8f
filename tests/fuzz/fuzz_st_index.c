/* libFuzzer harness: model.safetensors.index.json through st_model_open, beside three valid
 * shards (tests/fixtures/safetensors/sharded), so weight_map entries, shard names and the
 * key-in-shard checks are exercised. Needs CTUNE_SOURCE_DIR (fuzz.sh sets it). */
#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    ct_error err;
    if (fuzz_copy_shards(fuzz_scratch_dir(), &err)) {
        fprintf(stderr, "fuzz_st_index: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_scratch_path(path, sizeof path, "model.safetensors.index.json");
    if (fuzz_write_file(path, data, size)) abort();
    ct_error err = {{0}};
    if (fuzz_run_st_index(fuzz_scratch_dir(), &err) != 0)
        fuzz_invariant(strstr(err.msg, fuzz_scratch_dir()) != NULL, "error does not name the file", err.msg);
    return 0;
}
