#include "train/textbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for n more bytes and the NUL; false (and failed set) when memory runs out. */
static bool reserve(textbuf *b, size_t n) {
    if (b->failed) return false;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return false;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) {
        b->failed = true;
        return false;
    }
    b->data = grown;
    b->cap = cap;
    return true;
}

void textbuf_put(textbuf *b, const char *s, size_t n) {
    if (!reserve(b, n)) return;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void textbuf_puts(textbuf *b, const char *s) { textbuf_put(b, s, strlen(s)); }

void textbuf_printf(textbuf *b, const char *fmt, ...) {
    if (!reserve(b, 0)) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->data[b->len] = '\0';
        b->failed = true;
        return;
    }
    if ((size_t)n >= b->cap - b->len) { /* did not fit: grow to the known size and redo */
        if (!reserve(b, (size_t)n)) return;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

void textbuf_json_string(textbuf *b, const char *s) {
    textbuf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': textbuf_put(b, "\\\"", 2); break;
        case '\\': textbuf_put(b, "\\\\", 2); break;
        case '\b': textbuf_put(b, "\\b", 2); break;
        case '\f': textbuf_put(b, "\\f", 2); break;
        case '\n': textbuf_put(b, "\\n", 2); break;
        case '\r': textbuf_put(b, "\\r", 2); break;
        case '\t': textbuf_put(b, "\\t", 2); break;
        default:
            if (*p < 0x20) textbuf_printf(b, "\\u%04x", *p);
            else textbuf_put(b, (const char *)p, 1);
        }
    }
    textbuf_put(b, "\"", 1);
}

void textbuf_free(textbuf *b) {
    free(b->data);
    *b = (textbuf){0};
}
