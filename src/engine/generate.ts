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
import { type FinishReason, type GenerationRequest, type GenerationResult, type RequestError, promptIds } from './requests.js';
import { GREEDY, Rng, type SamplingParams, sample } from './sampling.js';

export interface GenerateParams {
  maxNewTokens: number;
  sampling: SamplingParams;
  /** Extra token ids that end a sequence, beside the model's EOS. */
  stopTokenIds: number[];
  /** Whether EOS ends a sequence (on by default). */
  stopAtEos: boolean;
  logprobs: boolean;
  cacheDtype: CacheDType;
  /** Sequences per batch (the policy's gpu_batch_size). */
  batchSize: number;
  /** Batches per block sharing each weight load (the policy's num_gpu_batches). */
  numGpuBatches: number;
}

export const DEFAULT_PARAMS: GenerateParams = {
  maxNewTokens: 32,
  sampling: GREEDY,
  stopTokenIds: [],
  stopAtEos: true,
  logprobs: false,
  cacheDtype: 'f32',
  batchSize: 8,
  numGpuBatches: 1,
};

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

interface Pending {
  req: GenerationRequest;
  ids: number[];
}

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

  /** Results in input order; a request that cannot run yields an error for it alone. */
  async *generate(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, params: Partial<GenerateParams> = {}): AsyncGenerator<GenerationResult | RequestError> {
    const p = { ...DEFAULT_PARAMS, ...params, sampling: { ...GREEDY, ...params.sampling } };
    checkParams(p);
    let block: Pending[] = [];
    const queue: (GenerationResult | RequestError | Pending)[] = [];
    for await (const req of requests) {
      const ids = this.validate(req);
      if (typeof ids === 'string') {
        queue.push({ id: String((req as { id?: unknown })?.id ?? ''), error: ids });
      } else {
        const pending = { req, ids };
        queue.push(pending);
        block.push(pending);
      }
      if (block.length === p.batchSize * p.numGpuBatches) {
        yield* this.flush(queue, block, p);
        block = [];
      }
    }
    yield* this.flush(queue, block, p);
  }

  /** Runs the block, then yields everything queued so far, in input order. */
  private async *flush(queue: (GenerationResult | RequestError | Pending)[], block: Pending[], p: GenerateParams): AsyncGenerator<GenerationResult | RequestError> {
    const results = block.length > 0 ? await this.runBlock(block, p) : new Map<Pending, GenerationResult>();
    for (const item of queue.splice(0)) yield 'req' in item ? results.get(item)! : item;
  }

  private validate(req: GenerationRequest): number[] | string {
    if (typeof req !== 'object' || req === null) return 'request must be an object';
    if (typeof req.id !== 'string' || req.id.length === 0) return '"id" must be a non-empty string';
    const ids = promptIds(req, this.s.tokenizer, this.s.config.vocabSize);
    if (typeof ids === 'string') return ids;
    const max = this.s.config.maxPositions;
    if (ids.length >= max) return `prompt of ${ids.length} tokens does not fit the model's ${max} positions (at most ${max - 1}, leaving room for one new token)`;
    return ids;
  }

  private async runBlock(block: Pending[], p: GenerateParams): Promise<Map<Pending, GenerationResult>> {
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
    const rngs = batches.map((b) => b.map((x) => new Rng(p.sampling.seed, x.req.id)));
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
        const token = sample(row, p.sampling, rngs[k]![r]!);
        o.tokens.push(token);
        if (p.logprobs) {
          if (logpFor !== logits) {
            logp = this.backend.logSoftmax(logits);
            logpFor = logits;
          }
          o.logprobs.push(logp!.data[at * vocab + token]!);
        }
        const len = batches[k]![r]!.ids.length + o.tokens.length;
        if (stop.has(token)) o.finish = 'stop';
        else if (o.tokens.length >= p.maxNewTokens || len >= capacity) o.finish = 'length';
        return { token, done: o.finish !== null };
      },
    );
    this.stats.prefillSeconds += phases.prefillSeconds;
    this.stats.decodeSeconds += phases.decodeSeconds;
    this.stats.promptTokens += block.reduce((n, x) => n + x.ids.length, 0);
    const results = new Map<Pending, GenerationResult>();
    batches.forEach((b, k) => b.forEach((x, r) => {
      const o = outs[k]![r]!;
      this.stats.generatedTokens += o.tokens.length;
      const res: GenerationResult = { id: x.req.id, tokenIds: o.tokens, finishReason: o.finish ?? 'length' };
      if (this.s.tokenizer) res.text = this.s.tokenizer.decode(o.tokens);
      if (p.logprobs) res.logprobs = o.logprobs;
      results.set(x, res);
    }));
    return results;
  }
}

function checkParams(p: GenerateParams): void {
  const bad = (what: string) => {
    throw new RangeError(what);
  };
  if (!Number.isInteger(p.maxNewTokens) || p.maxNewTokens < 1) bad(`max new tokens must be a positive integer, got ${p.maxNewTokens}`);
  const s = p.sampling;
  if (!(s.temperature >= 0) || !Number.isFinite(s.temperature)) bad(`temperature must be >= 0, got ${s.temperature}`);
  if (!Number.isInteger(s.topK) || s.topK < 0) bad(`top-k must be an integer >= 0, got ${s.topK}`);
  if (!(s.topP > 0 && s.topP <= 1)) bad(`top-p must be in (0, 1], got ${s.topP}`);
  if (!Number.isInteger(s.seed)) bad(`seed must be an integer, got ${s.seed}`);
  if (!Number.isInteger(p.batchSize) || p.batchSize < 1) bad(`batch size must be a positive integer, got ${p.batchSize}`);
  if (!Number.isInteger(p.numGpuBatches) || p.numGpuBatches < 1) bad(`num gpu batches must be a positive integer, got ${p.numGpuBatches}`);
  if (p.cacheDtype !== 'f32' && p.cacheDtype !== 'f16' && p.cacheDtype !== 'q4') bad(`cache dtype must be f32, f16 or q4, got ${p.cacheDtype}`);
  if (!p.stopTokenIds.every((t) => Number.isInteger(t) && t >= 0)) bad('stop token ids must be non-negative integers');
}

/** Bytes per cached element (a q4 record spreads its codes and group parameters over d). */
export function cacheBytesPerElement(dtype: CacheDType, headDim: number): number {
  return dtype === 'f32' ? 4 : dtype === 'f16' ? 2 : q4RecordBytes(headDim) / headDim;
}
