/* mq-openai/main.c — the OpenAI-compatible HTTP front of mqd: parse, set up, run, clean up.
 *
 * Socket activation: with LISTEN_FDS=1 (systemd's mq-openai.socket) the inherited socket
 * is served and `listen` is ignored. SIGTERM/SIGINT stop it: libmicrohttpd stops accepting,
 * running requests are cancelled in mqd as their connections close. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "mq-openai/config.h"
#include "mq-openai/http.h"

int main(int argc, char **argv)
{
    oai_config cfg;
    int check, help;
    char err[512];
    if (oai_config_parse(&cfg, argc, argv, &check, &help, err, sizeof err)) {
        fprintf(stderr, "mq-openai: %s\n", err);
        return 2;
    }
    if (help) {
        oai_config_usage(stdout);
        return 0;
    }
    if (oai_config_validate(&cfg, err, sizeof err)) {
        fprintf(stderr, "mq-openai: %s\n", err);
        return 2;
    }
    if (check) {
        printf("mq-openai: configuration OK (listen %s, mqd %s, %u requests, keys %s)\n", cfg.listen,
               cfg.mqd_socket[0] ? cfg.mqd_socket : "(default socket)", cfg.max_requests,
               cfg.api_keys_file[0] ? cfg.api_keys_file : "off");
        return 0;
    }
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is seen by the write, not a signal */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread started later inherits it */
    int fd = -1;
    int n = sd_listen_fds(1);
    if (n > 1) {
        fprintf(stderr, "mq-openai: systemd passed %d sockets; one is expected\n", n);
        return 1;
    }
    if (n == 1)
        fd = SD_LISTEN_FDS_START;
    oai_server *s;
    if (oai_server_start(&s, &cfg, fd, err, sizeof err)) {
        fprintf(stderr, "mq-openai: %s\n", err);
        return 1;
    }
    fprintf(stderr, "mq-openai: listening on %s, mqd at %s\n", fd >= 0 ? "the socket from systemd" : cfg.listen,
            cfg.mqd_socket[0] ? cfg.mqd_socket : "the default socket");
    sd_notify(0, "READY=1\nSTATUS=serving");
    int sig = 0;
    sigwait(&set, &sig);
    sd_notify(0, "STOPPING=1");
    fprintf(stderr, "mq-openai: signal %d, stopping\n", sig);
    oai_server_stop(s);
    return 0;
}
