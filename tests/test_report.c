/* Tests for train/png and train/report: the checksums against their published check values,
 * the PNG container (signature, IHDR, chunk CRCs), reading run directories (recipe
 * differences by meaning, metrics with a torn last line, unfinished runs), the ranking, the
 * Markdown and CSV tables, and the chart's pixels. tests/sweep.sh decodes a real report's PNG
 * with Python's zlib. */
#define _XOPEN_SOURCE 700
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/fsutil.h"
#include "train/png.h"
#include "train/recipe.h"
#include "train/report.h"

static char tmpdir[256];

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void test_checksums(void) {
    /* The CRC-32 check value (ISO 3309 / PNG) and Adler-32 of "Wikipedia" (RFC 1950 examples). */
    CHECK(png_crc32(0, "123456789", 9) == 0xCBF43926u);
    CHECK(png_crc32(png_crc32(0, "1234", 4), "56789", 5) == 0xCBF43926u);
    CHECK(png_adler32(1, "Wikipedia", 9) == 0x11E60398u);
    CHECK(png_adler32(1, "", 0) == 1u);
    /* Long input crosses the 5552-byte reduction boundary: compare with the definition. */
    uint8_t *big = malloc(100000);
    uint64_t a = 1, b = 0;
    for (int i = 0; i < 100000; i++) {
        big[i] = (uint8_t)(i * 7 + (i >> 8));
        a = (a + big[i]) % 65521, b = (b + a) % 65521;
    }
    CHECK(png_adler32(1, big, 100000) == (uint32_t)(b << 16 | a));
    free(big);
}

static void test_png_container(void) {
    int w = 37, h = 11;
    uint8_t *rgb = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++) rgb[i] = (uint8_t)(i % 3 == 0 ? 255 : i / 50);
    uint8_t *png;
    size_t size;
    ct_error err = {{0}};
    CHECK(png_encode_rgb(rgb, w, h, &png, &size, &err) == 0);
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    CHECK(size > 8 + 25 + 12 + 12 && !memcmp(png, signature, 8));
    size_t pos = 8;
    int chunks = 0;
    const char *expected[3] = {"IHDR", "IDAT", "IEND"};
    while (pos + 12 <= size && chunks < 3) {
        uint32_t len = be32(png + pos);
        CHECK(pos + 12 + len <= size);
        if (pos + 12 + len > size) break;
        CHECK(!memcmp(png + pos + 4, expected[chunks], 4));
        CHECK(png_crc32(0, png + pos + 4, len + 4) == be32(png + pos + 8 + len));
        if (chunks == 0) {
            CHECK(len == 13 && be32(png + pos + 8) == (uint32_t)w && be32(png + pos + 12) == (uint32_t)h);
            CHECK(png[pos + 16] == 8 && png[pos + 17] == 2);
        }
        if (chunks == 1) CHECK(png[pos + 8] == 0x78 && ((png[pos + 8] << 8) | png[pos + 9]) % 31 == 0);
        pos += 12 + len;
        chunks++;
    }
    CHECK(chunks == 3 && pos == size);
    free(png);
    CHECK(png_encode_rgb(rgb, 0, h, &png, &size, &err) == -1);
    free(rgb);
    /* A flat image compresses to a small fraction: the matches work. */
    uint8_t *flat = malloc(400 * 300 * 3);
    memset(flat, 255, 400 * 300 * 3);
    CHECK(png_encode_rgb(flat, 400, 300, &png, &size, &err) == 0);
    CHECK_MSG(size < 8000, "a white 400x300 image took %zu bytes", size);
    free(png);
    free(flat);
}

/* A run directory as `ctune train` leaves it; summary NULL: unfinished. */
static void make_run(const char *name, const char *lr_text, int r_rank, const char *metrics, const char *summary) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    ct_error err = {{0}};
    CHECK(make_dirs(dir, &err) == 0);
    recipe r;
    snprintf(path, sizeof path, "%s/src.yaml", dir);
    char text[1200];
    snprintf(text, sizeof text, "name: \"%s\"\nmodel: {path: m}\ndata: {train: t.h5}\noptim: {lr: %s}\nlora: {r: %d}\n"
             "checkpoint: {output_dir: \"%s\"}\n", name, lr_text, r_rank, dir);
    check_write_text(path, text);
    CHECK_MSG(recipe_load(&r, path, &err) == 0, "%s", err.msg);
    snprintf(path, sizeof path, "%s/recipe.resolved.yaml", dir);
    FILE *f = fopen(path, "w");
    CHECK(f && recipe_write(&r, f, &err) == 0);
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    check_write_text(path, metrics);
    if (summary) {
        snprintf(path, sizeof path, "%s/summary.json", dir);
        check_write_text(path, summary);
    }
}

static void test_report_runs(void) {
    /* lr written differently but equal by value in a and c: only r and lr differ overall. */
    make_run("a,1", "1e-3", 4, "{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"loss\":2.0}\n{\"step\":2,\"eval_loss\":2.5,\"eval_tokens\":9}\n",
             "{\"steps\": 2, \"train_loss\": 2.0, \"eval_loss\": 2.5, \"eval_accuracy\": 0.25, "
             "\"tokens_per_second\": 1000, \"wall_seconds\": 75, \"world_size\": 2, "
             "\"peak_memory_bytes\": 1610612736, \"peak_memory_rank\": 1}\n");
    make_run("b", "3e-3", 4, "{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"loss\":1.5}\n{\"step\":2,\"eval_loss\":1.9}\n",
             "{\"steps\": 2, \"train_loss\": 1.5, \"eval_loss\": 1.9, \"eval_accuracy\": null, "
             "\"tokens_per_second\": 900, \"wall_seconds\": 3.5, \"world_size\": 1}\n");
    make_run("c", "0.001", 8, "{\"step\":1,\"loss\":2.9}\n{\"step\":2,\"lo", NULL); /* killed mid-line */
    make_run("d", "0.001", 8, "{\"step\":1,\"loss\":2.9}\nnot json\n{\"step\":3,\"loss\":1}\n", NULL);

    report rep = {0};
    ct_error err = {{0}};
    char dir[512];
    const char *order[3] = {"c", "a,1", "b"};
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, "%s/%s", tmpdir, order[i]);
        CHECK_MSG(report_add(&rep, dir, &err) == 0, "%s", err.msg);
    }
    snprintf(dir, sizeof dir, "%s/d", tmpdir);
    report bad = {0};
    CHECK(report_add(&bad, dir, &err) == -1);
    CHECK_CONTAINS(err.msg, "metrics.jsonl:2");
    report_free(&bad);
    snprintf(dir, sizeof dir, "%s/none", tmpdir);
    CHECK(report_add(&bad, dir, &err) == -1);
    CHECK_CONTAINS(err.msg, "none");
    report_free(&bad);

    CHECK(rep.n_runs == 3);
    if (rep.n_runs != 3) return;
    report_finish(&rep);
    /* b has the lowest eval loss, then a; c never finished. */
    CHECK(!strcmp(rep.runs[0].label, "b") && !strcmp(rep.runs[1].label, "a,1") && !strcmp(rep.runs[2].label, "c"));
    CHECK(rep.runs[2].complete == false && rep.runs[2].steps == 1 && rep.runs[2].train_loss == 2.9);
    CHECK(rep.runs[2].train.n == 1);
    CHECK(rep.runs[1].eval.n == 1 && rep.runs[1].eval.value[0] == 2.5 && rep.runs[1].train.n == 2);
    CHECK(isnan(rep.runs[0].eval_accuracy) && rep.runs[1].eval_accuracy == 0.25);
    /* name and checkpoint.output_dir differ too but are not shown. */
    CHECK_MSG(rep.n_diff == 2, "%d differing keys", rep.n_diff);
    bool lr = false, r = false;
    for (int i = 0; i < rep.n_diff; i++) {
        lr |= !strcmp(rep.diff_keys[i], "optim.lr");
        r |= !strcmp(rep.diff_keys[i], "lora.r");
    }
    CHECK(lr && r);
    CHECK(!strcmp(report_value(&rep.runs[0], "lora.r"), "4"));

    textbuf md = {0}, csv = {0};
    report_markdown(&rep, &md);
    report_csv(&rep, &csv);
    char *row_b = strstr(md.data, "| 1 | b |"), *row_a = strstr(md.data, "| 2 | a,1 |");
    CHECK(row_b && row_a && strstr(md.data, "| 3 | c (unfinished) |"));
    CHECK(row_a && strstr(row_a, "2.0000 | 2.5000 | 25.0% | 1000 | 1m15s | 1.50 GiB |"));
    CHECK(row_b && strstr(row_b, "1.5000 | 1.9000 | - | 900 | 3.5 s | - |")); /* a summary from before the key */
    CHECK(strstr(csv.data, "rank,run,dir,") == csv.data);
    CHECK_CONTAINS(csv.data, "\n2,\"a,1\",");
    CHECK_CONTAINS(csv.data, ",finished,2,2,2.5,0.25,1000,75,2,1610612736\n");
    CHECK_CONTAINS(csv.data, ",finished,2,1.5,1.9,,900,3.5,1,\n");
    CHECK_CONTAINS(csv.data, ",unfinished,1,2.9,,,,,,\n");
    int lines = 0;
    for (const char *p = csv.data; *p; p++) lines += *p == '\n';
    CHECK(lines == 4);
    textbuf_free(&md), textbuf_free(&csv);

    /* The chart: white corners, every run's colour present (first: tab10 blue). */
    unsigned char *rgb;
    int w = 800, h = 500;
    CHECK(report_plot(&rep, w, h, &rgb, &err) == 0);
    CHECK(rgb[0] == 255 && rgb[1] == 255 && rgb[2] == 255);
    const uint8_t colours[3][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}};
    for (int k = 0; k < 3; k++) {
        int count = 0;
        for (int i = 0; i < w * h; i++)
            count += !memcmp(rgb + (size_t)i * 3, colours[k], 3);
        CHECK_MSG(count > 50, "colour %d: %d pixels", k, count);
    }
    free(rgb);
    CHECK(report_plot(&rep, 10, 10, &rgb, &err) == -1);
    snprintf(dir, sizeof dir, "%s/chart.png", tmpdir);
    CHECK(report_write_png(&rep, dir, &err) == 0);
    CHECK(path_exists(dir));
    report_free(&rep);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ctune_test_report_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_checksums();
    test_png_container();
    test_report_runs();
    ct_error err;
    remove_tree(tmpdir, &err);
    return check_summary("test_report");
}
