/* mq-openai/metrics.h — Prometheus counters and histograms of mq-openai, and the text
 * exposition of /metrics.
 *
 * Owns: request counts by endpoint and status, prompt / cached / generated token totals,
 * TTFT, inter-token and end-to-end latency histograms (seconds). The gauges of mqd
 * (running and waiting requests, KV use) are passed in at render time from mqd's STATS,
 * and exported also under the names routers read (vllm:num_requests_running,
 * vllm:num_requests_waiting, vllm:kv_cache_usage_perc, a 0..1 fraction as vLLM's is).
 *
 * Who calls it: the HTTP handlers. Thread rules: every function is thread-safe (atomics).
 */
#ifndef MQ_OPENAI_METRICS_H
#define MQ_OPENAI_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define OAI_HIST_BUCKETS 14

typedef struct oai_hist {
    uint64_t count[OAI_HIST_BUCKETS + 1]; /* last: +Inf */
    uint64_t n;
    uint64_t sum_us;
} oai_hist;

typedef enum { OAI_EP_CHAT = 0, OAI_EP_COMPLETIONS, OAI_EP_OTHER, OAI_EP_COUNT } oai_endpoint;

typedef struct oai_metrics {
    uint64_t requests[OAI_EP_COUNT][6]; /* by status class: 2xx,400,401,404/413,429,5xx */
    uint64_t prompt_tokens, cached_tokens, generation_tokens;
    uint64_t aborted; /* requests cancelled because the client went away */
    oai_hist ttft, itl, e2e;
} oai_metrics;

void oai_metrics_request(oai_metrics *m, oai_endpoint ep, int status);
void oai_metrics_tokens(oai_metrics *m, uint32_t prompt, uint32_t cached, uint32_t generated);
void oai_metrics_observe(oai_hist *h, double seconds);

/* What mqd said at scrape time (state < 0: mqd did not answer). */
typedef struct oai_gauges {
    int state;
    uint32_t running, waiting;
    uint32_t kv_used, kv_total;
    int http_running; /* requests inside mq-openai */
} oai_gauges;

/* The exposition text (malloc'ed). */
char *oai_metrics_render(const oai_metrics *m, const char *model, const oai_gauges *g);

#endif
