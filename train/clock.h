/* clock: the one monotonic wall clock for durations (step times, profiles, sweeps). */
#ifndef CTUNE_CLOCK_H
#define CTUNE_CLOCK_H

#include <time.h>

/* Seconds on CLOCK_MONOTONIC: differences are durations, immune to clock adjustments. */
static inline double ct_monotonic_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
