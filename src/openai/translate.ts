// OpenAI request bodies to engine requests, and engine results to the bodies the endpoints return
// (/v1/completions and /v1/chat/completions, whole or as stream chunks). Knows nothing of HTTP.
//
// A body becomes one engine request per prompt (a completions `prompt` may be a list), each with
// its `n` samples. Engine requests are named by their prompt's index, and a body's answer does not
// depend on when or beside what it runs: each sample's generator is seeded by `seed` (0 when not
// given: equal requests get equal answers) and the sample index, the same for every prompt of a
// list (seedKey), so a prompt's text does not depend on its place in the list either.

import { isUtf8 } from 'node:buffer';
import type { GenerationRequest, GenerationResult, SampleResult } from '../engine/requests.js';
import { detokenizeContext } from '../engine/sequence.js';
import { type ChatMessage, ChatTemplateError, type TextTokenizer } from '../formats/tokenizer.js';
import { invalid, notFound } from './errors.js';
import { MAX_SEQUENCES } from './schemas.js';
import type { Endpoint } from './validate.js';

/** The model a server or batch job answers for. */
export interface ServedModel {
  /** The name bodies must give as `model`. */
  id: string;
  maxPositions: number;
  /** Why maxPositions is less than the config's max_position_embeddings (models/config.ts positionsNote), or "". */
  positionsNote?: string;
  vocabSize: number;
  tokenizer: TextTokenizer | null;
  /** The most positions a request may take within the server's memory limits (fewer than
   *  maxPositions where its block holds fewer; 0 when unknown): a prompt surely longer is refused
   *  before it is encoded, and a refusal for the limits names the field at fault. */
  positionsUnderLimits?: () => number;
  /** Why a request of `prompt` tokens and up to `newTokens` new ones (null: until the context
   *  ends) is too large for the server's memory limits, in the engine's words; null when it fits. */
  refusalFor?: (prompt: number, newTokens: number | null) => string | null;
  /** Unix seconds, for /v1/models. */
  created: number;
}

/** A validated body, ready to submit. */
export interface Prepared {
  endpoint: Endpoint;
  model: string;
  /** One per prompt, with token ids already made (their length is the prompt's usage). */
  requests: (GenerationRequest & { promptTokenIds: number[] })[];
  n: number;
  /** How many most likely tokens to report per token, or null when no logprobs were asked. */
  logprobs: number | null;
  stream: boolean;
  includeUsage: boolean;
  stop: string[];
  /** The field that set the new tokens' limit ('max_completion_tokens' or 'max_tokens'), or null
   *  when none did (the endpoint's default): a request too long for the limits blames it. */
  maxParam: 'max_tokens' | 'max_completion_tokens' | null;
  /** Completions' `echo`: each prompt's text, which its choices' text starts with (and with
   *  logprobs, each prompt token's log-probability before the completion's); null without. */
  echo: string[] | null;
  /** With echo and logprobs: each prompt's tokens' pieces in context (tokenPiece), made once per
   *  prompt; the echoed text is then their concatenation, so that the tokens join to it and the
   *  offsets point into it even where a text does not survive encoding ("<s>" typed in a prompt
   *  is the BOS token, whose piece is ""). */
  echoPieces: string[][] | null;
  /** max_tokens 0 (with echo): the engine's one new token (its prompt's last logits give it at
   *  no cost) is left out of the answer. */
  zero: boolean;
}

type Body = Record<string, unknown>;

/** Completions' default when `max_tokens` is absent (OpenAI's); chat runs to the context's end. */
const COMPLETION_MAX_TOKENS = 16;

/** Turns a body that passed its schema into engine requests; throws ApiError for what the schema
 *  cannot see (an unknown model, a token id past the vocabulary, a prompt longer than the context,
 *  more than MAX_SEQUENCES prompts × n). */
export function prepare(endpoint: Endpoint, body: Body, model: ServedModel): Prepared {
  const steps = preparing(endpoint, body, model);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** prepare(), giving the event loop a turn every YIELD_MS of work: a list of up to MAX_PROMPTS
 *  text prompts in a 4 MiB body takes seconds to encode (15 s for 3.6 MB of text with the Llama 2
 *  tokenizer), and the server answered nothing else meanwhile (its decode steps stalled too). */
export async function prepareAsync(endpoint: Endpoint, body: Body, model: ServedModel): Promise<Prepared> {
  const steps = preparing(endpoint, body, model);
  let since = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - since >= YIELD_MS) {
      await new Promise((resolve) => setImmediate(resolve));
      since = performance.now();
    }
  }
}

/** Work prepareAsync does between two turns of the event loop. */
const YIELD_MS = 10;

/** The completions a body asks for (its prompts × n), read as leniently as a body not yet checked
 *  needs (a value of the wrong type counts as one): what it holds of --max-queue or of a batch's
 *  lines in flight. */
export function sequencesOf(endpoint: Endpoint, body: unknown): number {
  const b = (typeof body === 'object' && body !== null ? body : {}) as Body;
  const n = Number.isSafeInteger(b.n) && (b.n as number) > 0 ? (b.n as number) : 1;
  return promptCount(endpoint, b) * n;
}

/** Prompts of a body: a completions `prompt` list's length (a string or one token-id list: 1). */
function promptCount(endpoint: Endpoint, b: Body): number {
  if (endpoint === '/v1/chat/completions' || !Array.isArray(b.prompt)) return 1;
  return typeof b.prompt[0] === 'number' ? 1 : Math.max(1, b.prompt.length);
}

/** Refuses a body that asks for more than `most` completions (prompts × n), before any is encoded;
 *  `limit` says what the limit is (`one request may ask for at most 2048`). The prompt list is
 *  blamed when there is one (it is what to split), else n. */
export function refuseSequencesPast(endpoint: Endpoint, body: Body, most: number, limit: string): void {
  const count = sequencesOf(endpoint, body);
  if (count <= most) return;
  const prompts = promptCount(endpoint, body);
  const n = count / prompts;
  throw invalid(`This request asks for ${count} completions (${prompts} prompt${prompts > 1 ? 's' : ''} × n ${n}); ${limit}: ` +
    `${prompts > 1 ? 'send fewer prompts in each request' : 'ask for a smaller n'}`, prompts > 1 ? 'prompt' : 'n');
}

function* preparing(endpoint: Endpoint, body: Body, model: ServedModel): Generator<void, Prepared> {
  if (body.model !== model.id) throw notFound(`The model '${String(body.model)}' does not exist (this server has '${model.id}')`, 'model', 'model_not_found');
  const chat = endpoint === '/v1/chat/completions';
  const n = (body.n as number | null) ?? 1;
  if (!chat && body.best_of != null && body.best_of !== n) throw invalid('best_of must equal n (tierlm returns every sample)', 'best_of');
  // (a body's answers are held until it is answered, and a batch line's count against its job's
  // lines in flight: a bound on them is a bound on the RAM they take)
  refuseSequencesPast(endpoint, body, MAX_SEQUENCES, `one request may ask for at most ${MAX_SEQUENCES}`);
  const prompts = chat ? [chatPrompt(body.messages as Body[], model)] : yield* completionPrompts(body.prompt, model);
  const stop = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : (body.stop as string[]);
  const logprobs = chat ? (body.logprobs ? (body.top_logprobs as number | null) ?? 0 : null) : (body.logprobs as number | null) ?? null;
  if (chat && body.top_logprobs != null && !body.logprobs) throw invalid('top_logprobs needs logprobs: true', 'top_logprobs');
  if (body.stream_options != null && body.stream !== true) throw invalid('stream_options is only allowed when stream is true', 'stream_options');
  const maxTokens = (chat ? (body.max_completion_tokens ?? body.max_tokens) : body.max_tokens) as number | null | undefined;
  const echo = !chat && body.echo === true;
  if (maxTokens === 0 && !echo) throw invalid('max_tokens 0 asks for no new tokens, which answers nothing without echo: true (the prompt, scored with logprobs)', 'max_tokens');
  const sampling = Object.fromEntries(([
    ['temperature', body.temperature], ['topP', body.top_p], ['seed', body.seed], ['topK', body.top_k], ['minP', body.min_p],
    ['repetitionPenalty', body.repetition_penalty], ['presencePenalty', body.presence_penalty], ['frequencyPenalty', body.frequency_penalty],
  ] as const).filter(([, v]) => v != null));
  const requests = prompts.map((ids, i) => {
    if (ids.length >= model.maxPositions) {
      throw invalid(`This model's maximum context length is ${model.maxPositions} tokens${model.positionsNote ?? ''}; the ${chat ? 'messages' : `prompt${prompts.length > 1 ? ` [${i}]` : ''}`} ` +
        `${chat ? 'are' : 'is'} ${ids.length} tokens, ${maxTokens === 0 ? 'and scoring it takes one position more (at most ' + (model.maxPositions - 1) + ' tokens)' : 'leaving none to generate'}`,
      chat ? 'messages' : 'prompt', 'context_length_exceeded');
    }
    // As OpenAI and vLLM: an explicit max_tokens past the context is refused, not cut short.
    if (maxTokens != null && ids.length + maxTokens > model.maxPositions) {
      throw invalid(`This model's maximum context length is ${model.maxPositions} tokens${model.positionsNote ?? ''}; you requested ${ids.length + maxTokens} tokens ` +
        `(${ids.length} in the ${chat ? 'messages' : `prompt${prompts.length > 1 ? ` [${i}]` : ''}`}, ${maxTokens} in the completion)`,
        chat && body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens', 'context_length_exceeded');
    }
    // Every prompt of a list has the first's stream (as vLLM seeds them): a prompt gives the same
    // text with a seed alone or at any place in a list; its samples still differ by index.
    const r: Prepared['requests'][number] = {
      id: String(i), seedKey: '0', promptTokenIds: ids, n,
      sampling: { temperature: 1, ...sampling },
    };
    // Chat's default is the rest of the context: as many positions as the server can give it.
    if (maxTokens != null) r.maxNewTokens = Math.max(1, maxTokens);
    else if (chat) r.untilContext = true;
    else r.maxNewTokens = COMPLETION_MAX_TOKENS;
    if (stop.length > 0) r.stop = stop;
    if (logprobs !== null) Object.assign(r, { logprobs: true, topLogprobs: logprobs });
    if (echo && logprobs !== null) r.promptLogprobs = logprobs;
    return r;
  });
  const maxParam = maxTokens == null ? null : chat && body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  // Too large for the memory limits: refused now, not once it reaches the queue's front (every
  // request ahead of it admitted first; a stream's heartbeat had opened it long before). After
  // every prompt's check against the context, which a later prompt of a list may fail first.
  for (const [i, r] of requests.entries()) {
    const refusal = model.refusalFor?.(r.promptTokenIds.length, r.untilContext ? null : r.maxNewTokens!);
    if (refusal) {
      const which = requests.length > 1 ? `prompt [${i}]: ` : '';
      throw invalid(which + refusal, limitsParamOf(endpoint, maxParam, r.promptTokenIds.length, model), 'context_length_exceeded');
    }
  }
  let echoed: string[] | null = null;
  let echoPieces: string[][] | null = null;
  if (echo && logprobs !== null) {
    echoPieces = [];
    for (const ids of prompts) {
      echoPieces.push(ids.map((_, j) => tokenPiece(model, ids, j)));
      yield;
    }
    echoed = model.tokenizer ? echoPieces.map((p) => p.join('')) : prompts.map(() => '');
  } else if (echo) echoed = prompts.map((ids, i) => promptText(body.prompt, i, ids, model));
  const streamOptions = body.stream_options as { include_usage?: boolean } | null | undefined;
  return { endpoint, model: model.id, requests, n, logprobs, stream: body.stream === true, includeUsage: streamOptions?.include_usage === true, stop, maxParam,
    echo: echoed, echoPieces, zero: maxTokens === 0 };
}

/** The text `echo` repeats of prompt i: the body's own text, or its token ids decoded (as vLLM
 *  does; "" where the model has no tokenizer). */
function promptText(prompt: unknown, i: number, ids: readonly number[], model: ServedModel): string {
  if (typeof prompt === 'string') return prompt;
  if (Array.isArray(prompt) && typeof prompt[i] === 'string') return prompt[i] as string;
  return model.tokenizer ? model.tokenizer.decode([...ids]) : '';
}

/** A completions body's prompts as token ids; yields after each text prompt it encodes. */
function* completionPrompts(prompt: unknown, model: ServedModel): Generator<void, number[][]> {
  const list: (string | number[])[] = typeof prompt === 'string' ? [prompt]
    : typeof (prompt as unknown[])[0] === 'number' ? [prompt as number[]] : (prompt as (string | number[])[]);
  const out: number[][] = [];
  for (const [i, p] of list.entries()) {
    const where = list.length > 1 ? `prompt[${i}]` : 'prompt';
    if (typeof p !== 'string') {
      const bad = p.findIndex((t) => t >= model.vocabSize);
      if (bad >= 0) throw invalid(`${where}[${bad}] = ${p[bad]} is not a token id in [0, ${model.vocabSize})`, 'prompt');
      out.push(p);
      continue;
    }
    if (!model.tokenizer) throw invalid('the model has no tokenizer.json: give the prompt as token ids', 'prompt');
    refuseFarTooLong(p, model, where, 'prompt');
    const ids = model.tokenizer.encode(p);
    if (ids.length === 0) throw invalid(`${where} is empty`, 'prompt');
    out.push(ids);
    yield;
  }
  return out;
}

function chatPrompt(messages: Body[], model: ServedModel): number[] {
  if (!model.tokenizer?.hasChatTemplate) throw invalid('the model has no chat template (chat_template.jinja or tokenizer_config.json), so chat completions cannot be used', 'messages');
  const msgs: ChatMessage[] = messages.map((m, i) => {
    // As OpenAI: content may be null on an assistant message only (a turn of tool calls, echoed
    // back in the history by SDKs). The template sees "" there, as vLLM gives it: its templates
    // test or trim content as a string, and an assistant turn without text is an empty one.
    if (m.content === null && m.role !== 'assistant') {
      throw invalid(`Invalid value for 'messages[${i}].content': must be a string or an array of {"type": "text", "text"} parts ` +
        `(null only on an assistant message, not a ${String(m.role)} one).`, `messages[${i}].content`, 'invalid_value');
    }
    return {
      // Templates know system, user and assistant; OpenAI's newer 'developer' is a system message.
      role: m.role === 'developer' ? 'system' : (m.role as string),
      content: m.content === null ? '' : typeof m.content === 'string' ? m.content : (m.content as { text: string }[]).map((p) => p.text).join(''),
      ...(typeof m.name === 'string' ? { name: m.name } : {}),
    };
  });
  let text: string;
  try {
    text = model.tokenizer.applyChatTemplate(msgs);
  } catch (e) {
    if (e instanceof ChatTemplateError) throw invalid(e.message, 'messages');
    throw e;
  }
  refuseFarTooLong(text, model, 'the messages', 'messages');
  return model.tokenizer.encode(text, false);
}

/** Refuses a text that is surely longer than the context before it is encoded (minTokens): the
 *  model's, or the fewer positions the server's memory limits hold (a 3.5 MB prompt to a model of
 *  131072 positions under --ram was encoded whole, 40 s and 1.9 GB, to be refused after). */
function refuseFarTooLong(text: string, model: ServedModel, what: string, param: string): void {
  const least = model.tokenizer!.minTokens(text);
  const limits = model.positionsUnderLimits?.() ?? 0;
  // (a prompt of `least` tokens needs least + 1 positions; 0: no bound known, the engine answers)
  const bound = limits > 0 && limits < model.maxPositions ? limits : model.maxPositions;
  if (least >= bound) {
    const context = bound < model.maxPositions ? `The server's memory limits hold at most ${bound} positions a request (the model's context is ${model.maxPositions} tokens)`
      : `This model's maximum context length is ${model.maxPositions} tokens${model.positionsNote ?? ''}`;
    throw invalid(`${context}; ${what} (${text.length} characters) ${what === 'the messages' ? 'are' : 'is'} at least ${least} tokens`, param, 'context_length_exceeded');
  }
}

/** The field a request refused for the memory limits blames: the prompt when it alone needs more
 *  positions than they hold (or no limit on new tokens was given), else the field that set that limit. */
export function limitsParam(p: Prepared, prompt: number, model: ServedModel): string {
  return limitsParamOf(p.endpoint, p.maxParam, p.requests[prompt]!.promptTokenIds.length, model);
}

function limitsParamOf(endpoint: Endpoint, maxParam: Prepared['maxParam'], promptTokens: number, model: ServedModel): string {
  const promptParam = endpoint === '/v1/chat/completions' ? 'messages' : 'prompt';
  const limits = model.positionsUnderLimits?.() ?? 0;
  if (maxParam === null || (limits > 0 && promptTokens >= limits)) return promptParam;
  return maxParam;
}

/** Each choice's place in the response: prompt i's sample j is choice i·n + j (OpenAI's order). */
const choiceIndex = (p: Prepared, prompt: number, sample: number) => prompt * p.n + sample;

/** A result's samples as the answer shows them: with max_tokens 0, none of the token the engine
 *  generated. */
const samplesOf = (p: Prepared, r: GenerationResult): SampleResult[] =>
  (r.samples ?? [r]).map((s) => (p.zero ? { tokenIds: [], ...(s.text !== undefined ? { text: '' } : {}), logprobs: [], topLogprobs: [], finishReason: 'length' } : s));

export function usage(p: Prepared, results: GenerationResult[]) {
  const prompt = p.requests.reduce((s, r) => s + r.promptTokenIds.length, 0);
  const completion = results.reduce((s, r) => s + samplesOf(p, r).reduce((t, x) => t + x.tokenIds.length, 0), 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** Tokens decoded before a token to find its text in context. */
const PIECE_CONTEXT = 8;

/**
 * The text token i of a sample adds (or, with `alt`, what that token would have added there):
 * the decoding of the tokens up to it less that of the tokens before it, over a window of
 * PIECE_CONTEXT tokens. A token decoded alone loses what depends on its neighbours (the leading
 * space SentencePiece strips at a text's start), so the pieces did not add up to the text. An
 * unfinished multi-byte character (U+FFFD at the end) goes to the token that completes it.
 * `token_id:N` when the model has no tokenizer.
 */
export function tokenPiece(model: ServedModel, ids: readonly number[], i: number, alt?: number, context: readonly number[] = []): string {
  const t = model.tokenizer;
  const id = alt ?? ids[i]!;
  if (!t) return `token_id:${id}`;
  // The prompt's last tokens come first, as the engine decodes the sample's text (sequence.ts).
  const all = [...context, ...ids.slice(0, i)];
  const at = all.length;
  const from = Math.max(0, at - PIECE_CONTEXT);
  const last = alt === undefined && i === ids.length - 1;
  const unfinished = (s: string, keep: boolean) => (keep ? s : s.replace(/\ufffd+$/, ''));
  const before = at > from ? unfinished(t.decode(all.slice(from, at)), false) : '';
  const upto = unfinished(t.decode([...all.slice(from, at), id]), last);
  return upto.slice(commonLength(before, upto));
}

/** `bytes` as text, each byte that is not part of a whole UTF-8 character written `\xNN`. */
export function escapeBytes(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i]!;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    const char = n > 0 && i + n <= bytes.length ? bytes.subarray(i, i + n) : null;
    if (char && isUtf8(char)) {
      out += Buffer.from(char).toString('utf8');
      i += n;
    } else {
      out += `\\x${b.toString(16).padStart(2, '0')}`;
      i++;
    }
  }
  return out;
}

/** Length of the common start of two strings. */
function commonLength(a: string, b: string): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/** The prompt tokens the engine decodes a sample's text after (decoded once per sample, not per token). */
function promptContext(model: ServedModel, prompt: readonly number[]): number[] {
  return model.tokenizer ? detokenizeContext(model.tokenizer, prompt)[0] : [];
}

/**
 * Where a stop sequence cut a sample's text short of its tokens (its tokenIds keep every token
 * generated, the one carrying the stop sequence too), the tokens the returned text covers: those
 * starting before the cut, the last one's share cut there (`cut(i, keep)` its first `keep`
 * units). `lengths` are the tokens' lengths, `textLength` the text's, in the same units. The
 * tokens then add up to exactly the text. Null when nothing is cut.
 */
function coveredTokens<T>(lengths: readonly number[], textLength: number, all: readonly T[], cut: (i: number, keep: number) => T): T[] | null {
  if (lengths.reduce((a, b) => a + b, 0) <= textLength) return null;
  const kept: T[] = [];
  for (let i = 0, at = 0; i < lengths.length && at < textLength; at += lengths[i]!, i++) {
    kept.push(at + lengths[i]! > textLength ? cut(i, textLength - at) : all[i]!);
  }
  return kept;
}

/**
 * How completions' logprobs name token `alt` (or the sample's own) at place i: `bytes:\xNN…` for
 * a token whose bytes are not whole UTF-8 characters (OpenAI's form for byte tokens), else its
 * piece. By their pieces, byte-fallback tokens were all "" where they end inside a character, and
 * the alternatives of such a place overwrote each other in top_logprobs (one entry of 2, not the
 * chosen token's logprob).
 */
function completionToken(model: ServedModel, ids: readonly number[], i: number, alt: number | undefined, context: readonly number[]): string {
  return byteName(model, alt ?? ids[i]!) ?? tokenPiece(model, ids, i, alt, context);
}

/** completionToken's `bytes:\xNN…` name of a token that holds no whole UTF-8 character, or null
 *  (then its piece names it: where the piece is known, it is not decoded again). */
function byteName(model: ServedModel, token: number): string | null {
  const bytes = model.tokenizer?.tokenBytes(token);
  return bytes && !isUtf8(bytes) ? `bytes:${escapeBytes(bytes)}` : null;
}

/** Completions' logprobs of a choice: with echo, the prompt's tokens first (the first with null
 *  for its logprob and alternatives, as OpenAI), then the completion's, whose offsets follow the
 *  prompt's text. */
function choiceLogprobs(model: ServedModel, p: Prepared, i: number, r: GenerationResult, s: SampleResult) {
  const ids = p.requests[i]!.promptTokenIds;
  const gen = completionLogprobs(model, s, p.logprobs!, ids);
  if (!p.echoPieces) return gen;
  const pieces = p.echoPieces[i]!;
  const prompt = promptLogprobs(model, ids, pieces, r, p.logprobs!);
  // (after the prompt's pieces, which are its echoed text; without a tokenizer the text is "" and
  // the pieces are `token_id:N` names, as the completion's offsets count them)
  const shift = pieces.reduce((n, x) => n + x.length, 0);
  return {
    tokens: [...prompt.tokens, ...gen.tokens],
    token_logprobs: [...prompt.token_logprobs, ...gen.token_logprobs],
    top_logprobs: prompt.top_logprobs && gen.top_logprobs ? [...prompt.top_logprobs, ...gen.top_logprobs] : null,
    text_offset: [...prompt.text_offset, ...gen.text_offset.map((o) => o + shift)],
  };
}

/** The prompt's part of echoed logprobs: each token named as completions name them, in the
 *  context of the prompt's tokens before it, at the offset its piece starts. */
function promptLogprobs(model: ServedModel, ids: readonly number[], pieces: readonly string[], r: GenerationResult, top: number) {
  const names = ids.map((id, i) => byteName(model, id) ?? pieces[i]!);
  const offsets: number[] = [];
  pieces.reduce((at, x) => (offsets.push(at), at + x.length), 0);
  const lps = r.promptLogprobs ?? [];
  const tops = r.promptTopLogprobs ?? [];
  return {
    tokens: names,
    token_logprobs: ids.map((_, i) => lps[i] ?? null),
    top_logprobs: top > 0 ? ids.map((_, i) => (tops[i] ? topEntries(tops[i]!, ids[i]!, names[i]!, (x) => completionToken(model, ids, i, x, [])) : null)) : null,
    text_offset: offsets,
  };
}

function completionLogprobs(model: ServedModel, s: SampleResult, top: number, prompt: readonly number[]) {
  const context = promptContext(model, prompt);
  const pieces = s.tokenIds.map((_, i) => tokenPiece(model, s.tokenIds, i, undefined, context));
  const names = s.tokenIds.map((id, i) => byteName(model, id) ?? pieces[i]!);
  // The text's tokens and offsets by their pieces, which add up to the text; each named as in
  // top_logprobs, but for one a stop sequence cut, named by the part of its piece kept.
  const lengths = pieces.map((t) => t.length);
  const tokens = s.text === undefined ? names : coveredTokens(lengths, s.text.length, names, (i, keep) => pieces[i]!.slice(0, keep)) ?? names;
  const offsets: number[] = [];
  lengths.slice(0, tokens.length).reduce((at, n) => (offsets.push(at), at + n), 0);
  return {
    tokens,
    token_logprobs: (s.logprobs ?? []).slice(0, tokens.length),
    top_logprobs: top > 0 ? (s.topLogprobs ?? []).slice(0, tokens.length).map((list, i) => topEntries(list, s.tokenIds[i]!, names[i]!, (x) => completionToken(model, s.tokenIds, i, x, context))) : null,
    text_offset: offsets,
  };
}

/**
 * A place's alternatives as completions' map of token to logprob. Two tokens named alike (their
 * pieces equal in context) keep the likelier's logprob, and the place's own token's name (`chosen`, as
 * in `tokens`, whole where a stop sequence cut it there: the map lists the model's tokens) has its
 * own: the map never says another logprob for the token the text holds.
 */
function topEntries(list: readonly { token: number; logprob: number }[], token: number, chosen: string, name: (token: number) => string): Record<string, number> {
  // (a Map: a token named "__proto__" is a key like any other)
  const map = new Map<string, number>();
  for (const x of list) {
    const key = x.token === token ? chosen : name(x.token);
    const had = map.get(key);
    if (had === undefined || x.logprob > had) map.set(key, x.logprob);
  }
  const own = list.find((x) => x.token === token);
  if (own) map.set(chosen, own.logprob);
  return Object.fromEntries(map);
}

function chatLogprobs(model: ServedModel, s: SampleResult, prompt: readonly number[]) {
  const context = promptContext(model, prompt);
  const pieces = s.tokenIds.map((_, i) => tokenPiece(model, s.tokenIds, i, undefined, context));
  const raw = ownBytes(model, s.tokenIds, pieces);
  const entry = (i: number, token: number | undefined, logprob: number) => {
    // A token holding part of a multi-byte character has its own bytes (OpenAI's), shown as
    // `\xNN` in its string; the bytes of a sample's tokens add up to its text's.
    const piece = () => Buffer.from(token === undefined ? pieces[i]! : tokenPiece(model, s.tokenIds, i, token, context), 'utf8');
    const bytes = !raw ? piece() : token === undefined ? raw[i]! : model.tokenizer!.tokenBytes(token) ?? piece();
    return { token: isUtf8(bytes) ? bytes.toString('utf8') : escapeBytes(bytes), logprob, bytes: [...bytes] };
  };
  const all = s.tokenIds.map((_, i) => ({ ...entry(i, undefined, s.logprobs?.[i] ?? 0), top_logprobs: (s.topLogprobs?.[i] ?? []).map((x) => entry(i, x.token, x.logprob)) }));
  if (s.text === undefined || s.text.length >= pieces.join('').length) return { content: all, refusal: null };
  // Cut in bytes: the token straddling a stop sequence keeps the bytes before it (its logprob and
  // alternatives as they were), shown as `\xNN` where they end inside a character.
  const cut = (i: number, keep: number) => {
    const bytes = all[i]!.bytes.slice(0, keep);
    const b = Buffer.from(bytes);
    return { ...all[i]!, token: isUtf8(b) ? b.toString('utf8') : escapeBytes(b), bytes };
  };
  const kept = raw ? keptBytes(Buffer.concat(raw), s.text) : Buffer.byteLength(s.text, 'utf8');
  return { content: coveredTokens(all.map((e) => e.bytes.length), kept, all, cut) ?? all, refusal: null };
}

/**
 * Each token's bytes from its vocabulary entry (tokenBytes; none for a special token, which
 * decoding skips), when together they decode to the sample's text; else null (the entries then
 * take their pieces' bytes). Not the pieces' bytes alone: a lone invalid byte is U+FFFD in the
 * text, in the piece of the token after it (tokenPiece), and was counted twice, as its byte and as
 * the U+FFFD's three.
 */
function ownBytes(model: ServedModel, ids: readonly number[], pieces: readonly string[]): Buffer[] | null {
  const t = model.tokenizer;
  if (!t) return null;
  const raw = ids.map((id, i) => t.tokenBytes(id) ?? (pieces[i] === '' ? Buffer.alloc(0) : null));
  if (raw.some((b) => b === null)) return null;
  return Buffer.concat(raw as Buffer[]).toString('utf8') === pieces.join('') ? (raw as Buffer[]) : null;
}

/** How many of `bytes` make `text`, a start of what they decode to (UTF-8, as Buffer decodes):
 *  neither the bytes of a character past it nor those of one left unfinished where it ends. */
function keptBytes(bytes: Buffer, text: string): number {
  // A byte at a time, the decoder gives a character when it ends (or is found invalid, maybe with
  // the next): the bytes up to text.length characters, less at most a character's begun after them.
  const d = new TextDecoder();
  let out = 0;
  let at = 0;
  while (at < bytes.length && out < text.length) out += d.decode(bytes.subarray(at, ++at), { stream: true }).length;
  for (let m = at; m >= Math.max(0, at - 4); m--) if (bytes.subarray(0, m).toString('utf8') === text) return m;
  return at;
}

/** The whole response body of a finished request. */
export function responseBody(p: Prepared, results: GenerationResult[], id: string, created: number, model: ServedModel): Record<string, unknown> {
  const chat = p.endpoint === '/v1/chat/completions';
  const choices = results.flatMap((r, i) => samplesOf(p, r).map((s, j) => {
    const index = choiceIndex(p, i, j);
    if (chat) {
      return { index, message: { role: 'assistant', content: s.text ?? '', refusal: null }, logprobs: p.logprobs !== null ? chatLogprobs(model, s, p.requests[i]!.promptTokenIds) : null, finish_reason: s.finishReason };
    }
    return { index, text: (p.echo?.[i] ?? '') + (s.text ?? ''), logprobs: p.logprobs !== null ? choiceLogprobs(model, p, i, r, s) : null, finish_reason: s.finishReason };
  }));
  return { id, object: chat ? 'chat.completion' : 'text_completion', created, model: p.model, choices, usage: usage(p, results), system_fingerprint: null };
}

/**
 * Stream chunks of one request, as its tokens come. Text is sent only once no stop sequence can
 * still begin inside it (the engine ends a sample when its text contains a stop sequence, and
 * the returned text ends before it), so the chunks add up to exactly the whole response's text.
 */
export class ChunkStream {
  private readonly sent = new Map<number, string>();
  private readonly seen = new Map<number, string>();

  constructor(private readonly p: Prepared, private readonly id: string, private readonly created: number,
    private readonly send: (chunk: Record<string, unknown>) => void) {}

  private chunk(choice: Record<string, unknown>): void {
    const chat = this.p.endpoint === '/v1/chat/completions';
    const c: Record<string, unknown> = { id: this.id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: this.created, model: this.p.model, choices: [choice] };
    if (chat) c.system_fingerprint = null;
    if (this.p.includeUsage) c.usage = null;
    this.send(c);
  }

  private delta(index: number, text: string, finish: string | null, logprobs: unknown = null): void {
    const chat = this.p.endpoint === '/v1/chat/completions';
    const first = !this.sent.has(index);
    const before = this.sent.get(index) ?? '';
    this.sent.set(index, before + text);
    if (chat) {
      const delta: Record<string, unknown> = first ? { role: 'assistant', content: text } : text ? { content: text } : {};
      this.chunk({ index, delta, logprobs, finish_reason: finish });
    } else this.chunk({ index, text, logprobs, finish_reason: finish });
  }

  /** The engine's onToken: `text` is what the token adds to the sample's decoded text (sent after
   *  the prompt's with echo; never with max_tokens 0, whose token is not part of the answer). */
  token(prompt: number, sample: number, text: string): void {
    if (this.p.zero) return;
    const index = choiceIndex(this.p, prompt, sample);
    const all = (this.seen.get(index) ?? '') + text;
    this.seen.set(index, all);
    const sent = this.sent.get(index) ?? '';
    if (this.p.stop.some((s) => all.includes(s))) return;
    const safe = (this.p.echo?.[prompt] ?? '') + all.slice(0, all.length - this.heldBack(all));
    if (safe.length > sent.length) this.delta(index, safe.slice(sent.length), null);
  }

  /** Characters at the end of `text` that could be the start of a stop sequence. */
  private heldBack(text: string): number {
    let keep = 0;
    for (const s of this.p.stop) {
      for (let k = Math.min(s.length - 1, text.length); k > keep; k--) {
        if (text.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    return keep;
  }

  /** A prompt's result: each sample's unsent text, its logprobs and its finish reason. */
  finish(prompt: number, r: GenerationResult, model: ServedModel): void {
    samplesOf(this.p, r).forEach((s, j) => {
      const index = choiceIndex(this.p, prompt, j);
      const text = (this.p.echo?.[prompt] ?? '') + (s.text ?? '');
      const sent = this.sent.get(index) ?? '';
      // Sent text is a prefix of the final text (stop sequences are held back above, and text is
      // decoded without the non-incremental cleanup). Were it not, what follows the common part
      // is sent, never the whole text again (the client would hold it twice).
      const rest = text.slice(commonLength(sent, text));
      const chat = this.p.endpoint === '/v1/chat/completions';
      const ids = this.p.requests[prompt]!.promptTokenIds;
      const logprobs = this.p.logprobs === null ? null : chat ? chatLogprobs(model, s, ids) : choiceLogprobs(model, this.p, prompt, r, s);
      this.delta(index, rest, s.finishReason, logprobs);
    });
  }

  /** The last chunk with stream_options.include_usage: no choices, the request's usage. */
  usage(results: GenerationResult[]): void {
    const chat = this.p.endpoint === '/v1/chat/completions';
    const c: Record<string, unknown> = { id: this.id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: this.created, model: this.p.model, choices: [], usage: usage(this.p, results) };
    if (chat) c.system_fingerprint = null;
    this.send(c);
  }
}
