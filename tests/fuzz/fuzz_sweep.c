/* libFuzzer harness: a sweep YAML through sweep_load; an accepted sweep is expanded into its
 * points and rendered as sweep.json and as the Slurm job-array script. */
#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_scratch_path(path, sizeof path, "sweep.yaml");
    if (fuzz_write_file(path, data, size)) abort();
    ct_error err = {{0}};
    if (fuzz_run_sweep(path, &err) != 0)
        fuzz_invariant(strstr(err.msg, path) != NULL, "error does not name the file", err.msg);
    return 0;
}
