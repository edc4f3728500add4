/* engine/model_config.c — config.json → mq_config, refusing what the engine cannot run. */
#include "engine/model_config.h"
#include "common/errmsg.h"
#include "common/file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                               \
    do {                                        \
        mq_errmsg(err, errlen, 0, __VA_ARGS__); \
        rc = -EINVAL;                           \
        goto out;                               \
    } while (0)

const char *mq_arch_name(mq_arch a)
{
    switch (a) {
    case MQ_ARCH_QWEN3: return "Qwen3ForCausalLM";
    case MQ_ARCH_QWEN2: return "Qwen2ForCausalLM";
    case MQ_ARCH_LLAMA: return "LlamaForCausalLM";
    }
    return "?";
}

/* An integer field: 0 and *v set, 1 when absent (v untouched), -1 when malformed. */
static int get_int(const cJSON *o, const char *name, int *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!j || cJSON_IsNull(j))
        return 1;
    if (!cJSON_IsNumber(j))
        return -1;
    double d = j->valuedouble;
    if (d != floor(d) || d < -2147483648.0 || d > 2147483647.0)
        return -1;
    *v = (int)d;
    return 0;
}

static int get_num(const cJSON *o, const char *name, double *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!j || cJSON_IsNull(j))
        return 1;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return -1;
    *v = j->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, int *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!j || cJSON_IsNull(j))
        return 1;
    if (!cJSON_IsBool(j))
        return -1;
    *v = cJSON_IsTrue(j);
    return 0;
}

static const char *get_str(const cJSON *o, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* A positive size field that must be present (or defaulted by the caller). */
static int need_pos(const cJSON *o, const char *name, int *v, int lo, int hi, char *err, size_t errlen)
{
    int r = get_int(o, name, v);
    if (r == 1) {
        return mq_errmsg(err, errlen, -EINVAL, "config.json: missing field \"%s\"", name);
    }
    if (r < 0 || *v < lo || *v > hi) {
        return mq_errmsg(err, errlen, -EINVAL, "config.json: field \"%s\" must be an integer in [%d, %d]", name, lo,
                         hi);
    }
    return 0;
}

/* rope: the default rope type only; theta from rope_parameters / rope_scaling / top level. */
static int parse_rope(mq_config *c, const cJSON *root, char *err, size_t errlen)
{
    static const char *objs[] = { "rope_parameters", "rope_scaling" };
    int found = get_num(root, "rope_theta", &c->rope_theta) == 0;
    if (cJSON_GetObjectItemCaseSensitive(root, "rope_theta") && !found) {
        return mq_errmsg(err, errlen, -EINVAL, "config.json: field \"rope_theta\" must be a number");
    }
    for (int i = 0; i < 2; i++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, objs[i]);
        if (!o || cJSON_IsNull(o))
            continue;
        if (!cJSON_IsObject(o)) {
            return mq_errmsg(err, errlen, -EINVAL, "config.json: field \"%s\" must be an object or null", objs[i]);
        }
        const char *type = get_str(o, "rope_type");
        if (!type)
            type = get_str(o, "type");
        if (type && strcmp(type, "default") != 0) {
            return mq_errmsg(err, errlen, -EINVAL,
                             "config.json: %s.rope_type \"%s\" is not supported (only \"default\")", objs[i], type);
        }
        double t;
        int r = get_num(o, "rope_theta", &t);
        if (r < 0) {
            return mq_errmsg(err, errlen, -EINVAL, "config.json: field \"%s.rope_theta\" must be a number", objs[i]);
        }
        if (r == 0) {
            c->rope_theta = t;
            found = 1;
        }
    }
    if (!found)
        c->rope_theta = 10000.0; /* transformers' default for Llama */
    if (!(c->rope_theta > 1.0)) {
        return mq_errmsg(err, errlen, -EINVAL, "config.json: rope_theta %g must be > 1", c->rope_theta);
    }
    return 0;
}

/* compressed-tensors, nvfp4-pack-quantized, every group W4 float tensor_group 16. */
static int parse_quant(mq_config *c, const cJSON *q, char *err, size_t errlen)
{
    const char *m = get_str(q, "quant_method");
    if (!m || strcmp(m, "compressed-tensors") != 0) {
        return mq_errmsg(err, errlen, -EINVAL,
                         "config.json: quantization_config.quant_method \"%s\" is not supported "
                         "(only compressed-tensors nvfp4-pack-quantized)",
                         m ? m : "(missing)");
    }
    const char *f = get_str(q, "format");
    if (!f || strcmp(f, "nvfp4-pack-quantized") != 0) {
        return mq_errmsg(err, errlen, -EINVAL,
                         "config.json: quantization_config.format \"%s\" is not supported "
                         "(only nvfp4-pack-quantized)",
                         f ? f : "(missing)");
    }
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(q, "config_groups");
    if (groups && !cJSON_IsObject(groups)) {
        return mq_errmsg(err, errlen, -EINVAL, "config.json: quantization_config.config_groups must be an object");
    }
    const cJSON *g;
    cJSON_ArrayForEach(g, groups)
    {
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weights");
        int bits = 0, gs = 0;
        const char *type = get_str(w, "type"), *strat = get_str(w, "strategy");
        if (!cJSON_IsObject(w) || get_int(w, "num_bits", &bits) || bits != 4 || !type || strcmp(type, "float") ||
            !strat || strcmp(strat, "tensor_group") || get_int(w, "group_size", &gs) || gs != 16) {
            return mq_errmsg(err, errlen, -EINVAL,
                             "config.json: quantization_config.config_groups.%s.weights must be "
                             "num_bits 4, type float, strategy tensor_group, group_size 16",
                             g->string);
        }
    }
    const cJSON *ign = cJSON_GetObjectItemCaseSensitive(q, "ignore");
    if (ign && !cJSON_IsArray(ign)) {
        return mq_errmsg(err, errlen, -EINVAL, "config.json: quantization_config.ignore must be a list");
    }
    int n = cJSON_GetArraySize(ign);
    c->fp4_ignore = calloc((size_t)n + 1, sizeof *c->fp4_ignore);
    if (!c->fp4_ignore)
        return -ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, ign)
    {
        if (!cJSON_IsString(it)) {
            return mq_errmsg(err, errlen, -EINVAL, "config.json: quantization_config.ignore holds a non-string");
        }
        if (!(c->fp4_ignore[c->n_fp4_ignore] = strdup(it->valuestring)))
            return -ENOMEM;
        c->n_fp4_ignore++;
    }
    c->nvfp4_ckpt = 1;
    return 0;
}

int mq_config_parse(mq_config *c, const char *json, size_t len, char *err, size_t errlen)
{
    int rc = 0;
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root))
        FAIL("config.json: not a JSON object");

    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_GetArrayItem(archs, 0);
    if (!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) != 1 || !cJSON_IsString(a0))
        FAIL("config.json: field \"architectures\" must be a list of one name");
    if (!strcmp(a0->valuestring, "Qwen3ForCausalLM"))
        c->arch = MQ_ARCH_QWEN3;
    else if (!strcmp(a0->valuestring, "Qwen2ForCausalLM"))
        c->arch = MQ_ARCH_QWEN2;
    else if (!strcmp(a0->valuestring, "LlamaForCausalLM"))
        c->arch = MQ_ARCH_LLAMA;
    else
        FAIL("config.json: architectures \"%s\" is not supported (Qwen3/Qwen2/LlamaForCausalLM)", a0->valuestring);

    if ((rc = need_pos(root, "num_hidden_layers", &c->n_layers, 1, 1024, err, errlen)))
        goto out;
    if ((rc = need_pos(root, "hidden_size", &c->hidden, 1, 1 << 16, err, errlen)))
        goto out;
    if ((rc = need_pos(root, "num_attention_heads", &c->n_head, 1, 1024, err, errlen)))
        goto out;
    c->n_kv = c->n_head;
    if (get_int(root, "num_key_value_heads", &c->n_kv) < 0 || c->n_kv < 1 || c->n_kv > c->n_head || c->n_head % c->n_kv)
        FAIL("config.json: field \"num_key_value_heads\" must divide num_attention_heads (%d)", c->n_head);
    int r = get_int(root, "head_dim", &c->head_dim);
    if (r == 1) {
        if (c->hidden % c->n_head)
            FAIL("config.json: hidden_size %d not divisible by num_attention_heads %d "
                 "and no \"head_dim\"",
                 c->hidden, c->n_head);
        c->head_dim = c->hidden / c->n_head;
    } else if (r < 0)
        FAIL("config.json: field \"head_dim\" must be an integer");
    /* the attention kernel holds a head in registers/stack: at most 256, and even for RoPE */
    if (c->head_dim < 2 || c->head_dim > 256 || c->head_dim % 2)
        FAIL("config.json: head_dim %d not supported (even, 2..256)", c->head_dim);
    if ((rc = need_pos(root, "intermediate_size", &c->inter, 1, 1 << 20, err, errlen)))
        goto out;
    if ((rc = need_pos(root, "vocab_size", &c->vocab, 1, 1 << 24, err, errlen)))
        goto out;
    c->max_pos = 2048;
    if (get_int(root, "max_position_embeddings", &c->max_pos) < 0 || c->max_pos < 1)
        FAIL("config.json: field \"max_position_embeddings\" must be a positive integer");

    double eps = 1e-6;
    if (get_num(root, "rms_norm_eps", &eps) < 0 || !(eps > 0 && eps < 1) || !((float)eps > 0))
        FAIL("config.json: field \"rms_norm_eps\" must be a number in (0, 1) (and not 0 in FP32)");
    c->rms_eps = (float)eps;
    if ((rc = parse_rope(c, root, err, errlen)))
        goto out;

    if (get_bool(root, "tie_word_embeddings", &c->tie_embeddings) < 0)
        FAIL("config.json: field \"tie_word_embeddings\" must be true or false");
    c->qk_norm = c->arch == MQ_ARCH_QWEN3;
    c->qkv_bias = c->arch == MQ_ARCH_QWEN2;
    if (c->arch != MQ_ARCH_QWEN2 && get_bool(root, "attention_bias", &c->qkv_bias) < 0)
        FAIL("config.json: field \"attention_bias\" must be true or false");
    int mlp_bias = 0;
    if (get_bool(root, "mlp_bias", &mlp_bias) < 0 || mlp_bias)
        FAIL("config.json: field \"mlp_bias\" = true is not supported");

    const char *act = get_str(root, "hidden_act");
    if (cJSON_GetObjectItemCaseSensitive(root, "hidden_act") && (!act || strcmp(act, "silu")))
        FAIL("config.json: field \"hidden_act\" must be \"silu\"");
    int sw = 0;
    if (get_bool(root, "use_sliding_window", &sw) < 0 || sw)
        FAIL("config.json: field \"use_sliding_window\" = true is not supported");
    const cJSON *lt;
    cJSON_ArrayForEach(
        lt, cJSON_GetObjectItemCaseSensitive(root, "layer_types")) if (!cJSON_IsString(lt) ||
                                                                       strcmp(lt->valuestring, "full_attention"))
        FAIL("config.json: field \"layer_types\" holds a layer type other than \"full_attention\"");

    c->bos_id = -1;
    if (get_int(root, "bos_token_id", &c->bos_id) < 0)
        FAIL("config.json: field \"bos_token_id\" must be an integer");
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsNumber(eos)) {
        c->eos_ids[c->n_eos++] = eos->valueint;
    } else if (cJSON_IsArray(eos)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, eos)
        {
            if (!cJSON_IsNumber(e) || c->n_eos == MQ_MAX_EOS)
                FAIL("config.json: field \"eos_token_id\" must be an integer or a list of at most %d", MQ_MAX_EOS);
            c->eos_ids[c->n_eos++] = e->valueint;
        }
    } else if (eos && !cJSON_IsNull(eos)) {
        FAIL("config.json: field \"eos_token_id\" must be an integer or a list");
    }
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab)
            FAIL("config.json: eos_token_id %d outside the vocabulary", c->eos_ids[i]);
    if (c->bos_id >= c->vocab)
        FAIL("config.json: bos_token_id %d outside the vocabulary", c->bos_id);

    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (q && !cJSON_IsNull(q)) {
        if (!cJSON_IsObject(q))
            FAIL("config.json: field \"quantization_config\" must be an object");
        if ((rc = parse_quant(c, q, err, errlen)))
            goto out;
    }
out:
    cJSON_Delete(root);
    if (rc)
        mq_config_free(c);
    return rc;
}

int mq_config_load(mq_config *cfg, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    memset(cfg, 0, sizeof *cfg);
    FILE *f = mq_fopen_regular(path, err, errlen);
    if (!f)
        return -errno;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            if (cap > (16u << 20)) {
                free(buf);
                fclose(f);
                return mq_errmsg(err, errlen, -EFBIG, "%s: larger than 16 MiB", path);
            }
            char *nb = realloc(buf, cap = cap ? cap * 2 : 4096);
            if (!nb) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        if (!r)
            break;
        len += r;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return mq_errmsg(err, errlen, -EIO, "%s: read error", path);
    }
    int rc = mq_config_parse(cfg, buf, len, err, errlen);
    free(buf);
    return rc;
}

void mq_config_free(mq_config *c)
{
    for (int i = 0; i < c->n_fp4_ignore; i++)
        free(c->fp4_ignore[i]);
    free(c->fp4_ignore);
    c->fp4_ignore = NULL;
    c->n_fp4_ignore = 0;
}
