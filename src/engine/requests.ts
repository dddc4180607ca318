// Generation requests and results, and how a request's prompt becomes token ids.

import { type ChatMessage, ChatTemplateError, type TextTokenizer } from '../formats/tokenizer.js';
import type { SamplingParams } from './sampling.js';
import { excerpt, illFormedField, illFormedText } from '../util/text.js';

export interface GenerationRequest {
  id: string;
  /** Text, encoded with the model's tokenizer. */
  prompt?: string;
  /** Token ids, used as they are. */
  promptTokenIds?: number[];
  /** A conversation, rendered with the model's chat template. */
  messages?: ChatMessage[];
  /** This request's sampling, over the call's (`params.sampling`). */
  sampling?: Partial<SamplingParams>;
  /** Samples for this request, over the call's `params.n`. */
  n?: number;
  /** New tokens at most, over the call's `params.maxNewTokens`. */
  maxNewTokens?: number;
  /** With no maxNewTokens: generate until the context ends (OpenAI's chat default), which is the
   *  model's positions, or under memory limits the most positions a block of the call's shape
   *  holds; the sample then finishes with "length". */
  untilContext?: boolean;
  /** Text stop sequences (at most 4): a sample ends when its decoded text contains one; its text
   *  then ends before it (its tokenIds keep every token generated). Needs a tokenizer. */
  stop?: string[];
  /** Token ids that end a sample, over the call's `params.stopTokenIds`. */
  stopTokenIds?: number[];
  /** Each generated token's log-probability, over the call's `params.logprobs`. */
  logprobs?: boolean;
  /** The k most likely tokens (0–20) at each generated position, with their log-probabilities. */
  topLogprobs?: number;
  /** Each prompt token's log-probability given the tokens before it (the first's is null), with
   *  this many (0–20) most likely alternatives at each place: scoring a text, as evaluation
   *  suites do (OpenAI completions' `echo` with `logprobs`). */
  promptLogprobs?: number;
  /** Picks the sample's random stream with `sampling.seed` (default the id): requests that give
   *  the same key and seed draw the same tokens whatever their ids, and keys that differ, differ. */
  seedKey?: string;
}

export const REQUEST_KEYS = ['id', 'prompt', 'promptTokenIds', 'messages', 'sampling', 'n', 'maxNewTokens', 'untilContext', 'stop', 'stopTokenIds', 'logprobs', 'topLogprobs', 'promptLogprobs', 'seedKey'] as const;

/** A token and its log-probability. */
export interface TokenLogprob {
  token: number;
  logprob: number;
}

export type FinishReason = 'length' | 'stop';

/** One generated continuation. */
export interface SampleResult {
  /** Generated tokens only. */
  tokenIds: number[];
  /** Decoded text of the generated tokens, when the model has a tokenizer. */
  text?: string;
  /** Each generated token's log-probability under the model's unmodified softmax. */
  logprobs?: number[];
  /** Per generated token, the k most likely tokens (most likely first), when topLogprobs > 0. */
  topLogprobs?: TokenLogprob[][];
  finishReason: FinishReason;
}

/** A request's result: its first sample's fields, and with n > 1 every sample in `samples`. */
export interface GenerationResult extends SampleResult {
  id: string;
  /** The prompt's length in tokens (for usage accounting). */
  promptTokens: number;
  samples?: SampleResult[];
  /** With promptLogprobs: each prompt token's log-probability (null for the first). */
  promptLogprobs?: (number | null)[];
  /** With promptLogprobs > 0: the most likely tokens at each prompt place (null for the first). */
  promptTopLogprobs?: (TokenLogprob[] | null)[];
}

export interface RequestError {
  id: string;
  error: string;
}

/** How request fields are named in messages: the API's keys or a JSONL line's. */
export type RequestNames = 'api' | 'json';

/** The model's position limit, for refusing a text prompt surely past it before encoding it. */
export interface PromptPositions {
  maxPositions: number;
  /** Why the limit is below the config's positions (positionsNote), or ''. */
  note?: string;
}

/** Token ids of a request's prompt, or an error message that names what is wrong with it.
 *  With `positions`, a text (or rendered chat) prompt that encodes to at least the model's
 *  positions (minTokens) is refused before it is encoded: a 3 MB prompt took 3 s to encode and
 *  raised a job's peak to 750 MiB under --ram 100MiB, only to be refused for its length. */
export function promptIds(req: GenerationRequest, tokenizer: TextTokenizer | null, vocabSize: number, names: RequestNames = 'api',
  positions?: PromptPositions): number[] | string {
  const ids_ = names === 'api' ? 'promptTokenIds' : 'prompt_token_ids';
  const given = [req.prompt !== undefined, req.promptTokenIds !== undefined, req.messages !== undefined].filter(Boolean).length;
  if (given !== 1) return `give exactly one of "prompt", "${ids_}" or "messages"`;
  let ids: number[];
  if (req.promptTokenIds !== undefined) {
    ids = req.promptTokenIds;
    if (!Array.isArray(ids)) return `"${ids_}" must be an array of token ids`;
    const bad = ids.findIndex((t) => !Number.isSafeInteger(t) || t < 0 || t >= vocabSize);
    // (the value excerpted: a 1 MB string quoted whole was held by each refusal waiting in the
    // queue and in a job's held error lines, 629 MiB against a 176 MiB limit)
    if (bad >= 0) return `${ids_}[${bad}] = ${excerpt(ids[bad])} is not a token id in [0, ${vocabSize})`;
  } else if (req.prompt !== undefined) {
    if (typeof req.prompt !== 'string') return '"prompt" must be a string';
    // (encoded, a lone surrogate ran as U+FFFD without a word)
    const ill = illFormedText(req.prompt);
    if (ill) return `"prompt" ${ill}`;
    if (!tokenizer) return `the model has no tokenizer.json: give "${ids_}" instead of "prompt"`;
    const far = farTooLong(req.prompt, 'prompt', tokenizer, positions);
    if (far) return far;
    ids = tokenizer.encode(req.prompt);
  } else {
    if (!tokenizer) return 'the model has no tokenizer.json, so "messages" cannot be used';
    const msgs = req.messages!;
    if (!Array.isArray(msgs) || !msgs.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string')) {
      return '"messages" must be an array of {"role", "content"} strings';
    }
    const ill = illFormedField(msgs, 'messages');
    if (ill) return `"${ill.field}" ${ill.why}`;
    if (!tokenizer.hasChatTemplate) return 'the model has no chat template, so "messages" cannot be used';
    let text: string;
    try {
      text = tokenizer.applyChatTemplate(msgs);
    } catch (e) {
      if (e instanceof ChatTemplateError) return `"messages": ${e.message}`;
      throw e;
    }
    const far = farTooLong(text, 'messages', tokenizer, positions);
    if (far) return far;
    ids = tokenizer.encode(text, false);
  }
  // A tokenizer.json that does not match config.json's vocabulary makes ids the model has no row for.
  const outside = req.promptTokenIds === undefined ? ids.findIndex((t) => t >= vocabSize) : -1;
  if (outside >= 0) {
    return `"${req.prompt !== undefined ? 'prompt' : 'messages'}" encodes to token id ${ids[outside]} at ${outside}, outside the model's vocabulary of ${vocabSize}: ` +
      'tokenizer.json does not match config.json\'s vocab_size';
  }
  if (ids.length === 0) {
    const field = req.promptTokenIds !== undefined ? ids_ : req.prompt !== undefined ? 'prompt' : 'messages';
    return `"${field}" is empty: a prompt needs at least one token${field === 'prompt' ? ' (the tokenizer adds none here)' : ''}`;
  }
  return ids;
}

/** Why `text` cannot fit the model's positions, known without encoding it (at least minTokens
 *  tokens), or null; worded as the check of the encoded length words it. */
function farTooLong(text: string, field: 'prompt' | 'messages', tokenizer: TextTokenizer, positions: PromptPositions | undefined): string | null {
  if (!positions) return null;
  const max = positions.maxPositions;
  const least = tokenizer.minTokens(text);
  if (least < max) return null;
  const [what, is, does] = field === 'prompt' ? [`"prompt" (${text.length} characters)`, 'is', 'does'] : [`"messages" (${text.length} characters rendered)`, 'are', 'do'];
  return `${what} ${is} at least ${least} tokens and ${does} not fit the model's ${max} positions${positions.note ?? ''} (at most ${max - 1}, leaving room for one new token)`;
}
