// kernels/cuda/attention_mma.cu's kernels run on the host emulator (tests/emu/cuda_emu.h),
// without a GPU, against a double-precision reference of the same 16-bit inputs.
//
// What a GPU run of tests/test_kernels_cuda_attention.c checks of this path, checked on
// every machine: the forward's out_half, fp32 out and lse, and the backward's dq, dk, dv,
// each within a relative error ||got - ref|| / ||ref|| of the 16-bit formats' rounding (the
// bounds below: a few times what the kernels' arithmetic gives, measured; an element the
// kernel forgot, a key it skipped or counted twice, a wrong fragment or a mask one off is
// far above them); out_half to_half(out) bit for bit; every output element written (outputs
// poisoned with NaN) and nothing written between out_half's rows; the backward's dS stored
// and multiplied in chunks of kv heads (scratch budgets: none = recompute, one kv head,
// two, all) giving dk, dv the same bits every way and dq the same bits whatever the
// chunking, with the scratch the memory estimate (attention_mma_bwd_scratch_bytes) says;
// the forward with 32 query rows per warp (tiles of 128 rows) the same bits as with 16;
// and every result the same bits under a shuffled thread schedule, cp.async copies done at
// once instead of at their wait, and device buffers placed against the guard page from
// the other side (a race, a missing wait or an out-of-bounds access changes them or
// faults). The emulator itself stops the run on a barrier or warp-wide instruction that
// not every thread reaches, a shared-memory access past the launch's size, or a cp.async
// from outside the device buffers.
//
// Shapes: head_dim 64 and 128, bf16 and fp16, seq from 1 to 200 (ragged last tiles, fully
// visible tiles), GQA with 2 and 3 kv heads (an uneven last chunk) and MHA, batch 1 and 2,
// document masks, out_half rows padded by 3 (not 4-byte aligned) or not.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "cuda_emu.h"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "tests/check.h"


namespace {

struct shape {
    int batch, seq, heads, kv, d;
    int doc_len;  // mean document length; 0: no documents
    int ld_pad;   // out_half rows n_heads * d + ld_pad apart
    bool fp32_out;
};

const uint16_t GAP = 0x7E7Eu;  // between out_half's rows

uint64_t rng_state = 0x243F6A8885A308D3ull;
double uniform() {  // [0, 1)
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}
double normal() { return sqrt(-2.0 * log(1.0 - uniform())) * cos(6.283185307179586 * uniform()); }

uint16_t to_bits(kernels_half_format fmt, float x) {
    return fmt == KERNELS_BF16 ? emu_bf16_bits(x) : emu_fp16_bits(x);
}
float widen(kernels_half_format fmt, uint16_t h) { return fmt == KERNELS_BF16 ? emu_bf16_widen(h) : emu_fp16_widen(h); }
uint16_t poison(kernels_half_format fmt) { return fmt == KERNELS_BF16 ? 0x7FA5u : 0x7E5Au; }

// The inputs of one case and the reference's results.
struct problem {
    shape sh;
    kernels_half_format fmt;
    size_t tokens, q_n, kv_n, stat_n;
    int ld_out;
    float scale;
    std::vector<uint16_t> q, k, v;  // 16-bit inputs
    std::vector<int32_t> doc;       // empty: no documents
    std::vector<float> dout;
    std::vector<double> out, lse, dq, dk, dv;  // reference
    // The backward's inputs as the model hands them over: the reference's out rounded (rows
    // ld_out apart, the gap between them NaN), lse, and D = rowsum(round(dout) out_half).
    std::vector<uint16_t> out_half;
    std::vector<float> lse_f, D;
};

bool visible(const problem &p, int b, int i, int j) {
    return j <= i && (p.doc.empty() || p.doc[(size_t)b * p.sh.seq + i] == p.doc[(size_t)b * p.sh.seq + j]);
}

problem make_problem(const shape &sh, kernels_half_format fmt) {
    problem p;
    p.sh = sh;
    p.fmt = fmt;
    p.tokens = (size_t)sh.batch * sh.seq;
    p.q_n = p.tokens * sh.heads * sh.d;
    p.kv_n = p.tokens * sh.kv * sh.d;
    p.stat_n = (size_t)sh.batch * sh.heads * sh.seq;
    p.ld_out = sh.heads * sh.d + sh.ld_pad;
    p.scale = (float)(1.0 / sqrt((double)sh.d));
    auto draw = [&](std::vector<uint16_t> &x, size_t n, double sd) {
        x.resize(n);
        for (size_t i = 0; i < n; i++) x[i] = to_bits(fmt, (float)(sd * normal()));
    };
    draw(p.q, p.q_n, 1.5);  // scores of a few units: softmax rows neither flat nor one-hot
    draw(p.k, p.kv_n, 1.5);
    draw(p.v, p.kv_n, 1.0);
    p.dout.resize(p.q_n);
    for (float &x : p.dout) x = (float)normal();
    if (sh.doc_len) {  // documents of random lengths, ids rising through the batch
        p.doc.resize(p.tokens);
        int32_t id = 0;
        for (size_t t = 0; t < p.tokens; t++) {
            if (t > 0 && (t % sh.seq == 0 || uniform() < 1.0 / sh.doc_len)) id++;
            p.doc[t] = id;
        }
    }

    const int S = sh.seq, H = sh.heads, d = sh.d, group = sh.heads / sh.kv;
    const size_t qs = (size_t)H * d, ks = (size_t)sh.kv * d;
    p.out.assign(p.q_n, 0.0);
    p.lse.assign(p.stat_n, 0.0);
    p.dq.assign(p.q_n, 0.0);
    p.dk.assign(p.kv_n, 0.0);
    p.dv.assign(p.kv_n, 0.0);
    std::vector<double> P(S), dout16(p.q_n);  // dout as the kernels round it
    for (size_t i = 0; i < p.q_n; i++) dout16[i] = widen(fmt, to_bits(fmt, p.dout[i]));
    for (int b = 0; b < sh.batch; b++)
        for (int h = 0; h < H; h++) {
            const int g = h / group;
            for (int i = 0; i < S; i++) {
                const size_t qi = ((size_t)b * S + i) * qs + (size_t)h * d;
                double m = -INFINITY;
                for (int j = 0; j < S; j++) {
                    P[j] = -INFINITY;
                    if (!visible(p, b, i, j)) continue;
                    const size_t kj = ((size_t)b * S + j) * ks + (size_t)g * d;
                    double s = 0.0;
                    for (int c = 0; c < d; c++) s += (double)widen(fmt, p.q[qi + c]) * widen(fmt, p.k[kj + c]);
                    P[j] = s * p.scale;
                    m = fmax(m, P[j]);
                }
                double l = 0.0;
                for (int j = 0; j < S; j++) l += P[j] == -INFINITY ? 0.0 : exp(P[j] - m);
                const double lse = m + log(l);
                p.lse[((size_t)b * H + h) * S + i] = lse;
                for (int j = 0; j < S; j++) P[j] = P[j] == -INFINITY ? 0.0 : exp(P[j] - lse);
                double D = 0.0;
                for (int c = 0; c < d; c++) {
                    double o = 0.0;
                    for (int j = 0; j < S; j++)
                        if (P[j] != 0.0) o += P[j] * widen(fmt, p.v[((size_t)b * S + j) * ks + (size_t)g * d + c]);
                    p.out[qi + c] = o;
                    D += o * dout16[qi + c];
                }
                for (int j = 0; j < S; j++) {
                    if (P[j] == 0.0) continue;
                    const size_t kj = ((size_t)b * S + j) * ks + (size_t)g * d;
                    double dp = 0.0;
                    for (int c = 0; c < d; c++) dp += dout16[qi + c] * widen(fmt, p.v[kj + c]);
                    const double ds = P[j] * (dp - D);
                    for (int c = 0; c < d; c++) {
                        p.dq[qi + c] += p.scale * ds * widen(fmt, p.k[kj + c]);
                        p.dk[kj + c] += p.scale * ds * widen(fmt, p.q[qi + c]);
                        p.dv[kj + c] += P[j] * dout16[qi + c];
                    }
                }
            }
        }

    p.out_half.assign(p.tokens * p.ld_out, 0x7FFFu);
    p.lse_f.resize(p.stat_n);
    p.D.resize(p.stat_n);
    for (size_t t = 0; t < p.tokens; t++)
        for (size_t c = 0; c < qs; c++) p.out_half[t * p.ld_out + c] = to_bits(fmt, (float)p.out[t * qs + c]);
    for (int b = 0; b < sh.batch; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < S; i++) {
                const size_t stat = ((size_t)b * H + h) * S + i, t = (size_t)b * S + i;
                double D = 0.0;
                for (int c = 0; c < d; c++)
                    D += dout16[t * qs + (size_t)h * d + c] * widen(fmt, p.out_half[t * p.ld_out + (size_t)h * d + c]);
                p.lse_f[stat] = (float)p.lse[stat];
                p.D[stat] = (float)D;
            }
    return p;
}

// ||got - ref|| / ||ref||; infinity when an element is not finite (poison left behind).
double rel_err(const float *got, const double *ref, size_t n) {
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        diff += (got[i] - ref[i]) * (got[i] - ref[i]);
        norm += ref[i] * ref[i];
    }
    return norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
}

// The largest ||got_r - ref_r|| / max(||ref_r||, the rows' mean norm) over the rows r of
// `width` elements (one token's one head; the floor: a gradient row that nearly cancels, a
// token alone in its document, is rounding noise relative to itself): a key masked wrongly
// in one row, lost in a norm over all rows, shows here.
double worst_row_err(const float *got, const double *ref, size_t n, size_t width) {
    const size_t rows = n / width;
    std::vector<double> diff(rows, 0.0), norm(rows, 0.0);
    double mean = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        diff[i / width] += (got[i] - ref[i]) * (got[i] - ref[i]);
        norm[i / width] += ref[i] * ref[i];
    }
    for (size_t r = 0; r < rows; r++) mean += sqrt(norm[r]) / rows;
    double worst = 0.0;
    for (size_t r = 0; r < rows; r++) worst = fmax(worst, sqrt(diff[r]) / fmax(sqrt(norm[r]), mean));
    return worst;
}

// The 16-bit dS blocks of one kv head (attention_mma.cu's am_ds_bytes_per_kv).
size_t ds_bytes_per_kv(const shape &sh) {
    const size_t tiles = (size_t)(sh.seq + 63) / 64;
    return (size_t)sh.batch * (sh.heads / sh.kv) * tiles * (tiles + 1) / 2 * 64 * 64 * 2;
}

// Scratch budgets for the backward: none (dq recomputes dS), one kv head's dS, two (an
// uneven last chunk with 3 kv heads), all of them.
std::vector<size_t> budgets_for(const shape &sh) {
    const size_t per_kv = ds_bytes_per_kv(sh);
    std::vector<size_t> b = {0, per_kv};
    if (sh.kv >= 3) b.push_back(2 * per_kv);
    if (sh.kv >= 2) b.push_back(AM_DS_BUDGET);
    return b;
}

struct results {
    std::vector<uint16_t> out_half;
    std::vector<float> out, lse;
    std::vector<std::vector<float>> dq, dk, dv;  // per budget
};

template <typename T>
T *device_copy(const std::vector<T> &x) {
    T *d = (T *)emu_device_alloc(x.size() * sizeof(T) + 1);
    memcpy(d, x.data(), x.size() * sizeof(T));
    return d;
}

std::vector<float> nan_vector(size_t n) { return std::vector<float>(n, NAN); }

results run_kernels(const problem &p, const emu_options &options, const std::string &what) {
    emu_set_options(options);
    const shape &sh = p.sh;
    results r;
    uint16_t *q = device_copy(p.q), *k = device_copy(p.k), *v = device_copy(p.v);
    int32_t *doc = p.doc.empty() ? nullptr : device_copy(p.doc);
    std::vector<uint16_t> out_half(p.tokens * p.ld_out);
    for (size_t t = 0; t < p.tokens; t++)
        for (int c = 0; c < p.ld_out; c++) out_half[t * p.ld_out + c] = c < sh.heads * sh.d ? poison(p.fmt) : GAP;
    // The forward with 16 rows per warp (tiles of 64), then with 32 (tiles of 128): the same bits.
    for (int warp_rows : {16, 32}) {
        uint16_t *d_out_half = device_copy(out_half);
        float *d_out = sh.fp32_out ? device_copy(nan_vector(p.q_n)) : nullptr;
        float *d_lse = device_copy(nan_vector(p.stat_n));
        const bool fwd = attention_mma_fwd(p.fmt, warp_rows, d_out_half, p.ld_out, d_out, d_lse, q, k, v, doc,
                                           sh.batch, sh.seq, sh.heads, sh.kv, sh.d, p.scale);
        CHECK_MSG(fwd, "%s: attention_mma_fwd refused the shape (%d rows per warp)", what.c_str(), warp_rows);
        std::vector<uint16_t> got_half(d_out_half, d_out_half + out_half.size());
        std::vector<float> got_out, got_lse(d_lse, d_lse + p.stat_n);
        if (d_out) got_out.assign(d_out, d_out + p.q_n);
        if (warp_rows == 16) {
            r.out_half = got_half, r.out = got_out, r.lse = got_lse;
        } else {
            CHECK_MSG(got_half == r.out_half && got_out == r.out && got_lse == r.lse, "%s: the forward with 32 rows per warp differs from 16's", what.c_str());
        }
        for (void *x : {(void *)d_out_half, (void *)d_out, (void *)d_lse}) emu_device_free(x);
    }

    // The backward from the reference's forward (compared alone).
    // dout rounded as attention_half.cu's pass that makes D rounds it
    std::vector<uint16_t> dout_bits(p.q_n);
    for (size_t i = 0; i < p.q_n; i++) dout_bits[i] = to_bits(p.fmt, p.dout[i]);
    uint16_t *dout = device_copy(dout_bits);
    float *lse = device_copy(p.lse_f), *D = device_copy(p.D);
    for (size_t budget : budgets_for(sh)) {
        float *dq = device_copy(nan_vector(p.q_n)), *dk = device_copy(nan_vector(p.kv_n)),
              *dv = device_copy(nan_vector(p.kv_n));
        emu_scratch_peak_reset();
        const bool bwd = attention_mma_bwd(p.fmt, dq, dk, dv, dout, q, k, v, lse, D, doc, sh.batch, sh.seq, sh.heads,
                                           sh.kv, sh.d, p.scale, budget);
        CHECK_MSG(bwd, "%s: attention_mma_bwd refused the shape (budget %zu)", what.c_str(), budget);
        // the estimate counts the rounded dout, which the caller (here: the test) allocates
        const size_t said = attention_mma_bwd_scratch_bytes(sh.batch, sh.seq, sh.heads, sh.kv, sh.d, budget) -
                            dout_bits.size() * sizeof(uint16_t);
        CHECK_MSG(emu_scratch_peak() == said, "%s: budget %zu: the backward allocated %zu bytes of scratch, the estimate says %zu",
                  what.c_str(), budget, emu_scratch_peak(), said);
        r.dq.emplace_back(dq, dq + p.q_n);
        r.dk.emplace_back(dk, dk + p.kv_n);
        r.dv.emplace_back(dv, dv + p.kv_n);
        emu_device_free(dq);
        emu_device_free(dk);
        emu_device_free(dv);
    }
    for (void *x : {(void *)q, (void *)k, (void *)v, (void *)doc, (void *)dout, (void *)lse, (void *)D})
        emu_device_free(x);
    // A failure the backend recorded instead of stopping (kernels/cuda/cuda_status.h).
    char message[1024];
    CHECK_MSG(ctune_cuda_take_error(message, sizeof message) == 0, "%s: %s", what.c_str(), message);
    return r;
}

// Bounds on the relative errors over a whole tensor and over its worst row (a token's head):
// a few times what the kernels' arithmetic gives (bf16 has 8 significant bits, fp16 11;
// the printed errors of each case are the measurement), so that one element computed
// wrongly shows.
struct bound {
    double all, row;
};
struct bounds {
    bound out, lse, grad;
};
bounds bounds_for(kernels_half_format fmt) {
    // Measured (bf16 / fp16): out 1.8e-3 / 2.3e-4, worst row 2.7e-3 / 3.6e-4; lse (fp32
    // arithmetic) 4.8e-8, worst 2.2e-7; gradients 3.5e-3 / 4.2e-4, worst row 1.6e-2 / 2.6e-3.
    const bound lse = {3e-7, 1e-6};
    if (fmt == KERNELS_BF16) return bounds{{5e-3, 8e-3}, lse, {1e-2, 4e-2}};
    return bounds{{7e-4, 1.2e-3}, lse, {1.5e-3, 7e-3}};
}

// Checks got against ref (rows of width elements) within b; returns the two errors.
struct errors {
    double all = 0.0, row = 0.0;
    void add(const errors &e) {
        all = fmax(all, e.all);
        row = fmax(row, e.row);
    }
};
errors check_close(const char *name, const char *what, const float *got, const double *ref, size_t n, size_t width,
                   const bound &b) {
    errors e;
    e.all = rel_err(got, ref, n);
    e.row = worst_row_err(got, ref, n, width);
    CHECK_MSG(e.all < b.all && e.row < b.row, "%s: %s rel err %.3g (bound %g), worst row %.3g (bound %g)", name, what,
              e.all, b.all, e.row, b.row);
    return e;
}

void check_case(const shape &sh, kernels_half_format fmt) {
    char name[160];
    snprintf(name, sizeof name, "%s b %d seq %d heads %d/%d d %d docs %d ld +%d%s", fmt == KERNELS_BF16 ? "bf16" : "fp16",
             sh.batch, sh.seq, sh.heads, sh.kv, sh.d, sh.doc_len, sh.ld_pad, sh.fp32_out ? " out" : "");
    const std::string what = name;
    const problem p = make_problem(sh, fmt);
    const bounds tol = bounds_for(fmt);
    const results r = run_kernels(p, emu_options(), what);

    // Forward: every element written, the gap kept, values near the reference.
    size_t unwritten = 0, gap_changed = 0;
    const size_t width = (size_t)sh.heads * sh.d;
    std::vector<float> widened(p.q_n);
    for (size_t t = 0; t < p.tokens; t++)
        for (int c = 0; c < p.ld_out; c++) {
            const uint16_t h = r.out_half[t * p.ld_out + c];
            if ((size_t)c < width) {
                unwritten += h == poison(fmt);
                widened[t * width + c] = widen(fmt, h);
            } else {
                gap_changed += h != GAP;
            }
        }
    CHECK_MSG(unwritten == 0, "%s: %zu out_half elements not written", name, unwritten);
    CHECK_MSG(gap_changed == 0, "%s: %zu elements between out_half's rows changed", name, gap_changed);
    errors e_out = check_close(name, "out_half", widened.data(), p.out.data(), p.q_n, sh.d, tol.out);
    if (sh.fp32_out) {
        e_out.add(check_close(name, "out", r.out.data(), p.out.data(), p.q_n, sh.d, tol.out));
        size_t differ = 0;
        for (size_t t = 0; t < p.tokens; t++)
            for (size_t c = 0; c < width; c++)
                differ += to_bits(fmt, r.out[t * width + c]) != r.out_half[t * p.ld_out + c];
        CHECK_MSG(differ == 0, "%s: %zu out_half elements are not to_half(out)", name, differ);
    }
    const errors e_lse = check_close(name, "lse", r.lse.data(), p.lse.data(), p.stat_n, 1, tol.lse);

    // Backward, every budget: near the reference (with one key dq and dk are zero up to
    // rounding: an absolute bound), dk/dv the same bits every way, dq the same bits across
    // the budgets that store dS.
    const std::vector<size_t> budgets = budgets_for(sh);
    errors e_grad;
    for (size_t i = 0; i < budgets.size(); i++) {
        char what_b[64];
        if (sh.seq > 1) {
            snprintf(what_b, sizeof what_b, "budget %zu: dq", budgets[i]);
            e_grad.add(check_close(name, what_b, r.dq[i].data(), p.dq.data(), p.q_n, sh.d, tol.grad));
            snprintf(what_b, sizeof what_b, "budget %zu: dk", budgets[i]);
            e_grad.add(check_close(name, what_b, r.dk[i].data(), p.dk.data(), p.kv_n, sh.d, tol.grad));
        } else {
            const double eq = rel_err(r.dq[i].data(), p.dq.data(), p.q_n), ek = rel_err(r.dk[i].data(), p.dk.data(), p.kv_n);
            CHECK_MSG(eq < 1e-4 && ek < 1e-4, "%s: dq, dk of one key not zero (%.3g, %.3g)", name, eq, ek);
        }
        snprintf(what_b, sizeof what_b, "budget %zu: dv", budgets[i]);
        e_grad.add(check_close(name, what_b, r.dv[i].data(), p.dv.data(), p.kv_n, sh.d, tol.grad));
        CHECK_MSG(r.dk[i] == r.dk[0] && r.dv[i] == r.dv[0], "%s: budget %zu: dk/dv differ from budget 0's", name,
                  budgets[i]);
        if (i > 1) CHECK_MSG(r.dq[i] == r.dq[1], "%s: budget %zu: dq differs from budget %zu's", name, budgets[i], budgets[1]);
    }

    // The same bits under another schedule, with copies done at once, buffers guarded before.
    emu_options other;
    other.schedule_seed = 7;
    other.eager_copies = true;
    other.guard_after = false;
    const results again = run_kernels(p, other, what + " (shuffled)");
    CHECK_MSG(again.out_half == r.out_half && again.out == r.out && again.lse == r.lse,
              "%s: the forward differs under another thread schedule", name);
    CHECK_MSG(again.dq == r.dq && again.dk == r.dk && again.dv == r.dv,
              "%s: the backward differs under another thread schedule", name);
    printf("%-50s out %.1e/%.1e lse %.1e/%.1e grads %.1e/%.1e\n", name, e_out.all, e_out.row, e_lse.all, e_lse.row,
           e_grad.all, e_grad.row);
}

}  // namespace

int main(void) {
    const shape shapes[] = {
        {2, 7, 4, 2, 64, 0, 3, true},      // one ragged tile, GQA, rows not 4-byte aligned
        {2, 130, 4, 2, 64, 37, 0, false},  // documents, three tiles
        {1, 200, 2, 2, 64, 0, 0, true},    // fully visible tiles, MHA
        {1, 150, 6, 3, 64, 0, 16, false},  // 3 kv heads: an uneven last chunk
        {1, 130, 2, 1, 128, 29, 0, true},  // head_dim 128, documents
        {2, 96, 2, 2, 128, 0, 3, false},
        {1, 1, 2, 1, 64, 0, 0, true},      // one token
    };
    for (kernels_half_format fmt : {KERNELS_BF16, KERNELS_FP16})
        for (const shape &sh : shapes) check_case(sh, fmt);
    return check_summary("test_attention_mma_emu");
}
