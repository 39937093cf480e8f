/* utf8: strict UTF-8 decoding, shared by the tokenizer and the safetensors reader/writer.
 * Well-formed means Unicode table 3-7: no overlong forms, no surrogates, nothing above
 * U+10FFFF; the same rule Rust's str (tokenizers, safetensors) applies. */
#ifndef CTUNE_UTF8_H
#define CTUNE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed sequence at s (1..4), or 0 if invalid or n == 0; *cp gets the
 * code point. */
int utf8_next(const unsigned char *s, size_t n, uint32_t *cp);
/* Index of the first byte that breaks UTF-8, or n when all of s[0..n) is well-formed. */
size_t utf8_invalid_at(const unsigned char *s, size_t n);

#endif
