/* daemon/prep.c — the prompt-preparation workers (prep.h). */
#define _GNU_SOURCE
#include "daemon/prep.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"
#include "daemon/log.h"

struct mqd_prep {
    mq_evloop *loop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mqd_prep_job *head, *tail;
    int stop;
    int n_threads;
    pthread_t th[];
};

static void *worker(void *arg)
{
    mqd_prep *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        mqd_prep_job *j = p->head;
        if (!j) {
            if (p->stop)
                break;
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        j->run(j);
        if (mq_evloop_post(p->loop, j->done, j))
            /* out of memory for the post: the loop cannot learn the result; its client
             * waits for a reply that never comes, but mqd goes on */
            mqd_log(LOG_ERR, "prep: cannot hand a prepared prompt back to the event loop");
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int mqd_prep_start(mqd_prep **out, mq_evloop *loop, int threads, char *err, size_t errlen)
{
    *out = NULL;
    mqd_prep *p = calloc(1, sizeof *p + (size_t)threads * sizeof(pthread_t));
    if (!p)
        return mq_errmsg(err, errlen, -ENOMEM, "prep workers: out of memory");
    p->loop = loop;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < threads; i++) {
        int rc = pthread_create(&p->th[i], NULL, worker, p);
        if (rc) {
            mqd_prep_stop(p);
            return mq_errmsg(err, errlen, -rc, "prep worker %d: %s", i, strerror(rc));
        }
        pthread_setname_np(p->th[i], "mqd-prep");
        p->n_threads++;
    }
    *out = p;
    return 0;
}

int mqd_prep_push(mqd_prep *p, mqd_prep_job *j)
{
    pthread_mutex_lock(&p->mu);
    int rc = 0;
    if (p->stop)
        rc = -ESHUTDOWN;
    else {
        j->next = NULL;
        if (p->tail)
            p->tail->next = j;
        else
            p->head = j;
        p->tail = j;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void mqd_prep_stop(mqd_prep *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++)
        pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}
