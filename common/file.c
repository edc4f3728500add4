/* common/file.c — see file.h. */
#define _GNU_SOURCE
#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/errmsg.h"

static const char *kind_of(mode_t m)
{
    return S_ISDIR(m)    ? "a directory"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a file";
}

int mq_open_regular(const char *path, int flags, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | flags);
    if (fd < 0)
        return mq_errmsg(err, errlen, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return mq_errmsg(err, errlen, -e, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mq_errmsg(err, errlen, -EINVAL, "%s: not a regular file (%s)", path, kind_of(st.st_mode));
    }
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return mq_errmsg(err, errlen, -e, "%s: %s", path, strerror(e));
    }
    return fd;
}

FILE *mq_fopen_regular(const char *path, char *err, size_t errlen)
{
    int fd = mq_open_regular(path, 0, err, errlen);
    if (fd < 0) {
        errno = -fd;
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        mq_errmsg(err, errlen, -e, "%s: %s", path, strerror(e));
        errno = e;
    }
    return f;
}
