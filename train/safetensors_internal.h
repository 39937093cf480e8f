/* safetensors_internal: what the reader (safetensors.c) and the writer (safetensors_write.c)
 * share; not part of the public API. */
#ifndef CTUNE_SAFETENSORS_INTERNAL_H
#define CTUNE_SAFETENSORS_INTERNAL_H

#include "train/safetensors.h"

#define ST_MAX_HEADER 100000000ULL
/* cJSON holds numbers as doubles: integers above 2^53 cannot be read exactly. No real file
 * needs one (it would describe petabytes), so larger values are rejected, not rounded. */
#define ST_MAX_EXACT_INT 9007199254740992.0

/* The rank the reference writer sorts tensors by (its Rust Dtype enum order). */
int st_dtype_sort_rank(st_dtype dtype);

enum { ST_SIZE_OK, ST_SIZE_OVERFLOW, ST_SIZE_PARTIAL_BYTE };
/* numel and byte size of a shape; a zero dimension makes both 0 whatever the others are.
 * Returns ST_SIZE_OK, or why the size has no whole number of bytes. */
int st_tensor_size(st_dtype dtype, int ndim, const int64_t *shape, uint64_t *numel,
                   uint64_t *nbytes);

#endif
