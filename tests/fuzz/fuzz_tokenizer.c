/* libFuzzer harness: tokenizer.json through tokenizer_load; an accepted tokenizer encodes
 * a fixed varied text and decodes the ids back. */
#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_scratch_path(path, sizeof path, "tokenizer.json");
    if (fuzz_write_file(path, data, size)) abort();
    ct_error err = {{0}};
    if (fuzz_run_tokenizer(path, &err) != 0)
        fuzz_invariant(strstr(err.msg, path) != NULL, "error does not name the file", err.msg);
    return 0;
}
