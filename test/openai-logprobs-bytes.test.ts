// Chat logprobs after a token that is a lone invalid byte (SentencePiece byte fallback): the text
// shows it as U+FFFD, and its entry has its one byte. The next token's piece starts with that
// U+FFFD (tokenPiece gives a character to the token after its bytes), and its entry took the
// U+FFFD's three bytes again: the bytes no longer made the text, and cutting the entries to the
// text's length (for stop sequences) dropped the last token (7 entries of 8).
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { type ServedModel, prepare, responseBody } from '../src/openai/translate.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

type Entry = { token: string; logprob: number; bytes: number[]; top_logprobs: { token: string; bytes: number[] }[] };

const t = TextTokenizer.load(tokenizerModelDir())!;
const model: ServedModel = { id: 'm', maxPositions: 512, vocabSize: 32000, tokenizer: t, created: 0 };
/** The token whose bytes are `bytes`. */
const id = (bytes: Buffer) => Array.from({ length: 32000 }, (_, i) => i).find((i) => t.tokenBytes(i)?.equals(bytes))!;
const [HELLO, OK, COMMA] = [' Hello', ' ok', ','].map((s) => id(Buffer.from(s)));
/** <0xC3>: the first byte of a two-byte character, alone. */
const LONE = id(Buffer.from([0xc3]));

/** The chat response's logprobs for a sample of `ids` whose text (as the engine decodes it) is cut
 *  to its first `keep` characters (a stop sequence), with that text. */
function chat(ids: number[], keep?: (text: string) => string): { content: Entry[]; text: string } {
  const p = prepare('/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'Hi' }], logprobs: true, top_logprobs: 1 }, model);
  const prompt = p.requests[0]!.promptTokenIds;
  const whole = t.decode([...prompt, ...ids]).slice(t.decode(prompt).length);
  const text = keep ? keep(whole) : whole;
  const result = {
    id: '0', promptTokens: prompt.length, tokenIds: ids, text, finishReason: keep ? 'stop' as const : 'length' as const,
    logprobs: ids.map((_, i) => -1 - i), topLogprobs: ids.map((x, i) => [{ token: x, logprob: -1 - i }]),
  };
  const body = responseBody(p, [result], 'x', 0, model) as { choices: { message: { content: string }; logprobs: { content: Entry[] } }[] };
  expect(body.choices[0]!.message.content).toBe(text);
  return { content: body.choices[0]!.logprobs.content, text };
}

const decoded = (content: Entry[]) => Buffer.from(content.flatMap((e) => e.bytes)).toString('utf8');

describe('chat logprobs of a sample with a lone invalid byte', () => {
  const ids = [HELLO, LONE, OK, COMMA, HELLO, LONE, OK, COMMA];

  it('each token has its own bytes, once: one entry a token, and they decode to the text', () => {
    expect(t.tokenBytes(LONE)).toEqual(Buffer.from([0xc3]));
    const { content, text } = chat(ids);
    expect(text).toBe(' Hello\ufffd ok, Hello\ufffd ok,');
    expect(content.map((e) => e.token)).toEqual([' Hello', '\\xc3', ' ok', ',', ' Hello', '\\xc3', ' ok', ',']);
    expect(content.map((e) => e.bytes)).toEqual(ids.map((x) => [...t.tokenBytes(x)!]));
    expect(content.map((e) => e.logprob)).toEqual(ids.map((_, i) => -1 - i));
    expect(decoded(content)).toBe(text);
    for (const e of content) expect(e.top_logprobs[0]).toMatchObject({ token: e.token, bytes: e.bytes });
  });

  it('cut by a stop sequence anywhere, the entries are the tokens the text holds, their bytes decode to it', () => {
    const { content: all, text: whole } = chat(ids);
    for (let keep = 0; keep <= whole.length; keep++) {
      const { content, text } = chat(ids, (w) => w.slice(0, keep));
      expect(decoded(content), JSON.stringify(text)).toBe(text);
      // every entry but the last is whole; the last is a start of its token's
      expect(content.slice(0, -1)).toEqual(all.slice(0, Math.max(0, content.length - 1)));
      const last = content.at(-1);
      if (last) expect(all[content.length - 1]!.bytes.slice(0, last.bytes.length)).toEqual(last.bytes);
    }
    // after the second lone byte, before ' ok': the byte is kept, ' ok' and ',' are not
    const { content } = chat(ids, (w) => w.slice(0, ' Hello\ufffd ok, Hello\ufffd'.length));
    expect(content.map((e) => e.token)).toEqual([' Hello', '\\xc3', ' ok', ',', ' Hello', '\\xc3']);
    // inside ' ok': its first two bytes
    expect(chat(ids, (w) => w.slice(0, -2)).content.at(-1)).toMatchObject({ token: ' o', bytes: [0x20, 0x6f], logprob: -7 });
  });

  it('a sample ending in the lone byte keeps it', () => {
    const { content, text } = chat([HELLO, LONE]);
    expect(text).toBe(' Hello\ufffd');
    expect(content.map((e) => e.bytes)).toEqual([[...Buffer.from(' Hello')], [0xc3]]);
  });
});
