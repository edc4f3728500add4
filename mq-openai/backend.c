/* mq-openai/backend.c — the libmq connection pool and pinned conversations (backend.h). */
#define _GNU_SOURCE
#include "mq-openai/backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/errmsg.h"
#include "mq-openai/keys.h"

#define KEY_MAX            128
#define CONNECT_TIMEOUT_MS 2000 /* a pool connection to a ready mqd takes about a millisecond */

typedef struct pin {
    char tenant[OAI_TENANT_MAX + 1];
    char key[KEY_MAX];
    int slot;
    uint64_t session;
    double last_used;
    int used; /* the entry is live */
} pin;

typedef struct slot {
    mq_conn *conn;
    int busy;
    int n_pins; /* pinned sessions living on this connection */
} slot;

struct oai_backend {
    oai_backend_opts o;
    pthread_mutex_t mu;
    pthread_cond_t freed;
    slot *slots;
    pin *pins;
    int busy;
    pthread_mutex_t ctl_mu; /* the control connection */
    mq_conn *ctl;
    int connecting; /* a thread is connecting the control connection (ctl_mu) */
    mq_server_info info;
    int have_info;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int oai_backend_create(oai_backend **out, const oai_backend_opts *o, char *err, size_t errlen)
{
    oai_backend *b = calloc(1, sizeof *b);
    if (!b)
        return mq_errmsg(err, errlen, -ENOMEM, "backend: out of memory");
    b->o = *o;
    b->slots = calloc((size_t)o->max_conns, sizeof *b->slots);
    b->pins = calloc((size_t)o->max_pinned, sizeof *b->pins);
    if (!b->slots || !b->pins) {
        free(b->slots);
        free(b->pins);
        free(b);
        return mq_errmsg(err, errlen, -ENOMEM, "backend: out of memory");
    }
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->freed, NULL);
    pthread_mutex_init(&b->ctl_mu, NULL);
    *out = b;
    return 0;
}

void oai_backend_destroy(oai_backend *b)
{
    if (!b)
        return;
    for (;;) { /* a connect in flight finishes (or times out) before the backend goes */
        pthread_mutex_lock(&b->ctl_mu);
        int busy = b->connecting;
        pthread_mutex_unlock(&b->ctl_mu);
        if (!busy)
            break;
        usleep(10000);
    }
    for (int i = 0; i < b->o.max_conns; i++)
        if (b->slots[i].conn)
            mq_disconnect(b->slots[i].conn);
    if (b->ctl)
        mq_disconnect(b->ctl);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->freed);
    pthread_mutex_destroy(&b->ctl_mu);
    free(b->slots);
    free(b->pins);
    free(b);
}

static void remember_info(oai_backend *b, mq_conn *c)
{
    if (b->have_info)
        return;
    if (mq_server_info_get(c, &b->info) == 0)
        b->have_info = 1;
}

/* Drops a failed connection and every pin on it (mu held). */
static void drop_slot(oai_backend *b, int i)
{
    for (int k = 0; k < b->o.max_pinned; k++)
        if (b->pins[k].used && b->pins[k].slot == i)
            b->pins[k].used = 0;
    if (b->slots[i].conn)
        mq_disconnect(b->slots[i].conn);
    b->slots[i].conn = NULL;
    b->slots[i].n_pins = 0;
}

static pin *find_pin(oai_backend *b, const char *tenant, const char *key)
{
    for (int k = 0; k < b->o.max_pinned; k++)
        if (b->pins[k].used && !strcmp(b->pins[k].key, key) && !strcmp(b->pins[k].tenant, tenant))
            return &b->pins[k];
    return NULL;
}

/* A free pin entry: an unused one, else the least recently used one whose connection is
 * free (its session is closed). NULL if every pin's connection is busy (mu held). */
static pin *new_pin(oai_backend *b)
{
    pin *lru = NULL;
    double now = now_s();
    for (int k = 0; k < b->o.max_pinned; k++) {
        pin *p = &b->pins[k];
        if (!p->used)
            return p;
        if (b->slots[p->slot].busy)
            continue;
        if (!lru || p->last_used < lru->last_used)
            lru = p;
    }
    (void)now;
    if (lru) {
        mq_close_session(b->slots[lru->slot].conn, lru->session);
        b->slots[lru->slot].n_pins--;
        lru->used = 0;
    }
    return lru;
}

/* Closes pinned sessions idle for longer than pin_idle_s on free connections (mu held). */
static void expire_pins(oai_backend *b)
{
    double now = now_s();
    for (int k = 0; k < b->o.max_pinned; k++) {
        pin *p = &b->pins[k];
        if (p->used && !b->slots[p->slot].busy && now - p->last_used > b->o.pin_idle_s) {
            mq_close_session(b->slots[p->slot].conn, p->session);
            b->slots[p->slot].n_pins--;
            p->used = 0;
        }
    }
}

/* A free slot for a request without a pin: connected ones with the fewest pins first
 * (so pinned conversations spread over connections), else an empty one (mu held). */
static int pick_free_slot(oai_backend *b)
{
    int best = -1;
    for (int i = 0; i < b->o.max_conns; i++) {
        slot *s = &b->slots[i];
        if (s->busy)
            continue;
        if (best < 0 || (s->conn && !b->slots[best].conn) ||
            (!!s->conn == !!b->slots[best].conn && s->n_pins < b->slots[best].n_pins))
            best = i;
    }
    return best;
}

/* Gives slot i back and wakes a waiting request (mu held). */
static void free_slot(oai_backend *b, int i)
{
    b->slots[i].busy = 0;
    b->busy--;
    pthread_cond_broadcast(&b->freed);
}

static void kick_ctl(oai_backend *b);

/* Whether mqd answered on the control connection; if not, one is being made in the
 * background. While mqd loads it accepts no client: a connect would wait in its listen
 * queue, so a request answers 503 at once instead. */
static int mqd_up(oai_backend *b)
{
    pthread_mutex_lock(&b->ctl_mu);
    int up = b->ctl != NULL;
    if (!up)
        kick_ctl(b);
    pthread_mutex_unlock(&b->ctl_mu);
    return up;
}

void oai_backend_lost(oai_backend *b)
{
    pthread_mutex_lock(&b->ctl_mu);
    if (b->ctl) {
        mq_disconnect(b->ctl);
        b->ctl = NULL;
    }
    kick_ctl(b);
    pthread_mutex_unlock(&b->ctl_mu);
}

/* Connects slot i's connection (the caller holds the slot). */
static int connect_slot(oai_backend *b, slot *s, char *err, size_t errlen)
{
    if (!mqd_up(b))
        return mq_errmsg(err, errlen, -ENOTCONN,
                         "mqd is not ready (loading its model, or not running); retry in a few seconds");
    int rc = mq_connect_timeout(b->o.socket, CONNECT_TIMEOUT_MS, &s->conn);
    if (rc) {
        s->conn = NULL;
        oai_backend_lost(b); /* requests now fail at once until mqd answers again */
        return mq_errmsg(err, errlen, rc == -ETIMEDOUT ? -ENOTCONN : rc, "cannot connect to mqd: %s%s", mq_strerror(rc),
                         rc == -ETIMEDOUT ? " (restarting or loading?)" : "");
    }
    pthread_mutex_lock(&b->mu);
    remember_info(b, s->conn);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

int oai_backend_acquire(oai_backend *b, const char *tenant, const char *key, oai_lease *l, char *err, size_t errlen)
{
    memset(l, 0, sizeof *l);
    if (!tenant)
        tenant = "";
    l->slot = -1;
    int keyed = key && *key;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += b->o.wait_ms / 1000;
    dl.tv_nsec += (long)(b->o.wait_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    expire_pins(b);
    pin *p = NULL;
    int i = -1;
    for (;;) {
        p = keyed ? find_pin(b, tenant, key) : NULL;
        i = p ? p->slot : pick_free_slot(b);
        if (i >= 0 && !b->slots[i].busy)
            break;
        if (pthread_cond_timedwait(&b->freed, &b->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&b->mu);
            if (p)
                return mq_errmsg(err, errlen, -EAGAIN,
                                 "conversation \"%.64s\" has a request running; one at a time per conversation", key);
            return mq_errmsg(err, errlen, -EAGAIN, "all %d mqd connections are busy", b->o.max_conns);
        }
    }
    slot *s = &b->slots[i];
    s->busy = 1;
    b->busy++;
    pthread_mutex_unlock(&b->mu);

    int rc = s->conn ? 0 : connect_slot(b, s, err, errlen);
    l->slot = i;
    l->conn = s->conn;
    if (!rc && p) {
        l->session = p->session;
        l->pinned = 1;
        return 0;
    }
    if (!rc) {
        rc = mq_open_tenant_session(s->conn, MQ_MODE_RAW, tenant, &l->session);
        if (rc) {
            char m[256];
            mq_last_error(s->conn, m, sizeof m);
            mq_errmsg(err, errlen, rc, "cannot open an mq session: %s", m);
        }
    }
    if (rc) {
        int gone = rc == -EPIPE || rc == -ECONNRESET || rc == -ECONNREFUSED || rc == -ENOENT;
        pthread_mutex_lock(&b->mu);
        if (gone)
            drop_slot(b, i);
        free_slot(b, i);
        pthread_mutex_unlock(&b->mu);
        if (gone)
            oai_backend_lost(b);
        l->slot = -1;
        l->conn = NULL;
        return rc;
    }
    if (keyed) {
        pthread_mutex_lock(&b->mu);
        pin *np = find_pin(b, tenant, key) ? NULL : new_pin(b);
        if (np) {
            snprintf(np->tenant, sizeof np->tenant, "%s", tenant);
            snprintf(np->key, sizeof np->key, "%s", key);
            np->slot = i;
            np->session = l->session;
            np->last_used = now_s();
            np->used = 1;
            s->n_pins++;
            l->pinned = 1;
        }
        pthread_mutex_unlock(&b->mu);
    }
    return 0;
}

void oai_backend_release(oai_backend *b, oai_lease *l)
{
    if (l->slot < 0)
        return;
    if (!l->pinned && !l->broken)
        mq_close_session(l->conn, l->session);
    pthread_mutex_lock(&b->mu);
    if (l->broken)
        drop_slot(b, l->slot);
    for (int k = 0; l->pinned && k < b->o.max_pinned; k++)
        if (b->pins[k].used && b->pins[k].slot == l->slot && b->pins[k].session == l->session)
            b->pins[k].last_used = now_s();
    free_slot(b, l->slot);
    pthread_mutex_unlock(&b->mu);
    if (l->gone)
        oai_backend_lost(b);
    l->slot = -1;
    l->conn = NULL;
}

/* Connects the control connection off the caller's thread: while mqd loads, it accepts
 * no client and a connect waits for it, so /health must not. */
static void *connect_ctl(void *arg)
{
    oai_backend *b = arg;
    mq_conn *c = NULL;
    if (mq_connect(b->o.socket, &c))
        c = NULL;
    if (c) {
        pthread_mutex_lock(&b->mu);
        remember_info(b, c);
        pthread_mutex_unlock(&b->mu);
    }
    pthread_mutex_lock(&b->ctl_mu);
    b->ctl = c;
    b->connecting = 0;
    pthread_mutex_unlock(&b->ctl_mu);
    return NULL;
}

/* Starts connecting the control connection unless that is under way (ctl_mu held). */
static void kick_ctl(oai_backend *b)
{
    if (b->ctl || b->connecting)
        return;
    pthread_t th;
    b->connecting = 1;
    if (pthread_create(&th, NULL, connect_ctl, b) == 0)
        pthread_detach(th);
    else
        b->connecting = 0;
}

static int state_once(oai_backend *b, mq_stats *st)
{
    pthread_mutex_lock(&b->ctl_mu);
    int rc = -EAGAIN; /* no connection yet: unavailable, look again at the next call */
    if (b->ctl) {
        rc = mq_state_get(b->ctl, st);
        if (rc < 0) { /* mqd restarted or went away */
            mq_disconnect(b->ctl);
            b->ctl = NULL;
        }
    }
    kick_ctl(b);
    pthread_mutex_unlock(&b->ctl_mu);
    return rc;
}

#define STATE_CONNECT_WAIT_MS 100 /* a fresh connect to a ready mqd takes about a millisecond */

int oai_backend_state(oai_backend *b, mq_stats *st)
{
    int rc = state_once(b, st);
    for (int waited = 0; rc == -EAGAIN && waited < STATE_CONNECT_WAIT_MS; waited += 5) {
        usleep(5000);
        rc = state_once(b, st);
    }
    return rc;
}

int oai_backend_info(oai_backend *b, mq_server_info *info)
{
    pthread_mutex_lock(&b->mu);
    int have = b->have_info;
    if (have)
        *info = b->info;
    pthread_mutex_unlock(&b->mu);
    if (have)
        return 0;
    mq_stats st;
    int rc = oai_backend_state(b, &st);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&b->mu);
    *info = b->info;
    pthread_mutex_unlock(&b->mu);
    return 0;
}

int oai_backend_busy(oai_backend *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->busy;
    pthread_mutex_unlock(&b->mu);
    return n;
}
