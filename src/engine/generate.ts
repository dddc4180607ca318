// Batched generation: requests become sequences (one per sample) that run through the
// continuous engine (src/engine/continuous.ts) in a block of gpuBatchSize × numGpuBatches slots;
// a sequence leaves as soon as it stops and the next request takes its slot. Results come in
// input order, or as each request finishes (params.order). Each sequence's tokens are the ones
// it would get alone.

import type { Backend, CacheDType } from '../backend/index.js';
import { q4RecordBytes } from '../backend/kernels.js';
import type { TextTokenizer } from '../formats/tokenizer.js';
import { type ModelConfig, positionsNote } from '../models/config.js';
import type { Transformer } from '../models/transformer.js';
import type { BlockRunner } from '../schedule/runner.js';
import type { BlockShape } from '../policy/memory.js';
import { ContinuousEngine, type RunnerLock } from './continuous.js';
import { checkKeys } from '../util/names.js';
import { excerpt, illFormedField } from '../util/text.js';
import { MAX_TOP_LOGPROBS, type RuleName, checkApiValue, checkValue, givenOnly, isTopCount } from '../util/options.js';
import { type GenerationRequest, type GenerationResult, type RequestError, type RequestNames, REQUEST_KEYS, promptIds } from './requests.js';
import { GREEDY, type SamplingParams } from './sampling.js';
import { Sequence, type SequenceLimits, type TokenHook, requestResult } from './sequence.js';

export interface GenerateParams {
  maxNewTokens: number;
  sampling: SamplingParams;
  /** Samples per request, each with its own generator (seed and request id and sample index). */
  n: number;
  /** Extra token ids that end a sequence, beside the model's EOS. */
  stopTokenIds: number[];
  /** Whether EOS ends a sequence (on by default): the model's eos_token_id (generation_config.json,
   *  else config.json) and the tokenizer's eos_token (LanguageModel.eosTokenIds). */
  stopAtEos: boolean;
  logprobs: boolean;
  /** KV cache element type (default: the policy's cacheDtype). */
  cacheDtype: CacheDType;
  /** Sequences per batch (default: the policy's gpuBatchSize). */
  batchSize: number;
  /** Batches per block sharing each weight load (default: the policy's numGpuBatches). */
  numGpuBatches: number;
  /** Prompt tokens per batch and step: longer prompts are prefilled in chunks between decode
   *  steps (a prompt's first chunk is min(prompt, prefillChunk) tokens; results depend on it).
   *  Default: the model's positions for generate() (whole prompts), 512 for a scheduler. */
  prefillChunk?: number;
  /** Called with each token as it is generated (streaming); results still come per request. */
  onToken?: (id: string, token: number, index: number, text: string) => void;
  /** 'input': results in input order (a long request holds back the finished ones after it,
   *  up to backlogCap of them, and reading stops meanwhile); 'finish': each result as soon as its
   *  request finishes, in the order they finish (ids tell them apart). generate() only. */
  order: GenerateOrder;
}

export type GenerateOrder = 'input' | 'finish';

/** What a caller passes: every field optional, sampling fields too. */
export type GenerateOptions = Partial<Omit<GenerateParams, 'sampling' | 'cacheDtype'>> & {
  sampling?: Partial<SamplingParams>;
  /** 'auto' (as the policy's cache_dtype may say): the policy's cache type, as when not given. */
  cacheDtype?: CacheDType | 'auto';
};

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
  order: 'input',
};

/** A scheduler's (server's) prompt tokens per batch and step: prompts go in chunks of this many
 *  beside the decode rows, so a long prompt never stalls the others' decode for long. */
export const SERVER_PREFILL_CHUNK = 512;

/** In input order, the requests generate() holds (running, or finished behind an unfinished
 *  first one) before it stops reading more: results it cannot yield yet stay in memory, so a
 *  long first request must not let them grow with the input. Room for 4 blocks of slots. */
export function backlogCap(slots: number): number {
  return Math.max(64, 4 * slots);
}

const PARAM_KEYS = [...Object.keys(DEFAULT_PARAMS), 'prefillChunk', 'onToken'];
const SAMPLING_KEYS = Object.keys(GREEDY);

/** Full parameters from a caller's options; unknown keys and bad values throw, naming the option. */
export function resolveParams(o: GenerateOptions): GenerateParams {
  checkKeys(o, PARAM_KEYS, 'generate() params');
  checkKeys(o.sampling, SAMPLING_KEYS, 'params.sampling');
  // (checkParams refuses what the type does not allow: 'auto' is the model's to resolve, before)
  const p = { ...DEFAULT_PARAMS, ...givenOnly(o), sampling: { ...GREEDY, ...givenOnly(o.sampling) } } as GenerateParams;
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

/** A request in the output queue: its samples (and, with a signal, what removes its abort
 *  listener once the request has ended: one signal may serve a whole batch job), or the error it
 *  gets instead. */
type Queued = RequestError | { req: GenerationRequest; promptTokens: number; samples: Sequence[]; detach?: () => void };

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
  /** Throws when a block of this shape would not fit the memory limits (with `machine`, and no
   *  RAM limit set: within most of this machine's memory, as a plan without a limit assumes). */
  checkBlock(shape: BlockShape, machine?: boolean): void;
  /** Held by whichever engine has a block open on the runner. */
  lock: RunnerLock;
  /** Whether the model was closed (no block may open after). */
  closed?: () => boolean;
}

export class Generator {
  readonly stats: GenerateStats = emptyStats();

  constructor(private readonly s: GeneratorSetup) {}

  get backend(): Backend {
    return this.s.transformer.backend;
  }

  /** Results in `p.order`; a request that cannot run yields an error for it alone. `names`
   *  says how request fields are named in its messages (a JSONL line's keys for batch jobs). */
  async *generate(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, p: GenerateParams,
    names: RequestNames = 'api'): AsyncGenerator<GenerationResult | RequestError> {
    const engine = this.engine(p, false);
    const queue: Queued[] = [];
    const target = p.batchSize * p.numGpuBatches;
    // (in finish order a finished request leaves the queue at the next hand-over, so the cap
    // binds only on a run of refused requests, which that hand-over yields)
    const cap = backlogCap(target);
    const input = new RequestInput(Symbol.asyncIterator in requests ? requests[Symbol.asyncIterator]() : (requests as Iterable<GenerationRequest>)[Symbol.iterator]());
    let more = true;
    try {
      for (;;) {
        // Read ahead so that every slot a sequence leaves is taken again at the next step (with
        // work to step, only what the input has ready: see nextRequest).
        while (more && engine.queued + engine.running < target && queue.length < cap) {
          const next = await nextRequest(input, engine);
          if (next === null) break;
          if (next.done) {
            more = false;
            break;
          }
          const item = this.expand(next.value, p, names);
          queue.push(item);
          if (!('error' in item)) for (const seq of item.samples) engine.add({ seq, priority: 0, done: () => undefined });
        }
        yield* this.handOver(engine, queue, p.order);
        const ran = await engine.step();
        // (a step with nothing to run may still have refused requests: they are handed over too)
        yield* this.handOver(engine, queue, p.order);
        if (!ran && !more) break;
      }
    } finally {
      // (as for-await does when its body stops early: the input's own finally blocks run)
      input.close();
      await engine.close();
      for (const k of ['prefillSeconds', 'decodeSeconds', 'promptTokens', 'generatedTokens'] as const) this.stats[k] += engine.stats[k];
    }
  }

  /** A continuous engine over this generator's runner. `server`: the block keeps its full shape
   *  and prompts go in chunks of prefillChunk (default SERVER_PREFILL_CHUNK) tokens. */
  engine(p: GenerateParams, server: boolean): ContinuousEngine {
    return new ContinuousEngine({
      runner: this.s.runner, backend: this.backend, lock: this.s.lock, maxPositions: this.s.config.maxPositions, closed: this.s.closed,
      cacheBytesPerElement: cacheBytesPerElement(p.cacheDtype, this.s.config.headDim), checkBlock: (shape, machine) => this.s.checkBlock(shape, machine),
      weightsStream: this.s.runner.weightsStream,
    }, {
      batchSize: p.batchSize, numGpuBatches: p.numGpuBatches, cacheDtype: p.cacheDtype, fullShape: server,
      prefillChunk: p.prefillChunk ?? (server ? SERVER_PREFILL_CHUNK : this.s.config.maxPositions),
    });
  }

  /** Yields the finished requests with the engine parked: while the caller holds a result (or
   *  has dropped the iterator without return()), an engine waiting for the runner (a server's
   *  scheduler) makes this one give up its block rather than wait for it forever. */
  private async *handOver(engine: ContinuousEngine, queue: Queued[], order: GenerateOrder): AsyncGenerator<GenerationResult | RequestError> {
    for (const r of this.finished(queue, order)) {
      await engine.park();
      yield r;
      engine.unpark();
    }
  }

  /** Takes out of the queue and yields every request whose samples have all finished: in input
   *  order, those before the first unfinished one; in finish order, all of them (in input order
   *  among those that finished together). */
  private *finished(queue: Queued[], order: GenerateOrder): IterableIterator<GenerationResult | RequestError> {
    for (let i = 0; i < queue.length;) {
      const item = queue[i]!;
      if ('error' in item || item.samples.every((s) => s.done)) {
        queue.splice(i, 1);
        yield outcome(item);
      } else if (order === 'input') return;
      else i++;
    }
  }

  /** A request's samples, or the error that keeps it from running. */
  expand(req: GenerationRequest, p: GenerateParams, names: RequestNames, hooks?: RequestHooks): Queued {
    const id = String((req as { id?: unknown })?.id ?? '');
    const fail = (error: string): Queued => ({ id, error });
    if (typeof req !== 'object' || req === null) return fail('request must be an object');
    if (typeof req.id !== 'string' || req.id.length === 0) return fail('"id" must be a non-empty string');
    const sampling = { ...p.sampling, ...req.sampling };
    // Values are checked whoever made the request (a JSONL line's were as it was read, but
    // generateNamed is public: n = 0 gave a result with no tokens), named as `names` says.
    try {
      // (a JSONL line's keys are the reader's: it refuses the ones it does not know)
      if (names === 'api') {
        checkKeys(req, REQUEST_KEYS, `request "${id}"`);
        checkKeys(req.sampling, SAMPLING_KEYS, `request "${id}": sampling`);
      }
      const check = (rule: RuleName, v: unknown) => {
        if (names === 'api') return checkApiValue(rule, v);
        const bad = checkValue(rule, v, 'json');
        if (bad) throw new Error(bad);
      };
      for (const k of SAMPLING_KEYS) check(k as RuleName, sampling[k as keyof SamplingParams]);
      if (req.n !== undefined) check('n', req.n);
      if (req.maxNewTokens !== undefined) check('maxNewTokens', req.maxNewTokens);
      if (req.untilContext !== undefined && typeof req.untilContext !== 'boolean') throw new Error(`"${names === 'api' ? 'untilContext' : 'until_context'}" must be true or false`);
      if (req.seedKey !== undefined && typeof req.seedKey !== 'string') throw new Error(`"seedKey" must be a string, not ${excerpt(req.seedKey)}`);
    } catch (e) {
      return fail((e as Error).message);
    }
    const bad = checkRequestLimits(req, this.s.tokenizer !== null, names, this.s.config.vocabSize);
    if (bad) return fail(bad);
    const max = this.s.config.maxPositions;
    // (a text surely past the positions is refused before it is encoded: a 3 MB prompt took
    // seconds and hundreds of MB to tokenize only to be refused)
    const ids = promptIds(req, this.s.tokenizer, this.s.config.vocabSize, names, { maxPositions: max, note: positionsNote(this.s.config) });
    if (typeof ids === 'string') return fail(ids);
    if (ids.length >= max) return fail(`prompt of ${ids.length} tokens does not fit the model's ${max} positions${positionsNote(this.s.config)} (at most ${max - 1}, leaving room for one new token)`);
    const limits: SequenceLimits = {
      maxNewTokens: req.maxNewTokens ?? (req.untilContext ? Infinity : p.maxNewTokens),
      untilContext: req.maxNewTokens === undefined && req.untilContext === true,
      stopIds: new Set([...(p.stopAtEos ? this.s.eosTokenIds : []), ...(req.stopTokenIds ?? p.stopTokenIds)]),
      stop: req.stop ?? [],
      logprobs: req.logprobs ?? p.logprobs,
      topLogprobs: req.topLogprobs ?? 0,
      promptLogprobs: req.promptLogprobs ?? null,
      maxPositions: max,
    };
    const callHook = p.onToken;
    const hook: TokenHook | undefined = hooks?.onToken ?? (callHook ? (index, token, text) => callHook(req.id, token, index, text) : undefined);
    const samples = Array.from({ length: req.n ?? p.n }, (_, index) => new Sequence(req, ids, index, sampling, limits, this.s.tokenizer, hook));
    if (hooks?.signal) {
      const signal = hooks.signal;
      const cancel = () => samples.forEach((x) => x.cancel());
      if (signal.aborted) cancel();
      else return { req, promptTokens: ids.length, samples, detach: whenAborted(signal, cancel) };
    }
    return { req, promptTokens: ids.length, samples };
  }

}

/** How long generate() waits for its input's next requests before it opens a block for the ones it
 *  has (see nextRequest): a file's next chunk, read from the page cache, comes in well under it. */
const BLOCK_FILL_WAIT_MS = 5;

/** The input's next request (or its end), or null when it has none ready and the engine has
 *  work to step meanwhile. An async input may wait for anything (a socket, or an earlier result:
 *  an agent loop yields its next request once the last one's result came), so it is waited for
 *  only when the engine has nothing to step, parked: a scheduler or close() that waits for the
 *  runner meanwhile takes it (the block is given up). With sequences waiting and none running,
 *  the block opened next is shaped for the waiting ones, so the input gets BLOCK_FILL_WAIT_MS to
 *  fill it; with sequences running, one turn of the event loop (what it has at hand). */
async function nextRequest(input: RequestInput, engine: ContinuousEngine): Promise<IteratorResult<GenerationRequest> | null> {
  if (engine.busy) return input.poll(engine.running > 0 ? 0 : BLOCK_FILL_WAIT_MS);
  await engine.park();
  try {
    return await input.next();
  } finally {
    engine.unpark();
  }
}

/** generate()'s requests, read without blocking: one next() of the input is in flight at a
 *  time, and a poll that finds it unsettled leaves it pending for the next call. */
class RequestInput {
  private pending: Promise<IteratorResult<GenerationRequest>> | null = null;
  /** The input said done, or threw: it has nothing to release. */
  private ended = false;

  constructor(private readonly it: Iterator<GenerationRequest> | AsyncIterator<GenerationRequest>) {}

  /** The next item, however long the input takes. */
  async next(): Promise<IteratorResult<GenerationRequest>> {
    const r = this.pending ?? this.read();
    this.pending = null;
    return r;
  }

  /** The next item if the input has it within `ms` (0: within one turn of the event loop, which
   *  an async generator over items at hand takes), else null, the read left pending. A plain
   *  iterable's item is at hand. An input that throws rejects here. */
  async poll(ms: number): Promise<IteratorResult<GenerationRequest> | null> {
    const r = this.pending ?? this.read();
    if (typeof (r as { then?: unknown }).then !== 'function') return r as IteratorResult<GenerationRequest>;
    const pending = (this.pending = Promise.resolve(r));
    let timer: ReturnType<typeof setTimeout> | undefined;
    let immediate: ReturnType<typeof setImmediate> | undefined;
    const late = new Promise<null>((resolve) => {
      if (ms > 0) timer = setTimeout(resolve, ms, null);
      else immediate = setImmediate(resolve, null);
    });
    try {
      const got = await Promise.race([pending, late]);
      if (got !== null) this.pending = null;
      return got;
    } finally {
      clearTimeout(timer);
      clearImmediate(immediate);
    }
  }

  /** Ends an input that still has items (generate() stopped early: its consumer broke out, or
   *  a step failed) with its return(), as for-await does, so that a generator's finally blocks
   *  (a file it reads, a socket) run. Not awaited: with a next() pending an async generator runs
   *  it once that settles, which may be never (an input waiting on a client). A pending read
   *  that rejects later is nobody's error any more. */
  close(): void {
    this.pending?.catch(() => undefined);
    if (this.ended || typeof this.it.return !== 'function') return;
    this.ended = true;
    try {
      const r = this.it.return() as unknown;
      if (r && typeof (r as { then?: unknown }).then === 'function') (r as Promise<unknown>).catch(() => undefined);
    } catch {
      // (the input's own cleanup failing is not the caller's error)
    }
  }

  /** One next() of the input, noting its end. */
  private read(): IteratorResult<GenerationRequest> | Promise<IteratorResult<GenerationRequest>> {
    const done = (x: IteratorResult<GenerationRequest>) => {
      if (x.done) this.ended = true;
      return x;
    };
    let r: IteratorResult<GenerationRequest> | Promise<IteratorResult<GenerationRequest>>;
    try {
      r = this.it.next();
    } catch (e) {
      this.ended = true;
      throw e;
    }
    if (typeof (r as { then?: unknown }).then !== 'function') return done(r as IteratorResult<GenerationRequest>);
    return (r as Promise<IteratorResult<GenerationRequest>>).then(done, (e: unknown) => {
      this.ended = true;
      throw e;
    });
  }
}

/** A finished request's result, or its error (its own, or its first refused sample's). */
function outcome(item: Queued): GenerationResult | RequestError {
  if ('error' in item) return item;
  const refused = item.samples.find((s) => s.error !== null);
  if (refused) return { id: item.req.id, error: refused.error! };
  return requestResult(item.req.id, item.promptTokens, item.samples);
}

/** The requests' cancels by the signal they share, and its one listener. */
const aborts = new WeakMap<AbortSignal, { cancels: Set<() => void>; listener: () => void }>();

/** Calls `cancel` when `signal` aborts; returns its removal. A signal shared by many requests (a
 *  batch job's, or one an API caller passes to every submit) gets one listener, not one each:
 *  past 10 Node warned of a leak. The listener goes with the last request's removal. */
function whenAborted(signal: AbortSignal, cancel: () => void): () => void {
  let entry = aborts.get(signal);
  if (!entry) {
    const cancels = new Set<() => void>();
    entry = { cancels, listener: () => [...cancels].forEach((c) => c()) };
    aborts.set(signal, entry);
    signal.addEventListener('abort', entry.listener, { once: true });
  }
  const e = entry;
  e.cancels.add(cancel);
  return () => {
    e.cancels.delete(cancel);
    if (e.cancels.size > 0) return;
    signal.removeEventListener('abort', e.listener);
    aborts.delete(signal);
  };
}

/** What is wrong with a request's own limits (stop, stopTokenIds, logprobs, topLogprobs), or null. */
export function checkRequestLimits(req: GenerationRequest, hasTokenizer: boolean, names: RequestNames = 'api', vocabSize = Infinity): string | null {
  const [stopTokenIds, topLogprobs] = names === 'api' ? ['stopTokenIds', 'topLogprobs'] : ['stop_token_ids', 'top_logprobs'];
  if (req.stop !== undefined) {
    if (!Array.isArray(req.stop) || req.stop.length > 4 || !req.stop.every((s) => typeof s === 'string' && s.length > 0)) {
      return '"stop" must be an array of at most 4 non-empty strings';
    }
    if (req.stop.length > 0 && !hasTokenizer) return 'the model has no tokenizer.json, so "stop" strings cannot be used';
    // (a stop of a lone surrogate, "\udfe7", cut a surrogate pair: the text ended in half of one)
    const ill = illFormedField(req.stop, 'stop');
    if (ill) return `"${ill.field}" ${ill.why}`;
  }
  if (req.stopTokenIds !== undefined && !(Array.isArray(req.stopTokenIds) && req.stopTokenIds.every((t) => Number.isSafeInteger(t) && t >= 0))) {
    return `"${stopTokenIds}" must be an array of non-negative integers`;
  }
  const outside = req.stopTokenIds && stopIdsOutside(req.stopTokenIds, vocabSize, `"${stopTokenIds}"`);
  if (outside) return outside;
  if (req.logprobs !== undefined && typeof req.logprobs !== 'boolean') return '"logprobs" must be true or false';
  if (req.topLogprobs !== undefined && !isTopCount(req.topLogprobs)) return `"${topLogprobs}" must be an integer in [0, ${MAX_TOP_LOGPROBS}]`;
  if (req.promptLogprobs !== undefined && !isTopCount(req.promptLogprobs)) {
    return `"${names === 'api' ? 'promptLogprobs' : 'prompt_logprobs'}" must be an integer in [0, ${MAX_TOP_LOGPROBS}]`;
  }
  return null;
}

/** What is wrong with stop token ids past the vocabulary (never sampled: they stopped nothing,
 *  silently), named `name`, or null. */
export function stopIdsOutside(ids: readonly number[], vocabSize: number, name: string): string | null {
  const outside = ids.find((t) => t >= vocabSize);
  return outside === undefined ? null : `${name}: ${outside} is outside the model's vocabulary of ${vocabSize} tokens`;
}

function checkParams(p: GenerateParams): void {
  for (const k of ['maxNewTokens', 'n', 'batchSize', 'numGpuBatches'] as const) checkApiValue(k, p[k]);
  for (const k of SAMPLING_KEYS) checkApiValue(k as RuleName, p.sampling[k as keyof SamplingParams]);
  if (p.cacheDtype !== 'f32' && p.cacheDtype !== 'f16' && p.cacheDtype !== 'q4') throw new RangeError(`cacheDtype must be "auto", "f32", "f16" or "q4", got ${JSON.stringify(p.cacheDtype)}`);
  if (!Array.isArray(p.stopTokenIds) || !p.stopTokenIds.every((t) => Number.isInteger(t) && t >= 0)) throw new RangeError('stopTokenIds must be an array of non-negative integers');
  for (const k of ['stopAtEos', 'logprobs'] as const) if (typeof p[k] !== 'boolean') throw new TypeError(`${k} must be true or false, got ${JSON.stringify(p[k])}`);
  if (p.onToken !== undefined && typeof p.onToken !== 'function') throw new TypeError('onToken must be a function');
  if (p.prefillChunk !== undefined && !(Number.isSafeInteger(p.prefillChunk) && p.prefillChunk >= 1)) throw new RangeError(`prefillChunk must be an integer >= 1, got ${JSON.stringify(p.prefillChunk)}`);
  if (p.order !== 'input' && p.order !== 'finish') throw new RangeError(`order must be "input" or "finish", got ${JSON.stringify(p.order)}`);
}

/** Bytes per cached element (a q4 record spreads its codes and group parameters over d). */
export function cacheBytesPerElement(dtype: CacheDType, headDim: number): number {
  return dtype === 'f32' ? 4 : dtype === 'f16' ? 2 : q4RecordBytes(headDim) / headDim;
}
