/* daemon/control.c — drain, reload and the signals that ask for them (control.h).
 *
 * Drain: STOPPING=1; new clients and requests get MQ_ERR_DRAINING at once; a thread runs
 * mq_sched_drain (running requests get drain_timeout_ms, then are cut off and end as
 * SHUTDOWN), then the loop closes every client and stops; mqd exits 0. Reload: the configuration is parsed and
 * validated again from the same file and flags; access lists, admin_group,
 * drain_timeout_ms and watchdog change at once, everything else needs a restart (the
 * reply and the log say which).
 */
#define _GNU_SOURCE
#include "daemon/control.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "common/errmsg.h"
#include "daemon/client_conn.h"
#include "daemon/log.h"
#include "daemon/privs.h"
#include "daemon/sd.h"
#include "engine/scheduler.h"

/* ---- drain --------------------------------------------------------------------- */
static void drain_done(mq_evloop *l, void *arg)
{
    mqd *d = arg;
    d->state = MQD_STOPPING;
    mqd_log(LOG_NOTICE, "drain finished (%d request(s) cancelled); exiting", d->drain_cancelled);
    mqd_client_close_all(d);
    d->exit_code = 0;
    mq_evloop_stop(l);
}

static void *drain_main(void *arg)
{
    mqd *d = arg;
    int n = mq_sched_drain(d->sched, (int)d->drain_timeout_ms);
    d->drain_cancelled = n > 0 ? n : 0;
    if (mq_evloop_post(d->loop, drain_done, d)) {
        mqd_log(LOG_ERR, "drain finished but the event loop cannot be told (out of memory); exiting");
        mq_evloop_stop(d->loop);
    }
    return NULL;
}

void mqd_begin_drain(mqd *d, const char *why)
{
    if (d->state == MQD_LOADING) {
        /* Nothing is served yet: the load thread gives up at its next step (between reads
         * of the weight stream, between phases) and mqd exits 0. */
        d->state = MQD_STOPPING;
        __atomic_store_n(&d->load_cancel, 1, __ATOMIC_RELEASE);
        mqd_log(LOG_NOTICE, "%s while loading: stopping the load", why);
        mqd_sd_notify(d, "STOPPING=1\nSTATUS=stopping the load (%s)", why);
        return;
    }
    if (d->state != MQD_READY)
        return;
    d->state = MQD_DRAINING;
    d->drain_timeout_ms = d->cfg.drain_timeout_ms;
    mqd_log(LOG_NOTICE, "%s: draining (up to %u ms), no new requests", why, d->cfg.drain_timeout_ms);
    mqd_sd_notify(d, "STOPPING=1\nSTATUS=draining (%s)", why);
    /* The client socket stays watched: a client arriving now is told MQ_ERR_DRAINING at
     * its HELLO, at once, instead of waiting in the backlog for a reset. */
    int rc = pthread_create(&d->drain_thread, NULL, drain_main, d);
    if (rc == 0) {
        d->drain_started = 1;
        return;
    }
    mqd_log(LOG_ERR, "drain thread: %s; stopping without waiting for running requests", strerror(rc));
    drain_done(d->loop, d);
}

/* ---- reload -------------------------------------------------------------------- */
/* Fields a running mqd cannot change: a restart takes them. */
static int needs_restart(const mqd_config *now, const mqd_config *next)
{
    return strcmp(next->model_dir, now->model_dir) || next->mode != now->mode || next->kv_tokens != now->kv_tokens ||
           next->kv_block_tokens != now->kv_block_tokens || next->chunk_tokens != now->chunk_tokens ||
           strcmp(next->client_socket, now->client_socket) || next->ctx_tokens != now->ctx_tokens ||
           next->max_sessions != now->max_sessions || next->queue_max != now->queue_max ||
           next->max_sessions_per_uid != now->max_sessions_per_uid ||
           next->queue_max_per_uid != now->queue_max_per_uid || next->kv_tokens_per_uid != now->kv_tokens_per_uid ||
           next->share_prefix_cache != now->share_prefix_cache || next->seccomp != now->seccomp;
}

static int refuse_reload(mqd *d, int rc, const char *err, char *msg, size_t msglen)
{
    mq_errmsg(msg, msglen, 0, "reload refused, configuration unchanged: %s", err);
    mqd_log(LOG_WARNING, "%s", msg);
    mqd_sd_notify(d, "READY=1\nSTATUS=ready (reload refused: %s)", err);
    return rc;
}

int mqd_reload(mqd *d, char *msg, size_t msglen)
{
    mqd_config nc;
    char path[MQ_CFG_PATH], err[512];
    if (!d->loaded) { /* the load thread reads cfg until it hands the model over */
        mq_errmsg(msg, msglen, 0, "reload refused: mqd is still loading the model; send it again when it is ready");
        mqd_log(LOG_WARNING, "%s", msg);
        return -EBUSY;
    }
    mqd_sd_notify(d, "RELOADING=1\nSTATUS=reloading configuration");
    int rc = mqd_config_parse_args(&nc, path, sizeof path, d->argc, d->argv, NULL, NULL, err, sizeof err);
    if (!rc)
        rc = mqd_config_validate(&nc, err, sizeof err);
    if (rc)
        return refuse_reload(d, rc, err, msg, msglen);
    mqd_config old = d->cfg;
    memcpy(d->cfg.allowed_users, nc.allowed_users, sizeof nc.allowed_users);
    memcpy(d->cfg.allowed_groups, nc.allowed_groups, sizeof nc.allowed_groups);
    memcpy(d->cfg.trusted_fronts, nc.trusted_fronts, sizeof nc.trusted_fronts);
    memcpy(d->cfg.trusted_front_groups, nc.trusted_front_groups, sizeof nc.trusted_front_groups);
    memcpy(d->cfg.admin_group, nc.admin_group, sizeof nc.admin_group);
    d->cfg.drain_timeout_ms = nc.drain_timeout_ms;
    d->cfg.watchdog = nc.watchdog;
    rc = mqd_resolve_ids(d, err, sizeof err);
    if (rc) {
        d->cfg = old;
        char again[256];
        if (mqd_resolve_ids(d, again, sizeof again))
            mqd_log(LOG_ERR, "reload: the previous access lists no longer resolve either: %s", again);
        return refuse_reload(d, rc, err, msg, msglen);
    }
    mq_errmsg(msg, msglen, 0, "reloaded %s: access lists, admin_group, drain_timeout_ms, watchdog%s",
              path[0] ? path : "(no config file)",
              needs_restart(&d->cfg, &nc)
                  ? "; model, mode, KV, chunk, context, limits, prefix cache, socket and seccomp changes need a "
                    "restart"
                  : "");
    mqd_log(LOG_NOTICE, "%s", msg);
    mqd_sd_notify(d, "READY=1\nSTATUS=ready: %s (%s), reloaded", d->model_name, mq_prec_mode_name(d->cfg.mode));
    return 0;
}

/* ---- signals ------------------------------------------------------------------- */
static void on_signal(mq_evloop *l, int signo, void *arg)
{
    (void)l;
    mqd *d = arg;
    if (signo == SIGHUP) {
        char msg[512];
        mqd_reload(d, msg, sizeof msg);
        return;
    }
    mqd_begin_drain(d, signo == SIGTERM ? "SIGTERM" : "SIGINT");
}

int mqd_control_watch_signals(mqd *d, char *err, size_t errlen)
{
    static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };
    int rc = mq_evloop_add_signals(d->loop, sigs, 3, on_signal, d);
    return rc ? mq_errmsg(err, errlen, rc, "signalfd: %s", strerror(-rc)) : 0;
}
