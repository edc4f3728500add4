/* tests/fuzz/fuzz_admin.c — libFuzzer target for mqd's admin protocol (what mqctl sends):
 * one datagram in, mqd_admin_reply (daemon/admin.c, the function the admin socket's
 * handler calls) on an mqd in the state it has while loading the model (admin requests
 * are served then; nothing is loaded, so no command can reach a scheduler).
 * Every input gets a reply that is a JSON object with a boolean "ok", an "error" text
 * when ok is false, a reply that prints, and the same reply for the same input; a
 * "status" reply says "loading". tests/fuzz/fuzz_admin.options closes the target's stderr
 * (mqd logs each refused reload there); libFuzzer keeps its own output and the sanitizers'. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "daemon/admin.h"
#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mqd d;

/* what mqd_init has set when the load thread starts: defaults, no sockets, loading */
static void loading_mqd(void)
{
    memset(&d, 0, sizeof d);
    mqd_config_defaults(&d.cfg);
    snprintf(d.cfg.model_dir, sizeof d.cfg.model_dir, "/nonexistent/model");
    d.client_fd = d.admin_fd = d.client_spare = d.admin_spare = d.hp_fd = -1;
    d.chat_kind = -1;
    d.start_ms = d.load_t0_ms = mq_now_ms();
    d.state = MQD_LOADING;
    d.load_phase = "weights";
    snprintf(d.model_name, sizeof d.model_name, "model");
    snprintf(d.probes_err, sizeof d.probes_err, "not loaded (fuzz target)");
}

/* The reply printed, or abort() when it breaks the protocol's promises. Caller frees. */
static char *checked_reply(const uint8_t *data, size_t size)
{
    cJSON *o = mqd_admin_reply(&d, (const char *)data, size, NULL);
    if (!o)
        return NULL; /* out of memory */
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(o, "ok");
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    if (!cJSON_IsObject(o) || !cJSON_IsBool(ok))
        abort();
    if (cJSON_IsFalse(ok) && !(cJSON_IsString(err) && err->valuestring[0]))
        abort(); /* a refusal says why */
    const cJSON *state = cJSON_GetObjectItemCaseSensitive(o, "state");
    if (state && !(cJSON_IsString(state) && !strcmp(state->valuestring, "loading")))
        abort(); /* nothing an admin sends ends the load */
    /* fields that move by themselves between two calls */
    cJSON_DeleteItemFromObject(o, "uptime_s");
    cJSON *load = cJSON_GetObjectItemCaseSensitive(o, "load");
    if (load)
        cJSON_DeleteItemFromObject(load, "ms");
    cJSON *mem = cJSON_GetObjectItemCaseSensitive(o, "memory");
    if (mem) {
        cJSON_DeleteItemFromObject(mem, "hugepages_free");
        cJSON_DeleteItemFromObject(mem, "hugepages_total");
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return NULL;
    cJSON *back = cJSON_Parse(s);
    if (!cJSON_IsObject(back))
        abort(); /* mqctl parses what mqd sends */
    cJSON_Delete(back);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    loading_mqd();
    char *a = checked_reply(data, size);
    char *b = checked_reply(data, size);
    if (a && b && strcmp(a, b))
        abort(); /* a request changed the loading mqd it was answered by */
    free(a);
    free(b);
    return 0;
}
