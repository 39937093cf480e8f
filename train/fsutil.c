#include "train/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

int read_file(const char *path, char **data, size_t *size, ct_error *err) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ct_fail(err, "%s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return ct_fail(err, "%s: cannot seek", path);
    }
    long length = ftell(f);
    rewind(f);
    if (length < 0) {
        fclose(f);
        return ct_fail(err, "%s: cannot tell size", path);
    }
    char *buf = malloc((size_t)length + 1);
    if (!buf) {
        fclose(f);
        return ct_fail(err, "%s: out of memory for %ld bytes", path, length);
    }
    size_t got = fread(buf, 1, (size_t)length, f);
    fclose(f);
    if (got != (size_t)length) {
        free(buf);
        return ct_fail(err, "%s: short read (%zu of %ld bytes)", path, got, length);
    }
    buf[length] = '\0';
    *data = buf;
    if (size) *size = (size_t)length;
    return 0;
}

int fsync_dir(const char *dir, ct_error *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ct_fail(err, "cannot open directory %s: %s", dir, strerror(errno));
    fsync(fd); /* some filesystems refuse fsync on directories; the rename already happened */
    close(fd);
    return 0;
}

static void parent_dir(const char *path, char *out, size_t size) {
    snprintf(out, size, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, size, ".");
    else if (slash == out) out[1] = '\0';
    else *slash = '\0';
}

int write_file_atomic(const char *path, const void *data, size_t size, ct_error *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return ct_fail(err, "cannot create %s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = size;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            int saved = errno;
            close(fd);
            unlink(tmp);
            return ct_fail(err, "cannot write %s: %s", tmp, strerror(saved));
        }
        p += n;
        left -= (size_t)n;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return ct_fail(err, "cannot sync %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int saved = errno;
        unlink(tmp);
        return ct_fail(err, "cannot rename %s to %s: %s", tmp, path, strerror(saved));
    }
    char dir[4096];
    parent_dir(path, dir, sizeof dir);
    return fsync_dir(dir, err);
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
