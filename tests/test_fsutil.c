/* fsutil: whole-file reads (regular files, pipes, folders), durable writes in one piece and in
 * pieces, and the path helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/fsutil.h"

static void check_read_file(const char *dir) {
    char path[512];
    ct_error err = {{0}};
    char *data = NULL;
    size_t size = 1;

    snprintf(path, sizeof path, "%s/empty", dir);
    CHECK(write_file_atomic(path, "", 0, &err) == 0);
    CHECK(read_file(path, &data, &size, &err) == 0 && data && size == 0 && data[0] == '\0');
    free(data);

    /* Larger than the first buffer a pipe gets, with NUL bytes inside. */
    size_t n = 200000;
    char *bytes = malloc(n);
    for (size_t i = 0; i < n; i++) bytes[i] = (char)(i * 7 % 251);
    snprintf(path, sizeof path, "%s/big", dir);
    CHECK(write_file_atomic(path, bytes, n, &err) == 0);
    CHECK(read_file(path, &data, &size, &err) == 0 && size == n && memcmp(data, bytes, n) == 0 &&
          data[n] == '\0');
    free(data);

    /* A FIFO has no size to trust: the reader must still get every byte. */
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    CHECK(mkfifo(fifo, 0600) == 0);
    pid_t child = fork();
    if (child == 0) {
        FILE *f = fopen(fifo, "wb");
        size_t wrote = f ? fwrite(bytes, 1, n, f) : 0;
        if (f) fclose(f);
        _exit(wrote == n ? 0 : 1);
    }
    CHECK(child > 0);
    if (child > 0) { /* without a writer, opening the FIFO would block */
        CHECK_MSG(read_file(fifo, &data, &size, &err) == 0, "%s", err.msg);
        CHECK(size == n && data && memcmp(data, bytes, n) == 0);
        free(data);
        int status = 1;
        CHECK(waitpid(child, &status, 0) == child && status == 0);
    }
    free(bytes);

    CHECK(read_file(dir, &data, &size, &err) == -1 && data == NULL);
    CHECK_CONTAINS(err.msg, "is a directory");
    snprintf(path, sizeof path, "%s/absent", dir);
    CHECK(read_file(path, &data, &size, &err) == -1 && data == NULL);
    CHECK_CONTAINS(err.msg, "absent: cannot open");
}

static void check_atomic_file(const char *dir) {
    char path[512], tmp[600];
    ct_error err = {{0}};
    snprintf(path, sizeof path, "%s/pieces", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(write_file_atomic(path, "old", 3, &err) == 0);

    /* Until commit the old content stays; the pieces land in order. */
    atomic_file f;
    CHECK(atomic_file_open(&f, path, &err) == 0);
    CHECK(atomic_file_write(&f, "ab", 2, &err) == 0 && atomic_file_write(&f, "", 0, &err) == 0 &&
          atomic_file_write(&f, "cde", 3, &err) == 0);
    char *data = NULL;
    size_t size = 0;
    CHECK(read_file(path, &data, &size, &err) == 0 && size == 3 && memcmp(data, "old", 3) == 0);
    free(data);
    CHECK(access(tmp, F_OK) == 0);
    CHECK(atomic_file_commit(&f, &err) == 0);
    CHECK(read_file(path, &data, &size, &err) == 0 && size == 5 && memcmp(data, "abcde", 5) == 0);
    free(data);
    CHECK(access(tmp, F_OK) != 0);

    /* Abort removes the temporary file and leaves the target alone; a second abort is a no-op. */
    CHECK(atomic_file_open(&f, path, &err) == 0 && atomic_file_write(&f, "xyz", 3, &err) == 0);
    atomic_file_abort(&f);
    atomic_file_abort(&f);
    CHECK(access(tmp, F_OK) != 0);
    CHECK(read_file(path, &data, &size, &err) == 0 && size == 5 && memcmp(data, "abcde", 5) == 0);
    free(data);

    snprintf(path, sizeof path, "%s/no/such/folder/file", dir);
    CHECK(atomic_file_open(&f, path, &err) == -1);
    CHECK_CONTAINS(err.msg, "cannot create");
    atomic_file_abort(&f);
}

static void check_paths(void) {
    char out[16];
    ct_error err = {{0}};
    CHECK(path_join(out, sizeof out, "a/b", "c.json", &err) == 0 && strcmp(out, "a/b/c.json") == 0);
    CHECK(path_join(out, sizeof out, "a/very/long", "name.json", &err) == -1);
    CHECK_CONTAINS(err.msg, "a/very/long: path too long");
    CHECK(path_join(out, sizeof out, "a/very/long", "name.json", NULL) == -1);
    path_parent("a/b/c", out, sizeof out);
    CHECK(strcmp(out, "a/b") == 0);
    path_parent("c", out, sizeof out);
    CHECK(strcmp(out, ".") == 0);
    path_parent("/c", out, sizeof out);
    CHECK(strcmp(out, "/") == 0);
}

int main(void) {
    char dir[] = "/tmp/ctune-test-fsutil-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    check_read_file(dir);
    check_atomic_file(dir);
    check_paths();
    ct_error err = {{0}};
    CHECK(remove_tree(dir, &err) == 0);
    return check_summary("test_fsutil");
}
