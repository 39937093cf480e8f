/* textbuf: a growable, always NUL-terminated text buffer for building files in memory
 * (safetensors headers, config.json, adapter_config.json) and for scratch strings.
 *
 * Running out of memory sets `failed` and turns every later call into a no-op, so a builder
 * appends freely and checks once at the end. A zeroed struct is an empty buffer; after the
 * first call (even one appending nothing) data is non-NULL. Does not own: writing to disk
 * (fsutil's write_file_atomic). */
#ifndef CTUNE_TEXTBUF_H
#define CTUNE_TEXTBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct textbuf {
    char *data;
    size_t len, cap;
    bool failed;
} textbuf;

void textbuf_put(textbuf *b, const char *s, size_t n);
void textbuf_puts(textbuf *b, const char *s);
void textbuf_printf(textbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a quoted JSON string, escaped as serde_json and Python's json (ensure_ascii aside):
 * \" \\ \b \f \n \r \t, \u00xx for the other control characters, other bytes as they are. */
void textbuf_json_string(textbuf *b, const char *s);
void textbuf_free(textbuf *b);

#endif
