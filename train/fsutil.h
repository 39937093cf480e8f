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
/* The same, for a file written in pieces: open, write any number of times, then commit
 * (fsync, rename, fsync the directory). A failed write or commit, or abort, removes the
 * temporary file; abort after a commit or a failure does nothing. */
typedef struct atomic_file {
    int fd; /* -1 when nothing is open */
    char path[4096], tmp[4096];
} atomic_file;
int atomic_file_open(atomic_file *f, const char *path, ct_error *err);
int atomic_file_write(atomic_file *f, const void *data, size_t size, ct_error *err);
int atomic_file_commit(atomic_file *f, ct_error *err);
void atomic_file_abort(atomic_file *f);
int copy_file(const char *from, const char *to, ct_error *err);
int fsync_dir(const char *dir, ct_error *err);
/* dir + "/" + name into out; -1 with "<dir>: path too long" when it does not fit. */
int path_join(char *out, size_t size, const char *dir, const char *name, ct_error *err);
/* Folder part of a path: "a/b/c" -> "a/b", "c" -> ".", "/c" -> "/". */
void path_parent(const char *path, char *out, size_t size);
/* Stem of a path: "configs/tiny/lora.yaml" -> "lora". */
void path_stem(const char *path, char *out, size_t size);
/* Last component of a path without trailing slashes: "models/tiny/" -> "tiny". */
void path_basename(const char *path, char *out, size_t size);

#endif
