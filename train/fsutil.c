#include "train/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int make_dirs(const char *path, ct_error *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ct_fail(err, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ct_fail(err, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ct_fail(err, "cannot create directory %s: %s", buf, strerror(errno));
    if (!path_is_dir(buf)) return ct_fail(err, "%s exists and is not a directory", buf);
    return 0;
}

int remove_tree(const char *path, ct_error *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : ct_fail(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        if (!dir) return ct_fail(err, "cannot open directory %s: %s", path, strerror(errno));
        struct dirent *entry;
        int status = 0;
        while (status == 0 && (entry = readdir(dir)) != NULL) {
            if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
            char child[4096];
            snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
            status = remove_tree(child, err);
        }
        closedir(dir);
        if (status) return status;
        if (rmdir(path) != 0) return ct_fail(err, "cannot remove %s: %s", path, strerror(errno));
        return 0;
    }
    if (unlink(path) != 0) return ct_fail(err, "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

/* Reads until EOF rather than trusting the size, so pipes, /proc files and a file that grows
 * meanwhile are read whole. A regular file's size sizes the buffer with one spare byte beyond
 * the NUL, so the read that finds EOF needs no second buffer. */
int read_file(const char *path, char **data, size_t *size, ct_error *err) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ct_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    bool known = fstat(fileno(f), &st) == 0;
    if (known && S_ISDIR(st.st_mode)) {
        fclose(f);
        return ct_fail(err, "%s: is a directory, expected a file", path);
    }
    size_t cap = 65536, len = 0;
    if (known && S_ISREG(st.st_mode) && st.st_size > 0 && (uintmax_t)st.st_size < SIZE_MAX / 2)
        cap = (size_t)st.st_size + 2;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
        if (len + 1 == cap) { /* full: double */
            char *grown = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!grown) free(buf);
            buf = grown;
            cap *= 2;
        }
    }
    if (!buf) {
        fclose(f);
        return ct_fail(err, "%s: out of memory reading the file (%zu bytes so far)", path, len);
    }
    bool failed = ferror(f);
    int saved = errno;
    fclose(f);
    if (failed) {
        free(buf);
        return ct_fail(err, "%s: read error: %s", path, strerror(saved));
    }
    buf[len] = '\0';
    *data = buf;
    if (size) *size = len;
    return 0;
}

int fsync_dir(const char *dir, ct_error *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ct_fail(err, "cannot open directory %s: %s", dir, strerror(errno));
    fsync(fd); /* some filesystems refuse fsync on directories; the rename already happened */
    close(fd);
    return 0;
}

int path_join(char *out, size_t size, const char *dir, const char *name, ct_error *err) {
    int n = snprintf(out, size, "%s/%s", dir, name);
    return n >= 0 && (size_t)n < size ? 0 : ct_fail(err, "%s: path too long", dir);
}

void path_parent(const char *path, char *out, size_t size) {
    snprintf(out, size, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, size, ".");
    else if (slash == out) out[1] = '\0';
    else *slash = '\0';
}

int atomic_file_open(atomic_file *f, const char *path, ct_error *err) {
    f->fd = -1;
    if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path ||
        snprintf(f->tmp, sizeof f->tmp, "%s.tmp", path) >= (int)sizeof f->tmp)
        return ct_fail(err, "%s: path too long", path);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f->fd < 0) return ct_fail(err, "cannot create %s: %s", f->tmp, strerror(errno));
    return 0;
}

void atomic_file_abort(atomic_file *f) {
    if (f->fd < 0) return;
    close(f->fd);
    unlink(f->tmp);
    f->fd = -1;
}

int atomic_file_write(atomic_file *f, const void *data, size_t size, ct_error *err) {
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(f->fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : EIO;
            atomic_file_abort(f);
            return ct_fail(err, "cannot write %s: %s", f->tmp, strerror(saved));
        }
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

int atomic_file_commit(atomic_file *f, ct_error *err) {
    int synced = fsync(f->fd), saved = errno;
    int closed = close(f->fd);
    f->fd = -1;
    if (synced != 0 || closed != 0) {
        if (synced == 0) saved = errno;
        unlink(f->tmp);
        return ct_fail(err, "cannot sync %s: %s", f->tmp, strerror(saved));
    }
    if (rename(f->tmp, f->path) != 0) {
        int saved = errno;
        unlink(f->tmp);
        return ct_fail(err, "cannot rename %s to %s: %s", f->tmp, f->path, strerror(saved));
    }
    char dir[4096];
    path_parent(f->path, dir, sizeof dir);
    return fsync_dir(dir, err);
}

int write_file_atomic(const char *path, const void *data, size_t size, ct_error *err) {
    atomic_file f;
    if (atomic_file_open(&f, path, err) || atomic_file_write(&f, data, size, err)) return -1;
    return atomic_file_commit(&f, err);
}

int copy_file(const char *from, const char *to, ct_error *err) {
    char *data;
    size_t size;
    if (read_file(from, &data, &size, err)) return -1;
    int status = write_file_atomic(to, data, size, err);
    free(data);
    return status;
}

void path_basename(const char *path, char *out, size_t size) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = '\0';
    const char *slash = strrchr(buf, '/');
    snprintf(out, size, "%s", slash ? slash + 1 : buf);
}

void path_stem(const char *path, char *out, size_t size) {
    path_basename(path, out, size);
    char *dot = strrchr(out, '.');
    if (dot && dot != out) *dot = '\0';
}
