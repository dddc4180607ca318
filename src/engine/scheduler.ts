// Continuous batching of requests over one loaded LanguageModel: callers submit requests at any
// time and each gets its own promise; the scheduler admits waiting requests (interactive before
// batch) and runs them through the generation engine.

import type { GenerateParams, Generator, RequestHooks } from './generate.js';
import type { GenerationRequest, GenerationResult, RequestError } from './requests.js';

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

type Outcome = GenerationResult | RequestError;

interface Waiting {
  req: GenerationRequest;
  options: RequestOptions;
  submitted: number;
  resolve: (r: Outcome) => void;
  reject: (e: unknown) => void;
  /** Sequences of the request still running (n of them once admitted). */
  running: number;
}

const TTFT_KEPT = 1000;

export class Scheduler {
  private readonly queue: Waiting[] = [];
  private runningSeqs = 0;
  private draining = false;
  private loop: Promise<void> | null = null;
  private readonly ttft: number[] = [];
  private promptTotal = 0;
  private generatedTotal = 0;

  /** @internal Created by LanguageModel.scheduler(). */
  constructor(
    private readonly generator: Generator,
    private readonly params: GenerateParams,
  ) {}

  /** Runs one request (its n samples); resolves with its result or { id, error }. Never rejects
   *  for a bad request (that is a RequestError); rejects only when the engine itself fails. */
  submit(req: GenerationRequest, options: RequestOptions = {}): Promise<GenerationResult | RequestError> {
    const id = String((req as { id?: unknown } | null)?.id ?? '');
    if (this.draining) return Promise.resolve({ id, error: 'shutting down' });
    const bad = checkOptions(options);
    if (bad) return Promise.resolve({ id, error: bad });
    if (options.signal?.aborted) return Promise.resolve({ id, error: 'cancelled' });
    return new Promise((resolve, reject) => {
      const w: Waiting = { req, options, submitted: performance.now(), resolve, reject, running: 0 };
      // Interactive requests go before every waiting batch request; order is kept within a priority.
      if ((options.priority ?? 'interactive') === 'interactive') {
        const at = this.queue.findIndex((x) => (x.options.priority ?? 'interactive') === 'batch');
        this.queue.splice(at < 0 ? this.queue.length : at, 0, w);
      } else this.queue.push(w);
      options.signal?.addEventListener('abort', () => {
        const at = this.queue.indexOf(w);
        if (at >= 0) {
          this.queue.splice(at, 1);
          resolve({ id, error: 'cancelled' });
        }
      }, { once: true });
      this.loop ??= this.run().finally(() => (this.loop = null));
    });
  }

  get stats(): SchedulerStats {
    return {
      queued: this.queue.length,
      running: this.runningSeqs,
      promptTokens: this.promptTotal,
      generatedTokens: this.generatedTotal,
      timeToFirstTokenSeconds: [...this.ttft],
    };
  }

  /** Stops admitting new requests (submit then resolves to an error 'shutting down'); resolves when
   *  everything already admitted has finished. */
  async drain(): Promise<void> {
    this.draining = true;
    while (this.loop) await this.loop;
  }

  /** Admits everything waiting, runs it to the end, and again while requests keep coming. */
  private async run(): Promise<void> {
    while (this.queue.length > 0) {
      const admitted = this.queue.splice(0);
      const byReq = new Map<GenerationRequest, Waiting>(admitted.map((w) => [w.req, w]));
      const hooks = (req: GenerationRequest): RequestHooks => {
        const w = byReq.get(req)!;
        let first = true;
        return {
          signal: w.options.signal,
          onToken: (sample, token, text) => {
            if (first) {
              first = false;
              this.ttft.push((performance.now() - w.submitted) / 1000);
              if (this.ttft.length > TTFT_KEPT) this.ttft.shift();
            }
            this.generatedTotal++;
            w.options.onToken?.(sample, token, text);
          },
        };
      };
      let i = 0;
      this.runningSeqs = admitted.reduce((n, w) => n + (w.req?.n ?? this.params.n), 0);
      try {
        for await (const r of this.generator.generate(admitted.map((w) => w.req), this.params, 'api', hooks)) {
          const w = admitted[i++]!;
          if (!('error' in r)) this.promptTotal += r.promptTokens;
          w.resolve(w.options.signal?.aborted ? { id: r.id, error: 'cancelled' } : r);
        }
      } catch (e) {
        for (const w of admitted.slice(i)) w.reject(e);
      } finally {
        this.runningSeqs = 0;
      }
    }
  }
}

function checkOptions(o: RequestOptions): string | null {
  if (typeof o !== 'object' || o === null) return 'request options must be an object';
  if (o.priority !== undefined && o.priority !== 'interactive' && o.priority !== 'batch') return 'priority must be "interactive" or "batch"';
  if (o.onToken !== undefined && typeof o.onToken !== 'function') return 'onToken must be a function';
  return null;
}
