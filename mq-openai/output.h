/* mq-openai/output.h — the model's generated text -> OpenAI message parts, incrementally.
 *
 * Owns: the parser of Qwen3 / Hermes-style output:
 *     [<think> reasoning </think>] content [<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>]...
 *   - `<think>…</think>` at the start of the reply becomes reasoning_content;
 *   - each `<tool_call>…</tool_call>` whose body is a JSON object with a string "name" and
 *     an object (or string) "arguments" becomes a tool call; `arguments` is the exact text
 *     the model wrote (so the next turn renders the same tokens), and the call id is
 *     "call_<req>_<index>";
 *   - a tool call whose body is not such JSON (or that the reply leaves unclosed) is
 *     returned as content, tags included: malformed output never fails a request;
 *   - everything else is content. When the reply has tool calls, whitespace-only content
 *     between and around them is dropped (the reply's content is then null).
 * Text is fed as it arrives (any split, even inside a tag or a UTF-8 character); events
 * come out in order through a callback, holding back only what may still turn out to be a
 * tag. A streaming client sends each event as a delta; a non-streaming one joins the same
 * events (oai_message), so both see exactly the same message by construction.
 *
 * Who calls it: the HTTP handlers, the unit test and the fuzz target.
 * Thread rules: one parser per request, used by one thread at a time.
 */
#ifndef MQ_OPENAI_OUTPUT_H
#define MQ_OPENAI_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#define OAI_OUT_MAX_CALLS 64 /* tool calls per reply; further ones stay content */

typedef enum {
    OAI_EV_REASONING = 1, /* text: a piece of reasoning_content */
    OAI_EV_CONTENT,       /* text: a piece of content */
    OAI_EV_CALL,          /* a new tool call: index, id, name (text = name) */
    OAI_EV_ARGS,          /* text: a piece of the arguments of call `index` */
} oai_ev_type;

typedef struct oai_event {
    oai_ev_type type;
    int index;      /* CALL/ARGS */
    const char *id; /* CALL */
    const char *text;
    size_t len;
} oai_event;

typedef void (*oai_event_cb)(void *ctx, const oai_event *ev);

typedef struct oai_buf {
    char *p;
    size_t len, cap;
} oai_buf;
/* Appends n bytes (keeps a NUL after them); 0 or -ENOMEM (the buffer is unchanged). */
int oai_buf_add(oai_buf *b, const char *s, size_t n);

typedef struct oai_output {
    int parse_tools;     /* 0: everything after reasoning is content */
    int parse_reasoning; /* 1: a leading <think>…</think> is reasoning */
    uint64_t req;        /* for call ids */
    int state;           /* internal */
    oai_buf hold;        /* text not yet classified */
    oai_buf ws;          /* whitespace-only content held back */
    int n_calls;
    int content_seen; /* non-whitespace content was emitted */
    int drop_ws;      /* whitespace held now is layout (after </think>) */
    int oom;
} oai_output;

/* A reply forced to start with a prefix (request.h) is parsed by feeding the prefix
 * first, as if the model had written it. */
void oai_output_init(oai_output *o, int parse_tools, int parse_reasoning, uint64_t req);
int oai_output_feed(oai_output *o, const char *text, size_t len, oai_event_cb cb, void *ctx);
/* End of the reply: whatever is held becomes content (an unclosed <tool_call> included).
 * Returns the number of tool calls. */
int oai_output_finish(oai_output *o, oai_event_cb cb, void *ctx);
void oai_output_free(oai_output *o);

/* Joined events: the non-streaming message. Owns its strings. */
typedef struct oai_call {
    char id[48];
    char *name;
    oai_buf args;
} oai_call;
typedef struct oai_message {
    oai_buf content, reasoning;
    int has_reasoning;
    int n_calls;
    oai_call calls[OAI_OUT_MAX_CALLS];
    int oom;
} oai_message;
/* An oai_event_cb whose ctx is an oai_message. */
void oai_message_add(void *msg, const oai_event *ev);
void oai_message_free(oai_message *m);

/* Byte length of the JSON value starting at s[0] (after no whitespace), or 0 if s does
 * not start with one complete, well-formed JSON value (RFC 8259; depth bounded). */
size_t oai_json_value_len(const char *s, size_t n);

#endif
