/* tokenizer_decode: ids -> text. Tokens become strings (added tokens by content, the rest
 * from the model vocabulary), then each decoder step maps the list of token strings to a new
 * list, as tokenizers' Decoder::decode_chain does, and the result is concatenated. */
#include <stdlib.h>
#include <string.h>

#include "train/tokenizer_impl.h"

/* A list of strings in one buffer: token i is data[at[i] .. at[i+1]). */
typedef struct tok_list {
    textbuf buf;
    size_t *at;
    size_t n, cap;
} tok_list;

/* Marks the end of the token whose bytes were just appended to l->buf. */
static int list_end_token(tok_list *l, ct_error *err) {
    if (l->n + 2 > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *at = realloc(l->at, cap * sizeof *at);
        if (!at) return ct_fail(err, "out of memory decoding");
        l->at = at;
        l->cap = cap;
    }
    if (l->n == 0) l->at[0] = 0;
    l->at[++l->n] = l->buf.len;
    return 0;
}

/* Ends the token that was appended to l->buf since the previous one. */
static int list_push(tok_list *l, const char *s, size_t n, ct_error *err) {
    if (tok_bytes_append(&l->buf, s, n, err)) return -1;
    return list_end_token(l, err);
}

static void list_clear(tok_list *l) {
    l->buf.len = 0;
    l->n = 0;
}

static const char *token_of(const tok_list *l, size_t i, size_t *len) {
    *len = l->at[i + 1] - l->at[i];
    return l->buf.data + l->at[i];
}

/* ByteLevel: every token whose characters are all byte-level symbols becomes those bytes,
 * others stay as they are; the whole becomes one string, invalid UTF-8 replaced. */
static int step_byte_level(const tokenizer *tok, const tok_list *in, tok_list *out, ct_error *err) {
    textbuf raw = {0};
    int rc = 0;
    for (size_t t = 0; t < in->n && !rc; t++) {
        size_t n, start = raw.len;
        const char *s = token_of(in, t, &n);
        for (size_t i = 0; i < n && !rc;) {
            uint32_t cp;
            int clen = utf8_next((const unsigned char *)s + i, n - i, &cp);
            if (clen <= 0 || cp >= 324 || tok->alphabet.byte_of[cp] < 0) {
                raw.len = start;
                rc = tok_bytes_append(&raw, s, n, err);
                break;
            }
            char b = (char)tok->alphabet.byte_of[cp];
            rc = tok_bytes_append(&raw, &b, 1, err);
            i += (size_t)clen;
        }
    }
    textbuf text = {0};
    if (!rc) rc = tok_utf8_lossy_append(&text, (const unsigned char *)raw.data, raw.len, err);
    if (!rc) rc = list_push(out, text.data ? text.data : "", text.len, err);
    free(raw.data);
    free(text.data);
    return rc;
}

/* Replace: every match of the pattern in each token becomes the content. */
static int step_replace(const tok_dec *d, pcre2_match_data *match, const tok_list *in, tok_list *out,
                        ct_error *err) {
    for (size_t t = 0; t < in->n; t++) {
        size_t n, i = 0;
        const char *s = token_of(in, t, &n);
        while (i <= n) {
            size_t start = n, end = n;
            if (d->regex) {
                int rc = pcre2_match(d->regex, (PCRE2_SPTR)s, n, i, PCRE2_NO_UTF_CHECK, match, NULL);
                if (rc >= 0) {
                    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(match);
                    start = ov[0];
                    end = ov[1] > ov[0] ? ov[1] : ov[0] + 1; /* an empty match consumes a byte */
                    if (end > n) start = end = n;
                }
            } else if (d->pattern_len) {
                const char *hit = tok_find(s + i, n - i, d->pattern, d->pattern_len);
                if (hit) {
                    start = (size_t)(hit - s);
                    end = start + d->pattern_len;
                }
            }
            if (tok_bytes_append(&out->buf, s + i, start - i, err)) return -1;
            if (start == n) break;
            if (tok_bytes_append(&out->buf, d->content, d->content_len, err)) return -1;
            i = end;
        }
        if (list_end_token(out, err)) return -1;
    }
    return 0;
}

/* ByteFallback: runs of <0xXX> tokens become their bytes; a run that is not valid UTF-8
 * becomes one U+FFFD per byte. */
static int step_byte_fallback(const tok_list *in, tok_list *out, ct_error *err) {
    textbuf run = {0};
    int rc = 0;
    for (size_t t = 0; t <= in->n && !rc; t++) {
        size_t n = 0;
        const char *s = t < in->n ? token_of(in, t, &n) : NULL;
        bool is_byte = s && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                       strchr("0123456789ABCDEFabcdef", s[3]) && strchr("0123456789ABCDEFabcdef", s[4]) &&
                       s[3] && s[4];
        if (is_byte) {
            char hex[3] = {s[3], s[4], 0};
            char b = (char)strtol(hex, NULL, 16);
            rc = tok_bytes_append(&run, &b, 1, err);
            continue;
        }
        if (run.len) {
            bool valid = true;
            for (size_t i = 0; i < run.len && valid;) {
                uint32_t cp;
                int clen = utf8_next((const unsigned char *)run.data + i, run.len - i, &cp);
                valid = clen > 0;
                i += clen > 0 ? (size_t)clen : 0;
            }
            if (valid) rc = list_push(out, run.data, run.len, err);
            for (size_t i = 0; !valid && !rc && i < run.len; i++) rc = list_push(out, "\xef\xbf\xbd", 3, err);
            run.len = 0;
        }
        if (s && !rc) rc = list_push(out, s, n, err);
    }
    free(run.data);
    return rc;
}

/* Strip: up to strip_start leading and strip_stop trailing copies of one character. */
static int step_strip(const tok_dec *d, const tok_list *in, tok_list *out, ct_error *err) {
    char c[4];
    size_t clen = 0;
    uint32_t cp = d->strip_char;
    if (cp < 0x80) c[clen++] = (char)cp;
    else if (cp < 0x800) c[clen++] = (char)(0xc0 | (cp >> 6)), c[clen++] = (char)(0x80 | (cp & 0x3f));
    else if (cp < 0x10000)
        c[clen++] = (char)(0xe0 | (cp >> 12)), c[clen++] = (char)(0x80 | ((cp >> 6) & 0x3f)),
        c[clen++] = (char)(0x80 | (cp & 0x3f));
    else
        c[clen++] = (char)(0xf0 | (cp >> 18)), c[clen++] = (char)(0x80 | ((cp >> 12) & 0x3f)),
        c[clen++] = (char)(0x80 | ((cp >> 6) & 0x3f)), c[clen++] = (char)(0x80 | (cp & 0x3f));
    for (size_t t = 0; t < in->n; t++) {
        size_t n;
        const char *s = token_of(in, t, &n);
        size_t begin = 0, end = n;
        for (int k = 0; k < d->strip_start && end - begin >= clen && !memcmp(s + begin, c, clen); k++) begin += clen;
        for (int k = 0; k < d->strip_stop && end - begin >= clen && !memcmp(s + end - clen, c, clen); k++) end -= clen;
        if (list_push(out, s + begin, end - begin, err)) return -1;
    }
    return 0;
}

/* Metaspace: the replacement character becomes a space, and disappears from the first token
 * when the encoder prepends it. */
static int step_metaspace(const tok_dec *d, const tok_list *in, tok_list *out, ct_error *err) {
    for (size_t t = 0; t < in->n; t++) {
        size_t n;
        const char *s = token_of(in, t, &n);
        for (size_t i = 0; i < n;) {
            if (n - i >= d->pattern_len && memcmp(s + i, d->pattern, d->pattern_len) == 0) {
                if (!(t == 0 && d->prepend) && tok_bytes_append(&out->buf, " ", 1, err)) return -1;
                i += d->pattern_len;
            } else {
                if (tok_bytes_append(&out->buf, s + i, 1, err)) return -1;
                i++;
            }
        }
        if (list_end_token(out, err)) return -1;
    }
    return 0;
}

static int run_step(const tokenizer *tok, const tok_dec *d, pcre2_match_data *match, const tok_list *in,
                    tok_list *out, ct_error *err) {
    switch (d->kind) {
    case DEC_BYTE_LEVEL: return step_byte_level(tok, in, out, err);
    case DEC_REPLACE: return step_replace(d, match, in, out, err);
    case DEC_BYTE_FALLBACK: return step_byte_fallback(in, out, err);
    case DEC_STRIP: return step_strip(d, in, out, err);
    case DEC_METASPACE: return step_metaspace(d, in, out, err);
    case DEC_FUSE: {
        size_t n;
        return list_push(out, in->n ? token_of(in, 0, &n) : "", in->n ? in->buf.len : 0, err);
    }
    }
    return ct_fail(err, "unknown decoder step");
}

int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len, ct_error *err) {
    *text = NULL;
    *len = 0;
    tok_list lists[2];
    memset(lists, 0, sizeof lists);
    textbuf out = {0};
    pcre2_match_data *match = pcre2_match_data_create(16, NULL);
    int rc = match ? 0 : ct_fail(err, "out of memory");
    for (size_t i = 0; i < n_ids && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->vocab_size) {
            rc = ct_fail(err, "token %zu: id %d is outside the vocabulary [0, %d)", i, id, tok->vocab_size);
            break;
        }
        int32_t a = tok->added_of_id[id];
        if (a >= 0 && skip_special && tok->added[a].special) continue;
        if (a >= 0) rc = list_push(&lists[0], tok->added[a].content, tok->added[a].len, err);
        else if (id < tok->model_cap && tok->model_str[id])
            rc = list_push(&lists[0], tok->model_str[id], tok->model_len[id], err);
        else rc = ct_fail(err, "token %zu: id %d has no token in the vocabulary", i, id);
    }
    int cur = 0;
    for (size_t s = 0; s < tok->n_dec && !rc; s++, cur ^= 1) {
        list_clear(&lists[cur ^ 1]);
        rc = run_step(tok, &tok->dec[s], match, &lists[cur], &lists[cur ^ 1], err);
    }
    /* tokenizers joins decoded tokens with "", or with " " when there is no decoder. */
    for (size_t t = 0; t < lists[cur].n && !rc; t++) {
        size_t n;
        const char *s = token_of(&lists[cur], t, &n);
        if (t > 0 && !tok->has_decoder) rc = tok_bytes_append(&out, " ", 1, err);
        if (!rc) rc = tok_bytes_append(&out, s, n, err);
    }
    if (!rc && !out.data) rc = tok_bytes_append(&out, "", 0, err);
    for (int k = 0; k < 2; k++) {
        free(lists[k].buf.data);
        free(lists[k].at);
    }
    if (match) pcre2_match_data_free(match);
    if (rc) {
        free(out.data);
        return -1;
    }
    *text = out.data;
    *len = out.len;
    return 0;
}
