#include "train/jsonfile.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"

static int compare_keys(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that occurs twice among obj's members, or NULL. Sorting keeps a
 * tokenizer.json vocabulary of 150k entries at n log n. */
static const char *object_duplicate(const cJSON *obj, bool *oom) {
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next) n++;
    if (n < 2) return NULL;
    const char **keys = malloc((size_t)n * sizeof *keys);
    if (!keys) {
        *oom = true;
        return NULL;
    }
    int k = 0;
    for (const cJSON *c = obj->child; c; c = c->next) keys[k++] = c->string ? c->string : "";
    qsort(keys, (size_t)n, sizeof *keys, compare_keys);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) dup = keys[i];
    free(keys);
    return dup;
}

/* Appends ".key" / "[i]" to where (cut short rather than overflowing). */
static void where_append(char *where, size_t size, const cJSON *parent, const cJSON *child, int index) {
    size_t used = strlen(where);
    if (used >= size - 1) return;
    if (cJSON_IsArray(parent))
        snprintf(where + used, size - used, "[%d]", index);
    else
        snprintf(where + used, size - used, "%s%.64s", used ? "." : "", child->string ? child->string : "");
}

static int find_duplicate(const cJSON *item, char *where, size_t size, bool *oom) {
    if (cJSON_IsObject(item)) {
        const char *dup = object_duplicate(item, oom);
        if (*oom) return -1;
        if (dup) {
            size_t used = strlen(where);
            snprintf(where + used, size - used, "%s%.128s", used ? "." : "", dup);
            return -1;
        }
    }
    if (!cJSON_IsObject(item) && !cJSON_IsArray(item)) return 0;
    int index = 0;
    size_t used = strlen(where);
    for (const cJSON *c = item->child; c; c = c->next, index++) {
        if (!cJSON_IsObject(c) && !cJSON_IsArray(c)) continue;
        where_append(where, size, item, c, index);
        if (find_duplicate(c, where, size, oom)) return -1;
        where[used] = '\0';
    }
    return 0;
}

int jsonfile_duplicate_key(const cJSON *root, char *where, size_t size) {
    bool oom = false;
    where[0] = '\0';
    if (find_duplicate(root, where, size, &oom) == 0) return 0;
    if (oom) snprintf(where, size, "(out of memory while checking for duplicate keys)");
    return -1;
}

int jsonfile_read(const char *path, cJSON **root, ct_error *err) {
    *root = NULL;
    char *text;
    size_t size;
    if (read_file(path, &text, &size, err)) return -1;
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(text, size, &end, false);
    if (*root) {
        free(text);
        /* cJSON keeps both members of a duplicated key and finds the first, Python's json
         * keeps the last: transformers and ctune would read different values. */
        char where[512];
        if (jsonfile_duplicate_key(*root, where, sizeof where) == 0) return 0;
        cJSON_Delete(*root);
        *root = NULL;
        return ct_fail(err, "%s: duplicate key '%s' (JSON readers disagree on which value wins)",
                       path, where);
    }
    /* cJSON leaves end at the byte where parsing stopped; line and column help in an editor. */
    size_t offset = end && end >= text ? (size_t)(end - text) : 0, line = 1, column = 1;
    for (size_t i = 0; i < offset && i < size; i++, column++)
        if (text[i] == '\n') line++, column = 0;
    free(text);
    return ct_fail(err, "%s: byte %zu (line %zu, column %zu): invalid JSON", path, offset, line,
                   column);
}

int jsonfile_parse_line(char *line, size_t len, bool first_line, cJSON **root, ct_error *err) {
    *root = NULL;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    size_t start = 0;
    if (first_line && len >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) start = 3; /* UTF-8 BOM */
    size_t k = start;
    while (k < len && (line[k] == ' ' || line[k] == '\t')) k++;
    if (k == len) return 1;
    const char *end = NULL;
    cJSON *parsed = cJSON_ParseWithLengthOpts(line + start, len - start, &end, false);
    if (!parsed)
        return ct_fail(err, "column %zu: invalid JSON", (size_t)(end ? end - (line + start) : 0) + 1 + start);
    size_t rest = end ? (size_t)(end - line) : len;
    while (rest < len && (line[rest] == ' ' || line[rest] == '\t')) rest++;
    if (rest < len) {
        cJSON_Delete(parsed);
        return ct_fail(err, "column %zu: unexpected text after the JSON value (one object per line)", rest + 1);
    }
    char dup[256];
    if (jsonfile_duplicate_key(parsed, dup, sizeof dup)) {
        cJSON_Delete(parsed);
        return ct_fail(err, "duplicate key '%s' (JSON readers disagree on which value wins)", dup);
    }
    *root = parsed;
    return 0;
}
