// A text prompt that already starts with the BOS token's text ("<|begin_of_text|>x", a prompt
// rendered by hand) gets no second BOS from the tokenizer: it got [BOS, BOS, x].
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { BEGIN, writeByteLevelTokenizer } from './helpers/byte-level-tokenizer.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const x = 'x'.charCodeAt(0);

/** The byte-level test tokenizer (its post-processor adds <|begin|>, as Llama 3's), with `config`
 *  merged into its tokenizer_config.json. */
function byteLevel(config: Record<string, unknown> = {}): TextTokenizer {
  const dir = tmpDir('bos');
  writeByteLevelTokenizer(dir);
  const file = path.join(dir, 'tokenizer_config.json');
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), ...config }));
  return TextTokenizer.load(dir)!;
}

describe('BOS at the start of a text prompt', () => {
  it("is not added again when the post-processor adds it and the text starts with BOS's text", () => {
    const tok = byteLevel();
    expect(tok.encode('x')).toEqual([BEGIN, x]);
    expect(tok.encode('<|begin|>x')).toEqual([BEGIN, x]);
    // the text's own tokens are kept: only the added one goes
    expect(tok.encode('<|begin|><|begin|>x')).toEqual([BEGIN, BEGIN, x]);
    expect(tok.encode('<|begin|>x', false)).toEqual([BEGIN, x]);
  });

  it('is not added again where tokenizer_config.json asks for it (add_bos_token, as Llama 2)', () => {
    const tok = TextTokenizer.load(tokenizerModelDir())!;
    const plain = tok.encode('<s>Hello', false);
    expect(plain[0]).toBe(1);
    expect(tok.encode('<s>Hello')).toEqual(plain);
    expect(tok.encode('Hello')).toEqual([1, ...tok.encode('Hello', false)]);
  });

  it("a text's own BOS tokens stay where the tokenizer adds none", () => {
    const tok = byteLevel({ add_bos_token: false });
    expect(tok.encode('<|begin|><|begin|>x')).toEqual([BEGIN, BEGIN, x]);
    expect(tok.encode('x')).toEqual([x]);
  });
});
