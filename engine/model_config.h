/* engine/model_config.h — what a Hugging Face config.json says about the model.
 *
 * Owns: the parsed, validated hyper-parameters of one decoder-only model. Supported
 * architectures: Qwen3ForCausalLM (q/k RMSNorm per head), Qwen2ForCausalLM (q/k/v bias),
 * LlamaForCausalLM. Anything else (another architecture, a sliding window, rope scaling
 * other than "default", a hidden activation other than silu, a quantization other than
 * compressed-tensors nvfp4-pack-quantized) is refused with a message naming the field.
 *
 * Called by model.c at load, by tools and tests. Pure function of the text: no I/O except
 * mq_config_load(), no global state; thread-safe.
 */
#ifndef MQ_MODEL_CONFIG_H
#define MQ_MODEL_CONFIG_H

#include <stddef.h>

#include "common/errmsg.h"

#define MQ_MAX_EOS 8

typedef enum { MQ_ARCH_QWEN3, MQ_ARCH_QWEN2, MQ_ARCH_LLAMA } mq_arch;

typedef struct mq_config {
    mq_arch arch;
    int n_layers;       /* num_hidden_layers */
    int hidden;         /* hidden_size */
    int n_head;         /* num_attention_heads */
    int n_kv;           /* num_key_value_heads (defaults to n_head) */
    int head_dim;       /* head_dim, or hidden / n_head */
    int inter;          /* intermediate_size (SwiGLU width) */
    int vocab;          /* vocab_size */
    int max_pos;        /* max_position_embeddings */
    float rms_eps;      /* rms_norm_eps */
    double rope_theta;  /* rope_theta / rope_parameters.rope_theta / rope_scaling.rope_theta */
    int tie_embeddings; /* tie_word_embeddings (default false, as in transformers) */
    int qk_norm;        /* Qwen3: q_norm/k_norm RMSNorm over each head */
    int qkv_bias;       /* Qwen2 (or attention_bias: true): biases on q, k, v */
    int bos_id;         /* -1 when absent */
    int eos_ids[MQ_MAX_EOS];
    int n_eos;
    /* quantization_config: compressed-tensors, format nvfp4-pack-quantized */
    int nvfp4_ckpt;    /* 1 = linears stored as NVFP4 (weight_packed, ...) */
    char **fp4_ignore; /* module names left unquantized (usually "lm_head") */
    int n_fp4_ignore;
} mq_config;

/* Parses config.json text (len bytes, need not be NUL-terminated). 0 or -EINVAL with a
 * message naming the field in err (MQ_ERRMSG_LEN bytes). mq_config_free() releases it. */
int mq_config_parse(mq_config *cfg, const char *json, size_t len, char *err, size_t errlen);
/* Reads and parses <dir>/config.json. */
int mq_config_load(mq_config *cfg, const char *dir, char *err, size_t errlen);
void mq_config_free(mq_config *cfg);
const char *mq_arch_name(mq_arch a);

#endif
