// Batched generation. Requests are grouped into blocks of gpuBatchSize × numGpuBatches
// sequences; each block runs through the schedule (src/schedule/runner.ts): one prefill over
// each batch's prompts (ragged, no padding), then one decode step per new token until every
// sequence has stopped. Each sequence's tokens are the ones it would get alone.

import type { Backend, CacheDType } from '../backend/index.js';
import { q4RecordBytes } from '../backend/kernels.js';
import type { TextTokenizer } from '../formats/tokenizer.js';
import type { ModelConfig } from '../models/config.js';
import type { Transformer } from '../models/transformer.js';
import type { BlockRunner } from '../schedule/runner.js';
import type { BlockShape } from '../policy/memory.js';
import { Tensor } from '../tensor/tensor.js';
import { checkKeys } from '../util/names.js';
import { type RuleName, checkApiValue } from '../util/options.js';
import { type GenerationRequest, type GenerationResult, type RequestError, type RequestNames, REQUEST_KEYS, promptIds } from './requests.js';
import { GREEDY, type SamplingParams } from './sampling.js';
import { Sequence, type SequenceLimits, type TokenHook } from './sequence.js';

export interface GenerateParams {
  maxNewTokens: number;
  sampling: SamplingParams;
  /** Samples per request, each with its own generator (seed and request id and sample index). */
  n: number;
  /** Extra token ids that end a sequence, beside the model's EOS. */
  stopTokenIds: number[];
  /** Whether EOS ends a sequence (on by default). */
  stopAtEos: boolean;
  logprobs: boolean;
  /** KV cache element type (default: the policy's cacheDtype). */
  cacheDtype: CacheDType;
  /** Sequences per batch (default: the policy's gpuBatchSize). */
  batchSize: number;
  /** Batches per block sharing each weight load (default: the policy's numGpuBatches). */
  numGpuBatches: number;
  /** Called with each token as it is generated (streaming); results still come per block. */
  onToken?: (id: string, token: number, index: number) => void;
}

/** What a caller passes: every field optional, sampling fields too. */
export type GenerateOptions = Partial<Omit<GenerateParams, 'sampling'>> & { sampling?: Partial<SamplingParams> };

export const DEFAULT_PARAMS: GenerateParams = {
  maxNewTokens: 32,
  sampling: GREEDY,
  n: 1,
  stopTokenIds: [],
  stopAtEos: true,
  logprobs: false,
  cacheDtype: 'f32',
  batchSize: 8,
  numGpuBatches: 1,
};

const PARAM_KEYS = [...Object.keys(DEFAULT_PARAMS), 'onToken'];
const SAMPLING_KEYS = Object.keys(GREEDY);

/** Full parameters from a caller's options; unknown keys and bad values throw, naming the option. */
export function resolveParams(o: GenerateOptions): GenerateParams {
  checkKeys(o, PARAM_KEYS, 'generate() params');
  checkKeys(o.sampling, SAMPLING_KEYS, 'params.sampling');
  const p: GenerateParams = { ...DEFAULT_PARAMS, ...o, sampling: { ...GREEDY, ...o.sampling } };
  checkParams(p);
  return p;
}

/** Timing of the phases, for progress and benchmarks. */
export interface GenerateStats {
  prefillSeconds: number;
  decodeSeconds: number;
  promptTokens: number;
  generatedTokens: number;
}

export function emptyStats(): GenerateStats {
  return { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
}

/** A request in the output queue: its samples, or the error it gets instead. */
type Queued = RequestError | { req: GenerationRequest; promptTokens: number; samples: Sequence[] };

/** Per-request hooks (the scheduler's RequestOptions): streaming and aborting. */
export interface RequestHooks {
  onToken?: TokenHook;
  signal?: AbortSignal;
}

export interface GeneratorSetup {
  config: ModelConfig;
  transformer: Transformer;
  runner: BlockRunner;
  eosTokenIds: number[];
  tokenizer: TextTokenizer | null;
  /** Throws when a block of this shape would not fit the memory limits. */
  checkBlock(shape: BlockShape): void;
}

export class Generator {
  readonly stats: GenerateStats = emptyStats();

  constructor(private readonly s: GeneratorSetup) {}

  get backend(): Backend {
    return this.s.transformer.backend;
  }

  /** Results in input order; a request that cannot run yields an error for it alone. `names`
   *  says how request fields are named in its messages (a JSONL line's keys for batch jobs). */
  async *generate(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, p: GenerateParams,
    names: RequestNames = 'api', hooks?: (req: GenerationRequest) => RequestHooks | undefined): AsyncGenerator<GenerationResult | RequestError> {
    let block: Sequence[] = [];
    const queue: Queued[] = [];
    for await (const req of requests) {
      const item = this.expand(req, p, names, hooks?.(req));
      queue.push(item);
      if ('error' in item) continue;
      for (const s of item.samples) {
        block.push(s);
        if (block.length === p.batchSize * p.numGpuBatches) {
          await this.runBlock(block, p);
          block = [];
          yield* this.finished(queue);
        }
      }
    }
    if (block.length > 0) await this.runBlock(block, p);
    yield* this.finished(queue);
  }

  /** Yields, in input order, every queued request whose samples have all finished. */
  private *finished(queue: Queued[]): IterableIterator<GenerationResult | RequestError> {
    while (queue.length > 0) {
      const item = queue[0]!;
      if ('error' in item) {
        yield queue.shift() as RequestError;
        continue;
      }
      if (!item.samples.every((s) => s.done)) return;
      queue.shift();
      const samples = item.samples.map((s) => s.result());
      yield { id: item.req.id, promptTokens: item.promptTokens, ...samples[0]!, ...(samples.length > 1 ? { samples } : {}) };
    }
  }

  /** A request's samples, or the error that keeps it from running. */
  expand(req: GenerationRequest, p: GenerateParams, names: RequestNames, hooks?: RequestHooks): Queued {
    const id = String((req as { id?: unknown })?.id ?? '');
    const fail = (error: string): Queued => ({ id, error });
    if (typeof req !== 'object' || req === null) return fail('request must be an object');
    if (typeof req.id !== 'string' || req.id.length === 0) return fail('"id" must be a non-empty string');
    if (names === 'api') {
      try {
        checkKeys(req, REQUEST_KEYS, `request "${id}"`);
        checkKeys(req.sampling, SAMPLING_KEYS, `request "${id}": sampling`);
        const sampling = { ...p.sampling, ...req.sampling };
        for (const k of SAMPLING_KEYS) checkApiValue(k as RuleName, sampling[k as keyof SamplingParams]);
        if (req.n !== undefined) checkApiValue('n', req.n);
        if (req.maxNewTokens !== undefined) checkApiValue('maxNewTokens', req.maxNewTokens);
      } catch (e) {
        return fail((e as Error).message);
      }
      const bad = checkRequestLimits(req, this.s.tokenizer !== null);
      if (bad) return fail(bad);
    }
    const ids = promptIds(req, this.s.tokenizer, this.s.config.vocabSize, names);
    if (typeof ids === 'string') return fail(ids);
    const max = this.s.config.maxPositions;
    if (ids.length >= max) return fail(`prompt of ${ids.length} tokens does not fit the model's ${max} positions (at most ${max - 1}, leaving room for one new token)`);
    const sampling = { ...p.sampling, ...req.sampling };
    const limits: SequenceLimits = {
      maxNewTokens: req.maxNewTokens ?? p.maxNewTokens,
      stopIds: new Set([...(p.stopAtEos ? this.s.eosTokenIds : []), ...(req.stopTokenIds ?? p.stopTokenIds)]),
      stop: req.stop ?? [],
      logprobs: req.logprobs ?? p.logprobs,
      topLogprobs: req.topLogprobs ?? 0,
      maxPositions: max,
    };
    const callHook = p.onToken;
    const hook: TokenHook | undefined = hooks?.onToken ?? (callHook ? (index, token) => callHook(req.id, token, index) : undefined);
    const samples = Array.from({ length: req.n ?? p.n }, (_, index) => new Sequence(req, ids, index, sampling, limits, this.s.tokenizer, hook));
    if (hooks?.signal) {
      const signal = hooks.signal;
      const cancel = () => samples.forEach((x) => x.cancel());
      if (signal.aborted) cancel();
      else signal.addEventListener('abort', cancel, { once: true });
    }
    return { req, promptTokens: ids.length, samples };
  }

  /** Generates every sequence of the block; each one holds its result after. */
  private async runBlock(block: Sequence[], p: GenerateParams): Promise<void> {
    const gbs = p.batchSize;
    const batches: Sequence[][] = [];
    for (let i = 0; i < block.length; i += gbs) batches.push(block.slice(i, i + gbs));
    const maxPrompt = Math.max(...block.map((x) => x.ids.length));
    const maxNew = Math.max(...block.map((x) => x.limits.maxNewTokens));
    const capacity = Math.min(this.s.config.maxPositions, maxPrompt + maxNew);
    this.s.checkBlock({
      rows: Math.min(gbs, block.length), batches: batches.length, capacity, cacheBytesPerElement: cacheBytesPerElement(p.cacheDtype, this.s.config.headDim),
      maxTokens: Math.max(...batches.map((b) => b.reduce((n, x) => n + x.ids.length, 0))),
    });
    // logSoftmax once per batch and step, shared by its rows.
    let logpFor: Tensor<'f32'> | null = null;
    let logp: Tensor<'f32'> | null = null;
    const phases = await this.s.runner.run(
      { prompts: batches.map((b) => b.map((x) => Int32Array.from(x.ids))), maxNewTokens: maxNew, capacity, cacheDtype: p.cacheDtype },
      (k, r, logits, at) => {
        const x = batches[k]![r]!;
        // An aborted sample (already finished) takes no more tokens.
        if (x.done) return { token: 0, done: true };
        const done = x.next(logits, at, () => {
          if (logpFor !== logits) {
            logp = this.backend.logSoftmax(logits);
            logpFor = logits;
          }
          return logp!;
        });
        return { token: x.tokens[x.tokens.length - 1]!, done };
      },
    );
    this.stats.prefillSeconds += phases.prefillSeconds;
    this.stats.decodeSeconds += phases.decodeSeconds;
    this.stats.promptTokens += block.reduce((n, x) => n + x.ids.length, 0);
    for (const x of block) {
      this.stats.generatedTokens += x.tokens.length;
      x.finish ??= 'length';
    }
  }
}

/** What is wrong with a request's own limits (stop, stopTokenIds, logprobs, topLogprobs), or null. */
export function checkRequestLimits(req: GenerationRequest, hasTokenizer: boolean): string | null {
  if (req.stop !== undefined) {
    if (!Array.isArray(req.stop) || req.stop.length > 4 || !req.stop.every((s) => typeof s === 'string' && s.length > 0)) {
      return '"stop" must be an array of at most 4 non-empty strings';
    }
    if (req.stop.length > 0 && !hasTokenizer) return 'the model has no tokenizer.json, so "stop" strings cannot be used';
  }
  if (req.stopTokenIds !== undefined && !(Array.isArray(req.stopTokenIds) && req.stopTokenIds.every((t) => Number.isSafeInteger(t) && t >= 0))) {
    return '"stopTokenIds" must be an array of non-negative integers';
  }
  if (req.logprobs !== undefined && typeof req.logprobs !== 'boolean') return '"logprobs" must be true or false';
  if (req.topLogprobs !== undefined && !(Number.isSafeInteger(req.topLogprobs) && req.topLogprobs >= 0 && req.topLogprobs <= 20)) {
    return '"topLogprobs" must be an integer in [0, 20]';
  }
  return null;
}

function checkParams(p: GenerateParams): void {
  for (const k of ['maxNewTokens', 'n', 'batchSize', 'numGpuBatches'] as const) checkApiValue(k, p[k]);
  for (const k of SAMPLING_KEYS) checkApiValue(k as RuleName, p.sampling[k as keyof SamplingParams]);
  if (p.cacheDtype !== 'f32' && p.cacheDtype !== 'f16' && p.cacheDtype !== 'q4') throw new RangeError(`cacheDtype must be "f32", "f16" or "q4", got ${JSON.stringify(p.cacheDtype)}`);
  if (!Array.isArray(p.stopTokenIds) || !p.stopTokenIds.every((t) => Number.isInteger(t) && t >= 0)) throw new RangeError('stopTokenIds must be an array of non-negative integers');
  for (const k of ['stopAtEos', 'logprobs'] as const) if (typeof p[k] !== 'boolean') throw new TypeError(`${k} must be true or false, got ${JSON.stringify(p[k])}`);
  if (p.onToken !== undefined && typeof p.onToken !== 'function') throw new TypeError('onToken must be a function');
}

/** Bytes per cached element (a q4 record spreads its codes and group parameters over d). */
export function cacheBytesPerElement(dtype: CacheDType, headDim: number): number {
  return dtype === 'f32' ? 4 : dtype === 'f16' ? 2 : q4RecordBytes(headDim) / headDim;
}
