/* daemon/engine.c — placeholder until the forward pass lands. */
#include "engine.h"

#include <stdint.h>

size_t mq_kv_block_bytes(const mq_config *cfg, int block_tokens)
{
    return (size_t)cfg->n_layers * 2 * (size_t)block_tokens * (size_t)cfg->n_kv * (size_t)cfg->head_dim * sizeof(uint16_t);
}
