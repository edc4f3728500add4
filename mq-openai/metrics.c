/* mq-openai/metrics.c — Prometheus text exposition (see metrics.h). */
#define _GNU_SOURCE
#include "mq-openai/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bucket bounds in seconds: 1 ms .. 60 s, what TTFT and ITL of a CPU server span. */
static const double bounds[OAI_HIST_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                 0.25,  0.5,    1,     2.5,  5,     10,   60 };

static void add(uint64_t *p, uint64_t v)
{
    __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

void oai_metrics_request(oai_metrics *m, oai_endpoint ep, int status)
{
    int k = status < 300 ? 0 : status == 400 ? 1 : status == 401 ? 2 : status < 429 ? 3 : status == 429 ? 4 : 5;
    add(&m->requests[ep][k], 1);
}

void oai_metrics_tokens(oai_metrics *m, uint32_t prompt, uint32_t cached, uint32_t generated)
{
    add(&m->prompt_tokens, prompt);
    add(&m->cached_tokens, cached);
    add(&m->generation_tokens, generated);
}

void oai_metrics_observe(oai_hist *h, double seconds)
{
    int b = 0;
    while (b < OAI_HIST_BUCKETS && seconds > bounds[b])
        b++;
    add(&h->count[b], 1);
    add(&h->n, 1);
    add(&h->sum_us, seconds > 0 ? (uint64_t)(seconds * 1e6) : 0);
}

static void hist(FILE *f, const char *name, const char *help, const oai_hist *h, const char *model)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < OAI_HIST_BUCKETS; b++) {
        cum += get(&h->count[b]);
        fprintf(f, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", name, model, bounds[b], (unsigned long long)cum);
    }
    cum += get(&h->count[OAI_HIST_BUCKETS]);
    fprintf(f, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", name, model, (unsigned long long)cum);
    fprintf(f, "%s_sum{model_name=\"%s\"} %.6f\n", name, model, get(&h->sum_us) / 1e6);
    fprintf(f, "%s_count{model_name=\"%s\"} %llu\n", name, model, (unsigned long long)get(&h->n));
}

char *oai_metrics_render(const oai_metrics *m, const char *model, const oai_gauges *g)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    static const char *const eps[OAI_EP_COUNT] = { "/v1/chat/completions", "/v1/completions", "other" };
    static const char *const codes[6] = { "2xx", "400", "401", "404", "429", "5xx" };
    fprintf(f, "# HELP mq_http_requests_total HTTP requests answered, by endpoint and status.\n"
               "# TYPE mq_http_requests_total counter\n");
    for (int e = 0; e < OAI_EP_COUNT; e++)
        for (int k = 0; k < 6; k++)
            fprintf(f, "mq_http_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n", eps[e], codes[k],
                    (unsigned long long)get(&m->requests[e][k]));
    fprintf(f,
            "# HELP mq_http_prompt_tokens_total Prompt tokens of finished requests.\n"
            "# TYPE mq_http_prompt_tokens_total counter\nmq_http_prompt_tokens_total %llu\n"
            "# HELP mq_http_cached_tokens_total Prompt tokens mq did not compute (KV reused).\n"
            "# TYPE mq_http_cached_tokens_total counter\nmq_http_cached_tokens_total %llu\n"
            "# HELP mq_http_generation_tokens_total Generated tokens.\n"
            "# TYPE mq_http_generation_tokens_total counter\nmq_http_generation_tokens_total %llu\n"
            "# HELP mq_http_client_aborts_total Requests cancelled because the client went away.\n"
            "# TYPE mq_http_client_aborts_total counter\nmq_http_client_aborts_total %llu\n",
            (unsigned long long)get(&m->prompt_tokens), (unsigned long long)get(&m->cached_tokens),
            (unsigned long long)get(&m->generation_tokens), (unsigned long long)get(&m->aborted));
    hist(f, "mq_http_time_to_first_token_seconds", "Time from request to first token.", &m->ttft, model);
    hist(f, "mq_http_inter_token_latency_seconds", "Time between streamed tokens.", &m->itl, model);
    hist(f, "mq_http_e2e_request_latency_seconds", "Time from request to its last byte.", &m->e2e, model);
    int up = g->state > 0;
    double kv = up && g->kv_total ? (double)g->kv_used / g->kv_total : 0;
    fprintf(f,
            "# HELP mq_up 1 when mqd answers, 0 otherwise.\n# TYPE mq_up gauge\nmq_up %d\n"
            "# HELP mq_draining 1 while mqd drains (no new requests).\n# TYPE mq_draining gauge\nmq_draining %d\n"
            "# HELP mq_http_requests_running Requests inside mq-openai now.\n"
            "# TYPE mq_http_requests_running gauge\nmq_http_requests_running %d\n"
            "# HELP mq_requests_running Requests prefilling or decoding in mqd.\n"
            "# TYPE mq_requests_running gauge\nmq_requests_running %u\n"
            "# HELP mq_requests_waiting Requests queued in mqd.\n"
            "# TYPE mq_requests_waiting gauge\nmq_requests_waiting %u\n"
            "# HELP mq_kv_blocks_used KV blocks in use in mqd.\n# TYPE mq_kv_blocks_used gauge\nmq_kv_blocks_used %u\n"
            "# HELP mq_kv_blocks_total KV blocks of mqd's store.\n"
            "# TYPE mq_kv_blocks_total gauge\nmq_kv_blocks_total %u\n"
            "# HELP vllm:num_requests_running Requests running (vLLM's name, for routers).\n"
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"%s\"} %u\n"
            "# HELP vllm:num_requests_waiting Requests waiting (vLLM's name, for routers).\n"
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"%s\"} %u\n"
            "# HELP vllm:kv_cache_usage_perc KV cache usage, 1 = full (vLLM's name, for routers).\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"%s\"} %.6f\n",
            up, g->state == 2, g->http_running, up ? g->running : 0, up ? g->waiting : 0, up ? g->kv_used : 0,
            up ? g->kv_total : 0, model, up ? g->running : 0, model, up ? g->waiting : 0, model, kv);
    fclose(f);
    return buf;
}
