// Batched generation with a KV cache. Requests run in batches of `batchSize`: one prefill over
// the batch's prompts (ragged, no padding), then one decode step per new token for the whole
// batch until every sequence has stopped. Each sequence's tokens are the ones it would get alone.

import type { Backend } from '../backend/index.js';
import type { CacheDType } from '../backend/kernels.js';
import type { TextTokenizer } from '../formats/tokenizer.js';
import { KVCache } from '../models/kv-cache.js';
import type { LoadedModel } from '../models/load.js';
import { Tensor } from '../tensor/tensor.js';
import { type GenerationRequest, type GenerationResult, type RequestError, type FinishReason, promptIds } from './requests.js';
import { GREEDY, Rng, type SamplingParams, sample } from './sampling.js';

export interface GenerateParams {
  maxNewTokens: number;
  sampling: SamplingParams;
  /** Extra token ids that end a sequence, beside the model's EOS. */
  stopTokenIds: number[];
  /** Whether EOS ends a sequence (on by default). */
  stopAtEos: boolean;
  batchSize: number;
  logprobs: boolean;
  cacheDtype: CacheDType;
}

export const DEFAULT_PARAMS: GenerateParams = {
  maxNewTokens: 32,
  sampling: GREEDY,
  stopTokenIds: [],
  stopAtEos: true,
  batchSize: 8,
  logprobs: false,
  cacheDtype: 'f32',
};

/** Timing of the phases, for progress and benchmarks. */
export interface GenerateStats {
  prefillSeconds: number;
  decodeSeconds: number;
  promptTokens: number;
  generatedTokens: number;
}

interface Pending {
  req: GenerationRequest;
  ids: number[];
}

export class Generator {
  readonly stats: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };

  constructor(
    private readonly model: LoadedModel,
    private readonly tokenizer: TextTokenizer | null,
  ) {}

  get backend(): Backend {
    return this.model.transformer.backend;
  }

  /** Results in input order; a request that cannot run yields an error for it alone. */
  async *generate(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, params: Partial<GenerateParams> = {}): AsyncGenerator<GenerationResult | RequestError> {
    const p = { ...DEFAULT_PARAMS, ...params, sampling: { ...GREEDY, ...params.sampling } };
    checkParams(p);
    let batch: Pending[] = [];
    const queue: (GenerationResult | RequestError | Pending)[] = [];
    for await (const req of requests) {
      const ids = this.validate(req, p);
      if (typeof ids === 'string') {
        queue.push({ id: String(req?.id ?? ''), error: ids });
      } else {
        const pending = { req, ids };
        queue.push(pending);
        batch.push(pending);
      }
      if (batch.length === p.batchSize) {
        yield* this.flush(queue, batch, p);
        batch = [];
      }
    }
    yield* this.flush(queue, batch, p);
  }

  /** Runs the batch, then yields everything queued so far, in input order. */
  private async *flush(queue: (GenerationResult | RequestError | Pending)[], batch: Pending[], p: GenerateParams): AsyncGenerator<GenerationResult | RequestError> {
    const results = batch.length > 0 ? this.runBatch(batch, p) : new Map<Pending, GenerationResult>();
    for (const item of queue.splice(0)) {
      yield 'req' in item ? results.get(item)! : item;
    }
  }

  private validate(req: GenerationRequest, p: GenerateParams): number[] | string {
    if (typeof req !== 'object' || req === null) return 'request must be an object';
    if (typeof req.id !== 'string' || req.id.length === 0) return '"id" must be a non-empty string';
    const ids = promptIds(req, this.tokenizer, this.model.config.vocabSize);
    if (typeof ids === 'string') return ids;
    const max = this.model.config.maxPositions;
    if (ids.length >= max) return `prompt of ${ids.length} tokens does not fit the model's ${max} positions (at most ${max - 1}, leaving room for one new token)`;
    void p;
    return ids;
  }

  private runBatch(batch: Pending[], p: GenerateParams): Map<Pending, GenerationResult> {
    const t = this.model.transformer;
    const b = batch.length;
    const maxPrompt = Math.max(...batch.map((x) => x.ids.length));
    const capacity = Math.min(this.model.config.maxPositions, maxPrompt + p.maxNewTokens);
    const cache = new KVCache(this.model.config, b, capacity, p.cacheDtype);
    const stop = new Set([...(p.stopAtEos ? this.model.eosTokenIds : []), ...p.stopTokenIds]);
    const rngs = batch.map((x) => new Rng(p.sampling.seed, x.req.id));
    const out = batch.map(() => ({ tokens: [] as number[], logprobs: [] as number[], finish: null as FinishReason | null }));

    let start = performance.now();
    let logits = t.prefill(cache, batch.map((x) => Int32Array.from(x.ids)));
    this.stats.prefillSeconds += (performance.now() - start) / 1000;
    this.stats.promptTokens += batch.reduce((n, x) => n + x.ids.length, 0);
    start = performance.now();
    const next = new Int32Array(b);
    for (let step = 0; ; step++) {
      const logp = p.logprobs ? this.backend.logSoftmax(logits) : null;
      const vocab = logits.shape[1]!;
      for (let i = 0; i < b; i++) {
        const o = out[i]!;
        if (o.finish) continue;
        const row = logits.data.subarray(i * vocab, (i + 1) * vocab);
        const token = sample(row, p.sampling, rngs[i]!);
        o.tokens.push(token);
        if (logp) o.logprobs.push(logp.data[i * vocab + token]!);
        next[i] = token;
        if (stop.has(token)) o.finish = 'stop';
        else if (o.tokens.length >= p.maxNewTokens || cache.lengths[i]! + 1 > capacity - 0 || batch[i]!.ids.length + o.tokens.length >= capacity) o.finish = 'length';
      }
      if (out.every((o) => o.finish)) break;
      logits = t.decode(cache, next);
    }
    this.stats.decodeSeconds += (performance.now() - start) / 1000;
    const results = new Map<Pending, GenerationResult>();
    batch.forEach((x, i) => {
      const o = out[i]!;
      this.stats.generatedTokens += o.tokens.length;
      const r: GenerationResult = { id: x.req.id, tokenIds: o.tokens, finishReason: o.finish! };
      if (this.tokenizer) r.text = this.tokenizer.decode(o.tokens);
      if (p.logprobs) r.logprobs = o.logprobs;
      results.set(x, r);
    });
    return results;
  }
}

function checkParams(p: GenerateParams): void {
  const bad = (what: string) => {
    throw new RangeError(what);
  };
  if (!Number.isInteger(p.maxNewTokens) || p.maxNewTokens < 1) bad(`max new tokens must be a positive integer, got ${p.maxNewTokens}`);
  if (!Number.isInteger(p.batchSize) || p.batchSize < 1) bad(`batch size must be a positive integer, got ${p.batchSize}`);
  const s = p.sampling;
  if (!(s.temperature >= 0) || !Number.isFinite(s.temperature)) bad(`temperature must be >= 0, got ${s.temperature}`);
  if (!Number.isInteger(s.topK) || s.topK < 0) bad(`top-k must be an integer >= 0, got ${s.topK}`);
  if (!(s.topP > 0 && s.topP <= 1)) bad(`top-p must be in (0, 1], got ${s.topP}`);
  if (!Number.isInteger(s.seed)) bad(`seed must be an integer, got ${s.seed}`);
  if (p.cacheDtype !== 'f32' && p.cacheDtype !== 'f16') bad(`cache dtype must be f32 or f16, got ${p.cacheDtype}`);
  if (!p.stopTokenIds.every((t) => Number.isInteger(t) && t >= 0)) bad('stop token ids must be non-negative integers');
}

export { Tensor };
