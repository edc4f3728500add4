/* tests/unit/test_config.c — mqd's configuration: JSON fields, flags over the file,
 * validation messages that name the field, and the JSON round trip used by
 * `mqctl config` / `mqd --check-config`. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/server.h"
#include "tests/harness.h"
#include "daemon/config.h"

static int parse(mqd_config *c, const char *js, char *err, size_t errlen)
{
    mqd_config_defaults(c);
    return mqd_config_parse_json(c, js, strlen(js), "t.json", err, errlen);
}

static void test_full_file(void)
{
    mqd_config c;
    char err[512] = "";
    const char *js = "{\"model_dir\": \"/m\", \"mode\": \"bf16\", \"prefill_threads\": 2,"
                     "\"decode_cpus\": \"0-1,3\", \"chunk_tokens\": 128, \"kv_tokens\": 8192,"
                     "\"kv_block_tokens\": 32, \"on_full\": \"wait\", \"hugepages\": \"off\","
                     "\"allowed_users\": [\"root\", \"nobody\"], \"admin_group\": \"adm\","
                     "\"watchdog\": false, \"drain_timeout_ms\": 1500,"
                     "\"client_socket\": \"/tmp/x/c.sock\", \"admin_socket\": \"/tmp/x/a.sock\"}";
    CHECK(parse(&c, js, err, sizeof err) == 0, "parse: %s", err);
    CHECK(!strcmp(c.model_dir, "/m") && c.mode == MQ_PREC_MODE_BF16 && c.prefill_threads == 2, "fields");
    CHECK(c.on_full == MQ_CFG_ON_FULL_WAIT && c.hugepages == MQ_CFG_HUGE_OFF && !c.watchdog, "enums/bools");
    CHECK(!strcmp(c.allowed_users[1], "nobody") && !c.allowed_users[2][0], "list");
    CHECK(mqd_config_validate(&c, err, 512) == 0, "validate: %s", err);
    /* JSON round trip */
    char *out = mqd_config_to_json(&c);
    mqd_config back;
    mqd_config_defaults(&back);
    CHECK(out && mqd_config_parse_json(&back, out, strlen(out), "out", err, 512) == 0, "reparse: %s", err);
    CHECK(memcmp(&back, &c, sizeof c) == 0, "round trip differs");
    free(out);
}

static void test_errors_name_the_field(void)
{
    static const struct {
        const char *js, *want;
    } cases[] = {
        { "{\"modle_dir\": \"/m\"}", "unknown field \"modle_dir\"" },
        { "{\"mode\": \"fp8\"}", "mode: \"fp8\" is not one of mixed, bf16, fp4" },
        { "{\"chunk_tokens\": 8}", "chunk_tokens: 8 is not an integer in [16, 65536]" },
        { "{\"chunk_tokens\": 100.5}", "chunk_tokens" },
        { "{\"chunk_tokens\": \"100\"}", "chunk_tokens: must be a number" },
        { "{\"watchdog\": 1}", "watchdog: must be true or false" },
        { "{\"allowed_users\": \"root\"}", "allowed_users: must be an array" },
        { "{\"allowed_groups\": [\"\"]}", "allowed_groups[0]" },
        { "[1, 2]", "top level must be an object" },
        { "{\"mode\": ", "not valid JSON" },
        { "{\"kv-tokens\": 4096}", "unknown field" },
        /* found by fuzz_config: out of long long's range, converting was undefined */
        { "{\"chunk_tokens\": 1e309}", "chunk_tokens: inf is not an integer" },
        { "{\"chunk_tokens\": -1e300}", "chunk_tokens" },
        { "{\"chunk_tokens\": 4294967552}", "chunk_tokens" },
        /* found by fuzz_config: the last of two values won, silently */
        { "{\"user\": \"root\", \"kv_tokens\": 4096, \"user\": \"mq\"}", "user: given twice" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mqd_config c;
        char err[512] = "";
        int rc = parse(&c, cases[i].js, err, sizeof err);
        CHECK(rc == -EINVAL && strstr(err, cases[i].want) && !strncmp(err, "t.json: ", 8),
              "case %zu: rc %d, err \"%s\", wanted \"%s\"", i, rc, err, cases[i].want);
    }
    /* cross-field checks */
    mqd_config c;
    char err[512];
    mqd_config_defaults(&c);
    CHECK(mqd_config_validate(&c, err, sizeof err) == -EINVAL && strstr(err, "model_dir"), "missing model_dir: %s",
          err);
    strcpy(c.model_dir, "/m");
    c.kv_tokens = 1000;
    c.kv_block_tokens = 16;
    CHECK(mqd_config_validate(&c, err, sizeof err) == -EINVAL && strstr(err, "kv_tokens"), "kv multiple: %s", err);
    c.kv_tokens = 1024;
    strcpy(c.decode_cpus, "0-x");
    CHECK(mqd_config_validate(&c, err, sizeof err) == -EINVAL && strstr(err, "decode_cpus"), "cpu list: %s", err);
    strcpy(c.decode_cpus, "");
    c.prompt_ring_kib = 48;
    CHECK(mqd_config_validate(&c, err, sizeof err) == -EINVAL && strstr(err, "prompt_ring_kib"), "ring pow2: %s", err);
    c.prompt_ring_kib = 64;
    strcpy(c.admin_socket, c.client_socket);
    CHECK(mqd_config_validate(&c, err, sizeof err) == -EINVAL && strstr(err, "admin_socket"), "same sockets: %s", err);
}

static void test_flags_override_file(void)
{
    char path[] = "/tmp/mq-test-config-XXXXXX";
    int fd = mkstemp(path);
    const char *js = "{\"model_dir\": \"/from/file\", \"kv_tokens\": 4096, \"mode\": \"fp4\"}";
    CHECK(fd >= 0 && write(fd, js, strlen(js)) == (ssize_t)strlen(js), "write");
    close(fd);
    char *argv[] = { "mqd",         "--kv-tokens",    "8192", "--config", path, "--model=/from/flag", "--allowed-users",
                     "root,nobody", "--check-config", NULL };
    mqd_config c;
    char cpath[4096], err[512] = "";
    int check = 0, help = 0;
    int rc = mqd_config_parse_args(&c, cpath, sizeof cpath, 9, argv, &check, &help, err, sizeof err);
    CHECK(rc == 0, "parse: %s", err);
    CHECK(!strcmp(cpath, path), "config path");
    CHECK(c.kv_tokens == 8192 && !strcmp(c.model_dir, "/from/flag"), "flags win");
    CHECK(c.mode == MQ_PREC_MODE_FP4, "file value kept");
    CHECK(!strcmp(c.allowed_users[0], "root") && !strcmp(c.allowed_users[1], "nobody"), "list");
    CHECK(check == 1 && help == 0, "check flag");
    char *bad[] = { "mqd", "--kv-tokens", "lots", NULL };
    rc = mqd_config_parse_args(&c, cpath, sizeof cpath, 3, bad, NULL, NULL, err, sizeof err);
    CHECK(rc == -EINVAL && strstr(err, "--kv_tokens"), "bad number: %s", err);
    char *unk[] = { "mqd", "--frobnicate", "1", NULL };
    rc = mqd_config_parse_args(&c, cpath, sizeof cpath, 3, unk, NULL, NULL, err, sizeof err);
    CHECK(rc == -ENOENT && strstr(err, "frobnicate"), "unknown flag: %s", err);
    char *missing[] = { "mqd", "--config", "/nonexistent/mq.json", NULL };
    rc = mqd_config_parse_args(&c, cpath, sizeof cpath, 3, missing, NULL, NULL, err, sizeof err);
    CHECK(rc == -ENOENT && strstr(err, "/nonexistent/mq.json"), "missing file: %s", err);
    unlink(path);
}

/* The load options mqd runs (and bench_e2e measures): mqd's defaults are the weight
 * stream's and the arena's own, and the io fields reach the stream (a read size rounded
 * up to whole 4 KiB pages). */
static void test_load_opts(void)
{
    mqd_config c;
    mqd_config_defaults(&c);
    mq_arena_opts ao, ao_def;
    mq_ws_opts wo, wo_def;
    mqd_load_opts_from_config(&c, &ao, &wo);
    mq_arena_opts_default(&ao_def);
    mq_ws_opts_default(&wo_def);
    CHECK(wo.queue_depth == wo_def.queue_depth && wo.read_bytes == wo_def.read_bytes && wo.helpers == wo_def.helpers,
          "defaults: depth %d vs %d, read %zu vs %zu, helpers %d vs %d", wo.queue_depth, wo_def.queue_depth,
          wo.read_bytes, wo_def.read_bytes, wo.helpers, wo_def.helpers);
    CHECK(ao.chunk_bytes == ao_def.chunk_bytes && ao.allow_hugetlb && ao.allow_thp, "arena: chunk %zu vs %zu",
          ao.chunk_bytes, ao_def.chunk_bytes);
    char err[256] = "";
    CHECK(mqd_config_set(&c, "io-depth", "3", err, sizeof err) == 0 &&
              mqd_config_set(&c, "io-read-kib", "5", err, sizeof err) == 0 &&
              mqd_config_set(&c, "hugepages", "off", err, sizeof err) == 0,
          "set: %s", err);
    mqd_load_opts_from_config(&c, &ao, &wo);
    CHECK(wo.queue_depth == 3 && wo.read_bytes == 8192, "io fields: depth %d, read %zu", wo.queue_depth, wo.read_bytes);
    CHECK(!ao.allow_hugetlb && !ao.allow_thp, "hugepages off reaches the arena");
}

/* fp4_pack: auto by default, on/off in the file and as a flag, any other word refused. */
static void test_fp4_pack(void)
{
    mqd_config c;
    char err[512] = "";
    mqd_config_defaults(&c);
    CHECK(c.fp4_pack == MQ_FP4_PACK_AUTO, "default %u", c.fp4_pack);
    CHECK(parse(&c, "{\"fp4_pack\": \"off\"}", err, sizeof err) == 0 && c.fp4_pack == MQ_FP4_PACK_OFF, "off: %s", err);
    CHECK(mqd_config_set(&c, "fp4-pack", "on", err, sizeof err) == 0 && c.fp4_pack == MQ_FP4_PACK_ON, "flag: %s", err);
    CHECK(c.fp4_table == MQ_FP4_PACK_AUTO, "table default %u", c.fp4_table);
    CHECK(parse(&c, "{\"fp4_table\": \"on\"}", err, sizeof err) == 0 && c.fp4_table == MQ_FP4_PACK_ON, "table on: %s",
          err);
    CHECK(mqd_config_set(&c, "fp4-table", "off", err, sizeof err) == 0 && c.fp4_table == MQ_FP4_PACK_OFF,
          "table flag: %s", err);
    CHECK(parse(&c, "{\"fp4_table\": \"maybe\"}", err, sizeof err) == -EINVAL && strstr(err, "fp4_table"),
          "table refused: %s", err);
    CHECK(parse(&c, "{\"fp4_pack\": \"sometimes\"}", err, sizeof err) == -EINVAL && strstr(err, "fp4_pack"),
          "bad word: %s", err);
}

/* hugepages_reserve takes a page count or "auto" (weights + KV), in the file and as a flag,
 * and prints back as it was given; other number fields do not take "auto". */
static void test_hugepages_reserve_auto(void)
{
    mqd_config c;
    char err[512] = "";
    CHECK(parse(&c, "{\"model_dir\": \"/m\", \"hugepages_reserve\": \"auto\"}", err, sizeof err) == 0, "parse: %s",
          err);
    CHECK(c.hugepages_reserve == MQ_CFG_U32_AUTO, "auto: %u", c.hugepages_reserve);
    CHECK(mqd_config_validate(&c, err, 512) == 0, "validate: %s", err);
    char *out = mqd_config_to_json(&c);
    CHECK(out && strstr(out, "\"hugepages_reserve\":\t\"auto\""), "printed: %s", out);
    free(out);
    CHECK(parse(&c, "{\"hugepages_reserve\": 300}", err, sizeof err) == 0 && c.hugepages_reserve == 300, "number: %s",
          err);
    CHECK(parse(&c, "{\"hugepages_reserve\": \"lots\"}", err, sizeof err) == -EINVAL &&
              strstr(err, "hugepages_reserve: must be a number or auto"),
          "bad word: %s", err);
    CHECK(parse(&c, "{\"kv_tokens\": \"auto\"}", err, sizeof err) == -EINVAL &&
              strstr(err, "kv_tokens: must be a number"),
          "auto elsewhere: %s", err);
    mqd_config_defaults(&c);
    CHECK(mqd_config_set(&c, "hugepages-reserve", "auto", err, sizeof err) == 0 &&
              c.hugepages_reserve == MQ_CFG_U32_AUTO,
          "flag: %s", err);
    CHECK(mqd_config_set(&c, "hugepages-reserve", "12", err, sizeof err) == 0 && c.hugepages_reserve == 12,
          "flag number: %s", err);
}

int main(void)
{
    RUN(test_full_file);
    RUN(test_errors_name_the_field);
    RUN(test_flags_override_file);
    RUN(test_hugepages_reserve_auto);
    RUN(test_fp4_pack);
    RUN(test_load_opts);
    return harness_done();
}
