/* tests/integration/test_hugepages.c — mqd reserves hugetlb pages itself (hugepages_reserve)
 * and gives them back, checked against the kernel's own counters:
 *   - as root with --hugepages-reserve N: /proc/sys/vm/nr_hugepages grows by what mqd says
 *     it reserved, the weights and the KV segment are mapped from those pages
 *     (HugePages_Free < HugePages_Total in /proc/meminfo, `mqctl status` and the admin
 *     JSON report hugetlb bytes for both), and after SIGTERM nr_hugepages is back;
 *   - killed with SIGKILL, mqd's helper still gives the pages back;
 *   - a failed start-up (a model folder without a model) gives them back too;
 *   - "auto" reserves exactly the pages of weights + KV segment (from the model's plan),
 *     and satisfies hugepages "require"; "require" without free pages fails the start;
 *   - not root (mqd started as nobody): nothing is reserved and the status says why.
 * The test puts nr_hugepages back to its starting value itself if anything goes wrong.
 */
#include "engine/arena.h"
#include "tests/integration/mqd_spawn.h"

#include <math.h>
#include <pwd.h>

#define RESERVE \
    130 /* 260 MiB: weights (~225 MiB with the packed NVFP4 copy, table form) + a 12 MiB KV segment + slack */
#define RESERVE_S "130" /* the same, for the log lines */
#define KV_TOKENS "1024"

static char dir[256], client_sock[300], admin_sock[300];
static long orig_nr = -1;
static pid_t mqd_pid;

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static long nr_hugepages(void)
{
    return read_long("/proc/sys/vm/nr_hugepages");
}

static long meminfo(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    if (f)
        fclose(f);
    return v;
}

/* Whatever happened, leave the pool as we found it (and no mqd behind). */
static void restore(void)
{
    if (mqd_pid > 0) {
        kill(mqd_pid, SIGKILL);
        waitpid(mqd_pid, NULL, 0);
        mqd_pid = 0;
    }
    if (orig_nr < 0)
        return;
    for (int i = 0; i < 50 && nr_hugepages() != orig_nr; i++)
        usleep(100 * 1000); /* a killed mqd's helper may still be at it */
    if (nr_hugepages() != orig_nr) {
        FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
        if (f) {
            fprintf(f, "%ld\n", orig_nr);
            fclose(f);
        }
        fprintf(stderr, "  restored nr_hugepages to %ld\n", orig_nr);
    }
}

/* Starts mqd with huge page reservation; as_nobody: the process itself is not root. */
/* Copies the program src to dst (mode 0755): 0 or -1. */
static int copy_exec(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    int rc = in >= 0 && out >= 0 ? 0 : -1;
    char buf[1 << 16];
    ssize_t n;
    while (!rc && (n = read(in, buf, sizeof buf)) != 0)
        rc = n < 0 || write(out, buf, (size_t)n) != n ? -1 : 0;
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) < 0)
        rc = -1;
    return rc || chmod(dst, 0755) ? -1 : 0;
}

static pid_t start_mqd_reserve(const char *model, const char *log, int as_nobody, const char *reserve,
                               const char *huge_mode)
{
    char bin[4200];
    snprintf(bin, sizeof bin, "%s/mqd", spawn_build_dir());
    if (as_nobody) {
        /* nobody may not enter a private checkout: it runs a byte copy of build/mqd from
         * the test's folder */
        char copy[400];
        snprintf(copy, sizeof copy, "%s/mqd-copy", dir);
        CHECK(copy_exec(bin, copy) == 0, "cannot copy %s to %s", bin, copy);
        snprintf(bin, sizeof bin, "%s", copy);
    }
    unlink(log);
    char res[16];
    snprintf(res, sizeof res, "%s", reserve);
    char *argv[] = { bin,
                     "--model-dir",
                     (char *)model,
                     "--client-socket",
                     client_sock,
                     "--admin-socket",
                     admin_sock,
                     "--kv-tokens",
                     KV_TOKENS,
                     "--ctx-tokens",
                     KV_TOKENS,
                     "--hugepages-reserve",
                     res,
                     "--drain-timeout-ms",
                     "1000",
                     "--hugepages",
                     (char *)(huge_mode ? huge_mode : "auto"),
                     "--user",
                     as_nobody ? "" : "nobody",
                     NULL };
    if (!as_nobody)
        return spawn(argv, NULL, log);
    argv[17] = NULL; /* no --user: it is nobody already */
    return spawn_as(argv, NULL, log, "nobody");
}

static pid_t start_mqd(const char *model, const char *log, int as_nobody)
{
    char res[16];
    snprintf(res, sizeof res, "%d", RESERVE);
    return start_mqd_reserve(model, log, as_nobody, res, NULL);
}

/* Starts mqd on the test model (reserve NULL: RESERVE pages) and waits until it answers;
 * if it does not, the check fails, its log is shown and 0 comes back. */
static int start_ready(const char *log, int as_nobody, const char *reserve, const char *huge_mode)
{
    char res[16];
    snprintf(res, sizeof res, "%d", RESERVE);
    mqd_pid = start_mqd_reserve(spawn_model(), log, as_nobody, reserve ? reserve : res, huge_mode);
    int ready = spawn_wait_ready(admin_sock, mqd_pid, 60);
    CHECK(ready, "mqd did not become ready");
    if (!ready)
        spawn_dump_log(log);
    return ready;
}

/* SIGTERM, then mqd must exit 0 (drained) within 20 s. */
static void stop_mqd(void)
{
    kill(mqd_pid, SIGTERM);
    int ws = spawn_wait_exit(mqd_pid, 20);
    CHECK(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "mqd exit status %d", ws);
    if (ws >= 0)
        mqd_pid = 0;
}

static void test_reserve_use_giveback(void)
{
    char log[320];
    snprintf(log, sizeof log, "%s/mqd.log", dir);
    long before = nr_hugepages();
    if (!start_ready(log, 0, NULL, NULL))
        return;
    cJSON *st = admin_call(admin_sock, "status", 0);
    CHECK(st != NULL, "status");
    double reserved = jnum(st, "memory", "hugepages_reserved");
    long nr = nr_hugepages(), total = meminfo("HugePages_Total"), fr = meminfo("HugePages_Free");
    long rsvd = meminfo("HugePages_Rsvd");
    const cJSON *mem = cJSON_GetObjectItem(st, "memory");
    double w_huge = jnum(mem, "weights_mapped", "hugetlb");
    double w_thp = jnum(mem, "weights_mapped", "thp");
    double w_4k = jnum(mem, "weights_mapped", "4k");
    double kv_huge = jnum(mem, "kv_mapped", "hugetlb");
    double used = jnum(st, "memory", "weights_used");
    printf("    reserved %.0f, nr_hugepages %ld -> %ld, HugePages_Total %ld Free %ld Rsvd %ld; "
           "weights hugetlb %.1f MiB (thp %.1f, 4k %.1f), KV hugetlb %.1f MiB\n",
           reserved, before, nr, total, fr, rsvd, w_huge / 1048576, w_thp / 1048576, w_4k / 1048576, kv_huge / 1048576);
    /* 24 GiB and a quiet pool: the kernel gives all RESERVE pages */
    CHECK(reserved == RESERVE, "mqd reserved %.0f of %d pages", reserved, RESERVE);
    CHECK(nr == before + (long)reserved, "nr_hugepages %ld, expected %ld + %.0f", nr, before, reserved);
    CHECK(total >= (long)reserved, "HugePages_Total %ld", total);
    /* held by mqd: weights (~112 pages) + KV segment (6 pages): faulted in (Total - Free)
     * or reserved by mmap and not yet touched (Rsvd, KV blocks nobody wrote yet) */
    CHECK(fr >= 0 && fr < total, "HugePages_Free %ld of %ld", fr, total);
    CHECK(rsvd >= 0 && total - fr + rsvd >= (long)((w_huge + kv_huge) / (2 << 20)),
          "HugePages Free %ld Rsvd %ld of %ld while weights+KV map %.0f pages", fr, rsvd, total,
          (w_huge + kv_huge) / (2 << 20));
    CHECK(w_huge >= used && used > 100e6, "weights: %.0f hugetlb bytes for %.0f used", w_huge, used);
    CHECK(w_thp == 0 && w_4k == 0, "weights partly on thp (%.0f) / 4k (%.0f)", w_thp, w_4k);
    CHECK(kv_huge >= 12 << 20, "KV segment hugetlb bytes %.0f", kv_huge);
    cJSON_Delete(st);
    CHECK(spawn_log_has(log, "kv: segment 12.0 MiB hugetlb"), "log names the KV segment's pages");

    /* the same through the operator's tool */
    char mqctl[4200], out[8192], tlog[320];
    snprintf(mqctl, sizeof mqctl, "%s/mqctl", spawn_build_dir());
    snprintf(tlog, sizeof tlog, "%s/mqctl.log", dir);
    char *sargv[] = { mqctl, "--socket", admin_sock, "status", NULL };
    int rc = spawn_capture(sargv, tlog, 20, out, sizeof out);
    CHECK(rc == 0, "mqctl status exit %d", rc);
    double mw = 0, mk = 0;
    const char *wl = strstr(out, "weights mapped: hugetlb ");
    const char *kl = strstr(out, "KV segment: hugetlb ");
    if (wl)
        mw = strtod(wl + strlen("weights mapped: hugetlb "), NULL);
    if (kl)
        mk = strtod(kl + strlen("KV segment: hugetlb "), NULL);
    CHECK(mw > 100 && mk >= 12, "mqctl status: weights hugetlb %.1f MiB, KV %.1f MiB:\n%s", mw, mk, out);

    stop_mqd();
    /* given back before mqd exited: no waiting */
    CHECK(nr_hugepages() == before, "nr_hugepages %ld after exit, was %ld", nr_hugepages(), before);
    CHECK(spawn_log_has(log, "gave back " RESERVE_S " page(s)"), "log says the pages were given back");
    if (harness_cur_fail)
        spawn_dump_log(log);
}

static void test_sigkill_giveback(void)
{
    char log[320];
    snprintf(log, sizeof log, "%s/mqd-kill.log", dir);
    long before = nr_hugepages();
    if (!start_ready(log, 0, NULL, NULL))
        return;
    CHECK(nr_hugepages() == before + RESERVE, "nr_hugepages %ld while running", nr_hugepages());
    kill(mqd_pid, SIGKILL);
    waitpid(mqd_pid, NULL, 0);
    mqd_pid = 0;
    double t0 = spawn_now();
    while (nr_hugepages() != before && spawn_now() - t0 < 5)
        usleep(20 * 1000);
    CHECK(nr_hugepages() == before, "nr_hugepages %ld 5 s after SIGKILL, was %ld", nr_hugepages(), before);
    printf("    given back %.0f ms after SIGKILL\n", (spawn_now() - t0) * 1000);
    CHECK(spawn_log_has(log, "mqd is gone; gave back " RESERVE_S " page(s)"), "helper logged the give-back");
    unlink(client_sock); /* a killed mqd leaves its sockets */
    unlink(admin_sock);
    if (harness_cur_fail)
        spawn_dump_log(log);
}

static void test_failed_start_giveback(void)
{
    char log[320], empty[300];
    snprintf(log, sizeof log, "%s/mqd-fail.log", dir);
    snprintf(empty, sizeof empty, "%s/no-model", dir);
    mkdir(empty, 0755);
    /* files that pass the start-up checks (regular files) but do not load: the failure
     * comes after the pages were reserved */
    static const char *const files[] = { "config.json", "tokenizer.json", "model.safetensors" };
    for (int i = 0; i < 3; i++) {
        char p[400];
        snprintf(p, sizeof p, "%s/%s", empty, files[i]);
        FILE *f = fopen(p, "w");
        if (f) {
            fputs("{}", f);
            fclose(f);
        }
    }
    long before = nr_hugepages();
    mqd_pid = start_mqd(empty, log, 0);
    int ws = spawn_wait_exit(mqd_pid, 30);
    CHECK(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "exit status %d", ws);
    if (ws >= 0)
        mqd_pid = 0;
    CHECK(spawn_log_has(log, "reserved " RESERVE_S " of " RESERVE_S " page(s)"), "pages were reserved first");
    CHECK(spawn_log_has(log, "gave back " RESERVE_S " page(s)"), "and given back");
    CHECK(nr_hugepages() == before, "nr_hugepages %ld after failed start, was %ld", nr_hugepages(), before);
    if (harness_cur_fail)
        spawn_dump_log(log);
}

static double pages_of(double bytes)
{
    return ceil(bytes / (2 << 20));
}

/* "auto": as many pages as weights + KV segment need, counted from the model's plan
 * before anything is mapped; the weights then sit in one exactly sized hugetlb mapping. */
static void test_auto(void)
{
    char log[320];
    snprintf(log, sizeof log, "%s/mqd-auto.log", dir);
    long before = nr_hugepages();
    /* with "require": start-up would fail if any of it were not hugetlb */
    if (!start_ready(log, 0, "auto", "require"))
        return;
    cJSON *st = admin_call(admin_sock, "status", 0);
    double reserved = jnum(st, "memory", "hugepages_reserved");
    double asked = jnum(st, "memory", "hugepages_asked");
    double used = jnum(st, "memory", "weights_used");
    const cJSON *mem = cJSON_GetObjectItem(st, "memory");
    double w_huge = jnum(mem, "weights_mapped", "hugetlb");
    double w_other = jnum(mem, "weights_mapped", "thp") + jnum(mem, "weights_mapped", "4k");
    double kv_huge = jnum(mem, "kv_mapped", "hugetlb");
    double kv_bytes = jnum(st, "kv", "bytes");
    long nr = nr_hugepages();
    printf("    auto: asked %.0f, reserved %.0f (weights used %.1f MiB -> %.0f pages, KV %.1f "
           "MiB -> %.0f pages), nr_hugepages %ld -> %ld\n",
           asked, reserved, used / 1048576, pages_of(used), kv_bytes / 1048576, pages_of(kv_bytes), before, nr);
    CHECK(used > 100e6 && kv_bytes >= 12 << 20, "status: weights %.0f, KV %.0f bytes", used, kv_bytes);
    CHECK(asked == pages_of(used) + pages_of(kv_bytes), "asked %.0f pages for %.0f weight + %.0f KV bytes", asked, used,
          kv_bytes);
    CHECK(reserved == asked && nr == before + (long)reserved, "reserved %.0f, nr %ld", reserved, nr);
    CHECK(w_huge == pages_of(used) * (2 << 20) && w_other == 0,
          "weights: hugetlb %.0f bytes (one exact mapping), other %.0f", w_huge, w_other);
    CHECK(kv_huge == kv_bytes, "KV hugetlb %.0f of %.0f bytes", kv_huge, kv_bytes);
    CHECK(spawn_log_has(log, "auto: reserved"), "log says what auto reserved");
    cJSON_Delete(st);
    stop_mqd();
    CHECK(nr_hugepages() == before, "nr_hugepages %ld after exit, was %ld", nr_hugepages(), before);
    if (harness_cur_fail)
        spawn_dump_log(log);
}

/* hugepages "require" without pages: start-up fails and says why, nothing is left behind */
static void test_require_without_pages_fails(void)
{
    char log[320];
    snprintf(log, sizeof log, "%s/mqd-require.log", dir);
    /* the pool is shared: pages other processes left free would let mqd start, so the
     * test takes every free page itself while mqd starts */
    long fr = mq_hugepages_free();
    size_t held = fr > 0 ? (size_t)fr << 21 : 0;
    mq_mem_kind kind = MQ_MEM_4K;
    void *hold = held ? mq_mem_map(held, 1, 0, &kind) : NULL;
    if (hold && kind == MQ_MEM_HUGETLB)
        memset(hold, 0, held);
    long before = nr_hugepages();
    fr = mq_hugepages_free();
    CHECK(fr >= 0 && fr < 82, "this test needs fewer than 82 free huge pages, %ld free", fr);
    mqd_pid = start_mqd_reserve(spawn_model(), log, 0, "0", "require");
    int ws = spawn_wait_exit(mqd_pid, 30);
    CHECK(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "exit status %d", ws);
    if (ws >= 0)
        mqd_pid = 0;
    CHECK(spawn_log_has(log, "hugepages is \"require\" but the weights got"), "log says why");
    CHECK(nr_hugepages() == before, "nr_hugepages %ld, was %ld", nr_hugepages(), before);
    if (hold)
        mq_mem_unmap(hold, held);
    if (harness_cur_fail)
        spawn_dump_log(log);
}

static void test_not_root_skips(void)
{
    char log[320];
    snprintf(log, sizeof log, "%s/mqd-nobody.log", dir);
    /* mqd as nobody makes its own socket folder: give it one it may write to */
    char nd[300];
    snprintf(nd, sizeof nd, "%s/nobody", dir);
    mkdir(nd, 0777);
    chmod(nd, 0777);
    snprintf(client_sock, sizeof client_sock, "%.200s/client.sock", nd);
    snprintf(admin_sock, sizeof admin_sock, "%.200s/admin.sock", nd);
    long before = nr_hugepages();
    mqd_pid = start_mqd(spawn_model(), log, 1);
    int ready = spawn_wait_ready(admin_sock, mqd_pid, 60);
    CHECK(ready, "mqd (as nobody) did not become ready");
    if (!ready) {
        spawn_dump_log(log);
        return;
    }
    cJSON *st = admin_call(admin_sock, "status", 0);
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(st, "memory");
    const char *note = jstr(mem, "hugepages_note");
    CHECK(jnum(st, "memory", "hugepages_reserved") == 0 && jnum(st, "memory", "hugepages_asked") == RESERVE,
          "status: reserved %.0f asked %.0f", jnum(st, "memory", "hugepages_reserved"),
          jnum(st, "memory", "hugepages_asked"));
    CHECK(strstr(note, "skipped: not root") != NULL, "note: %s", note);
    CHECK(nr_hugepages() == before, "nr_hugepages changed to %ld", nr_hugepages());
    CHECK(spawn_log_has(log, "skipped: not root"), "log says why nothing was reserved");
    cJSON_Delete(st);
    stop_mqd();
    if (harness_cur_fail)
        spawn_dump_log(log);
}

int main(void)
{
    if (geteuid() != 0) {
        SKIP("reserving huge pages needs root (euid %d)", (int)geteuid());
    } else {
        orig_nr = nr_hugepages();
        CHECK(orig_nr >= 0, "cannot read /proc/sys/vm/nr_hugepages");
        atexit(restore);
        spawn_tmpdir(dir, sizeof dir);
        snprintf(client_sock, sizeof client_sock, "%s/run/client.sock", dir);
        snprintf(admin_sock, sizeof admin_sock, "%s/run/admin.sock", dir);
        printf("  nr_hugepages at start: %ld\n", orig_nr);
    }
    RUN(test_reserve_use_giveback);
    restore();
    RUN(test_sigkill_giveback);
    restore();
    RUN(test_failed_start_giveback);
    restore();
    RUN(test_auto);
    restore();
    RUN(test_require_without_pages_fails);
    restore();
    RUN(test_not_root_skips);
    restore();
    return harness_done();
}
