/* daemon/admin.c — the admin protocol: one JSON object per SOCK_SEQPACKET datagram.
 *
 * Request:  {"cmd": one of `commands` below, "id": N (cancel only)}
 * Reply:    {"ok": true, ...command fields...} or {"ok": false, "error": "text"}
 * Peers: root, or members of the configured admin_group (SO_PEERCRED + SO_PEERGROUPS);
 * anyone else gets {"ok": false, "error": "permission denied: ..."} as the answer to its
 * first request and is disconnected (answering at accept time, with the request unread,
 * would reach the peer as ECONNRESET; the client socket does the same).
 * A request that is not a JSON object with a known "cmd" gets an error reply; the
 * connection stays usable. Replies are capped at MAX_REPLY bytes (session lists are
 * truncated with "truncated": true).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "daemon/admin.h"
#include "daemon/client_conn.h"
#include "daemon/control.h"
#include "daemon/log.h"
#include "daemon/privs.h"
#include "daemon/probes.h"
#include "daemon/seccomp.h"
#include "daemon/tenants.h"
#include "engine/arena.h"
#include "engine/model.h"
#include "engine/scheduler.h"

#define MAX_REQ          65536
#define MAX_REPLY        (1u << 20)
#define MAX_SESSION_ROWS 4096

typedef struct mqd_admin {
    mqd *d;
    struct mqd_admin *next;
    int fd;
    mq_ev *ev;
    int denied;   /* not root nor in admin_group: the first request gets `why`, then close */
    int on_spare; /* accepted in the slot of d->admin_spare (privs.h) */
    char why[300];
} mqd_admin;

static const char *state_name(enum mqd_state s)
{
    switch (s) {
    case MQD_LOADING: return "loading";
    case MQD_READY: return "ready";
    case MQD_DRAINING: return "draining";
    case MQD_STOPPING: return "stopping";
    default: return "failed";
    }
}

struct users {
    const mqd *d;
    cJSON *arr;
};

/* One user's share (the scheduler's tenant: the client's uid, or a tenant named by a
 * trusted front, daemon/tenants.h). */
static void tenant_cb(void *ctx, const mq_tenant_info *t)
{
    struct users *us = ctx;
    cJSON *u = cJSON_CreateObject();
    const char *name = mqd_tenant_name(us->d, t->tenant);
    if (name)
        cJSON_AddStringToObject(u, "tenant_name", name);
    else
        cJSON_AddNumberToObject(u, "uid", (double)t->tenant);
    cJSON_AddNumberToObject(u, "sessions", t->sessions);
    cJSON_AddNumberToObject(u, "queued", t->queued);
    cJSON_AddNumberToObject(u, "running", t->running);
    cJSON_AddNumberToObject(u, "kv_blocks", t->kv_blocks);
    cJSON_AddNumberToObject(u, "kv_reserved", t->kv_reserved);
    cJSON_AddItemToArray(us->arr, u);
}

/* The limits in effect, global and per user (0 = none per user). */
static void add_limits(mqd *d, cJSON *o)
{
    const mqd_config *c = &d->cfg;
    cJSON *l = cJSON_AddObjectToObject(o, "limits");
    cJSON_AddNumberToObject(l, "max_sessions", c->max_sessions);
    cJSON_AddNumberToObject(l, "max_sessions_per_client", c->max_sessions_per_client);
    cJSON_AddNumberToObject(l, "max_sessions_per_uid", c->max_sessions_per_uid);
    cJSON_AddNumberToObject(l, "queue_max", c->queue_max);
    cJSON_AddNumberToObject(l, "queue_max_per_uid", c->queue_max_per_uid);
    cJSON_AddNumberToObject(l, "kv_blocks", c->kv_tokens / c->kv_block_tokens);
    cJSON_AddNumberToObject(l, "kv_blocks_per_uid", c->kv_tokens_per_uid / c->kv_block_tokens);
    cJSON_AddStringToObject(l, "prefix_cache", c->share_prefix_cache ? "shared" : "per uid");
}

static void add_sched_stats(mqd *d, cJSON *o)
{
    if (!mqd_sched(d))
        return;
    mq_sched_stats st;
    mq_sched_get_stats(d->sched, &st);
    cJSON *q = cJSON_AddObjectToObject(o, "queue");
    cJSON_AddNumberToObject(q, "queued", st.queued);
    cJSON_AddNumberToObject(q, "prefilling", st.prefilling);
    cJSON_AddNumberToObject(q, "decoding", st.decoding);
    cJSON *t = cJSON_AddObjectToObject(o, "tokens");
    cJSON_AddNumberToObject(t, "requests_done", (double)st.requests_done);
    cJSON_AddNumberToObject(t, "requests_failed", (double)st.requests_failed);
    cJSON_AddNumberToObject(t, "prompt", (double)st.prompt_tokens);
    cJSON_AddNumberToObject(t, "cached", (double)st.cached_tokens);
    cJSON_AddNumberToObject(t, "prefilled", (double)st.prefilled_tokens);
    cJSON_AddNumberToObject(t, "generated", (double)st.generated_tokens);
    cJSON_AddNumberToObject(t, "prefill_tok_s", st.prefill_tok_s);
    cJSON_AddNumberToObject(t, "decode_tok_s", st.decode_tok_s);
    cJSON_AddNumberToObject(t, "cached_ratio", st.cache_hit_ratio);
    cJSON *k = cJSON_AddObjectToObject(o, "kv");
    cJSON_AddNumberToObject(k, "blocks", st.kv_blocks);
    cJSON_AddNumberToObject(k, "used", st.kv_used);
    cJSON_AddNumberToObject(k, "cached", st.kv_cached);
    cJSON_AddNumberToObject(k, "free", st.kv_free);
    cJSON_AddNumberToObject(k, "block_tokens", st.block_tokens);
    cJSON_AddNumberToObject(k, "bytes", (double)st.kv_bytes);
    cJSON_AddStringToObject(k, "memory", st.kv_memory ? st.kv_memory : "?");
    cJSON_AddNumberToObject(k, "occupancy", st.kv_blocks ? (double)st.kv_used / st.kv_blocks : 0);
    cJSON_AddNumberToObject(k, "lookups", (double)st.kv_lookups);
    cJSON_AddNumberToObject(k, "hits", (double)st.kv_hits);
    cJSON_AddNumberToObject(k, "evictions", (double)st.kv_evictions);
    cJSON_AddNumberToObject(k, "refused", (double)st.kv_refused);
    cJSON_AddNumberToObject(k, "reserved", st.kv_reserved);
    cJSON_AddNumberToObject(k, "available", st.kv_available);
    cJSON_AddNumberToObject(t, "requests_yielded", (double)st.requests_yielded);
    cJSON_AddNumberToObject(o, "sessions", st.sessions);
    add_limits(d, o);
    struct users us = { d, cJSON_AddArrayToObject(o, "users") };
    mq_sched_tenants(d->sched, tenant_cb, &us);
}

static void cmd_status(mqd *d, cJSON *o)
{
    cJSON_AddStringToObject(o, "state", state_name(d->state));
    cJSON_AddNumberToObject(o, "pid", getpid());
    cJSON_AddNumberToObject(o, "uid", getuid());
    cJSON_AddNumberToObject(o, "uptime_s", (mq_now_ms() - d->start_ms) / 1000.0);
    cJSON *m = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(m, "name", d->model_name);
    cJSON_AddStringToObject(m, "dir", d->cfg.model_dir);
    cJSON_AddStringToObject(m, "mode", mq_prec_mode_name(d->cfg.mode));
    cJSON_AddNumberToObject(m, "ctx_limit", d->loaded ? d->ctx_limit : 0);
    cJSON *modes = cJSON_AddArrayToObject(m, "modes");
    cJSON_AddItemToArray(modes, cJSON_CreateString("mixed"));
    cJSON_AddItemToArray(modes, cJSON_CreateString("bf16"));
    cJSON_AddItemToArray(modes, cJSON_CreateString("fp4"));
    cJSON *ld = cJSON_AddObjectToObject(o, "load");
    uint64_t done = __atomic_load_n(&d->load_bytes_done, __ATOMIC_RELAXED);
    uint64_t total = __atomic_load_n(&d->load_bytes_total, __ATOMIC_RELAXED);
    cJSON_AddStringToObject(ld, "phase", d->loaded ? "done" : mqd_load_phase(d));
    cJSON_AddNumberToObject(ld, "bytes_done", (double)done);
    cJSON_AddNumberToObject(ld, "bytes_total", (double)total);
    cJSON_AddNumberToObject(ld, "progress", total ? (double)done / total : 0);
    cJSON_AddNumberToObject(ld, "ms", (double)(d->loaded ? d->load_ms : mq_now_ms() - d->load_t0_ms));
    cJSON_AddStringToObject(ld, "note", d->loaded ? d->load_note : "");
    cJSON *mem = cJSON_AddObjectToObject(o, "memory");
    mq_arena *arena = __atomic_load_n(&d->arena, __ATOMIC_ACQUIRE); /* published while loading */
    if (arena) {
        mq_arena_stats as;
        mq_arena_stats_get(arena, &as);
        cJSON *w = cJSON_AddObjectToObject(mem, "weights_mapped");
        for (int k = 0; k < MQ_MEM_KINDS; k++)
            cJSON_AddNumberToObject(w, mq_mem_kind_name((mq_mem_kind)k), (double)as.mapped[k]);
        cJSON_AddNumberToObject(mem, "weights_used", (double)as.used);
    }
    if (d->loaded && d->model) {
        cJSON_AddNumberToObject(mem, "weights_bf16", (double)d->model->bf16_bytes);
        cJSON_AddNumberToObject(mem, "weights_fp4", (double)d->model->fp4_bytes);
        cJSON_AddNumberToObject(mem, "weights_fp4_packed", (double)d->model->fp4_packed_bytes);
        cJSON_AddStringToObject(mem, "weights_fp4_packed_form",
                                !d->model->fp4_packed_bytes ? "none"
                                : d->model->fp4_table       ? "table"
                                                            : "index");
        cJSON_AddNumberToObject(mem, "weights_other", (double)d->model->other_bytes);
    }
    if (mqd_sched(d)) {
        /* the KV segment is one mapping of one kind; same shape as weights_mapped */
        mq_sched_stats ks;
        mq_sched_get_stats(d->sched, &ks);
        cJSON *kv = cJSON_AddObjectToObject(mem, "kv_mapped");
        for (int k = 0; k < MQ_MEM_KINDS; k++) {
            const char *name = mq_mem_kind_name((mq_mem_kind)k);
            int here = ks.kv_memory && !strcmp(ks.kv_memory, name);
            cJSON_AddNumberToObject(kv, name, here ? (double)ks.kv_bytes : 0);
        }
    }
    long hp = mq_hugepages_free(), nr = mq_hugepages_nr();
    cJSON_AddNumberToObject(mem, "hugepages_free", hp < 0 ? 0 : (double)hp);
    cJSON_AddNumberToObject(mem, "hugepages_total", nr < 0 ? 0 : (double)nr);
    /* what mqd itself reserved at start (hugepages_reserve) and how that went */
    cJSON_AddNumberToObject(mem, "hugepages_asked", (double)d->hp_asked);
    cJSON_AddNumberToObject(mem, "hugepages_reserved", (double)d->hp_added);
    cJSON_AddStringToObject(mem, "hugepages_note", d->hp_note);
    cJSON *p = cJSON_AddObjectToObject(o, "pools");
    cJSON *pp = cJSON_AddObjectToObject(p, "prefill");
    cJSON_AddNumberToObject(pp, "threads", d->cfg.prefill_threads);
    cJSON_AddStringToObject(pp, "cpus", d->cfg.prefill_cpus[0] ? d->cfg.prefill_cpus : "all");
    cJSON *dp = cJSON_AddObjectToObject(p, "decode");
    cJSON_AddNumberToObject(dp, "threads", d->cfg.decode_threads);
    cJSON_AddStringToObject(dp, "cpus", d->cfg.decode_cpus[0] ? d->cfg.decode_cpus : "all");
    cJSON_AddNumberToObject(o, "clients", d->n_conns);
    cJSON_AddStringToObject(o, "bpf", d->probes ? "loaded" : d->probes_err);
    cJSON *sc = cJSON_AddObjectToObject(o, "seccomp");
    static const char *const sc_modes[] = { "on", "kill", "off" };
    cJSON_AddStringToObject(sc, "mode", sc_modes[d->cfg.seccomp <= MQD_SECCOMP_OFF ? d->cfg.seccomp : 0]);
    int last = -1;
    cJSON_AddNumberToObject(sc, "refused", (double)mqd_seccomp_refused(&last));
    char name[64] = "";
    cJSON_AddStringToObject(sc, "last_refused", last >= 0 ? mqd_seccomp_name(last, name, sizeof name) : "");
    if (d->state != MQD_LOADING)
        add_sched_stats(d, o);
    if (d->fail_msg[0])
        cJSON_AddStringToObject(o, "error", d->fail_msg);
}

typedef struct {
    const mqd *d;
    cJSON *arr;
    int n;
    int truncated;
} rows;

static void sched_session_cb(void *ctx, const mq_session_info *i)
{
    rows *r = ctx;
    if (r->n >= MAX_SESSION_ROWS) {
        r->truncated = 1;
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)i->id);
    cJSON_AddNumberToObject(o, "tenant", (double)i->tenant);
    const char *name = mqd_tenant_name(r->d, i->tenant);
    if (name)
        cJSON_AddStringToObject(o, "tenant_name", name);
    cJSON_AddNumberToObject(o, "history_tokens", i->history_tokens);
    cJSON_AddNumberToObject(o, "kv_tokens", i->kv_tokens);
    cJSON_AddNumberToObject(o, "kv_blocks", i->kv_blocks);
    cJSON_AddNumberToObject(o, "shared_blocks", i->shared_blocks);
    cJSON_AddNumberToObject(o, "reserved_blocks", i->reserved_blocks);
    static const char *const busy[] = { "idle", "queued", "prefilling", "decoding" };
    cJSON_AddStringToObject(o, "state", i->busy >= 0 && i->busy < 4 ? busy[i->busy] : "?");
    cJSON_AddNumberToObject(o, "idle_ms", i->idle_ms);
    cJSON_AddItemToArray(r->arr, o);
    r->n++;
}

static void owner_cb(void *ctx, const mqd_session_view *v)
{
    cJSON *arr = ctx;
    cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        cJSON *id = cJSON_GetObjectItem(it, "id");
        if (id && (uint64_t)id->valuedouble == v->session) {
            cJSON_AddNumberToObject(it, "pid", v->pid);
            cJSON_AddNumberToObject(it, "uid", v->uid);
            cJSON_AddStringToObject(it, "mode", v->mode ? "raw" : "chat");
            cJSON_AddNumberToObject(it, "request", (double)v->running_req);
            return;
        }
    }
}

static void cmd_sessions(mqd *d, cJSON *o)
{
    rows r = { d, cJSON_AddArrayToObject(o, "sessions"), 0, 0 };
    if (mqd_sched(d))
        mq_sched_sessions(d->sched, sched_session_cb, &r);
    mqd_client_sessions(d, owner_cb, r.arr);
    if (r.truncated)
        cJSON_AddBoolToObject(o, "truncated", 1);
}

static void top_cb(pid_t tid, const char *comm, uint64_t offcpu_ns, uint64_t faults, void *ctx)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tid", tid);
    cJSON_AddStringToObject(o, "name", comm);
    cJSON_AddNumberToObject(o, "offcpu_ms", offcpu_ns / 1e6);
    cJSON_AddNumberToObject(o, "faults", (double)faults);
    cJSON_AddItemToArray(ctx, o);
}

/* ---- commands: each fills the reply object, or returns an error text ------------ */
typedef struct call {
    mqd *d;
    const cJSON *req; /* the request object */
    cJSON *o;         /* the reply object */
    char *buf;        /* room for a message (error or reply) */
    size_t buflen;
} call;

static const char *loading(const mqd *d)
{
    return d->state == MQD_LOADING ? "mqd is still loading the model" : NULL;
}

static const char *do_status(const call *c)
{
    cmd_status(c->d, c->o);
    return NULL;
}

static const char *do_stats(const call *c)
{
    if (loading(c->d))
        return loading(c->d);
    add_sched_stats(c->d, c->o);
    return NULL;
}

static const char *do_sessions(const call *c)
{
    cmd_sessions(c->d, c->o);
    return NULL;
}

static const char *do_config(const call *c)
{
    char *js = mqd_config_to_json(&c->d->cfg);
    cJSON *cfg = js ? cJSON_Parse(js) : NULL;
    free(js);
    if (!cfg)
        return "out of memory";
    cJSON_AddItemToObject(c->o, "config", cfg);
    cJSON_AddStringToObject(c->o, "config_file", c->d->config_path);
    return NULL;
}

static const char *do_cancel(const call *c)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(c->req, "id");
    /* ids are counters mqd hands out: whole numbers from 1, exact in a double up to 2^53
     * (a larger or fractional one names nothing; converting 1e309 would be undefined) */
    if (!cJSON_IsNumber(id) || !(id->valuedouble >= 1 && id->valuedouble <= 9007199254740992.0) ||
        (double)(uint64_t)id->valuedouble != id->valuedouble)
        return "cancel needs a whole-number \"id\" from 1 to 2^53 (request or session)";
    uint64_t n = (uint64_t)id->valuedouble;
    if (!mqd_sched(c->d))
        return "mqd is still loading the model";
    if (mqd_client_cancel(c->d, n, c->buf, c->buflen))
        return c->buf;
    cJSON_AddStringToObject(c->o, "message", c->buf);
    return NULL;
}

static const char *do_drain(const call *c)
{
    if (loading(c->d))
        return loading(c->d);
    mqd_begin_drain(c->d, "mqctl drain");
    cJSON_AddStringToObject(c->o, "state", state_name(c->d->state));
    cJSON_AddNumberToObject(c->o, "timeout_ms", c->d->cfg.drain_timeout_ms);
    return NULL;
}

static const char *do_reload(const call *c)
{
    if (mqd_reload(c->d, c->buf, c->buflen))
        return c->buf;
    cJSON_AddStringToObject(c->o, "message", c->buf);
    return NULL;
}

static const char *do_top(const call *c)
{
    if (!c->d->probes) {
        snprintf(c->buf, c->buflen, "BPF unavailable: %s", c->d->probes_err[0] ? c->d->probes_err : "not loaded");
        return c->buf;
    }
    cJSON *arr = cJSON_AddArrayToObject(c->o, "threads");
    int rc = mq_probes_read(c->d->probes, top_cb, arr);
    if (rc) {
        snprintf(c->buf, c->buflen, "reading BPF maps: %s", strerror(-rc));
        return c->buf;
    }
    return NULL;
}

static const struct {
    const char *name;
    const char *(*run)(const call *c);
} commands[] = {
    { "status", do_status }, { "sessions", do_sessions }, { "stats", do_stats },   { "cancel", do_cancel },
    { "drain", do_drain },   { "reload", do_reload },     { "config", do_config }, { "top", do_top },
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* Returns NULL on success or an error text. */
static const char *run_cmd(mqd *d, const cJSON *req, cJSON *o, char *buf, size_t buflen)
{
    const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(req, "cmd");
    if (!cJSON_IsString(cmd))
        return "request needs a string field \"cmd\"";
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(cmd->valuestring, commands[i].name))
            return commands[i].run(&(call){ d, req, o, buf, buflen });
    int n = snprintf(buf, buflen, "unknown command \"%.64s\" (", cmd->valuestring);
    for (size_t i = 0; i < N_COMMANDS && n > 0 && (size_t)n < buflen; i++)
        n += snprintf(buf + n, buflen - (size_t)n, "%s%s", commands[i].name, i + 1 < N_COMMANDS ? ", " : ")");
    return buf;
}

static void send_json(int fd, cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    if (!s)
        return;
    size_t n = strlen(s);
    if (n > MAX_REPLY) {
        free(s);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddBoolToObject(e, "ok", 0);
        cJSON_AddStringToObject(e, "error", "reply too large");
        s = cJSON_PrintUnformatted(e);
        cJSON_Delete(e);
        if (!s)
            return;
        n = strlen(s);
    }
    ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
    (void)w;
    free(s);
}

static void admin_close(mqd_admin *a)
{
    mqd *d = a->d;
    mq_evloop_del(d->loop, a->ev);
    close(a->fd);
    if (a->on_spare)
        mqd_spare_fd_reserve(&d->admin_spare);
    for (mqd_admin **pp = &d->admins; *pp; pp = &(*pp)->next)
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    free(a);
}

cJSON *mqd_admin_reply(mqd *d, const char *req, size_t n, const char *denied)
{
    char msg[512];
    const char *err = NULL;
    cJSON *o = cJSON_CreateObject(), *j = NULL;
    if (!o)
        return NULL;
    if (denied)
        err = denied;
    else if (n > MAX_REQ)
        err = "request over 64 KiB";
    else if (!(j = cJSON_ParseWithLength(req, n)) || !cJSON_IsObject(j))
        err = "request is not a JSON object";
    else
        err = run_cmd(d, j, o, msg, sizeof msg);
    cJSON_Delete(j);
    if (err) {
        cJSON_Delete(o);
        o = cJSON_CreateObject();
        if (o && (!cJSON_AddBoolToObject(o, "ok", 0) || !cJSON_AddStringToObject(o, "error", err))) {
            cJSON_Delete(o);
            o = NULL;
        }
    } else if (!cJSON_AddBoolToObject(o, "ok", 1)) {
        cJSON_Delete(o);
        o = NULL;
    }
    return o;
}

static void on_admin_readable(mq_evloop *l, int fd, uint32_t events, void *arg)
{
    (void)l;
    (void)events;
    mqd_admin *a = arg;
    char *buf = malloc(MAX_REQ + 1);
    if (!buf) {
        admin_close(a);
        return;
    }
    for (;;) {
        ssize_t n = recv(fd, buf, MAX_REQ + 1, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            admin_close(a);
            break;
        }
        cJSON *o = mqd_admin_reply(a->d, buf, (size_t)n, a->denied ? a->why : NULL);
        if (o)
            send_json(fd, o);
        cJSON_Delete(o);
        if (a->denied || !o) { /* no memory for a reply: the peer sees the hang-up */
            admin_close(a);
            break;
        }
    }
    free(buf);
}

static void accept_resume(mq_evloop *l, void *arg)
{
    (void)l;
    mqd *d = arg;
    mqd_listener_resume(d, d->admin_fd, &d->admin_ev, &d->admin_pause, mqd_admin_accept);
}

void mqd_admin_accept(mq_evloop *l, int lfd, uint32_t events, void *arg)
{
    (void)events;
    mqd *d = arg;
    mqd_peer p;
    int rc;
    while ((rc = mqd_accept_peer(d, lfd, 1, 0, "admin socket", &d->admin_spare, &p)) == 0) {
        /* Admin replies are rare and may be large: a blocking send with a timeout keeps
         * them whole (admins are trusted peers, root or admin_group). */
        struct timeval tv = { 2, 0 };
        setsockopt(p.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        int sz = (int)MAX_REPLY + 65536;
        setsockopt(p.fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        mqd_admin *a = calloc(1, sizeof *a);
        if (!a) {
            close(p.fd);
            if (p.on_spare)
                mqd_spare_fd_reserve(&d->admin_spare);
            continue;
        }
        a->d = d;
        a->fd = p.fd;
        a->on_spare = p.on_spare; /* an operator at the descriptor limit is still served */
        a->denied = !p.allowed;
        snprintf(a->why, sizeof a->why, "permission denied: %s", p.why);
        if (mq_evloop_add_fd(l, p.fd, POLLIN, on_admin_readable, a, &a->ev)) {
            close(p.fd);
            if (p.on_spare)
                mqd_spare_fd_reserve(&d->admin_spare);
            free(a);
            continue;
        }
        a->next = d->admins;
        d->admins = a;
    }
    if (rc == -EMFILE || rc == -ENFILE) {
        mqd_log_limited(&d->client_log, LOG_WARNING, "admin socket: %s; accepting again in %d ms", strerror(-rc),
                        MQD_ACCEPT_PAUSE_MS);
        mqd_listener_pause(d, &d->admin_ev, &d->admin_pause, accept_resume);
    }
}

void mqd_admin_close_all(mqd *d)
{
    while (d->admins)
        admin_close(d->admins);
}
