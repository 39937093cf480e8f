/* textbuf (growth, printf, the JSON string escaper), jsonfile (parse errors) and units (byte
 * counts and durations for people). Expected
 * escapes are Python's json.dumps(s, ensure_ascii=False), which serde_json matches. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/fsutil.h"
#include "train/jsonfile.h"
#include "train/textbuf.h"
#include "train/units.h"

static void check_growth(void) {
    textbuf b = {0};
    textbuf_put(&b, "", 0);
    CHECK(b.data != NULL && b.len == 0 && b.data[0] == '\0'); /* an empty string, not NULL */
    char expected[5001] = "";
    for (int i = 0; i < 1000; i++) {
        textbuf_puts(&b, "abcde");
        memcpy(expected + 5 * i, "abcde", 5);
    }
    expected[5000] = '\0';
    CHECK(!b.failed && b.len == 5000 && strcmp(b.data, expected) == 0);
    CHECK(b.cap > b.len);
    textbuf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0 && !b.failed);

    /* printf larger than the free space must grow and still write every byte. */
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    textbuf_puts(&b, "<");
    textbuf_printf(&b, "%s|%d|%llu", big, -7, 18446744073709551615ull);
    textbuf_puts(&b, ">");
    CHECK(b.len == 1 + 599 + 1 + 2 + 1 + 20 + 1);
    CHECK(strncmp(b.data + 600, "|-7|18446744073709551615>", 25) == 0);
    textbuf_free(&b);

    /* A failed buffer ignores later calls (one check at the end is enough). */
    b.failed = true;
    textbuf_puts(&b, "ignored");
    textbuf_printf(&b, "%d", 1);
    CHECK(b.data == NULL && b.len == 0);
    textbuf_free(&b);
}

static void check_json_string(void) {
    textbuf b = {0};
    textbuf_json_string(&b, "a\"b\\c\b\f\n\r\t\x01\x1f\x7f \xc3\xa9/");
    CHECK_MSG(strcmp(b.data, "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f\x7f \xc3\xa9/\"") == 0,
              "%s", b.data);
    textbuf_free(&b);
    textbuf_json_string(&b, "");
    CHECK(strcmp(b.data, "\"\"") == 0);
    textbuf_free(&b);
}

static void write_text(const char *path, const char *text) {
    ct_error err = {{0}};
    CHECK_MSG(write_file_atomic(path, text, strlen(text), &err) == 0, "%s", err.msg);
}

static void check_jsonfile(void) {
    char dir[] = "/tmp/ctune-test-textbuf-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/a.json", dir);
    ct_error err = {{0}};
    cJSON *root = NULL;

    write_text(path, "{\"k\": [1, 2]}");
    CHECK_MSG(jsonfile_read(path, &root, &err) == 0, "%s", err.msg);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "k")) == 2);
    cJSON_Delete(root);

    /* The 'x' is byte 13 of the file (from 0), line 2, column 5 (from 1); cJSON stops at
     * the offending byte or just past it, and line and column must follow the byte. */
    write_text(path, "{\"k\": 1,\n    x}");
    CHECK(jsonfile_read(path, &root, &err) == -1 && root == NULL);
    CHECK_CONTAINS(err.msg, "a.json: byte ");
    CHECK_CONTAINS(err.msg, "invalid JSON");
    const char *at = strstr(err.msg, "a.json: byte ");
    unsigned long byte = 0, line = 0, column = 0;
    CHECK(at && sscanf(at, "a.json: byte %lu (line %lu, column %lu)", &byte, &line, &column) == 3);
    CHECK_MSG((byte == 13 || byte == 14) && line == 2 && column == byte - 8, "%s", err.msg);

    snprintf(path, sizeof path, "%s/missing.json", dir);
    CHECK(jsonfile_read(path, &root, &err) == -1 && root == NULL);
    CHECK_CONTAINS(err.msg, "missing.json: cannot open");
    snprintf(path, sizeof path, "%s/a.json", dir);
    unlink(path);
    rmdir(dir);
}

/* The largest unit that keeps the value >= 1, two decimals; whole bytes below a KiB. */
static void check_units(void) {
    static const struct {
        unsigned long long bytes;
        const char *text;
    } cases[] = {{0, "0 B"},
                 {1023, "1023 B"},
                 {1024, "1.00 KiB"},
                 {1536, "1.50 KiB"},
                 {28444672, "27.13 MiB"},
                 {3ull << 29, "1.50 GiB"},
                 {5ull << 40, "5.00 TiB"},
                 {3ull << 50, "3072.00 TiB"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[32];
        units_format_bytes(cases[i].bytes, text, sizeof text);
        CHECK_MSG(!strcmp(text, cases[i].text), "%llu bytes: '%s', expected '%s'", cases[i].bytes, text, cases[i].text);
    }
}

/* Durations: whole seconds (rounded), minutes, hours; tenths below a minute when asked. */
static void check_durations(void) {
    static const struct {
        double seconds;
        bool tenths;
        const char *text;
    } cases[] = {{0.0, false, "0s"},        {0.6, true, "0.6 s"},       {0.6, false, "1s"},
                 {59.4, false, "59s"},      {59.6, false, "1m00s"},     {59.96, true, "1m00s"},
                 {73.0, true, "1m13s"},     {3599.4, false, "59m59s"},  {7500.0, false, "2h05m"},
                 {-1.0, false, "-"},        {NAN, true, "-"},           {INFINITY, false, "-"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[32];
        units_format_duration(cases[i].seconds, cases[i].tenths, text, sizeof text);
        CHECK_MSG(!strcmp(text, cases[i].text), "%g s (tenths %d): '%s', expected '%s'", cases[i].seconds,
                  cases[i].tenths, text, cases[i].text);
    }
}

int main(void) {
    check_units();
    check_durations();
    check_growth();
    check_json_string();
    check_jsonfile();
    return check_summary("test_textbuf");
}
