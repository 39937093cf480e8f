/* OpenBLAS's kernel choice on CPUs newer than the library. A DYNAMIC_ARCH OpenBLAS picks its
 * kernels from the CPU model number at load time, and a model it does not know falls back to
 * Prescott (SSE3): Debian 12's 0.3.21 does so on Emerald Rapids (family 6, model 207), where
 * its SSE3 sgemm ran 30 GFLOP/s on one core against 149 for the AVX-512 (SkylakeX) kernels.
 * The choice can only be forced through OPENBLAS_CORETYPE, read when OpenBLAS initialises;
 * re-running that initialisation (gotoblas_dynamic_quit/init, exported by DYNAMIC_ARCH
 * builds, looked up weakly so other builds simply keep their choice) applies it after start. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kernels/kernels.h"

char *openblas_get_corename(void);
void gotoblas_dynamic_quit(void) __attribute__((weak));
void gotoblas_dynamic_init(void) __attribute__((weak));

/* The widest OpenBLAS x86-64 kernel family this CPU (and its OS) can run, or NULL. */
static const char *best_core(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

void kernels_cpu_tune_blas(void) {
    if (getenv("OPENBLAS_CORETYPE")) return; /* the user's choice stands */
    const char *core = openblas_get_corename();
    const char *better = best_core();
    if (!core || strcasecmp(core, "Prescott") != 0 || !better || !gotoblas_dynamic_quit || !gotoblas_dynamic_init)
        return;
    /* Set in the environment, so child processes (sweep points, tests) load with it too. */
    if (setenv("OPENBLAS_CORETYPE", better, 1) != 0) return;
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
}
