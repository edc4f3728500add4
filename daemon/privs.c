/* daemon/privs.c — privileges: what mqd does as root, then how it stops being root.
 *
 * Started as root, mqd (1) raises RLIMIT_MEMLOCK so the run-as user can lock weights and
 * KV, (2) reserves huge pages if configured, (3) loads the BPF probes (need CAP_BPF /
 * CAP_PERFMON), (4) binds its sockets (server.c), then mqd_privs_drop(): empties the
 * capability bounding set, switches groups, gid and uid to the configured user, clears
 * every remaining capability (permitted, effective, inheritable, ambient) and sets
 * no_new_privs. After that nothing it execs or does can regain privileges;
 * /proc/<pid>/status shows CapEff/CapPrm/CapBnd 0 and NoNewPrivs 1 (tests check it).
 * Peer checks (SO_PEERCRED, SO_PEERGROUPS) for both sockets live here too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "arena.h"
#include "probes.h"
#include "server.h"

/* Messages are cut to their buffers on purpose (they name paths that may be long). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

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
            snprintf(err, errlen, "allowed_users[%d]: no user \"%s\"", i, c->allowed_users[i]);
            return -ENOENT;
        }
        d->n_allowed_uids++;
    }
    for (int i = 0; i < MQ_CFG_LIST && c->allowed_groups[i][0]; i++) {
        if (group_id(c->allowed_groups[i], &d->allowed_gids[d->n_allowed_gids])) {
            snprintf(err, errlen, "allowed_groups[%d]: no group \"%s\"", i,
                     c->allowed_groups[i]);
            return -ENOENT;
        }
        d->n_allowed_gids++;
    }
    d->any_client = d->n_allowed_uids == 0 && d->n_allowed_gids == 0;
    d->admin_gid_set = 0;
    if (c->admin_group[0]) {
        if (group_id(c->admin_group, &d->admin_gid)) {
            snprintf(err, errlen, "admin_group: no group \"%s\"", c->admin_group);
            return -ENOENT;
        }
        d->admin_gid_set = 1;
    }
    d->run_uid = geteuid();
    d->run_gid = getegid();
    if (c->user[0] && user_id(c->user, &d->run_uid, &d->run_gid)) {
        snprintf(err, errlen, "user: no user \"%s\"", c->user);
        return -ENOENT;
    }
    return 0;
}

int mqd_peer_allowed(const mqd *d, int fd, int admin, uid_t *uid, pid_t *pid, char *why,
                     size_t whylen)
{
    struct ucred cr;
    socklen_t sl = sizeof cr;
    *uid = (uid_t)-1;
    *pid = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &sl) < 0) {
        snprintf(why, whylen, "SO_PEERCRED: %s", strerror(errno));
        return 0;
    }
    *uid = cr.uid;
    *pid = cr.pid;
    if (cr.uid == 0 || (!admin && d->any_client))
        return 1;
    gid_t groups[256];
    socklen_t gl = sizeof groups;
    int ng = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) == 0)
        ng = (int)(gl / sizeof(gid_t));
    if (admin) {
        if (d->admin_gid_set) {
            if (cr.gid == d->admin_gid)
                return 1;
            for (int i = 0; i < ng; i++)
                if (groups[i] == d->admin_gid)
                    return 1;
        }
        snprintf(why, whylen, "uid %u is not root%s%s", (unsigned)cr.uid,
                 d->admin_gid_set ? " and not in admin_group " : "",
                 d->admin_gid_set ? d->cfg.admin_group : "");
        return 0;
    }
    for (int i = 0; i < d->n_allowed_uids; i++)
        if (d->allowed_uids[i] == cr.uid)
            return 1;
    for (int i = 0; i < d->n_allowed_gids; i++) {
        if (d->allowed_gids[i] == cr.gid)
            return 1;
        for (int k = 0; k < ng; k++)
            if (groups[k] == d->allowed_gids[i])
                return 1;
    }
    snprintf(why, whylen, "uid %u gid %u is not in allowed_users/allowed_groups",
             (unsigned)cr.uid, (unsigned)cr.gid);
    return 0;
}

int mqd_privs_setup(mqd *d, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    if (geteuid() == 0) {
        struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
        if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
            mqd_log("privileges: cannot raise RLIMIT_MEMLOCK: %s", strerror(errno));
        if (d->cfg.hugepages_reserve && d->cfg.hugepages != MQ_CFG_HUGE_OFF) {
            long prev = 0;
            long got = mq_hugepages_reserve((long)d->cfg.hugepages_reserve, &prev);
            mqd_log("privileges: huge pages: asked %u, now %ld reserved (was %ld)",
                    d->cfg.hugepages_reserve, got, prev);
        }
    }
    /* BPF needs its capabilities: load before dropping them. */
    int rc = mq_probes_start(&d->probes, getpid(), d->probes_err, sizeof d->probes_err);
    if (rc) {
        d->probes = NULL;
        mqd_log("BPF probes unavailable: %s", d->probes_err);
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
                snprintf(err, errlen, "dropping capability %d from the bounding set: %s", cap,
                         strerror(errno));
                return -errno;
            }
    }
    if (root && d->cfg.user[0] && d->run_uid != 0) {
        gid_t g = d->run_gid;
        if (initgroups(d->cfg.user, g) < 0 && setgroups(1, &g) < 0) {
            snprintf(err, errlen, "setgroups for user %s: %s", d->cfg.user, strerror(errno));
            return -errno;
        }
        if (setresgid(g, g, g) < 0) {
            snprintf(err, errlen, "setgid %u: %s", (unsigned)g, strerror(errno));
            return -errno;
        }
        if (setresuid(d->run_uid, d->run_uid, d->run_uid) < 0) {
            snprintf(err, errlen, "setuid %u (%s): %s", (unsigned)d->run_uid, d->cfg.user,
                     strerror(errno));
            return -errno;
        }
        if (setuid(0) == 0) {
            snprintf(err, errlen, "could regain root after switching to %s", d->cfg.user);
            return -EPERM;
        }
    }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    cap_t none = cap_init(); /* all flags clear */
    if (!none || cap_set_proc(none) < 0) {
        int e = errno;
        if (none)
            cap_free(none);
        snprintf(err, errlen, "clearing capabilities: %s", strerror(e));
        return -e;
    }
    cap_free(none);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        snprintf(err, errlen, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
        return -errno;
    }
    mqd_log("privileges: running as uid %u gid %u, no capabilities, no_new_privs",
            (unsigned)getuid(), (unsigned)getgid());
    return 0;
}
