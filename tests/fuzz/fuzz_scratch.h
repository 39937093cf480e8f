/* fuzz_scratch: a per-process scratch folder for the libFuzzer harnesses, which hand the
 * fuzzed bytes to the project as files (its entry points read paths). Harness-only. */
#ifndef CTUNE_FUZZ_SCRATCH_H
#define CTUNE_FUZZ_SCRATCH_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The scratch folder, created on first use under $TMPDIR (or /tmp); fuzz.sh points TMPDIR
 * at a folder of its own that it removes when the run ends. */
static const char *fuzz_scratch_dir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/ctune-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            abort();
        }
    }
    return dir;
}

/* dir/name into buf (static per call site is fine: one harness thread). */
static void fuzz_scratch_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", fuzz_scratch_dir(), name);
}

#endif
