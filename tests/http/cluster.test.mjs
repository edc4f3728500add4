// tests/http/cluster.test.mjs — several mq hosts behind HAProxy (issue 12), driven with the
// official OpenAI client (npm `openai`). Started by tests/integration/test_cluster.c, which
// runs two mqd + mq-openai pairs on loopback and two HAProxy instances made from
// dist/haproxy/mq.cfg (one as shipped: `balance hdr(X-Session-Id)`, `hash-type
// consistent`; one with `balance roundrobin` instead), and sets:
//   MQ_LB_URL        the HAProxy that hashes X-Session-Id
//   MQ_LB_RR_URL     the round-robin HAProxy
//   MQ_LB_STATS_URL  the first HAProxy's Prometheus exporter (/metrics)
//   MQ_HOSTS         name|url|admin_socket,... : HAProxy's server name of each host, its
//                    mq-openai URL and its mqd's admin socket
//   MQ_MQCTL, MQ_SHARED
// Which host served a request: HAProxy's X-MQ-Host response header (dist/haproxy/mq.cfg
// sets it to the server's name); the replay checks it against each host's own /metrics.
// The tests run in order; the last one drains a host.
//
// The conversations: an agent works on a long pasted document. Turn 1 is the system prompt,
// the tool definitions and a user message that carries the document (the 8 `context`
// conversations of shared/golden/mq-agent-45m/tasks.jsonl with the longest user
// messages: about 2000-2700 tokens); each next turn resends everything plus the model's
// own reply and what the agent adds after it: a tool result for each tool call (taken in
// order from the `direct` conversations' tool messages), or a new user request when the
// model answered in text (their user messages). So the turns share a long head and grow
// by a reply and a result, as an agent's do. Each replay marks its system prompts with its
// own tag, so no replay finds another's prompts in a host's prefix cache.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import OpenAI from 'openai';
import { abortAfter, joinStream } from './chat_stream.mjs';

const env = process.env;
const hosts = env.MQ_HOSTS.split(',').map((h) => {
    const [name, url, admin] = h.split('|');
    return { name, url, admin };
});
const client = (base) => new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
const lb = client(env.MQ_LB_URL);
const lbRoundRobin = client(env.MQ_LB_RR_URL);

const N_CONV = 8;
const N_TURNS = 5;
const MAX_TOKENS = 64; // a tool call of the agent model takes 20-50 tokens

const dir = `${env.MQ_SHARED ?? '../shared'}/golden/mq-agent-45m`;
const tasks = fs.readFileSync(`${dir}/tasks.jsonl`, 'utf8').split('\n').filter(Boolean).map(JSON.parse);
const heads = tasks
    .map((t, i) => ({ t, i }))
    .filter(({ t }) => t.kind === 'context')
    .sort((a, b) => b.t.messages[1].content.length - a.t.messages[1].content.length || a.i - b.i)
    .slice(0, N_CONV)
    .map(({ t }) => t);
const direct = tasks.filter((t) => t.kind === 'direct');
const toolResults = direct.flatMap((t) => t.messages.filter((m) => m.role === 'tool').map((m) => m.content));
const userAsks = direct.map((t) => t.messages.find((m) => m.role === 'user').content);

function newConversation(tag, i, key = `${tag}-${i}`) {
    const head = heads[i % heads.length];
    const [system, user] = head.messages;
    return {
        key,
        tools: head.tools,
        messages: [{ role: 'system', content: `[${tag} ${i}] ${system.content}` }, user],
        next: i * 7, // where this conversation starts in the pools of results and requests
        turns: [],   // {host, prompt, cached, finish}
    };
}

// One chat request; streaming or not, the reply comes back as the assistant message an
// agent appends to its history, with the usage and the host that served it.
async function chat(c, req, headers, stream) {
    if (!stream) {
        const { data, response } = await c.chat.completions.create(req, { headers }).withResponse();
        const { message: msg, finish_reason: finish } = data.choices[0];
        return { msg, finish, usage: data.usage, host: response.headers.get('x-mq-host') };
    }
    const { data: s, response } = await c.chat.completions
        .create({ ...req, stream: true, stream_options: { include_usage: true } }, { headers })
        .withResponse();
    return { ...(await joinStream(s)), host: response.headers.get('x-mq-host') };
}

// One turn of a conversation: send it, record who served it, append what an agent would.
async function turn(c, conv, stream) {
    const req = { messages: conv.messages, tools: conv.tools, temperature: 0, max_tokens: MAX_TOKENS,
                  chat_template_kwargs: { enable_thinking: false } };
    const r = await chat(c, req, { 'X-Session-Id': conv.key }, stream);
    assert.ok(r.host, 'X-MQ-Host response header');
    assert.ok(r.finish === 'stop' || r.finish === 'length' || r.finish === 'tool_calls', `finish ${r.finish}`);
    conv.turns.push({ host: r.host, prompt: r.usage.prompt_tokens,
                      cached: r.usage.prompt_tokens_details?.cached_tokens ?? 0 });
    conv.messages.push(r.msg);
    if (r.msg.tool_calls?.length)
        for (const call of r.msg.tool_calls)
            conv.messages.push({ role: 'tool', tool_call_id: call.id, content: toolResults[conv.next++ % toolResults.length] });
    else
        conv.messages.push({ role: 'user', content: userAsks[conv.next++ % userAsks.length] });
}

// Conversations run at once (as a fleet of agents does), each one turn after the other;
// odd ones stream. `turns` turns each, starting where each conversation is.
async function run(c, convs, turns) {
    await Promise.all(convs.map(async (conv, i) => {
        for (let t = 0; t < turns; t++)
            await turn(c, conv, i % 2 === 1);
    }));
}

// cached/prompt tokens of turns 2.. of every conversation
function cachedRatio(convs) {
    let p = 0, c = 0;
    for (const conv of convs)
        for (const t of conv.turns.slice(1)) {
            p += t.prompt;
            c += t.cached;
        }
    return c / p;
}

function figure(name, value, digits = 4) {
    console.log(`${name}: ${value.toFixed(digits)}`);
}

// A host's own account: chat requests answered 2xx, prompt and cached tokens; and the
// gauges a router reads (vLLM's names).
async function counters(h) {
    const m = await (await fetch(`${h.url}/metrics`)).text();
    const num = (re) => Number(m.match(re)?.[1] ?? NaN);
    return {
        requests: num(/^mq_http_requests_total\{endpoint="\/v1\/chat\/completions",status="2xx"\} (\d+)$/m),
        prompt: num(/^mq_http_prompt_tokens_total (\d+)$/m),
        cached: num(/^mq_http_cached_tokens_total (\d+)$/m),
        aborts: num(/^mq_http_client_aborts_total (\d+)$/m),
        waiting: num(/^vllm:num_requests_waiting\{model_name="[^"]*"\} (\d+)$/m),
        kvUsage: num(/^vllm:kv_cache_usage_perc\{model_name="[^"]*"\} ([0-9.]+)$/m),
    };
}

// Replays N_CONV conversations of N_TURNS turns through `c`; checks each host's counters
// moved by exactly what the responses said that host served.
async function replay(c, tag) {
    const before = await Promise.all(hosts.map(counters));
    const convs = Array.from({ length: N_CONV }, (_, i) => newConversation(tag, i));
    await run(c, convs, N_TURNS);
    const after = await Promise.all(hosts.map(counters));
    hosts.forEach((h, k) => {
        const served = convs.flatMap((conv) => conv.turns).filter((t) => t.host === h.name);
        const want = { requests: served.length, prompt: served.reduce((a, t) => a + t.prompt, 0),
                       cached: served.reduce((a, t) => a + t.cached, 0) };
        const got = { requests: after[k].requests - before[k].requests, prompt: after[k].prompt - before[k].prompt,
                      cached: after[k].cached - before[k].cached };
        assert.deepEqual(got, want, `${h.name}: its /metrics against the responses that named it`);
    });
    return { convs, after };
}

const hostOf = (convs) => convs.map((conv) => [...new Set(conv.turns.map((t) => t.host))]);

let hashRatio;
test('X-Session-Id: every turn of a conversation on one host; cached/prompt from turn 2 on >= 0.9', async () => {
    const { convs, after } = await replay(lb, 'hash');
    const placed = hostOf(convs);
    placed.forEach((hs, i) => assert.equal(hs.length, 1, `conversation ${i} was served by ${hs}`));
    assert.equal(new Set(placed.flat()).size, hosts.length, `every host serves some conversations: ${placed}`);
    // what a KV-aware router would read: each host's pinned conversations hold KV, none waits
    after.forEach((c, k) => {
        assert.ok(c.kvUsage > 0 && c.kvUsage < 1, `${hosts[k].name} vllm:kv_cache_usage_perc ${c.kvUsage}`);
        assert.equal(c.waiting, 0, `${hosts[k].name} vllm:num_requests_waiting`);
    });
    const byTurn = [...Array(N_TURNS).keys()].map((t) => Math.round(convs.reduce((a, c) => a + c.turns[t].prompt, 0) / N_CONV));
    console.log(`note: mean prompt tokens by turn: ${byTurn.join(', ')}`);
    hashRatio = cachedRatio(convs);
    figure('cluster_cached_ratio_session_hash', hashRatio);
    assert.ok(hashRatio >= 0.9, `cached ratio ${hashRatio}`);
});

test('the same replay with round-robin balancing reuses less', async () => {
    const { convs } = await replay(lbRoundRobin, 'roundrobin');
    assert.ok(hostOf(convs).some((hs) => hs.length > 1), 'round robin moved conversations between hosts');
    const ratio = cachedRatio(convs);
    figure('cluster_cached_ratio_round_robin', ratio);
    assert.ok(ratio < hashRatio, `round robin ${ratio} vs session hash ${hashRatio}`);
});

// Events of one long streamed reply, and the reads that brought them.
async function streamReads(base, key) {
    const r = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Session-Id': key },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'Write a long story about a lighthouse keeper.' }],
                               max_tokens: 200, temperature: 5, seed: 11, stream: true,
                               chat_template_kwargs: { enable_thinking: false } }) });
    assert.equal(r.status, 200);
    let reads = 0, events = 0;
    const dec = new TextDecoder();
    for await (const chunk of r.body) {
        reads++;
        events += (dec.decode(chunk).match(/^data: /gm) ?? []).length;
    }
    return { reads, events };
}

test('SSE is not buffered on the way through HAProxy', async () => {
    // A proxy that holds back small writes (HAProxy without `option http-no-delay` sends
    // an event stream in ~200 ms batches) delivers the same events in far fewer reads
    // than the host itself does; the host's own stream is the yardstick for this machine.
    const direct = await streamReads(hosts[0].url, 'sse-direct');
    const proxied = await streamReads(env.MQ_LB_URL, 'sse-proxied');
    console.log(`note: SSE events/reads: direct ${direct.events}/${direct.reads}, through HAProxy ${proxied.events}/${proxied.reads}`);
    assert.ok(proxied.reads >= 0.5 * direct.reads, `${proxied.reads} reads through HAProxy, ${direct.reads} direct`);
});

// The host HAProxy picks for a session id, or for no session id (GET /v1/models is
// balanced like any request).
async function route(key) {
    const r = await fetch(`${env.MQ_LB_URL}/v1/models`, { headers: key ? { 'X-Session-Id': key } : {} });
    assert.equal(r.status, 200);
    return r.headers.get('x-mq-host');
}

test('requests without X-Session-Id are spread round robin', async () => {
    const seen = [];
    for (let i = 0; i < 2 * hosts.length; i++)
        seen.push(await route(null));
    assert.equal(new Set(seen).size, hosts.length, `served by ${seen}`);
});

// Session ids of the form `${prefix}-${n}`: `count` that HAProxy sends to host `name`.
async function keysOn(prefix, name, count) {
    const keys = [];
    for (let n = 0; keys.length < count && n < 1000; n++)
        if ((await route(`${prefix}-${n}`)) === name)
            keys.push(`${prefix}-${n}`);
    assert.equal(keys.length, count, `session ids routed to ${name}`);
    return keys;
}

function mqctl(h, cmd) {
    return JSON.parse(execFileSync(env.MQ_MQCTL, ['--socket', h.admin, '--json', cmd]));
}

test('a client that aborts a stream through HAProxy cancels it on its host', async () => {
    const h = hosts[hosts.length - 1];
    const [key] = await keysOn('abort', h.name, 1);
    const before = await counters(h);
    assert.equal(await abortAfter(lb, 3, { 'X-Session-Id': key }), 3, 'the stream was aborted while it ran');
    let c, q;
    for (let i = 0; i < 150; i++) {
        c = await counters(h);
        q = mqctl(h, 'stats').queue;
        if (c.aborts > before.aborts && q.prefilling + q.decoding + q.queued === 0) break;
        await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(c.aborts, before.aborts + 1, `${h.name} mq_http_client_aborts_total`);
    assert.equal(q.prefilling + q.decoding + q.queued, 0, `${h.name} mqd is idle again: ${JSON.stringify(q)}`);
});

async function lbStat(name) {
    const m = await (await fetch(`${env.MQ_LB_STATS_URL}/metrics`)).text();
    return Number(m.match(new RegExp(`^${name}\\{proxy="mq_hosts"\\} (\\d+)$`, 'm'))?.[1] ?? NaN);
}

test('mqctl drain on one host mid-replay: no request fails, its conversations and new ones go to the other', async () => {
    const [a, b] = hosts;
    // conversations already running: two on each host; new ones: two that would have gone to a
    const [a1, a2] = await keysOn('early', a.name, 2);
    const [b1, b2] = await keysOn('early', b.name, 2);
    const late = [...(await keysOn('late', a.name, 2)), ...(await keysOn('late', b.name, 2))];
    const early = [a1, b1, a2, b2].map((k, i) => newConversation('drain', i, k));
    await run(lb, early, 2);
    early.forEach((conv, i) => assert.deepEqual(hostOf([conv])[0], [i % 2 ? b.name : a.name], conv.key));

    // a long stream on `a` runs while `a` drains
    const [streamKey] = await keysOn('stream', a.name, 1);
    const req = { messages: [{ role: 'user', content: 'Write a long story about a lighthouse keeper.' }], max_tokens: 200,
                  temperature: 5, seed: 3, stream: true, stream_options: { include_usage: true },
                  chat_template_kwargs: { enable_thinking: false } };
    const { data: s, response } = await lb.chat.completions.create(req, { headers: { 'X-Session-Id': streamKey } })
        .withResponse();
    assert.equal(response.headers.get('x-mq-host'), a.name);
    const it = s[Symbol.asyncIterator]();
    await it.next();
    const retriesBefore = await lbStat('haproxy_backend_retry_warnings_total');
    execFileSync(env.MQ_MQCTL, ['--socket', a.admin, 'drain']);
    assert.equal((await fetch(`${a.url}/health`)).status, 503, `${a.name} /health while it drains`);

    // at once: the early conversations go on, the late ones start; meanwhile the stream ends
    const lateConvs = late.map((k, i) => newConversation('drain', 4 + i, k));
    let finish, usage;
    const streamDone = (async () => {
        for (let x = await it.next(); !x.done; x = await it.next()) {
            if (x.value.usage) usage = x.value.usage;
            if (x.value.choices[0]?.finish_reason) finish = x.value.choices[0].finish_reason;
        }
    })();
    await Promise.all([run(lb, early, N_TURNS - 2), run(lb, lateConvs, N_TURNS), streamDone]);

    assert.equal(finish, 'length', 'the stream running on the draining host finished');
    assert.equal(usage.completion_tokens, req.max_tokens);
    early.forEach((conv) => conv.turns.slice(2).forEach((t, n) =>
        assert.equal(t.host, b.name, `${conv.key} turn ${n + 3} after the drain`)));
    lateConvs.forEach((conv) => assert.deepEqual(hostOf([conv])[0], [b.name], `new conversation ${conv.key}`));
    // the turns that reached `a` before HAProxy's check saw its 503 were resent by HAProxy
    figure('cluster_drain_requests_resent', (await lbStat('haproxy_backend_retry_warnings_total')) - retriesBefore, 0);
});
