// tests/http/chat_stream.mjs — what the HTTP tests do with streamed chat completions of the
// official client (npm `openai`): join a stream into the message a non-streaming request
// returns, and abort a stream while it runs. Used by openai.test.mjs and cluster.test.mjs.

// The chunks of a chat.completions stream joined: { msg, finish, usage }, msg shaped as a
// non-streaming response's message (content null when there is none, tool_calls only
// when there are some; a call's name and argument fragments concatenated).
export async function joinStream(s) {
    const msg = { role: 'assistant', content: '', tool_calls: [] };
    let finish, usage;
    for await (const ch of s) {
        if (ch.usage) usage = ch.usage;
        const c = ch.choices[0];
        if (!c) continue;
        if (c.finish_reason) finish = c.finish_reason;
        if (c.delta.content) msg.content += c.delta.content;
        for (const t of c.delta.tool_calls ?? []) {
            const cur = (msg.tool_calls[t.index] ??= { id: '', type: 'function', function: { name: '', arguments: '' } });
            if (t.id) cur.id = t.id;
            if (t.function?.name) cur.function.name += t.function.name;
            if (t.function?.arguments) cur.function.arguments += t.function.arguments;
        }
    }
    if (!msg.tool_calls.length) delete msg.tool_calls;
    if (!msg.content) msg.content = null;
    return { msg, finish, usage };
}

// Starts a stream that would run for thousands of tokens and aborts it, through the
// client's AbortSignal, once `n` content deltas have arrived. Returns the deltas seen.
export async function abortAfter(client, n, headers = {}) {
    const ac = new AbortController();
    const s = await client.chat.completions.create(
        // temperature 5: nearly uniform sampling, so the end-of-turn token practically never comes
        { messages: [{ role: 'user', content: 'Write a very long story about a lighthouse keeper.' }], max_tokens: 4000,
          temperature: 5, stream: true, chat_template_kwargs: { enable_thinking: false } },
        { headers, signal: ac.signal });
    let seen = 0;
    try {
        // leave at once: chunks already buffered (a loaded machine delivers many per read)
        // would otherwise still be counted after the abort
        for await (const ch of s)
            if (ch.choices[0]?.delta?.content && ++seen === n) {
                ac.abort();
                break;
            }
    } catch (e) {
        if (e.name !== 'AbortError') throw e;
    }
    return seen;
}
