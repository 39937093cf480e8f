/* tokenizer_split: the stages before the BPE model, in the order of tokenizers'
 * encode_single_sequence: added tokens (normalized=false) are cut out of the raw text, the
 * rest is normalized, added tokens with normalized=true are cut out of that, and what
 * remains goes through the pre-tokenizer steps (Split, ByteLevel) into BPE words. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/tokenizer_impl.h"

/* ---------------------------------------------------------------- regexes */

/* Oniguruma's \s (what tokenizers uses) is the White_Space property; PCRE2's UCP \s lacks
 * U+0085, so \s and \S are spelled out. Inside a character class \S is left alone. */
#define SPACE_CLASS "\\t-\\r\\p{Z}\\x{85}"

pcre2_code *tok_compile_regex(const char *pattern, size_t len, ct_error *err) {
    textbuf rewritten = {0};
    bool in_class = false;
    for (size_t i = 0; i < len; i++) {
        char c = pattern[i];
        int rc = 0;
        if (c == '\\' && i + 1 < len) {
            char e = pattern[i + 1];
            if (e == 's') rc = in_class ? tok_bytes_append(&rewritten, SPACE_CLASS, strlen(SPACE_CLASS), err)
                                        : tok_bytes_append(&rewritten, "[" SPACE_CLASS "]", strlen(SPACE_CLASS) + 2, err);
            else if (e == 'S' && !in_class)
                rc = tok_bytes_append(&rewritten, "[^" SPACE_CLASS "]", strlen(SPACE_CLASS) + 3, err);
            else rc = tok_bytes_append(&rewritten, pattern + i, 2, err);
            i++;
        } else {
            if (c == '[' && !in_class) {
                in_class = true;
                rc = tok_bytes_append(&rewritten, pattern + i, 1, err);
                /* A ']' right after '[' or '[^' is a literal member. */
                if (i + 1 < len && pattern[i + 1] == '^') rc = rc ? rc : tok_bytes_append(&rewritten, pattern + ++i, 1, err);
                if (i + 1 < len && pattern[i + 1] == ']') rc = rc ? rc : tok_bytes_append(&rewritten, pattern + ++i, 1, err);
            } else {
                if (c == ']' && in_class) in_class = false;
                rc = tok_bytes_append(&rewritten, pattern + i, 1, err);
            }
        }
        if (rc) {
            free(rewritten.data);
            return NULL;
        }
    }
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(rewritten.data ? rewritten.data : ""),
                                   rewritten.len, PCRE2_UTF | PCRE2_UCP, &code, &offset, NULL);
    free(rewritten.data);
    if (!re) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(code, message, sizeof message);
        ct_fail(err, "regex '%.*s' does not compile: %s", (int)len, pattern, (char *)message);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    return re;
}

/* Finds the next match at or after `from`; returns 1 found, 0 none, -1 error. */
static int regex_find(tok_encode_ctx *ctx, const pcre2_code *re, const char *s, size_t n,
                      size_t from, size_t *start, size_t *end) {
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, ctx->match,
                             ctx->match_ctx);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ctx->match);
            *start = ov[0];
            *end = ov[1];
            return 1;
        }
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !ctx->jit_stack) {
            ctx->jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
            ctx->match_ctx = pcre2_match_context_create(NULL);
            if (!ctx->jit_stack || !ctx->match_ctx)
                return ct_fail(ctx->err, "out of memory for the regex JIT stack");
            pcre2_jit_stack_assign(ctx->match_ctx, NULL, ctx->jit_stack);
            continue;
        }
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        return ct_fail(ctx->err, "regex match failed at byte %zu: %s",
                       (size_t)(s - ctx->text) + from, (char *)message);
    }
    return ct_fail(ctx->err, "regex match failed: JIT stack exhausted");
}

/* ---------------------------------------------------------------- pre-tokenizers */

static int push_range(tok_depth *d, size_t start, size_t end, bool is_match, ct_error *err) {
    if (d->n_ranges == d->ranges_cap) {
        size_t cap = d->ranges_cap ? d->ranges_cap * 2 : 64;
        tok_range *r = realloc(d->ranges, cap * sizeof *r);
        if (!r) return ct_fail(err, "out of memory splitting text");
        d->ranges = r;
        d->ranges_cap = cap;
    }
    d->ranges[d->n_ranges++] = (tok_range){start, end, is_match};
    return 0;
}

/* The pattern's matches as a cover of [0, n): (range, is_match), like Pattern::find_matches.
 * An empty match still marks a boundary. */
static int find_matches(tok_encode_ctx *ctx, const tok_pretok *step, tok_depth *d,
                        const char *s, size_t n) {
    d->n_ranges = 0;
    size_t prev = 0, from = 0;
    while (from <= n) {
        size_t start, end;
        if (step->regex) {
            int found = regex_find(ctx, step->regex, s, n, from, &start, &end);
            if (found < 0) return -1;
            if (!found) break;
        } else {
            if (step->literal_len == 0) break;
            const char *hit = tok_find(s + from, n - from, step->literal, step->literal_len);
            if (!hit) break;
            start = (size_t)(hit - s);
            end = start + step->literal_len;
        }
        if (prev != start && push_range(d, prev, start, false, ctx->err)) return -1;
        if (push_range(d, start, end, true, ctx->err)) return -1;
        prev = end;
        if (end > start) {
            from = end;
        } else { /* step over one character after an empty match */
            uint32_t cp;
            int clen = end < n ? utf8_next((const unsigned char *)s + end, n - end, &cp) : 1;
            from = end + (size_t)(clen > 0 ? clen : 1);
        }
    }
    if (prev != n && push_range(d, prev, n, false, ctx->err)) return -1;
    if (step->invert)
        for (size_t i = 0; i < d->n_ranges; i++) d->ranges[i].is_match = !d->ranges[i].is_match;
    return 0;
}

/* Rewrites the ranges by SplitDelimiterBehavior; afterwards is_match means "drop". */
static void apply_behavior(tok_depth *d, tok_split_behavior behavior) {
    size_t out = 0;
    bool previous_match = false;
    switch (behavior) {
    case SPLIT_REMOVED:
        return;
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < d->n_ranges; i++) d->ranges[i].is_match = false;
        return;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < d->n_ranges; i++) {
            tok_range r = d->ranges[i];
            if (out > 0 && r.is_match == previous_match) d->ranges[out - 1].end = r.end;
            else d->ranges[out++] = (tok_range){r.start, r.end, false};
            previous_match = r.is_match;
        }
        break;
    case SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < d->n_ranges; i++) {
            tok_range r = d->ranges[i];
            if (r.is_match && !previous_match && out > 0) d->ranges[out - 1].end = r.end;
            else d->ranges[out++] = (tok_range){r.start, r.end, false};
            previous_match = r.is_match;
        }
        break;
    case SPLIT_MERGED_WITH_NEXT: {
        /* Walk backwards so a match joins the piece after it; `out` counts from the end. */
        size_t n = d->n_ranges;
        for (size_t k = n; k-- > 0;) {
            tok_range r = d->ranges[k];
            if (r.is_match && !previous_match && out > 0) d->ranges[n - out].start = r.start;
            else d->ranges[n - ++out] = (tok_range){r.start, r.end, false};
            previous_match = r.is_match;
        }
        memmove(d->ranges, d->ranges + (n - out), out * sizeof *d->ranges);
        break;
    }
    }
    d->n_ranges = out;
}

/* at_origin: the piece starts at byte 0 of the input (Metaspace's prepend_scheme "first"). */
static int pretokenize(tok_encode_ctx *ctx, size_t level, const char *s, size_t n, bool at_origin);

static int split_step(tok_encode_ctx *ctx, size_t level, const char *s, size_t n, bool at_origin) {
    const tok_pretok *step = &ctx->tok->pretok[level];
    tok_depth *d = &ctx->depth[level];
    if (find_matches(ctx, step, d, s, n)) return -1;
    apply_behavior(d, step->behavior);
    /* Deeper levels use their own tok_depth, so d->ranges stays valid while recursing. */
    for (size_t i = 0; i < d->n_ranges; i++) {
        tok_range r = d->ranges[i];
        if (r.is_match || r.end == r.start) continue;
        if (pretokenize(ctx, level + 1, s + r.start, r.end - r.start, at_origin && r.start == 0))
            return -1;
    }
    return 0;
}

static int byte_level_map(tok_encode_ctx *ctx, size_t level, const char *s, size_t n, bool at_origin) {
    tok_depth *d = &ctx->depth[level];
    const tok_byte_alphabet *a = &ctx->tok->alphabet;
    d->mapped.len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        if (tok_bytes_append(&d->mapped, a->utf8[b], a->utf8_len[b], ctx->err)) return -1;
    }
    /* Safe to recurse with d->mapped: the deeper level writes only its own buffers. */
    return pretokenize(ctx, level + 1, d->mapped.data, d->mapped.len, at_origin);
}

static int byte_level_step(tok_encode_ctx *ctx, size_t level, const char *s, size_t n, bool at_origin) {
    const tok_pretok *step = &ctx->tok->pretok[level];
    tok_depth *d = &ctx->depth[level];
    if (step->add_prefix_space && (n == 0 || s[0] != ' ')) {
        d->prefixed.len = 0;
        if (tok_bytes_append(&d->prefixed, " ", 1, ctx->err) ||
            tok_bytes_append(&d->prefixed, s, n, ctx->err))
            return -1;
        s = d->prefixed.data;
        n = d->prefixed.len;
    }
    if (!step->regex) return byte_level_map(ctx, level, s, n, at_origin);
    if (find_matches(ctx, step, d, s, n)) return -1;
    for (size_t i = 0; i < d->n_ranges; i++) {
        tok_range r = d->ranges[i];
        if (r.end > r.start &&
            byte_level_map(ctx, level, s + r.start, r.end - r.start, at_origin && r.start == 0))
            return -1;
    }
    return 0;
}

/* Metaspace: spaces become the replacement character (U+2581), which is prepended per the
 * prepend_scheme, and with split each piece starts at a replacement character. */
static int metaspace_step(tok_encode_ctx *ctx, size_t level, const char *s, size_t n, bool at_origin) {
    const tok_pretok *step = &ctx->tok->pretok[level];
    tok_depth *d = &ctx->depth[level];
    const char *rep = step->literal;
    size_t rep_len = step->literal_len;
    d->prefixed.len = 0;
    for (size_t i = 0; i < n; i++)
        if (tok_bytes_append(&d->prefixed, s[i] == ' ' ? rep : s + i, s[i] == ' ' ? rep_len : 1, ctx->err))
            return -1;
    bool starts = d->prefixed.len >= rep_len && memcmp(d->prefixed.data, rep, rep_len) == 0;
    if (!starts && (step->prepend == PREPEND_ALWAYS || (step->prepend == PREPEND_FIRST && at_origin))) {
        size_t len = d->prefixed.len;
        if (tok_bytes_append(&d->prefixed, rep, rep_len, ctx->err)) return -1;
        memmove(d->prefixed.data + rep_len, d->prefixed.data, len);
        memcpy(d->prefixed.data, rep, rep_len);
    }
    const char *t = d->prefixed.data;
    size_t tn = d->prefixed.len;
    if (!step->split) return pretokenize(ctx, level + 1, t, tn, at_origin);
    if (find_matches(ctx, step, d, t, tn)) return -1;
    apply_behavior(d, SPLIT_MERGED_WITH_NEXT);
    for (size_t i = 0; i < d->n_ranges; i++) {
        tok_range r = d->ranges[i];
        if (r.end > r.start && pretokenize(ctx, level + 1, t + r.start, r.end - r.start, at_origin && r.start == 0))
            return -1;
    }
    return 0;
}

static int pretokenize(tok_encode_ctx *ctx, size_t level, const char *s, size_t n, bool at_origin) {
    if (n == 0) return 0;
    if (level == ctx->tok->n_pretok) return tok_bpe_word(ctx, s, n);
    switch (ctx->tok->pretok[level].kind) {
    case PRETOK_SPLIT: return split_step(ctx, level, s, n, at_origin);
    case PRETOK_BYTE_LEVEL: return byte_level_step(ctx, level, s, n, at_origin);
    case PRETOK_METASPACE: return metaspace_step(ctx, level, s, n, at_origin);
    }
    return ct_fail(ctx->err, "unknown pre-tokenizer step");
}

/* ---------------------------------------------------------------- added tokens */

static int cmp_added_longest_first(const void *a, const void *b, void *added) {
    const tok_added *x = &((const tok_added *)added)[*(const int32_t *)a];
    const tok_added *y = &((const tok_added *)added)[*(const int32_t *)b];
    unsigned char fx = (unsigned char)x->content[0], fy = (unsigned char)y->content[0];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int build_set(tokenizer *tok, tok_added_set *set, bool normalized, ct_error *err) {
    set->order = malloc((tok->n_added ? tok->n_added : 1) * sizeof *set->order);
    if (!set->order) return ct_fail(err, "out of memory indexing added tokens");
    set->count = 0;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized && tok->added[i].len > 0)
            set->order[set->count++] = (int32_t)i;
    /* Insertion sort with context: a few hundred tokens at most, once per load. */
    for (size_t i = 1; i < set->count; i++) {
        int32_t v = set->order[i];
        size_t j = i;
        while (j > 0 && cmp_added_longest_first(&set->order[j - 1], &v, tok->added) > 0) {
            set->order[j] = set->order[j - 1];
            j--;
        }
        set->order[j] = v;
    }
    size_t k = 0;
    for (unsigned b = 0; b <= 256; b++) {
        while (b < 256 && k < set->count &&
               (unsigned char)tok->added[set->order[k]].content[0] < b)
            k++;
        set->bucket_start[b] = (uint32_t)(b < 256 ? k : set->count);
    }
    return 0;
}

int tok_build_added_sets(tokenizer *tok, ct_error *err) {
    if (build_set(tok, &tok->raw_set, false, err)) return -1;
    return build_set(tok, &tok->normalized_set, true, err);
}

/* Leftmost-longest match at or after `from` (what aho-corasick's LeftmostLongest finds). */
static int find_added(const tokenizer *tok, const tok_added_set *set, const char *s, size_t n,
                      size_t from, size_t *start) {
    if (set->count == 0) return -1;
    for (size_t i = from; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        for (uint32_t k = set->bucket_start[b]; k < set->bucket_start[b + 1]; k++) {
            const tok_added *a = &tok->added[set->order[k]];
            if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) {
                *start = i;
                return set->order[k];
            }
        }
    }
    return -1;
}

static bool is_word_char_at(tok_encode_ctx *ctx, const char *s, size_t n) {
    const pcre2_code *re = ctx->tok->word_regex;
    return re && pcre2_match(re, (PCRE2_SPTR)s, n, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK,
                             ctx->match, NULL) >= 0;
}

static size_t last_char_start(const char *s, size_t end) {
    size_t i = end;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xc0) == 0x80) i--;
    return i > 0 ? i - 1 : 0;
}

static int after_normalizing(tok_encode_ctx *ctx, const char *s, size_t n, bool at_origin);

/* AddedVocabulary::find_matches followed by the next stage for the text between tokens. */
static int split_added(tok_encode_ctx *ctx, const tok_added_set *set, bool normalized_pass,
                       const char *s, size_t n, bool at_origin) {
    const tokenizer *tok = ctx->tok;
    size_t start_offset = 0, from = 0, match_start;
    int32_t k;
    while ((k = find_added(tok, set, s, n, from, &match_start)) >= 0) {
        const tok_added *a = &tok->added[k];
        size_t start = match_start, stop = match_start + a->len;
        from = stop;
        if (a->single_word) {
            bool word_before = start > 0 && is_word_char_at(ctx, s + last_char_start(s, start),
                                                            start - last_char_start(s, start));
            bool word_after = stop < n && is_word_char_at(ctx, s + stop, n - stop);
            if (word_before || word_after) continue;
        }
        if (a->lstrip) {
            size_t i = start;
            while (i > 0) {
                size_t c = last_char_start(s, i);
                uint32_t cp;
                if (utf8_next((const unsigned char *)s + c, i - c, &cp) <= 0 ||
                    !tok_is_unicode_space(cp))
                    break;
                i = c;
            }
            start = i > start_offset ? i : start_offset;
        }
        if (a->rstrip) {
            uint32_t cp;
            int clen;
            while (stop < n &&
                   (clen = utf8_next((const unsigned char *)s + stop, n - stop, &cp)) > 0 &&
                   tok_is_unicode_space(cp))
                stop += (size_t)clen;
        }
        if (start_offset < start) {
            const char *piece = s + start_offset;
            size_t len = start - start_offset;
            bool origin = at_origin && start_offset == 0;
            int rc = normalized_pass ? pretokenize(ctx, 0, piece, len, origin)
                                     : after_normalizing(ctx, piece, len, origin);
            if (rc) return -1;
        }
        if (tok_ids_push(ctx->out, a->id, ctx->err)) return -1;
        start_offset = stop;
    }
    if (start_offset >= n) return 0;
    bool origin = at_origin && start_offset == 0;
    return normalized_pass ? pretokenize(ctx, 0, s + start_offset, n - start_offset, origin)
                           : after_normalizing(ctx, s + start_offset, n - start_offset, origin);
}

static int nfc_check(tok_encode_ctx *ctx, const char *s, size_t n) {
    size_t bad = tok_nfc_quick_check(s, n);
    if (!bad) return 0;
    uint32_t cp = 0;
    utf8_next((const unsigned char *)s + bad - 1, n - (bad - 1), &cp);
    bool in_input = s >= ctx->text && s <= ctx->text + ctx->text_len;
    char where[64] = "the normalized text";
    if (in_input) snprintf(where, sizeof where, "byte %zu", (size_t)(s - ctx->text) + bad - 1);
    return ct_fail(ctx->err,
                   "%s: U+%04X may change under the NFC normalizer, and full Unicode "
                   "normalization is not supported yet (normalize the text to NFC first)",
                   where, (unsigned)cp);
}

/* Replace: every match of the pattern becomes the content. */
static int replace_all(tok_encode_ctx *ctx, const tok_norm *step, const char *s, size_t n, textbuf *out) {
    size_t i = 0;
    while (i <= n) {
        size_t start = n, end = n;
        if (step->regex) {
            int found = regex_find(ctx, step->regex, s, n, i, &start, &end);
            if (found < 0) return -1;
            if (!found) start = end = n;
            else if (end == start) end = start + 1 <= n ? start + 1 : n; /* empty match */
        } else if (step->pattern_len) {
            const char *hit = tok_find(s + i, n - i, step->pattern, step->pattern_len);
            if (hit) {
                start = (size_t)(hit - s);
                end = start + step->pattern_len;
            }
        }
        if (tok_bytes_append(out, s + i, start - i, ctx->err)) return -1;
        if (start >= n) break;
        if (tok_bytes_append(out, step->content, step->content_len, ctx->err)) return -1;
        i = end;
    }
    return 0;
}

static int after_normalizing(tok_encode_ctx *ctx, const char *s, size_t n, bool at_origin) {
    const tokenizer *tok = ctx->tok;
    int next = 0;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const tok_norm *step = &tok->norm[k];
        textbuf *out = &ctx->norm[next];
        out->len = 0;
        if (step->kind == NORM_NFC) {
            if (nfc_check(ctx, s, n)) return -1;
            continue;
        }
        if (step->kind == NORM_PREPEND) {
            if (n == 0) continue;
            if (tok_bytes_append(out, step->content, step->content_len, ctx->err) ||
                tok_bytes_append(out, s, n, ctx->err))
                return -1;
        } else if (replace_all(ctx, step, s, n, out)) {
            return -1;
        }
        if (tok_bytes_append(out, "", 0, ctx->err)) return -1; /* data is non-NULL */
        s = out->data;
        n = out->len;
        next ^= 1;
    }
    return split_added(ctx, &tok->normalized_set, true, s, n, at_origin);
}

int tok_encode_text(tok_encode_ctx *ctx, const char *text, size_t len) {
    ctx->text = text;
    ctx->text_len = len;
    return split_added(ctx, &ctx->tok->raw_set, false, text, len, true);
}
