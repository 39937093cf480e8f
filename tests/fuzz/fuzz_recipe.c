/* libFuzzer harness: a recipe YAML through recipe_load (or, when the input has a line
 * "#overrides", the part before it through recipe_load_with_overrides with each later line as
 * a key=value override, as the command line passes them). */
#include "tests/fuzz/fuzz_scratch.h"
#include "tests/fuzz/fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_scratch_path(path, sizeof path, "recipe.yaml");
    if (fuzz_write_file(path, data, size)) abort();
    ct_error err = {{0}};
    if (fuzz_run_recipe(path, &err) != 0)
        fuzz_invariant(err.msg[0] != '\0', "empty error message", path);
    return 0;
}
