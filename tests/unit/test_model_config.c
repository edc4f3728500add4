/* config.json parsing: the three architectures, rope_theta in its three places, eos lists,
 * NVFP4 quantization_config, and refusals that name the field. */
#include "tests/harness.h"
#include "engine/model_config.h"
#include "common/errmsg.h"

#include <errno.h>

static int parse(mq_config *c, const char *js, char *err, size_t errlen)
{
    err[0] = 0;
    return mq_config_parse(c, js, strlen(js), err, errlen);
}

#define BASE                                                                      \
    "\"num_hidden_layers\": 2, \"hidden_size\": 64, \"num_attention_heads\": 4, " \
    "\"num_key_value_heads\": 2, \"intermediate_size\": 172, \"vocab_size\": 512"

static void test_shared_models(void)
{
    char err[MQ_ERRMSG_LEN];
    mq_config c;
    CHECK(mq_config_load(&c, shared_path("models/mq-qwen3-80m"), err, sizeof err) == 0, "%s", err);
    CHECK(c.arch == MQ_ARCH_QWEN3 && c.n_layers == 12 && c.hidden == 384 && c.n_head == 4 && c.n_kv == 2 &&
              c.head_dim == 128 && c.inter == 1024 && c.vocab == 151936 && c.qk_norm && !c.qkv_bias &&
              c.tie_embeddings && c.rope_theta == 1e6 && c.rms_eps == 1e-6f && c.max_pos == 32768 &&
              c.bos_id == 151643 && c.n_eos == 1 && c.eos_ids[0] == 151645 && !c.nvfp4_ckpt,
          "qwen3-80m fields");
    mq_config_free(&c);
    CHECK(mq_config_load(&c, shared_path("models/stories260K"), err, sizeof err) == 0, "%s", err);
    CHECK(c.arch == MQ_ARCH_LLAMA && c.head_dim == 8 && c.inter == 172 && c.rope_theta == 10000.0 && !c.qk_norm &&
              c.tie_embeddings && c.rms_eps == 1e-5f,
          "stories fields");
    mq_config_free(&c);
}

static void test_variants(void)
{
    char err[MQ_ERRMSG_LEN];
    mq_config c;
    CHECK(parse(&c,
                "{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"rope_theta\": 500000.0, "
                "\"eos_token_id\": [1, 2, 3]}",
                err, sizeof err) == 0,
          "%s", err);
    CHECK(c.arch == MQ_ARCH_QWEN2 && c.qkv_bias && !c.qk_norm && c.rope_theta == 500000.0 && c.n_eos == 3 &&
              c.eos_ids[2] == 3 && c.head_dim == 16 && !c.tie_embeddings,
          "qwen2: top-level theta, eos list, head_dim");
    mq_config_free(&c);
    CHECK(parse(&c,
                "{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"head_dim\": 32, "
                "\"rope_scaling\": {\"rope_type\": \"default\", \"rope_theta\": 1234.0}}",
                err, sizeof err) == 0,
          "%s", err);
    CHECK(c.head_dim == 32 && c.rope_theta == 1234.0, "rope_scaling theta, explicit head_dim");
    mq_config_free(&c);
    CHECK(parse(&c,
                "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"quantization_config\": {"
                "\"quant_method\": \"compressed-tensors\", \"format\": \"nvfp4-pack-quantized\", \"config_groups\": "
                "{\"group_0\": {\"weights\": {\"num_bits\": 4, \"type\": \"float\", \"strategy\": \"tensor_group\", "
                "\"group_size\": 16}}}, \"ignore\": [\"lm_head\"]}}",
                err, sizeof err) == 0,
          "%s", err);
    CHECK(c.nvfp4_ckpt && c.n_fp4_ignore == 1 && !strcmp(c.fp4_ignore[0], "lm_head"), "nvfp4 quantization_config");
    mq_config_free(&c);
}

static void test_refusals(void)
{
    static const struct {
        const char *js, *field;
    } bad[] = {
        { "{", "not a JSON object" },
        { "{\"architectures\": [\"GPT2LMHeadModel\"], " BASE "}", "architectures" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], \"hidden_size\": 64}", "num_hidden_layers" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], \"num_hidden_layers\": 2, \"hidden_size\": 64, "
          "\"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"intermediate_size\": 8, \"vocab_size\": 8}",
          "num_key_value_heads" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"hidden_act\": \"gelu\"}", "hidden_act" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE
          ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}}",
          "rope_type" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"rope_theta\": \"big\"}", "rope_theta" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"use_sliding_window\": true}", "use_sliding_window" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], \"num_hidden_layers\": 2, \"hidden_size\": 64, "
          "\"num_attention_heads\": 4, \"intermediate_size\": 8, \"vocab_size\": -3}",
          "vocab_size" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"head_dim\": 7}", "head_dim" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"eos_token_id\": 99999}", "eos_token_id" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE
          ", \"quantization_config\": {\"quant_method\": \"modelopt\"}}",
          "quant_method" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"quantization_config\": {\"quant_method\": "
          "\"compressed-tensors\", \"format\": \"nvfp4-pack-quantized\", \"config_groups\": {\"g\": {\"weights\": "
          "{\"num_bits\": 8, \"type\": \"int\"}}}}}",
          "config_groups" },
        { "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"tie_word_embeddings\": 1}", "tie_word_embeddings" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[MQ_ERRMSG_LEN];
        mq_config c;
        int rc = parse(&c, bad[i].js, err, sizeof err);
        CHECK(rc == -EINVAL && strstr(err, bad[i].field), "case %zu: rc %d, error \"%s\" should name %s", i, rc, err,
              bad[i].field);
    }
}

int main(void)
{
    RUN(test_shared_models);
    RUN(test_variants);
    RUN(test_refusals);
    return harness_done();
}
