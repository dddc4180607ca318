// Logprobs of a sample a stop sequence ended describe the text returned, not the tokens past it:
// the engine keeps every generated token (usage counts them), but its text ends before the stop
// sequence, and the tokens it carried (the last one cut at the stop) are left out of logprobs —
// for completions (tokens join to the text, text_offset inside it), chat (bytes decode to the
// content) and streaming (the same logprobs as the whole response).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { type Engine, complete, engineFor } from '../src/openai/complete.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

let model: LanguageModel;
let engine: Engine;

beforeAll(async () => {
  model = await loadModel(tinyChatModel(tmpDir('logprobs-stop')), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
  engine = engineFor(model, 'tiny');
});

afterAll(async () => {
  await model?.close();
});

type Completion = { text: string; finish_reason: string; logprobs: { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] } };
type ChatEntry = { token: string; logprob: number; bytes: number[]; top_logprobs: unknown[] };
type Chat = { message: { content: string }; finish_reason: string; logprobs: { content: ChatEntry[] } };
type Body = { choices: unknown[]; usage: { completion_tokens: number } };

const COMPLETION = { model: 'tiny', prompt: 'Hello world', max_tokens: 12, temperature: 0, logprobs: 1 };
const CHAT = { model: 'tiny', messages: [{ role: 'user', content: 'Hi there' }], max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 1 };

const run = async (endpoint: '/v1/completions' | '/v1/chat/completions', body: object) =>
  (await complete(engine, endpoint, body, { priority: 'interactive' })) as Body;

/** The whole response and the logprobs its stream's chunks carry, one list per chunk. */
async function streamed(endpoint: '/v1/completions' | '/v1/chat/completions', body: object): Promise<{ whole: Body; chunks: { logprobs: unknown; text: string }[] }> {
  const chunks: { logprobs: unknown; text: string }[] = [];
  const whole = (await complete(engine, endpoint, { ...body, stream: true }, {
    priority: 'interactive',
    onChunk: (c) => {
      const choice = (c.choices as { logprobs: unknown; text?: string; delta?: { content?: string } }[])[0]!;
      chunks.push({ logprobs: choice.logprobs, text: choice.text ?? choice.delta?.content ?? '' });
    },
  })) as Body;
  return { whole, chunks };
}

/**
 * Stop sequences from a greedy answer's own text: one beginning inside token k (its first
 * character kept) and one beginning where token k begins, for the first k ≥ 1 whose token has two
 * characters or more and whose text occurs first there. `pieces` are the answer's tokens' texts.
 */
function stopsFrom(pieces: string[]): { inside: string; at: string; k: number; offset: number } {
  const text = pieces.join('');
  let offset = pieces[0]!.length;
  for (let k = 1; k < pieces.length - 1; offset += pieces[k]!.length, k++) {
    if (pieces[k]!.length < 2) continue;
    const inside = text.slice(offset + 1, offset + 4);
    const at = text.slice(offset, offset + 3);
    if (inside.length === 3 && text.indexOf(inside) === offset + 1 && text.indexOf(at) === offset) return { inside, at, k, offset };
  }
  throw new Error(`no stop sequence to choose in ${JSON.stringify(text)}`);
}

describe('logprobs of a response ended by a stop sequence', () => {
  it('completions: tokens join to the text, offsets stay inside it, the cut token keeps its logprob', async () => {
    const free = (await run('/v1/completions', COMPLETION)).choices[0] as Completion;
    expect(free.logprobs.tokens.join('')).toBe(free.text);
    const { inside, at, k, offset } = stopsFrom(free.logprobs.tokens);

    const cut = await run('/v1/completions', { ...COMPLETION, stop: inside });
    const c = cut.choices[0] as Completion;
    expect(c).toMatchObject({ text: free.text.slice(0, offset + 1), finish_reason: 'stop' });
    expect(c.logprobs.tokens).toEqual([...free.logprobs.tokens.slice(0, k), free.logprobs.tokens[k]![0]]);
    expect(c.logprobs.tokens.join('')).toBe(c.text);
    expect(c.logprobs.text_offset).toEqual(free.logprobs.text_offset.slice(0, k + 1));
    expect(Math.max(...c.logprobs.text_offset)).toBeLessThan(c.text.length);
    expect(c.logprobs.token_logprobs).toEqual(free.logprobs.token_logprobs.slice(0, k + 1));
    expect(c.logprobs.top_logprobs).toEqual(free.logprobs.top_logprobs.slice(0, k + 1));
    // every generated token is still counted (the one carrying the stop sequence too)
    expect(cut.usage.completion_tokens).toBeGreaterThan(k);

    // A stop sequence where a token begins drops that token whole.
    const edge = (await run('/v1/completions', { ...COMPLETION, stop: at })).choices[0] as Completion;
    expect(edge.text).toBe(free.text.slice(0, offset));
    expect(edge.logprobs.tokens).toEqual(free.logprobs.tokens.slice(0, k));
    expect(edge.logprobs.token_logprobs).toHaveLength(k);
  });

  it('chat: the tokens\' bytes decode to the content', async () => {
    const free = (await run('/v1/chat/completions', CHAT)).choices[0] as Chat;
    const pieces = free.logprobs.content.map((e) => Buffer.from(e.bytes).toString('utf8'));
    expect(pieces.join('')).toBe(free.message.content);
    const { inside, k, offset } = stopsFrom(pieces);

    const c = (await run('/v1/chat/completions', { ...CHAT, stop: [inside] })).choices[0] as Chat;
    expect(c).toMatchObject({ message: { content: free.message.content.slice(0, offset + 1) }, finish_reason: 'stop' });
    expect(c.logprobs.content).toHaveLength(k + 1);
    expect(Buffer.from(c.logprobs.content.flatMap((e) => e.bytes)).toString('utf8')).toBe(c.message.content);
    expect(c.logprobs.content.map((e) => e.token).join('')).toBe(c.message.content);
    expect(c.logprobs.content.slice(0, k)).toEqual(free.logprobs.content.slice(0, k));
    const last = free.logprobs.content[k]!;
    expect(c.logprobs.content[k]).toEqual({ ...last, token: pieces[k]![0], bytes: [...Buffer.from(pieces[k]![0]!)] });
  });

  it('streaming carries the same logprobs as the whole response', async () => {
    const free = (await run('/v1/completions', COMPLETION)).choices[0] as Completion;
    const { inside } = stopsFrom(free.logprobs.tokens);
    const { whole, chunks } = await streamed('/v1/completions', { ...COMPLETION, stop: inside });
    const c = whole.choices[0] as Completion;
    expect(chunks.map((x) => x.text).join('')).toBe(c.text);
    expect(chunks.filter((x) => x.logprobs !== null).map((x) => x.logprobs)).toEqual([c.logprobs]);

    const freeChat = (await run('/v1/chat/completions', CHAT)).choices[0] as Chat;
    const stop = stopsFrom(freeChat.logprobs.content.map((e) => Buffer.from(e.bytes).toString('utf8'))).inside;
    const chat = await streamed('/v1/chat/completions', { ...CHAT, stop });
    const ch = chat.whole.choices[0] as Chat;
    expect(chat.chunks.map((x) => x.text).join('')).toBe(ch.message.content);
    expect(chat.chunks.filter((x) => x.logprobs !== null).map((x) => x.logprobs)).toEqual([ch.logprobs]);
    expect(Buffer.from(ch.logprobs.content.flatMap((e) => e.bytes)).toString('utf8')).toBe(ch.message.content);
  });
});
