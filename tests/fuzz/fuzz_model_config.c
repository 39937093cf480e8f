/* libFuzzer harness: config.json through model_config_load; an accepted config is written
 * back with model_config_write and must load again. */
#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_scratch_path(path, sizeof path, "config.json");
    if (fuzz_write_file(path, data, size)) abort();
    ct_error err = {{0}};
    if (fuzz_run_model_config(path, &err) != 0)
        fuzz_invariant(strstr(err.msg, path) != NULL, "error does not name the file", err.msg);
    return 0;
}
