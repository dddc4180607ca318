// One request body run on the scheduler: validated, prepared, each prompt submitted, and the
// results made into the endpoint's response (or stream chunks). The server's routes and every
// Batch API line (server and `tierlm batch` alike) go through here.
import { randomBytes } from 'node:crypto';
import type { Scheduler } from '../engine/scheduler.js';
import type { LanguageModel } from '../engine/model.js';
import type { GenerationResult, RequestError } from '../engine/requests.js';
import { TOO_LARGE_FOR_LIMITS } from '../engine/continuous.js';
import { positionsNote } from '../models/config.js';
import { ApiError, invalid } from './errors.js';
import { ChunkStream, type Prepared, type ServedModel, limitsParam, prepareAsync, responseBody } from './translate.js';
import { type Endpoint, checkBody, checkText } from './validate.js';

export interface Engine {
  scheduler: Scheduler;
  model: ServedModel;
  /** Sequences (prompts × n) one body keeps submitted to the scheduler at once, at least its n
   *  (default DEFAULT_WINDOW): the rest of a prompt list is submitted as those finish. */
  window?: number;
}

/** Engine.window where none is given. */
const DEFAULT_WINDOW = 64;

export interface CompleteOptions {
  priority: 'interactive' | 'batch';
  signal?: AbortSignal;
  /** Streaming: each chunk as it is ready (the body's `stream` is ignored without it). */
  onChunk?: (chunk: Record<string, unknown>) => void;
  /** The body already checked (by check()): the server checks it before answering. */
  prepared?: Prepared;
  /** Called once, when the request's first token (of any of its samples) is sampled. */
  onFirstToken?: () => void;
}

/** Thrown when the request was cancelled (a client went away, a batch was cancelled). */
export class Cancelled extends Error {}

export const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString('hex')}`;

/** Checks a body (schema and model) without running it: a 400/404 ApiError, or what to submit.
 *  Text prompts are encoded giving the event loop turns (prepareAsync). */
export async function check(engine: Engine, endpoint: Endpoint, body: unknown, validated = false): Promise<Prepared> {
  if (!validated) checkBody(endpoint, body);
  // (after the schema, which the server's routes check themselves: text with a lone surrogate)
  checkText(body);
  return prepareAsync(endpoint, body as Record<string, unknown>, engine.model);
}

/** Runs a body; resolves with the response body (for a stream, after the last chunk was sent).
 *  Throws ApiError for a bad body, Cancelled when aborted, anything else when the engine fails. */
export async function complete(engine: Engine, endpoint: Endpoint, body: unknown, o: CompleteOptions): Promise<Record<string, unknown>> {
  const p = o.prepared ?? await check(engine, endpoint, body);
  const id = newId(endpoint === '/v1/chat/completions' ? 'chatcmpl' : 'cmpl');
  const created = Math.floor(Date.now() / 1000);
  const stream = p.stream && o.onChunk ? new ChunkStream(p, id, created, o.onChunk) : null;
  let first = o.onFirstToken;
  const submit = async (i: number) => {
    const r = await engine.scheduler.submit(p.requests[i]!, {
      priority: o.priority, signal: o.signal,
      onToken: stream || first ? (sample, _token, text) => {
        first?.();
        first = undefined;
        stream?.token(i, sample, text);
      } : undefined,
    });
    if (!('error' in r)) stream?.finish(i, r, engine.model);
    return r;
  };
  const answers = await windowed(p.requests.length, Math.max(1, Math.floor((engine.window ?? DEFAULT_WINDOW) / p.n)), submit);
  const failed = answers.findIndex((r) => r !== undefined && 'error' in r);
  if (failed >= 0) throw requestFailure(answers[failed] as RequestError, o.signal, limitsParam(p, failed, engine.model));
  const results = answers as GenerationResult[];
  if (stream && p.includeUsage) stream.usage(results);
  return responseBody(p, results, id, created, engine.model);
}

/**
 * run(0 … count-1), at most `most` at once, each started in order as one before it ends: a list's
 * prompts were all submitted at once, and the scheduler made every sample's sequence then (a
 * body of 60,000 prompts × n 8 queued 480,000 of them, 800 MB), ahead of every request that came
 * after it. None starts after one fails (an answer with an error; the first in order is what the
 * body fails with, and those before it all run): its place, and those after, stay undefined.
 */
async function windowed(count: number, most: number, run: (i: number) => Promise<GenerationResult | RequestError>): Promise<(GenerationResult | RequestError | undefined)[]> {
  const answers: (GenerationResult | RequestError | undefined)[] = new Array(count);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < count && !failed) {
      const i = next++;
      const r = await run(i);
      answers[i] = r;
      if ('error' in r) failed = true;
    }
  };
  await Promise.all(Array.from({ length: Math.min(most, count) }, worker));
  return answers;
}

/** `param`: the field a refusal for the memory limits blames (limitsParam). */
function requestFailure(r: RequestError, signal: AbortSignal | undefined, param: string): Error {
  if (r.error === 'cancelled' || signal?.aborted) return new Cancelled('cancelled');
  if (/shutting down/.test(r.error)) return new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down');
  // The positions it asks for (prompt + max_tokens) need more cache than the memory limits allow.
  if (r.error.startsWith(TOO_LARGE_FOR_LIMITS)) return new ApiError(400, r.error, 'invalid_request_error', param, 'context_length_exceeded');
  return invalid(r.error);
}

/** A loaded model as the OpenAI endpoints serve it, named `name` (what bodies give as `model`). */
export function engineFor(model: LanguageModel, name: string): Engine {
  const scheduler = model.scheduler();
  return {
    scheduler, window: batchConcurrency(model),
    model: {
      id: name, maxPositions: model.config.maxPositions, positionsNote: positionsNote(model.config), vocabSize: model.config.vocabSize, tokenizer: model.tokenizer,
      positionsUnderLimits: () => scheduler.positionsUnderLimits,
      refusalFor: (prompt, newTokens) => scheduler.refusalFor(prompt, prompt + (newTokens ?? 1)), created: Math.floor(Date.now() / 1000),
    },
  };
}

/** Sequences (prompts × n) submitted at once by a batch job, and by one body (Engine.window):
 *  twice what one block holds, so the next block's requests are waiting when one finishes. */
export function batchConcurrency(model: LanguageModel): number {
  return Math.max(8, 2 * model.policy.gpuBatchSize * model.policy.numGpuBatches);
}
