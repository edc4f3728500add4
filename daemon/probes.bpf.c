// SPDX-License-Identifier: GPL-2.0
/* daemon/probes.bpf.c — the kernel half of mq's BPF probes (CO-RE).
 *
 * Counts, for every thread of one process (the tgid set in rodata before load):
 *   - off-CPU time: from the sched_switch that takes the thread off a CPU to the one that
 *     puts it back (sleeping, waiting on a futex or I/O, or preempted),
 *   - user page faults (x86 exceptions:page_fault_user: every fault taken in user mode).
 * Results sit in a hash map keyed by tid, read by daemon/probes.c. Threads of other
 * processes cost one tgid compare per event.
 *
 * Built with `clang -target bpf -O2 -g` against a vmlinux.h that the Makefile generates
 * from the running kernel's BTF; `bpftool gen skeleton` turns the object into
 * probes.skel.h. BTF-typed raw tracepoints (tp_btf) need no tracefs mount.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "daemon/probes_shared.h"

char LICENSE[] SEC("license") = "GPL";   /* sched_switch tp_btf needs GPL helpers */

/* Set by probes.c before load; the verifier sees it as a constant. */
const volatile int targ_tgid = 0;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MQ_PROBES_MAX_THREADS);
    __type(key, __u32);                    /* tid */
    __type(value, struct mq_probe_stat);
} stats SEC(".maps");

static __always_inline struct mq_probe_stat *stat_of(__u32 tid, struct task_struct *t)
{
    struct mq_probe_stat *s = bpf_map_lookup_elem(&stats, &tid);
    if (s)
        return s;
    struct mq_probe_stat zero = {};
    bpf_probe_read_kernel_str(zero.comm, sizeof zero.comm, t->comm);
    bpf_map_update_elem(&stats, &tid, &zero, BPF_NOEXIST);
    return bpf_map_lookup_elem(&stats, &tid);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(mq_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
    __u64 now = bpf_ktime_get_ns();

    if (BPF_CORE_READ(prev, tgid) == targ_tgid) {
        struct mq_probe_stat *s = stat_of(BPF_CORE_READ(prev, pid), prev);
        if (s) {
            s->off_since_ns = now;
            /* keep the name current: threads are named after they start */
            bpf_probe_read_kernel_str(s->comm, sizeof s->comm, prev->comm);
        }
    }
    if (BPF_CORE_READ(next, tgid) == targ_tgid) {
        __u32 tid = BPF_CORE_READ(next, pid);
        struct mq_probe_stat *s = bpf_map_lookup_elem(&stats, &tid);
        /* no entry: the thread went off-CPU before the probes started; that first
         * interval is not counted (its start is unknown) */
        if (s && s->off_since_ns) {
            s->offcpu_ns += now - s->off_since_ns;
            s->off_since_ns = 0;
        }
    }
    return 0;
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(mq_page_fault_user, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
    __u64 id = bpf_get_current_pid_tgid();
    if ((int)(id >> 32) != targ_tgid)
        return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct mq_probe_stat *s = stat_of((__u32)id, t);
    if (s)
        __sync_fetch_and_add(&s->faults, 1);
    return 0;
}
