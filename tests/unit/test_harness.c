/* tests/unit/test_harness.c — the harness's own rules (tests/harness.h) and tests/run.sh's
 * totals, checked on programs that are known to pass, fail and skip.
 *
 * The scenarios are this same binary started under another name (argv[0] "test_sc_<name>",
 * by exec or through a symlink): each is a tiny test program with a known outcome. The
 * real tests run a scenario and compare its "@@ passed failed skipped" line, exit status
 * and messages with what the rules say; then they lay out symlinks as a fake build
 * directory, run `sh tests/run.sh` on it and compare its closing line and exit status.
 * Expected figures are written out by hand from the rules, not computed by the harness.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/harness.h"

/* ---- the scenarios ------------------------------------------------------------------ */

static void t_pass(void)
{
    CHECK(1 + 1 == 2, "arithmetic");
}

static void t_fail(void)
{
    CHECK(1 + 1 == 3, "a deliberate failure");
}

static void t_skip(void)
{
    SKIP("no frobnicator on this machine");
    CHECK(0, "ran past SKIP");
}

static void t_fail_then_skip(void)
{
    CHECK(0, "a failure before the skip");
    SKIP("skipped after failing");
}

static int scenario(const char *name)
{
    if (!strcmp(name, "pass")) {
        RUN(t_pass);
        RUN(t_pass);
    } else if (!strcmp(name, "fail_in_test")) {
        RUN(t_fail);
        RUN(t_pass);
    } else if (!strcmp(name, "setup_check")) {
        CHECK(0, "a set-up failure in main");
        RUN(t_pass);
    } else if (!strcmp(name, "cleanup_check")) {
        RUN(t_pass);
        CHECK(0, "a clean-up failure in main");
    } else if (!strcmp(name, "between_check")) {
        RUN(t_pass);
        CHECK(0, "a failure between two tests");
        CHECK(0, "and a second one");
        RUN(t_pass);
    } else if (!strcmp(name, "read_missing")) {
        free(harness_read_file("/nonexistent/mq-harness-test", NULL));
        RUN(t_pass);
    } else if (!strcmp(name, "skip_in_test")) {
        RUN(t_skip);
        RUN(t_pass);
    } else if (!strcmp(name, "fail_then_skip")) {
        RUN(t_fail_then_skip);
    } else if (!strcmp(name, "skip_rest")) {
        SKIP("needs root");
        RUN(t_fail);
        RUN(t_fail);
    } else if (!strcmp(name, "skip_program")) {
        SKIP("needs a GPU");
    } else if (!strcmp(name, "no_test")) {
    } else if (!strcmp(name, "raw_exit77")) { /* not the harness: run.sh's own rules */
        printf("cannot run here\n");
        return 77;
    } else if (!strcmp(name, "raw_crash")) {
        fflush(stdout);
        abort();
    } else if (!strcmp(name, "raw_exit_after_line")) { /* e.g. a leak report at exit */
        printf("@@ 3 0 0\n");
        return 1;
    } else if (!strcmp(name, "raw_zero")) {
        printf("@@ 0 0 0\n");
        return 0;
    } else if (!strcmp(name, "raw_two_fields")) {
        printf("@@ 2 0\n");
        return 0;
    } else {
        fprintf(stderr, "unknown scenario %s\n", name);
        return 2;
    }
    return harness_done();
}

/* ---- running them ------------------------------------------------------------------- */

static char self[PATH_MAX], tmp[64];

typedef struct outcome {
    int status; /* exit code, or 128 + signal */
    char out[8192];
    char line[64]; /* the "@@ ..." line, without the newline */
} outcome;

/* Runs path with argv[0] = arg0 (and env MQ_TEST_FILTER unset), stdout+stderr captured. */
static int run(const char *path, char *const argv[], outcome *o)
{
    char log[128];
    snprintf(log, sizeof log, "%s/out.log", tmp);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        unsetenv("MQ_TEST_FILTER");
        execv(path, argv);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    o->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    FILE *f = fopen(log, "r");
    size_t n = f ? fread(o->out, 1, sizeof o->out - 1, f) : 0;
    o->out[n] = 0;
    if (f)
        fclose(f);
    o->line[0] = 0;
    const char *at = strstr(o->out, "@@ ");
    if (at)
        snprintf(o->line, sizeof o->line, "%.*s", (int)strcspn(at, "\n"), at);
    return 0;
}

static int run_scenario(const char *name, outcome *o)
{
    char arg0[128];
    snprintf(arg0, sizeof arg0, "test_sc_%s", name);
    char *argv[] = { arg0, NULL };
    return run(self, argv, o);
}

/* One scenario: its result line and exit status must be exactly these. */
static void expect(const char *name, const char *line, int status, const char *says)
{
    outcome o;
    CHECK(run_scenario(name, &o) == 0, "%s: could not run", name);
    CHECK(!strcmp(o.line, line), "%s: result \"%s\", expected \"%s\"\n%s", name, o.line, line, o.out);
    CHECK(o.status == status, "%s: exit %d, expected %d\n%s", name, o.status, status, o.out);
    CHECK(!says || strstr(o.out, says), "%s: output lacks \"%s\"\n%s", name, says, o.out);
}

static void test_passing_tests_count(void)
{
    expect("pass", "@@ 2 0 0", 0, "ok   t_pass");
    expect("fail_in_test", "@@ 1 1 0", 1, "FAIL t_fail (1 checks failed)");
}

static void test_check_outside_run_counts(void)
{
    expect("setup_check", "@@ 1 1 0", 1, "FAIL set-up before t_pass");
    expect("cleanup_check", "@@ 1 1 0", 1, "FAIL after t_pass, outside any test");
    /* two failed CHECKs between two tests: one failure for that stretch, not two, not none */
    expect("between_check", "@@ 2 1 0", 1, "(2 checks failed)");
    expect("read_missing", "@@ 1 1 0", 1, "cannot open /nonexistent/mq-harness-test");
}

static void test_skip_in_test(void)
{
    /* SKIP leaves the test (its next CHECK would fail it) and gives the reason */
    expect("skip_in_test", "@@ 1 0 1", 0, "skip t_skip: no frobnicator on this machine");
    /* a test that failed before it skipped stays failed */
    expect("fail_then_skip", "@@ 0 1 0", 1, "then skipped: skipped after failing");
}

static void test_skip_outside_run(void)
{
    /* every later test skipped without running (t_fail would fail), exit 77 */
    expect("skip_rest", "@@ 0 0 2", HARNESS_EXIT_SKIP, "skip t_fail: needs root");
    expect("skip_program", "@@ 0 0 1", HARNESS_EXIT_SKIP, "needs a GPU");
    /* nothing ran and nothing was skipped: a failure, not a silent "0 0" */
    expect("no_test", "@@ 0 1 0", 1, "no test ran");
}

/* A fake build directory <tmp>/<name>/tests/unit/test_sc_<scenario> -> this binary. */
static int fake_build(const char *name, const char *const *scenarios, char *dir, size_t len)
{
    snprintf(dir, len, "%s/%s", tmp, name);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/tests", dir);
    if ((mkdir(dir, 0755) && errno != EEXIST) || (mkdir(p, 0755) && errno != EEXIST))
        return -1;
    snprintf(p, sizeof p, "%s/tests/unit", dir);
    if (mkdir(p, 0755) && errno != EEXIST)
        return -1;
    for (int i = 0; scenarios[i]; i++) {
        snprintf(p, sizeof p, "%s/tests/unit/test_sc_%s", dir, scenarios[i]);
        if (symlink(self, p))
            return -1;
    }
    return 0;
}

/* tests/run.sh of this source tree: from the working directory (make runs the suite from
 * the top), else next to the build directory holding this binary. */
static const char *run_sh(void)
{
    static char p[PATH_MAX + 32];
    if (access("tests/run.sh", R_OK) == 0)
        return "tests/run.sh";
    char d[PATH_MAX];
    snprintf(d, sizeof d, "%s", self);
    for (int k = 0; k < 4; k++) { /* <top>/<build>/tests/unit/test_harness */
        char *s = strrchr(d, '/');
        if (s)
            *s = 0;
    }
    snprintf(p, sizeof p, "%s/tests/run.sh", d);
    return p;
}

static const char *last_line(const char *out, char *buf, size_t len)
{
    size_t n = strlen(out);
    while (n && out[n - 1] == '\n')
        n--;
    size_t b = n;
    while (b && out[b - 1] != '\n')
        b--;
    snprintf(buf, len, "%.*s", (int)(n - b), out + b);
    return buf;
}

static void test_run_sh_totals(void)
{
    static const char *const mixed[] = {
        "pass",       "fail_in_test", "setup_check",         "skip_in_test", "skip_rest", "skip_program",
        "raw_exit77", "raw_crash",    "raw_exit_after_line", "raw_zero",     NULL
    };
    char dir[PATH_MAX], last[256];
    CHECK(fake_build("mixed", mixed, dir, sizeof dir) == 0, "fake build dir %s: %s", dir, strerror(errno));
    char *argv[] = { "sh", (char *)run_sh(), dir, NULL };
    outcome o;
    CHECK(run("/bin/sh", argv, &o) == 0, "run.sh did not run");
    /* passed 2+1+1+1+3, failed fail_in_test, setup_check, raw_crash, raw_exit_after_line
     * (exit 1 after its line), raw_zero (no test); skipped 1 + 2 + 1 + raw_exit77 */
    CHECK(!strcmp(last_line(o.out, last, sizeof last), "8 passed, 5 failed, 5 skipped"), "closing line \"%s\"\n%s",
          last, o.out);
    CHECK(o.status != 0, "run.sh exited 0 with failures");
    CHECK(strstr(o.out, "failing programs:") && strstr(o.out, "test_sc_raw_crash") &&
              strstr(o.out, "test_sc_raw_zero") && !strstr(strstr(o.out, "failing programs:"), "test_sc_skip"),
          "failing programs listed wrongly:\n%s", o.out);

    static const char *const clean[] = { "pass", "raw_two_fields", NULL };
    CHECK(fake_build("clean", clean, dir, sizeof dir) == 0, "fake build dir %s", dir);
    char *argv2[] = { "sh", (char *)run_sh(), dir, NULL };
    CHECK(run("/bin/sh", argv2, &o) == 0, "run.sh did not run");
    /* no skips: the closing line is exactly "N passed, N failed" */
    CHECK(!strcmp(last_line(o.out, last, sizeof last), "4 passed, 0 failed"), "closing line \"%s\"\n%s", last, o.out);
    CHECK(o.status == 0, "run.sh exited %d without failures", o.status);
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (!strncmp(base, "test_sc_", 8))
        return scenario(base + 8);

    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    snprintf(tmp, sizeof tmp, "/tmp/mq-harness-XXXXXX");
    CHECK(n > 0 && mkdtemp(tmp) != NULL, "set-up: /proc/self/exe or mkdtemp");
    RUN(test_passing_tests_count);
    RUN(test_check_outside_run_counts);
    RUN(test_skip_in_test);
    RUN(test_skip_outside_run);
    RUN(test_run_sh_totals);
    CHECK(harness_rm_rf(tmp) == 0, "clean-up of %s", tmp);
    return harness_done();
}
