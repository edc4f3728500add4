/* engine/prec_mode.h — the precision modes (shared/docs/NVFP4.md § Modes), in one place.
 *
 * A forward pass runs its linears in one precision (mq_prec). A mode says which
 * precision each token of a request gets:
 *   prompt tokens 0..n-2     mq_prec_mode_prompt(mode)  (they only fill the KV cache)
 *   prompt token n-1 and     mq_prec_mode_decode(mode)  (every sampled distribution
 *   every generated token                                comes from these logits)
 * mixed = NVFP4 prompt, BF16 last token and decode; bf16 = all BF16; fp4 = all NVFP4.
 * The engine applies the prompt part (mq_engine_prefill_chunk), the scheduler the decode
 * part; mqd's config, tests and benchmarks name modes through this header only.
 * Header-only: the daemon's config parser uses it without linking the engine.
 */
#ifndef MQ_ENGINE_PREC_MODE_H
#define MQ_ENGINE_PREC_MODE_H

#include <errno.h>
#include <string.h>

/* The linears' precision in one forward pass. */
typedef enum { MQ_PREC_BF16, MQ_PREC_FP4 } mq_prec;

typedef enum { MQ_PREC_MODE_MIXED = 0, MQ_PREC_MODE_BF16 = 1, MQ_PREC_MODE_FP4 = 2 } mq_prec_mode;
#define MQ_PREC_MODE_COUNT 3

/* Names in enum order, NULL-terminated (table-driven parsers take the list). */
static const char *const mq_prec_mode_names[MQ_PREC_MODE_COUNT + 1] = { "mixed", "bf16", "fp4", NULL };

static inline const char *mq_prec_mode_name(mq_prec_mode m)
{
    return (unsigned)m < MQ_PREC_MODE_COUNT ? mq_prec_mode_names[m] : "?";
}

/* "mixed" | "bf16" | "fp4"; -EINVAL otherwise. */
static inline int mq_prec_mode_parse(const char *s, mq_prec_mode *m)
{
    for (int i = 0; i < MQ_PREC_MODE_COUNT; i++)
        if (!strcmp(s, mq_prec_mode_names[i])) {
            *m = (mq_prec_mode)i;
            return 0;
        }
    return -EINVAL;
}

/* Precision of prompt tokens before the last one. */
static inline mq_prec mq_prec_mode_prompt(mq_prec_mode m)
{
    return m == MQ_PREC_MODE_BF16 ? MQ_PREC_BF16 : MQ_PREC_FP4;
}

/* Precision of the prompt's last token and of every generated token. */
static inline mq_prec mq_prec_mode_decode(mq_prec_mode m)
{
    return m == MQ_PREC_MODE_FP4 ? MQ_PREC_FP4 : MQ_PREC_BF16;
}

#endif
