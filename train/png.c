#include "train/png.h"

#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"

uint32_t png_crc32(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

uint32_t png_adler32(uint32_t adler, const void *data, size_t n) {
    const uint8_t *p = data;
    uint32_t a = adler & 0xffff, b = adler >> 16;
    while (n > 0) {
        /* 5552 bytes is the most that can be summed before b could overflow 32 bits. */
        size_t chunk = n < 5552 ? n : 5552;
        for (size_t i = 0; i < chunk; i++) a += p[i], b += a;
        a %= 65521, b %= 65521;
        p += chunk, n -= chunk;
    }
    return (b << 16) | a;
}

/* ---- a growing byte buffer with a bit writer (deflate packs bits from the LSB up) ---- */

typedef struct bytes {
    uint8_t *data;
    size_t len, cap;
    uint32_t bitbuf;
    int bitcount;
    int failed;
} bytes;

static void put_byte(bytes *b, uint8_t v) {
    if (b->failed) return;
    if (b->len == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 65536;
        uint8_t *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown, b->cap = cap;
    }
    b->data[b->len++] = v;
}

static void put_bytes(bytes *b, const void *data, size_t n) {
    for (size_t i = 0; i < n; i++) put_byte(b, ((const uint8_t *)data)[i]);
}

static void put_be32(bytes *b, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) put_byte(b, (uint8_t)(v >> shift));
}

/* An integer, least significant bit first (block headers, extra bits). */
static void put_bits(bytes *b, uint32_t value, int count) {
    b->bitbuf |= value << b->bitcount;
    b->bitcount += count;
    while (b->bitcount >= 8) {
        put_byte(b, (uint8_t)b->bitbuf);
        b->bitbuf >>= 8, b->bitcount -= 8;
    }
}

/* A Huffman code, most significant bit first (RFC 1951 3.1.1). */
static void put_code(bytes *b, uint32_t code, int length) {
    uint32_t reversed = 0;
    for (int i = 0; i < length; i++) reversed |= ((code >> i) & 1u) << (length - 1 - i);
    put_bits(b, reversed, length);
}

static void flush_bits(bytes *b) {
    if (b->bitcount > 0) put_byte(b, (uint8_t)b->bitbuf);
    b->bitbuf = 0, b->bitcount = 0;
}

/* ---- fixed-Huffman deflate (RFC 1951 3.2.6) ---- */

static void put_literal_length_symbol(bytes *b, int symbol) {
    if (symbol < 144) put_code(b, 0x30u + (uint32_t)symbol, 8);
    else if (symbol < 256) put_code(b, 0x190u + (uint32_t)(symbol - 144), 9);
    else if (symbol < 280) put_code(b, (uint32_t)(symbol - 256), 7);
    else put_code(b, 0xC0u + (uint32_t)(symbol - 280), 8);
}

static const uint16_t LENGTH_BASE[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                         31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LENGTH_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                         2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t DIST_BASE[30] = {1,    2,    3,    4,    5,    7,     9,     13,    17,  25,
                                       33,   49,   65,   97,   129,  193,   257,   385,   513, 769,
                                       1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t DIST_EXTRA[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

static void put_match(bytes *b, size_t length, size_t distance) {
    int lc = 28;
    while (LENGTH_BASE[lc] > length) lc--;
    put_literal_length_symbol(b, 257 + lc);
    put_bits(b, (uint32_t)(length - LENGTH_BASE[lc]), LENGTH_EXTRA[lc]);
    int dc = 29;
    while (DIST_BASE[dc] > distance) dc--;
    put_code(b, (uint32_t)dc, 5);
    put_bits(b, (uint32_t)(distance - DIST_BASE[dc]), DIST_EXTRA[dc]);
}

static size_t match_length(const uint8_t *data, size_t n, size_t pos, size_t distance) {
    if (distance == 0 || distance > pos || distance > 32768) return 0;
    size_t len = 0;
    while (len < 258 && pos + len < n && data[pos + len] == data[pos + len - distance]) len++;
    return len;
}

int png_zlib_compress(const uint8_t *data, size_t n, size_t match_distance, uint8_t **out,
                      size_t *out_size, ct_error *err) {
    bytes b = {0};
    put_byte(&b, 0x78), put_byte(&b, 0x01); /* deflate, 32K window; (0x7801 % 31) == 0 */
    put_bits(&b, 1, 1);                     /* BFINAL */
    put_bits(&b, 1, 2);                     /* BTYPE 01: fixed Huffman codes */
    /* Matches at a short distance (the previous pixel) and at match_distance (the row above). */
    const size_t distances[3] = {1, 3, match_distance};
    for (size_t pos = 0; pos < n;) {
        size_t best = 0, best_distance = 0;
        for (int i = 0; i < 3; i++) {
            size_t len = match_length(data, n, pos, distances[i]);
            if (len > best) best = len, best_distance = distances[i];
        }
        if (best >= 3) {
            put_match(&b, best, best_distance);
            pos += best;
        } else {
            put_literal_length_symbol(&b, data[pos++]);
        }
    }
    put_literal_length_symbol(&b, 256); /* end of block */
    flush_bits(&b);
    put_be32(&b, png_adler32(1, data, n));
    if (b.failed) {
        free(b.data);
        return ct_fail(err, "out of memory compressing %zu bytes", n);
    }
    *out = b.data, *out_size = b.len;
    return 0;
}

static void put_chunk(bytes *b, const char type[4], const uint8_t *data, size_t n) {
    put_be32(b, (uint32_t)n);
    size_t start = b->len;
    put_bytes(b, type, 4);
    put_bytes(b, data, n);
    put_be32(b, b->failed ? 0 : png_crc32(0, b->data + start, n + 4));
}

int png_encode_rgb(const uint8_t *rgb, int width, int height, uint8_t **out, size_t *out_size,
                   ct_error *err) {
    if (width < 1 || height < 1 || width > 16384 || height > 16384)
        return ct_fail(err, "png: image size %dx%d is outside 1..16384", width, height);
    size_t stride = (size_t)width * 3 + 1, raw_size = stride * (size_t)height;
    uint8_t *raw = malloc(raw_size);
    if (!raw) return ct_fail(err, "png: out of memory for %dx%d", width, height);
    for (int y = 0; y < height; y++) {
        raw[(size_t)y * stride] = 0; /* filter: none */
        memcpy(raw + (size_t)y * stride + 1, rgb + (size_t)y * width * 3, (size_t)width * 3);
    }
    uint8_t *z = NULL;
    size_t z_size = 0;
    int status = png_zlib_compress(raw, raw_size, stride, &z, &z_size, err);
    free(raw);
    if (status) return -1;
    bytes b = {0};
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put_bytes(&b, signature, 8);
    uint8_t ihdr[13] = {0};
    for (int i = 0; i < 4; i++) {
        ihdr[i] = (uint8_t)((uint32_t)width >> (24 - 8 * i));
        ihdr[4 + i] = (uint8_t)((uint32_t)height >> (24 - 8 * i));
    }
    ihdr[8] = 8; /* bits per sample */
    ihdr[9] = 2; /* colour type: RGB */
    put_chunk(&b, "IHDR", ihdr, sizeof ihdr);
    put_chunk(&b, "IDAT", z, z_size);
    put_chunk(&b, "IEND", NULL, 0);
    free(z);
    if (b.failed) {
        free(b.data);
        return ct_fail(err, "png: out of memory");
    }
    *out = b.data, *out_size = b.len;
    return 0;
}

int png_write_rgb(const char *path, const uint8_t *rgb, int width, int height, ct_error *err) {
    uint8_t *data;
    size_t size;
    if (png_encode_rgb(rgb, width, height, &data, &size, err)) return ct_error_prefix(err, "%s", path);
    int status = write_file_atomic(path, data, size, err);
    free(data);
    return status;
}
