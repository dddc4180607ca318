// A sample's text, as Sequence decodes it token by token: what its tokens add after the prompt
// (the first token's leading space kept when the prompt's last tokens begin inside a character,
// or hold a U+FFFD of their own), and streamed pieces that add up to it whatever the stop strings.
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { Sequence, detokenizeContext } from '../src/engine/sequence.js';
import { GREEDY } from '../src/engine/sampling.js';
import { Tensor } from '../src/tensor/tensor.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';
import { writeByteLevelTokenizer } from './helpers/byte-level-tokenizer.js';
import { rng } from './helpers/random.js';

/** SentencePiece with byte fallback (the Llama 2 / Mistral kind). */
const sp = TextTokenizer.load(tokenizerModelDir())!;
/** Byte-level BPE (GPT-2, Llama 3, Qwen2): token b < 256 is byte b. */
const bl = (() => {
  const dir = tmpDir('seq-text');
  writeByteLevelTokenizer(dir);
  return TextTokenizer.load(dir)!;
})();
const VOCAB = new Map<TextTokenizer, number>([[sp, 32000], [bl, 263]]);

/** Runs a sample whose tokens are `tokens` (each forced through greedy logits) after `prompt`;
 *  returns its result's text and the pieces its hook was given. */
function run(t: TextTokenizer, prompt: number[], tokens: number[], stop: string[] = []) {
  const vocab = VOCAB.get(t)!;
  const pieces: string[] = [];
  const limits = { maxNewTokens: tokens.length, untilContext: false, stopIds: new Set<number>(), stop, logprobs: false, topLogprobs: 0, maxPositions: 1 << 20 };
  const seq = new Sequence({ id: 'x', promptTokenIds: prompt }, prompt, 0, GREEDY, limits, t, (_s, _tok, text) => pieces.push(text));
  const none = () => { throw new Error('no logprobs'); };
  for (const id of tokens) {
    const l = new Float32Array(vocab);
    l[id] = 1;
    if (seq.next(new Tensor('f32', [1, vocab], l), 0, none)) break;
  }
  const r = seq.result();
  return { text: r.text!, pieces, finish: r.finishReason, tokens: r.tokenIds };
}

/** What `tokens` add to the decoded prompt, or null when they change the prompt's own text. */
function added(t: TextTokenizer, prompt: number[], tokens: number[]): string | null {
  const base = t.decode(prompt), whole = t.decode([...prompt, ...tokens]);
  return whole.startsWith(base) ? whole.slice(base.length) : null;
}

describe("a sample's first token after a prompt whose last tokens begin inside a character", () => {
  const [HELLO, WORLD] = sp.encode('Hello world', false); // "▁Hello", "▁world"

  it('keeps its leading space (SentencePiece byte fallback: the prompt ends in the bytes of 🦙 then a word)', () => {
    const prompt = sp.encode('I love 🦙 it');
    // (the window of the prompt's last 4 tokens: 3 of the llama's 4 bytes, then "▁it")
    expect(sp.decode(prompt.slice(-4)).startsWith('\ufffd')).toBe(true);
    const r = run(sp, prompt, [HELLO!, WORLD!]);
    expect(r.text).toBe(' Hello world');
    expect(added(sp, prompt, [HELLO!, WORLD!])).toBe(r.text);
    expect(r.pieces.join('')).toBe(r.text);
    // The context starts at the word after the character cut.
    expect(detokenizeContext(sp, prompt)).toEqual([prompt.slice(-1), 'it']);
  });

  it('keeps it after a prompt that holds a U+FFFD of its own', () => {
    const prompt = sp.encode('a \ufffd b');
    const r = run(sp, prompt, [HELLO!]);
    expect(r.text).toBe(' Hello');
    expect(r.pieces.join('')).toBe(r.text);
  });

  it('decodes without the prompt when it ends inside a character (its first token would be decoded into it)', () => {
    const prompt = sp.encode('I love 🦙').slice(0, -2); // ends in <0xF0> <0x9F>
    expect(detokenizeContext(sp, prompt)).toEqual([[], '']);
    const cut = bl.encode('x ’', false).slice(0, -1); // ends in the merge of E2 80
    expect(detokenizeContext(bl, cut)).toEqual([[], '']);
    // (whole again, the character ends the window)
    expect(detokenizeContext(bl, bl.encode('x ’', false))[1]).toBe('x ’');
  });

  it.each([['SentencePiece', sp], ['byte-level BPE', bl]] as const)(
    '%s: text is what the tokens add to the decoded prompt, and the pieces add up to it (random prompts and tokens)', (_kind, t) => {
      const words = ['I', ' love', ' 🦙', '候', ' \ufffd', ' it', 'é', ' x’', 'x', '  ', '🦙🦙', ' a'];
      // Tokens: whole words, and single bytes of multi-byte characters (byte tokens of either kind).
      const byteIds = t === sp
        ? [0xf0, 0x9f, 0xa6, 0x99, 0xe2, 0x80, 0xc3, 0xa9].map((b) => 3 + b)
        : [0xf0, 0x9f, 0xa6, 0x99, 0xe2, 0x80, 0xc3, 0xa9, 256 + 3];
      const wordIds = [...new Set(['Hello', ' world', 'x', ' it', '候', ' a'].flatMap((w) => t.encode(w, false)))];
      const pool = [...byteIds, ...wordIds];
      const r = rng(7);
      const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)]!;
      let checked = 0;
      for (let i = 0; i < 300; i++) {
        const prompt = t.encode(Array.from({ length: 1 + Math.floor(r() * 5) }, () => pick(words)).join(''));
        const tokens = Array.from({ length: 1 + Math.floor(r() * 4) }, () => pick(pool));
        const got = run(t, prompt, tokens);
        const want = added(t, prompt, tokens);
        expect(got.pieces.join(''), `prompt ${JSON.stringify(t.decode(prompt))}, tokens ${tokens}`).toBe(got.text);
        if (want === null) continue;
        expect(got.text, `prompt ${JSON.stringify(t.decode(prompt))}, tokens ${tokens}`).toBe(want);
        checked++;
      }
      expect(checked).toBeGreaterThan(200);
    });
});

describe('streamed pieces with several stop strings', () => {
  const ids = (s: string) => [...Buffer.from(s)]; // byte-level: an ASCII byte is its own token
  const prompt = bl.encode('Hi');

  it('hold back a start of any stop, measured against all the text not yet given (stops ["C#", "zCl"])', () => {
    for (const stop of [['C#', 'zCl'], ['zCl', 'C#']]) {
      const r = run(bl, prompt, ids('qzClo'), stop);
      expect(r.finish).toBe('stop');
      expect(r.text).toBe('q');
      // ("z" was released once "C" made "…zC" a start of "C#" too; "zCl" then cut the text before it)
      expect(r.pieces.join('')).toBe(r.text);
    }
  });

  it('add up to the text for random stop sets and texts', () => {
    const r = rng(11);
    const alphabet = 'abzC#';
    const word = (most: number) => Array.from({ length: 1 + Math.floor(r() * most) }, () => alphabet[Math.floor(r() * alphabet.length)]).join('');
    for (let i = 0; i < 500; i++) {
      const stop = [...new Set(Array.from({ length: 1 + Math.floor(r() * 4) }, () => word(4)))];
      const text = word(24);
      // What the text is once cut: at the first token whose text completes a stop, before the
      // earliest stop found in the text so far.
      let want = text;
      for (let k = 1; k <= text.length; k++) {
        const at = Math.min(...stop.map((s) => text.slice(0, k).indexOf(s)).filter((x) => x >= 0));
        if (Number.isFinite(at)) {
          want = text.slice(0, at);
          break;
        }
      }
      const got = run(bl, prompt, ids(text), stop);
      const what = `stops ${JSON.stringify(stop)}, text ${JSON.stringify(text)}`;
      expect(got.text, what).toBe(want);
      expect(got.pieces.join(''), what).toBe(got.text);
    }
  });
});
