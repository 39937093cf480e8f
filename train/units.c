#include "train/units.h"

#include <math.h>
#include <stdio.h>

void units_format_bytes(unsigned long long bytes, char *out, size_t size) {
    static const char *const names[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = (double)bytes;
    int unit = 0;
    while (value >= 1024.0 && unit < 4) {
        value /= 1024.0;
        unit++;
    }
    if (unit == 0) snprintf(out, size, "%llu B", bytes);
    else snprintf(out, size, "%.2f %s", value, names[unit]);
}

void units_format_duration(double seconds, bool tenths, char *out, size_t size) {
    if (!isfinite(seconds) || seconds < 0) {
        snprintf(out, size, "-");
        return;
    }
    if (tenths && seconds < 59.95) {
        snprintf(out, size, "%.1f s", seconds);
        return;
    }
    const long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, size, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60) snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, size, "%lds", s);
}
