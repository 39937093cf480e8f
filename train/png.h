/* png: encodes 8-bit RGB images as PNG files (RFC 2083) with our own zlib stream (RFC 1950)
 * and deflate encoder (RFC 1951): one fixed-Huffman block whose matches repeat the previous
 * pixel or the row above, which is what the flat colours of a chart compress with.
 * Does not own: drawing (report_plot.c). */
#ifndef CTUNE_PNG_H
#define CTUNE_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "train/error.h"

/* CRC-32 (ISO 3309, as PNG chunks use it); pass 0 to start, the previous result to continue. */
uint32_t png_crc32(uint32_t crc, const void *data, size_t n);
/* Adler-32 (RFC 1950); pass 1 to start. */
uint32_t png_adler32(uint32_t adler, const void *data, size_t n);

/* A zlib stream of data: *out is malloc'd. */
int png_zlib_compress(const uint8_t *data, size_t n, size_t match_distance, uint8_t **out,
                      size_t *out_size, ct_error *err);

/* The whole PNG file of a width x height image, rows top to bottom, 3 bytes per pixel. */
int png_encode_rgb(const uint8_t *rgb, int width, int height, uint8_t **out, size_t *out_size,
                   ct_error *err);
/* png_encode_rgb written atomically to path. */
int png_write_rgb(const char *path, const uint8_t *rgb, int width, int height, ct_error *err);

#endif
