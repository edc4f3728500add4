/* daemon/privs.c — privileges: what mqd does as root, then how it stops being root.
 *
 * Started as root, mqd (1) raises RLIMIT_MEMLOCK so the run-as user can lock weights and
 * KV, (2) reserves huge pages if configured (a root helper process gives them back at
 * exit, see below), (3) loads the BPF probes (need CAP_BPF /
 * CAP_PERFMON), (4) binds its sockets (server.c), then mqd_privs_drop(): empties the
 * capability bounding set, switches groups, gid and uid to the configured user, clears
 * every remaining capability (permitted, effective, inheritable, ambient) and sets
 * no_new_privs, then installs the system-call allow-list (seccomp.h). After that nothing it
 * execs or does can regain privileges; /proc/<pid>/status shows CapEff/CapPrm/CapBnd 0,
 * NoNewPrivs 1 and Seccomp 2 (tests check it).
 * Peer checks (SO_PEERCRED, SO_PEERGROUPS) for both sockets live here too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "common/errmsg.h"
#include "daemon/log.h"
#include "daemon/privs.h"
#include "daemon/probes.h"
#include "daemon/seccomp.h"
#include "engine/arena.h"

static int parse_id(const char *s, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v > 0xfffffffful)
        return 0;
    *out = (unsigned)v;
    return 1;
}

static int user_id(const char *name, uid_t *uid, gid_t *gid)
{
    unsigned v;
    struct passwd *pw = parse_id(name, &v) ? getpwuid(v) : getpwnam(name);
    if (!pw) {
        if (parse_id(name, &v)) {
            *uid = v;
            *gid = v;
            return 0;
        }
        return -ENOENT;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

static int group_id(const char *name, gid_t *gid)
{
    unsigned v;
    if (parse_id(name, &v)) {
        *gid = v;
        return 0;
    }
    struct group *gr = getgrnam(name);
    if (!gr)
        return -ENOENT;
    *gid = gr->gr_gid;
    return 0;
}

int mqd_resolve_ids(mqd *d, char *err, size_t errlen)
{
    const mqd_config *c = &d->cfg;
    d->n_allowed_uids = d->n_allowed_gids = 0;
    for (int i = 0; i < MQ_CFG_LIST && c->allowed_users[i][0]; i++) {
        gid_t g;
        if (user_id(c->allowed_users[i], &d->allowed_uids[d->n_allowed_uids], &g)) {
            return mq_errmsg(err, errlen, -ENOENT, "allowed_users[%d]: no user \"%s\"", i, c->allowed_users[i]);
        }
        d->n_allowed_uids++;
    }
    for (int i = 0; i < MQ_CFG_LIST && c->allowed_groups[i][0]; i++) {
        if (group_id(c->allowed_groups[i], &d->allowed_gids[d->n_allowed_gids])) {
            return mq_errmsg(err, errlen, -ENOENT, "allowed_groups[%d]: no group \"%s\"", i, c->allowed_groups[i]);
        }
        d->n_allowed_gids++;
    }
    d->any_client = d->n_allowed_uids == 0 && d->n_allowed_gids == 0;
    d->n_front_uids = d->n_front_gids = 0;
    for (int i = 0; i < MQ_CFG_LIST && c->trusted_fronts[i][0]; i++) {
        gid_t g;
        if (user_id(c->trusted_fronts[i], &d->front_uids[d->n_front_uids], &g))
            return mq_errmsg(err, errlen, -ENOENT, "trusted_fronts[%d]: no user \"%s\"", i, c->trusted_fronts[i]);
        d->n_front_uids++;
    }
    for (int i = 0; i < MQ_CFG_LIST && c->trusted_front_groups[i][0]; i++) {
        if (group_id(c->trusted_front_groups[i], &d->front_gids[d->n_front_gids]))
            return mq_errmsg(err, errlen, -ENOENT, "trusted_front_groups[%d]: no group \"%s\"", i,
                             c->trusted_front_groups[i]);
        d->n_front_gids++;
    }
    d->admin_gid_set = 0;
    if (c->admin_group[0]) {
        if (group_id(c->admin_group, &d->admin_gid)) {
            return mq_errmsg(err, errlen, -ENOENT, "admin_group: no group \"%s\"", c->admin_group);
        }
        d->admin_gid_set = 1;
    }
    d->run_uid = geteuid();
    d->run_gid = getegid();
    if (c->user[0] && user_id(c->user, &d->run_uid, &d->run_gid)) {
        return mq_errmsg(err, errlen, -ENOENT, "user: no user \"%s\"", c->user);
    }
    /* Started as root, mqd sets itself up and then serves as `user`. Without one it would
     * serve local clients as uid 0 (no capabilities, but owner of every root-owned file):
     * refused, as a daemon that is meant to drop privileges should. "root" is the
     * deliberate opt-in, and mqd_privs_drop says so loudly. */
    if (geteuid() == 0 && !c->user[0])
        return mq_errmsg(err, errlen, -EPERM,
                         "user: not set, and mqd was started as root: it does not serve clients as uid 0 (set "
                         "\"user\" to an unprivileged account such as \"mq\"; \"root\" runs as root deliberately)");
    return 0;
}

/* Whether the peer on fd (primary group gid) is in one of gids[0..n): by its primary
 * group or a supplementary one (SO_PEERGROUPS). */
static int peer_in_groups(int fd, gid_t gid, const gid_t *gids, int n)
{
    if (n == 0)
        return 0;
    gid_t groups[256];
    socklen_t gl = sizeof groups;
    int ng = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) == 0)
        ng = (int)(gl / sizeof(gid_t));
    for (int i = 0; i < n; i++) {
        if (gids[i] == gid)
            return 1;
        for (int k = 0; k < ng; k++)
            if (groups[k] == gids[i])
                return 1;
    }
    return 0;
}

/* 1 if the peer of fd may use the client (admin = 0) or the admin socket; else 0 and p->why. */
static int peer_allowed(const mqd *d, int fd, int admin, mqd_peer *p)
{
    struct ucred cr;
    socklen_t sl = sizeof cr;
    p->uid = (uid_t)-1;
    p->gid = (gid_t)-1;
    p->pid = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &sl) < 0) {
        snprintf(p->why, sizeof p->why, "SO_PEERCRED: %s", strerror(errno));
        return 0;
    }
    p->uid = cr.uid;
    p->gid = cr.gid;
    p->pid = cr.pid;
    if (cr.uid == 0 || (!admin && d->any_client))
        return 1;
    if (admin) {
        if (d->admin_gid_set && peer_in_groups(fd, cr.gid, &d->admin_gid, 1))
            return 1;
        snprintf(p->why, sizeof p->why, "uid %u is not root%s%s", (unsigned)cr.uid,
                 d->admin_gid_set ? " and not in admin_group " : "", d->admin_gid_set ? d->cfg.admin_group : "");
        return 0;
    }
    for (int i = 0; i < d->n_allowed_uids; i++)
        if (d->allowed_uids[i] == cr.uid)
            return 1;
    if (peer_in_groups(fd, cr.gid, d->allowed_gids, d->n_allowed_gids))
        return 1;
    snprintf(p->why, sizeof p->why, "uid %u gid %u is not in allowed_users/allowed_groups", (unsigned)cr.uid,
             (unsigned)cr.gid);
    return 0;
}

int mqd_peer_is_front(const mqd *d, int fd, uid_t uid, gid_t gid)
{
    for (int i = 0; i < d->n_front_uids; i++)
        if (d->front_uids[i] == uid)
            return 1;
    return peer_in_groups(fd, gid, d->front_gids, d->n_front_gids);
}

/* SO_PASSRIGHTS (Linux 6.16): 0 makes the kernel refuse SCM_RIGHTS sent to this socket
 * (the sender gets EPERM). Neither socket takes descriptors, and one mqd never receives
 * it cannot be made to close either: closing the last copy of, say, a TCP socket with
 * SO_LINGER set blocks the closing thread. Older kernels: mqd closes what arrives. */
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif

void mqd_refuse_fds(int fd)
{
    int no = 0;
    setsockopt(fd, SOL_SOCKET, SO_PASSRIGHTS, &no, sizeof no); /* ENOPROTOOPT before 6.16 */
}

void mqd_listener_pause(mqd *d, mq_ev **ev, mq_ev **pause, void (*resume)(mq_evloop *, void *))
{
    if (*pause)
        return;
    mq_evloop_del(d->loop, *ev);
    *ev = NULL;
    if (mq_evloop_add_timer(d->loop, MQD_ACCEPT_PAUSE_MS, resume, d, pause))
        mqd_log(LOG_ERR, "cannot schedule accepting again: a socket stays unwatched");
}

void mqd_listener_resume(mqd *d, int lfd, mq_ev **ev, mq_ev **pause, void (*fn)(mq_evloop *, int, uint32_t, void *))
{
    mq_evloop_del(d->loop, *pause);
    *pause = NULL;
    if (lfd >= 0 && !*ev && mq_evloop_add_fd(d->loop, lfd, POLLIN, fn, d, ev))
        mqd_log(LOG_ERR, "cannot watch a listening socket again: no new connections on it");
}

void mqd_spare_fd_reserve(int *spare)
{
    if (*spare < 0)
        *spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

int mqd_accept_peer(mqd *d, int lfd, int admin, int flags, const char *what, int *spare, mqd_peer *p)
{
    memset(p, 0, sizeof *p);
    p->fd = accept4(lfd, NULL, NULL, flags | SOCK_CLOEXEC);
    if (p->fd < 0 && (errno == EMFILE || errno == ENFILE) && *spare >= 0) {
        close(*spare); /* the spare's slot takes this connection */
        *spare = -1;
        p->fd = accept4(lfd, NULL, NULL, flags | SOCK_CLOEXEC);
        if (p->fd >= 0)
            p->on_spare = 1;
        else
            mqd_spare_fd_reserve(spare);
    }
    if (p->fd < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    mqd_refuse_fds(p->fd); /* the listener's setting covers data sent before the accept */
    p->allowed = peer_allowed(d, p->fd, admin, p);
    if (!p->allowed)
        mqd_log_limited(&d->client_log, LOG_WARNING, "%s: refused pid %d uid %u: %s", what, (int)p->pid,
                        (unsigned)p->uid, p->why);
    return 0;
}

/* ---- huge page reservation -------------------------------------------------------
 * With hugepages_reserve = N (and hugepages not "off"), mqd started as root raises
 * /proc/sys/vm/nr_hugepages by N before it maps anything, so the weights (arena) and the
 * KV segment come from the reserved pool; the kernel may give fewer pages than asked
 * (fragmented memory), so the value is read back and logged. Giving the pages back needs
 * root again, which mqd no longer is at exit. So a helper process forked here keeps uid 0
 * (with no capabilities and no_new_privs: writing the root-owned sysctl as its owner needs
 * neither) and only waits on a socket. mqd_fini sends "release" after the weights and the
 * KV segment are unmapped and waits for the answer, so the pages are back before mqd
 * exits (normal exit, SIGTERM drain, failed start-up); if mqd dies without a word (crash,
 * SIGKILL) the helper sees end-of-file and gives them back then.
 * Giving back lowers nr_hugepages by the pages mqd ADDED, from its current value — not
 * back to the value seen at start — so a change someone else made meanwhile is kept.
 * hugepages_reserve = "auto": the helper starts with nothing reserved; the load thread,
 * once a dry run of the model's plan says what weights + KV segment need, asks it once
 * (mqd_hugepages_auto; capped at 3/4 of MemTotal so mqd alone cannot make the root helper
 * take all memory).
 * Not root: nothing is reserved, the log says so, mqd uses what the pool has. */
#define HP_HELPER_TIMEOUT_S 30 /* a large reservation may make the kernel compact memory */

/* The helper: answers "reserve N" (once, only in auto mode, at most `cap` pages) with
 * "<added> <nr_hugepages before> <after>", and "release" (or end-of-file) with
 * "<nr_hugepages after giving back>", then exits. */
static void hp_helper_main(int fd, long added, long cap)
{
    /* systemd signals the whole cgroup on stop: mqd's exit is what counts here */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    if (fd != 3) {
        dup2(fd, 3);
        fd = 3;
    }
    close_range(4, ~0U, 0); /* mqd's sockets are none of the helper's business */
    prctl(PR_SET_NAME, "mqd-hugepages", 0, 0, 0);
    cap_t none = cap_init();
    if (none) {
        cap_set_proc(none);
        cap_free(none);
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    char buf[64], reply[64];
    for (;;) {
        ssize_t n;
        do
            n = recv(fd, buf, sizeof buf - 1, 0);
        while (n < 0 && errno == EINTR);
        if (n > 8 && !strncmp(buf, "reserve ", 8) && cap > 0) {
            buf[n] = 0;
            long want = strtol(buf + 8, NULL, 10), prev = mq_hugepages_nr();
            if (want > cap)
                want = cap;
            cap = 0; /* one reservation per run */
            long got = want > 0 ? mq_hugepages_reserve(want, &prev) : 0;
            if (got > 0)
                added = got;
            int len = snprintf(reply, sizeof reply, "%ld %ld %ld", got, prev, mq_hugepages_nr());
            send(fd, reply, (size_t)len, MSG_NOSIGNAL);
            continue;
        }
        long now = added > 0 ? mq_hugepages_giveback(added) : mq_hugepages_nr();
        if (n <= 0 && added > 0)
            mqd_log(LOG_NOTICE, "huge pages: mqd is gone; gave back %ld page(s): %s", added,
                    now < 0 ? strerror((int)-now) : "done");
        int len = snprintf(reply, sizeof reply, "%ld", now);
        send(fd, reply, (size_t)len, MSG_NOSIGNAL);
        _exit(now < 0 ? 1 : 0);
    }
}

/* Forks the helper; 0 or -errno (then nothing was started). */
static int hp_helper_start(mqd *d, long added, long cap)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        hp_helper_main(sv[1], added, cap);
    }
    int e = errno;
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return -e;
    }
    d->hp_pid = pid;
    d->hp_fd = sv[0];
    return 0;
}

/* One request to the helper and its answer (NUL-terminated in buf); length or -errno. */
static ssize_t hp_call(mqd *d, const char *req, char *buf, size_t len)
{
    struct timeval tv = { HP_HELPER_TIMEOUT_S, 0 };
    setsockopt(d->hp_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = send(d->hp_fd, req, strlen(req), MSG_NOSIGNAL);
    if (n < 0)
        return -errno;
    do /* the helper's own exit (SIGCHLD) may interrupt the wait for its answer */
        n = recv(d->hp_fd, buf, len - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -EPIPE;
    buf[n] = 0;
    return n;
}

static void hugepages_reserve(mqd *d)
{
    long asked = (long)d->cfg.hugepages_reserve;
    int is_auto = d->cfg.hugepages_reserve == MQ_CFG_U32_AUTO;
    d->hp_asked = is_auto ? 0 : asked;
    d->hp_fd = -1;
    if (!asked)
        return;
    char what[48];
    if (is_auto)
        snprintf(what, sizeof what, "auto reservation");
    else
        snprintf(what, sizeof what, "reservation of %ld page(s)", asked);
    if (d->cfg.hugepages == MQ_CFG_HUGE_OFF) {
        snprintf(d->hp_note, sizeof d->hp_note, "%s skipped: hugepages is off", what);
    } else if (geteuid() != 0) {
        snprintf(d->hp_note, sizeof d->hp_note, "%s skipped: not root (euid %u); using the pool as it is (%ld free)",
                 what, (unsigned)geteuid(), mq_hugepages_free());
    } else if (is_auto) {
        /* sized by the load thread once the model's plan is known (mqd_hugepages_auto);
         * a bound, so that mqd alone cannot make the helper take all memory */
        long cap = mq_meminfo_kib("MemTotal") / 2048 * 3 / 4;
        int rc = hp_helper_start(d, 0, cap);
        if (rc < 0)
            snprintf(d->hp_note, sizeof d->hp_note, "%s skipped: cannot start its helper: %s", what, strerror(-rc));
        else
            snprintf(d->hp_note, sizeof d->hp_note,
                     "auto: sized from the model once its plan is read (at most %ld pages)", cap);
    } else {
        long prev = 0;
        long got = mq_hugepages_reserve(asked, &prev);
        if (got < 0) {
            snprintf(d->hp_note, sizeof d->hp_note, "%s failed: /proc/sys/vm/nr_hugepages: %s", what,
                     strerror((int)-got));
        } else if (got == 0) {
            snprintf(d->hp_note, sizeof d->hp_note, "asked %ld page(s), the kernel gave none (nr_hugepages stays %ld)",
                     asked, prev);
        } else {
            int rc = hp_helper_start(d, got, 0);
            if (rc < 0) {
                long now = mq_hugepages_giveback(got);
                snprintf(d->hp_note, sizeof d->hp_note,
                         "reserved %ld page(s) but cannot start the helper that gives them "
                         "back (%s): given back now (nr_hugepages %ld)",
                         got, strerror(-rc), now);
            } else {
                d->hp_added = got;
                snprintf(d->hp_note, sizeof d->hp_note,
                         "reserved %ld of %ld page(s) asked (%ld MiB), nr_hugepages %ld -> %ld", got, asked, got * 2,
                         prev, prev + got);
            }
        }
    }
    mqd_log(LOG_INFO, "huge pages: %s", d->hp_note);
}

long mqd_hugepages_auto(mqd *d, long pages, const char *why)
{
    if (d->hp_pid <= 0 || d->cfg.hugepages_reserve != MQ_CFG_U32_AUTO)
        return 0;
    char req[32], buf[64];
    snprintf(req, sizeof req, "reserve %ld", pages);
    ssize_t n = hp_call(d, req, buf, sizeof buf);
    long got = -1, prev = -1, now = -1;
    if (n > 0 && sscanf(buf, "%ld %ld %ld", &got, &prev, &now) != 3)
        n = -EPROTO;
    __atomic_store_n(&d->hp_asked, pages, __ATOMIC_RELAXED);
    if (n < 0)
        snprintf(d->hp_note, sizeof d->hp_note, "auto reservation of %ld page(s) failed: %s", pages, strerror((int)-n));
    else if (got < 0)
        snprintf(d->hp_note, sizeof d->hp_note, "auto reservation of %ld page(s) failed: /proc/sys/vm/nr_hugepages: %s",
                 pages, strerror((int)-got));
    else
        snprintf(d->hp_note, sizeof d->hp_note,
                 "auto: reserved %ld of %ld page(s) asked (%ld MiB; %s), nr_hugepages %ld -> "
                 "%ld",
                 got, pages, got * 2, why, prev, now);
    if (n > 0 && got > 0)
        __atomic_store_n(&d->hp_added, got, __ATOMIC_RELAXED);
    mqd_log(LOG_INFO, "huge pages: %s", d->hp_note);
    return n < 0 ? (long)n : got;
}

void mqd_hugepages_giveback(mqd *d)
{
    if (d->hp_pid <= 0)
        return;
    char buf[32];
    ssize_t n = hp_call(d, "release", buf, sizeof buf);
    close(d->hp_fd);
    waitpid(d->hp_pid, NULL, 0); /* it exits right after answering (or on our close) */
    long added = __atomic_load_n(&d->hp_added, __ATOMIC_RELAXED);
    if (n > 0) {
        long now = strtol(buf, NULL, 10);
        if (added <= 0)
            ; /* auto mode that reserved nothing: nothing to say */
        else if (now >= 0)
            mqd_log(LOG_INFO, "huge pages: gave back %ld page(s), nr_hugepages now %ld", added, now);
        else
            mqd_log(LOG_ERR, "huge pages: giving back %ld page(s) failed: %s", added, strerror((int)-now));
    } else {
        mqd_log(LOG_ERR, "huge pages: no answer from the helper (pid %d): %s", (int)d->hp_pid, strerror((int)-n));
    }
    d->hp_pid = 0;
    d->hp_fd = -1;
}

int mqd_privs_setup(mqd *d, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    if (geteuid() == 0) {
        struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
        if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
            mqd_log(LOG_WARNING, "privileges: cannot raise RLIMIT_MEMLOCK: %s", strerror(errno));
    }
    hugepages_reserve(d);
    /* BPF needs its capabilities: load before dropping them. */
    int rc = mq_probes_start(&d->probes, getpid(), d->probes_err, sizeof d->probes_err);
    if (rc) {
        d->probes = NULL;
        mqd_log(LOG_NOTICE, "BPF probes unavailable: %s", d->probes_err);
    } else {
        d->probes_err[0] = 0;
    }
    return 0;
}

int mqd_privs_drop(mqd *d, char *err, size_t errlen)
{
    int root = geteuid() == 0;
    if (root) {
        /* Empty the bounding set while we still hold CAP_SETPCAP. */
        for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) {
                return mq_errmsg(err, errlen, -errno, "dropping capability %d from the bounding set: %s", cap,
                                 strerror(errno));
            }
    }
    if (root && d->cfg.user[0] && d->run_uid != 0) {
        gid_t g = d->run_gid;
        if (initgroups(d->cfg.user, g) < 0 && setgroups(1, &g) < 0) {
            return mq_errmsg(err, errlen, -errno, "setgroups for user %s: %s", d->cfg.user, strerror(errno));
        }
        if (setresgid(g, g, g) < 0) {
            return mq_errmsg(err, errlen, -errno, "setgid %u: %s", (unsigned)g, strerror(errno));
        }
        if (setresuid(d->run_uid, d->run_uid, d->run_uid) < 0) {
            return mq_errmsg(err, errlen, -errno, "setuid %u (%s): %s", (unsigned)d->run_uid, d->cfg.user,
                             strerror(errno));
        }
        if (setuid(0) == 0) {
            return mq_errmsg(err, errlen, -EPERM, "could regain root after switching to %s", d->cfg.user);
        }
    }
    if (root && d->run_uid == 0)
        mqd_log(LOG_WARNING, "privileges: running as root because \"user\" is \"root\": a flaw in mqd reachable by a "
                             "client would act with uid 0 (no capabilities, but the owner of root's files); prefer an "
                             "unprivileged user");
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    cap_t none = cap_init(); /* all flags clear */
    if (!none || cap_set_proc(none) < 0) {
        int e = errno;
        if (none)
            cap_free(none);
        return mq_errmsg(err, errlen, -e, "clearing capabilities: %s", strerror(e));
    }
    cap_free(none);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        return mq_errmsg(err, errlen, -errno, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
    }
    int rc = mqd_seccomp_install(d->cfg.seccomp, d->probes != NULL, err, errlen);
    if (rc)
        return rc;
    static const char *const seccomp_desc[] = { "seccomp allow-list (refusals: EPERM, logged)",
                                                "seccomp allow-list (refusals kill mqd)", "no seccomp filter" };
    mqd_log(LOG_INFO, "privileges: running as uid %u gid %u, no capabilities, no_new_privs, %s", (unsigned)getuid(),
            (unsigned)getgid(), seccomp_desc[d->cfg.seccomp <= MQD_SECCOMP_OFF ? d->cfg.seccomp : 0]);
    return 0;
}
