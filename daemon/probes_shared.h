/* daemon/probes_shared.h — the map layout shared by probes.bpf.c (kernel) and probes.c.
 * Plain fixed-width fields only: both compilers (clang -target bpf, gcc) must agree. */
#ifndef MQ_PROBES_SHARED_H
#define MQ_PROBES_SHARED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define MQ_PROBES_MAX_THREADS 4096 /* tids tracked per process (mqd has a few dozen) */
#define MQ_PROBES_COMM_LEN    16   /* TASK_COMM_LEN */

struct mq_probe_stat {
    __u64 offcpu_ns;    /* completed off-CPU intervals, summed */
    __u64 off_since_ns; /* bpf_ktime_get_ns() when it last left a CPU; 0 = on a CPU */
    __u64 faults;       /* user-mode page faults */
    char comm[MQ_PROBES_COMM_LEN];
};

#endif
