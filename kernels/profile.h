/* kernels_profile: where a training step's time goes, op by op.
 *
 * A wrapper around any backend table that waits for the device after every op and adds the
 * op's time to a row keyed by the op and its shape (a GEMM's m, n, k and transposes, an
 * attention's batch, sequence and heads), so that a report can say which kernel, at which
 * shape, takes the step, and at how many TFLOP/s the matrix products run. Waiting after
 * every op removes the overlap of launches with work, so the profiled run is slower than a
 * plain one; the sum of the rows is what the device spends in the ops themselves (minus the
 * measured cost of one empty wait, subtracted from every call).
 *
 * The table's functions take no context, so the wrapper's counters live in this module:
 * one profile per process, started by kernels_profile_start (the trainer does it under
 * CTUNE_PROFILE=1; docs/kernels.md). */
#ifndef CTUNE_KERNELS_PROFILE_H
#define CTUNE_KERNELS_PROFILE_H

#include <stdio.h>

#include "kernels/kernels.h"

/* Wraps inner (which must outlive the profile) into *out, a table with the same name and
 * results. Fails when a profile is already running or its probe buffer cannot be had. */
int kernels_profile_start(const kernels *inner, const kernels **out, ct_error *err);

/* Forgets every row (after warm-up steps, whose first calls pay for plans and caches). */
void kernels_profile_reset(void);

/* Prints the rows, slowest first, as per-step times over `steps` steps that took wall_s
 * seconds in all, with the time outside the ops (host work, waits, transfers not in the
 * table) as the difference. */
void kernels_profile_report(FILE *out, int steps, double wall_s);

/* Releases the probe buffer; the wrapped table must not be used afterwards. */
void kernels_profile_stop(void);

#endif
