// A small byte-level BPE tokenizer (the kind GPT-2, OPT, Llama 3 and Qwen2 ship): a token per
// byte, written with GPT-2's byte-to-character table, and a few merges, among them one that
// joins the first two bytes of a three-byte character (so "’" is two tokens, neither a whole
// character) and one across a space. Special tokens <|begin|> and <|end|>.
import fs from 'node:fs';
import path from 'node:path';

/** GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest for U+0100 on. */
export function byteChar(b: number): string {
  const printable = (x: number) => (x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff);
  if (printable(b)) return String.fromCodePoint(b);
  let next = 0x100;
  for (let x = 0; x < b; x++) if (!printable(x)) next++;
  return String.fromCodePoint(next);
}

const spell = (s: string) => [...Buffer.from(s, 'utf8')].map(byteChar).join('');

/** Merges, each pair of (spelled) tokens; the result's id follows the 256 byte tokens in order. */
const MERGES: [string, string][] = [
  [spell(' '), 't'], ['h', 'e'], [spell(' t'), 'he'], // " the"
  [byteChar(0xe2), byteChar(0x80)], // the first two bytes of ’ (E2 80 99) and of … (E2 80 A6)
  ['H', 'i'],
];

export const BEGIN = 256 + MERGES.length;
export const END = BEGIN + 1;

/** tokenizer.json and tokenizer_config.json of the tokenizer above, in `dir`. */
export function writeByteLevelTokenizer(dir: string): void {
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[byteChar(b)] = b;
  MERGES.forEach(([a, b], i) => (vocab[a + b] = 256 + i));
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const json = {
    version: '1.0',
    added_tokens: [special(BEGIN, '<|begin|>'), special(END, '<|end|>')],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|begin|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<|begin|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|begin|>': { id: '<|begin|>', ids: [BEGIN], tokens: ['<|begin|>'] } },
    },
    decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: MERGES.map(([a, b]) => `${a} ${b}`) },
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({
    bos_token: '<|begin|>', eos_token: '<|end|>', tokenizer_class: 'PreTrainedTokenizerFast',
    chat_template: "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
  }));
}
