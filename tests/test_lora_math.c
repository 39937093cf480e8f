/* Tests of peft/lora_math.c, the adapter path of one Linear: in fp32 against a double
 * reference written here; in mixed precision (bf16, fp16; with and without dropout) bit for
 * bit against the same products computed in fp32 on operands rounded here — x (or
 * dropout(x)), A, B, u, dy and du each rounded where it enters a product, sums and results
 * fp32 (the CPU's gemm_half is widening + sgemm, tests/test_half.c). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "peft/lora_math.h"
#include "tests/check.h"

enum { T = 37, IN = 24, OUT = 20, R = 4 };
static const float SCALING = 2.0f, DROPOUT = 0.25f;
static const uint64_t SEED = 99, OFFSET = 7;

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = scale * ((float)(seed >> 40) / 16777216.0f * 2.0f - 1.0f);
    }
}

/* x rounded to fmt and widened back, in place. */
static void round_trip(const kernels *k, float *x, size_t n, kernels_half_format fmt) {
    uint16_t *bits = malloc(n * sizeof *bits);
    k->to_half(bits, x, n, fmt);
    k->from_half(x, bits, n, fmt);
    free(bits);
}

typedef struct {
    float x[T * IN], a[R * IN], b[OUT * R], y0[T * OUT], dy[T * OUT], dx0[T * IN];
} inputs;

typedef struct {
    float y[T * OUT], u[T * R], da[R * IN], db[OUT * R], dx[T * IN];
} outputs;

static void make_inputs(inputs *in) {
    fill(in->x, T * IN, 1, 1.0f);
    fill(in->a, R * IN, 2, 0.5f);
    fill(in->b, OUT * R, 3, 0.5f);
    fill(in->y0, T * OUT, 4, 1.0f);
    fill(in->dy, T * OUT, 5, 0.1f);
    fill(in->dx0, T * IN, 6, 0.1f);
}

/* lora_forward then lora_backward (train), fp32 or mixed in fmt. */
static void run_adapter(const kernels *k, const inputs *in, bool mixed, kernels_half_format fmt, float dropout,
                        outputs *out) {
    uint16_t ha[R * IN], hb[OUT * R], hx[T * IN], hdy[T * OUT], scratch_in[T * IN], scratch_r[T * R];
    k->to_half(ha, in->a, R * IN, fmt);
    k->to_half(hb, in->b, OUT * R, fmt);
    k->to_half(hx, in->x, T * IN, fmt);
    k->to_half(hdy, in->dy, T * OUT, fmt);
    lora_half half = {.fmt = fmt, .a = ha, .b = hb, .lda = IN, .ldb = R, .ldx = IN, .in = scratch_in, .r = scratch_r};
    memset(out, 0, sizeof *out);
    lora_apply la = {.k = k, .a = in->a, .b = in->b, .da = out->da, .db = out->db, .in = IN, .out = OUT, .r = R,
                     .scaling = SCALING, .dropout = dropout, .seed = SEED, .offset = OFFSET,
                     .half = mixed ? &half : NULL};
    /* Scratch only where it is documented to be read: the fp32 dropped input in fp32 runs
     * (mixed precision writes only its rounding), the backward's [T, in] under dropout. */
    float x_scratch[T * IN], du[T * R], scratch[T * IN];
    const bool drop = dropout > 0.0f;
    memcpy(out->y, in->y0, sizeof out->y);
    lora_forward(&la, out->y, out->u, in->x, mixed ? hx : NULL, T, true, drop && !mixed ? x_scratch : NULL);
    memcpy(out->dx, in->dx0, sizeof out->dx);
    lora_backward(&la, out->dx, in->dy, mixed ? hdy : NULL, in->x, mixed ? hx : NULL, out->u, T, true, du,
                  drop ? scratch : NULL);
}

static double rel_diff(const float *a, const double *b, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        r += b[i] * b[i];
    }
    return sqrt(d / (r > 0 ? r : 1));
}

/* fp32, no dropout: the formulas of lora_math.h in double. */
static void test_fp32(const kernels *k) {
    static inputs in;
    static outputs got;
    make_inputs(&in);
    run_adapter(k, &in, false, KERNELS_BF16, 0.0f, &got);
    static double u[T * R], y[T * OUT], du[T * R], da[R * IN], db[OUT * R], dx[T * IN];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < R; j++) {
            double s = 0;
            for (int i = 0; i < IN; i++) s += (double)in.x[t * IN + i] * in.a[j * IN + i];
            u[t * R + j] = s;
        }
    for (int t = 0; t < T; t++)
        for (int o = 0; o < OUT; o++) {
            double s = 0;
            for (int j = 0; j < R; j++) s += u[t * R + j] * in.b[o * R + j];
            y[t * OUT + o] = in.y0[t * OUT + o] + SCALING * s;
        }
    for (int o = 0; o < OUT; o++)
        for (int j = 0; j < R; j++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += (double)in.dy[t * OUT + o] * u[t * R + j];
            db[o * R + j] = SCALING * s;
        }
    for (int t = 0; t < T; t++)
        for (int j = 0; j < R; j++) {
            double s = 0;
            for (int o = 0; o < OUT; o++) s += (double)in.dy[t * OUT + o] * in.b[o * R + j];
            du[t * R + j] = SCALING * s;
        }
    for (int j = 0; j < R; j++)
        for (int i = 0; i < IN; i++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += du[t * R + j] * in.x[t * IN + i];
            da[j * IN + i] = s;
        }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < IN; i++) {
            double s = 0;
            for (int j = 0; j < R; j++) s += du[t * R + j] * in.a[j * IN + i];
            dx[t * IN + i] = in.dx0[t * IN + i] + s;
        }
    CHECK(rel_diff(got.u, u, T * R) < 1e-6);
    CHECK(rel_diff(got.y, y, T * OUT) < 1e-6);
    CHECK(rel_diff(got.db, db, OUT * R) < 1e-6);
    CHECK(rel_diff(got.da, da, R * IN) < 1e-6);
    CHECK(rel_diff(got.dx, dx, T * IN) < 1e-6);
}

/* Mixed: the fp32 products on operands rounded here give the same bits. */
static void test_mixed(const kernels *k, kernels_half_format fmt, float dropout) {
    static inputs in;
    static outputs got, fp32;
    make_inputs(&in);
    run_adapter(k, &in, true, fmt, dropout, &got);
    run_adapter(k, &in, false, fmt, dropout, &fp32);

    static float xr[T * IN], ar[R * IN], br[OUT * R], dyr[T * OUT], u[T * R], ur[T * R], y[T * OUT];
    static float du[T * R], dur[T * R], da[R * IN], db[OUT * R], dx[T * IN], tmp[T * IN];
    if (dropout > 0) k->dropout(xr, in.x, dropout, SEED, OFFSET, T * IN);
    else memcpy(xr, in.x, sizeof xr);
    memcpy(ar, in.a, sizeof ar);
    memcpy(br, in.b, sizeof br);
    memcpy(dyr, in.dy, sizeof dyr);
    round_trip(k, xr, T * IN, fmt);
    round_trip(k, ar, R * IN, fmt);
    round_trip(k, br, OUT * R, fmt);
    round_trip(k, dyr, T * OUT, fmt);
    k->gemm(false, true, T, R, IN, 1.0f, xr, IN, ar, IN, 0.0f, u, R);
    memcpy(ur, u, sizeof ur);
    round_trip(k, ur, T * R, fmt);
    memcpy(y, in.y0, sizeof y);
    k->gemm(false, true, T, OUT, R, SCALING, ur, R, br, R, 1.0f, y, OUT);
    memset(db, 0, sizeof db);
    k->gemm(true, false, OUT, R, T, SCALING, dyr, OUT, ur, R, 1.0f, db, R);
    k->gemm(false, false, T, R, OUT, SCALING, dyr, OUT, br, R, 0.0f, du, R);
    memcpy(dur, du, sizeof dur);
    round_trip(k, dur, T * R, fmt);
    memset(da, 0, sizeof da);
    k->gemm(true, false, R, IN, T, 1.0f, dur, R, xr, IN, 1.0f, da, IN);
    memcpy(dx, in.dx0, sizeof dx);
    if (dropout > 0) {
        k->gemm(false, false, T, IN, R, 1.0f, dur, R, ar, IN, 0.0f, tmp, IN);
        float masked[T * IN];
        k->dropout(masked, tmp, dropout, SEED, OFFSET, T * IN);
        k->axpy(dx, 1.0f, masked, T * IN);
    } else {
        k->gemm(false, false, T, IN, R, 1.0f, dur, R, ar, IN, 1.0f, dx, IN);
    }
    const char *name = fmt == KERNELS_BF16 ? "bf16" : "fp16";
    CHECK_MSG(memcmp(got.u, u, sizeof u) == 0, "%s dropout %g: u", name, dropout);
    CHECK_MSG(memcmp(got.y, y, sizeof y) == 0, "%s dropout %g: y", name, dropout);
    CHECK_MSG(memcmp(got.db, db, sizeof db) == 0, "%s dropout %g: dB", name, dropout);
    CHECK_MSG(memcmp(got.da, da, sizeof da) == 0, "%s dropout %g: dA", name, dropout);
    CHECK_MSG(memcmp(got.dx, dx, sizeof dx) == 0, "%s dropout %g: dx", name, dropout);
    /* And it is not the fp32 path: the roundings happened. */
    CHECK_MSG(memcmp(got.y, fp32.y, sizeof y) != 0 && memcmp(got.da, fp32.da, sizeof da) != 0,
              "%s dropout %g: mixed equals fp32", name, dropout);
}

/* The fused forms (train/model_internal.h): the adapter in slot 1 of a padded base weight
 * [W 0 sB; A 0 0], its u written beside x (whose slot 0 holds another adapter's finite u),
 * y = [x | u] [W | sB]^T and dx = [dy | du] [W ; A] as single GEMMs. Checked against double
 * sums of the same 16-bit operands (each rounding made here), and dB against lora_backward
 * bit for bit (the same product). */
static void test_fused(const kernels *k, kernels_half_format fmt) {
    enum { UCOL = IN + R, LDX = IN + 2 * R, LDW = UCOL + R, LDY = OUT + R };
    static inputs in;
    make_inputs(&in);
    static float w[OUT * IN], sb[OUT * R], u[T * R], y[T * OUT], du[T * R], da[R * IN], db[OUT * R];
    static float dx[T * IN], wide[T * LDX];
    fill(w, OUT * IN, 8, 0.3f);
    for (int i = 0; i < OUT * R; i++) sb[i] = SCALING * in.b[i];
    static uint16_t hw[(OUT + R) * LDW], hx[T * LDX], hdy[T * LDY], scratch_r[T * R];
    memset(hw, 0, sizeof hw);
    k->to_half_2d(fmt, hw, LDW, w, IN, OUT, IN, 1.0f);
    k->to_half_2d(fmt, hw + OUT * LDW, LDW, in.a, IN, R, IN, 1.0f);
    k->to_half_2d(fmt, hw + UCOL, LDW, in.b, R, OUT, R, SCALING);
    fill(wide, T * LDX, 9, 1.0f); /* slot 0: some other adapter's u */
    k->to_half(hx, wide, T * LDX, fmt);
    k->to_half_2d(fmt, hx, LDX, in.x, IN, T, IN, 1.0f);
    k->to_half_2d(fmt, hdy, LDY, in.dy, OUT, T, OUT, 1.0f);
    lora_half half = {.fmt = fmt, .a = hw + OUT * LDW, .b = hw + UCOL, .lda = LDW, .ldb = LDW, .b_scaled = true,
                      .ldx = LDX, .r = scratch_r};
    memset(da, 0, sizeof da);
    memset(db, 0, sizeof db);
    lora_apply la = {.k = k, .a = in.a, .b = in.b, .da = da, .db = db, .in = IN, .out = OUT, .r = R,
                     .scaling = SCALING, .half = &half};
    lora_fused_u(&la, u, in.x, hx, hx + UCOL, T, true, NULL);
    k->gemm_half(fmt, false, true, T, OUT, UCOL + R, 1.0f, hx, LDX, hw, LDW, 0.0f, y, OUT);
    lora_fused_backward(&la, hdy, LDY, hx, u, hx + UCOL, T, true, du); /* u's rounding read beside x */
    memcpy(dx, in.dx0, sizeof dx);
    k->gemm_half(fmt, false, false, T, IN, OUT + R, 1.0f, hdy, LDY, hw, LDW, 1.0f, dx, IN);

    /* The 16-bit operands as the products must have read them, widened. */
    static float xr[T * IN], ar[R * IN], sbr[OUT * R], wr[OUT * IN], dyr[T * OUT], ur[T * R], dur[T * R];
    memcpy(xr, in.x, sizeof xr);
    memcpy(ar, in.a, sizeof ar);
    memcpy(sbr, sb, sizeof sbr);
    memcpy(wr, w, sizeof wr);
    memcpy(dyr, in.dy, sizeof dyr);
    memcpy(ur, u, sizeof ur);
    memcpy(dur, du, sizeof dur);
    float *all[] = {xr, ar, sbr, wr, dyr, ur, dur};
    const size_t sizes[] = {T * IN, R * IN, OUT * R, OUT * IN, T * OUT, T * R, T * R};
    for (int i = 0; i < 7; i++) round_trip(k, all[i], sizes[i], fmt);
    const char *name = fmt == KERNELS_BF16 ? "bf16" : "fp16";
    /* u and its rounding beside x; slot 0 and x itself untouched */
    uint16_t bits;
    int bad = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < LDX; j++) {
            float v = j < IN ? in.x[t * IN + j] : j < UCOL ? wide[t * LDX + j] : u[t * R + j - UCOL];
            k->to_half(&bits, &v, 1, fmt);
            bad += bits != hx[t * LDX + j];
        }
    CHECK_MSG(bad == 0, "%s fused: x's copy with u beside it: %d elements differ", name, bad);
    static double ref_u[T * R], ref_y[T * OUT], ref_du[T * R], ref_da[R * IN], ref_db[OUT * R], ref_dx[T * IN];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < R; j++) {
            double acc = 0;
            for (int i = 0; i < IN; i++) acc += (double)xr[t * IN + i] * ar[j * IN + i];
            ref_u[t * R + j] = acc;
        }
    for (int t = 0; t < T; t++)
        for (int o = 0; o < OUT; o++) {
            double acc = 0;
            for (int i = 0; i < IN; i++) acc += (double)xr[t * IN + i] * wr[o * IN + i];
            for (int j = 0; j < R; j++) acc += (double)ur[t * R + j] * sbr[o * R + j];
            ref_y[t * OUT + o] = acc;
        }
    for (int t = 0; t < T; t++)
        for (int j = 0; j < R; j++) {
            double acc = 0;
            for (int o = 0; o < OUT; o++) acc += (double)dyr[t * OUT + o] * sbr[o * R + j];
            ref_du[t * R + j] = acc;
        }
    for (int j = 0; j < R; j++)
        for (int i = 0; i < IN; i++) {
            double acc = 0;
            for (int t = 0; t < T; t++) acc += (double)dur[t * R + j] * xr[t * IN + i];
            ref_da[j * IN + i] = acc;
        }
    for (int o = 0; o < OUT; o++)
        for (int j = 0; j < R; j++) {
            double acc = 0;
            for (int t = 0; t < T; t++) acc += (double)dyr[t * OUT + o] * ur[t * R + j];
            ref_db[o * R + j] = SCALING * acc;
        }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < IN; i++) {
            double acc = in.dx0[t * IN + i];
            for (int o = 0; o < OUT; o++) acc += (double)dyr[t * OUT + o] * wr[o * IN + i];
            for (int j = 0; j < R; j++) acc += (double)dur[t * R + j] * ar[j * IN + i];
            ref_dx[t * IN + i] = acc;
        }
    CHECK_MSG(rel_diff(u, ref_u, T * R) < 1e-6, "%s fused: u", name);
    CHECK_MSG(rel_diff(y, ref_y, T * OUT) < 1e-6, "%s fused: y = [x | u] [W | sB]^T", name);
    CHECK_MSG(rel_diff(du, ref_du, T * R) < 1e-6, "%s fused: du = dy (sB)", name);
    CHECK_MSG(rel_diff(da, ref_da, R * IN) < 1e-6, "%s fused: dA", name);
    CHECK_MSG(rel_diff(db, ref_db, OUT * R) < 1e-6, "%s fused: dB", name);
    CHECK_MSG(rel_diff(dx, ref_dx, T * IN) < 1e-6, "%s fused: dx = [dy | du] [W ; A]", name);
    /* du beside dy: its rounding, dy's copy untouched */
    bad = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < LDY; j++) {
            float v = j < OUT ? in.dy[t * OUT + j] : du[t * R + j - OUT];
            k->to_half(&bits, &v, 1, fmt);
            bad += bits != hdy[t * LDY + j];
        }
    CHECK_MSG(bad == 0, "%s fused: dy's copy with du beside it: %d elements differ", name, bad);
    /* dB is the unfused path's product exactly */
    static outputs sep;
    run_adapter(k, &in, true, fmt, 0.0f, &sep);
    CHECK_MSG(memcmp(sep.db, db, sizeof db) == 0 && memcmp(sep.u, u, sizeof u) == 0, "%s fused: dB or u differ from "
              "lora_forward / lora_backward", name);
    /* u rounded again (hu NULL): the same dB; only dB wanted: dy's copy left as it was */
    static float db2[OUT * R];
    static uint16_t hdy2[T * LDY];
    memset(db2, 0, sizeof db2);
    memcpy(hdy2, hdy, sizeof hdy2);
    la.db = db2;
    la.da = NULL;
    lora_fused_backward(&la, hdy2, LDY, hx, u, NULL, T, false, du);
    CHECK_MSG(memcmp(db2, db, sizeof db) == 0, "%s fused: dB from u rounded again differs", name);
    CHECK_MSG(memcmp(hdy2, hdy, sizeof hdy) == 0, "%s fused: dB alone wrote into dy's copy", name);
}

int main(void) {
    const kernels *k = kernels_cpu();
    test_fp32(k);
    const kernels_half_format formats[] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++) {
        test_mixed(k, formats[f], 0.0f);
        test_mixed(k, formats[f], DROPOUT);
        test_fused(k, formats[f]);
    }
    return check_summary("test_lora_math");
}
