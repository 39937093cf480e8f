/* tfevents (TensorBoard event files) and metrics' TensorBoard side: CRC-32C against published
 * vectors; files read back with a decoder of the record framing and the protobuf written
 * here, independent of the writer's encoder; the scalars metrics logs; the resume marker;
 * write failures. tests/interop_tensorboard.sh checks the same files with TensorBoard itself. */
#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/check.h"
#include "train/fsutil.h"
#include "train/metrics.h"
#include "train/tfevents.h"

/* ---------------------------------------------------------------- a reader for the tests */

#define MAX_VALUES 8

typedef struct event {
    double wall_time;
    long long step;
    char file_version[64];
    bool has_summary, has_session;
    int n_values;
    char tags[MAX_VALUES][256];
    float values[MAX_VALUES];
    int session_status;
    /* a text value's plugin, tensor dtype, shape dimensions and string */
    char plugin[32];
    int dtype, shape_dims;
    char text[1024];
} event;

typedef struct cursor {
    const unsigned char *p, *end;
    bool bad;
} cursor;

static uint64_t read_varint(cursor *c) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) break;
        const unsigned char byte = *c->p++;
        v |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) return v;
    }
    c->bad = true;
    return 0;
}

static uint64_t read_le(cursor *c, int bytes) {
    if (c->end - c->p < bytes) {
        c->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)c->p[i] << (8 * i);
    c->p += bytes;
    return v;
}

/* A length-delimited field's bytes as a sub-cursor. */
static cursor read_bytes(cursor *c) {
    const uint64_t n = read_varint(c);
    cursor sub = {c->p, c->p, c->bad};
    if (c->bad || (uint64_t)(c->end - c->p) < n) {
        c->bad = sub.bad = true;
        return sub;
    }
    sub.end = c->p + n;
    c->p += n;
    return sub;
}

static void copy_string(cursor s, char *out, size_t size) {
    const size_t n = (size_t)(s.end - s.p) < size - 1 ? (size_t)(s.end - s.p) : size - 1;
    memcpy(out, s.p, n);
    out[n] = '\0';
}

static void decode_value(cursor c, event *e) {
    if (e->n_values == MAX_VALUES) {
        CHECK_MSG(false, "more than %d values in one event", MAX_VALUES);
        return;
    }
    char *tag = e->tags[e->n_values];
    float *value = &e->values[e->n_values++];
    tag[0] = '\0';
    *value = NAN;
    while (c.p < c.end && !c.bad) {
        const uint64_t key = read_varint(&c);
        if (key == (1 << 3 | 2)) copy_string(read_bytes(&c), tag, 256);
        else if (key == (9 << 3 | 2)) { /* metadata { plugin_data = 1 { plugin_name = 1 } } */
            cursor meta = read_bytes(&c);
            if (read_varint(&meta) != (1 << 3 | 2)) {
                c.bad = true;
            } else {
                cursor plugin = read_bytes(&meta);
                if (read_varint(&plugin) != (1 << 3 | 2)) c.bad = true;
                else copy_string(read_bytes(&plugin), e->plugin, sizeof e->plugin);
                c.bad |= meta.bad || plugin.bad || meta.p != meta.end || plugin.p != plugin.end;
            }
        } else if (key == (8 << 3 | 2)) { /* tensor { dtype = 1; tensor_shape = 2; string_val = 8 } */
            cursor tensor = read_bytes(&c);
            while (tensor.p < tensor.end && !tensor.bad) {
                const uint64_t field = read_varint(&tensor);
                if (field == (1 << 3 | 0)) e->dtype = (int)read_varint(&tensor);
                else if (field == (2 << 3 | 2)) {
                    cursor shape = read_bytes(&tensor); /* TensorShapeProto: dim = 2, one per dimension */
                    while (shape.p < shape.end && !shape.bad) {
                        if (read_varint(&shape) != (2 << 3 | 2)) shape.bad = true;
                        else {
                            read_bytes(&shape);
                            e->shape_dims++;
                        }
                    }
                    tensor.bad |= shape.bad;
                } else if (field == (8 << 3 | 2)) copy_string(read_bytes(&tensor), e->text, sizeof e->text);
                else tensor.bad = true;
            }
            c.bad |= tensor.bad;
        } else if (key == (2 << 3 | 5)) {
            const uint32_t bits = (uint32_t)read_le(&c, 4);
            memcpy(value, &bits, sizeof bits);
        } else c.bad = true;
    }
    CHECK_MSG(!c.bad, "a malformed Summary.Value");
}

static bool decode_event(const unsigned char *data, size_t n, event *e) {
    memset(e, 0, sizeof *e);
    cursor c = {data, data + n, false};
    while (c.p < c.end && !c.bad) {
        const uint64_t key = read_varint(&c);
        switch (key) {
        case 1 << 3 | 1: {
            const uint64_t bits = read_le(&c, 8);
            memcpy(&e->wall_time, &bits, sizeof bits);
            break;
        }
        case 2 << 3 | 0: e->step = (long long)read_varint(&c); break;
        case 3 << 3 | 2: copy_string(read_bytes(&c), e->file_version, sizeof e->file_version); break;
        case 5 << 3 | 2: { /* Summary: repeated Value value = 1 */
            cursor summary = read_bytes(&c);
            e->has_summary = true;
            while (summary.p < summary.end && !summary.bad) {
                if (read_varint(&summary) != (1 << 3 | 2)) summary.bad = true;
                else decode_value(read_bytes(&summary), e);
            }
            c.bad |= summary.bad;
            break;
        }
        case 7 << 3 | 2: { /* SessionLog: status = 1 */
            cursor log = read_bytes(&c);
            e->has_session = true;
            while (log.p < log.end && !log.bad) {
                if (read_varint(&log) != (1 << 3 | 0)) log.bad = true;
                else e->session_status = (int)read_varint(&log);
            }
            c.bad |= log.bad;
            break;
        }
        default: c.bad = true;
        }
    }
    return !c.bad;
}

/* Every record of the one event file in dir, CRCs checked; returns the count (-1: unreadable). */
static int read_events(const char *dir, event *events, int max) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char path[1024] = "";
    int files = 0;
    for (struct dirent *ent; (ent = readdir(d));)
        if (strstr(ent->d_name, "events.out.tfevents.")) {
            files++;
            snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        }
    closedir(d);
    CHECK_MSG(files == 1, "%s: %d event files, expected 1", dir, files);
    if (files != 1) return -1;
    size_t size = 0;
    unsigned char *data = (unsigned char *)check_slurp(path, &size);
    if (!data) return -1;
    int n = 0;
    size_t at = 0;
    while (at < size && n < max) {
        CHECK_MSG(size - at >= 16, "%s: a truncated record at byte %zu", path, at);
        if (size - at < 16) break;
        uint64_t len = 0;
        for (int i = 0; i < 8; i++) len |= (uint64_t)data[at + i] << (8 * i);
        uint32_t len_crc = 0, data_crc = 0;
        for (int i = 0; i < 4; i++) len_crc |= (uint32_t)data[at + 8 + i] << (8 * i);
        CHECK_MSG(len_crc == tfevents_masked_crc(data + at, 8), "%s: byte %zu: the length's CRC", path, at);
        CHECK_MSG(len <= size - at - 16, "%s: byte %zu: length %llu past the end", path, at, (unsigned long long)len);
        if (len > size - at - 16) break;
        for (int i = 0; i < 4; i++) data_crc |= (uint32_t)data[at + 12 + len + i] << (8 * i);
        CHECK_MSG(data_crc == tfevents_masked_crc(data + at + 12, len), "%s: byte %zu: the payload's CRC", path, at);
        CHECK_MSG(decode_event(data + at + 12, len, &events[n]), "%s: byte %zu: a malformed Event", path, at);
        n++;
        at += 16 + len;
    }
    free(data);
    return n;
}

/* ---------------------------------------------------------------- tests */

static void test_crc32c(void) {
    /* RFC 3720 B.4 and the check value of CRC-32C */
    unsigned char zeros[32] = {0}, ones[32], ascending[32];
    memset(ones, 0xFF, sizeof ones);
    for (int i = 0; i < 32; i++) ascending[i] = (unsigned char)i;
    CHECK(tfevents_crc32c("123456789", 9) == 0xE3069283u);
    CHECK(tfevents_crc32c(zeros, 32) == 0x8A9136AAu);
    CHECK(tfevents_crc32c(ones, 32) == 0x62A8AB43u);
    CHECK(tfevents_crc32c(ascending, 32) == 0x46DD794Eu);
    const uint32_t crc = 0xE3069283u;
    CHECK(tfevents_masked_crc("123456789", 9) == ((crc >> 15 | crc << 17) + 0xA282EAD8u));
}

static void test_writer(const char *tmp) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/run/tensorboard", tmp); /* made with its parents */
    ct_error err = {{0}};
    tfevents_writer w;
    const double before = (double)time(NULL);
    CHECK_MSG(tfevents_open(&w, dir, &err) == 0, "%s", err.msg);
    char long_tag[201];
    memset(long_tag, 'x', 200); /* a length that takes two varint bytes */
    long_tag[200] = '\0';
    const tfevents_scalar scalars[3] = {{"train/loss", 1.5}, {"train/lr", 1e-3}, {long_tag, -2.25}};
    CHECK(tfevents_scalars(&w, 300, scalars, 3, &err) == 0); /* a step that takes two bytes */
    CHECK(tfevents_restart(&w, 7, &err) == 0);
    CHECK(tfevents_scalars(&w, 7, scalars, 0, &err) == 0); /* an empty summary is still an event */
    CHECK(tfevents_text(&w, 8, "notes", "# a title\n\n    code", &err) == 0);
    tfevents_close(&w);
    const double after = (double)time(NULL) + 1.0;

    event e[8];
    const int n = read_events(dir, e, 8);
    CHECK_MSG(n == 5, "%d events, expected 5", n);
    if (n != 5) return;
    for (int i = 0; i < n; i++) CHECK(e[i].wall_time >= before && e[i].wall_time <= after);
    CHECK(!strcmp(e[0].file_version, "brain.Event:2") && e[0].step == 0 && !e[0].has_summary);
    CHECK(e[1].has_summary && e[1].step == 300 && e[1].n_values == 3);
    CHECK(!strcmp(e[1].tags[0], "train/loss") && e[1].values[0] == 1.5f);
    CHECK(!strcmp(e[1].tags[1], "train/lr") && e[1].values[1] == 1e-3f);
    CHECK(!strcmp(e[1].tags[2], long_tag) && e[1].values[2] == -2.25f);
    CHECK(e[2].has_session && e[2].session_status == 1 && e[2].step == 7 && !e[2].has_summary);
    CHECK(e[3].has_summary && e[3].n_values == 0 && e[3].step == 7);
    CHECK(e[4].step == 8 && e[4].n_values == 1 && !strcmp(e[4].tags[0], "notes") && isnan(e[4].values[0]));
    CHECK(!strcmp(e[4].plugin, "text") && e[4].dtype == 7 && e[4].shape_dims == 0);
    CHECK(!strcmp(e[4].text, "# a title\n\n    code"));
}

static void test_metrics(const char *tmp) {
    char dir[512], jsonl[512];
    ct_error err = {{0}};
    metrics_log log = {0};
    snprintf(jsonl, sizeof jsonl, "%s/metrics.jsonl", tmp);
    snprintf(dir, sizeof dir, "%s/resumed/tensorboard", tmp);
    CHECK(metrics_open(&log, jsonl, &err) == 0);
    CHECK_MSG(metrics_open_tensorboard(&log, dir, 5, "name: resumed\n", &err) == 0, "%s", err.msg);
    metrics_step(&log, &(metrics_step_values){.step = 5, .loss = 2.5, .lr = 3e-4, .grad_norm = 0.75, .tokens = 4096,
                                              .tokens_per_second = 1234.5, .elapsed_seconds = 10.0,
                                              .peak_memory_bytes = -1});
    metrics_eval(&log, 5, 2.25, 512, NAN);
    metrics_eval(&log, 6, 2.0, 512, 0.5);
    metrics_step(&log, &(metrics_step_values){.step = 6, .loss = NAN, .lr = 2e-4, .grad_norm = INFINITY, .tokens = 100,
                                              .tokens_per_second = 99.0, .elapsed_seconds = 11.0,
                                              .loss_scale = 32768.0, .skipped = true,
                                              .peak_memory_bytes = 3LL << 29});
    CHECK(metrics_take_warning(&log) == NULL);
    metrics_close(&log);

    event e[8];
    const int n = read_events(dir, e, 8);
    CHECK_MSG(n == 7, "%d events, expected 7", n);
    if (n != 7) return;
    CHECK(e[1].has_session && e[1].session_status == 1 && e[1].step == 5);
    /* the recipe at the step before the first (kept by the purge the restart marker asks for) */
    CHECK(e[2].step == 4 && e[2].n_values == 1 && !strcmp(e[2].tags[0], "recipe") && !strcmp(e[2].plugin, "text"));
    CHECK(!strcmp(e[2].text, "```yaml\nname: resumed\n```\n"));
    memmove(&e[2], &e[3], 4 * sizeof *e); /* the scalars' events, e[3..6], to e[2..5] for the checks below */
    const char *train_tags[8] = {"train/loss",       "train/lr",      "train/grad_norm",      "train/tokens",
                                 "train/tokens_per_second", "train/loss_scale", "train/skipped", "train/peak_memory_gib"};
    const float first[5] = {2.5f, 3e-4f, 0.75f, 4096.0f, 1234.5f};
    CHECK(e[2].step == 5 && e[2].n_values == 5);
    for (int i = 0; i < 5 && i < e[2].n_values; i++)
        CHECK_MSG(!strcmp(e[2].tags[i], train_tags[i]) && e[2].values[i] == first[i], "value %d: %s %g", i,
                  e[2].tags[i], (double)e[2].values[i]);
    CHECK(e[3].step == 5 && e[3].n_values == 1 && !strcmp(e[3].tags[0], "eval/loss") && e[3].values[0] == 2.25f);
    CHECK(e[4].step == 6 && e[4].n_values == 2 && !strcmp(e[4].tags[1], "eval/accuracy") && e[4].values[1] == 0.5f);
    CHECK(e[5].step == 6 && e[5].n_values == 8);
    if (e[5].n_values == 8) {
        for (int i = 0; i < 8; i++) CHECK_MSG(!strcmp(e[5].tags[i], train_tags[i]), "tag %d: %s", i, e[5].tags[i]);
        CHECK(isnan(e[5].values[0]) && isinf(e[5].values[2]) && e[5].values[5] == 32768.0f && e[5].values[6] == 1.0f);
        CHECK(e[5].values[7] == 1.5f); /* bytes in GiB */
    }

    /* a fresh run (first step 1) has no restart marker */
    snprintf(dir, sizeof dir, "%s/fresh/tensorboard", tmp);
    CHECK(metrics_open(&log, jsonl, &err) == 0 && metrics_open_tensorboard(&log, dir, 1, NULL, &err) == 0);
    metrics_step(&log, &(metrics_step_values){.step = 1, .loss = 3.0, .lr = 1e-3, .grad_norm = 1.0, .tokens = 10,
                                              .tokens_per_second = 1.0, .elapsed_seconds = 1.0,
                                              .peak_memory_bytes = -1});
    metrics_close(&log);
    const int fresh = read_events(dir, e, 8);
    CHECK(fresh == 2 && !e[1].has_session && e[1].step == 1);
}

static void test_failures(const char *tmp) {
    char path[512], jsonl[512];
    ct_error err = {{0}};
    /* a folder that cannot be made: named in the error */
    snprintf(path, sizeof path, "%s/file", tmp);
    CHECK(write_file_atomic(path, "x", 1, &err) == 0);
    snprintf(path, sizeof path, "%s/file/tensorboard", tmp);
    tfevents_writer w;
    CHECK(tfevents_open(&w, path, &err) == -1);
    CHECK_CONTAINS(err.msg, "/file");
    CHECK(w.file == NULL);

    /* a full disk: the step still reaches metrics.jsonl, the warning comes once, events stop */
    metrics_log log = {0};
    snprintf(jsonl, sizeof jsonl, "%s/full.jsonl", tmp);
    snprintf(path, sizeof path, "%s/full/tensorboard", tmp);
    CHECK(metrics_open(&log, jsonl, &err) == 0 && metrics_open_tensorboard(&log, path, 1, NULL, &err) == 0);
    FILE *full = fopen("/dev/full", "w");
    CHECK(full != NULL);
    if (!full) return;
    fclose(log.tensorboard.file);
    snprintf(log.tensorboard.path, sizeof log.tensorboard.path, "/dev/full");
    log.tensorboard.file = full;
    metrics_step(&log, &(metrics_step_values){.step = 1, .loss = 3.0, .lr = 1e-3, .grad_norm = 1.0, .tokens = 10,
                                              .tokens_per_second = 1.0, .elapsed_seconds = 1.0,
                                              .peak_memory_bytes = -1});
    const char *why = metrics_take_warning(&log);
    CHECK(why != NULL && strstr(why, "/dev/full") && strstr(why, "cannot write"));
    CHECK(log.tensorboard.file == NULL);
    CHECK(metrics_take_warning(&log) == NULL);
    metrics_step(&log, &(metrics_step_values){.step = 2, .loss = 3.0, .lr = 1e-3, .grad_norm = 1.0, .tokens = 10,
                                              .tokens_per_second = 1.0, .elapsed_seconds = 1.0,
                                              .peak_memory_bytes = -1});
    CHECK(metrics_take_warning(&log) == NULL);
    metrics_close(&log);
    char *lines = check_slurp(jsonl, NULL);
    CHECK(lines && strstr(lines, "{\"step\":1,") && strstr(lines, "{\"step\":2,"));
    free(lines);
}

int main(void) {
    char tmp[] = "/tmp/ctune_tfevents_XXXXXX";
    if (!mkdtemp(tmp)) return 1;
    test_crc32c();
    test_writer(tmp);
    test_metrics(tmp);
    test_failures(tmp);
    ct_error err = {{0}};
    remove_tree(tmp, &err);
    return check_summary("test_tfevents");
}
