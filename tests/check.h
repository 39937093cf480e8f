/* check: the tiny assertion layer every C test uses.
 * A failed CHECK prints file:line and the condition and counts the failure; the test's
 * main returns check_summary(), which prints "N passed, M failed" and is non-zero on failure. */
#ifndef CTUNE_TEST_CHECK_H
#define CTUNE_TEST_CHECK_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
/* A missing fixture stops the test at once, saying where it looked: the checks after it
 * would only fail on (or crash over) what it did not load. */
static inline const char *check_source_path(const char *relative, char *buf, size_t size) {
    const char *root = getenv("CTUNE_SOURCE_DIR");
    snprintf(buf, size, "%s/%s", root ? root : ".", relative);
    if (access(buf, F_OK) != 0) {
        fprintf(stderr, "%s: not found (CTUNE_SOURCE_DIR=%s; set it to the repository's root)\n", buf,
                root ? root : "unset");
        exit(1);
    }
    return buf;
}

/* Writes text to path (a failed open or write is a failed check). */
static inline void check_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot create %s", path);
    if (!f) return;
    CHECK_MSG(fputs(text, f) >= 0, "cannot write %s", path);
    CHECK_MSG(fclose(f) == 0, "cannot close %s", path);
}

/* The whole file, NUL-terminated (size without the NUL, may be NULL); NULL if unreadable.
 * Caller frees. */
static inline char *check_slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *data = (char *)malloc(cap); /* casts: C++ tests include this too */
    while (data) {
        len += fread(data + len, 1, cap - len - 1, f);
        if (len < cap - 1) break;
        char *bigger = (char *)realloc(data, cap * 2);
        if (!bigger) {
            free(data);
            data = NULL;
            break;
        }
        data = bigger;
        cap *= 2;
    }
    bool failed = ferror(f);
    fclose(f);
    if (!data || failed) {
        free(data);
        return NULL;
    }
    data[len] = '\0';
    if (size) *size = len;
    return data;
}

#endif
