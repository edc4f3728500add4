/* tools/cli.h — the usage-error message mq and mqctl print for a bad option.
 *
 * Both tools parse with getopt_long (opterr = 0, so the message is ours) and stop with
 * exit status 2 on the first bad option; this names it and says what is wrong with it.
 * Header-only; called from each tool's main thread.
 */
#ifndef MQ_TOOLS_CLI_H
#define MQ_TOOLS_CLI_H

#include <getopt.h>
#include <stdio.h>
#include <string.h>

/* After getopt_long returned '?' or ':': one line on stderr naming argv's offending word. */
static inline void cli_bad_option(const char *prog, const struct option *lo, char *const argv[])
{
    const char *word = argv[optind - 1];
    const struct option *known = NULL;
    for (const struct option *o = lo; optopt && !strncmp(word, "--", 2) && o->name; o++)
        if (o->val == optopt)
            known = o;
    if (!known)
        fprintf(stderr, "%s: unknown option %s\n", prog, word);
    else if (known->has_arg == required_argument && !strchr(word, '='))
        fprintf(stderr, "%s: a value is missing for the option --%s\n", prog, known->name);
    else
        fprintf(stderr, "%s: the option --%s takes no value (%s)\n", prog, known->name, word);
}

#endif
