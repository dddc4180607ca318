// Chat logprobs give each token its own bytes (OpenAI's `bytes`): a token holding part of a
// multi-byte character shows it as `\xNN` in its string, and the bytes of a sample's tokens add
// up to its text's — for byte-level BPE (GPT-2, Llama 3, Qwen2) and SentencePiece byte fallback.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { TextTokenizer, unboundedSpelling } from '../src/formats/tokenizer.js';
import { type ServedModel, escapeBytes, prepare, responseBody } from '../src/openai/translate.js';
import { BEGIN, END, writeByteLevelTokenizer } from './helpers/byte-level-tokenizer.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

function byteLevel(): TextTokenizer {
  const dir = tmpDir('byte-level');
  writeByteLevelTokenizer(dir);
  return TextTokenizer.load(dir)!;
}

const served = (tokenizer: TextTokenizer): ServedModel => ({ id: 'm', maxPositions: 512, vocabSize: 32000, tokenizer, created: 0 });

type Entry = { token: string; logprob: number; bytes: number[]; top_logprobs: { token: string; bytes: number[] }[] };

/** The chat response's logprobs for a sample of `text`'s tokens, each token's alternatives the
 *  next two ids; and the sample's text (what its tokens add after the prompt's, as the engine decodes it). */
function chatLogprobs(t: TextTokenizer, text: string): { content: Entry[]; ids: number[]; sample: string } {
  const model = served(t);
  const p = prepare('/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'Say it' }], logprobs: true, top_logprobs: 2 }, model);
  const ids = t.encode(text, false);
  const prompt = p.requests[0]!.promptTokenIds;
  const sample = t.decode([...prompt, ...ids]).slice(t.decode(prompt).length);
  const result = {
    id: '0', promptTokens: prompt.length, tokenIds: ids, text: sample, finishReason: 'length' as const,
    logprobs: ids.map(() => -0.5), topLogprobs: ids.map((id) => [{ token: id, logprob: -0.5 }, { token: id + 1, logprob: -1 }]),
  };
  const body = responseBody(p, [result], 'x', 0, model) as { choices: { logprobs: { content: Entry[] } }[] };
  return { content: body.choices[0]!.logprobs.content, ids, sample };
}

describe('token bytes', () => {
  it('byte-level BPE: each token\'s bytes from its vocabulary spelling; special tokens have none', () => {
    const t = byteLevel();
    const ids = t.encode('Hi the’s…', false);
    expect(ids.map((id) => [...t.tokenBytes(id)!])).toEqual([[0x48, 0x69], [0x20, 0x74, 0x68, 0x65], [0xe2, 0x80], [0x99], [0x73], [0xe2, 0x80], [0xa6]]);
    expect(t.tokenBytes(BEGIN)).toBeNull();
    expect(t.tokenBytes(END)).toBeNull();
    for (let b = 0; b < 256; b++) expect([...t.tokenBytes(b)!]).toEqual([b]);
  });

  it('SentencePiece byte fallback: <0xNN> is a byte, ▁ a space', () => {
    const t = TextTokenizer.load(tokenizerModelDir())!;
    const ids = t.encode('a 🦜', false);
    expect(Buffer.concat(ids.map((id) => t.tokenBytes(id)!)).toString('utf8')).toBe(' a 🦜');
    expect(ids.slice(-4).map((id) => [...t.tokenBytes(id)!])).toEqual([[0xf0], [0x9f], [0xa6], [0x9c]]);
    expect(t.tokenBytes(t.eosTokenId!)).toBeNull();
  });

  it('escapes what is not a whole UTF-8 character', () => {
    expect(escapeBytes(Buffer.from([0x20, 0xf0, 0x9f]))).toBe(' \\xf0\\x9f');
    expect(escapeBytes(Buffer.from('a’😊', 'utf8'))).toBe('a’😊');
    expect(escapeBytes(Buffer.from([0x99, 0x73, 0xe2, 0x80, 0xa6, 0xff, 0xc0, 0xaf]))).toBe('\\x99s…\\xff\\xc0\\xaf');
  });
});

describe('chat logprobs', () => {
  for (const [kind, make] of [['byte-level BPE', byteLevel], ['SentencePiece', () => TextTokenizer.load(tokenizerModelDir())!]] as const) {
    it(`${kind}: a token inside a character has its own bytes, and the tokens' bytes add up to the text`, () => {
      const t = make();
      const { content, ids, sample } = chatLogprobs(t, 'the’s … and 🦜 𝔘鬱!');
      expect(content).toHaveLength(ids.length);
      expect(sample).toContain('🦜 𝔘鬱!');
      expect(Buffer.from(content.flatMap((e) => e.bytes)).toString('utf8')).toBe(sample);
      // the split characters' tokens are shown by their bytes; the others by their text
      const split = content.filter((e) => e.token.includes('\\x'));
      expect(split.length).toBeGreaterThanOrEqual(kind === 'SentencePiece' ? 11 : 13);
      for (const e of content) {
        expect(e.token).not.toContain('\ufffd');
        if (!e.token.includes('\\x')) expect(e.bytes).toEqual([...Buffer.from(e.token, 'utf8')]);
        // the chosen token is the first alternative, with the same string and bytes
        expect(e.top_logprobs[0]).toMatchObject({ token: e.token, bytes: e.bytes });
      }
    });
  }
});

describe('a prompt surely past the context is refused before it is encoded', () => {
  // (the server encoded a 4 MiB prompt whole before its length check: 8 s on its one thread and
  // ~1 GB beyond --ram)
  it('minTokens never exceeds the real count, on byte-level BPE and SentencePiece tokenizers', () => {
    const texts = ['', 'a', 'hello world '.repeat(50), ' '.repeat(300), '\u3000'.repeat(100) + 'ｆｕｌｌ ｗｉｄｔｈ', 'é😀'.repeat(80), 'x'.repeat(5000)];
    for (const t of [byteLevel(), TextTokenizer.load(tokenizerModelDir())!]) {
      for (const text of texts) expect(t.minTokens(text), JSON.stringify(text.slice(0, 20))).toBeLessThanOrEqual(t.encode(text, false).length);
      expect(t.minTokens('x'.repeat(1 << 20))).toBeGreaterThan(1000);
    }
  });

  // A token that can stand for text of any length (a fused unknown token without byte fallback:
  // 60000 newlines were one <unk>, and a 4-token prompt was refused as "at least 600"), or text a
  // normalizer or pre-tokenizer deletes, leaves no bound: minTokens is 0 there.
  it('knows no bound where one token may stand for any text, or text may vanish', () => {
    const dir = tmpDir('tokenizer-no-fallback');
    const json = JSON.parse(fs.readFileSync(path.join(tokenizerModelDir(), 'tokenizer.json'), 'utf8'));
    expect(unboundedSpelling(json)).toBeNull();
    json.model.byte_fallback = false;
    json.decoder.decoders = json.decoder.decoders.filter((d: { type: string }) => d.type !== 'ByteFallback');
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
    const t = TextTokenizer.load(dir)!;
    for (const text of ['Hello' + '\n'.repeat(60000) + 'world', '\u{20000}'.repeat(14000)]) {
      expect(t.encode(text, false).length).toBeLessThan(10);
      expect(t.minTokens(text)).toBe(0);
    }
    expect(unboundedSpelling(json)).toMatch(/without byte fallback/);
    expect(unboundedSpelling({ model: { type: 'WordPiece', unk_token: '[UNK]' } })).toMatch(/WordPiece/);
    expect(unboundedSpelling({ model: { type: 'BPE' }, normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Strip', left: true, right: true }] } })).toMatch(/normalizer/);
    expect(unboundedSpelling({ model: { type: 'BPE' }, normalizer: { type: 'Replace', pattern: { String: '\t' }, content: '' } })).toMatch(/normalizer/);
    expect(unboundedSpelling({ model: { type: 'BPE' }, pre_tokenizer: { type: 'BertPreTokenizer' } })).toMatch(/pre-tokenizer/);
    expect(unboundedSpelling({ model: { type: 'BPE' }, pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'Removed' } })).toMatch(/pre-tokenizer/);
    // Llama 3 / Qwen2's layout keeps every character
    expect(unboundedSpelling({ model: { type: 'BPE', unk_token: null }, normalizer: { type: 'NFC' },
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Isolated' }, { type: 'ByteLevel' }] } })).toBeNull();
  });

  it('the server refuses it naming the context, without encoding it', () => {
    const t = TextTokenizer.load(tokenizerModelDir())!;
    const encode = vi.spyOn(t, 'encode');
    const huge = 'word '.repeat(200_000);
    let err: unknown;
    try {
      prepare('/v1/completions', { model: 'm', prompt: huge, max_tokens: 4 }, served(t));
    } catch (e) {
      err = e;
    }
    expect(encode).not.toHaveBeenCalled();
    expect(err).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'prompt' });
    expect((err as Error).message).toMatch(/maximum context length is 512 tokens; prompt \(1000000 characters\) is at least \d+ tokens/);
    // just past the context: counted exactly, as before
    expect(() => prepare('/v1/completions', { model: 'm', prompt: 'word '.repeat(600), max_tokens: 4 }, served(t))).toThrow(/you requested|leaving none/);
  });
});

