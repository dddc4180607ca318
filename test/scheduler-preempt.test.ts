// Interactive first, also when a block is full of batch work: an interactive request takes a
// batch sequence's slot at once (that one waits and is computed again from its tokens), instead of
// waiting for a whole batch line to finish (a 3-token completion took 48 s beside a batch job).
// Every request still gets what it gets alone, the preempted ones too (greedy and sampled).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GenerationRequest, type GenerationResult, type LanguageModel, type RequestError, loadModel } from '../src/index.js';
import { fixturesDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const params = { stopAtEos: false };

async function alone(model: LanguageModel, req: GenerationRequest): Promise<GenerationResult | RequestError> {
  for await (const r of model.generate([req], { ...params, batchSize: 1, numGpuBatches: 1 })) return r;
  throw new Error('no result');
}

describe('an interactive request beside a full block of batch work', () => {
  let model: LanguageModel;
  // A block of two rows: two batch lines fill it.
  beforeAll(async () => {
    model = await loadModel(opt, { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
  });
  afterAll(async () => model?.close());

  it('takes a batch slot at once; the batch lines are computed again and give what they give alone', async () => {
    const s = model.scheduler(params);
    const batch: GenerationRequest[] = [
      // (prompt log-probabilities too: a row computed again scores nothing twice)
      { id: 'b1', promptTokenIds: [5, 9, 13, 2], maxNewTokens: 40, promptLogprobs: 2 },
      { id: 'b2', promptTokenIds: [7, 3], maxNewTokens: 40, sampling: { temperature: 0.9, seed: 4 }, promptLogprobs: 0 },
    ];
    const interactive: GenerationRequest = { id: 'i', promptTokenIds: [11, 12], maxNewTokens: 3, sampling: { temperature: 0.7, seed: 2 } };
    const finished: string[] = [];
    const tokensAt = new Map<string, number>();
    let started!: () => void;
    const batchStarted = new Promise<void>((r) => (started = r));
    let counted = 0;
    const b = batch.map((req) => s.submit(req, {
      priority: 'batch',
      onToken: () => {
        if (++counted === 8) started();
      },
    }).then((r) => (finished.push(req.id), r)));
    await batchStarted;
    const i = s.submit(interactive).then((r) => {
      finished.push('i');
      // (how far the batch lines had got when the interactive one was answered)
      tokensAt.set('batch', counted);
      return r;
    });
    const got = await Promise.all([...b, i]);
    expect(finished[0]).toBe('i');
    // Answered within a few steps of arriving, not after a batch line's 40 tokens.
    expect(tokensAt.get('batch')!).toBeLessThan(8 + 2 * 10);
    for (const [k, req] of [...batch, interactive].entries()) expect(got[k]).toEqual(await alone(model, req));
  });

  it('a batch request evicted once keeps its next slot: a steady stream of interactive ones does not starve it', async () => {
    // Two interactive requests always in flight in a block of two rows. Evicted at every
    // admission, the batch request never finished while the stream lasted (12930 interactive
    // answers in 5 s, and the batch one after them).
    const s = model.scheduler(params);
    const req: GenerationRequest = { id: 'b', promptTokenIds: [3, 1, 4, 1, 5, 9, 2, 6], maxNewTokens: 10 };
    let done = false;
    let answered = 0;
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const batch = s.submit(req, { priority: 'batch', onToken: () => started() }).then((r) => ((done = true), r));
    // (from its first token on: a batch request still waiting is admitted in a lull, by design)
    await running;
    const loop = async (k: number) => {
      for (let i = 0; !done && answered < 2000; i++) {
        await s.submit({ id: `i${k}-${i}`, promptTokenIds: [7, 8, 9, 10], maxNewTokens: 1 });
        answered++;
      }
    };
    await Promise.all([loop(0), loop(1)]);
    expect(done).toBe(true);
    expect(answered).toBeLessThan(2000);
    expect(await batch).toEqual(await alone(model, req));
  });

  it('batch requests not yet started get slots under a steady stream of interactive ones, one for every block of them', async () => {
    // The stream starts first: both rows interactive, the batch lines waiting. Without a bound on
    // how many interactive requests pass a batch one, none started while the stream lasted.
    const s = model.scheduler(params);
    const reqs: GenerationRequest[] = [
      { id: 'b1', promptTokenIds: [3, 1, 4, 1, 5], maxNewTokens: 6 },
      { id: 'b2', promptTokenIds: [2, 7, 1, 8], maxNewTokens: 5, sampling: { temperature: 0.8, seed: 11 } },
      { id: 'b3', promptTokenIds: [6], maxNewTokens: 4 },
    ];
    let answered = 0;
    let finished = 0;
    const answeredAt: number[] = [];
    let streaming!: () => void;
    const flowing = new Promise<void>((r) => (streaming = r));
    const loop = async (k: number) => {
      for (let i = 0; finished < reqs.length && answered < 3000; i++) {
        await s.submit({ id: `i${k}-${i}`, promptTokenIds: [7, 8, 9, 10], maxNewTokens: 2 });
        if (++answered === 10) streaming();
      }
    };
    const stream = Promise.all([loop(0), loop(1)]);
    await flowing;
    const batch = reqs.map((req) => s.submit(req, { priority: 'batch' }).then((r) => (finished++, answeredAt.push(answered), r)));
    const got = await Promise.all(batch);
    await stream;
    // A block has two rows: each batch line lets at most two interactive ones pass it, then runs
    // beside the stream (its tokens take a few steps; the interactive ones answered meanwhile).
    expect(answered).toBeLessThan(3000);
    expect(Math.max(...answeredAt)).toBeLessThan(10 + 3 * 2 + 3 * 12);
    for (const [k, req] of reqs.entries()) expect(got[k]).toEqual(await alone(model, req));
  });

  it('interactive requests pass a waiting batch job two at a time (a block\'s rows), not all of it', async () => {
    // Both rows busy; a batch job of three lines waits, then six interactive requests arrive.
    // Strictly by priority the six went first; aging every batch line they passed let the whole
    // job go ahead of the fifth and sixth.
    const s = model.scheduler(params);
    const first: string[] = [];
    const mark = (id: string) => () => {
      if (!first.includes(id)) first.push(id);
    };
    const go = (id: string, tokens: number, priority: 'batch' | 'interactive' = 'interactive') =>
      s.submit({ id, promptTokenIds: [4, 6], maxNewTokens: tokens }, { priority, onToken: mark(id) });
    const all = [go('hold', 3), go('hold2', 30)];
    for (const id of ['b1', 'b2', 'b3']) all.push(go(id, 2, 'batch'));
    for (const id of ['i1', 'i2', 'i3', 'i4', 'i5', 'i6']) all.push(go(id, 2));
    await Promise.all(all);
    expect(first.filter((id) => id !== 'hold' && id !== 'hold2')).toEqual(['i1', 'i2', 'b1', 'i3', 'i4', 'b2', 'i5', 'i6', 'b3']);
  });

  it('batch requests among themselves, and interactive ones among themselves, preempt nothing', async () => {
    const s = model.scheduler(params);
    const order: string[] = [];
    const run = (id: string, priority: 'batch' | 'interactive', maxNewTokens: number) =>
      s.submit({ id, promptTokenIds: [4, 6], maxNewTokens }, { priority }).then((r) => (order.push(id), r));
    // Two long ones fill the block; a short third of the same priority waits for a slot.
    for (const priority of ['batch', 'interactive'] as const) {
      order.length = 0;
      await Promise.all([run('x', priority, 30), run('y', priority, 30), run('z', priority, 2)]);
      expect(order.indexOf('z')).toBe(2);
    }
  });
});

describe('a batch job waiting beside a burst of interactive requests, in blocks of other shapes', () => {
  // One row frees again and again (the others held by long interactive requests): a batch line
  // lets a block's rows of interactive ones pass it, then takes the row, whatever the shape.
  it.each([
    { gpuBatchSize: 1, numGpuBatches: 1 },
    { gpuBatchSize: 3, numGpuBatches: 1 },
    { gpuBatchSize: 2, numGpuBatches: 2 },
    { gpuBatchSize: 1, numGpuBatches: 3 },
  ])('$gpuBatchSize × $numGpuBatches', async ({ gpuBatchSize, numGpuBatches }) => {
    const model = await loadModel(opt, { policy: { gpuBatchSize, numGpuBatches } });
    try {
      const rows = gpuBatchSize * numGpuBatches;
      const s = model.scheduler(params);
      const first: string[] = [];
      const go = (id: string, tokens: number, priority: 'batch' | 'interactive' = 'interactive') =>
        s.submit({ id, promptTokenIds: [4, 6], maxNewTokens: tokens }, { priority, onToken: () => first.includes(id) || first.push(id) });
      const all = [go('hold', 3)];
      for (let r = 1; r < rows; r++) all.push(go(`long${r}`, 60));
      for (const id of ['b1', 'b2', 'b3']) all.push(go(id, 2, 'batch'));
      const burst = Array.from({ length: 3 * rows }, (_, i) => `i${i + 1}`);
      for (const id of burst) all.push(go(id, 2));
      await Promise.all(all);
      const expected = [0, 1, 2].flatMap((k) => [...burst.slice(k * rows, (k + 1) * rows), `b${k + 1}`]);
      expect(first.filter((id) => id[0] === 'i' || id[0] === 'b')).toEqual(expected);
    } finally {
      await model.close();
    }
  });
});
