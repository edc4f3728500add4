// tests/http/eval_agent.mjs — `make eval-agent`: every assistant turn of the agent
// conversations (shared/golden/mq-agent-45m) through mq-openai's chat API with the official
// OpenAI client, greedy, in each precision mode (the `mq.mode` extension).
//
// A turn is correct when the reply makes the expected tool calls (names and arguments equal
// as parsed JSON, in order) or, for an answer, has the expected text (trimmed) — the rule of
// golden.json's hf_ok. agent_match_golden: the bf16 reply written back in the model's format
// equals transformers' greedy text (hf_text) exactly.
// Usage: node eval_agent.mjs --base-url URL [--dir golden/mq-agent-45m] [--tasks N]
//        [--modes bf16,mixed,fp4] [--concurrency 2]
import fs from 'node:fs';
import OpenAI from 'openai';

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) => {
    if (v.startsWith('--')) a.push([v.slice(2), all[i + 1]]);
    return a;
}, []));
const dir = args.dir ?? `${process.env.MQ_SHARED ?? '../shared'}/golden/mq-agent-45m`;
const modes = (args.modes ?? 'bf16,mixed,fp4').split(',');
const conc = Number(args.concurrency ?? 2);
const convs = fs.readFileSync(`${dir}/tasks.jsonl`, 'utf8').split('\n').filter(Boolean).map(JSON.parse);
const golden = JSON.parse(fs.readFileSync(`${dir}/golden.json`, 'utf8'));
const nTasks = args.tasks ? Number(args.tasks) : convs.length;
const cases = golden.cases.filter((c) => c.conv < nTasks);
const client = new OpenAI({ baseURL: args['base-url'], apiKey: process.env.MQ_API_KEY ?? 'none', maxRetries: 0 });

// Python's json.dumps(v, ensure_ascii=False): what the template renders for arguments
// given as objects, so arguments sent as strings render the same tokens.
export function pyDumps(v) {
    if (Array.isArray(v)) return '[' + v.map(pyDumps).join(', ') + ']';
    if (v && typeof v === 'object')
        return '{' + Object.entries(v).map(([k, x]) => JSON.stringify(k) + ': ' + pyDumps(x)).join(', ') + '}';
    return JSON.stringify(v);
}

function toOpenAI(messages) {
    return messages.map((m) => {
        if (!m.tool_calls) return m;
        return {
            ...m,
            content: m.content ?? '',
            tool_calls: m.tool_calls.map((tc, i) => ({
                id: tc.id ?? `call_${i}`,
                type: 'function',
                function: {
                    name: tc.function.name,
                    arguments: typeof tc.function.arguments === 'string' ? tc.function.arguments : pyDumps(tc.function.arguments),
                },
            })),
        };
    });
}

function deepEqual(a, b) {
    return JSON.stringify(a) === JSON.stringify(b) ||
        (a && b && typeof a === 'object' && typeof b === 'object' &&
            Object.keys(a).length === Object.keys(b).length &&
            Object.keys(a).every((k) => deepEqual(a[k], b[k])));
}

function correct(c, msg) {
    const want = c.expected;
    const calls = msg.tool_calls ?? [];
    if (want.tool_calls && want.tool_calls.length) {
        if (calls.length !== want.tool_calls.length) return false;
        return want.tool_calls.every((w, i) => {
            let got;
            try { got = JSON.parse(calls[i].function.arguments); } catch { return false; }
            const wa = typeof w.function.arguments === 'string' ? JSON.parse(w.function.arguments) : w.function.arguments;
            return calls[i].function.name === w.function.name && deepEqual(got, wa);
        });
    }
    return calls.length === 0 && (msg.content ?? '').trim() === (want.content ?? '').trim();
}

// The reply in the model's own format (Qwen3 / Hermes tool calls).
function asModelText(msg) {
    const parts = [];
    if (msg.content) parts.push(msg.content);
    for (const tc of msg.tool_calls ?? [])
        parts.push(`<tool_call>\n{"name": ${JSON.stringify(tc.function.name)}, "arguments": ${tc.function.arguments}}\n</tool_call>`);
    return parts.join('\n');
}

async function runCase(c, mode) {
    const conv = convs[c.conv];
    const r = await client.chat.completions.create({
        model: args.model ?? undefined,
        messages: toOpenAI(conv.messages.slice(0, c.turn)),
        tools: conv.tools,
        temperature: 0,
        max_tokens: golden.max_new_tokens ?? 96,
        chat_template_kwargs: { enable_thinking: false },
        mq: { mode },
    });
    const msg = r.choices[0].message;
    return { ok: correct(c, msg), match: asModelText(msg) === c.hf_text, prompt: r.usage.prompt_tokens };
}

async function pool(items, n, fn) {
    const out = new Array(items.length);
    let next = 0;
    await Promise.all(Array.from({ length: n }, async () => {
        while (next < items.length) {
            const i = next++;
            out[i] = await fn(items[i]);
        }
    }));
    return out;
}

const models = await client.models.list();
if (!args.model) args.model = models.data[0].id;
const res = {};
for (const mode of modes) {
    const t0 = Date.now();
    res[mode] = await pool(cases, conc, (c) => runCase(c, mode));
    const ok = res[mode].filter((x) => x.ok).length;
    console.log(`# ${mode}: ${ok} of ${cases.length} turns correct (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
const bad = cases.filter((c, i) => res.bf16 && !res.bf16[i].match).map((c) => `${c.conv}/${c.turn}`);
if (bad.length) console.log(`# bf16 turns that differ from transformers: ${bad.slice(0, 20).join(' ')}`);
const hf = cases.filter((c) => c.hf_ok).length;
console.log(`# transformers on the same turns: ${(hf / cases.length).toFixed(4)}`);
for (const mode of ['bf16', 'mixed', 'fp4'])
    if (res[mode]) console.log(`agent_acc_${mode}: ${(res[mode].filter((x) => x.ok).length / cases.length).toFixed(4)}`);
if (res.bf16) console.log(`agent_match_golden: ${(res.bf16.filter((x) => x.match).length / cases.length).toFixed(4)}`);
