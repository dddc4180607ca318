// Text ↔ token ids with @huggingface/tokenizers from tokenizer.json, and chat templates with
// @huggingface/jinja when the model has one (chat_template.jinja or tokenizer_config.json), with
// Python's strip(chars) put back where the library drops the characters (pythonStrips).

import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { ModelFileError, UserError } from '../util/errors.js';
import { readJsonObject } from '../util/json-file.js';

/** A conversation the model's chat template refuses or fails on (a request's error, not a run's). */
export class ChatTemplateError extends UserError {}

export interface ChatMessage {
  role: string;
  content: string;
  /** The participant's name (OpenAI's `name`), for templates that show it. */
  name?: string;
}

/** RSS a loaded tokenizer adds, per byte of its tokenizer.json: measured 44 MiB resident after a
 *  collection for Llama-2's 1.7 MB file (its vocabulary and merges as JavaScript objects, 16 MiB
 *  of live heap, and the heap pages parsing grew, which V8 keeps). */
const TOKENIZER_RSS_PER_FILE_BYTE = 26;

/** RAM the tokenizer of a model directory takes once loaded (0 without tokenizer.json). */
export function tokenizerRamBytes(dir: string): number {
  const file = path.join(dir, 'tokenizer.json');
  return fs.existsSync(file) ? TOKENIZER_RSS_PER_FILE_BYTE * fs.statSync(file).size : 0;
}

/** A chat template and the file it came from (named in its errors). */
interface TemplateSource {
  text: string;
  file: string;
}

/** The chat template of a model directory, as transformers finds it: chat_template.jinja when the
 *  directory has one (it takes priority over the tokenizer config's entry, which newer
 *  checkpoints leave out), else tokenizer_config.json's chat_template (a string, or a list of
 *  named templates whose "default" is the one used). */
function chatTemplateSource(dir: string, config: Record<string, unknown>): TemplateSource | null {
  const jinja = path.join(dir, 'chat_template.jinja');
  if (fs.existsSync(jinja)) {
    try {
      return { text: fs.readFileSync(jinja, 'utf8'), file: jinja };
    } catch (e) {
      throw new ModelFileError(jinja, `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  const file = path.join(dir, 'tokenizer_config.json');
  const t = config.chat_template;
  if (t === undefined || t === null) return null;
  if (typeof t === 'string') return { text: t, file };
  if (Array.isArray(t)) {
    const named = t.find((x: unknown) => (x as { name?: unknown } | null)?.name === 'default') as { template?: unknown } | undefined;
    if (!named) return null;
    if (typeof named.template !== 'string') throw new ModelFileError(file, 'chat_template "default" has no "template" string');
    return { text: named.template, file };
  }
  throw new ModelFileError(file, 'chat_template is neither a string nor a list of named templates');
}

/** A node of @huggingface/jinja's parsed template (its AST classes are not exported; the
 *  interpreter tells them apart by `type` alone). */
interface JinjaNode {
  type: string;
  [field: string]: unknown;
}

const isJinjaNode = (x: unknown): x is JinjaNode =>
  typeof x === 'object' && x !== null && typeof (x as { type?: unknown }).type === 'string';

/** Python's str.strip / lstrip / rstrip, the characters argument included: @huggingface/jinja
 *  (0.5.11) ignores it and strips whitespace, so Qwen3's `content.split('</think>')[-1].lstrip('\n')`
 *  took the answer's indentation with it. None strips whitespace, as in Python. */
function pythonStrip(name: 'strip' | 'lstrip' | 'rstrip') {
  return (s: unknown, chars: unknown): string => {
    if (typeof s !== 'string') throw new Error(`${name}() called on ${s === undefined ? 'an undefined value' : typeof s}, not a string`);
    if (chars === null || chars === undefined) {
      return name === 'strip' ? s.trim() : name === 'lstrip' ? s.trimStart() : s.trimEnd();
    }
    if (typeof chars !== 'string') throw new Error(`${name}() argument must be a string or none, not ${typeof chars}`);
    // By code point, as Python's strings are.
    const set = new Set(chars), points = [...s];
    let start = 0, end = points.length;
    if (name !== 'rstrip') while (start < end && set.has(points[start]!)) start++;
    if (name !== 'lstrip') while (end > start && set.has(points[end - 1]!)) end--;
    return points.slice(start, end).join('');
  };
}

/** The functions the rewritten strips call, passed to every render (names no template uses). */
const STRIP_HELPERS = {
  __tierlm_strip: pythonStrip('strip'),
  __tierlm_lstrip: pythonStrip('lstrip'),
  __tierlm_rstrip: pythonStrip('rstrip'),
} as const;

/** `x.strip(chars)` (or lstrip/rstrip) and the filter `x|trim(chars)` as a call of the helper
 *  above, or null for any other node (a strip with no argument is the library's, and right). */
function stripCall(node: JinjaNode): JinjaNode | null {
  const call = (name: string, target: unknown, chars: unknown): JinjaNode =>
    ({ type: 'CallExpression', callee: { type: 'Identifier', value: `__tierlm_${name}` }, args: [target, chars] });
  const oneArg = (args: unknown, keyword?: string): unknown => {
    if (!Array.isArray(args) || args.length !== 1 || !isJinjaNode(args[0])) return null;
    const arg = args[0];
    if (arg.type !== 'KeywordArgumentExpression') return arg;
    return keyword && (arg.key as JinjaNode | undefined)?.value === keyword ? arg.value : null;
  };
  if (node.type === 'CallExpression' && isJinjaNode(node.callee) && node.callee.type === 'MemberExpression') {
    const { object, property, computed } = node.callee;
    const name = isJinjaNode(property) && property.type === 'Identifier' ? property.value : null;
    const chars = oneArg(node.args);
    if (!computed && (name === 'strip' || name === 'lstrip' || name === 'rstrip') && chars) return call(name, object, chars);
  }
  // jinja2's trim(value, chars=None); the library refuses trim with an argument.
  if (node.type === 'FilterExpression' && isJinjaNode(node.filter) && node.filter.type === 'CallExpression') {
    const { callee, args } = node.filter;
    const chars = oneArg(args, 'chars');
    if (isJinjaNode(callee) && callee.type === 'Identifier' && callee.value === 'trim' && chars) return call('strip', node.operand, chars);
  }
  return null;
}

/** Rewrites a parsed template's strips with characters (stripCall), children first, in place;
 *  returns the node that replaces `node`. Dict literals hold their entries in a Map. */
function pythonStrips(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(pythonStrips);
  if (node instanceof Map) return new Map([...node].map(([k, v]) => [pythonStrips(k), pythonStrips(v)]));
  if (!isJinjaNode(node)) return node;
  for (const [field, child] of Object.entries(node)) node[field] = pythonStrips(child);
  return stripCall(node) ?? node;
}

/** What a tokenizer.json decoder says about spelling bytes in the vocabulary (tokenBytes). */
interface TokenSpelling {
  byteLevel: boolean;
  byteFallback: boolean;
  /** Replace decoders' (pattern, content) pairs, in order (SentencePiece's '▁' → ' '). */
  replace: [string, string][];
}

function tokenSpelling(decoder: unknown): TokenSpelling {
  const out: TokenSpelling = { byteLevel: false, byteFallback: false, replace: [] };
  const visit = (d: unknown): void => {
    if (typeof d !== 'object' || d === null) return;
    const { type, decoders, pattern, content } = d as Record<string, unknown>;
    if (type === 'Sequence' && Array.isArray(decoders)) decoders.forEach(visit);
    else if (type === 'ByteLevel') out.byteLevel = true;
    else if (type === 'ByteFallback') out.byteFallback = true;
    else if (type === 'Metaspace') out.replace.push(['▁', ' ']);
    else if (type === 'Replace' && typeof (pattern as { String?: unknown })?.String === 'string' && typeof content === 'string') {
      out.replace.push([(pattern as { String: string }).String, content]);
    }
  };
  visit(decoder);
  return out;
}

/** GPT-2's byte ↔ character table (byte-level BPE): printable Latin-1 bytes stand for
 *  themselves, the other 68 for the characters from U+0100 on, in byte order. */
const UNICODE_TO_BYTE: ReadonlyMap<string, number> = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const map = new Map<string, number>();
  let next = 0x100;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : next++), b);
  return map;
})();

/** Why one token of this tokenizer.json may stand for text of any length, or text may vanish
 *  before the model sees it, so that no byte count bounds the tokens from below (minTokens); null
 *  when neither can happen. An unknown-token fallback without byte fallback fuses any run of
 *  unknown characters into one token (BPE, Unigram) or a whole word (WordPiece, WordLevel); some
 *  normalizers and pre-tokenizers delete characters (control characters, accents, whitespace). */
export function unboundedSpelling(json: Record<string, unknown>): string | null {
  const model = (json.model ?? {}) as Record<string, unknown>;
  if (model.type === 'WordPiece' || model.type === 'WordLevel') return `a ${String(model.type)} model maps a whole unknown word to one token`;
  const unk = model.unk_token ?? model.unk_id;
  if (unk !== undefined && unk !== null && model.byte_fallback !== true) return 'unknown characters fall back to one unknown token, without byte fallback';
  const keeps = (d: unknown, safe: (o: Record<string, unknown>) => boolean, list: string): boolean => {
    if (d === null || d === undefined) return true;
    const o = d as Record<string, unknown>;
    if (o.type === 'Sequence') return Array.isArray(o[list]) && (o[list] as unknown[]).every((x) => keeps(x, safe, list));
    return safe(o);
  };
  const safeNormalizer = (o: Record<string, unknown>) => ['NFC', 'NFD', 'NFKC', 'NFKD', 'Lowercase', 'Prepend'].includes(o.type as string) ||
    (o.type === 'Replace' && typeof o.content === 'string' && o.content !== '');
  if (!keeps(json.normalizer, safeNormalizer, 'normalizers')) return 'its normalizer may delete characters';
  const safePre = (o: Record<string, unknown>) => ['ByteLevel', 'Metaspace', 'Digits', 'Punctuation', 'UnicodeScripts'].includes(o.type as string) ||
    (o.type === 'Split' && o.behavior !== 'Removed');
  if (!keeps(json.pre_tokenizer, safePre, 'pretokenizers')) return 'its pre-tokenizer may delete characters';
  return null;
}

/** The special-token settings of a tokenizer (transformers' SPECIAL_TOKENS_ATTRIBUTES). */
const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token', 'additional_special_tokens'];

/** A special token's text: a string, or an AddedToken object's content; '' for none. */
function tokenText(v: unknown): string {
  const content = typeof v === 'string' ? v : (v as { content?: unknown } | null | undefined)?.content;
  return typeof content === 'string' ? content : '';
}

/** tokenizer_config.json with special_tokens_map.json merged in as transformers merges it: only
 *  for a legacy config (one without added_tokens_decoder, written before transformers 4.34), whose
 *  special tokens are often in the map alone, and then the map's entries replace the config's
 *  (additional_special_tokens are added to the config's). A newer config holds them all itself. */
function withSpecialTokensMap(dir: string, config: Record<string, unknown>): Record<string, unknown> {
  const file = path.join(dir, 'special_tokens_map.json');
  if ('added_tokens_decoder' in config || !fs.existsSync(file)) return config;
  const merged = { ...config };
  for (const [key, value] of Object.entries(readJsonObject(file))) {
    if (key !== 'additional_special_tokens' || !Array.isArray(value)) {
      merged[key] = value;
      continue;
    }
    const own = Array.isArray(config[key]) ? (config[key] as unknown[]).map(tokenText) : [];
    merged[key] = [...own, ...value.map(tokenText).filter((t) => !own.includes(t))];
  }
  return merged;
}

export class TextTokenizer {
  private readonly template: Template | null = null;
  private readonly templateFile: string | null;
  /** Why the model's template could not be parsed: @huggingface/jinja lacks some of Python
   *  Jinja's syntax (`{% do %}`, some filters and methods; see docs/api.md). Like transformers,
   *  the model still loads; only conversations fail, each with this. */
  private readonly templateError: string | null = null;

  /** How a vocabulary entry spells its bytes (see tokenBytes), from tokenizer.json's decoder. */
  private readonly spelling: TokenSpelling;
  private added: Map<number, { content: string; special: boolean }> | undefined;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly config: Record<string, unknown>,
    private readonly file: string,
    decoder: unknown,
    /** unboundedSpelling's reason, or null: minTokens then knows no bound. */
    private readonly unbounded: string | null = null,
  ) {
    this.spelling = tokenSpelling(decoder);
    const source = chatTemplateSource(path.dirname(file), config);
    this.templateFile = source?.file ?? null;
    try {
      this.template = source ? new Template(source.text) : null;
      if (this.template) pythonStrips(this.template.parsed);
    } catch (e) {
      this.templateError = `${source!.file}: chat_template does not parse: ${(e as Error).message}`;
    }
  }

  /** The tokenizer of a model directory, or null when it has no tokenizer.json. */
  static load(dir: string): TextTokenizer | null {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) return null;
    const configFile = path.join(dir, 'tokenizer_config.json');
    const json = readJsonObject(file);
    const config = withSpecialTokensMap(dir, fs.existsSync(configFile) ? readJsonObject(configFile) : {});
    try {
      return new TextTokenizer(new Tokenizer(json, config), config, file, json.decoder, unboundedSpelling(json));
    } catch (e) {
      if (e instanceof ModelFileError) throw e;
      throw new ModelFileError(file, `cannot build the tokenizer: ${(e as Error).message}`);
    }
  }

  /** Special tokens (BOS, EOS) are added as the tokenizer's post-processor says, unless the text
   *  came from a chat template, which writes them itself — or as tokenizer_config.json's
   *  add_bos_token / add_eos_token say where it gives them: transformers' Llama tokenizers
   *  rebuild their post-processor from those flags. A text that starts with the BOS token's own
   *  text ("<|begin_of_text|>x", a prompt already rendered) holds its BOS: none is added before it
   *  (transformers would add a second, which the model never saw in training). */
  encode(text: string, addSpecialTokens = true): number[] {
    const ids = this.encodeSpecial(text, addSpecialTokens);
    const bos = this.tokenId('bos_token');
    if (!addSpecialTokens || bos === null || ids[0] !== bos || ids[1] !== bos) return ids;
    // Two BOS up front: drop the first when it is the one added (the rest is the text's own ids).
    const plain: number[] = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const addedBos = plain[0] === bos && ids.length > plain.length && plain.every((id, i) => ids[i + 1] === id);
    return addedBos ? ids.slice(1) : ids;
  }

  /** encode() before its BOS check: the special tokens as the post-processor or the config says. */
  private encodeSpecial(text: string, addSpecialTokens: boolean): number[] {
    const encode = (special: boolean) => this.tokenizer.encode(text, { add_special_tokens: special }).ids;
    const { add_bos_token: wantBos, add_eos_token: wantEos } = this.config;
    const givesBos = typeof wantBos === 'boolean', givesEos = typeof wantEos === 'boolean';
    if (!addSpecialTokens || (!givesBos && !givesEos)) return encode(addSpecialTokens);
    const plain = encode(false);
    const bos = this.tokenId('bos_token'), eos = this.tokenId('eos_token');
    // What the post-processor adds, for a flag the config leaves out (only then encoded twice).
    const withSpecial = givesBos && givesEos ? plain : encode(true);
    const added = withSpecial.length > plain.length;
    const hasBos = givesBos ? wantBos : added && withSpecial[0] === bos;
    const hasEos = givesEos ? wantEos : added && withSpecial.at(-1) === eos;
    return [...(hasBos && bos !== null ? [bos] : []), ...plain, ...(hasEos && eos !== null ? [eos] : [])];
  }

  private longestToken: number | undefined;

  /** A number of tokens `text` encodes to at least (0 when the vocabulary's spelling is not known
   *  here), found without encoding it: its UTF-8 bytes over the most bytes one token stands for,
   *  with a margin of 4 for normalizers that shrink text (NFKC folds a 3-byte full-width letter to
   *  one byte). A prompt that far past the context is refused at once: encoding a 4 MiB prompt
   *  took 8 s on the server's one thread and ~1 GB of memory beyond its --ram. */
  minTokens(text: string): number {
    // (a fused unknown token can stand for 60000 characters: no bound then, see unboundedSpelling)
    this.longestToken ??= this.unbounded !== null ? 0 : this.mostTokenBytes();
    return this.longestToken > 0 ? Math.floor(Buffer.byteLength(text, 'utf8') / (4 * this.longestToken)) : 0;
  }

  /** The most bytes one token stands for (tokenBytes), over the whole vocabulary with the added
   *  tokens; 0 when one of them cannot be spelled. */
  private mostTokenBytes(): number {
    let most = 1;
    for (const [token, id] of this.tokenizer.get_vocab(true)) {
      const bytes = this.tokenBytes(id);
      if (bytes === null && !(this.added ??= this.tokenizer.get_added_tokens_decoder()).get(id)?.special) return 0;
      most = Math.max(most, bytes?.length ?? Buffer.byteLength(token, 'utf8'));
    }
    return most;
  }

  private tokenId(name: string): number | null {
    const t = this.specialToken(name);
    return t === '' ? null : this.tokenizer.token_to_id(t) ?? null;
  }

  /** Without clean_up_tokenization_spaces, whatever the config says (as vLLM, and transformers'
   *  own default): that cleanup (" 's" → "'s", " ." → ".") is not incremental, so streamed pieces,
   *  logprob tokens and stop strings, all decoded a token at a time, would disagree with a text
   *  decoded whole — the stream repeated itself and a stop string was never seen. */
  decode(ids: number[]): string {
    return this.tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /** The bytes token `id` stands for, from its vocabulary entry: byte-level BPE (GPT-2, Llama 3,
   *  Qwen2) spells a byte per character, SentencePiece's byte fallback a byte as `<0xNN>` and a
   *  space as `▁`. A token may hold part of a multi-byte character, which no string can show
   *  (decoded, it is U+FFFD). Null for special tokens (decoding skips them) and for decoders
   *  not known here. */
  tokenBytes(id: number): Buffer | null {
    const token = this.tokenizer.id_to_token(id);
    const added = (this.added ??= this.tokenizer.get_added_tokens_decoder()).get(id);
    if (token === undefined || added?.special) return null;
    // (an added token is its text, whatever the decoder)
    if (added) return Buffer.from(added.content, 'utf8');
    const s = this.spelling;
    if (s.byteLevel) {
      const bytes = [...token].map((ch) => UNICODE_TO_BYTE.get(ch));
      return bytes.every((b) => b !== undefined) ? Buffer.from(bytes as number[]) : null;
    }
    if (!s.byteFallback && s.replace.length === 0) return null;
    const byte = s.byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(token) : null;
    if (byte) return Buffer.from([parseInt(byte[1]!, 16)]);
    return Buffer.from(s.replace.reduce((t, [from, to]) => t.split(from).join(to), token), 'utf8');
  }

  /** Whether the model has a chat template (one that does not parse included: its conversations fail). */
  get hasChatTemplate(): boolean {
    return this.templateFile !== null;
  }

  /** The id of tokenizer_config.json's eos_token, or null when it names none (or an unknown token). */
  get eosTokenId(): number | null {
    return this.tokenId('eos_token');
  }

  private specialToken(name: string): string {
    return tokenText(this.config[name]);
  }

  /** What transformers passes a chat template besides the conversation: tools and documents as
   *  None when not given (so `tools is not none` is false, not true as for an undefined name), and
   *  its special_tokens_map, the special tokens that are set, as text. BOS and EOS are always
   *  given ('' when unset, as before), so that `bos_token + ...` renders rather than fails. */
  private templateContext(): Record<string, unknown> {
    const context: Record<string, unknown> = { tools: null, documents: null, bos_token: '', eos_token: '' };
    for (const key of SPECIAL_TOKEN_KEYS) {
      const v = this.config[key];
      const text = Array.isArray(v) ? v.map(tokenText).filter((t) => t !== '') : tokenText(v);
      if (text.length > 0) context[key] = text;
    }
    return context;
  }

  /** Renders a conversation with the model's chat template: ready for the assistant's turn
   *  (generation), or as it stands (training data, whose last message is the assistant's). */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (this.templateError) throw new ChatTemplateError(this.templateError);
    if (!this.template) throw new UserError(`${this.file}: the model has no chat_template, so "messages" cannot be used`);
    try {
      return this.template.render({
        ...this.templateContext(),
        messages,
        add_generation_prompt: addGenerationPrompt,
        ...STRIP_HELPERS,
      });
    } catch (e) {
      // The template's own refusal (raise_exception: "Conversation roles must alternate ...") or a
      // failure on these messages: the conversation's fault, not the run's.
      throw new ChatTemplateError(`the chat template (${this.templateFile}) fails on these messages: ${(e as Error).message}`);
    }
  }
}
