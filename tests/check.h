/* check: the tiny assertion layer every C test uses.
 * A failed CHECK prints file:line and the condition and counts the failure; the test's
 * main returns check_summary(), which prints "N passed, M failed" and is non-zero on failure. */
#ifndef CTUNE_TEST_CHECK_H
#define CTUNE_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_passed_count = 0;
static int check_failed_count = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) {                                                                   \
            check_passed_count++;                                                     \
        } else {                                                                      \
            check_failed_count++;                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                     \
    do {                                                                         \
        if (cond) {                                                              \
            check_passed_count++;                                                \
        } else {                                                                 \
            check_failed_count++;                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
        }                                                                        \
    } while (0)

/* |a-b| <= tol * max(1, |b|) */
#define CHECK_CLOSE(a, b, tol)                                                              \
    do {                                                                                    \
        double check_a_ = (double)(a), check_b_ = (double)(b);                              \
        double check_s_ = fabs(check_b_) > 1.0 ? fabs(check_b_) : 1.0;                      \
        CHECK_MSG(fabs(check_a_ - check_b_) <= (tol) * check_s_, "%.9g vs %.9g (tol %g)",   \
                  check_a_, check_b_, (double)(tol));                                       \
    } while (0)

/* Substring check for error messages. */
#define CHECK_CONTAINS(haystack, needle)                                                  \
    CHECK_MSG(strstr((haystack), (needle)) != NULL, "'%s' does not contain '%s'", (haystack), \
              (needle))

static inline int check_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, check_passed_count, check_failed_count);
    return check_failed_count == 0 && check_passed_count > 0 ? 0 : 1;
}

/* Path of a file in the source tree (CTUNE_SOURCE_DIR is set by ctest). */
static inline const char *check_source_path(const char *relative, char *buf, size_t size) {
    const char *root = getenv("CTUNE_SOURCE_DIR");
    snprintf(buf, size, "%s/%s", root ? root : ".", relative);
    return buf;
}

#endif
