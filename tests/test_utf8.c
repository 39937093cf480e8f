/* utf8 (strict decoding, Unicode table 3-7) and splitmix (SplitMix64), the small shared
 * primitives. SplitMix64 reference outputs: Vigna's splitmix64.c from state 0. */
#include <stdint.h>
#include <string.h>

#include "tests/check.h"
#include "train/splitmix.h"
#include "train/utf8.h"

static int next_len(const char *s, size_t n, uint32_t *cp) {
    return utf8_next((const unsigned char *)s, n, cp);
}

static size_t invalid_at(const char *s) {
    return utf8_invalid_at((const unsigned char *)s, strlen(s));
}

static void check_utf8(void) {
    uint32_t cp = 0;
    CHECK(next_len("A", 1, &cp) == 1 && cp == 'A');
    CHECK(next_len("\xc3\xa9", 2, &cp) == 2 && cp == 0xe9);
    CHECK(next_len("\xe2\x82\xac", 3, &cp) == 3 && cp == 0x20ac);
    CHECK(next_len("\xf0\x9f\x98\x80", 4, &cp) == 4 && cp == 0x1f600);
    CHECK(next_len("\xf4\x8f\xbf\xbf", 4, &cp) == 4 && cp == 0x10ffff);
    CHECK(next_len("", 0, &cp) == 0);
    CHECK(next_len("\xc3\xa9", 1, &cp) == 0);         /* truncated */
    CHECK(next_len("\xc0\xaf", 2, &cp) == 0);         /* overlong '/' */
    CHECK(next_len("\xe0\x80\xaf", 3, &cp) == 0);     /* overlong */
    CHECK(next_len("\xed\xa0\x80", 3, &cp) == 0);     /* surrogate U+D800 */
    CHECK(next_len("\xf4\x90\x80\x80", 4, &cp) == 0); /* U+110000 */
    CHECK(next_len("\x80", 1, &cp) == 0);             /* lone continuation */
    CHECK(next_len("\xf8\x88\x80\x80\x80", 5, &cp) == 0);

    CHECK(invalid_at("") == 0);
    CHECK(invalid_at("plain \xc3\xa9t\xc3\xa9") == 11); /* all valid: the length */
    CHECK(invalid_at("ab\xed\xa0\x80" "cd") == 2);
    CHECK(invalid_at("abc\xe2\x82") == 3);
}

static void check_splitmix(void) {
    uint64_t state = 0;
    CHECK(splitmix64_next(&state) == 0xe220a8397b1dcdafull);
    CHECK(splitmix64_next(&state) == 0x6e789e6aa1b965f4ull);
    CHECK(splitmix64_next(&state) == 0x06c45d188009454full);
    CHECK(state == 3 * 0x9e3779b97f4a7c15ull);
    CHECK(splitmix64(0) == 0xe220a8397b1dcdafull);
}

int main(void) {
    check_utf8();
    check_splitmix();
    return check_summary("test_utf8");
}
