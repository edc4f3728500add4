/* common/file.h — opening the files a model is loaded from.
 *
 * A model folder is data an operator points mqd at; whatever sits there must not hang
 * the loader. A FIFO, a character device or a socket in place of config.json,
 * tokenizer.json or model.safetensors would block the open or the read forever (or
 * never end), so only regular files are accepted, with a message naming the file.
 * Who calls it: every reader of model files (engine/). Thread-safe, no state.
 */
#ifndef MQ_COMMON_FILE_H
#define MQ_COMMON_FILE_H

#include <stddef.h>
#include <stdio.h>

/* open(path, O_RDONLY | O_CLOEXEC | flags) that refuses anything but a regular file. The
 * open itself cannot block (O_NONBLOCK, cleared once the file is known to be regular:
 * io_uring would otherwise answer EAGAIN instead of reading). The fd, or -errno with
 * "path: reason" in err (-EINVAL: "not a regular file (a FIFO)" and the like). */
int mq_open_regular(const char *path, int flags, char *err, size_t errlen);

/* The same as a stdio stream for reading ("rb"); NULL with errno set and err filled. */
FILE *mq_fopen_regular(const char *path, char *err, size_t errlen);

#endif
