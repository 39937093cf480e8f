/* libFuzzer harness: a safetensors file through st_open (header validation) and, when the
 * header is accepted, st_find / st_read_f32 over every tensor. */
#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_scratch_path(path, sizeof path, "model.safetensors");
    if (fuzz_write_file(path, data, size)) abort();
    ct_error err = {{0}};
    if (fuzz_run_safetensors(path, &err) != 0)
        fuzz_invariant(strstr(err.msg, path) != NULL, "error does not name the file", err.msg);
    return 0;
}
