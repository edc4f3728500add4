/* common/errmsg.h — the one way mq code reports an error to a caller's message buffer.
 *
 * Convention across common/, ipc/, engine/, daemon/ and mq-openai/: a function returns 0
 * or a negative errno and, when
 * given a buffer, writes one line naming the file, field or peer at fault. Thread-safe.
 */
#ifndef MQ_COMMON_ERRMSG_H
#define MQ_COMMON_ERRMSG_H

#include <stddef.h>

/* Size of a local message buffer that holds any of mq's one-line messages. */
#define MQ_ERRMSG_LEN 256

/* Formats into err[errlen] (if err && errlen) and returns rc, so callers can write
 * `return mq_errmsg(err, errlen, -EINVAL, "%s: bad field", path);`. */
int mq_errmsg(char *err, size_t errlen, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
