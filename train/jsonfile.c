#include "train/jsonfile.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdlib.h>

#include "train/fsutil.h"

int jsonfile_read(const char *path, cJSON **root, ct_error *err) {
    *root = NULL;
    char *text;
    size_t size;
    if (read_file(path, &text, &size, err)) return -1;
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(text, size, &end, false);
    if (*root) {
        free(text);
        return 0;
    }
    /* cJSON leaves end at the byte where parsing stopped; line and column help in an editor. */
    size_t offset = end && end >= text ? (size_t)(end - text) : 0, line = 1, column = 1;
    for (size_t i = 0; i < offset && i < size; i++, column++)
        if (text[i] == '\n') line++, column = 0;
    free(text);
    return ct_fail(err, "%s: byte %zu (line %zu, column %zu): invalid JSON", path, offset, line,
                   column);
}
