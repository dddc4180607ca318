// Continuous batching of requests over one loaded LanguageModel: callers submit requests at any
// time and each gets its own promise. The scheduler turns a request into its n sequences and
// hands them to the continuous engine (src/engine/continuous.ts), which it steps while there is
// work. The engine's step loop, at each step boundary:
//   1. sweep: finished and aborted sequences leave their slots (no compute on them, their cache
//      rows reused);
//   2. admit: waiting sequences take free slots, interactive before batch, in arrival order;
//   3. build one step per batch: a decode token for every row past its prompt, and prompt
//      chunks of at most prefillChunk tokens (oldest first), so a prefill never stalls decode
//      (mixed in one step when weights stream from disk, taking turns when they are resident);
//   4. run it through the runner's zig-zag schedule (weights, cache and activations on any tier,
//      each load waiting for exactly the stores it reads), then sample every row whose prompt
//      is complete.
// Leaving before admitting gives a new request every slot freed by the step before; admitting
// before building the step lets its first chunk run in the very next step, so its first token
// comes after at most one step in flight plus its own prefill chunks (and, for a prompt of
// several chunks with resident weights, the others' decode steps between them). Sampling after the step
// and sweeping at the next boundary keeps a step's rows fixed while it runs.

import type { ContinuousEngine } from './continuous.js';
import type { GenerateParams, Generator } from './generate.js';
import { type Sequence, type TokenHook, requestResult } from './sequence.js';
import type { GenerationRequest, GenerationResult, RequestError } from './requests.js';
import { excerpt } from '../util/text.js';

export interface RequestOptions {
  /** 'interactive' requests are admitted before 'batch' ones (default 'interactive'). */
  priority?: 'interactive' | 'batch';
  /** Aborting removes the request's sequences at the next step boundary (their compute and cache
   *  slots freed); the promise then resolves to { id, error: 'cancelled' }. */
  signal?: AbortSignal;
  /** Each token as soon as it is sampled (streaming): sample index (0..n-1), token id, and the
   *  text it completes (incremental detokenization; '' while a multi-byte char is incomplete). */
  onToken?: (sample: number, token: number, text: string) => void;
}

export interface SchedulerStats {
  queued: number; // requests waiting to be admitted
  running: number; // sequences in the running block
  promptTokens: number; // totals since start
  generatedTokens: number;
  timeToFirstTokenSeconds: number[]; // recent TTFTs (last 1000), for metrics
}

interface Submitted {
  id: string;
  options: RequestOptions;
  submitted: number;
  resolve: (r: GenerationResult | RequestError) => void;
  reject: (e: unknown) => void;
}

const TTFT_KEPT = 1000;

export class Scheduler {
  private readonly engine: ContinuousEngine;
  private draining = false;
  private loop: Promise<void> = Promise.resolve();
  /** Whether run() is stepping the engine (set and cleared synchronously with the engine's
   *  busy check, so a request submitted at any moment is either seen by it or starts it). */
  private active = false;
  private readonly ttft: number[] = [];
  private generatedTotal = 0;

  /** @internal Created by LanguageModel.scheduler(). */
  constructor(
    private readonly generator: Generator,
    private readonly params: GenerateParams,
  ) {
    this.engine = generator.engine(params, true);
  }

  /** Runs one request (its n samples); resolves with its result or { id, error }. Never rejects
   *  for a bad request (that is a RequestError); rejects only when the engine itself fails. */
  submit(req: GenerationRequest, options: RequestOptions = {}): Promise<GenerationResult | RequestError> {
    const id = String((req as { id?: unknown } | null)?.id ?? '');
    if (this.draining) return Promise.resolve({ id, error: 'shutting down' });
    const bad = checkOptions(options);
    if (bad) return Promise.resolve({ id, error: bad });
    if (options.signal?.aborted) return Promise.resolve({ id, error: 'cancelled' });
    return new Promise((resolve, reject) => {
      const w: Submitted = { id, options, submitted: performance.now(), resolve, reject };
      let first = true;
      // A callback that throws ends its own request (with an error), never the engine.
      let hookError: unknown = null;
      let samples: Sequence[] = [];
      const onToken: TokenHook = (sample, token, text) => {
        if (first) {
          first = false;
          this.ttft.push((performance.now() - w.submitted) / 1000);
          if (this.ttft.length > TTFT_KEPT) this.ttft.shift();
        }
        this.generatedTotal++;
        try {
          // the request's own hook, and the scheduler's params' (called for every request, as
          // generate() calls it; it was never called)
          options.onToken?.(sample, token, text);
          this.params.onToken?.(id, token, sample, text);
        } catch (e) {
          hookError ??= e;
          for (const x of samples) x.cancel();
        }
      };
      const item = this.generator.expand(req, this.params, 'api', { signal: options.signal, onToken });
      if ('error' in item) return resolve(item);
      samples = item.samples;
      let left = item.samples.length;
      const done = () => {
        if (--left > 0) return;
        item.detach?.();
        if (hookError) return resolve({ id, error: `onToken failed: ${hookError instanceof Error ? hookError.message : String(hookError)}` });
        if (options.signal?.aborted) return resolve({ id, error: 'cancelled' });
        const refused = item.samples.find((x) => x.error !== null);
        if (refused) return resolve({ id, error: refused.error! });
        resolve(requestResult(item.req.id, item.promptTokens, item.samples));
      };
      const priority = (options.priority ?? 'interactive') === 'interactive' ? 0 : 1;
      const fail = (e: unknown) => {
        item.detach?.();
        reject(e);
      };
      for (const seq of item.samples) this.engine.add({ seq, priority, done, fail });
      if (!this.active) {
        this.active = true;
        this.loop = this.run();
      }
    });
  }

  get stats(): SchedulerStats {
    return {
      queued: this.engine.queuedRequests,
      running: this.engine.running,
      promptTokens: this.engine.stats.promptTokens,
      generatedTokens: this.generatedTotal,
      timeToFirstTokenSeconds: [...this.ttft],
    };
  }

  /** The most positions (prompt and new tokens) a request may take within the memory limits:
   *  one that needs more is refused. 0 when no block fits them. */
  get positionsUnderLimits(): number {
    return this.engine.positionsUnderLimits() ?? 0;
  }

  /** Why a request of `prompt` tokens needing `positions` positions would be refused for the
   *  memory limits (the words of its error), or null when a block holds it: see
   *  ContinuousEngine.refusalFor. */
  refusalFor(prompt: number, positions: number): string | null {
    return this.engine.refusalFor(prompt, positions);
  }

  /** Steps run so far (for tests that count steps rather than time). @internal */
  get steps(): number {
    return this.engine.steps;
  }

  /** Stops admitting new requests (submit then resolves to an error 'shutting down'); resolves when
   *  everything already admitted has finished. */
  async drain(): Promise<void> {
    this.draining = true;
    while (this.active) await this.loop;
  }

  /** Steps the engine while it has work; a failure of the engine rejects every request it held. */
  private async run(): Promise<void> {
    // Let the submits of the same tick join the first step.
    await Promise.resolve();
    for (;;) {
      // One turn of the event loop per step: with everything in RAM a step's awaits resolve as
      // microtasks, and without this a server could not accept a request, read a body or see a
      // client leave until every request was done. Requests that arrive join at this boundary.
      await new Promise((resolve) => setImmediate(resolve));
      try {
        // step() closes the block when there is nothing to run; a request may arrive meanwhile.
        if (!(await this.engine.step()) && !this.engine.busy) {
          this.active = false;
          return;
        }
      } catch (e) {
        for (const a of await this.engine.abandon()) a.fail?.(e);
      }
    }
  }
}

const REQUEST_OPTION_KEYS = ['priority', 'signal', 'onToken'] as const;

function checkOptions(o: RequestOptions): string | null {
  if (typeof o !== 'object' || o === null) return 'request options must be an object';
  const unknown = Object.keys(o).filter((k) => !(REQUEST_OPTION_KEYS as readonly string[]).includes(k));
  if (unknown.length > 0) return `request options: unknown option ${unknown.map((k) => excerpt(k)).join(', ')} (known: ${REQUEST_OPTION_KEYS.join(', ')})`;
  if (o.priority !== undefined && o.priority !== 'interactive' && o.priority !== 'batch') return 'priority must be "interactive" or "batch"';
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) return 'signal must be an AbortSignal';
  if (o.onToken !== undefined && typeof o.onToken !== 'function') return 'onToken must be a function';
  return null;
}
