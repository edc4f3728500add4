/* tests/bench/eval_corpus.h — the evaluation corpus as mq_eval and test_perplexity read it.
 *
 * The definition behind the golden `perplexity` (shared/golden/mq-qwen3-80m/logits.json):
 * documents of corpus/dev.txt are separated by "<|endoftext|>"; each is stripped of
 * leading/trailing whitespace (Python str.strip() on ASCII whitespace), empty ones are
 * dropped, the text is tokenized without special tokens (add_special_tokens=False) and cut
 * to 1024 tokens; the score is the NLL of tokens 2..n (predicted positions 1..n-1), summed
 * over documents and divided by the number of scored tokens; ppl = exp(mean NLL).
 * Header-only (static functions), shared by two programs of tests/.
 */
#ifndef MQ_TESTS_EVAL_CORPUS_H
#define MQ_TESTS_EVAL_CORPUS_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"

#define EVAL_MAX_TOKENS 1024

typedef struct eval_doc {
    int32_t *ids;
    int n;      /* tokens after the cut */
    int n_full; /* tokens before the cut */
} eval_doc;

typedef struct eval_corpus {
    eval_doc *docs;
    int n;
} eval_corpus;

/* vsnprintf: a message cut to errlen is fine (and keeps -Wformat-truncation quiet) */
__attribute__((format(printf, 3, 4))) static void eval_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int eval_is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* Reads `path` and tokenizes its first max_docs non-empty documents (all if max_docs <= 0),
 * keeping at most `cut` tokens of each. 0 or -errno with a message in err. */
static int eval_corpus_load(eval_corpus *c, const char *path, const mq_tokenizer *tok, int max_docs, int cut, char *err,
                            size_t errlen)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        eval_errf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = len > 0 ? malloc((size_t)len + 1) : NULL;
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(text);
        eval_errf(err, errlen, "%s: cannot read", path);
        return -EIO;
    }
    fclose(f);
    text[len] = 0;
    static const char SEP[] = "<|endoftext|>";
    int cap = 0, rc = 0;
    for (char *p = text; p && (max_docs <= 0 || c->n < max_docs);) {
        char *e = strstr(p, SEP);
        if (e)
            *e = 0;
        char *s = p;
        p = e ? e + sizeof SEP - 1 : NULL;
        while (*s && eval_is_space((unsigned char)*s))
            s++;
        size_t l = strlen(s);
        while (l && eval_is_space((unsigned char)s[l - 1]))
            l--;
        if (!l)
            continue;
        int32_t *ids = NULL;
        size_t n = 0;
        char terr[MQ_TOK_ERR_LEN];
        rc = mq_tok_encode(tok, s, l, 0, &ids, &n, terr, sizeof terr);
        if (rc) {
            eval_errf(err, errlen, "%s: document %d: %s", path, c->n, terr);
            break;
        }
        if (c->n == cap) {
            cap = cap ? cap * 2 : 256;
            eval_doc *nd = realloc(c->docs, (size_t)cap * sizeof *nd);
            if (!nd) {
                free(ids);
                rc = -ENOMEM;
                break;
            }
            c->docs = nd;
        }
        c->docs[c->n].ids = ids;
        c->docs[c->n].n_full = (int)n;
        c->docs[c->n].n = (int)n > cut ? cut : (int)n;
        c->n++;
    }
    free(text);
    return rc;
}

static void eval_corpus_free(eval_corpus *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->docs[i].ids);
    free(c->docs);
    memset(c, 0, sizeof *c);
}

#endif
