// Text ↔ token ids with @huggingface/tokenizers from tokenizer.json, and chat templates with
// @huggingface/jinja when tokenizer_config.json has one.

import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { ModelFileError, UserError } from '../util/errors.js';

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

export class TextTokenizer {
  private readonly template: Template | null;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly config: Record<string, unknown>,
    private readonly file: string,
  ) {
    const t = config.chat_template;
    const source = typeof t === 'string' ? t : Array.isArray(t) ? (t.find((x) => x?.name === 'default')?.template as string | undefined) : undefined;
    try {
      this.template = source ? new Template(source) : null;
    } catch (e) {
      throw new ModelFileError(path.join(path.dirname(file), 'tokenizer_config.json'), `chat_template does not parse: ${(e as Error).message}`);
    }
  }

  /** The tokenizer of a model directory, or null when it has no tokenizer.json. */
  static load(dir: string): TextTokenizer | null {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) return null;
    const configFile = path.join(dir, 'tokenizer_config.json');
    const json = readJson(file);
    const config = fs.existsSync(configFile) ? readJson(configFile) : {};
    try {
      return new TextTokenizer(new Tokenizer(json, config), config, file);
    } catch (e) {
      throw new ModelFileError(file, `cannot build the tokenizer: ${(e as Error).message}`);
    }
  }

  /** Special tokens (BOS) are added as the tokenizer's post-processor says, unless the text
   *  came from a chat template, which writes them itself. */
  encode(text: string, addSpecialTokens = true): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids: number[]): string {
    return this.tokenizer.decode(ids, { skip_special_tokens: true });
  }

  get hasChatTemplate(): boolean {
    return this.template !== null;
  }

  /** The id of tokenizer_config.json's eos_token, or null when it names none (or an unknown token). */
  get eosTokenId(): number | null {
    const eos = this.specialToken('eos_token');
    return eos === '' ? null : this.tokenizer.token_to_id(eos) ?? null;
  }

  private specialToken(name: string): string {
    const v = this.config[name];
    return typeof v === 'string' ? v : (v as { content?: string } | undefined)?.content ?? '';
  }

  /** Renders a conversation with the model's chat template: ready for the assistant's turn
   *  (generation), or as it stands (training data, whose last message is the assistant's). */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (!this.template) throw new UserError(`${this.file}: the model has no chat_template, so "messages" cannot be used`);
    try {
      return this.template.render({
        messages,
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.specialToken('bos_token'),
        eos_token: this.specialToken('eos_token'),
      });
    } catch (e) {
      // The template's own refusal (raise_exception: "Conversation roles must alternate ...") or a
      // failure on these messages: the conversation's fault, not the run's.
      throw new ChatTemplateError(`the chat template (${path.join(path.dirname(this.file), 'tokenizer_config.json')}) fails on these messages: ${(e as Error).message}`);
    }
  }
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ModelFileError(file, `cannot read JSON: ${(e as Error).message}`);
  }
}
