// One line of a training data file, checked and turned into tokens. Four shapes:
//   {"text": ...}                         a document, to be packed with the others (packing.ts)
//   {"prompt": ..., "completion": ...}    one sequence, loss on the completion (and EOS) only
//   {"messages": [...]}                   one sequence, loss on the assistant messages only
//   {"token_ids": [...], "labels": [...]} one sequence, exactly as given
// Fields other than these are ignored (ids, metadata). A line that cannot be used yields the
// reason, and the caller reports it with the file and line.

import type { TextTokenizer } from '../formats/tokenizer.js';
import { chatSequence, parseMessages } from './chat-labels.js';
import { excerpt, illFormedField } from '../util/text.js';
import { type DataVocab, IGNORE_INDEX, commonPrefix } from './sequence.js';

export type LineItem =
  | { kind: 'document'; ids: number[] }
  | { kind: 'sequence'; ids: number[]; labels: number[] }
  | { kind: 'error'; error: string };

export interface LineContext extends DataVocab {
  /** null when the model has no tokenizer.json: only token_ids lines can be used. */
  tokenizer: TextTokenizer | null;
  seqLen: number;
}

const SHAPES: [string, string[]][] = [
  ['text', ['text']],
  ['prompt/completion', ['prompt', 'completion']],
  ['messages', ['messages']],
  ['token_ids', ['token_ids']],
];

export function parseDataLine(text: string, ctx: LineContext): LineItem {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return fail(`not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail('expected a JSON object');
  const o = v as Record<string, unknown>;
  const present = SHAPES.filter(([, keys]) => keys.some((k) => k in o));
  if (present.length === 0) return fail('expected "text", "prompt" and "completion", "messages", or "token_ids"');
  if (present.length > 1) return fail(`mixes the fields of ${present.map(([n]) => `"${n}"`).join(' and ')} lines; use one shape per line`);
  try {
    const [shape, keys] = present[0]!;
    // (a lone surrogate, from a "\ud83d" escape, is no character: the tokenizer trained on it as
    // U+FFFD without a word, where bytes that are not UTF-8 skip the line)
    for (const key of shape === 'token_ids' ? [] : keys) {
      const bad = illFormedField(o[key], key);
      if (bad) return fail(`"${bad.field}" ${bad.why}`);
    }
    const item = parseShape(shape, o, ctx);
    return item.kind === 'error' ? item : checkItem(item, ctx, shape === 'token_ids');
  } catch (e) {
    return fail((e as Error).message);
  }
}

function parseShape(shape: string, o: Record<string, unknown>, ctx: LineContext): LineItem {
  switch (shape) {
    case 'text': {
      if (typeof o.text !== 'string' || o.text === '') return fail('"text" must be a non-empty string');
      const ids = tokenizerFor(ctx, '"text"').encode(o.text);
      if (ctx.eosTokenId !== null && ids[ids.length - 1] !== ctx.eosTokenId) ids.push(ctx.eosTokenId);
      return { kind: 'document', ids };
    }
    case 'prompt/completion':
      return promptCompletion(o, ctx);
    case 'messages': {
      const messages = parseMessages(o.messages);
      if (typeof messages === 'string') return fail(messages);
      const tok = tokenizerFor(ctx, '"messages"');
      if (!tok.hasChatTemplate) return fail('"messages" needs a chat template, and the model has none (chat_template.jinja or tokenizer_config.json)');
      return { kind: 'sequence', ...chatSequence(tok, messages) };
    }
    default:
      return tokenIds(o);
  }
}

/** Tokenized together, so the ids are those of the whole text; the prompt's tokens are the
 *  common prefix with the prompt tokenized alone. */
function promptCompletion(o: Record<string, unknown>, ctx: LineContext): LineItem {
  if (typeof o.prompt !== 'string') return fail('"prompt" must be a string');
  if (typeof o.completion !== 'string' || o.completion === '') return fail('"completion" must be a non-empty string');
  const tok = tokenizerFor(ctx, '"prompt"/"completion"');
  const ids = tok.encode(o.prompt + o.completion);
  const promptLen = commonPrefix(ids, tok.encode(o.prompt));
  // A tokenizer that appends EOS itself has already ended the completion.
  if (ctx.eosTokenId !== null && ids[ids.length - 1] !== ctx.eosTokenId) ids.push(ctx.eosTokenId);
  return { kind: 'sequence', ids, labels: ids.map((id, t) => (t < promptLen ? IGNORE_INDEX : id)) };
}

function tokenIds(o: Record<string, unknown>): LineItem {
  const ids = o.token_ids;
  if (!Array.isArray(ids) || ids.length === 0) return fail('"token_ids" must be a non-empty array of token ids');
  const badId = ids.findIndex((x) => !Number.isSafeInteger(x) || x < 0);
  if (badId >= 0) return fail(`"token_ids"[${badId}] = ${excerpt(ids[badId])} is not a token id (a non-negative integer)`);
  if (o.labels === undefined || o.labels === null) return { kind: 'sequence', ids, labels: ids.slice() };
  const labels = o.labels;
  if (!Array.isArray(labels)) return fail('"labels" must be an array');
  if (labels.length !== ids.length) return fail(`"labels" has ${labels.length} entries, "token_ids" ${ids.length}; they must have the same length`);
  const badLabel = labels.findIndex((x) => !Number.isSafeInteger(x) || (x < 0 && x !== IGNORE_INDEX));
  if (badLabel >= 0) return fail(`"labels"[${badLabel}] = ${excerpt(labels[badLabel])} is neither a token id nor ${IGNORE_INDEX}`);
  return { kind: 'sequence', ids, labels };
}

/** Checks what every shape shares: ids inside the vocabulary, the length, some target. */
function checkItem(item: Exclude<LineItem, { kind: 'error' }>, ctx: LineContext, given: boolean): LineItem {
  const badId = item.ids.findIndex((id) => id >= ctx.vocabSize);
  if (badId >= 0) {
    return fail(given
      ? `"token_ids"[${badId}] = ${item.ids[badId]} is outside the model's vocabulary of ${ctx.vocabSize}`
      : `the tokenizer gave token id ${item.ids[badId]}, outside the model's vocabulary of ${ctx.vocabSize} (does tokenizer.json belong to this model?)`);
  }
  if (item.kind === 'document') return item;
  const badLabel = item.labels.findIndex((id) => id >= ctx.vocabSize);
  if (badLabel >= 0) return fail(`"labels"[${badLabel}] = ${item.labels[badLabel]} is outside the model's vocabulary of ${ctx.vocabSize}`);
  if (item.ids.length > ctx.seqLen) return fail(`${item.ids.length} tokens, longer than the sequence length ${ctx.seqLen} (such lines are never cut)`);
  if (item.ids.length < 2) return fail('1 token: a sequence needs at least 2 (a target is the token after another)');
  if (!item.labels.some((l, t) => t > 0 && l !== IGNORE_INDEX)) return fail('no targets: every label after the first position is -100');
  return item;
}

function tokenizerFor(ctx: LineContext, what: string): TextTokenizer {
  if (!ctx.tokenizer) throw new Error(`${what} lines need the model's tokenizer.json, which it does not have (use "token_ids")`);
  return ctx.tokenizer;
}

function fail(error: string): LineItem {
  return { kind: 'error', error };
}
