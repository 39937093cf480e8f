#include "train/units.h"

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
