/* ctune inspect PATH: what a safetensors file, a model or adapter folder, or an HDF5 dataset
 * holds. Read-only; prints to stdout, errors to stderr as "ctune inspect: <message>". */
#include <stdio.h>
#include <string.h>

#include "train/cli.h"
#include "train/data.h"
#include "train/fsutil.h"
#include "train/safetensors.h"
#include "train/units.h"

static void inspect_usage(FILE *out) {
    fprintf(out,
            "usage: ctune inspect PATH\n"
            "\n"
            "Shows what PATH holds:\n"
            "  FILE.safetensors  metadata, every tensor (name, dtype, shape, bytes) and totals\n"
            "  FOLDER            its model.safetensors, or every shard listed in\n"
            "                    model.safetensors.index.json, or adapter_model.safetensors\n"
            "  FILE.h5 / .hdf5   a tokenized dataset: documents, tokens, lengths, tokenizer\n"
            "Every file is fully validated first; a malformed one is reported with the byte\n"
            "offset of the problem.\n");
}

typedef struct totals {
    long long tensors;
    unsigned long long parameters, bytes;
} totals;

static void print_totals(const char *label, const totals *sum) {
    char human[32];
    units_format_bytes(sum->bytes, human, sizeof human);
    printf("%s: %lld tensor%s, %llu parameters, %llu bytes (%s)\n", label, sum->tensors,
           sum->tensors == 1 ? "" : "s", sum->parameters, sum->bytes, human);
}

static void print_file(const st_file *file, totals *grand) {
    printf("%s (%zu bytes)\n", file->path, file->map_size);
    if (file->n_metadata) {
        printf("metadata:\n");
        for (int i = 0; i < file->n_metadata; i++)
            printf("  %s: %s\n", file->metadata_keys[i], file->metadata_values[i]);
    } else {
        printf("metadata: (none)\n");
    }
    int name_width = 6, shape_width = 5;
    char shape[256];
    for (int i = 0; i < file->n_tensors; i++) {
        int len = (int)strlen(file->tensors[i].name);
        if (len > name_width) name_width = len;
        st_shape_text(&file->tensors[i], shape, sizeof shape);
        if ((int)strlen(shape) > shape_width) shape_width = (int)strlen(shape);
    }
    printf("  %-*s  %-11s  %-*s  %12s\n", name_width, "tensor", "dtype", shape_width, "shape",
           "bytes");
    totals sum = {0, 0, 0};
    for (int i = 0; i < file->n_tensors; i++) {
        const st_tensor *t = &file->tensors[i];
        st_shape_text(t, shape, sizeof shape);
        printf("  %-*s  %-11s  %-*s  %12llu\n", name_width, t->name, st_dtype_name(t->dtype),
               shape_width, shape, (unsigned long long)t->nbytes);
        sum.tensors++;
        sum.parameters += t->numel;
        sum.bytes += t->nbytes;
    }
    print_totals("total", &sum);
    grand->tensors += sum.tensors;
    grand->parameters += sum.parameters;
    grand->bytes += sum.bytes;
}

static int inspect_safetensors(const char *path) {
    st_file file;
    ct_error err = {{0}};
    if (st_open(&file, path, &err) != 0) {
        fprintf(stderr, "ctune inspect: %s\n", err.msg);
        return 1;
    }
    totals grand = {0, 0, 0};
    print_file(&file, &grand);
    st_close(&file);
    return 0;
}

static int inspect_folder(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int has_model = path_exists(path);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    has_model = has_model || path_exists(path);
    if (!has_model) {
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        if (path_exists(path)) return inspect_safetensors(path);
        fprintf(stderr, "ctune inspect: %s: no model.safetensors, model.safetensors.index.json "
                        "or adapter_model.safetensors\n", dir);
        return 1;
    }
    st_model_files files;
    ct_error err = {{0}};
    if (st_model_open(&files, dir, &err) != 0) {
        fprintf(stderr, "ctune inspect: %s\n", err.msg);
        return 1;
    }
    totals grand = {0, 0, 0};
    for (int i = 0; i < files.n_files; i++) {
        if (i) printf("\n");
        print_file(&files.files[i], &grand);
    }
    if (files.n_files > 1) {
        char label[64];
        snprintf(label, sizeof label, "\nmodel total (%d files)", files.n_files);
        print_totals(label, &grand);
    }
    st_model_close(&files);
    return 0;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int is_hdf5(const char *path) {
    if (has_suffix(path, ".h5") || has_suffix(path, ".hdf5")) return 1;
    static const unsigned char magic[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    return got == sizeof head && memcmp(head, magic, sizeof magic) == 0;
}

int cmd_inspect(int argc, char **argv) {
    const char *target = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            inspect_usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "ctune inspect: unknown option '%s'\n\n", argv[i]);
            inspect_usage(stderr);
            return 1;
        }
        if (target) {
            fprintf(stderr, "ctune inspect: expected one PATH, got '%s' and '%s'\n", target,
                    argv[i]);
            return 1;
        }
        target = argv[i];
    }
    if (!target) {
        fprintf(stderr, "ctune inspect: missing PATH\n\n");
        inspect_usage(stderr);
        return 1;
    }
    if (!path_exists(target)) {
        fprintf(stderr, "ctune inspect: %s: no such file or folder\n", target);
        return 1;
    }
    if (path_is_dir(target)) return inspect_folder(target);
    if (is_hdf5(target)) {
        ct_error err = {{0}};
        if (dataset_print_summary(target, stdout, &err) != 0) {
            fprintf(stderr, "ctune inspect: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    return inspect_safetensors(target);
}
