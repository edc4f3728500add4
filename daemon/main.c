/* daemon/main.c — mqd: parse, set up, run, clean up. Everything lives in one context
 * object (daemon/mqd.h); this file only sequences it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/privs.h"
#include "daemon/sd.h"
#include "daemon/server.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: mqd [--config FILE] [--check-config] [--model DIR] [--flag value ...]\n"
                 "\n"
                 "Serves an LLM (NVFP4 prefill, BF16 decode) to libmq clients on a Unix socket.\n"
                 "Every field of the JSON config file is also a flag (flags win):\n");
    mqd_config_print_help(out);
    fprintf(out, "\n  --check-config               validate the configuration, print it, exit\n"
                 "Signals: SIGTERM/SIGINT drain then exit 0, SIGHUP reloads the config file.\n");
}

int main(int argc, char **argv)
{
    /* From the first instruction on, a stop request waits for the event loop's signalfd
     * (control.c) instead of killing mqd half set up (exit status 143). */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    mqd *d = calloc(1, sizeof *d);
    if (!d)
        return 1;
    char err[1024] = "";
    int check = 0, help = 0;
    int rc = mqd_config_parse_args(&d->cfg, d->config_path, sizeof d->config_path, argc, argv, &check, &help, err,
                                   sizeof err);
    if (help) {
        usage(stdout);
        free(d);
        return 0;
    }
    if (!rc)
        rc = mqd_config_validate(&d->cfg, err, sizeof err);
    if (rc) {
        fprintf(stderr, "mqd: configuration error: %s\n", err);
        free(d);
        return 2;
    }
    if (check) {
        /* what start-up would refuse on this machine, as this user (mqd_init runs the same) */
        rc = mqd_config_check_host(&d->cfg, err, sizeof err);
        if (!rc)
            rc = mqd_resolve_ids(d, err, sizeof err);
        if (rc) {
            fprintf(stderr, "mqd: configuration error: %s\n", err);
            free(d);
            return 2;
        }
        char *js = mqd_config_to_json(&d->cfg);
        printf("%s\n", js ? js : "{}");
        fprintf(stderr, "mqd: configuration OK%s%s\n", d->config_path[0] ? ": " : "", d->config_path);
        free(js);
        free(d);
        return 0;
    }
    d->argc = argc;
    d->argv = argv;
    rc = mqd_init(d, err, sizeof err);
    if (rc) {
        mqd_log(LOG_ERR, "start-up failed: %s", err);
        mqd_sd_notify(d, "STATUS=start-up failed: %s\nERRNO=%d", err, rc < 0 ? -rc : rc);
        mqd_fini(d);
        free(d);
        return 1;
    }
    rc = mqd_run(d);
    mqd_fini(d);
    free(d);
    return rc;
}
