/* tests/tools/fsutil.h — the file helpers the checkpoint tools share (mq_synth,
 * mq_nvfp4_export): each returns 0 or a negative errno. Header-only. */
#ifndef MQ_TESTS_TOOLS_FSUTIL_H
#define MQ_TESTS_TOOLS_FSUTIL_H

#include <errno.h>
#include <stdio.h>

/* Writes text as the whole content of path. */
static inline int fsutil_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -errno;
    int bad = fputs(text, f) < 0;
    if (fclose(f) != 0 || bad)
        return -EIO;
    return 0;
}

/* Copies the file from into to (created or truncated). */
static inline int fsutil_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in)
        return -errno;
    FILE *out = fopen(to, "wb");
    if (!out) {
        int e = -errno;
        fclose(in);
        return e;
    }
    char buf[1 << 16];
    size_t r;
    int rc = 0;
    while ((r = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, r, out) != r) {
            rc = -EIO;
            break;
        }
    if (ferror(in))
        rc = -EIO;
    fclose(in);
    if (fclose(out) != 0 && !rc)
        rc = -EIO;
    return rc;
}

#endif
