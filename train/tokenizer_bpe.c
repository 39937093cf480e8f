/* tokenizer_bpe: the data structures behind the tokenizer (hash maps, byte-level alphabet,
 * UTF-8 helpers) and the BPE merge loop, written to give the same tokens as the Rust
 * `tokenizers` BPE model (tokenizers/src/models/bpe/word.rs: merge_all). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/tokenizer_impl.h"

/* ---------------------------------------------------------------- vectors */

int tok_ids_push(tok_ids *v, int32_t id, ct_error *err) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *data = realloc(v->data, cap * sizeof *data);
        if (!data) return ct_fail(err, "out of memory growing a token list to %zu ids", cap);
        v->data = data;
        v->cap = cap;
    }
    v->data[v->len++] = id;
    return 0;
}

int tok_bytes_append(textbuf *b, const char *s, size_t n, ct_error *err) {
    textbuf_put(b, s, n);
    return b->failed ? ct_fail(err, "out of memory growing a text buffer past %zu bytes", b->len) : 0;
}

const char *tok_find(const char *s, size_t n, const char *needle, size_t len) {
    for (size_t i = 0; len <= n && i <= n - len; i++)
        if (memcmp(s + i, needle, len) == 0) return s + i;
    return NULL;
}

/* ---------------------------------------------------------------- hashing */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser: spreads pair keys over slots */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t table_capacity(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2; /* load factor <= 0.5 keeps probe chains short */
    return cap;
}

int tok_strmap_init(tok_strmap *m, size_t n_keys, const char *const *strs, const uint32_t *lens,
                    ct_error *err) {
    m->cap = table_capacity(n_keys);
    m->slots = malloc(m->cap * sizeof *m->slots);
    if (!m->slots) return ct_fail(err, "out of memory for a vocabulary of %zu tokens", n_keys);
    memset(m->slots, 0xff, m->cap * sizeof *m->slots);
    m->strs = strs;
    m->lens = lens;
    return 0;
}

int32_t tok_strmap_put(tok_strmap *m, int32_t id) {
    const char *s = m->strs[id];
    size_t n = m->lens[id];
    size_t mask = m->cap - 1;
    for (size_t i = fnv1a(s, n) & mask;; i = (i + 1) & mask) {
        int32_t at = m->slots[i];
        if (at < 0) {
            m->slots[i] = id;
            return -1;
        }
        if (m->lens[at] == n && memcmp(m->strs[at], s, n) == 0) return at;
    }
}

int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t n) {
    if (!m->slots) return -1;
    size_t mask = m->cap - 1;
    for (size_t i = fnv1a(s, n) & mask;; i = (i + 1) & mask) {
        int32_t at = m->slots[i];
        if (at < 0) return -1;
        if (m->lens[at] == n && memcmp(m->strs[at], s, n) == 0) return at;
    }
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    m->slots = NULL;
}

#define MERGE_EMPTY UINT64_MAX

static uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

int tok_mergemap_init(tok_mergemap *m, size_t n, ct_error *err) {
    m->cap = table_capacity(n);
    m->slots = malloc(m->cap * sizeof *m->slots);
    if (!m->slots) return ct_fail(err, "out of memory for %zu merges", n);
    for (size_t i = 0; i < m->cap; i++) m->slots[i].key = MERGE_EMPTY;
    return 0;
}

/* A repeated pair keeps the later rank, as a Rust HashMap built by collect() does. */
void tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = pair_key(a, b);
    size_t mask = m->cap - 1;
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        if (m->slots[i].key == MERGE_EMPTY || m->slots[i].key == key) {
            m->slots[i] = (tok_merge_entry){key, rank, new_id};
            return;
        }
    }
}

const tok_merge_entry *tok_mergemap_get(const tok_mergemap *m, int32_t a, int32_t b) {
    if (!m->slots) return NULL;
    uint64_t key = pair_key(a, b);
    size_t mask = m->cap - 1;
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        if (m->slots[i].key == key) return &m->slots[i];
        if (m->slots[i].key == MERGE_EMPTY) return NULL;
    }
}

void tok_mergemap_free(tok_mergemap *m) {
    free(m->slots);
    m->slots = NULL;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
 * bytes take code points 256.. in increasing byte order (so space becomes U+0120 'Ġ'). */
void tok_byte_alphabet_init(tok_byte_alphabet *a) {
    for (int i = 0; i < 324; i++) a->byte_of[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        int cp = printable ? b : next++;
        a->byte_of[cp] = (int16_t)b;
        if (cp < 0x80) {
            a->utf8[b][0] = (char)cp;
            a->utf8_len[b] = 1;
        } else {
            a->utf8[b][0] = (char)(0xc0 | (cp >> 6));
            a->utf8[b][1] = (char)(0x80 | (cp & 0x3f));
            a->utf8_len[b] = 2;
        }
    }
}

/* ---------------------------------------------------------------- UTF-8 */

/* Each maximal prefix of a would-be sequence that cannot complete becomes one U+FFFD
 * (the "substitution of maximal subparts" that Rust's String::from_utf8_lossy uses). */
int tok_utf8_lossy_append(textbuf *out, const unsigned char *s, size_t n, ct_error *err) {
    static const char replacement[] = "\xef\xbf\xbd";
    size_t i = 0, run = 0; /* run: start of the pending valid stretch */
    while (i < n) {
        uint32_t cp;
        int len = utf8_next(s + i, n - i, &cp);
        if (len > 0) {
            i += (size_t)len;
            continue;
        }
        if (tok_bytes_append(out, (const char *)s + run, i - run, err)) return -1;
        if (tok_bytes_append(out, replacement, 3, err)) return -1;
        /* Skip the lead byte and every continuation byte that was still acceptable. */
        unsigned c = s[i];
        size_t skip = 1;
        unsigned lo = 0x80, hi = 0xbf;
        size_t want = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                      : c >= 0xf0 && c <= 0xf4 ? 4 : 1;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
        while (skip < want && i + skip < n) {
            unsigned d = s[i + skip];
            if (d < lo || d > hi) break;
            lo = 0x80;
            hi = 0xbf;
            skip++;
        }
        i += skip;
        run = i;
    }
    return tok_bytes_append(out, (const char *)s + run, n - run, err);
}

/* The Unicode White_Space property (what Rust's char::is_whitespace tests). */
bool tok_is_unicode_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* ---------------------------------------------------------------- the merge loop */

typedef struct tok_symbol {
    int32_t id;
    int32_t prev, next; /* neighbours in the live list, -1 at the ends */
    uint32_t len;       /* bytes covered; 0 once merged into its left neighbour */
} tok_symbol;

typedef struct tok_heap_item {
    uint32_t rank;
    int32_t pos;        /* index of the left symbol of the pair */
    int32_t new_id;
} tok_heap_item;

/* Lower rank first, then leftmost: the order of the Rust BinaryHeap of `Merge`. */
static bool heap_less(const tok_heap_item *x, const tok_heap_item *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(tok_heap_item *heap, size_t *n, tok_heap_item item) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&item, &heap[parent])) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
}

static tok_heap_item heap_pop(tok_heap_item *heap, size_t *n) {
    tok_heap_item top = heap[0];
    tok_heap_item last = heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && heap_less(&heap[child + 1], &heap[child])) child++;
        if (!heap_less(&heap[child], &last)) break;
        heap[i] = heap[child];
        i = child;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

static int add_symbol(tok_encode_ctx *ctx, size_t *count, int32_t id, uint32_t len) {
    if (*count == ctx->symbols_cap) {
        size_t cap = ctx->symbols_cap ? ctx->symbols_cap * 2 : 64;
        tok_symbol *s = realloc(ctx->symbols, cap * sizeof *s);
        tok_heap_item *h = s ? realloc(ctx->heap, cap * 4 * sizeof *h) : NULL;
        if (s) ctx->symbols = s;
        if (!s || !h) return ct_fail(ctx->err, "out of memory for a word of %zu symbols", cap);
        ctx->heap = h;
        ctx->symbols_cap = cap;
        ctx->heap_cap = cap * 4;
    }
    int32_t i = (int32_t)*count;
    ctx->symbols[i] = (tok_symbol){id, i - 1, -1, len};
    if (i > 0) ctx->symbols[i - 1].next = i;
    (*count)++;
    return 0;
}

/* Initial symbols, one per character, as BPE::merge_word: continuing_subword_prefix on all
 * but the first, end_of_word_suffix on the last, byte fallback <0xXX>, then unk (fused). */
static int initial_symbols(tok_encode_ctx *ctx, const char *s, size_t n, size_t *count) {
    const tokenizer *tok = ctx->tok;
    int32_t pending_unk_len = -1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int clen = utf8_next((const unsigned char *)s + i, n - i, &cp);
        if (clen <= 0) clen = 1; /* cannot happen: input was validated */
        bool first = i == 0, last = i + (size_t)clen >= n;
        const char *key = s + i;
        size_t key_len = (size_t)clen;
        if ((!first && tok->subword_prefix) || (last && tok->word_suffix)) {
            ctx->word.len = 0;
            if (!first && tok->subword_prefix &&
                tok_bytes_append(&ctx->word, tok->subword_prefix, tok->subword_prefix_len,
                                 ctx->err))
                return -1;
            if (tok_bytes_append(&ctx->word, s + i, (size_t)clen, ctx->err)) return -1;
            if (last && tok->word_suffix &&
                tok_bytes_append(&ctx->word, tok->word_suffix, tok->word_suffix_len, ctx->err))
                return -1;
            key = ctx->word.data;
            key_len = ctx->word.len;
        }
        int32_t id = tok_strmap_get(&tok->vocab, key, key_len);
        if (id >= 0) {
            if (pending_unk_len >= 0 &&
                add_symbol(ctx, count, tok->unk_id, (uint32_t)pending_unk_len))
                return -1;
            pending_unk_len = -1;
            if (add_symbol(ctx, count, id, (uint32_t)clen)) return -1;
            i += (size_t)clen;
            continue;
        }
        bool fell_back = false;
        if (tok->byte_fallback) {
            int32_t byte_ids[64];
            size_t nb = key_len < 64 ? key_len : 0;
            fell_back = nb > 0;
            for (size_t k = 0; k < nb && fell_back; k++) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", (unsigned char)key[k]);
                byte_ids[k] = tok_strmap_get(&tok->vocab, name, strlen(name));
                fell_back = byte_ids[k] >= 0;
            }
            for (size_t k = 0; fell_back && k < nb; k++)
                if (add_symbol(ctx, count, byte_ids[k], 1)) return -1;
        }
        if (!fell_back && tok->unk_id >= 0) {
            if (pending_unk_len >= 0 && !tok->fuse_unk) {
                if (add_symbol(ctx, count, tok->unk_id, (uint32_t)pending_unk_len)) return -1;
                pending_unk_len = -1;
            }
            pending_unk_len = (pending_unk_len < 0 ? 0 : pending_unk_len) + clen;
        }
        /* No vocabulary entry, no fallback, no unk: the character is dropped, as in
         * tokenizers. */
        i += (size_t)clen;
    }
    if (pending_unk_len >= 0 && add_symbol(ctx, count, tok->unk_id, (uint32_t)pending_unk_len))
        return -1;
    return 0;
}

int tok_bpe_word(tok_encode_ctx *ctx, const char *s, size_t n) {
    const tokenizer *tok = ctx->tok;
    if (n == 0) return 0;
    if (tok->ignore_merges) {
        int32_t id = tok_strmap_get(&tok->vocab, s, n);
        if (id >= 0) return tok_ids_push(ctx->out, id, ctx->err);
    }
    size_t count = 0;
    if (initial_symbols(ctx, s, n, &count)) return -1;
    if (count == 0) return 0;
    tok_symbol *sym = ctx->symbols;
    tok_heap_item *heap = ctx->heap;
    size_t heap_n = 0;
    for (size_t i = 0; i + 1 < count; i++) {
        const tok_merge_entry *m = tok_mergemap_get(&tok->merges, sym[i].id, sym[i + 1].id);
        if (m) heap_push(heap, &heap_n, (tok_heap_item){m->rank, (int32_t)i, m->new_id});
    }
    /* Each merge pushes at most two items and removes a symbol, so the heap never holds
     * more than 3 * count items; heap_cap is 4 * symbols_cap. */
    while (heap_n > 0) {
        tok_heap_item top = heap_pop(heap, &heap_n);
        tok_symbol *left = &sym[top.pos];
        if (left->len == 0 || left->next < 0) continue;
        int32_t right_pos = left->next;
        tok_symbol right = sym[right_pos];
        const tok_merge_entry *m = tok_mergemap_get(&tok->merges, left->id, right.id);
        if (!m || m->new_id != top.new_id) continue; /* stale: a neighbour changed */
        left->id = top.new_id;
        left->len += right.len;
        left->next = right.next;
        sym[right_pos].len = 0;
        if (right.next >= 0) sym[right.next].prev = top.pos;
        if (left->prev >= 0) {
            m = tok_mergemap_get(&tok->merges, sym[left->prev].id, left->id);
            if (m) heap_push(heap, &heap_n, (tok_heap_item){m->rank, left->prev, m->new_id});
        }
        if (left->next >= 0) {
            m = tok_mergemap_get(&tok->merges, left->id, sym[left->next].id);
            if (m) heap_push(heap, &heap_n, (tok_heap_item){m->rank, top.pos, m->new_id});
        }
    }
    for (size_t i = 0; i < count; i++)
        if (sym[i].len && tok_ids_push(ctx->out, sym[i].id, ctx->err)) return -1;
    return 0;
}

void tok_encode_ctx_free(tok_encode_ctx *ctx) {
    if (ctx->match) pcre2_match_data_free(ctx->match);
    if (ctx->match_ctx) pcre2_match_context_free(ctx->match_ctx);
    if (ctx->jit_stack) pcre2_jit_stack_free(ctx->jit_stack);
    if (ctx->depth) {
        for (size_t i = 0; i <= ctx->tok->n_pretok; i++) {
            free(ctx->depth[i].prefixed.data);
            free(ctx->depth[i].mapped.data);
            free(ctx->depth[i].ranges);
        }
        free(ctx->depth);
    }
    free(ctx->symbols);
    free(ctx->heap);
    free(ctx->word.data);
    free(ctx->norm[0].data);
    free(ctx->norm[1].data);
}
