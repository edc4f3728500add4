/* tests/unit/test_oai.c — mq-openai's request parser, output (tool-call) parser, SSE
 * writer and API-key file, checked against hand-written OpenAI bodies, Qwen3 outputs and
 * key files. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq-openai/config.h"
#include "mq-openai/keys.h"
#include "mq-openai/output.h"
#include "mq-openai/reply.h"
#include "mq-openai/request.h"
#include "tests/harness.h"

static int parse_chat(const char *body, oai_request *r, oai_error *e)
{
    memset(e, 0, sizeof *e);
    return oai_parse_chat(body, strlen(body), r, e);
}

static void test_chat_request_fields(void)
{
    oai_request r;
    oai_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"x\",\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\": 1}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"x\",\"content\":\"42\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
        "\"max_tokens\":7,\"max_completion_tokens\":9,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":-1,"
        "\"seed\":-1,\"stop\":[\"END\",\"\\n\\n\"],\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"chat_template_kwargs\":{\"enable_thinking\":false},\"mq\":{\"mode\":\"fp4\"},\"user\":\"conv-1\","
        "\"unknown_field\":{\"ignored\":1}}";
    int rc = parse_chat(body, &r, &e);
    CHECK(rc == 0, "parse: %s", e.message);
    if (rc)
        return;
    CHECK(r.max_tokens == 9, "max_completion_tokens wins: %u", r.max_tokens);
    CHECK(r.has_temperature && r.temperature == 0.5, "temperature");
    CHECK(r.top_k == 0, "top_k -1 is off");
    CHECK(r.has_seed && r.seed == UINT64_MAX, "seed -1 -> %llu", (unsigned long long)r.seed);
    CHECK(r.n_stop == 2 && !strcmp(r.stop[1], "\n\n"), "stop");
    CHECK(r.stream && r.include_usage, "stream options");
    CHECK(r.mode == OAI_MODE_FP4, "mode");
    CHECK(!strcmp(r.user, "conv-1") && !strcmp(r.model, "m"), "user/model");
    CHECK(r.has_tools && r.tool_choice == OAI_TOOLS_AUTO && !r.prefix[0], "tools auto");
    CHECK(r.enable_thinking == 0, "enable_thinking");
    const char *want =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"a\\nb\"},"
        "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":"
        "\"{\\\"a\\\": 1}\"}}]},{\"role\":\"tool\",\"content\":\"42\"}],\"tools\":[{\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"parameters\":{}}}],\"enable_thinking\":false}";
    CHECK(!strcmp(r.payload, want), "payload:\n%s\nwant:\n%s", r.payload, want);
    /* the server's think_history default applies when the request chooses none */
    CHECK(oai_request_default_think(&r, 1) == 0 && strstr(r.payload, "\"think_as_generated\":true"), "%s", r.payload);
    oai_request_free(&r);
}

static void test_chat_request_errors_name_the_field(void)
{
    static const struct {
        const char *body, *param;
    } cases[] = {
        { "not json", "" },
        { "[1]", "" },
        { "{}", "messages" },
        { "{\"messages\":[]}", "messages" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}", "logprobs" },
        { "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0].role" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"user\"}]}", "messages[1]" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
          "messages[0].content[0].type" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", "temperature" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":101}", "temperature" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", "top_p" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"\"]}", "stop[0]" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}", "tool_choice" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{"
          "\"name\":"
          "\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}",
          "tool_choice.function.name" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"x\"}]}", "tools[0]" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"mq\":{\"mode\":\"fp8\"}}", "mq.mode" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}",
          "response_format.type" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":{\"enable_thinking\":1}}",
          "chat_template_kwargs.enable_thinking" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        oai_request r;
        oai_error e;
        int rc = parse_chat(cases[i].body, &r, &e);
        CHECK(rc == -22 && e.status == 400, "case %zu (%s) accepted", i, cases[i].body);
        CHECK(!strcmp(e.param, cases[i].param), "case %zu: param \"%s\", want \"%s\" (%s)", i, e.param, cases[i].param,
              e.message);
        CHECK(e.message[0] && e.type && !strcmp(e.type, "invalid_request_error"), "case %zu: message", i);
        CHECK(r.payload == NULL, "case %zu: nothing kept", i);
    }
}

static void test_tool_choice_prefix(void)
{
    oai_request r;
    oai_error e;
    const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}]";
    char body[512];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"tool_choice\":{\"type\":\"function\","
             "\"function\":{\"name\":\"get_weather\"}}}",
             tools);
    CHECK(parse_chat(body, &r, &e) == 0, "%s", e.message);
    CHECK(r.tool_choice == OAI_TOOLS_NAMED &&
              !strcmp(r.prefix, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "),
          "prefix %s", r.prefix);
    CHECK(strstr(r.payload, "\"prefix\":\"<tool_call>\\n{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": \"}"),
          "payload %s", r.payload);
    oai_request_free(&r);
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"tool_choice\":\"none\"}",
             tools);
    CHECK(parse_chat(body, &r, &e) == 0, "%s", e.message);
    CHECK(!r.has_tools && !strstr(r.payload, "tools"), "none leaves the tools out: %s", r.payload);
    oai_request_free(&r);
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"tool_choice\":\"required\"}", tools);
    CHECK(parse_chat(body, &r, &e) == 0, "%s", e.message);
    CHECK(!strcmp(r.prefix, "<tool_call>\n"), "required prefix");
    oai_request_free(&r);
}

/* What mqd is sent for a body: every sampling field lands in its mq_params /
 * mq_request_opts slot, and a body that gives none gets OpenAI's defaults. */
static void test_request_params(void)
{
    oai_request r;
    oai_error e;
    mq_params p;
    mq_request_opts o;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":33,\"temperature\":0.25,"
                       "\"top_p\":0.5,\"top_k\":7,\"min_p\":0.125,\"seed\":99,\"presence_penalty\":1.5,"
                       "\"frequency_penalty\":-0.5,\"repetition_penalty\":1.25,\"stop\":[\"A\",\"BC\"],"
                       "\"chat_template_kwargs\":{\"enable_thinking\":true},\"mq\":{\"mode\":\"bf16\"}}";
    CHECK(parse_chat(body, &r, &e) == 0, "%s", e.message);
    oai_request_params(&r, 512, &p, &o);
    CHECK(p.max_tokens == 33 && p.temperature == 0.25f && p.top_p == 0.5f && p.top_k == 7 && p.min_p == 0.125f &&
              p.seed == 99 && p.repeat_penalty == 1.25f,
          "sampling: %u %g %g %u %g %llu %g", p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p,
          (unsigned long long)p.seed, p.repeat_penalty);
    CHECK(p.flags == (MQ_PARAM_NO_SPECIAL_TEXT | MQ_PARAM_ENABLE_THINKING), "flags %#x", p.flags);
    CHECK(o.precision == MQ_PRECISION_BF16 && o.flags == MQ_REQ_WHOLE_CONTEXT && o.presence_penalty == 1.5f &&
              o.frequency_penalty == -0.5f,
          "opts: %d %#x %g %g", o.precision, o.flags, o.presence_penalty, o.frequency_penalty);
    CHECK(o.n_stop == 2 && !strcmp(o.stop[0], "A") && !strcmp(o.stop[1], "BC"), "stop");
    oai_request_free(&r);
    /* nothing given: OpenAI's defaults (temperature 1, top_p 1), the server's max_tokens */
    CHECK(parse_chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r, &e) == 0, "%s", e.message);
    oai_request_params(&r, 512, &p, &o);
    CHECK(p.max_tokens == 512 && p.temperature == 1 && p.top_p == 1 && p.top_k == 0 && p.min_p == 0 &&
              p.repeat_penalty == 0 && p.seed == 0 && p.flags == MQ_PARAM_NO_SPECIAL_TEXT,
          "defaults: %u %g %g %u %g %#x", p.max_tokens, p.temperature, p.top_p, p.top_k, p.repeat_penalty, p.flags);
    CHECK(o.precision == MQ_PRECISION_DEFAULT && o.n_stop == 0 && o.presence_penalty == 0, "default opts");
    oai_request_free(&r);
    /* temperature 0 is greedy; repetition_penalty 1 is off */
    CHECK(parse_chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0,"
                     "\"repetition_penalty\":1}",
                     &r, &e) == 0,
          "%s", e.message);
    oai_request_params(&r, 512, &p, &o);
    CHECK((p.flags & MQ_PARAM_GREEDY) && p.repeat_penalty == 0, "greedy %#x, repeat %g", p.flags, p.repeat_penalty);
    oai_request_free(&r);
}

static void test_completion_request(void)
{
    oai_request r;
    oai_error e;
    const char *body = "{\"model\":\"x\",\"prompt\":\"<|im_start|>user\\nhi<|im_end|>\\n\",\"max_tokens\":16,"
                       "\"temperature\":0,\"top_p\":1,\"top_k\":20,\"seed\":3,\"stream\":false}";
    CHECK(oai_parse_completion(body, strlen(body), &r, &e) == 0, "%s", e.message);
    CHECK(r.kind == OAI_COMPLETION && !strcmp(r.payload, "<|im_start|>user\nhi<|im_end|>\n"), "prompt");
    CHECK(r.max_tokens == 16 && r.top_k == 20 && r.seed == 3, "fields");
    oai_request_free(&r);
    body = "{\"prompt\":[\"a\",\"b\"]}";
    CHECK(oai_parse_completion(body, strlen(body), &r, &e) == -22 && !strcmp(e.param, "prompt"), "two prompts");
    body = "{\"prompt\":\"a\",\"echo\":true}";
    CHECK(oai_parse_completion(body, strlen(body), &r, &e) == -22 && !strcmp(e.param, "echo"), "echo");
}

/* ---- output parser ------------------------------------------------------------------- */

/* Feeds `text` in pieces of `step` bytes and joins the events. */
static void run_output(const char *text, size_t step, int tools, oai_message *m, int *calls)
{
    oai_output o;
    oai_output_init(&o, tools, 1, 7);
    memset(m, 0, sizeof *m);
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i += step)
        oai_output_feed(&o, text + i, n - i < step ? n - i : step, oai_message_add, m);
    *calls = oai_output_finish(&o, oai_message_add, m);
    oai_output_free(&o);
}

static void test_output_tool_calls(void)
{
    const char *out = "<tool_call>\n{\"name\": \"run_tests\", \"arguments\": {\"directory\": \"/home/mia/auth\", "
                      "\"language\": \"rust\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_user\", \"arguments\": "
                      "{\"user_id\": 12}}\n</tool_call>";
    for (size_t step = 1; step <= strlen(out); step += step < 8 ? 1 : 17) {
        oai_message m;
        int calls;
        run_output(out, step, 1, &m, &calls);
        CHECK(calls == 2 && m.n_calls == 2, "step %zu: %d calls", step, calls);
        CHECK(m.content.len == 0, "step %zu: content \"%s\"", step, m.content.p ? m.content.p : "");
        if (m.n_calls == 2) {
            CHECK(!strcmp(m.calls[0].name, "run_tests") && !strcmp(m.calls[1].name, "get_user"), "names");
            CHECK(!strcmp(m.calls[0].args.p, "{\"directory\": \"/home/mia/auth\", \"language\": \"rust\"}"),
                  "step %zu: args %s", step, m.calls[0].args.p);
            CHECK(!strcmp(m.calls[1].args.p, "{\"user_id\": 12}"), "args 1 %s", m.calls[1].args.p);
            CHECK(!strcmp(m.calls[0].id, "call_7_0") && !strcmp(m.calls[1].id, "call_7_1"), "ids");
        }
        oai_message_free(&m);
    }
}

static void test_output_malformed_call_is_content(void)
{
    static const char *const bad[] = {
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
        "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
        "<tool_call>\n[1, 2]\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{x\"}\n</tool_call>",    /* a string that is not JSON */
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"\"}\n</tool_call>",      /* an empty string */
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"[1]\"}\n</tool_call>",   /* JSON, not an object */
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{} {}\"}\n</tool_call>", /* two values */
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}",              /* never closed */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        oai_message m;
        int calls;
        run_output(bad[i], 3, 1, &m, &calls);
        CHECK(calls == 0 && m.n_calls == 0, "case %zu: %d calls", i, calls);
        CHECK(m.content.p && !strcmp(m.content.p, bad[i]), "case %zu: content \"%s\"", i, m.content.p);
        oai_message_free(&m);
    }
}

static void test_output_reasoning_and_content(void)
{
    oai_message m;
    int calls;
    run_output("<think>\nfirst the weather\n</think>\n\nIt is sunny in Paris.", 2, 1, &m, &calls);
    CHECK(m.has_reasoning && !strcmp(m.reasoning.p, "\nfirst the weather\n"), "reasoning \"%s\"", m.reasoning.p);
    CHECK(!strcmp(m.content.p, "It is sunny in Paris."), "content \"%s\"", m.content.p);
    oai_message_free(&m);
    run_output("Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>", 1, 1, &m, &calls);
    CHECK(calls == 1 && !strcmp(m.content.p, "Sure.") && !strcmp(m.calls[0].args.p, "{}"), "content + call");
    oai_message_free(&m);
    run_output("a <tool_ b < c\n\n", 1, 1, &m, &calls);
    CHECK(!strcmp(m.content.p, "a <tool_ b < c\n\n"), "partial tags are content: \"%s\"", m.content.p);
    oai_message_free(&m);
    run_output("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", 5, 0, &m, &calls);
    CHECK(calls == 0 && !strcmp(m.content.p, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>"),
          "tools off: all content");
    oai_message_free(&m);
    /* arguments given as a JSON string are the string's value */
    run_output("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>", 4, 1, &m, &calls);
    CHECK(calls == 1 && !strcmp(m.calls[0].args.p, "{\"a\": 1}"), "string args %s", m.calls[0].args.p);
    oai_message_free(&m);
    /* white space around the object in the string is still one JSON object: a call */
    run_output("<tool_call>{\"name\": \"f\", \"arguments\": \" {\\\"a\\\": 1}\\n\"}</tool_call>", 4, 1, &m, &calls);
    CHECK(calls == 1 && !strcmp(m.calls[0].args.p, " {\"a\": 1}\n"), "padded string args \"%s\"", m.calls[0].args.p);
    oai_message_free(&m);
}

static void test_json_scanner(void)
{
    static const struct {
        const char *s;
        size_t len;
    } cases[] = {
        { "{}", 2 },        { "{\"a\": [1, -2.5e3, true, null, \"\\u00e9\"]} x", 40 },
        { "{\"a\" 1}", 0 }, { "[1,]", 0 },
        { "01", 1 },        { "\"\\x\"", 0 },
        { "{\"a\":1", 0 },  { "-", 0 },
        { "1.", 0 },        { "\"a\nb\"", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = oai_json_value_len(cases[i].s, strlen(cases[i].s));
        CHECK(n == cases[i].len, "\"%s\": %zu, want %zu", cases[i].s, n, cases[i].len);
    }
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    CHECK(oai_json_value_len(deep, 200) == 0, "nesting over the bound is refused");
}

/* ---- replies ------------------------------------------------------------------------- */

typedef struct {
    oai_reply_ctx c;
    cJSON *chunks;
} sse_sink;

static void to_sse(void *ctx, const oai_event *ev)
{
    sse_sink *s = ctx;
    char *line = oai_sse_event(&s->c, ev);
    CHECK(line && !strncmp(line, "data: ", 6) && strstr(line, "\n\n") == line + strlen(line) - 2, "sse framing");
    cJSON_AddItemToArray(s->chunks, cJSON_Parse(line + 6));
    free(line);
}

/* The streamed deltas, joined as a client joins them, equal the non-streaming message. */
static void test_stream_joins_to_message(void)
{
    const char *out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
                      "\"unit\": \"celsius\", \"days\": [1, 2]}}\n</tool_call>";
    sse_sink s = { .c = { .kind = OAI_CHAT, .id = "chatcmpl-1", .model = "m", .created = 1 },
                   .chunks = cJSON_CreateArray() };
    oai_output o;
    oai_output_init(&o, 1, 1, 7);
    for (size_t i = 0; i < strlen(out); i += 2)
        oai_output_feed(&o, out + i, strlen(out) - i < 2 ? 1 : 2, to_sse, &s);
    oai_output_finish(&o, to_sse, &s);
    oai_output_free(&o);
    /* join */
    char content[256] = "", name[64] = "", args[256] = "", id[64] = "";
    int frags = 0;
    cJSON *ch;
    cJSON_ArrayForEach(ch, s.chunks)
    {
        cJSON *d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ch, "choices"), 0), "delta");
        cJSON *c = cJSON_GetObjectItem(d, "content");
        if (cJSON_IsString(c))
            strcat(content, c->valuestring);
        cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(d, "tool_calls"), 0);
        if (t) {
            cJSON *f = cJSON_GetObjectItem(t, "function");
            if (cJSON_GetObjectItem(t, "id"))
                strcpy(id, cJSON_GetObjectItem(t, "id")->valuestring);
            if (cJSON_GetObjectItem(f, "name"))
                strcat(name, cJSON_GetObjectItem(f, "name")->valuestring);
            strcat(args, cJSON_GetObjectItem(f, "arguments")->valuestring);
            frags++;
        }
    }
    oai_message m;
    int calls;
    run_output(out, strlen(out), 1, &m, &calls);
    CHECK(calls == 1 && !strcmp(content, m.content.p) && !strcmp(name, m.calls[0].name) &&
              !strcmp(args, m.calls[0].args.p) && !strcmp(id, m.calls[0].id),
          "joined: \"%s\" %s %s", content, name, args);
    CHECK(frags == 4, "the name, then argument fragments one per member: %d chunks", frags);
    oai_usage u = { 10, 5, 4, -1, -1 };
    char *body = oai_reply_chat(&s.c, &m, "tool_calls", &u);
    cJSON *j = cJSON_Parse(body);
    cJSON *msg = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
    cJSON *tc = cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "tool_calls"), 0);
    CHECK(tc && !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(tc, "function"), "arguments")->valuestring, args),
          "body %s", body);
    cJSON *usage = cJSON_GetObjectItem(j, "usage");
    CHECK(cJSON_GetObjectItem(usage, "total_tokens")->valueint == 15 &&
              cJSON_GetObjectItem(cJSON_GetObjectItem(usage, "prompt_tokens_details"), "cached_tokens")->valueint == 4,
          "usage");
    cJSON_Delete(j);
    free(body);
    oai_message_free(&m);
    cJSON_Delete(s.chunks);
    oai_error e = { .status = 400, .type = "invalid_request_error", .param = "n", .message = "n: only 1" };
    char *er = oai_reply_error(&e);
    CHECK(
        !strcmp(
            er,
            "{\"error\":{\"message\":\"n: only 1\",\"type\":\"invalid_request_error\",\"param\":\"n\",\"code\":400}}"),
        "%s", er);
    free(er);
    char *fin = oai_sse_finish(&s.c, "stop");
    CHECK(strstr(fin, "\"finish_reason\":\"stop\"") && strstr(fin, "\"delta\":{}"), "%s", fin);
    free(fin);
}

/* The API-key file: a key per line, a tenant name beside it optional; a key without one is
 * a tenant of its own, named from a hash that does not give the key away. */
static void test_api_keys_and_tenants(void)
{
    oai_keys *k;
    char err[256] = "";
    const char *text = "# keys\n"
                       "sk-alpha-1111   team-a\n"
                       "\n"
                       "  sk-beta-2222\tteam-a  \r\n"
                       "sk-gamma-3333\n"
                       "sk-delta-4444\n";
    int rc = oai_keys_parse(&k, text, "keys", err, sizeof err);
    CHECK(rc == 0 && oai_keys_count(k) == 4, "parse: %d %s", rc, err);
    if (rc)
        return;
    CHECK(oai_keys_find(k, "sk-alpha-1111", 13) == 0 && oai_keys_find(k, "sk-beta-2222", 12) == 1 &&
              oai_keys_find(k, "sk-delta-4444", 13) == 3,
          "find");
    CHECK(oai_keys_find(k, "sk-alpha-111", 12) == -1 && oai_keys_find(k, "sk-alpha-11112", 14) == -1 &&
              oai_keys_find(k, "team-a", 6) == -1 && oai_keys_find(k, "", 0) == -1,
          "a prefix, a longer key, a tenant name or nothing is no key");
    CHECK(!strcmp(oai_keys_tenant(k, 0), "team-a") && !strcmp(oai_keys_tenant(k, 1), "team-a"), "named tenants");
    const char *g = oai_keys_tenant(k, 2), *d = oai_keys_tenant(k, 3);
    CHECK(!strncmp(g, "key-", 4) && strlen(g) == 20 && strcmp(g, d) && !strstr(g, "gamma") && !strstr(g, "3333"),
          "default tenants: %s, %s", g, d);
    CHECK(strspn(g, OAI_TENANT_CHARS "/") == strlen(g), "default tenant characters: %s", g);
    char again[32];
    snprintf(again, sizeof again, "%s", g);
    oai_keys_free(k);
    CHECK(oai_keys_parse(&k, "sk-gamma-3333\n", "keys", err, sizeof err) == 0 && !strcmp(oai_keys_tenant(k, 0), again),
          "the default tenant of a key is stable");
    oai_keys_free(k);
    static const char *const bad[][2] = {
        { "sk-1 team a\n", ":1: more than a key" },
        { "# nothing\n\n", "holds no key" },
        { "sk-1\nsk-2 t\xc3\xa9\n", ":2: tenant name" },
        { "sk-1 tenant:with:colons\n", ":1: tenant name" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = oai_keys_parse(&k, bad[i][0], "keys", err, sizeof err);
        CHECK(rc == -EINVAL && strstr(err, bad[i][1]) && !strstr(err, "sk-1"), "bad file %zu: %d %s", i, rc, err);
    }
    char longkey[400];
    memset(longkey, 'k', 300);
    longkey[300] = 0;
    rc = oai_keys_parse(&k, longkey, "keys", err, sizeof err);
    CHECK(rc == -EINVAL && strstr(err, "longer than 256"), "a 300-byte key: %s", err);
}

/* Numeric settings in the config file: integers in bounds are taken; a fraction, a value
 * out of bounds and one beyond any integer type (its conversion would be undefined) are
 * refused, naming the setting. */
static void test_config_numbers(void)
{
    static const struct {
        const char *json, *msg; /* msg NULL: accepted */
    } cases[] = {
        { "{\"max_requests\": 7}", NULL },
        { "{\"max_requests\": 2.5}", "max_requests: must be an integer" },
        { "{\"max_requests\": 0}", "max_requests" },
        { "{\"max_requests\": 6.6e121}", "max_requests" },
        { "{\"max_requests\": -1e300}", "max_requests" },
        { "{\"max_requests\": 1e999}", "max_requests" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        oai_config c;
        oai_config_default(&c);
        char err[256] = "";
        const int rc = oai_config_parse_json(&c, cases[i].json, strlen(cases[i].json), "cfg", err, sizeof err);
        if (!cases[i].msg)
            CHECK(rc == 0 && c.max_requests == 7, "case %zu: rc %d, max_requests %u (%s)", i, rc, c.max_requests, err);
        else
            CHECK(rc < 0 && strstr(err, cases[i].msg), "case %zu: rc %d, \"%s\"", i, rc, err);
    }
}

int main(void)
{
    RUN(test_chat_request_fields);
    RUN(test_chat_request_errors_name_the_field);
    RUN(test_tool_choice_prefix);
    RUN(test_request_params);
    RUN(test_completion_request);
    RUN(test_output_tool_calls);
    RUN(test_output_malformed_call_is_content);
    RUN(test_output_reasoning_and_content);
    RUN(test_json_scanner);
    RUN(test_stream_joins_to_message);
    RUN(test_api_keys_and_tenants);
    RUN(test_config_numbers);
    return harness_done();
}
