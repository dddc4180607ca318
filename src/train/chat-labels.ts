// Labels for a conversation rendered with the model's chat template: loss only on the assistant's
// tokens. Templates are arbitrary Jinja and tokenizers give no character offsets, so the assistant
// spans are found the way Hugging Face's return_assistant_tokens_mask finds them without a
// {% generation %} block: by rendering prefixes of the conversation. For assistant message i,
//   before = render(messages[:i], add_generation_prompt) ends where its content starts, and
//   after  = render(messages[:i+1])                       ends after its end-of-turn marker,
// and both must be prefixes of the whole rendering. Each is tokenized, and its common token prefix
// with the whole conversation's tokens is the span's start or end. Tokenizing the whole text once
// (not turn by turn) keeps the ids exactly those of the rendered conversation.

import type { ChatMessage, TextTokenizer } from '../formats/tokenizer.js';
import { IGNORE_INDEX, commonPrefix } from './sequence.js';

/** Checks a "messages" value; returns the messages or the reason it is not one. */
export function parseMessages(v: unknown): ChatMessage[] | string {
  if (!Array.isArray(v) || v.length === 0) return '"messages" must be a non-empty array';
  for (let i = 0; i < v.length; i++) {
    const m = v[i] as Record<string, unknown> | null;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) return `"messages"[${i}] must be an object`;
    if (typeof m.role !== 'string' || m.role === '') return `"messages"[${i}].role must be a non-empty string`;
    if (typeof m.content !== 'string') return `"messages"[${i}].content must be a string`;
  }
  if (!v.some((m) => m.role === 'assistant')) return '"messages" has no assistant message, so nothing to learn';
  return v.map((m) => ({ role: m.role, content: m.content }));
}

/** Token ids of the rendered conversation and labels that keep only the assistant messages'
 *  tokens (their end-of-turn marker included); throws an Error with the reason when the
 *  template cannot be split into turns. */
export function chatSequence(tokenizer: TextTokenizer, messages: ChatMessage[]): { ids: number[]; labels: number[] } {
  const render = (msgs: ChatMessage[], generationPrompt: boolean) => {
    try {
      return tokenizer.applyChatTemplate(msgs, generationPrompt);
    } catch (e) {
      throw new Error(`the chat template fails on the first ${msgs.length} messages: ${(e as Error).message}`);
    }
  };
  // Templates write the special tokens (BOS) themselves.
  const encode = (text: string) => tokenizer.encode(text, false);
  const whole = render(messages, false);
  const ids = encode(whole);
  const labels = new Array<number>(ids.length).fill(IGNORE_INDEX);
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const before = render(messages.slice(0, i), true);
    const after = render(messages.slice(0, i + 1), false);
    for (const [text, what] of [[before, 'before'], [after, 'through']] as const) {
      if (!whole.startsWith(text)) {
        throw new Error(`the chat template renders the conversation ${what} message ${i} differently from the whole conversation, so the assistant's tokens cannot be found`);
      }
    }
    const start = commonPrefix(ids, encode(before));
    const end = commonPrefix(ids, encode(after));
    for (let t = start; t < end; t++) labels[t] = ids[t]!;
  });
  return { ids, labels };
}
