/* units: quantities written for people to read (the exact numbers go into files beside them). */
#ifndef CTUNE_UNITS_H
#define CTUNE_UNITS_H

#include <stdbool.h>
#include <stddef.h>

/* "512 B", "27.16 MiB", "1.50 GiB": the largest binary unit up to TiB that keeps the value at
 * least 1, two decimals. */
void units_format_bytes(unsigned long long bytes, char *out, size_t size);
/* A duration rounded to whole seconds: "42s", "1m13s", "2h05m"; below a minute with tenths
 * "0.6 s" instead (a sweep's short runs). "-" when not finite or negative. */
void units_format_duration(double seconds, bool tenths, char *out, size_t size);

#endif
