/* engine/tokenizer_encode.c — text -> ids: added tokens, normalizer, pre-tokenizer, BPE.
 *
 * BPE runs per pre-tokenized piece with a binary heap of candidate pairs ordered by
 * (merge rank, position), as Hugging Face `tokenizers` does, so a long piece (a run of
 * 10k spaces) costs O(n log n), not O(n^2).
 */
#define _GNU_SOURCE
#include "common/errmsg.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- growable buffers ------------------------------------------------------------ */

typedef struct pieces {
    char *buf;
    size_t len, cap;
    size_t *start, *plen;
    size_t n, ncap;
} pieces;

static int pieces_add(pieces *p, const char *s, size_t n, const char *prefix, size_t pn)
{
    if (p->len + n + pn > p->cap) {
        size_t cap = p->cap ? p->cap : 256;
        while (cap < p->len + n + pn)
            cap *= 2;
        char *b = realloc(p->buf, cap);
        if (!b)
            return -ENOMEM;
        p->buf = b;
        p->cap = cap;
    }
    if (p->n == p->ncap) {
        size_t nc = p->ncap ? p->ncap * 2 : 64;
        size_t *a = realloc(p->start, nc * sizeof *a);
        if (!a)
            return -ENOMEM;
        p->start = a;
        size_t *b = realloc(p->plen, nc * sizeof *b);
        if (!b)
            return -ENOMEM;
        p->plen = b;
        p->ncap = nc;
    }
    p->start[p->n] = p->len;
    memcpy(p->buf + p->len, prefix, pn);
    memcpy(p->buf + p->len + pn, s, n);
    p->plen[p->n] = n + pn;
    p->len += n + pn;
    p->n++;
    return 0;
}

static void pieces_free(pieces *p)
{
    free(p->buf);
    free(p->start);
    free(p->plen);
}

typedef struct heap_el {
    int32_t rank, pos; /* ordered by rank, then position (leftmost first) */
    int32_t right, lid, rid, new_id;
} heap_el;

typedef struct scratch {
    pieces a, b;
    pcre2_match_data *md;
    int32_t *sym, *prev, *next;
    size_t sym_cap;
    heap_el *heap;
    size_t heap_n, heap_cap;
    char *norm;
    size_t norm_cap;
} scratch;

static int ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p)
            return -ENOMEM;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return 0;
}

/* ---- heap -------------------------------------------------------------------------- */

static int heap_less(const heap_el *a, const heap_el *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int heap_push(scratch *s, heap_el e)
{
    if (s->heap_n == s->heap_cap) {
        size_t c = s->heap_cap ? s->heap_cap * 2 : 64;
        heap_el *h = realloc(s->heap, c * sizeof *h);
        if (!h)
            return -ENOMEM;
        s->heap = h;
        s->heap_cap = c;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
    return 0;
}

static heap_el heap_pop(scratch *s)
{
    heap_el top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!heap_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
    return top;
}

static int push_pair(const tok_t *t, scratch *s, int32_t l)
{
    if (l < 0)
        return 0;
    int32_t r = s->next[l];
    if (r < 0)
        return 0;
    const tok_merge *m = tok_merge_get(t, s->sym[l], s->sym[r]);
    if (!m)
        return 0;
    return heap_push(s, (heap_el){ m->rank, l, r, s->sym[l], s->sym[r], m->id_plus1 - 1 });
}

/* ---- BPE on one piece --------------------------------------------------------------- */

static int bpe_piece(const tok_t *t, scratch *s, const char *p, size_t n, int32_t **ids, size_t *nids, size_t *cap,
                     char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    if (t->ignore_merges) {
        int32_t id = tok_lookup(t, p, n);
        if (id >= 0)
            return ids_push(ids, nids, cap, id);
    }
    if (n > s->sym_cap) {
        size_t c = n * 2;
        int32_t *a = realloc(s->sym, c * sizeof *a);
        if (!a)
            return -ENOMEM;
        s->sym = a;
        int32_t *b = realloc(s->prev, c * sizeof *b);
        if (!b)
            return -ENOMEM;
        s->prev = b;
        int32_t *d = realloc(s->next, c * sizeof *d);
        if (!d)
            return -ENOMEM;
        s->next = d;
        s->sym_cap = c;
    }
    /* initial symbols */
    int32_t m = 0;
    const uint8_t *u = (const uint8_t *)p;
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = t->byte_id[u[i]];
            if (id < 0)
                id = t->unk_id;
            if (id < 0)
                return mq_errmsg(err, errlen, -EINVAL, "tokenizer: byte 0x%02X has no token and there is no unk_token",
                                 u[i]);
            s->sym[m++] = id;
        }
    } else {
        size_t i = 0;
        while (i < n) {
            size_t k = 1;
            if (u[i] >= 0xF0)
                k = 4;
            else if (u[i] >= 0xE0)
                k = 3;
            else if (u[i] >= 0xC0)
                k = 2;
            if (i + k > n)
                k = n - i;
            int32_t id = tok_lookup(t, p + i, k);
            if (id >= 0) {
                s->sym[m++] = id;
            } else {
                int all = t->byte_fallback;
                for (size_t j = 0; all && j < k; j++)
                    all = t->byte_id[u[i + j]] >= 0;
                if (all) {
                    for (size_t j = 0; j < k; j++)
                        s->sym[m++] = t->byte_id[u[i + j]];
                } else if (t->unk_id >= 0) {
                    if (!(t->fuse_unk && m > 0 && s->sym[m - 1] == t->unk_id))
                        s->sym[m++] = t->unk_id;
                } else {
                    return mq_errmsg(err, errlen, -EINVAL,
                                     "tokenizer: character not in the vocab and no unk_token/byte_fallback");
                }
            }
            i += k;
        }
    }
    for (int32_t i = 0; i < m; i++) {
        s->prev[i] = i - 1;
        s->next[i] = i + 1 < m ? i + 1 : -1;
    }
    s->heap_n = 0;
    int rc;
    for (int32_t i = 0; i + 1 < m; i++)
        if ((rc = push_pair(t, s, i)))
            return rc;
    while (s->heap_n) {
        heap_el e = heap_pop(s);
        /* stale entry: one side was merged since it was pushed */
        if (s->sym[e.pos] != e.lid || s->next[e.pos] != e.right || s->sym[e.right] != e.rid)
            continue;
        s->sym[e.pos] = e.new_id;
        int32_t nx = s->next[e.right];
        s->next[e.pos] = nx;
        if (nx >= 0)
            s->prev[nx] = e.pos;
        s->sym[e.right] = -1; /* dead */
        s->next[e.right] = -1;
        if ((rc = push_pair(t, s, s->prev[e.pos])))
            return rc;
        if ((rc = push_pair(t, s, e.pos)))
            return rc;
    }
    for (int32_t i = 0; i >= 0; i = s->next[i])
        if ((rc = ids_push(ids, nids, cap, s->sym[i])))
            return rc;
    return 0;
}

/* ---- normalizer ---------------------------------------------------------------------- */

static int has_non_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)s[i] >= 0x80)
            return 1;
    return 0;
}

static int norm_reserve(scratch *s, size_t n)
{
    if (n <= s->norm_cap)
        return 0;
    size_t c = s->norm_cap ? s->norm_cap : 256;
    while (c < n)
        c *= 2;
    char *b = realloc(s->norm, c);
    if (!b)
        return -ENOMEM;
    s->norm = b;
    s->norm_cap = c;
    return 0;
}

/* Normalizes in[0..n) into s->norm; *out_len gets the length. */
static int normalize(const tok_t *t, scratch *s, const char *in, size_t n, size_t *out_len)
{
    int rc = norm_reserve(s, n + 1);
    if (rc)
        return rc;
    memcpy(s->norm, in, n);
    size_t len = n;
    for (int i = 0; i < t->n_norm; i++) {
        const tok_norm *op = &t->norm[i];
        switch (op->kind) {
        case NORM_NFC:
        case NORM_NFKC:
        case NORM_NFD:
        case NORM_NFKD: {
            if (!has_non_ascii(s->norm, len))
                break; /* ASCII is invariant under every form */
            utf8proc_option_t o = UTF8PROC_STABLE;
            if (op->kind == NORM_NFC || op->kind == NORM_NFKC)
                o |= UTF8PROC_COMPOSE;
            else
                o |= UTF8PROC_DECOMPOSE;
            if (op->kind == NORM_NFKC || op->kind == NORM_NFKD)
                o |= UTF8PROC_COMPAT;
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s->norm, (utf8proc_ssize_t)len, &dst, o);
            if (k < 0)
                return -EILSEQ;
            if ((rc = norm_reserve(s, (size_t)k + 1))) {
                free(dst);
                return rc;
            }
            memcpy(s->norm, dst, (size_t)k);
            free(dst);
            len = (size_t)k;
            break;
        }
        case NORM_PREPEND: {
            if (len == 0)
                break; /* tokenizers prepends to non-empty strings only */
            size_t pl = strlen(op->a);
            if ((rc = norm_reserve(s, len + pl + 1)))
                return rc;
            memmove(s->norm + pl, s->norm, len);
            memcpy(s->norm, op->a, pl);
            len += pl;
            break;
        }
        case NORM_REPLACE: {
            size_t fl = strlen(op->a), tl = strlen(op->b), cnt = 0;
            for (const char *q = s->norm; (q = memmem(q, len - (size_t)(q - s->norm), op->a, fl)); q += fl)
                cnt++;
            if (!cnt)
                break;
            size_t nl = len + cnt * tl - cnt * fl;
            char *tmp = malloc(nl + 1);
            if (!tmp)
                return -ENOMEM;
            size_t o = 0;
            for (size_t j = 0; j < len;) {
                if (j + fl <= len && !memcmp(s->norm + j, op->a, fl)) {
                    memcpy(tmp + o, op->b, tl);
                    o += tl;
                    j += fl;
                } else
                    tmp[o++] = s->norm[j++];
            }
            if ((rc = norm_reserve(s, nl + 1))) {
                free(tmp);
                return rc;
            }
            memcpy(s->norm, tmp, nl);
            free(tmp);
            len = nl;
            break;
        }
        }
    }
    *out_len = len;
    return 0;
}

/* ---- pre-tokenizer ---------------------------------------------------------------------- */

static int utf8_char_len(uint8_t c)
{
    return c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
}

/* Splits one piece by op->re according to its behavior, appending to out. The piece is
 * first cut into alternating (gap, match) ranges; `invert` swaps which one is the
 * delimiter; the behavior says what happens to delimiters. */
static int split_piece(const tok_pre *op, scratch *s, const char *p, size_t n, pieces *out, char *err, size_t errlen)
{
    size_t pos = 0, last = 0;
    int rc = 0;
    uint32_t mopts = PCRE2_NO_UTF_CHECK;
    /* ranges: [a, b) and whether it is a delimiter */
    size_t nr = 0, rcap = 16;
    size_t(*rg)[3] = malloc(rcap * sizeof *rg);
    if (!rg)
        return -ENOMEM;
#define ADD_RANGE(A, B, D)                                      \
    do {                                                        \
        if ((A) == (B))                                         \
            break;                                              \
        if (nr == rcap) {                                       \
            size_t(*g)[3] = realloc(rg, 2 * rcap * sizeof *rg); \
            if (!g) {                                           \
                rc = -ENOMEM;                                   \
                goto out;                                       \
            }                                                   \
            rg = g;                                             \
            rcap *= 2;                                          \
        }                                                       \
        rg[nr][0] = (A);                                        \
        rg[nr][1] = (B);                                        \
        rg[nr][2] = (D);                                        \
        nr++;                                                   \
    } while (0)
    while (pos <= n) {
        int r = pcre2_match(op->re, (PCRE2_SPTR)p, n, pos, mopts, s->md, NULL);
        if (r == PCRE2_ERROR_JIT_STACKLIMIT && !(mopts & PCRE2_NO_JIT)) {
            mopts |= PCRE2_NO_JIT;
            continue;
        }
        if (r == PCRE2_ERROR_NOMATCH)
            break;
        if (r < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(r, msg, sizeof msg);
            rc = mq_errmsg(err, errlen, -EINVAL, "tokenizer: pre_tokenizer regex failed: %s", (char *)msg);
            goto out;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* empty match: no split here, step one character */
            if (ms >= n)
                break;
            pos = ms + (size_t)utf8_char_len((uint8_t)p[ms]);
            continue;
        }
        ADD_RANGE(last, ms, op->invert);
        ADD_RANGE(ms, me, !op->invert);
        last = pos = me;
    }
    ADD_RANGE(last, n, op->invert);
#undef ADD_RANGE
    size_t pend = 0;
    int have_pend = 0; /* MergedWithNext: a delimiter waiting for the next range */
    int prev_emitted = 0;
    for (size_t i = 0; i < nr && !rc; i++) {
        size_t a = rg[i][0], b = rg[i][1];
        int delim = (int)rg[i][2];
        if (!delim || op->behavior == SPLIT_ISOLATED) {
            if (have_pend) {
                a = pend;
                have_pend = 0;
            }
            rc = pieces_add(out, p + a, b - a, "", 0);
            prev_emitted = 1;
        } else if (op->behavior == SPLIT_REMOVED) {
            prev_emitted = 0;
        } else if (op->behavior == SPLIT_MERGED_PREV) {
            if (prev_emitted) { /* the previous piece ends exactly at a: extend it */
                size_t st = out->start[out->n - 1], pl = out->plen[out->n - 1];
                out->n--;
                out->len = st;
                rc = pieces_add(out, p + a - pl, pl + (b - a), "", 0);
            } else {
                rc = pieces_add(out, p + a, b - a, "", 0);
            }
            prev_emitted = 1;
        } else { /* SPLIT_MERGED_NEXT */
            if (!have_pend) {
                pend = a;
                have_pend = 1;
            }
            prev_emitted = 0;
        }
    }
    if (!rc && have_pend)
        rc = pieces_add(out, p + pend, n - pend, "", 0);
out:
    free(rg);
    return rc;
}

/* Metaspace on one piece: spaces -> replacement, the prepend rule, then the split. */
static int metaspace_piece(const tok_pre *op, scratch *s, const char *p, size_t pl, int first_segment, pieces *out,
                           char *err, size_t errlen)
{
    size_t rl = strlen(op->replacement), spaces = 0;
    for (size_t i = 0; i < pl; i++)
        spaces += p[i] == ' ';
    char *tmp = malloc(pl + (spaces + 1) * rl + 1);
    if (!tmp)
        return -ENOMEM;
    size_t o = 0;
    int prepend = op->prepend_scheme == PREPEND_ALWAYS || (op->prepend_scheme == PREPEND_FIRST && first_segment);
    if (prepend && !(pl >= 1 && p[0] == ' ') && !(pl >= rl && !memcmp(p, op->replacement, rl))) {
        memcpy(tmp, op->replacement, rl);
        o = rl;
    }
    for (size_t i = 0; i < pl; i++) {
        if (p[i] == ' ') {
            memcpy(tmp + o, op->replacement, rl);
            o += rl;
        } else
            tmp[o++] = p[i];
    }
    int rc = op->re ? split_piece(op, s, tmp, o, out, err, errlen) : pieces_add(out, tmp, o, "", 0);
    free(tmp);
    return rc;
}

static int pretokenize(const tok_t *t, scratch *s, const char *text, size_t n, int first_segment, pieces **result,
                       char *err, size_t errlen)
{
    pieces *cur = &s->a, *nxt = &s->b;
    cur->n = cur->len = 0;
    int rc = pieces_add(cur, text, n, "", 0);
    if (rc)
        return rc;
    for (int i = 0; i < t->n_pre; i++) {
        const tok_pre *op = &t->pre[i];
        nxt->n = nxt->len = 0;
        for (size_t j = 0; j < cur->n; j++) {
            const char *p = cur->buf + cur->start[j];
            size_t pl = cur->plen[j];
            if (op->kind == PRE_BYTELEVEL && op->add_prefix_space && (pl == 0 || p[0] != ' ')) {
                /* the prefix space goes in front, then the regex (if any) splits */
                pieces tmp = { 0 };
                if ((rc = pieces_add(&tmp, p, pl, " ", 1))) {
                    pieces_free(&tmp);
                    return rc;
                }
                rc = op->re ? split_piece(op, s, tmp.buf, tmp.plen[0], nxt, err, errlen)
                            : pieces_add(nxt, tmp.buf, tmp.plen[0], "", 0);
                pieces_free(&tmp);
                if (rc)
                    return rc;
                continue;
            }
            if (op->kind == PRE_METASPACE)
                rc = metaspace_piece(op, s, p, pl, first_segment && j == 0, nxt, err, errlen);
            else
                rc = op->re ? split_piece(op, s, p, pl, nxt, err, errlen) : pieces_add(nxt, p, pl, "", 0);
            if (rc)
                return rc;
        }
        pieces *x = cur;
        cur = nxt;
        nxt = x;
    }
    *result = cur;
    return 0;
}

/* ---- one segment between added tokens ------------------------------------------------------ */

static int encode_segment(const tok_t *t, scratch *s, const char *p, size_t n, int first_segment, int32_t **ids,
                          size_t *nids, size_t *cap, char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    size_t nl;
    int rc = normalize(t, s, p, n, &nl);
    if (rc)
        return rc == -EILSEQ ? mq_errmsg(err, errlen, rc, "tokenizer: normalization failed") : rc;
    if (nl == 0)
        return 0;
    /* the pre-tokenizer copies out of s->norm before normalize() runs again */
    pieces *pc;
    if ((rc = pretokenize(t, s, s->norm, nl, first_segment, &pc, err, errlen)))
        return rc;
    for (size_t i = 0; i < pc->n; i++)
        if ((rc = bpe_piece(t, s, pc->buf + pc->start[i], pc->plen[i], ids, nids, cap, err, errlen)))
            return rc;
    return 0;
}

static int encode_append(const mq_tokenizer *t, const char *text, size_t len, unsigned flags, const mq_tok_span *plain,
                         size_t n_plain, int32_t **ids, size_t *n, size_t *cap, char *err, size_t errlen)
{
    if (len && !text)
        return -EINVAL;
    if (!mq_utf8_valid(text, len))
        return mq_errmsg(err, errlen, -EILSEQ, "tokenizer: input is not valid UTF-8");
    scratch s = { 0 };
    int rc = 0;
    s.md = pcre2_match_data_create(1, NULL);
    if (!s.md)
        return -ENOMEM;
    if (flags & MQ_TOK_ADD_SPECIAL)
        for (int i = 0; i < t->n_pre_ids && !rc; i++)
            rc = ids_push(ids, n, cap, t->pre_ids[i]);
    size_t seg = 0, pos = 0, sp = 0;
    while (!rc && pos < len) {
        int32_t hit = -1;
        size_t hit_len = 0;
        while (sp < n_plain && plain[sp].off + plain[sp].len <= pos)
            sp++; /* plain[sp] is the first range that ends after pos */
        if (t->first_byte[(uint8_t)text[pos]]) {
            for (int i = 0; i < t->n_added; i++) { /* longest first: the first hit wins */
                const tok_added *a = &t->added[i];
                if (a->special && ((flags & MQ_TOK_NO_PARSE_SPECIAL) || (sp < n_plain && plain[sp].off < pos + a->len)))
                    continue;
                if (a->len <= len - pos && !memcmp(text + pos, t->arena + t->tokens[a->id].off, a->len)) {
                    hit = a->id;
                    hit_len = a->len;
                    break;
                }
            }
        }
        if (hit < 0) {
            pos++;
            continue;
        }
        rc = encode_segment(t, &s, text + seg, pos - seg, seg == 0, ids, n, cap, err, errlen);
        if (!rc)
            rc = ids_push(ids, n, cap, hit);
        pos += hit_len;
        seg = pos;
    }
    if (!rc)
        rc = encode_segment(t, &s, text + seg, len - seg, seg == 0, ids, n, cap, err, errlen);
    if (flags & MQ_TOK_ADD_SPECIAL)
        for (int i = 0; i < t->n_post_ids && !rc; i++)
            rc = ids_push(ids, n, cap, t->post_ids[i]);
    pcre2_match_data_free(s.md);
    pieces_free(&s.a);
    pieces_free(&s.b);
    free(s.sym);
    free(s.prev);
    free(s.next);
    free(s.heap);
    free(s.norm);
    if (rc == -ENOMEM)
        mq_errmsg(err, errlen, rc, "tokenizer: out of memory");
    return rc;
}

int mq_tok_encode_append(const mq_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids, size_t *n,
                         size_t *cap, char *err, size_t errlen)
{
    return encode_append(t, text, len, flags, NULL, 0, ids, n, cap, err, errlen);
}

int mq_tok_encode_spans(const mq_tokenizer *t, const char *text, size_t len, unsigned flags, const mq_tok_span *plain,
                        size_t n_plain, int32_t **ids, size_t *n, char *err, size_t errlen)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    int rc = encode_append(t, text, len, flags, plain, n_plain, ids, n, &cap, err, errlen);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}

int mq_tok_encode(const mq_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids, size_t *n,
                  char *err, size_t errlen)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    int rc = encode_append(t, text, len, flags, NULL, 0, ids, n, &cap, err, errlen);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}
