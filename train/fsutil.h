/* fsutil: the few filesystem operations ctune needs beyond stdio — existence checks,
 * mkdir -p, recursive removal, whole-file reads, and durable writes (fsync + rename). */
#ifndef CTUNE_FSUTIL_H
#define CTUNE_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "train/error.h"

bool path_exists(const char *path);
bool path_is_dir(const char *path);
int make_dirs(const char *path, ct_error *err);   /* mkdir -p */
int remove_tree(const char *path, ct_error *err); /* rm -rf; a missing path is fine */
/* Reads a whole file; *data is malloc'd and NUL-terminated (size excludes the NUL). */
int read_file(const char *path, char **data, size_t *size, ct_error *err);
/* Writes data to path + ".tmp", fsyncs, renames over path, fsyncs the directory. */
int write_file_atomic(const char *path, const void *data, size_t size, ct_error *err);
int copy_file(const char *from, const char *to, ct_error *err);
int fsync_dir(const char *dir, ct_error *err);
/* Stem of a path: "configs/tiny/lora.yaml" -> "lora". */
void path_stem(const char *path, char *out, size_t size);
/* Last component of a path without trailing slashes: "models/tiny/" -> "tiny". */
void path_basename(const char *path, char *out, size_t size);

#endif
