// A text prompt surely past the model's positions is refused before it is encoded (encoding a
// 3 MB prompt raised a job's peak to 750 MiB, only for it to be refused), and `tierlm generate` plans its batch
// without the lines that cannot fit (one giant line made a job plan a batch of 2, not 16).
import { describe, expect, it, vi } from 'vitest';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { promptIds } from '../src/engine/requests.js';
import { type ScanLimits, scanPrompts } from '../src/cli/generate.js';
import type { PromptSource } from '../src/formats/jsonl.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const VOCAB = 32000;
const positions = { maxPositions: 4096, note: ' (its sliding window)' };

describe('promptIds', () => {
  const t = TextTokenizer.load(tokenizerModelDir())!;
  const huge = 'word '.repeat(200_000);

  it('refuses a huge text prompt without encoding it, naming the field and the positions', () => {
    const encode = vi.spyOn(t, 'encode');
    try {
      const got = promptIds({ id: 'a', prompt: huge }, t, VOCAB, 'json', positions);
      expect(encode).not.toHaveBeenCalled();
      expect(got).toMatch(/^"prompt" \(1000000 characters\) is at least \d+ tokens and does not fit the model's 4096 positions \(its sliding window\) \(at most 4095, leaving room for one new token\)$/);
    } finally {
      encode.mockRestore();
    }
  });

  it('refuses a huge conversation after rendering it, before encoding it', () => {
    const encode = vi.spyOn(t, 'encode');
    try {
      const got = promptIds({ id: 'a', messages: [{ role: 'user', content: huge }] }, t, VOCAB, 'json', positions);
      expect(encode).not.toHaveBeenCalled();
      expect(got).toMatch(/^"messages" \(\d+ characters rendered\) are at least \d+ tokens and do not fit the model's 4096 positions/);
    } finally {
      encode.mockRestore();
    }
  });

  it('encodes a prompt that may fit, as before; without positions it checks nothing more', () => {
    const encode = vi.spyOn(t, 'encode');
    try {
      expect(promptIds({ id: 'a', prompt: 'hello world' }, t, VOCAB, 'json', positions)).toEqual(t.encode('hello world'));
      const short = 'word '.repeat(100);
      expect(t.minTokens(short)).toBeLessThan(10);
      // (at least its lower bound of tokens fits 10 positions: encoded, and the caller's length check refuses it)
      expect(promptIds({ id: 'a', prompt: short }, t, VOCAB, 'json', { maxPositions: 10 })).toHaveLength(t.encode(short).length);
      encode.mockClear();
      expect(promptIds({ id: 'a', prompt: huge.slice(0, 50_000) }, t, VOCAB)).toHaveLength(t.encode(huge.slice(0, 50_000)).length);
    } finally {
      encode.mockRestore();
    }
  });
});

describe('scanPrompts', () => {
  const source = (lines: unknown[]): PromptSource => ({
    name: 'in.jsonl',
    lines: async function* () {
      yield* lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l)));
    },
  });
  // 64 positions; a text is at least a token per 8 characters
  const limits: ScanLimits = { maxPositions: 64, minTokens: (text) => Math.floor(text.length / 8) };

  it('leaves out the lines that cannot fit the positions: they fail before they run', async () => {
    const scan = await scanPrompts(source([
      { id: 'a', prompt: 'hello there' },
      { id: 'big', prompt: 'x'.repeat(3000) },
      { id: 'ids', prompt_token_ids: Array.from({ length: 64 }, () => 5) },
      { id: 'chat', messages: [{ role: 'user', content: 'y'.repeat(3000) }] },
      { id: 'b', prompt_token_ids: [5, 6, 7, 8, 9, 10, 11, 12, 13, 14] },
      'not json',
    ]), new Set(), limits);
    // (idBytes: the ids' text, the made-up line-6 of the line that is not JSON included)
    expect(scan).toEqual({ count: 6, pending: 5, longest: 10, idBytes: 18 });
  });

  it('plans without the lines a rerun skips as done', async () => {
    const lines = [{ id: 'long', prompt_token_ids: Array.from({ length: 40 }, () => 5) }, { id: 'b', prompt_token_ids: [5, 6, 7] }];
    expect(await scanPrompts(source(lines), new Set(), limits)).toEqual({ count: 2, pending: 2, longest: 40, idBytes: 5 });
    expect(await scanPrompts(source(lines), new Set(['long']), limits)).toEqual({ count: 2, pending: 1, longest: 3, idBytes: 5 });
  });

  it('counts a long line that might fit at the positions less one', async () => {
    // 300 characters: about 102 tokens by the estimate, at least 37 by minTokens, so it may fit
    const scan = await scanPrompts(source([
      { id: 'a', prompt: 'z'.repeat(300) },
      { id: 'ids', prompt_token_ids: Array.from({ length: 63 }, () => 5) },
    ]), new Set(['a']), limits);
    expect(scan).toEqual({ count: 2, pending: 1, longest: 63, idBytes: 4 });
    // a tokenizer that cannot bound its tokens (minTokens 0) refuses nothing here
    const unknown = await scanPrompts(source([{ id: 'big', prompt: 'x'.repeat(3000) }]), new Set(), { maxPositions: 64, minTokens: () => 0 });
    expect(unknown.longest).toBe(63);
  });

  it('asks minTokens only of a line whose estimate is past the positions', async () => {
    const minTokens = vi.fn(limits.minTokens);
    await scanPrompts(source([{ id: 'a', prompt: 'short' }, { id: 'b', prompt: 'x'.repeat(1000) }]), new Set(), { maxPositions: 64, minTokens });
    expect(minTokens.mock.calls.map(([text]) => text.length)).toEqual([1000]);
  });
});
