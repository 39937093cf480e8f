/* tfevents: TensorBoard event files (tfevents.h has the format). The protobuf encoding is
 * written by hand: three message types, five field kinds. */
#include "train/tfevents.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "train/fsutil.h"
#include "train/textbuf.h"

uint32_t tfevents_crc32c(const void *data, size_t n) {
    /* Bitwise: an event is ~100 bytes, a run writes a few thousand of them. */
    const unsigned char *p = data;
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

uint32_t tfevents_masked_crc(const void *data, size_t n) {
    const uint32_t crc = tfevents_crc32c(data, n);
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

/* ---------------------------------------------------------------- protobuf encoding */

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static void put_varint(textbuf *b, uint64_t v) {
    char bytes[10];
    size_t n = 0;
    do {
        bytes[n++] = (char)((v & 0x7Fu) | (v >= 0x80u ? 0x80u : 0u));
        v >>= 7;
    } while (v);
    textbuf_put(b, bytes, n);
}

static void put_key(textbuf *b, int field, int wire) { put_varint(b, ((uint64_t)field << 3) | (uint64_t)wire); }

static void put_le(textbuf *b, uint64_t v, int bytes) {
    char out[8];
    for (int i = 0; i < bytes; i++) out[i] = (char)(v >> (8 * i));
    textbuf_put(b, out, (size_t)bytes);
}

static void put_double(textbuf *b, int field, double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_key(b, field, WIRE_FIXED64);
    put_le(b, bits, 8);
}

static void put_float(textbuf *b, int field, float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_key(b, field, WIRE_FIXED32);
    put_le(b, bits, 4);
}

static void put_bytes(textbuf *b, int field, const char *data, size_t n) {
    put_key(b, field, WIRE_BYTES);
    put_varint(b, n);
    textbuf_put(b, data, n);
}

/* Event fields (event.proto) */
enum { EVENT_WALL_TIME = 1, EVENT_STEP = 2, EVENT_FILE_VERSION = 3, EVENT_SUMMARY = 5, EVENT_SESSION_LOG = 7 };
enum { SUMMARY_VALUE = 1, VALUE_TAG = 1, VALUE_SIMPLE_VALUE = 2, SESSION_LOG_STATUS = 1, SESSION_START = 1 };
/* Value.metadata and Value.tensor (summary.proto, tensor.proto) for text */
enum { VALUE_TENSOR = 8, VALUE_METADATA = 9, METADATA_PLUGIN_DATA = 1, PLUGIN_NAME = 1 };
enum { TENSOR_DTYPE = 1, TENSOR_SHAPE = 2, TENSOR_STRING_VAL = 8, DT_STRING = 7 };

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The Event header every event starts with. */
static void put_event_head(textbuf *b, long long step) {
    put_double(b, EVENT_WALL_TIME, wall_seconds());
    if (step) { /* proto3 leaves a zero out */
        put_key(b, EVENT_STEP, WIRE_VARINT);
        put_varint(b, (uint64_t)step);
    }
}

/* Frames one Event as a TFRecord, writes and flushes it; parts_failed: a buffer the event was
 * built from ran out of memory (so the event is incomplete). */
static int write_record(tfevents_writer *w, const textbuf *event, bool parts_failed, ct_error *err) {
    if (parts_failed || event->failed) return ct_fail(err, "%s: out of memory encoding an event", w->path);
    unsigned char head[12];
    const uint64_t len = event->len;
    for (int i = 0; i < 8; i++) head[i] = (unsigned char)(len >> (8 * i));
    const uint32_t len_crc = tfevents_masked_crc(head, 8);
    const uint32_t data_crc = tfevents_masked_crc(event->data, event->len);
    for (int i = 0; i < 4; i++) head[8 + i] = (unsigned char)(len_crc >> (8 * i));
    unsigned char tail[4];
    for (int i = 0; i < 4; i++) tail[i] = (unsigned char)(data_crc >> (8 * i));
    if (fwrite(head, 1, sizeof head, w->file) != sizeof head ||
        fwrite(event->data, 1, event->len, w->file) != event->len || fwrite(tail, 1, sizeof tail, w->file) != sizeof tail ||
        fflush(w->file) != 0)
        return ct_fail(err, "%s: cannot write a TensorBoard event: %s", w->path, strerror(errno));
    return 0;
}

/* ---------------------------------------------------------------- writer */

int tfevents_open(tfevents_writer *w, const char *dir, ct_error *err) {
    memset(w, 0, sizeof *w);
    if (make_dirs(dir, err)) return ct_error_prefix(err, "tensorboard");
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++) /* a host name never holds a path separator, but be sure */
        if (*c == '/') *c = '_';
    char name[512];
    snprintf(name, sizeof name, "events.out.tfevents.%010lld.%s.%ld.ctune", (long long)time(NULL), host,
             (long)getpid());
    if (path_join(w->path, sizeof w->path, dir, name, err)) return -1;
    w->file = fopen(w->path, "wb");
    if (!w->file) return ct_fail(err, "%s: cannot open for writing: %s", w->path, strerror(errno));
    textbuf event = {0};
    put_event_head(&event, 0);
    static const char version[] = "brain.Event:2";
    put_bytes(&event, EVENT_FILE_VERSION, version, sizeof version - 1);
    const int status = write_record(w, &event, false, err);
    textbuf_free(&event);
    if (status) tfevents_close(w);
    return status;
}

int tfevents_restart(tfevents_writer *w, long long step, ct_error *err) {
    textbuf log = {0}, event = {0};
    put_key(&log, SESSION_LOG_STATUS, WIRE_VARINT);
    put_varint(&log, SESSION_START);
    put_event_head(&event, step);
    put_bytes(&event, EVENT_SESSION_LOG, log.data, log.len);
    const int status = write_record(w, &event, log.failed, err);
    textbuf_free(&log);
    textbuf_free(&event);
    return status;
}

int tfevents_scalars(tfevents_writer *w, long long step, const tfevents_scalar *scalars, int n, ct_error *err) {
    textbuf summary = {0}, value = {0}, event = {0};
    for (int i = 0; i < n; i++) {
        value.len = 0;
        put_bytes(&value, VALUE_TAG, scalars[i].tag, strlen(scalars[i].tag));
        put_float(&value, VALUE_SIMPLE_VALUE, (float)scalars[i].value);
        put_bytes(&summary, SUMMARY_VALUE, value.data, value.len);
    }
    put_event_head(&event, step);
    put_bytes(&event, EVENT_SUMMARY, summary.data ? summary.data : "", summary.len);
    const int status = write_record(w, &event, summary.failed || value.failed, err);
    textbuf_free(&summary);
    textbuf_free(&value);
    textbuf_free(&event);
    return status;
}

int tfevents_text(tfevents_writer *w, long long step, const char *tag, const char *markdown, ct_error *err) {
    textbuf plugin = {0}, metadata = {0}, tensor = {0}, value = {0}, summary = {0}, event = {0};
    put_bytes(&plugin, PLUGIN_NAME, "text", 4);
    put_bytes(&metadata, METADATA_PLUGIN_DATA, plugin.data, plugin.len);
    put_key(&tensor, TENSOR_DTYPE, WIRE_VARINT);
    put_varint(&tensor, DT_STRING);
    put_bytes(&tensor, TENSOR_SHAPE, "", 0);
    put_bytes(&tensor, TENSOR_STRING_VAL, markdown, strlen(markdown));
    put_bytes(&value, VALUE_TAG, tag, strlen(tag));
    put_bytes(&value, VALUE_METADATA, metadata.data, metadata.len);
    put_bytes(&value, VALUE_TENSOR, tensor.data, tensor.len);
    put_bytes(&summary, SUMMARY_VALUE, value.data, value.len);
    put_event_head(&event, step);
    put_bytes(&event, EVENT_SUMMARY, summary.data, summary.len);
    const bool parts_failed = plugin.failed || metadata.failed || tensor.failed || value.failed || summary.failed;
    const int status = write_record(w, &event, parts_failed, err);
    textbuf *parts[] = {&plugin, &metadata, &tensor, &value, &summary, &event};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) textbuf_free(parts[i]);
    return status;
}

void tfevents_close(tfevents_writer *w) {
    if (w->file) fclose(w->file);
    w->file = NULL;
}
