/* error: how ctune reports failures.
 *
 * A function that can fail returns 0 on success and -1 on failure, after filling a
 * caller-supplied ct_error with one line of context ("file:line: what was expected").
 * Callers add context with ct_error_prefix and pass the error up; only main prints it.
 * This module owns no global state. */
#ifndef CTUNE_ERROR_H
#define CTUNE_ERROR_H

#include <stddef.h>

typedef struct ct_error {
    char msg[2048];
} ct_error;

/* Fills err with the formatted message (err may be NULL) and returns -1. */
int ct_fail(ct_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "formatted: " to the existing message and returns -1. */
int ct_error_prefix(ct_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Empties the message. */
void ct_error_clear(ct_error *err);

#endif
