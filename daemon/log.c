/* daemon/log.c — see log.h. */
#define _GNU_SOURCE
#include "daemon/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"

#define LOG_LINE_MAX 1024

static pthread_once_t journal_once = PTHREAD_ONCE_INIT;
static int journal; /* set once, read-only afterwards */

/* systemd's rule (sd_journal_stream_fd, JOURNAL_STREAM in systemd.exec(5)): stderr is the
 * journal when its device and inode are the ones JOURNAL_STREAM names. */
static void detect_journal(void)
{
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0)
        return;
    const char *js = getenv("JOURNAL_STREAM");
    if (js) {
        unsigned long long dev, ino;
        journal = sscanf(js, "%llu:%llu", &dev, &ino) == 2 && dev == (unsigned long long)st.st_dev &&
                  ino == (unsigned long long)st.st_ino;
        return;
    }
    journal = getenv("INVOCATION_ID") != NULL && S_ISSOCK(st.st_mode);
}

static const char *level_name(int prio)
{
    switch (prio) {
    case LOG_EMERG:
    case LOG_ALERT:
    case LOG_CRIT:
    case LOG_ERR: return "error";
    case LOG_WARNING: return "warning";
    case LOG_NOTICE: return "notice";
    case LOG_INFO: return "info";
    default: return "debug";
    }
}

static void log_line(int prio, const char *prefix, const char *fmt, va_list ap)
{
    pthread_once(&journal_once, detect_journal);
    char line[LOG_LINE_MAX];
    int n = journal
                ? snprintf(line, sizeof line, "<%d>%s", prio & LOG_PRIMASK, prefix)
                : snprintf(line, sizeof line, "mqd[%d]: %s: %s", (int)getpid(), level_name(prio & LOG_PRIMASK), prefix);
    if (n < 0 || (size_t)n >= sizeof line - 2)
        n = 0;
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2; /* cut, but still one line */
    /* one event, one line: text a client chose (a name, a path) cannot forge another */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = ' ';
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w; /* nowhere to report a failing log */
}

void mqd_log(int prio, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line(prio, "", fmt, ap);
    va_end(ap);
}

void mqd_log_limited(mqd_ratelimit *rl, int prio, const char *fmt, ...)
{
    uint64_t now = mq_now_ms();
    if (!rl->window_ms || now - rl->window_ms >= MQD_LOG_INTERVAL_MS) {
        rl->window_ms = now;
        rl->lines = 0;
    }
    if (rl->lines >= MQD_LOG_BURST) {
        rl->dropped++;
        return;
    }
    rl->lines++;
    char prefix[96] = "";
    if (rl->dropped)
        snprintf(prefix, sizeof prefix, "(%ld similar line(s) dropped before this one) ", rl->dropped);
    rl->dropped = 0;
    va_list ap;
    va_start(ap, fmt);
    log_line(prio, prefix, fmt, ap);
    va_end(ap);
}
