/* data: the ctune HDF5 token dataset (docs/data.md): the streaming writer (temporary file,
 * renamed on success) and the validating reader. The sampler and batches are in
 * data_batch.c, the human summary in data_summary.c. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/data.h"

#define FORMAT_NAME "ctune-tokens"
#define FORMAT_VERSION 1
#define CHUNK_TOKENS ((size_t)1 << 16) /* 256 KiB of ids per chunk: fast to inflate */

/* HDF5 prints its error stack to stderr by default; ctune reports errors itself. */
static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* ================================================================= writer */

struct dataset_writer {
    char path[1024], tmp[1040];
    dataset_tokenizer_info info;
    hid_t file, tokens, mask;
    int32_t *tok_buf;        /* tokens not yet written, up to CHUNK_TOKENS */
    uint8_t *mask_buf;
    size_t buffered;
    int64_t written;         /* tokens already in the file */
    int64_t *offsets;        /* document starts, plus the end once finished */
    size_t n_offsets, offsets_cap;
};

static hid_t create_extendible(hid_t file, const char *name, hid_t type, ct_error *err,
                               const char *path) {
    hsize_t dims = 0, maxdims = H5S_UNLIMITED, chunk = CHUNK_TOKENS;
    hid_t space = H5Screate_simple(1, &dims, &maxdims);
    hid_t plist = H5Pcreate(H5P_DATASET_CREATE);
    hid_t ds = -1;
    /* No modification times in object headers: the same input gives the same bytes. */
    if (space >= 0 && plist >= 0 && H5Pset_chunk(plist, 1, &chunk) >= 0 &&
        H5Pset_shuffle(plist) >= 0 && H5Pset_deflate(plist, 4) >= 0 &&
        H5Pset_obj_track_times(plist, 0) >= 0)
        ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, plist, H5P_DEFAULT);
    if (plist >= 0) H5Pclose(plist);
    if (space >= 0) H5Sclose(space);
    if (ds < 0) ct_fail(err, "%s: cannot create dataset %s", path, name);
    return ds;
}

static int push_offset(dataset_writer *w, int64_t value, ct_error *err) {
    if (w->n_offsets == w->offsets_cap) {
        size_t cap = w->offsets_cap ? w->offsets_cap * 2 : 1024;
        int64_t *grown = realloc(w->offsets, cap * sizeof *grown);
        if (!grown) return ct_fail(err, "%s: out of memory for document offsets", w->path);
        w->offsets = grown;
        w->offsets_cap = cap;
    }
    w->offsets[w->n_offsets++] = value;
    return 0;
}

int dataset_writer_open(dataset_writer **out, const char *path, const dataset_tokenizer_info *info,
                        ct_error *err) {
    *out = NULL;
    quiet_hdf5();
    if (info->vocab_size <= 0)
        return ct_fail(err, "%s: tokenizer vocab_size must be positive, got %d", path, info->vocab_size);
    const int ids[3] = {info->bos_id, info->eos_id, info->pad_id};
    const char *names[3] = {"bos_id", "eos_id", "pad_id"};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= info->vocab_size)
            return ct_fail(err, "%s: %s %d is outside [-1, %d)", path, names[i], ids[i], info->vocab_size);
    if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0)
        return ct_fail(err, "%s: this HDF5 library has no deflate filter", path);
    dataset_writer *w = calloc(1, sizeof *w);
    if (!w) return ct_fail(err, "out of memory");
    w->file = w->tokens = w->mask = -1;
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    w->info = *info;
    w->tok_buf = malloc(CHUNK_TOKENS * sizeof *w->tok_buf);
    w->mask_buf = malloc(CHUNK_TOKENS);
    if (!w->tok_buf || !w->mask_buf || push_offset(w, 0, err)) {
        dataset_writer_abort(w);
        return ct_fail(err, "%s: out of memory", path);
    }
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    if (fcpl >= 0) H5Pset_obj_track_times(fcpl, 0);
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl >= 0 ? fcpl : H5P_DEFAULT, H5P_DEFAULT);
    if (fcpl >= 0) H5Pclose(fcpl);
    if (w->file < 0) {
        int e = errno;
        dataset_writer_abort(w);
        return ct_fail(err, "%s: cannot create file: %s", w->tmp, e ? strerror(e) : "HDF5 error");
    }
    w->tokens = create_extendible(w->file, "/tokens", H5T_STD_I32LE, err, w->tmp);
    if (w->tokens >= 0) w->mask = create_extendible(w->file, "/loss_mask", H5T_STD_U8LE, err, w->tmp);
    if (w->mask < 0) {
        dataset_writer_abort(w);
        return -1;
    }
    *out = w;
    return 0;
}

static int append_rows(dataset_writer *w, hid_t ds, hid_t mem_type, const void *data, size_t n,
                       ct_error *err) {
    hsize_t start = (hsize_t)w->written, count = n, size = start + count;
    if (H5Dset_extent(ds, &size) < 0) return ct_fail(err, "%s: cannot extend a dataset to %llu rows", w->tmp, (unsigned long long)size);
    hid_t file_space = H5Dget_space(ds);
    hid_t mem_space = H5Screate_simple(1, &count, NULL);
    int rc = -1;
    if (file_space >= 0 && mem_space >= 0 &&
        H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, NULL, &count, NULL) >= 0 &&
        H5Dwrite(ds, mem_type, mem_space, file_space, H5P_DEFAULT, data) >= 0)
        rc = 0;
    if (mem_space >= 0) H5Sclose(mem_space);
    if (file_space >= 0) H5Sclose(file_space);
    if (rc) ct_fail(err, "%s: write failed (disk full?)", w->tmp);
    return rc;
}

static int flush(dataset_writer *w, ct_error *err) {
    if (w->buffered == 0) return 0;
    if (append_rows(w, w->tokens, H5T_NATIVE_INT32, w->tok_buf, w->buffered, err) ||
        append_rows(w, w->mask, H5T_NATIVE_UINT8, w->mask_buf, w->buffered, err))
        return -1;
    w->written += (int64_t)w->buffered;
    w->buffered = 0;
    return 0;
}

int dataset_writer_add(dataset_writer *w, const int32_t *ids, const uint8_t *loss_mask,
                       size_t n_tokens, ct_error *err) {
    size_t doc = w->n_offsets - 1;
    for (size_t i = 0; i < n_tokens; i++) {
        if (ids[i] < 0 || ids[i] >= w->info.vocab_size)
            return ct_fail(err, "document %zu: token %zu: id %d is outside the vocabulary [0, %d)",
                           doc, i, ids[i], w->info.vocab_size);
        if (loss_mask[i] > 1)
            return ct_fail(err, "document %zu: token %zu: loss mask %u is not 0 or 1", doc, i, loss_mask[i]);
    }
    for (size_t done = 0; done < n_tokens;) {
        size_t take = CHUNK_TOKENS - w->buffered;
        if (take > n_tokens - done) take = n_tokens - done;
        memcpy(w->tok_buf + w->buffered, ids + done, take * sizeof *ids);
        memcpy(w->mask_buf + w->buffered, loss_mask + done, take);
        w->buffered += take;
        done += take;
        if (w->buffered == CHUNK_TOKENS && flush(w, err)) return -1;
    }
    return push_offset(w, w->offsets[w->n_offsets - 1] + (int64_t)n_tokens, err);
}

static int write_int_attr(hid_t obj, const char *name, hid_t file_type, int64_t value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space >= 0 ? H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    int rc = attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT64, &value) >= 0 ? 0 : -1;
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return rc;
}

static int write_string_attr(hid_t obj, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    size_t len = strlen(value);
    if (type < 0 || H5Tset_size(type, len ? len : 1) < 0 || H5Tset_strpad(type, H5T_STR_NULLPAD) < 0 ||
        H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        if (type >= 0) H5Tclose(type);
        return -1;
    }
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space >= 0 ? H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    char pad[1] = {0};
    int rc = attr >= 0 && H5Awrite(attr, type, len ? value : pad) >= 0 ? 0 : -1;
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    H5Tclose(type);
    return rc;
}

static int write_offsets(dataset_writer *w, ct_error *err) {
    hsize_t dims = w->n_offsets, chunk = dims < CHUNK_TOKENS ? dims : CHUNK_TOKENS;
    hid_t space = H5Screate_simple(1, &dims, NULL);
    hid_t plist = H5Pcreate(H5P_DATASET_CREATE);
    hid_t ds = -1;
    int rc = -1;
    if (space >= 0 && plist >= 0 && H5Pset_chunk(plist, 1, &chunk) >= 0 &&
        H5Pset_shuffle(plist) >= 0 && H5Pset_deflate(plist, 4) >= 0 &&
        H5Pset_obj_track_times(plist, 0) >= 0)
        ds = H5Dcreate2(w->file, "/doc_offsets", H5T_STD_I64LE, space, H5P_DEFAULT, plist, H5P_DEFAULT);
    if (ds >= 0 && H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->offsets) >= 0)
        rc = 0;
    if (ds >= 0) H5Dclose(ds);
    if (plist >= 0) H5Pclose(plist);
    if (space >= 0) H5Sclose(space);
    if (rc) ct_fail(err, "%s: cannot write /doc_offsets", w->tmp);
    return rc;
}

static int write_attributes(dataset_writer *w, ct_error *err) {
    hid_t root = H5Gopen2(w->file, "/", H5P_DEFAULT);
    const dataset_tokenizer_info *t = &w->info;
    int64_t n_docs = (int64_t)w->n_offsets - 1;
    int rc = root < 0;
    rc = rc || write_string_attr(root, "format", FORMAT_NAME);
    rc = rc || write_int_attr(root, "format_version", H5T_STD_I32LE, FORMAT_VERSION);
    rc = rc || write_string_attr(root, "tokenizer_fingerprint", t->fingerprint);
    rc = rc || write_string_attr(root, "tokenizer_name", t->name);
    rc = rc || write_int_attr(root, "vocab_size", H5T_STD_I32LE, t->vocab_size);
    rc = rc || write_int_attr(root, "bos_id", H5T_STD_I32LE, t->bos_id);
    rc = rc || write_int_attr(root, "eos_id", H5T_STD_I32LE, t->eos_id);
    rc = rc || write_int_attr(root, "pad_id", H5T_STD_I32LE, t->pad_id);
    rc = rc || write_int_attr(root, "n_docs", H5T_STD_I64LE, n_docs);
    rc = rc || write_int_attr(root, "n_tokens", H5T_STD_I64LE, w->offsets[w->n_offsets - 1]);
    if (root >= 0) H5Gclose(root);
    return rc ? ct_fail(err, "%s: cannot write the root attributes", w->tmp) : 0;
}

static void close_handles(dataset_writer *w) {
    if (w->mask >= 0) H5Dclose(w->mask);
    if (w->tokens >= 0) H5Dclose(w->tokens);
    if (w->file >= 0) H5Fclose(w->file);
    w->mask = w->tokens = w->file = -1;
}

static void free_writer(dataset_writer *w) {
    free(w->tok_buf);
    free(w->mask_buf);
    free(w->offsets);
    free(w);
}

int dataset_writer_finish(dataset_writer *w, ct_error *err) {
    if (w->n_offsets < 2) {
        ct_fail(err, "%s: no documents were written", w->path);
        dataset_writer_abort(w);
        return -1;
    }
    if (flush(w, err) || write_offsets(w, err) || write_attributes(w, err)) {
        dataset_writer_abort(w);
        return -1;
    }
    herr_t closed = H5Fflush(w->file, H5F_SCOPE_GLOBAL);
    close_handles(w);
    /* fsync before rename: after a crash the final name holds a complete file or nothing. */
    int fd = open(w->tmp, O_RDONLY);
    bool synced = closed >= 0 && fd >= 0 && fsync(fd) == 0;
    if (fd >= 0) close(fd);
    if (!synced || rename(w->tmp, w->path) != 0) {
        int e = errno;
        dataset_writer_abort(w);
        return ct_fail(err, "%s: cannot finish the file: %s", w->path, strerror(e));
    }
    free_writer(w);
    return 0;
}

void dataset_writer_abort(dataset_writer *w) {
    if (!w) return;
    close_handles(w);
    remove(w->tmp);
    free_writer(w);
}

/* ================================================================= reader */

static int fail_at(ct_error *err, const char *path, const char *object, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(ct_error *err, const char *path, const char *object, const char *fmt, ...) {
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ct_fail(err, "%s: %s: %s", path, object, what);
}

/* Reads a scalar integer attribute of the root group (any integer width). */
static int read_int_attr(hid_t file, const char *path, const char *name, int64_t *out, ct_error *err) {
    char object[96];
    snprintf(object, sizeof object, "attribute '%s'", name);
    if (H5Aexists(file, name) <= 0) return fail_at(err, path, object, "missing");
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    int rc = 0;
    if (type < 0 || H5Tget_class(type) != H5T_INTEGER)
        rc = fail_at(err, path, object, "expected an integer");
    else if (space < 0 || H5Sget_simple_extent_npoints(space) != 1)
        rc = fail_at(err, path, object, "expected a single value");
    else if (H5Aread(attr, H5T_NATIVE_INT64, out) < 0)
        rc = fail_at(err, path, object, "cannot be read");
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

/* Reads a string attribute (fixed or variable length) into buf. */
static int read_string_attr(hid_t file, const char *path, const char *name, char *buf, size_t size,
                            ct_error *err) {
    char object[96];
    snprintf(object, sizeof object, "attribute '%s'", name);
    if (H5Aexists(file, name) <= 0) return fail_at(err, path, object, "missing");
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    int rc = 0;
    buf[0] = '\0';
    if (type < 0 || H5Tget_class(type) != H5T_STRING) {
        rc = fail_at(err, path, object, "expected a string");
    } else if (H5Tis_variable_str(type) > 0) {
        char *value = NULL;
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type)); /* HDF5 converts between no two character sets */
        if (H5Aread(attr, mem, &value) < 0 || !value) rc = fail_at(err, path, object, "cannot be read");
        else snprintf(buf, size, "%s", value);
        if (value) H5free_memory(value);
        H5Tclose(mem);
    } else {
        /* One byte more than stored: the memory type is NUL-terminated, the file's may not be. */
        size_t n = H5Tget_size(type) + 1;
        char *value = calloc(n + 1, 1);
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, n);
        H5Tset_cset(mem, H5Tget_cset(type));
        if (!value || H5Aread(attr, mem, value) < 0) rc = fail_at(err, path, object, "cannot be read");
        else snprintf(buf, size, "%s", value);
        free(value);
        H5Tclose(mem);
    }
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

/* Reads a whole 1-D integer dataset after checking its element type and length. */
static int read_dataset(hid_t file, const char *path, const char *name, size_t elem_size,
                        H5T_sign_t sign, hid_t mem_type, int64_t expect_len, void **out, ct_error *err) {
    *out = NULL;
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return fail_at(err, path, name, "missing dataset");
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) return fail_at(err, path, name, "not a dataset");
    hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
    int rc = 0;
    hsize_t dims = 0;
    if (type < 0 || H5Tget_class(type) != H5T_INTEGER || H5Tget_size(type) != elem_size ||
        H5Tget_sign(type) != sign) {
        rc = fail_at(err, path, name, "expected %zu-bit %s integers", elem_size * 8,
                     sign == H5T_SGN_NONE ? "unsigned" : "signed");
    } else if (space < 0 || H5Sget_simple_extent_ndims(space) != 1) {
        rc = fail_at(err, path, name, "expected a 1-dimensional dataset");
    } else if (H5Sget_simple_extent_dims(space, &dims, NULL) < 0 || (int64_t)dims != expect_len) {
        rc = fail_at(err, path, name, "has %llu elements, expected %lld", (unsigned long long)dims,
                     (long long)expect_len);
    } else {
        *out = malloc(dims ? dims * elem_size : 1);
        if (!*out) rc = fail_at(err, path, name, "out of memory for %llu elements", (unsigned long long)dims);
        else if (dims && H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
            rc = fail_at(err, path, name, "cannot be read (corrupt or truncated file?)");
    }
    if (rc) {
        free(*out);
        *out = NULL;
    }
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Dclose(ds);
    return rc;
}

static int read_header(dataset *ds, hid_t file, ct_error *err) {
    const char *path = ds->path;
    char format[64];
    int64_t version, v;
    if (read_string_attr(file, path, "format", format, sizeof format, err)) return -1;
    if (strcmp(format, FORMAT_NAME) != 0)
        return fail_at(err, path, "attribute 'format'", "is '%s', expected '%s'", format, FORMAT_NAME);
    if (read_int_attr(file, path, "format_version", &version, err)) return -1;
    if (version != FORMAT_VERSION)
        return fail_at(err, path, "attribute 'format_version'",
                       "unknown version %lld (this build reads version %d)", (long long)version, FORMAT_VERSION);
    dataset_tokenizer_info *t = &ds->tokenizer;
    if (read_string_attr(file, path, "tokenizer_fingerprint", t->fingerprint, sizeof t->fingerprint, err) ||
        read_string_attr(file, path, "tokenizer_name", t->name, sizeof t->name, err))
        return -1;
    if (read_int_attr(file, path, "vocab_size", &v, err)) return -1;
    if (v <= 0 || v > INT32_MAX) return fail_at(err, path, "attribute 'vocab_size'", "%lld is not a vocabulary size", (long long)v);
    t->vocab_size = (int)v;
    const char *names[3] = {"bos_id", "eos_id", "pad_id"};
    int *ids[3] = {&t->bos_id, &t->eos_id, &t->pad_id};
    for (int i = 0; i < 3; i++) {
        char object[64];
        snprintf(object, sizeof object, "attribute '%s'", names[i]);
        if (read_int_attr(file, path, names[i], &v, err)) return -1;
        if (v < -1 || v >= t->vocab_size)
            return fail_at(err, path, object, "%lld is outside [-1, %d)", (long long)v, t->vocab_size);
        *ids[i] = (int)v;
    }
    if (read_int_attr(file, path, "n_docs", &ds->n_docs, err) ||
        read_int_attr(file, path, "n_tokens", &ds->n_tokens, err))
        return -1;
    if (ds->n_docs <= 0) return fail_at(err, path, "attribute 'n_docs'", "%lld: a dataset needs at least one document", (long long)ds->n_docs);
    if (ds->n_tokens < 0) return fail_at(err, path, "attribute 'n_tokens'", "%lld is negative", (long long)ds->n_tokens);
    return 0;
}

static int check_contents(const dataset *ds, ct_error *err) {
    const char *path = ds->path;
    const int64_t *off = ds->doc_offsets;
    if (off[0] != 0) return fail_at(err, path, "/doc_offsets", "starts at %lld, expected 0", (long long)off[0]);
    for (int64_t d = 0; d < ds->n_docs; d++)
        if (off[d + 1] < off[d])
            return fail_at(err, path, "/doc_offsets", "not monotone: element %lld is %lld, after %lld",
                           (long long)(d + 1), (long long)off[d + 1], (long long)off[d]);
    if (off[ds->n_docs] != ds->n_tokens)
        return fail_at(err, path, "/doc_offsets", "ends at %lld, expected n_tokens = %lld",
                       (long long)off[ds->n_docs], (long long)ds->n_tokens);
    for (int64_t i = 0; i < ds->n_tokens; i++) {
        if (ds->tokens[i] < 0 || ds->tokens[i] >= ds->tokenizer.vocab_size)
            return fail_at(err, path, "/tokens", "element %lld is %d, outside the vocabulary [0, %d)",
                           (long long)i, ds->tokens[i], ds->tokenizer.vocab_size);
        if (ds->loss_mask[i] > 1)
            return fail_at(err, path, "/loss_mask", "element %lld is %u, expected 0 or 1", (long long)i,
                           ds->loss_mask[i]);
    }
    return 0;
}

int dataset_open(dataset *ds, const char *path, ct_error *err) {
    memset(ds, 0, sizeof *ds);
    snprintf(ds->path, sizeof ds->path, "%s", path);
    quiet_hdf5();
    struct stat st;
    if (stat(path, &st) != 0) return ct_fail(err, "%s: cannot open: %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0)
        return ct_fail(err, "%s: not an HDF5 file (expected a token dataset written by `ctune prep`)", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return ct_fail(err, "%s: HDF5 cannot open the file (corrupt or truncated?)", path);
    int rc = read_header(ds, file, err);
    void *p = NULL;
    if (!rc) rc = read_dataset(file, path, "/doc_offsets", 8, H5T_SGN_2, H5T_NATIVE_INT64, ds->n_docs + 1, &p, err);
    ds->doc_offsets = p;
    if (!rc) rc = read_dataset(file, path, "/tokens", 4, H5T_SGN_2, H5T_NATIVE_INT32, ds->n_tokens, &p, err);
    if (!rc) ds->tokens = p;
    if (!rc) rc = read_dataset(file, path, "/loss_mask", 1, H5T_SGN_NONE, H5T_NATIVE_UINT8, ds->n_tokens, &p, err);
    if (!rc) ds->loss_mask = p;
    H5Fclose(file);
    if (!rc) rc = check_contents(ds, err);
    if (rc) dataset_close(ds);
    return rc;
}

void dataset_close(dataset *ds) {
    free(ds->doc_offsets);
    free(ds->tokens);
    free(ds->loss_mask);
    ds->doc_offsets = NULL;
    ds->tokens = NULL;
    ds->loss_mask = NULL;
}
