// Special tokens as transformers sets them: special_tokens_map.json for a legacy
// tokenizer_config.json (its BOS was never added, and {{ bos_token }} rendered empty), and a chat
// template's variables (tools and documents are None, not undefined; every special token is given).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const hi = [{ role: 'user', content: 'hi' }];

/** The Llama 2 test tokenizer with its tokenizer_config.json edited by `edit`, and the side files
 *  in `files` (name → JSON) written beside it. */
function tokenizer(edit: (config: Record<string, unknown>) => void, files: Record<string, unknown> = {}): TextTokenizer {
  const dir = tokenizerModelDir();
  const file = path.join(dir, 'tokenizer_config.json');
  const config = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(config);
  fs.writeFileSync(file, JSON.stringify(config));
  for (const [name, value] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), JSON.stringify(value));
  return TextTokenizer.load(dir)!;
}

/** A tokenizer_config.json as transformers wrote it before 4.34: no added_tokens_decoder, and the
 *  special tokens in special_tokens_map.json alone. */
function legacy(config: Record<string, unknown>): void {
  delete config.added_tokens_decoder;
  delete config.bos_token;
  delete config.eos_token;
  delete config.unk_token;
}

const addedToken = (content: string) => ({ content, lstrip: false, normalized: false, rstrip: false, single_word: false });

describe('special_tokens_map.json', () => {
  it("gives a legacy tokenizer_config.json its special tokens, as transformers: BOS is added, EOS known, the template's bos_token set", () => {
    const tok = tokenizer(legacy, { 'special_tokens_map.json': { bos_token: '<s>', eos_token: addedToken('</s>'), unk_token: '<unk>' } });
    expect(tok.encode('Hello')).toEqual([1, ...tok.encode('Hello', false)]);
    expect(tok.eosTokenId).toBe(2);
    // (the helper's template: {{ bos_token }}, each message, [assistant])
    expect(tok.applyChatTemplate(hi)).toBe(`<s>[user] hi\n[assistant]`);
  });

  it("replaces a legacy config's own entries, and adds to its additional_special_tokens (transformers' legacy merge)", () => {
    const tok = tokenizer((c) => {
      legacy(c);
      c.eos_token = '<unk>';
      c.additional_special_tokens = ['<x>'];
      c.chat_template = '{{ eos_token }}|{{ additional_special_tokens | join(",") }}';
    }, { 'special_tokens_map.json': { eos_token: '</s>', additional_special_tokens: ['<y>', addedToken('<x>')] } });
    expect(tok.eosTokenId).toBe(2);
    expect(tok.applyChatTemplate(hi)).toBe('</s>|<x>,<y>');
  });

  it('is not read beside a config with added_tokens_decoder (transformers 4.34 on), which holds the special tokens itself', () => {
    const tok = tokenizer(() => {}, { 'special_tokens_map.json': { bos_token: '<unk>', eos_token: '<unk>' } });
    expect(tok.eosTokenId).toBe(2);
    expect(tok.encode('Hello')[0]).toBe(1);
    expect(tok.applyChatTemplate(hi)).toBe(`<s>[user] hi\n[assistant]`);
  });
});

describe("a chat template's variables", () => {
  it('tools and documents are none when not given, as transformers passes None (they were undefined: `is not none` held)', () => {
    const tok = tokenizer((c) => {
      c.chat_template = '{% if tools is not none %}T{% else %}F{% endif %}{% if tools is none %}N{% else %}X{% endif %}' +
        '{% if documents is not none %}D{% else %}-{% endif %}{% if tools %}t{% endif %}';
    });
    expect(tok.applyChatTemplate(hi)).toBe('FN-');
  });

  it('every special token tokenizer_config.json sets is given as text (an AddedToken as its content); unset ones are undefined', () => {
    const tok = tokenizer((c) => {
      c.pad_token = addedToken('</s>');
      c.additional_special_tokens = ['<a>', addedToken('<b>')];
      c.chat_template = '{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ additional_special_tokens | join(",") }}|' +
        '{{ sep_token is defined }}|{{ mask_token }}';
    });
    expect(tok.applyChatTemplate(hi)).toBe('<s>|</s>|<unk>|</s>|<a>,<b>|false|');
  });

  it('an empty additional_special_tokens or a null pad_token is not given, as in transformers\' special_tokens_map', () => {
    // (the Llama 2 config holds "additional_special_tokens": [] and "pad_token": null)
    const tok = tokenizer((c) => {
      c.chat_template = '{{ pad_token is defined }}|{{ additional_special_tokens is defined }}';
    });
    expect(tok.applyChatTemplate(hi)).toBe('false|false');
  });
});
