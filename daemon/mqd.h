/* daemon/mqd.h — mqd's context object.
 *
 * Owns: `mqd`, the one object that owns everything of a running daemon (configuration,
 * event loop, model, tokenizer, scheduler, listening sockets, client and admin
 * connections, systemd state, BPF probes). There is no other mutable global state.
 *
 * Modules (one file each, each with its own header; the call graph is a DAG; every module
 * may call log.c and evloop.c, which are not listed):
 *   main.c         parse, set up, run, clean up                    -> server, config, privs, sd
 *   server.c       init/run/fini and the load thread              -> admin, client_conn,
 *                                                                    control, sd, privs, prep,
 *                                                                    probes, tenants, config
 *   admin.c        admin protocol: JSON (cJSON) on its own socket  -> control, client_conn,
 *                                                                    privs, probes, seccomp,
 *                                                                    tenants, config
 *   control.c      drain, reload, signals                          -> client_conn, sd, privs,
 *                                                                    config
 *   client_conn.c  client protocol (ipc/wire.h), channels, sinks   -> privs, prep, tenants
 *   privs.c        privileged set-up, dropping privileges, peer checks -> probes, seccomp
 *   prep.c         workers that prepare prompts off the loop
 *   sd.c           systemd: named socket fds, sd_notify, watchdog
 *   tenants.c      the tenant names trusted fronts open sessions for
 *   seccomp.c      the system-call allow-list installed after the privilege drop
 *   evloop.c, config.c, probes.c, log.c: leaves.
 *
 * Thread rules: everything here runs on the event loop thread, except the scheduler's sink
 * callbacks (client_conn.c says what they touch: the channel under its tx lock, and
 * mq_evloop_post), the prep workers (prep.h) and the load/drain threads (they post their
 * results to the loop).
 */
#ifndef MQ_DAEMON_MQD_H
#define MQ_DAEMON_MQD_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/config.h"
#include "daemon/evloop.h"
#include "daemon/log.h"

struct mq_model;
struct mq_tokenizer;
struct mq_sched;
struct mq_probes;
struct mq_arena;
struct mqd_conn;
struct mqd_admin;
struct mqd_prep;
struct mqd_tenants;

enum mqd_state { MQD_LOADING = 0, MQD_READY, MQD_DRAINING, MQD_STOPPING, MQD_FAILED };

#define MQD_MAX_IDS 64

typedef struct mqd {
    mqd_config cfg;
    char config_path[MQ_CFG_PATH]; /* "" when none; reload re-reads it */
    char *const *argv;             /* flags re-applied on reload */
    int argc;
    mq_evloop *loop;
    uint64_t start_ms;
    enum mqd_state state;
    int exit_code;
    char fail_msg[512];

    /* model side (owned; created by the load thread, read-only afterwards). The loop thread
     * reads these only once `loaded` is set (load_done, posted by the load thread after
     * its last write); while loading, status shows the progress atomics below and the
     * arena, whose pointer is published with a release store. */
    int loaded;
    struct mq_arena *arena;
    struct mq_model *model;
    struct mq_tokenizer *tok;
    struct mq_sched *sched;
    struct mqd_prep *prep; /* prompt-preparation workers (prep.h), from READY on */
    int chat_kind;         /* mq_chat_kind, -1 = the model has no known chat template */
    int ctx_limit;
    char model_name[64];
    pthread_t load_thread;
    int load_started;
    int load_rc;     /* the load thread's result, read by the loop in load_done */
    int load_cancel; /* atomic: a stop was asked while loading; the load thread gives up */
    char load_err[512];
    int load_threads[2]; /* prefill, decode threads resolved by the load thread; load_done
                            copies them into cfg (status shows them) */
    /* load progress: bytes and phase are atomics (the phase is a string literal);
     * load_t0_ms is set before the load thread starts; load_ms and load_note are the
     * load thread's, read once `loaded` is set */
    uint64_t load_bytes_done, load_bytes_total, load_t0_ms, load_ms;
    const char *load_phase;
    char load_note[256];

    /* sockets: -1 when absent; *_sd = 1 if received from systemd (not ours to unlink) */
    int client_fd, admin_fd;
    int client_sd, admin_sd;
    mq_ev *client_ev, *admin_ev;
    mq_ev *client_pause, *admin_pause; /* accepting paused at the descriptor limit */
    int client_spare, admin_spare;     /* /dev/null each: a slot to answer one peer at that limit */
    struct mqd_conn *conns;            /* doubly linked list of client connections */
    int n_conns;
    struct mqd_admin *admins;
    uint64_t next_req;
    mqd_ratelimit client_log;    /* lines clients can cause (log.h) */
    struct mqd_tenants *tenants; /* names trusted fronts gave (tenants.h) */

    /* access control, resolved from names at start-up / reload */
    uid_t allowed_uids[MQD_MAX_IDS];
    int n_allowed_uids;
    gid_t allowed_gids[MQD_MAX_IDS];
    int n_allowed_gids;
    uid_t front_uids[MQD_MAX_IDS]; /* trusted_fronts */
    int n_front_uids;
    gid_t front_gids[MQD_MAX_IDS]; /* trusted_front_groups */
    int n_front_gids;
    int any_client; /* no user/group lists: everyone who can open the socket */
    gid_t admin_gid;
    int admin_gid_set;
    uid_t run_uid;
    gid_t run_gid;

    /* systemd */
    int under_systemd; /* NOTIFY_SOCKET set */
    uint64_t watchdog_usec;
    mq_ev *watchdog_ev, *status_ev;
    uint64_t wd_prefill, wd_decode;

    /* drain */
    pthread_t drain_thread;
    unsigned drain_timeout_ms; /* cfg.drain_timeout_ms when the drain began (a reload may change cfg) */
    int drain_started;
    int drain_cancelled;

    /* BPF */
    struct mq_probes *probes;
    char probes_err[256];

    /* huge pages mqd reserved itself (privs.c): a root helper process (hp_pid, 0 = none)
     * gives the hp_added pages back when told through hp_fd or when mqd is gone */
    pid_t hp_pid;
    int hp_fd;
    long hp_asked, hp_added;
    char hp_note[160]; /* what happened to hugepages_reserve, for the log and status */
} mqd;

/* The load phase ("starting", "weights", ...), from any thread. */
static inline const char *mqd_load_phase(const mqd *d)
{
    return __atomic_load_n(&d->load_phase, __ATOMIC_ACQUIRE);
}

/* The scheduler once the load handed it over (load_done), else NULL: loop thread only. */
static inline struct mq_sched *mqd_sched(const mqd *d)
{
    return d->loaded ? d->sched : NULL;
}

#endif
