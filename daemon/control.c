/* daemon/control.c — drain, reload and the signals that ask for them (control.h).
 *
 * Drain: STOPPING=1; new clients and requests get MQ_ERR_DRAINING at once; a thread runs
 * mq_sched_drain (running requests get drain_timeout_ms, then are cut off and end as
 * SHUTDOWN), then the loop closes every client and stops; mqd exits 0. Reload: the configuration is parsed and
 * validated again from the same file and flags; the fields config.c's table marks LIVE
 * (access lists, admin_group, drain_timeout_ms, watchdog) change at once, and every
 * other field that changed is named in the reply and the log as needing a restart.
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
static int refuse_reload(mqd *d, int rc, const char *err, char *msg, size_t msglen)
{
    mq_errmsg(msg, msglen, 0, "reload refused, configuration unchanged: %s", err);
    mqd_log(LOG_WARNING, "%s", msg);
    mqd_sd_notify(d, "READY=1\nSTATUS=ready (reload refused: %s)", err);
    return rc;
}

#define RESTART_MAX 64 /* more than mqd_config has fields */

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
    /* load_done keeps the resolved pool sizes in cfg: "0 = as many as CPUs" over the same
     * CPU list is the same size, no change */
    if (!nc.prefill_threads && !strcmp(nc.prefill_cpus, d->cfg.prefill_cpus))
        nc.prefill_threads = d->cfg.prefill_threads;
    if (!nc.decode_threads && !strcmp(nc.decode_cpus, d->cfg.decode_cpus))
        nc.decode_threads = d->cfg.decode_threads;
    mqd_config old = d->cfg;
    const char *restart[RESTART_MAX];
    char applied[256];
    int n_restart = mqd_config_apply_live(&d->cfg, &nc, restart, RESTART_MAX, applied, sizeof applied);
    rc = mqd_resolve_ids(d, err, sizeof err);
    if (rc) {
        d->cfg = old;
        char again[256];
        if (mqd_resolve_ids(d, again, sizeof again))
            mqd_log(LOG_ERR, "reload: the previous access lists no longer resolve either: %s", again);
        return refuse_reload(d, rc, err, msg, msglen);
    }
    /* the reply names every field that changed without effect (it may be cut at msglen;
     * the log has one line per field) */
    mq_errmsg(msg, msglen, 0, "reloaded %s: %s applied", path[0] ? path : "(no config file)", applied);
    for (int i = 0; i < n_restart && i < RESTART_MAX; i++) {
        mqd_log(LOG_WARNING, "reload: field %s changed: needs a restart (not applied)", restart[i]);
        size_t l = strlen(msg);
        snprintf(msg + l, msglen - l, "; field %s changed: needs a restart", restart[i]);
    }
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
