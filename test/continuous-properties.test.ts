// A property test of continuous batching (the style of schedule-properties.test.ts): requests
// arrive at random steps, in random priority, with their own params (new tokens, stop ids,
// logprobs, top logprobs, n, sampling), into schedulers of random placements (weights, cache and
// activations on RAM, disk or both), schedules, block shapes, prefill chunk sizes and cache types
// (f32, f16, q4); some are aborted mid-way. Every request must get exactly what it gets alone
// in RAM (with the same prefill chunk and compression); an aborted one resolves to cancelled.
// The seed is random per run and printed with every failure; TIERLM_CB_SEED=N reruns one,
// TIERLM_CB_CASES=N changes the count. Then: interactive before batch, and time to first token
// counted in steps.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GenerationRequest, type GenerationResult, type LanguageModel, type RequestError, loadModel } from '../src/index.js';
import type { GenerateOptions } from '../src/engine/generate.js';
import type { Policy } from '../src/policy/policy.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';
import { PropertyModels, type Rand, int, pick, randomPlacement } from './helpers/policy-space.js';

const SEED = Number(process.env.TIERLM_CB_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CASES = Number(process.env.TIERLM_CB_CASES ?? 30);

const work = tmpDir('cb-properties');
const models = new PropertyModels(work);
const MODELS = models.models;

interface Arrival {
  req: GenerationRequest;
  /** Submitted once the scheduler has run this many steps (or when nothing else runs). */
  step: number;
  priority: 'interactive' | 'batch';
  /** Aborted after this many tokens, if set. */
  abortAfter?: number;
}

interface Case {
  model: string;
  policy: Partial<Policy>;
  params: GenerateOptions;
  arrivals: Arrival[];
}

const frequent: Record<string, number[]> = {};

function makeCase(r: Rand, index: number): Case {
  const model = pick(r, Object.keys(MODELS));
  const m = MODELS[model]!;
  const policy: Partial<Policy> = {
    ...randomPlacement(r),
    gpuBatchSize: int(r, 1, 4), numGpuBatches: int(r, 1, 3), schedule: r() < 0.25 ? 'row' : 'zigzag', overlap: r() < 0.7,
    sepLayer: r() < 0.5, compressWeight: r() < 0.2, compressCache: r() < 0.25,
  };
  const params: GenerateOptions = {
    maxNewTokens: pick(r, [1, 3, 8, 200]),
    stopAtEos: r() < 0.5,
    // (drawn either way, so that the cases after it stay the same; a compressed cache takes none)
    cacheDtype: ((d) => (policy.compressCache ? undefined : d))(pick(r, ['f32', 'f16'] as const)),
    prefillChunk: pick(r, [1, 3, 7, 64]),
  };
  const stops = frequent[model]!;
  const arrivals = Array.from({ length: int(r, 1, 10) }, (_, i): Arrival => {
    const req: GenerationRequest = {
      id: `c${index}-r${i}`,
      promptTokenIds: Array.from({ length: int(r, 1, r() < 0.2 ? m.maxPositions - 2 : 20) }, () => int(r, 3, m.vocab - 1)),
    };
    if (r() < 0.4) req.maxNewTokens = int(r, 1, 12);
    if (r() < 0.3) req.stopTokenIds = [pick(r, stops)];
    if (r() < 0.4) req.logprobs = true;
    if (r() < 0.3) req.topLogprobs = int(r, 1, 4);
    if (r() < 0.2) req.n = 2;
    if (r() < 0.3) req.sampling = { temperature: 0.8, seed: int(r, 0, 1000) };
    return { req, step: int(r, 0, 8), priority: r() < 0.7 ? 'interactive' : 'batch', abortAfter: r() < 0.1 ? int(r, 1, 3) : undefined };
  });
  return { model, policy, params, arrivals };
}

async function alone(c: Case, req: GenerationRequest): Promise<GenerationResult | RequestError> {
  const model = await models.ram(c.model, c.policy);
  for await (const r of model.generate([req], { ...c.params, batchSize: 1, numGpuBatches: 1 })) return r;
  throw new Error('no result');
}

/** Submits each arrival once the scheduler has run its step (from inside the token callbacks, so
 *  at step boundaries), or at once when nothing else is in flight. */
async function runArrivals(model: LanguageModel, c: Case): Promise<Map<string, GenerationResult | RequestError>> {
  const s = model.scheduler(c.params);
  const steps = () => (s as unknown as { steps: number }).steps;
  const pending = [...c.arrivals].sort((a, b) => a.step - b.step);
  const inFlight = new Set<Promise<void>>();
  const out = new Map<string, GenerationResult | RequestError>();
  const submit = (a: Arrival) => {
    const ac = new AbortController();
    let tokens = 0;
    const p = s.submit(a.req, {
      priority: a.priority, signal: ac.signal,
      onToken: () => {
        if (a.abortAfter !== undefined && ++tokens === a.abortAfter) ac.abort();
        release();
      },
    }).then((r) => {
      out.set(a.req.id, r);
      inFlight.delete(p);
    });
    inFlight.add(p);
  };
  const release = () => {
    while (pending.length > 0 && pending[0]!.step <= steps()) submit(pending.shift()!);
  };
  release();
  while (pending.length > 0 || inFlight.size > 0) {
    if (inFlight.size === 0) submit(pending.shift()!);
    await Promise.race(inFlight);
  }
  await s.drain();
  return out;
}

describe(`continuous batching gives each request what it gets alone (seed ${SEED})`, () => {
  beforeAll(async () => {
    models.prepare();
    for (const name of Object.keys(MODELS)) {
      const got: number[] = [];
      for await (const x of (await models.ram(name, {})).generate([{ id: 'f', promptTokenIds: [7, 9] }], { maxNewTokens: 12, stopAtEos: false })) {
        if (!('error' in x)) got.push(...x.tokenIds);
      }
      frequent[name] = got;
    }
  });

  afterAll(async () => {
    await models.close();
  });

  const r = rng(SEED);
  for (let i = 0; i < CASES; i++) {
    const caseSeed = Math.floor(r() * 2 ** 31);
    it(`case ${i} (case seed ${caseSeed})`, async () => {
      const c = makeCase(rng(caseSeed), i);
      const what = `seed ${SEED}, case ${i}: ${JSON.stringify({ model: c.model, policy: c.policy, params: c.params, arrivals: c.arrivals })}`;
      const disk = path.join(work, `case-${i}`);
      fs.mkdirSync(disk);
      const model = await loadModel(MODELS[c.model]!.dir, { policy: c.policy, diskDir: disk });
      let got: Map<string, GenerationResult | RequestError>;
      try {
        got = await runArrivals(model, c);
      } finally {
        await model.close();
        fs.rmSync(disk, { recursive: true, force: true });
      }
      for (const a of c.arrivals) {
        const g = got.get(a.req.id);
        const want = await alone(c, a.req);
        if (a.abortAfter !== undefined && !('error' in want) && want.tokenIds.length > a.abortAfter) {
          expect(g, `${what}\nrequest ${a.req.id}`).toEqual({ id: a.req.id, error: 'cancelled' });
        } else if (a.abortAfter === undefined) {
          expect(g, `${what}\nrequest ${a.req.id}`).toEqual(want);
        }
      }
    });
  }
});

describe('admission and time to first token', () => {
  let model: LanguageModel;
  beforeAll(async () => {
    model = await loadModel(path.join(fixturesDir, 'opt-tiny'), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
  });
  afterAll(async () => model?.close());

  it('interactive requests are admitted before batch ones; a request arriving during decode gets its first token within its prefill chunks + 1 steps', async () => {
    const s = model.scheduler({ maxNewTokens: 30, stopAtEos: false, prefillChunk: 3 });
    const first: string[] = [];
    const mark = (id: string) => () => !first.includes(id) && first.push(id);
    // Two long requests fill both slots; while they run, batch requests come before an interactive one.
    let aTokens = 0;
    let arrivedAt = -1;
    let firstAt = -1;
    const late: Promise<GenerationResult | RequestError>[] = [];
    const prompt = Array.from({ length: 10 }, (_, i) => 20 + i); // 4 chunks of at most 3
    const a = s.submit({ id: 'a', promptTokenIds: [5, 6] }, {
      onToken: () => {
        aTokens++;
        if (aTokens === 3) {
          arrivedAt = aTokens;
          late.push(s.submit({ id: 'late', promptTokenIds: prompt, maxNewTokens: 2 }, { onToken: () => firstAt < 0 && (firstAt = aTokens) }));
        }
      },
    });
    const b = s.submit({ id: 'b', promptTokenIds: [7], maxNewTokens: 4 });
    await b;
    // 'b' left its slot to 'late'; 'a' decodes one token per step meanwhile.
    await late[0];
    expect(firstAt - arrivedAt).toBeGreaterThan(0);
    expect(firstAt - arrivedAt).toBeLessThanOrEqual(Math.ceil(prompt.length / 3) + 1);
    await a;
    // Both slots busy, a batch request waiting, then an interactive one: the interactive one
    // takes the first slot that frees.
    const hold = s.submit({ id: 'hold', promptTokenIds: [3], maxNewTokens: 6 }, { onToken: mark('hold') });
    const hold2 = s.submit({ id: 'hold2', promptTokenIds: [3], maxNewTokens: 12 }, { onToken: mark('hold2') });
    const batch = s.submit({ id: 'batch', promptTokenIds: [4], maxNewTokens: 2 }, { priority: 'batch', onToken: mark('batch') });
    const inter = s.submit({ id: 'inter', promptTokenIds: [4], maxNewTokens: 2 }, { onToken: mark('inter') });
    expect(s.stats.queued).toBe(4);
    await Promise.all([hold, hold2, batch, inter]);
    expect(first).toEqual(['hold', 'hold2', 'inter', 'batch']);
    const alone = await (async () => {
      for await (const x of model.generate([{ id: 'late', promptTokenIds: prompt, maxNewTokens: 2 }], { stopAtEos: false, prefillChunk: 3 })) return x;
    })();
    expect(await late[0]).toEqual(alone);
  });
});

describe('prompt chunks and decode rows: taking turns with resident weights, mixed when weights stream', () => {
  // Counts, in steps and in the decoding request's tokens, what happens between a request's
  // arrival (after the running one's 3rd token) and its first token.
  async function arrival(model: LanguageModel, promptLen: number) {
    const s = model.scheduler({ maxNewTokens: 30, stopAtEos: false, prefillChunk: 3 });
    let aTokens = 0;
    const seen = { arrivedStep: -1, firstStep: -1, aAtFirst: -1 };
    let late: Promise<GenerationResult | RequestError> | null = null;
    const prompt = Array.from({ length: promptLen }, (_, i) => 20 + i);
    const a = s.submit({ id: 'a', promptTokenIds: [5, 6] }, {
      onToken: () => {
        if (++aTokens !== 3) return;
        seen.arrivedStep = s.steps;
        late = s.submit({ id: 'late', promptTokenIds: prompt, maxNewTokens: 2 }, {
          onToken: () => {
            if (seen.firstStep >= 0) return;
            [seen.firstStep, seen.aAtFirst] = [s.steps, aTokens];
          },
        });
      },
    });
    await a;
    const got = await late!;
    const alone = await (async () => {
      for await (const x of model.generate([{ id: 'late', promptTokenIds: prompt, maxNewTokens: 2 }], { stopAtEos: false, prefillChunk: 3 })) return x;
    })();
    expect(got).toEqual(alone);
    return { steps: seen.firstStep - seen.arrivedStep, aTokens: seen.aAtFirst - 3 };
  }

  it('resident weights: a one-chunk prompt runs alone in the next step, a long one alternates with the decode rows, a tiny one rides along', async () => {
    const model = await loadModel(path.join(fixturesDir, 'opt-tiny'), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
    try {
      // The step after arrival is the prompt's own; the decoding request gets no token in it.
      expect(await arrival(model, 3)).toEqual({ steps: 1, aTokens: 0 });
      // A prompt of no more tokens than the decode rows (here 1) rides along with them.
      expect(await arrival(model, 1)).toEqual({ steps: 1, aTokens: 1 });
      // Chunks of 3, 3, 3, 1: prompt, decode, prompt, decode, prompt, then the last token rides
      // along with the decode row.
      expect(await arrival(model, 10)).toEqual({ steps: 6, aTokens: 3 });
    } finally {
      await model.close();
    }
  });

  it('weights on disk: prompt chunks share each step with the decode rows (one load serves both)', async () => {
    const model = await loadModel(path.join(fixturesDir, 'opt-tiny'), {
      policy: { gpuBatchSize: 2, numGpuBatches: 1, wGpuPercent: 0, wCpuPercent: 0 }, diskDir: tmpDir('mixed-steps'),
    });
    try {
      expect(await arrival(model, 3)).toEqual({ steps: 1, aTokens: 1 });
      expect(await arrival(model, 10)).toEqual({ steps: 4, aTokens: 4 });
    } finally {
      await model.close();
    }
  });
});
