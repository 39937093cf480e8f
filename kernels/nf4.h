/* nf4: the 4-bit NormalFloat format of QLoRA (Dettmers et al. 2023), as bitsandbytes stores
 * a Linear weight quantized with quant_type "nf4", blocksize 64, no double quantization:
 *
 *   - the weight, flattened row-major, is cut into blocks of NF4_BLOCK values (the last one
 *     may be shorter); absmax[b] = max |x| over block b, fp32;
 *   - each value is scaled into [-1, 1] and replaced by the index of the nearest of the 16
 *     NF4 values (NF4_VALUES), ties to the lower index (torch.bucketize on the fp32 midpoints);
 *   - codes are packed two to a byte, the even-indexed value in the high nibble; an odd count
 *     pads the last low nibble with the code of 0 (7), as bitsandbytes pads with a 0 value;
 *   - a value reads back as NF4_VALUES[code] * absmax[block], one fp32 multiply.
 *
 * Scaling follows bitsandbytes' reference (its "default" backend, the one its CPU build
 * quantizes with): a full block multiplies by the fp32 reciprocal 1 / max(absmax, 1e-38), a
 * final partial block divides by that, and the result is clamped to [-1, 1]. tests/
 * interop_nf4.sh checks codes and absmax bit for bit against bitsandbytes.
 *
 * The host functions here quantize at load time; reading back on a backend is
 * kernels.nf4_to_half_2d. Shared with kernels/cuda (NF4_VALUES_INIT). */
#ifndef CTUNE_NF4_H
#define CTUNE_NF4_H

#include <stddef.h>
#include <stdint.h>

#include "train/error.h"

#define NF4_BLOCK 64

/* The 16 NF4 values (bitsandbytes' table, fp32), ascending; index 7 is 0. */
#define NF4_VALUES_INIT                                                                            \
    {-1.0f,                 -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,     \
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,                    \
     0.07958029955625534f,  0.16093020141124725f,  0.24611230194568634f,  0.33791524171829224f,    \
     0.44070982933044434f,  0.5626170039176941f,   0.7229568362236023f,   1.0f}

/* Bytes of packed codes and number of absmax blocks for n values. */
static inline size_t nf4_code_bytes(size_t n) { return (n + 1) / 2; }
static inline size_t nf4_block_count(size_t n) { return (n + NF4_BLOCK - 1) / NF4_BLOCK; }

/* Quantizes x[0, n) into codes[nf4_code_bytes(n)] and absmax[nf4_block_count(n)]. x may be
 * the piece [offset, offset + n) of a longer tensor when offset is a multiple of NF4_BLOCK
 * and the piece either ends the tensor or is a whole number of blocks: codes and absmax are
 * then the tensor's from offset / 2 and offset / NF4_BLOCK, the same bits as quantizing the
 * whole. (NaN or infinite values give unspecified codes; the caller refuses them first.) */
void nf4_quantize(const float *x, size_t n, uint8_t *codes, float *absmax);

/* Value e of a quantized tensor read back: NF4_VALUES[code e] * absmax[e / NF4_BLOCK], one
 * fp32 multiply (inline: the CPU kernel calls it per value). */
static inline float nf4_value_at(const uint8_t *codes, const float *absmax, size_t e) {
    static const float values[16] = NF4_VALUES_INIT;
    const int code = e % 2 == 0 ? codes[e / 2] >> 4 : codes[e / 2] & 15;
    return values[code] * absmax[e / NF4_BLOCK];
}

/* out[i] = nf4_value_at(codes, absmax, i) for i in [0, n). */
void nf4_dequantize(const uint8_t *codes, const float *absmax, size_t n, float *out);

/* The index of the first NaN or infinity in x[0, n) (it would poison its whole block), or n:
 * what the loader and ctune merge --quantize-base refuse, naming it. */
size_t nf4_first_non_finite(const float *x, size_t n);

/* The one error for a weight NF4 cannot take (training's loader, merge and eval/generate
 * --quantize-base say the same): "tensor 'NAME' holds VALUE at index I; ...". Returns -1. */
int nf4_non_finite_error(ct_error *err, const char *tensor, double value, size_t index);

/* Replaces x[0, n) by its NF4 read-back (quantize into the scratch codes[nf4_code_bytes(n)]
 * and absmax[nf4_block_count(n)], then dequantize): the fp32 weight a QLoRA base stands for,
 * for ctune merge / eval / generate --quantize-base. Returns n, or the index of the first NaN
 * or infinity, leaving x unchanged. */
size_t nf4_read_back(float *x, size_t n, uint8_t *codes, float *absmax);

#endif
