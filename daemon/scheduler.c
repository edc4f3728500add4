/* daemon/scheduler.c — see scheduler.h. (Implementation in progress.) */
#include "scheduler.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void mq_sched_opts_default(mq_sched_opts *o)
{
    memset(o, 0, sizeof *o);
    o->prefill_threads = 2;
    o->decode_threads = 2;
    o->chunk_tokens = 256;
    o->max_batch = 16;
    o->max_queued = 64;
    o->max_sessions = 256;
    o->block_tokens = 64;
    o->mode = MQ_SCHED_MIXED;
    o->on_kv_full = MQ_KV_FULL_WAIT;
    o->kv_hugetlb = 1;
}

const char *mq_end_reason_name(mq_end_reason r)
{
    switch (r) {
    case MQ_END_STOP_TOKEN: return "stop_token";
    case MQ_END_STOP_STRING: return "stop_string";
    case MQ_END_LENGTH: return "length";
    case MQ_END_CANCEL: return "cancel";
    case MQ_END_CLIENT_GONE: return "client_gone";
    case MQ_END_ERROR: return "error";
    }
    return "?";
}

int mq_sched_create(mq_sched **s, struct mq_model *model, struct mq_tokenizer *tok,
                    const mq_sched_opts *o, char *err, size_t errlen)
{
    (void)s; (void)model; (void)tok; (void)o;
    snprintf(err, errlen, "scheduler: not implemented yet");
    return -ENOSYS;
}
