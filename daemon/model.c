/* daemon/model.c — placeholder until the loader lands (returns -ENOSYS). */
#include "model.h"

#include <errno.h>
#include <stdio.h>

int mq_model_load(const char *dir, const mq_model_opts *opts, mq_model **out, char *err)
{
    (void)opts;
    *out = NULL;
    snprintf(err, MQ_ERR_LEN, "%s: model loading not implemented yet", dir);
    return -ENOSYS;
}
void mq_model_free(mq_model *m) { (void)m; }
