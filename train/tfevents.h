/* tfevents: TensorBoard event files, written without TensorFlow or protobuf.
 *
 * A file is a sequence of TFRecords — little-endian u64 length, masked CRC-32C of those 8
 * bytes, the payload, masked CRC-32C of the payload — each payload one `Event` message
 * (tensorboard/compat/proto/event.proto):
 *     Event   { double wall_time = 1; int64 step = 2; oneof { string file_version = 3;
 *               Summary summary = 5; SessionLog session_log = 7; } }
 *     Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
 *     SessionLog { SessionStatus status = 1; }   (START = 1)
 * and for text (TensorBoard's text plugin renders it as Markdown) a Value holding
 *     metadata = 9 { plugin_data = 1 { plugin_name = 1: "text" } }
 *     tensor = 8 { dtype = 1: DT_STRING (7); tensor_shape = 2: {} (a scalar); string_val = 8 }
 * The first event names the format ("brain.Event:2"). TensorBoard finds every file whose
 * name contains "tfevents" under --logdir, a folder per run.
 *
 * A resumed run writes a new file in the same folder starting with a SessionLog START at
 * its first step: TensorBoard then drops what earlier files logged at that step and after
 * (the steps being redone), as metrics.jsonl drops those lines.
 *
 * Owns: the encoding and the file. Does not own: which scalars a run logs (metrics.c). */
#ifndef CTUNE_TFEVENTS_H
#define CTUNE_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "train/error.h"

typedef struct tfevents_writer {
    FILE *file;
    char path[4096];
} tfevents_writer;

typedef struct tfevents_scalar {
    const char *tag;
    double value; /* stored as float32, as TensorBoard's simple_value */
} tfevents_scalar;

/* Creates dir (mkdir -p) and a new event file in it named
 * events.out.tfevents.<unix seconds>.<host>.<pid>.ctune, and writes the version event. */
int tfevents_open(tfevents_writer *w, const char *dir, ct_error *err);
/* A SessionLog START at step: TensorBoard discards events of earlier files at step and after. */
int tfevents_restart(tfevents_writer *w, long long step, ct_error *err);
/* One event holding n scalars at step, stamped with the current time. Flushed, so a live
 * TensorBoard (or a killed run) sees every event written. */
int tfevents_scalars(tfevents_writer *w, long long step, const tfevents_scalar *scalars, int n, ct_error *err);
/* One event holding a text (Markdown) under tag, shown by TensorBoard's Text tab. */
int tfevents_text(tfevents_writer *w, long long step, const char *tag, const char *markdown, ct_error *err);
void tfevents_close(tfevents_writer *w);

/* CRC-32C (Castagnoli, reflected 0x82F63B78), and the TFRecord mask over it. */
uint32_t tfevents_crc32c(const void *data, size_t n);
uint32_t tfevents_masked_crc(const void *data, size_t n);

#endif
