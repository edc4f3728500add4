/* daemon/probes.h — BPF probes on mqd's own threads: off-CPU time and page faults.
 *
 * Owns: one loaded BPF object (daemon/probes.bpf.c, CO-RE, embedded as a libbpf
 * skeleton) attached to the sched_switch and page_fault_user tracepoints, filtering on
 * one process (tgid), and the map of per-thread counters it fills.
 *
 * Who calls it: mqd's main at start-up, BEFORE it drops privileges (loading needs
 * CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN; reading the maps afterwards needs none), and
 * the admin handler behind `mqctl top`, which calls mq_probes_read(). BPF is optional:
 * when it cannot be loaded (no kernel BTF, no privileges, a build without clang/bpftool)
 * mq_probes_start() returns a negative errno and a one-line reason, and mqd goes on
 * without probes.
 *
 * Counting rules: off-CPU time is summed over completed intervals (switched out ->
 * switched back in) plus, at read time, the running interval of a thread that is off a
 * CPU right now; an interval that began before start is not counted. Faults are every
 * user-mode page fault (minor and major) taken by the thread since start. Threads that
 * exited stay in the table with their totals (the tid may be reused later).
 *
 * Thread rules: start/stop from one thread; mq_probes_read() may run concurrently with
 * the probes firing (counters are read without a snapshot: each value is consistent, a
 * row's two values may be a few events apart) but not concurrently with stop.
 */
#ifndef MQ_PROBES_H
#define MQ_PROBES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct mq_probes mq_probes;

/* Called once per thread seen: tid, thread name (NUL-terminated, <= 15 chars),
 * off-CPU nanoseconds and page faults since start. */
typedef void (*mq_probes_cb)(pid_t tid, const char *comm, uint64_t offcpu_ns, uint64_t faults, void *ctx);

/* Loads and attaches the probes for process tgid. 0, or a negative errno with a reason
 * in err (errlen bytes): -ENOTSUP when mq was built without BPF ("BPF not built") or the
 * kernel has no BTF, -EPERM without the capabilities, others from libbpf. */
int mq_probes_start(mq_probes **out, pid_t tgid, char *err, size_t errlen);
/* Calls cb for every thread of the process seen so far, in tid order. 0 or -errno. */
int mq_probes_read(mq_probes *p, mq_probes_cb cb, void *ctx);
/* Detaches and frees. NULL is fine. */
void mq_probes_stop(mq_probes *p);
/* 1 if this build contains the BPF object, 0 if it is the fallback. */
int mq_probes_built(void);

#endif
