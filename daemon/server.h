/* daemon/server.h — mqd's context object and the front-end modules that share it.
 *
 * Owns: `mqd`, the one object that owns everything of a running daemon (configuration,
 * event loop, model, tokenizer, scheduler, listening sockets, client and admin
 * connections, systemd state, BPF probes). There is no other mutable global state.
 *
 * Modules (one file each):
 *   server.c       start-up/shutdown sequencing: load thread, READY, drain, reload
 *   client_conn.c  client protocol (ipc/wire.h) on SOCK_SEQPACKET, channels, sinks
 *   admin.c        admin protocol: JSON (cJSON) over a separate SOCK_SEQPACKET socket
 *   sd.c           systemd: named socket fds, sd_notify, watchdog
 *   privs.c        privileged set-up, dropping to the run-as user and capabilities
 *   main.c         parse, set up, run, clean up
 *
 * Thread rules: everything here runs on the event loop thread, except the scheduler's sink
 * callbacks (client_conn.c says what they touch: the channel under its tx lock, and
 * mq_evloop_post) and the load/drain threads (they post their results to the loop).
 */
#ifndef MQ_DAEMON_SERVER_H
#define MQ_DAEMON_SERVER_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/config.h"
#include "daemon/evloop.h"

#ifdef __cplusplus
extern "C" {
#endif

struct mq_model;
struct mq_tokenizer;
struct mq_sched;
struct mq_probes;
struct mq_arena;
struct mqd_conn;
struct mqd_admin;

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

    /* model side (owned; created by the load thread, read-only afterwards) */
    struct mq_arena *arena;
    void *loader; /* server.c: weight allocator state (staging buffers) */
    struct mq_model *model;
    struct mq_tokenizer *tok;
    struct mq_sched *sched;
    int chat_kind; /* mq_chat_kind, -1 = the model has no known chat template */
    int ctx_limit;
    char model_name[64];
    pthread_t load_thread;
    int load_started;
    /* load progress (written by the load thread with atomics) */
    uint64_t load_bytes_done, load_bytes_total, load_t0_ms, load_ms;
    char load_phase[64];
    char load_note[256];

    /* sockets: -1 when absent; *_sd = 1 if received from systemd (not ours to unlink) */
    int client_fd, admin_fd;
    int client_sd, admin_sd;
    mq_ev *client_ev, *admin_ev;
    struct mqd_conn *conns; /* doubly linked list of client connections */
    int n_conns;
    struct mqd_admin *admins;
    uint64_t next_req;

    /* access control, resolved from names at start-up / reload */
    uid_t allowed_uids[MQD_MAX_IDS];
    int n_allowed_uids;
    gid_t allowed_gids[MQD_MAX_IDS];
    int n_allowed_gids;
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

void mqd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* server.c */
int mqd_init(mqd *d, char *err, size_t errlen);   /* sockets, privileges, loop, load thread */
int mqd_run(mqd *d);                              /* the event loop until exit */
void mqd_fini(mqd *d);                            /* frees everything (NULL-safe members) */
void mqd_begin_drain(mqd *d, const char *why);    /* SIGTERM, mqctl drain */
int mqd_reload(mqd *d, char *msg, size_t msglen); /* SIGHUP, mqctl reload */
int mqd_resolve_ids(mqd *d, char *err, size_t errlen);

/* client_conn.c */
void mqd_client_accept(mq_evloop *l, int fd, uint32_t events, void *arg);
void mqd_client_close_all(mqd *d);
int mqd_client_cancel(mqd *d, uint64_t id, char *msg, size_t msglen); /* req or session id */
/* For admin: calls cb for every session of every connection. */
typedef struct mqd_session_view {
    uint64_t session, running_req;
    pid_t pid;
    uid_t uid;
    int mode;
} mqd_session_view;
void mqd_client_sessions(mqd *d, void (*cb)(void *ctx, const mqd_session_view *v), void *ctx);

/* admin.c */
void mqd_admin_accept(mq_evloop *l, int fd, uint32_t events, void *arg);
void mqd_admin_close_all(mqd *d);

/* sd.c */
int mqd_sd_sockets(mqd *d, char *err, size_t errlen); /* named fds from systemd, if any */
void mqd_sd_notify(mqd *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mqd_sd_start_timers(mqd *d); /* watchdog + loading STATUS */

/* privs.c */
int mqd_privs_setup(mqd *d, char *err, size_t errlen); /* as root: limits, hugepages */
int mqd_privs_drop(mqd *d, char *err, size_t errlen);  /* user, groups, caps, no_new_privs */
void mqd_hugepages_giveback(mqd *d);                   /* at exit, after weights and KV are unmapped */
/* hugepages_reserve = "auto": asks the helper for `pages` (once; the load thread, before the
 * weights are mapped); `why` says how they were counted. Pages added, 0 when not in auto
 * mode or without a helper, or -errno. */
long mqd_hugepages_auto(mqd *d, long pages, const char *why);
int mqd_peer_allowed(const mqd *d, int fd, int admin, uid_t *uid, pid_t *pid, char *why, size_t whylen);

#ifdef __cplusplus
}
#endif
#endif
