/* Weight streaming: every byte streamed equals pread of the same range, for buffered and
 * O_DIRECT reads, with and without helper threads, tiny pieces and queue depths; each read
 * is made ready exactly once, after its bytes arrived; a truncated file, a missing file,
 * a FIFO and a failing ready callback end with errors naming the file, offset and tensor;
 * a cancel flag stops the stream. */
#include "tests/harness.h"
#include "engine/weight_stream.h"
#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdint.h>
#include <unistd.h>

/* test_alloc_failure_closes_nothing needs a failed malloc to return NULL, as glibc's does */
#ifdef __SANITIZE_ADDRESS__
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}
#endif

#define FILE_BYTES (3 * 1024 * 1024 + 12345)
#define NR         40

struct fixture {
    char path[64];
    uint8_t *data;
    mq_ws_read reads[NR];
    uint8_t *dst[NR];
    int ready_count[NR];
    int bad_when_ready; /* reads whose bytes were wrong at ready time */
    int fail_at;        /* ready() fails on this read (-1 = never) */
    int cancel_at;      /* ready() of this read sets `cancel` (-1 = never) */
    int cancel;
};

static int make_file(struct fixture *f, size_t bytes)
{
    snprintf(f->path, sizeof f->path, "/tmp/mq_ws_test_%d.bin", (int)getpid());
    int fd = open(f->path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0)
        return -errno;
    ssize_t w = write(fd, f->data, bytes);
    close(fd);
    return w == (ssize_t)bytes ? 0 : -EIO;
}

static void setup(struct fixture *f, unsigned long long seed)
{
    memset(f, 0, sizeof *f);
    f->fail_at = -1;
    f->cancel_at = -1;
    f->data = malloc(FILE_BYTES);
    unsigned long long s = seed;
    for (size_t i = 0; i < FILE_BYTES; i++)
        f->data[i] = (uint8_t)(harness_rand(&s) >> 32);
    CHECK(make_file(f, FILE_BYTES) == 0, "write %s", f->path);
    /* tensors: adjacent runs with odd sizes, a zero-length one, one ending at EOF, and a
     * few overlapping ranges read twice */
    uint64_t off = 7;
    for (int i = 0; i < NR; i++) {
        uint64_t len = (i == 5) ? 0 : (harness_rand(&s) % 150000) + 1;
        if (i == NR - 1) {
            off = FILE_BYTES - 4097;
            len = 4097;
        }
        if (i % 9 == 8)
            off = off > 5000 ? off - 5000 : 0; /* overlap the previous */
        if (off + len > FILE_BYTES)
            len = FILE_BYTES - off;
        f->dst[i] = malloc(len + 1);
        memset(f->dst[i], 0xEE, len + 1);
        f->reads[i] = (mq_ws_read){ .file = 0, .offset = off, .bytes = len, .dst = f->dst[i], .what = "t" };
        off += len;
    }
}

static void teardown(struct fixture *f)
{
    unlink(f->path);
    for (int i = 0; i < NR; i++)
        free(f->dst[i]);
    free(f->data);
}

static int on_ready(void *ctx, int i, char *err, size_t errlen)
{
    struct fixture *f = ctx;
    __atomic_add_fetch(&f->ready_count[i], 1, __ATOMIC_RELAXED);
    const mq_ws_read *r = &f->reads[i];
    if (r->bytes && memcmp(r->dst, f->data + r->offset, r->bytes) != 0)
        __atomic_add_fetch(&f->bad_when_ready, 1, __ATOMIC_RELAXED);
    if (i == f->fail_at) {
        return mq_errmsg(err, errlen, -EDOM, "quantizer refused read %d", i);
    }
    if (i == f->cancel_at)
        __atomic_store_n(&f->cancel, 1, __ATOMIC_RELEASE);
    return 0;
}

static void check_all(struct fixture *f, const char *what)
{
    for (int i = 0; i < NR; i++) {
        const mq_ws_read *r = &f->reads[i];
        /* the reference: pread of the same range */
        uint8_t *ref = malloc(r->bytes + 1);
        int fd = open(f->path, O_RDONLY);
        ssize_t n = r->bytes ? pread(fd, ref, r->bytes, (off_t)r->offset) : 0;
        close(fd);
        CHECK(n == (ssize_t)r->bytes, "%s: pread %d", what, i);
        CHECK(memcmp(f->dst[i], ref, r->bytes) == 0, "%s: read %d differs from pread", what, i);
        CHECK(f->dst[i][r->bytes] == 0xEE, "%s: read %d wrote past its end", what, i);
        CHECK(f->ready_count[i] == 1, "%s: read %d made ready %d times", what, i, f->ready_count[i]);
        free(ref);
    }
    CHECK(f->bad_when_ready == 0, "%s: %d reads were incomplete at ready time", what, f->bad_when_ready);
}

static void run_config(mq_ws_direct direct, int helpers, int qd, size_t piece)
{
    struct fixture f;
    setup(&f, 1234 + (unsigned)helpers * 7 + (unsigned)qd);
    mq_ws_opts o;
    mq_ws_opts_default(&o);
    o.direct = direct;
    o.helpers = helpers;
    o.queue_depth = qd;
    o.read_bytes = piece;
    const char *paths[1] = { f.path };
    mq_ws_progress prog;
    mq_ws_result res;
    char err[512] = "";
    char what[96];
    snprintf(what, sizeof what, "direct=%d helpers=%d qd=%d piece=%zu", (int)direct, helpers, qd, piece);
    int r = mq_ws_run(paths, 1, f.reads, NR, &o, on_ready, &f, &prog, &res, err, sizeof err);
    CHECK(r == 0, "%s: %d %s", what, r, err);
    check_all(&f, what);
    uint64_t bd, bt, rd, rt;
    double rate;
    mq_ws_progress_get(&prog, &bd, &bt, &rd, &rt, &rate);
    CHECK(bd == bt && rd == NR && rt == NR && rate > 0, "%s: progress %llu/%llu %llu/%llu", what,
          (unsigned long long)bd, (unsigned long long)bt, (unsigned long long)rd, (unsigned long long)rt);
    if (direct == MQ_WS_DIRECT_ON)
        CHECK(res.direct_used == 1 || res.note[0], "%s: direct used or explained", what);
    if (direct == MQ_WS_DIRECT_OFF)
        CHECK(res.buffered_used == 1 && res.direct_used == 0, "%s: buffered", what);
    teardown(&f);
}

static void test_buffered_matches_pread(void)
{
    run_config(MQ_WS_DIRECT_OFF, 0, 1, 4096);
    run_config(MQ_WS_DIRECT_OFF, 2, 8, 16384);
    run_config(MQ_WS_DIRECT_OFF, 1, 16, 4 << 20);
}

static void test_direct_matches_pread(void)
{
    run_config(MQ_WS_DIRECT_ON, 0, 2, 4096);
    run_config(MQ_WS_DIRECT_ON, 2, 8, 65536);
    run_config(MQ_WS_DIRECT_AUTO, 1, 4, 1 << 20);
}

static void test_truncated_file(void)
{
    struct fixture f;
    setup(&f, 99);
    /* cut the file in the middle of read 30 */
    uint64_t cut = f.reads[30].offset + f.reads[30].bytes / 2;
    CHECK(truncate(f.path, (off_t)cut) == 0, "truncate");
    f.reads[30].what = "model.layers.3.mlp.up_proj.weight";
    for (int d = 0; d < 2; d++) {
        mq_ws_opts o;
        mq_ws_opts_default(&o);
        o.direct = d ? MQ_WS_DIRECT_ON : MQ_WS_DIRECT_OFF;
        o.read_bytes = 8192;
        o.queue_depth = 1; /* one piece at a time: the first failing read is read 30 */
        const char *paths[1] = { f.path };
        char err[512] = "";
        int r = mq_ws_run(paths, 1, f.reads, NR, &o, on_ready, &f, NULL, NULL, err, sizeof err);
        CHECK(r == -EIO, "truncated (direct=%d): r=%d", d, r);
        CHECK(strstr(err, f.path) && strstr(err, "end of file"), "message names file: %s", err);
        CHECK(strstr(err, "up_proj") != NULL, "message names the tensor: %s", err);
        char off[32];
        snprintf(off, sizeof off, "%llu", (unsigned long long)(f.reads[30].offset + f.reads[30].bytes));
        CHECK(strstr(err, off) != NULL, "message names the offset %s: %s", off, err);
    }
    teardown(&f);
}

static void test_missing_file_and_ready_error(void)
{
    struct fixture f;
    setup(&f, 5);
    const char *bad[1] = { "/nonexistent/mq/model.safetensors" };
    char err[512] = "";
    int r = mq_ws_run(bad, 1, f.reads, NR, NULL, on_ready, &f, NULL, NULL, err, sizeof err);
    CHECK(r == -ENOENT && strstr(err, bad[0]), "missing file: %d %s", r, err);

    const char *paths[1] = { f.path };
    f.fail_at = 17;
    f.reads[17].what = "model.layers.1.self_attn.q_proj.weight";
    for (int h = 0; h < 2; h++) {
        memset(f.ready_count, 0, sizeof f.ready_count);
        mq_ws_opts o;
        mq_ws_opts_default(&o);
        o.helpers = h;
        r = mq_ws_run(paths, 1, f.reads, NR, &o, on_ready, &f, NULL, NULL, err, sizeof err);
        CHECK(r == -EDOM, "ready error propagates (helpers=%d): %d", h, r);
        CHECK(strstr(err, "q_proj") && strstr(err, "refused read 17"), "message: %s", err);
    }
    mq_ws_read bad_idx = { .file = 3, .offset = 0, .bytes = 10, .dst = f.dst[0], .what = "x" };
    r = mq_ws_run(paths, 1, &bad_idx, 1, NULL, NULL, NULL, NULL, NULL, err, sizeof err);
    CHECK(r == -EINVAL, "bad file index refused: %d", r);
    teardown(&f);
}

/* A FIFO in place of a weights file would block the open forever: refused, naming it. */
static void test_fifo_refused(void)
{
    struct fixture f;
    setup(&f, 7);
    char fifo[64];
    snprintf(fifo, sizeof fifo, "/tmp/mq_ws_fifo_%d", (int)getpid());
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    alarm(20); /* the old code blocked in open(): fail instead of hanging the suite */
    const char *paths[1] = { fifo };
    char err[512] = "";
    int r = mq_ws_run(paths, 1, f.reads, NR, NULL, on_ready, &f, NULL, NULL, err, sizeof err);
    alarm(0);
    CHECK(r == -EINVAL && strstr(err, fifo) && strstr(err, "not a regular file (a FIFO)"), "fifo: %d %s", r, err);
    unlink(fifo);
    teardown(&f);
}

/* *o.cancel stops the stream (mqd sets it from the event loop on SIGTERM while loading):
 * set mid-stream by a ready callback on the caller's thread, or before the stream starts. */
static void test_cancel_stops_the_stream(void)
{
    for (int before = 0; before < 2; before++) {
        struct fixture f;
        setup(&f, 11);
        f.cancel_at = before ? -1 : 3;
        f.cancel = before;
        mq_ws_opts o;
        mq_ws_opts_default(&o);
        o.helpers = 0; /* ready() on this thread: the cancel is set before the next piece */
        o.queue_depth = 1;
        o.read_bytes = 4096; /* hundreds of pieces after read 3 */
        o.cancel = &f.cancel;
        const char *paths[1] = { f.path };
        char err[512] = "";
        int r = mq_ws_run(paths, 1, f.reads, NR, &o, on_ready, &f, NULL, NULL, err, sizeof err);
        int made_ready = 0;
        for (int i = 0; i < NR; i++)
            made_ready += f.ready_count[i];
        CHECK(r == -ECANCELED && strstr(err, "cancelled"), "cancel %s: %d %s", before ? "before" : "mid-stream", r,
              err);
        CHECK(made_ready <= (before ? 1 : 6), "cancel %s: %d reads made ready", before ? "before" : "mid-stream",
              made_ready);
        teardown(&f);
    }
}

/* Caps this process's address space at what it maps now plus `room` bytes. */
static int limit_address_space(size_t room)
{
    unsigned long pages = 0;
    FILE *st = fopen("/proc/self/statm", "r");
    if (!st)
        return -1;
    int n = fscanf(st, "%lu", &pages);
    fclose(st);
    if (n != 1)
        return -1;
    size_t vm = pages * (size_t)sysconf(_SC_PAGESIZE);
    struct rlimit rl = { vm + room, vm + room };
    return setrlimit(RLIMIT_AS, &rl);
}

/* An allocation that fails after the file table was allocated must close no descriptor
 * the stream did not open (the file table's unset entries once were 0: stdin, closed
 * n_files times). In a child under an address-space limit that lets the small tables
 * through and refuses the per-read table of 16M reads (128 MiB); the reads are zero
 * pages (valid: no bytes, no destination), so they cost no memory. */
static void test_alloc_failure_closes_nothing(void)
{
    const int n_reads = 16 << 20;
    size_t bytes = (size_t)n_reads * sizeof(mq_ws_read);
    mq_ws_read *reads = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(reads != MAP_FAILED, "mmap %zu bytes", bytes);
    if (reads == MAP_FAILED)
        return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int p[2];
        if (pipe(p) < 0 || dup2(p[0], 0) < 0)
            _exit(3);
        if (limit_address_space(64u << 20) < 0)
            _exit(3);
        const char *paths[3] = { "/dev/null", "/dev/null", "/dev/null" };
        char err[256] = "";
        int r = mq_ws_run(paths, 3, reads, n_reads, NULL, NULL, NULL, NULL, NULL, err, sizeof err);
        if (r != -ENOMEM)
            _exit(4);
        _exit(fcntl(0, F_GETFD) < 0 ? 5 : 0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 3, "child set-up failed (status %#x)", status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 4, "the per-read table's allocation did not fail as planned");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 5, "fd 0 was closed by the clean-up of a failed allocation");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    munmap(reads, bytes);
}

/* A quantize thread that cannot be started (no room for its 8 MiB stack) costs speed,
 * not the load: the reads are made ready on the caller's thread, and the result's note
 * says so (mqd logs the note with the load figures). */
static void test_helper_start_failure_noted(void)
{
    struct fixture f;
    setup(&f, 13);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (limit_address_space(2u << 20) < 0)
            _exit(3);
        mq_ws_opts o;
        mq_ws_opts_default(&o);
        o.direct = MQ_WS_DIRECT_OFF;
        o.helpers = 16; /* more than glibc's cache of stacks the earlier tests' threads left */
        mq_ws_result res;
        const char *paths[1] = { f.path };
        char err[256] = "";
        int r = mq_ws_run(paths, 1, f.reads, NR, &o, on_ready, &f, NULL, &res, err, sizeof err);
        if (r != 0) {
            fprintf(stderr, "    child: %d %s\n", r, err);
            _exit(4);
        }
        for (int i = 0; i < NR; i++)
            if (f.ready_count[i] != 1)
                _exit(5);
        if (!strstr(res.note, " of 16 quantize threads (pthread_create: ")) {
            fprintf(stderr, "    child: note \"%s\"\n", res.note);
            _exit(6);
        }
        _exit(0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child status %#x (3 set-up, 4 load failed, 5 reads not made ready, 6 no note)", status);
    teardown(&f);
}

int main(void)
{
    RUN(test_buffered_matches_pread);
    RUN(test_direct_matches_pread);
    RUN(test_truncated_file);
    RUN(test_missing_file_and_ready_error);
    RUN(test_fifo_refused);
    RUN(test_cancel_stops_the_stream);
    RUN(test_alloc_failure_closes_nothing);
    RUN(test_helper_start_failure_noted);
    return harness_done();
}
