/* ctune report RUN_DIR... [-o PREFIX] */
#include <stdio.h>
#include <string.h>

#include "train/cli.h"
#include "train/fsutil.h"
#include "train/report.h"

static void report_usage(FILE *out) {
    fprintf(out,
            "usage: ctune report RUN_DIR... [-o PREFIX]\n"
            "\n"
            "Compares training runs: prints a Markdown table — the run, the recipe keys whose\n"
            "values differ between the runs, steps, final train loss, eval loss, answer accuracy,\n"
            "tokens/s and wall time — best first (by eval loss, else by train loss; unfinished\n"
            "runs last), and writes PREFIX.md, PREFIX.csv and PREFIX.png (the loss curves).\n"
            "A RUN_DIR holds recipe.resolved.yaml, summary.json and metrics.jsonl as\n"
            "`ctune train` writes them; a sweep's output directory stands for all its points.\n"
            "\n"
            "  -o PREFIX   where the files go (default: <sweep dir>/report for one sweep, else report)\n"
            "  --help      this text\n");
}

static int write_text(const char *path, const textbuf *b, ct_error *err) {
    if (b->failed) return ct_fail(err, "%s: out of memory", path);
    return write_file_atomic(path, b->data ? b->data : "", b->len, err);
}

int cmd_report(int argc, char **argv) {
    const char *prefix = NULL;
    int n_dirs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            report_usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            prefix = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "ctune report: unexpected argument '%s'\n", argv[i]);
            report_usage(stderr);
            return 2;
        } else {
            n_dirs++;
        }
    }
    if (!n_dirs) {
        report_usage(stderr);
        return 2;
    }
    char default_prefix[1100];
    if (!prefix) {
        const char *only = NULL;
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], "-o")) i++;
            else only = argv[i];
        char manifest[1100];
        snprintf(manifest, sizeof manifest, "%s/sweep.json", only);
        if (n_dirs == 1 && path_exists(manifest)) snprintf(default_prefix, sizeof default_prefix, "%s/report", only);
        else snprintf(default_prefix, sizeof default_prefix, "report");
        prefix = default_prefix;
    }

    ct_error err = {{0}};
    report rep = {0};
    int status = 0;
    for (int i = 1; i < argc && !status; i++) {
        if (!strcmp(argv[i], "-o")) i++;
        else status = report_add(&rep, argv[i], &err);
    }
    if (rep.notes.len) fprintf(stderr, "%s", rep.notes.data);
    textbuf md = {0}, csv = {0};
    char path[1200], parent[1200];
    if (!status) {
        report_finish(&rep);
        report_markdown(&rep, &md);
        report_csv(&rep, &csv);
        path_parent(prefix, parent, sizeof parent);
        status = make_dirs(parent, &err);
    }
    if (!status) {
        char png_name[1200];
        snprintf(path, sizeof path, "%s.png", prefix);
        path_basename(path, png_name, sizeof png_name);
        status = report_write_png(&rep, path, &err);
        textbuf doc = {0};
        textbuf_printf(&doc, "# Run report\n\n%d run%s, best first. Loss curves: ![loss curves](%s)\n\n",
                       rep.n_runs, rep.n_runs == 1 ? "" : "s", png_name);
        textbuf_put(&doc, md.data, md.len);
        snprintf(path, sizeof path, "%s.md", prefix);
        if (!status) status = write_text(path, &doc, &err);
        textbuf_free(&doc);
        snprintf(path, sizeof path, "%s.csv", prefix);
        if (!status) status = write_text(path, &csv, &err);
    }
    if (!status) {
        fputs(md.data, stdout);
        printf("\nwrote %s.md, %s.csv, %s.png\n", prefix, prefix, prefix);
    } else {
        fprintf(stderr, "ctune report: error: %s\n", err.msg);
    }
    textbuf_free(&md), textbuf_free(&csv);
    report_free(&rep);
    return status ? 1 : 0;
}
