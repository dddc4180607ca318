// One validator per option, shared by the API, the CLI's flags, policy files and the JSONL request
// fields, so every surface accepts the same values and says what it wants in the user's own name.

import { excerpt } from './text.js';

export interface Rule {
  /** The API's name: a GenerateParams key, `sampling.<key>` or a LoadOptions key. */
  api: string;
  flag: string;
  /** The key in a JSONL request line, where a request may set it. */
  json?: string;
  ok: (v: number) => boolean;
  want: string;
}

/** Samples a request may ask for at most. */
export const MAX_SAMPLES = 128;

/** Compute threads the native thread pool takes at most (native/napi). */
export const MAX_THREADS = 1024;

/** Alternatives a request may ask for at each place (OpenAI's top_logprobs bound). */
export const MAX_TOP_LOGPROBS = 20;

/** Whether `v` is a count of alternatives a place may list: an integer in [0, MAX_TOP_LOGPROBS]. */
export function isTopCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= MAX_TOP_LOGPROBS;
}

const int = (min: number) => (v: number) => Number.isSafeInteger(v) && v >= min;
const finite = (lo: number, hi: number) => (v: number) => Number.isFinite(v) && v >= lo && v <= hi;

export const RULES = {
  maxNewTokens: { api: 'maxNewTokens', flag: '--max-new-tokens', json: 'max_new_tokens', ok: int(1), want: 'an integer >= 1' },
  // (OpenAI's bound: a request's samples are made up front, so n = 1e9 ran out of memory)
  n: { api: 'n', flag: '--n', json: 'n', ok: (v) => int(1)(v) && v <= MAX_SAMPLES, want: `an integer in [1, ${MAX_SAMPLES}]` },
  temperature: { api: 'sampling.temperature', flag: '--temperature', json: 'temperature', ok: finite(0, Infinity), want: 'a number >= 0 (0 = greedy)' },
  topK: { api: 'sampling.topK', flag: '--top-k', json: 'top_k', ok: int(0), want: 'an integer >= 0 (0 = no cut)' },
  topP: { api: 'sampling.topP', flag: '--top-p', json: 'top_p', ok: (v) => v > 0 && v <= 1, want: 'a number in (0, 1]' },
  minP: { api: 'sampling.minP', flag: '--min-p', json: 'min_p', ok: finite(0, 1), want: 'a number in [0, 1]' },
  seed: { api: 'sampling.seed', flag: '--seed', json: 'seed', ok: int(0), want: 'an integer >= 0' },
  repetitionPenalty: { api: 'sampling.repetitionPenalty', flag: '--repetition-penalty', json: 'repetition_penalty', ok: (v) => Number.isFinite(v) && v > 0, want: 'a number > 0 (1 = none)' },
  presencePenalty: { api: 'sampling.presencePenalty', flag: '--presence-penalty', json: 'presence_penalty', ok: finite(-2, 2), want: 'a number in [-2, 2]' },
  frequencyPenalty: { api: 'sampling.frequencyPenalty', flag: '--frequency-penalty', json: 'frequency_penalty', ok: finite(-2, 2), want: 'a number in [-2, 2]' },
  gpuBatchSize: { api: 'policy.gpuBatchSize', flag: '--gpu-batch-size', ok: int(1), want: 'an integer >= 1' },
  attnSparsity: { api: 'policy.attnSparsity', flag: '--attn-sparsity', ok: (v) => v > 0 && v <= 1, want: 'a number in (0, 1]' },
  batchSize: { api: 'batchSize', flag: '--batch-size', ok: int(1), want: 'an integer >= 1' },
  numGpuBatches: { api: 'numGpuBatches', flag: '--num-gpu-batches', ok: int(1), want: 'an integer >= 1' },
  // (the addon's own bound: past it the addon refused with a message naming neither the flag nor the value as written)
  threads: { api: 'threads', flag: '--threads', ok: (v) => int(1)(v) && v <= MAX_THREADS, want: `an integer in [1, ${MAX_THREADS}]` },
  lr: { api: 'lr', flag: '--lr', ok: finite(0, Infinity), want: 'a finite number >= 0' },
  weightDecay: { api: 'weightDecay', flag: '--weight-decay', ok: finite(0, Infinity), want: 'a finite number >= 0' },
  maxGradNorm: { api: 'maxGradNorm', flag: '--max-grad-norm', ok: finite(0, Infinity), want: 'a finite number >= 0 (0 = no clipping)' },
} satisfies Record<string, Rule>;

export type RuleName = keyof typeof RULES;

/** The message for a bad value, naming the option as `style` calls it; null when the value is good. */
export function checkValue(rule: RuleName, v: unknown, style: 'api' | 'flag' | 'json'): string | null {
  const r: Rule = RULES[rule];
  if (typeof v === 'number' && r.ok(v)) return null;
  const name = style === 'api' ? r.api : style === 'flag' ? r.flag : r.json ?? r.api;
  // (NaN and Infinity shown as themselves, not as JSON's null; a string quoted, so "32" is not 32)
  return `${name} must be ${r.want}, got ${style === 'flag' ? `"${String(v)}"` : excerpt(v)}`;
}

/** Throws a RangeError (or a TypeError for a value that is not a number) naming the API option. */
export function checkApiValue(rule: RuleName, v: unknown): void {
  const msg = checkValue(rule, v, 'api');
  if (msg) throw typeof v === 'number' ? new RangeError(msg) : new TypeError(msg);
}

/** O without its keys whose value is undefined: an option given as undefined means "not given"
 *  (spread over defaults it would replace them with undefined, then fail their checks). */
export function givenOnly<T extends object>(o: T | undefined): Partial<T> {
  if (o === undefined || o === null || typeof o !== 'object') return (o ?? {}) as Partial<T>;
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
