/* safetensors: reading (mmap) and writing the Hugging Face safetensors format, and
 * opening a model folder's weights (model.safetensors or sharded model-*.safetensors with
 * model.safetensors.index.json).
 *
 * The reader enforces every rule of the reference implementation (../shared/spec/INTEROP.md)
 * and reports the file and byte offset of the first violation. The writer follows the
 * reference layout (tensors ordered by dtype alignment, largest first, then by name; header
 * padded with spaces to a multiple of 8; metadata {"format": "pt"} always present) and writes
 * to a temporary file that is fsynced and renamed, so a crash never leaves a partial file.
 * Does not own: dtype conversion policy of the model (st_read_f32 converts on request). */
#ifndef CTUNE_SAFETENSORS_H
#define CTUNE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "train/error.h"

typedef enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_I64,
    ST_U64, ST_F64, ST_C64, ST_F8_E5M2, ST_F8_E4M3, ST_F8_E8M0, ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ,
    ST_F4, ST_F6_E2M3, ST_F6_E3M2,
    ST_DTYPE_COUNT
} st_dtype;

const char *st_dtype_name(st_dtype dtype);           /* "BF16" */
int st_dtype_from_name(const char *name, st_dtype *out); /* 0 or -1 */
int st_dtype_bits(st_dtype dtype);                    /* 16 for BF16, 4 for F4, 6 for F6_* */

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    const void *data; /* points into the mapping */
} st_tensor;

typedef struct st_file {
    char *path;
    void *map;
    size_t map_size;
    int n_tensors;
    st_tensor *tensors;    /* in header order */
    int n_metadata;
    char **metadata_keys;  /* __metadata__ entries */
    char **metadata_values;
    int *name_order;       /* tensor indices sorted by name, for st_find's binary search */
} st_file;

/* Maps and validates a file. On failure nothing stays mapped and err says
 * "<path>: byte <offset>: <problem>". */
int st_open(st_file *file, const char *path, ct_error *err);
void st_close(st_file *file);
const st_tensor *st_find(const st_file *file, const char *name);
const char *st_metadata(const st_file *file, const char *key); /* NULL if absent */

/* The shape as text, "[2, 3]" ("[]" for a scalar), cut short if size is too small. */
void st_shape_text(const st_tensor *tensor, char *buf, size_t size);

/* Converts a F32/BF16/F16 tensor to fp32 into out (numel floats). Other dtypes fail. */
int st_read_f32(const st_tensor *tensor, float *out, ct_error *err);

/* ---- writing ---- */
typedef struct st_write_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* numel * bits / 8 bytes */
} st_write_tensor;

/* metadata: n_metadata key/value string pairs; "format": "pt" is added when absent.
 * Writes path + ".tmp", fsyncs, renames over path. */
int st_write(const char *path, const st_write_tensor *tensors, int n_tensors,
             const char *const *metadata_keys, const char *const *metadata_values,
             int n_metadata, ct_error *err);

/* Streaming writer: the header is computed from the descriptors (their data is ignored), then
 * the tensors are given one at a time in header order, so only one needs to be in memory.
 * st_writer_next says which descriptor (index into the array given to open) comes next, -1
 * when all are written. The output is byte-identical to st_write's for the same tensors.
 * finish fsyncs and renames path + ".tmp" over path and frees the writer; abort removes the
 * temporary file and frees it. */
typedef struct st_writer st_writer;
int st_writer_open(st_writer **writer, const char *path, const st_write_tensor *tensors,
                   int n_tensors, const char *const *metadata_keys,
                   const char *const *metadata_values, int n_metadata, ct_error *err);
int st_writer_next(const st_writer *writer);
int st_writer_put(st_writer *writer, const char *name, const void *data, ct_error *err);
int st_writer_finish(st_writer *writer, ct_error *err);
void st_writer_abort(st_writer *writer);

/* Fills out with the bytes of tensors[index] (numel * bits / 8). */
typedef int (*st_fetch_fn)(void *ctx, int index, void *out, ct_error *err);

/* Writes a model's weights into the folder dir, tensors in state-dict order (their data is
 * ignored; fetch supplies each one in turn into a buffer the size of the largest tensor):
 * dir/model.safetensors when the total fits in max_shard_bytes, otherwise
 * model-0000k-of-0000n.safetensors split greedily in the given order (a tensor larger than
 * the limit gets its own shard) plus model.safetensors.index.json, as transformers writes
 * them. Metadata {"format": "pt"}. */
int st_write_model(const char *dir, const st_write_tensor *tensors, int n_tensors,
                   long long max_shard_bytes, st_fetch_fn fetch, void *ctx, ct_error *err);

/* fp32 -> bf16 / fp16 with round-to-nearest-even (as torch's .to()), and back. */
uint16_t st_f32_to_bf16(float x);
uint16_t st_f32_to_f16(float x);
float st_bf16_to_f32(uint16_t x);
float st_f16_to_f32(uint16_t x);

/* ---- a model folder's weights ---- */
typedef struct st_model_files {
    int n_files;
    st_file *files;
} st_model_files;

/* Opens dir/model.safetensors, or every shard named by dir/model.safetensors.index.json
 * (checking that each weight_map entry exists in its shard). */
int st_model_open(st_model_files *files, const char *dir, ct_error *err);
void st_model_close(st_model_files *files);
const st_tensor *st_model_find(const st_model_files *files, const char *name);

#endif
