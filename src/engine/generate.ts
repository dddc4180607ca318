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
import { type FinishReason, type GenerationRequest, type GenerationResult, type RequestError, type RequestNames, type SampleResult, REQUEST_KEYS, promptIds } from './requests.js';
import { GREEDY, Rng, type SamplingParams, TokenHistory, sample } from './sampling.js';

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

/** One sequence to generate: a request's sample. */
interface Pending {
  req: GenerationRequest;
  ids: number[];
  index: number;
  sampling: SamplingParams;
  result?: SampleResult;
}

/** A request in the output queue: its samples, or the error it gets instead. */
type Queued = { id: string; error: string } | { req: GenerationRequest; samples: Pending[] };

interface Output {
  tokens: number[];
  logprobs: number[];
  finish: FinishReason | null;
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
    names: RequestNames = 'api'): AsyncGenerator<GenerationResult | RequestError> {
    let block: Pending[] = [];
    const queue: Queued[] = [];
    for await (const req of requests) {
      const item = this.expand(req, p, names);
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
      if (!item.samples.every((s) => s.result)) return;
      queue.shift();
      const samples = item.samples.map((s) => s.result!);
      yield { id: item.req.id, ...samples[0]!, ...(samples.length > 1 ? { samples } : {}) };
    }
  }

  /** A request's samples, or the error that keeps it from running. */
  private expand(req: GenerationRequest, p: GenerateParams, names: RequestNames): Queued {
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
      } catch (e) {
        return fail((e as Error).message);
      }
    }
    const ids = promptIds(req, this.s.tokenizer, this.s.config.vocabSize, names);
    if (typeof ids === 'string') return fail(ids);
    const max = this.s.config.maxPositions;
    if (ids.length >= max) return fail(`prompt of ${ids.length} tokens does not fit the model's ${max} positions (at most ${max - 1}, leaving room for one new token)`);
    const sampling = { ...p.sampling, ...req.sampling };
    return { req, samples: Array.from({ length: req.n ?? p.n }, (_, index) => ({ req, ids, index, sampling })) };
  }

  /** Generates every sequence of the block and stores each one's result in it. */
  private async runBlock(block: Pending[], p: GenerateParams): Promise<void> {
    const gbs = p.batchSize;
    const batches: Pending[][] = [];
    for (let i = 0; i < block.length; i += gbs) batches.push(block.slice(i, i + gbs));
    const maxPrompt = Math.max(...block.map((x) => x.ids.length));
    const capacity = Math.min(this.s.config.maxPositions, maxPrompt + p.maxNewTokens);
    this.s.checkBlock({
      rows: Math.min(gbs, block.length), batches: batches.length, capacity, cacheBytesPerElement: cacheBytesPerElement(p.cacheDtype, this.s.config.headDim),
      maxTokens: Math.max(...batches.map((b) => b.reduce((n, x) => n + x.ids.length, 0))),
    });
    const stop = new Set([...(p.stopAtEos ? this.s.eosTokenIds : []), ...p.stopTokenIds]);
    const outs = batches.map((b) => b.map((): Output => ({ tokens: [], logprobs: [], finish: null })));
    // Sample 0 keeps the request's own stream, so n = 1 draws what it always drew.
    const rngs = batches.map((b) => b.map((x) => new Rng(x.sampling.seed, x.index === 0 ? x.req.id : `${x.req.id}\0${x.index}`)));
    const histories = batches.map((b) => b.map((x) => new TokenHistory(x.ids)));
    // logSoftmax once per batch and step, shared by its rows.
    let logpFor: Tensor<'f32'> | null = null;
    let logp: Tensor<'f32'> | null = null;
    const phases = await this.s.runner.run(
      {
        prompts: batches.map((b) => b.map((x) => Int32Array.from(x.ids))),
        maxNewTokens: p.maxNewTokens,
        capacity,
        cacheDtype: p.cacheDtype,
      },
      (k, r, logits, at) => {
        const o = outs[k]![r]!;
        const vocab = logits.shape[1]!;
        const row = logits.data.subarray(at * vocab, (at + 1) * vocab);
        const x = batches[k]![r]!;
        const token = sample(row, x.sampling, rngs[k]![r]!, histories[k]![r]!);
        histories[k]![r]!.add(token);
        o.tokens.push(token);
        p.onToken?.(x.req.id, token, x.index);
        if (p.logprobs) {
          if (logpFor !== logits) {
            logp = this.backend.logSoftmax(logits);
            logpFor = logits;
          }
          o.logprobs.push(logp!.data[at * vocab + token]!);
        }
        const len = x.ids.length + o.tokens.length;
        if (stop.has(token)) o.finish = 'stop';
        else if (o.tokens.length >= p.maxNewTokens || len >= capacity) o.finish = 'length';
        return { token, done: o.finish !== null };
      },
    );
    this.stats.prefillSeconds += phases.prefillSeconds;
    this.stats.decodeSeconds += phases.decodeSeconds;
    this.stats.promptTokens += block.reduce((n, x) => n + x.ids.length, 0);
    batches.forEach((b, k) => b.forEach((x, r) => {
      const o = outs[k]![r]!;
      this.stats.generatedTokens += o.tokens.length;
      const res: SampleResult = { tokenIds: o.tokens, finishReason: o.finish ?? 'length' };
      if (this.s.tokenizer) res.text = this.s.tokenizer.decode(o.tokens);
      if (p.logprobs) res.logprobs = o.logprobs;
      x.result = res;
    }));
  }
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
