/* report: the loss chart — a small rasteriser (lines, rectangles, a 5x7 bitmap font) and the
 * plot drawn with it, encoded by png.h. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/png.h"
#include "train/report.h"

/* ---- font: printable ASCII, 5 pixels wide; rows 0-6 hold capitals and digits, rows 7-8
 * the descenders of g j p q y , ; — bit 4 is the leftmost column ---- */

#define GLYPH_W 5
#define GLYPH_H 7    /* cap height: what layout and centring use */
#define GLYPH_ROWS 9 /* with descenders */
static const uint8_t FONT[95][GLYPH_ROWS] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* space */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00, 0x00}, /* ! */
    {0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* " */
    {0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a, 0x00, 0x00}, /* # */
    {0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04, 0x00, 0x00}, /* $ */
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00, 0x00}, /* % */
    {0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d, 0x00, 0x00}, /* & */
    {0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ' */
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00, 0x00}, /* ( */
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00, 0x00}, /* ) */
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00, 0x00, 0x00}, /* * */
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00, 0x00, 0x00}, /* + */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c, 0x04, 0x08}, /* , */
    {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00}, /* - */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c, 0x00, 0x00}, /* . */
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00, 0x00}, /* / */
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e, 0x00, 0x00}, /* 0 */
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* 1 */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f, 0x00, 0x00}, /* 2 */
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e, 0x00, 0x00}, /* 3 */
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02, 0x00, 0x00}, /* 4 */
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e, 0x00, 0x00}, /* 5 */
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* 6 */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00, 0x00}, /* 7 */
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* 8 */
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c, 0x00, 0x00}, /* 9 */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00, 0x00, 0x00}, /* : */
    {0x00, 0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x04, 0x08}, /* ; */
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00, 0x00}, /* < */
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00}, /* = */
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00, 0x00}, /* > */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00, 0x00}, /* ? */
    {0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e, 0x00, 0x00}, /* @ */
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00, 0x00}, /* A */
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e, 0x00, 0x00}, /* B */
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e, 0x00, 0x00}, /* C */
    {0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c, 0x00, 0x00}, /* D */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f, 0x00, 0x00}, /* E */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10, 0x00, 0x00}, /* F */
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f, 0x00, 0x00}, /* G */
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00, 0x00}, /* H */
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* I */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c, 0x00, 0x00}, /* J */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00, 0x00}, /* K */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f, 0x00, 0x00}, /* L */
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00, 0x00}, /* M */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00, 0x00}, /* N */
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* O */
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10, 0x00, 0x00}, /* P */
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d, 0x00, 0x00}, /* Q */
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11, 0x00, 0x00}, /* R */
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e, 0x00, 0x00}, /* S */
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00}, /* T */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* U */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00, 0x00}, /* V */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a, 0x00, 0x00}, /* W */
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11, 0x00, 0x00}, /* X */
    {0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x00, 0x00}, /* Y */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f, 0x00, 0x00}, /* Z */
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e, 0x00, 0x00}, /* [ */
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00, 0x00}, /* backslash */
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e, 0x00, 0x00}, /* ] */
    {0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ^ */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f, 0x00, 0x00}, /* _ */
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ` */
    {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f, 0x00, 0x00}, /* a */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e, 0x00, 0x00}, /* b */
    {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e, 0x00, 0x00}, /* c */
    {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f, 0x00, 0x00}, /* d */
    {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e, 0x00, 0x00}, /* e */
    {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08, 0x00, 0x00}, /* f */
    {0x00, 0x00, 0x0f, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* g */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00, 0x00}, /* h */
    {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* i */
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c}, /* j */
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00, 0x00}, /* k */
    {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* l */
    {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11, 0x00, 0x00}, /* m */
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00, 0x00}, /* n */
    {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* o */
    {0x00, 0x00, 0x1e, 0x11, 0x11, 0x11, 0x1e, 0x10, 0x10}, /* p */
    {0x00, 0x00, 0x0f, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x01}, /* q */
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00, 0x00}, /* r */
    {0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e, 0x00, 0x00}, /* s */
    {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06, 0x00, 0x00}, /* t */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d, 0x00, 0x00}, /* u */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00, 0x00}, /* v */
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a, 0x00, 0x00}, /* w */
    {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x00, 0x00}, /* x */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* y */
    {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f, 0x00, 0x00}, /* z */
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02, 0x00, 0x00}, /* { */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00}, /* | */
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08, 0x00, 0x00}, /* } */
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00, 0x00}, /* ~ */
};

/* ---- canvas ---- */

typedef struct colour {
    uint8_t r, g, b;
} colour;

typedef struct canvas {
    int w, h;
    uint8_t *rgb;
    int clip_x0, clip_y0, clip_x1, clip_y1; /* drawing stays inside [x0, x1) x [y0, y1) */
} canvas;

static const colour WHITE = {255, 255, 255}, BLACK = {20, 20, 20}, FRAME = {70, 70, 70};
static const colour GRID = {228, 228, 228}, MUTED = {90, 90, 90};
/* One colour per run, cycled: the ten of matplotlib's "tab10" cycle (distinct, colour-blind aware). */
static const colour PALETTE[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                                   {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                   {188, 189, 34}, {23, 190, 207}};

static void unclip(canvas *c) {
    c->clip_x0 = 0, c->clip_y0 = 0, c->clip_x1 = c->w, c->clip_y1 = c->h;
}

static void pixel(canvas *c, int x, int y, colour col) {
    if (x < c->clip_x0 || y < c->clip_y0 || x >= c->clip_x1 || y >= c->clip_y1) return;
    uint8_t *p = c->rgb + ((size_t)y * c->w + x) * 3;
    p[0] = col.r, p[1] = col.g, p[2] = col.b;
}

static void fill_rect(canvas *c, int x0, int y0, int x1, int y1, colour col) {
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) pixel(c, x, y, col);
}

static void frame_rect(canvas *c, int x0, int y0, int x1, int y1, colour col) {
    fill_rect(c, x0, y0, x1, y0 + 1, col);
    fill_rect(c, x0, y1 - 1, x1, y1, col);
    fill_rect(c, x0, y0, x0 + 1, y1, col);
    fill_rect(c, x1 - 1, y0, x1, y1, col);
}

/* Bresenham, each point a thickness x thickness square. */
static void line(canvas *c, int x0, int y0, int x1, int y1, colour col, int thickness) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int e = dx + dy, half = thickness / 2;
    for (;;) {
        fill_rect(c, x0 - half, y0 - half, x0 - half + thickness, y0 - half + thickness, col);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * e;
        if (e2 >= dy) e += dy, x0 += sx;
        if (e2 <= dx) e += dx, y0 += sy;
    }
}

static int text_width(const char *s, int scale) {
    int n = (int)strlen(s);
    return n ? n * (GLYPH_W + 1) * scale - scale : 0;
}

/* Top-left at (x, y); characters outside printable ASCII are drawn as '?'. */
static void text(canvas *c, int x, int y, const char *s, colour col, int scale) {
    for (; *s; s++, x += (GLYPH_W + 1) * scale) {
        unsigned ch = (unsigned char)*s;
        const uint8_t *g = FONT[(ch >= 32 && ch < 127 ? ch : '?') - 32];
        for (int row = 0; row < GLYPH_ROWS; row++)
            for (int col_i = 0; col_i < GLYPH_W; col_i++)
                if (g[row] & (0x10 >> col_i))
                    fill_rect(c, x + col_i * scale, y + row * scale, x + (col_i + 1) * scale,
                              y + (row + 1) * scale, col);
    }
}

/* ---- the chart ---- */

/* A step of 1, 2 or 5 times a power of ten giving about `target` intervals over range. */
static double nice_step(double range, int target) {
    double raw = range / target, magnitude = pow(10.0, floor(log10(raw))), f = raw / magnitude;
    return (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * magnitude;
}

typedef struct axis {
    double lo, hi, step;
    int decimals;
} axis;

/* An axis that starts and ends on a tick and covers [min, max]. */
static axis make_axis(double min, double max, int target) {
    if (!(max > min)) min -= 0.5, max += 0.5;
    axis a;
    a.step = nice_step(max - min, target);
    a.lo = floor(min / a.step + 1e-9) * a.step;
    a.hi = ceil(max / a.step - 1e-9) * a.step;
    if (a.hi <= a.lo) a.hi = a.lo + a.step;
    int d = -(int)floor(log10(a.step) + 1e-9);
    a.decimals = d > 0 ? d : 0;
    return a;
}

typedef struct plot_area {
    int left, top, right, bottom; /* pixels, right and bottom exclusive */
    axis x, y;
} plot_area;

static double to_px_x(const plot_area *p, double v) {
    return p->left + (v - p->x.lo) / (p->x.hi - p->x.lo) * (p->right - 1 - p->left);
}
static double to_px_y(const plot_area *p, double v) {
    return p->bottom - 1 - (v - p->y.lo) / (p->y.hi - p->y.lo) * (p->bottom - 1 - p->top);
}

static void draw_axes(canvas *c, const plot_area *p, int scale) {
    char label[48];
    int char_h = GLYPH_H * scale;
    int n_x = (int)floor((p->x.hi - p->x.lo) / p->x.step + 0.5), n_y = (int)floor((p->y.hi - p->y.lo) / p->y.step + 0.5);
    for (int i = 0; i <= n_y; i++) {
        double v = p->y.lo + i * p->y.step;
        int py = (int)lround(to_px_y(p, v));
        fill_rect(c, p->left, py, p->right, py + 1, GRID);
        fill_rect(c, p->left - 6, py, p->left, py + 1, FRAME);
        snprintf(label, sizeof label, "%.*f", p->y.decimals, v);
        text(c, p->left - 10 - text_width(label, scale), py - char_h / 2, label, BLACK, scale);
    }
    for (int i = 0; i <= n_x; i++) {
        double v = p->x.lo + i * p->x.step;
        int px = (int)lround(to_px_x(p, v));
        fill_rect(c, px, p->top, px + 1, p->bottom, GRID);
        fill_rect(c, px, p->bottom, px + 1, p->bottom + 6, FRAME);
        snprintf(label, sizeof label, "%.*f", p->x.decimals, v);
        text(c, px - text_width(label, scale) / 2, p->bottom + 10, label, BLACK, scale);
    }
    frame_rect(c, p->left, p->top, p->right, p->bottom, FRAME);
    text(c, (p->left + p->right - text_width("step", scale)) / 2, p->bottom + 16 + char_h, "step", BLACK, scale);
    text(c, p->left - text_width("loss", scale) / 2, p->top - char_h - 12, "loss", BLACK, scale);
}

static void marker(canvas *c, int x, int y, colour col) {
    fill_rect(c, x - 4, y - 4, x + 5, y + 5, BLACK);
    fill_rect(c, x - 3, y - 3, x + 4, y + 3 + 1, col);
}

static void draw_run(canvas *c, const plot_area *p, const report_run *r, colour col) {
    c->clip_x0 = p->left + 1, c->clip_y0 = p->top + 1, c->clip_x1 = p->right - 1, c->clip_y1 = p->bottom - 1;
    for (int i = 0; i < r->train.n; i++) {
        int x1 = (int)lround(to_px_x(p, r->train.step[i])), y1 = (int)lround(to_px_y(p, r->train.value[i]));
        if (i == 0 && r->train.n == 1) marker(c, x1, y1, col);
        if (i == 0) continue;
        int x0 = (int)lround(to_px_x(p, r->train.step[i - 1])), y0 = (int)lround(to_px_y(p, r->train.value[i - 1]));
        line(c, x0, y0, x1, y1, col, 2);
    }
    unclip(c); /* markers on the frame (the last step) are drawn whole */
    for (int i = 0; i < r->eval.n; i++)
        marker(c, (int)lround(to_px_x(p, r->eval.step[i])), (int)lround(to_px_y(p, r->eval.value[i])), col);
}

#define LEGEND_CHARS 28

/* "3 name": the rank (as in the table, since colours repeat after ten runs) and the name,
 * its middle elided when long — run names tend to differ at the end. */
static void legend_label(int rank, const report_run *r, char *out, size_t size) {
    size_t n = strlen(r->label), tail = LEGEND_CHARS - 15;
    if (n <= LEGEND_CHARS) snprintf(out, size, "%d %s", rank, r->label);
    else snprintf(out, size, "%d %.12s...%s", rank, r->label, r->label + n - tail);
}

static void draw_legend(canvas *c, const report *rep, int x0, int y0, int scale) {
    int row_h = GLYPH_H * scale + 10, width = 0;
    char label[LEGEND_CHARS + 16];
    for (int i = 0; i < rep->n_runs; i++) {
        legend_label(i + 1, &rep->runs[i], label, sizeof label);
        int w = text_width(label, scale);
        if (w > width) width = w;
    }
    int rows = rep->n_runs < 1 ? 1 : rep->n_runs;
    fill_rect(c, x0, y0, x0 + width + 56, y0 + rows * row_h + 12, WHITE);
    frame_rect(c, x0, y0, x0 + width + 56, y0 + rows * row_h + 12, FRAME);
    for (int i = 0; i < rep->n_runs; i++) {
        colour col = PALETTE[i % 10];
        int y = y0 + 8 + i * row_h, mid = y + GLYPH_H * scale / 2;
        fill_rect(c, x0 + 8, mid - 1, x0 + 38, mid + 1, col);
        legend_label(i + 1, &rep->runs[i], label, sizeof label);
        text(c, x0 + 46, y, label, BLACK, scale);
    }
}

int report_plot(const report *rep, int width, int height, unsigned char **rgb_out, ct_error *err) {
    *rgb_out = NULL;
    if (width < 320 || height < 240 || width > 8192 || height > 8192)
        return ct_fail(err, "report: chart size %dx%d outside 320x240..8192x8192", width, height);
    canvas c = {.w = width, .h = height, .rgb = malloc((size_t)width * height * 3)};
    if (!c.rgb) return ct_fail(err, "report: out of memory for a %dx%d chart", width, height);
    unclip(&c);
    fill_rect(&c, 0, 0, width, height, WHITE);
    int scale = width >= 900 ? 2 : 1, char_w = (GLYPH_W + 1) * scale;

    double xmax = 1, ymin = INFINITY, ymax = -INFINITY;
    for (int i = 0; i < rep->n_runs; i++) {
        const report_curve *curves[2] = {&rep->runs[i].train, &rep->runs[i].eval};
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < curves[k]->n; j++) {
                if (curves[k]->step[j] > xmax) xmax = curves[k]->step[j];
                if (curves[k]->value[j] < ymin) ymin = curves[k]->value[j];
                if (curves[k]->value[j] > ymax) ymax = curves[k]->value[j];
            }
    }
    bool empty = !isfinite(ymin);
    if (empty) ymin = 0, ymax = 1;

    int longest = 0;
    char label[LEGEND_CHARS + 16];
    for (int i = 0; i < rep->n_runs; i++) {
        legend_label(i + 1, &rep->runs[i], label, sizeof label);
        int n = (int)strlen(label);
        if (n > longest) longest = n;
    }
    int legend_w = longest * char_w + 56;
    plot_area p = {.left = 10 * char_w, .top = 3 * GLYPH_H * scale + 30,
                   .right = width - legend_w - 30, .bottom = height - 2 * GLYPH_H * scale - 40};
    if (p.right - p.left < width / 3) p.right = width - 20; /* long names: legend over the plot */
    p.x = make_axis(0, xmax, 8);
    p.y = make_axis(ymin, ymax, 6);
    p.x.decimals = p.x.step >= 1 ? 0 : p.x.decimals;

    const char *title = "loss by step (lines: train loss, squares: eval loss)";
    text(&c, (width - text_width(title, scale)) / 2, 10, title, MUTED, scale);
    draw_axes(&c, &p, scale);
    if (empty) {
        const char *none = "no losses logged yet";
        text(&c, (p.left + p.right - text_width(none, scale)) / 2, (p.top + p.bottom) / 2, none, MUTED, scale);
    }
    for (int i = 0; i < rep->n_runs; i++) draw_run(&c, &p, &rep->runs[i], PALETTE[i % 10]);
    int legend_x = p.right == width - 20 ? p.right - legend_w - 10 : p.right + 20;
    draw_legend(&c, rep, legend_x, p.top, scale);
    *rgb_out = c.rgb;
    return 0;
}

int report_write_png(const report *rep, const char *path, ct_error *err) {
    const int width = 1100, height = 640;
    unsigned char *rgb;
    if (report_plot(rep, width, height, &rgb, err)) return -1;
    int status = png_write_rgb(path, rgb, width, height, err);
    free(rgb);
    return status;
}
