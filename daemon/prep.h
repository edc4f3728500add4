/* daemon/prep.h — work that must not run on the event loop thread: preparing prompts.
 *
 * Owns: a few worker threads ("mqd-prep") and a FIFO of jobs. A job's run() executes on a
 * worker; its done() is then posted to the event loop (mq_evloop_post), which owns
 * everything the job's result touches. client_conn.c hands it each SUBMIT: rendering a
 * conversation through the chat template and tokenizing it takes about a millisecond
 * for an agent's context (a 100k-token prompt far longer), and on the loop it held up
 * every other client's messages, tokens and hang-ups behind it (32 concurrent chat
 * requests waited for each other's rendering: bench-http's concurrent TTFT overhead).
 *
 * Who calls it: server.c (start after the load, stop at shutdown), client_conn.c (push).
 * Thread rules: mqd_prep_push from the loop thread; run() on a worker (it may use what is
 * read-only after the load: tokenizer, model facts, and the scheduler, which is
 * thread-safe); done() on the loop thread. A job is freed by its done().
 */
#ifndef MQ_DAEMON_PREP_H
#define MQ_DAEMON_PREP_H

#include <stddef.h>

#include "daemon/evloop.h"

#define MQD_PREP_THREADS 2 /* prompts prepared at once (a long one does not hold up the rest) */

typedef struct mqd_prep mqd_prep;

typedef struct mqd_prep_job {
    void (*run)(struct mqd_prep_job *j); /* on a worker */
    mq_ev_fn done;                       /* then on the loop, with arg = the job */
    struct mqd_prep_job *next;           /* the queue's link */
} mqd_prep_job;

int mqd_prep_start(mqd_prep **out, mq_evloop *loop, int threads, char *err, size_t errlen);
/* Queues j. 0, or -ESHUTDOWN once stopping (j is not run; the caller still owns it). */
int mqd_prep_push(mqd_prep *p, mqd_prep_job *j);
/* Runs what is queued, joins the workers and frees p (NULL is fine). The done() calls
 * they posted run with the loop's posted calls (mq_evloop_run_posted at shutdown). */
void mqd_prep_stop(mqd_prep *p);

#endif
