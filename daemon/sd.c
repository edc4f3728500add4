/* daemon/sd.c — systemd integration: named listening sockets, sd_notify, the watchdog.
 *
 * Sockets: with socket activation mqd.socket passes two SOCK_SEQPACKET listeners named by
 * FileDescriptorName= "client" and "admin" (sd_listen_fds_with_names); mqd then binds
 * nothing itself. Without them it binds the paths of the config (server.c).
 * Notifications (only when NOTIFY_SOCKET is set): STATUS= with load progress and
 * EXTEND_TIMEOUT_USEC= every second while loading, READY=1 after warm-up, RELOADING=1 /
 * READY=1 around a reload, STOPPING=1 on shutdown, WATCHDOG=1 every WatchdogSec/2 but
 * only while both worker pools report progress (a stuck pool lets systemd restart mqd).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/errmsg.h"
#include "daemon/log.h"
#include "daemon/sd.h"
#include "engine/scheduler.h"

#define LOAD_STATUS_MS 1000
#define EXTEND_USEC    15000000ull /* each STATUS during loading buys 15 s more */

int mqd_sd_sockets(mqd *d, char *err, size_t errlen)
{
    char **names = NULL;
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        return mq_errmsg(err, errlen, n, "sd_listen_fds_with_names: %s", strerror(-n));
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";
        if (sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) <= 0) {
            mq_errmsg(err, errlen, 0,
                      "socket-activation fd %d (\"%s\") is not a listening SOCK_SEQPACKET Unix "
                      "socket (use ListenSequentialPacket=)",
                      fd, name);
            rc = -EINVAL;
            break;
        }
        int *slot = NULL, *from = NULL;
        if (!strcmp(name, "client") || (n == 1 && !strcmp(name, "unknown"))) {
            slot = &d->client_fd;
            from = &d->client_sd;
        } else if (!strcmp(name, "admin")) {
            slot = &d->admin_fd;
            from = &d->admin_sd;
        } else {
            mq_errmsg(err, errlen, 0,
                      "socket-activation fd %d is named \"%s\"; expected FileDescriptorName="
                      "client or admin",
                      fd, name);
            rc = -EINVAL;
            break;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        *slot = fd;
        *from = 1;
    }
    if (names) {
        for (int i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    if (!rc && n > 0)
        mqd_log(LOG_INFO, "socket activation: %d socket(s) from systemd (client %s, admin %s)", n,
                d->client_sd ? "yes" : "no", d->admin_sd ? "yes" : "no");
    return rc;
}

void mqd_sd_notify(mqd *d, const char *fmt, ...)
{
    if (!d->under_systemd)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sd_notify(0, buf);
}

static void load_status(mq_evloop *l, void *arg)
{
    mqd *d = arg;
    if (d->state != MQD_LOADING) {
        mq_evloop_del(l, d->status_ev);
        d->status_ev = NULL;
        return;
    }
    uint64_t done = __atomic_load_n(&d->load_bytes_done, __ATOMIC_RELAXED);
    uint64_t total = __atomic_load_n(&d->load_bytes_total, __ATOMIC_RELAXED);
    uint64_t ms = mq_now_ms() - d->load_t0_ms;
    double rate = ms ? done / 1048576.0 / (ms / 1000.0) : 0;
    mqd_sd_notify(d, "STATUS=loading %s: %.0f/%.0f MiB (%.0f MiB/s)\nEXTEND_TIMEOUT_USEC=%llu", mqd_load_phase(d),
                  done / 1048576.0, total / 1048576.0, rate, (unsigned long long)EXTEND_USEC);
}

static void watchdog(mq_evloop *l, void *arg)
{
    (void)l;
    mqd *d = arg;
    if (d->state == MQD_LOADING || !mqd_sched(d))
        return;
    mq_sched_stats st;
    mq_sched_get_stats(d->sched, &st);
    /* Both driver threads bump their counters every step and at least every 500 ms when
     * idle; a counter that did not move means that pool is stuck. */
    int ok = st.prefill_progress != d->wd_prefill && st.decode_progress != d->wd_decode;
    d->wd_prefill = st.prefill_progress;
    d->wd_decode = st.decode_progress;
    if (ok)
        mqd_sd_notify(d, "WATCHDOG=1");
    else
        mqd_log(LOG_WARNING,
                "watchdog: a worker pool made no progress (prefill %llu, decode %llu); not feeding systemd",
                (unsigned long long)st.prefill_progress, (unsigned long long)st.decode_progress);
}

int mqd_sd_start_timers(mqd *d, char *err, size_t errlen)
{
    if (!d->under_systemd)
        return 0;
    int rc = mq_evloop_add_timer(d->loop, LOAD_STATUS_MS, load_status, d, &d->status_ev);
    if (rc)
        return mq_errmsg(err, errlen, rc, "loading STATUS timer: %s", strerror(-rc));
    uint64_t usec = 0;
    if (d->cfg.watchdog && sd_watchdog_enabled(0, &usec) > 0 && usec) {
        d->watchdog_usec = usec;
        uint32_t ms = (uint32_t)(usec / 2000);
        rc = mq_evloop_add_timer(d->loop, ms ? ms : 1, watchdog, d, &d->watchdog_ev);
        if (rc)
            return mq_errmsg(err, errlen, rc, "watchdog timer: %s", strerror(-rc));
        mqd_log(LOG_INFO, "systemd watchdog every %u ms while both pools make progress", ms);
    }
    return 0;
}
