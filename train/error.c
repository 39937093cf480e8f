#include "train/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ct_fail(ct_error *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int ct_error_prefix(ct_error *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    /* prefix + ": " + old message, truncated to the buffer (kept NUL-terminated). */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3) n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t old_len = strnlen(old, sizeof old);
    if (old_len > room) old_len = room;
    memcpy(err->msg + n + 2, old, old_len);
    err->msg[n + 2 + old_len] = '\0';
    return -1;
}

void ct_error_clear(ct_error *err) {
    if (err) err->msg[0] = '\0';
}
