/* daemon/probes.c — loads daemon/probes.bpf.c (see probes.h) and reads its map.
 * Built with MQ_HAVE_BPF=1 and the generated probes.skel.h when the Makefile found
 * clang, bpftool and the kernel's BTF; otherwise the same API reports "BPF not built". */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "daemon/probes.h"
#include "common/errmsg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if MQ_HAVE_BPF
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "daemon/probes_shared.h"
#include "probes.skel.h"

#define KERNEL_BTF "/sys/kernel/btf/vmlinux"

struct mq_probes {
    struct mq_probes_bpf *skel;
    pid_t tgid;
};

int mq_probes_built(void)
{
    return 1;
}

static int fail(int rc, char *err, size_t errlen, const char *what)
{
    const char *hint = "";
    if (rc == -EPERM || rc == -EACCES)
        hint = " (needs CAP_BPF and CAP_PERFMON, or root; load before dropping privileges)";
    return mq_errmsg(err, errlen, rc, "BPF probes: %s: %s%s", what, strerror(-rc), hint);
}

int mq_probes_start(mq_probes **out, pid_t tgid, char *err, size_t errlen)
{
    *out = NULL;
    if (access(KERNEL_BTF, R_OK) != 0) {
        return mq_errmsg(err, errlen, -ENOTSUP, "BPF probes: kernel has no BTF (%s missing), CO-RE cannot load",
                         KERNEL_BTF);
    }
    mq_probes *p = calloc(1, sizeof *p);
    if (!p)
        return fail(-ENOMEM, err, errlen, "allocating");
    p->tgid = tgid;
    p->skel = mq_probes_bpf__open();
    if (!p->skel) {
        int rc = -errno;
        free(p);
        return fail(rc ? rc : -EINVAL, err, errlen, "opening the BPF object");
    }
    p->skel->rodata->targ_tgid = tgid;
    int rc = mq_probes_bpf__load(p->skel);
    if (rc) {
        mq_probes_stop(p);
        return fail(rc, err, errlen, "loading into the kernel");
    }
    rc = mq_probes_bpf__attach(p->skel);
    if (rc) {
        mq_probes_stop(p);
        return fail(rc, err, errlen, "attaching to sched_switch/page_fault_user");
    }
    *out = p;
    return 0;
}

typedef struct row {
    __u32 tid;
    struct mq_probe_stat st;
} row;

static int row_cmp(const void *a, const void *b)
{
    __u32 x = ((const row *)a)->tid, y = ((const row *)b)->tid;
    return (x > y) - (x < y);
}

int mq_probes_read(mq_probes *p, mq_probes_cb cb, void *ctx)
{
    int fd = bpf_map__fd(p->skel->maps.stats);
    row *rows = malloc(sizeof *rows * MQ_PROBES_MAX_THREADS);
    if (!rows)
        return -ENOMEM;
    int n = 0;
    __u32 key, next;
    __u32 *prev = NULL;
    while (n < MQ_PROBES_MAX_THREADS && bpf_map_get_next_key(fd, prev, &next) == 0) {
        key = next;
        prev = &key;
        if (bpf_map_lookup_elem(fd, &key, &rows[n].st) == 0) { /* deleted meanwhile: skip */
            rows[n].tid = key;
            n++;
        }
    }
    qsort(rows, (size_t)n, sizeof *rows, row_cmp);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of bpf_ktime_get_ns() */
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    for (int i = 0; i < n; i++) {
        uint64_t off = rows[i].st.offcpu_ns;
        uint64_t since = rows[i].st.off_since_ns;
        if (since && now > since)
            off += now - since; /* off a CPU right now */
        char comm[MQ_PROBES_COMM_LEN + 1];
        memcpy(comm, rows[i].st.comm, MQ_PROBES_COMM_LEN);
        comm[MQ_PROBES_COMM_LEN] = 0;
        cb((pid_t)rows[i].tid, comm, off, rows[i].st.faults, ctx);
    }
    free(rows);
    return 0;
}

void mq_probes_stop(mq_probes *p)
{
    if (!p)
        return;
    mq_probes_bpf__destroy(p->skel);
    free(p);
}

#else /* !MQ_HAVE_BPF: the build had no clang/bpftool/kernel BTF */

int mq_probes_built(void)
{
    return 0;
}

int mq_probes_start(mq_probes **out, pid_t tgid, char *err, size_t errlen)
{
    (void)tgid;
    *out = NULL;
    return mq_errmsg(err, errlen, -ENOTSUP, "BPF not built (clang, bpftool or kernel BTF were missing at build time)");
}

int mq_probes_read(mq_probes *p, mq_probes_cb cb, void *ctx)
{
    (void)p;
    (void)cb;
    (void)ctx;
    return -ENOTSUP;
}

void mq_probes_stop(mq_probes *p)
{
    (void)p;
}

#endif
