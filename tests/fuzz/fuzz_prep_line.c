/* libFuzzer harness: one JSONL input line of `ctune prep` through prep_parse_line and, when
 * it parses, prep_encode with the llama3 test tokenizer and chat template (so arbitrary
 * text also reaches the tokenizer's encoder). The first byte picks the --format and whether
 * this is line 1 (where a UTF-8 BOM is allowed). */
#include "tests/fuzz/fuzz_targets.h"

static tokenizer *fuzz_tok;
static chat_template fuzz_tmpl;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *src = getenv("CTUNE_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/llama3.json", src ? src : ".");
    ct_error err;
    if (tokenizer_load(&fuzz_tok, path, &err) ||
        chat_template_init(&fuzz_tmpl, CHAT_TEMPLATE_LLAMA3, fuzz_tok, &err)) {
        fprintf(stderr, "fuzz_prep_line: %s (set CTUNE_SOURCE_DIR)\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    prep_format format = (prep_format)(data[0] & 3);
    long line_no = (data[0] & 4) ? 1 : 7;
    ct_error err = {{0}};
    if (fuzz_run_prep_line((const char *)data + 1, size - 1, format, line_no, fuzz_tok,
                           &fuzz_tmpl, &err) != 0)
        fuzz_invariant(err.msg[0] != '\0', "empty error message", NULL);
    return 0;
}
