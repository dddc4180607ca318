// generate() over an async input that yields its next request only later (a queue, a socket, an
// agent loop waiting for a result): running requests keep stepping meanwhile, an idle generate()
// waits for its input parked (a scheduler or close() takes the runner), and the results are the
// ones each request gets alone. Before the fix generate() awaited the input's next request before
// every step while a slot was free: each test below then hung (the input waits for something only
// generate() or the runner it held could give).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GenerationRequest, type GenerationResult, type LanguageModel, type RequestError, loadModel } from '../src/index.js';
import { fixturesDir } from './helpers/fixtures.js';

const tiny = path.join(fixturesDir, 'llama-tiny');
const params = { stopAtEos: false, batchSize: 4, numGpuBatches: 1 };

/** A promise and what resolves it. */
function signal(): { wait: Promise<void>; fire: () => void } {
  let fire!: () => void;
  const wait = new Promise<void>((r) => (fire = r));
  return { wait, fire };
}

async function all(it: AsyncIterable<GenerationResult | RequestError>): Promise<(GenerationResult | RequestError)[]> {
  const out: (GenerationResult | RequestError)[] = [];
  for await (const r of it) out.push(r);
  return out;
}

const req = (id: string, maxNewTokens: number, first = 3): GenerationRequest => ({ id, promptTokenIds: [first, 5, 7], maxNewTokens });

describe('generate() with an async input', () => {
  let model: LanguageModel;
  /** Each request's result run alone (the reference: batching changes no token). */
  let alone: Map<string, GenerationResult | RequestError>;
  const reqs = { a: req('a', 4, 2), b: req('b', 3, 4), long: req('long', 30, 6), short: req('short', 1, 8) };

  beforeAll(async () => {
    model = await loadModel(tiny);
    alone = new Map();
    for (const r of Object.values(reqs)) alone.set(r.id, (await all(model.generate([r], params)))[0]!);
  });
  afterAll(async () => model?.close());

  it('an agent loop: the next request comes once the last result did', async () => {
    const gotA = signal();
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield reqs.a;
      await gotA.wait;
      yield reqs.b;
    }
    const out: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generate(input(), params)) {
      out.push(r);
      if (r.id === 'a') gotA.fire();
    }
    expect(out).toEqual([alone.get('a'), alone.get('b')]);
  });

  it('a running request keeps stepping while the input waits (for a result that needs those steps)', async () => {
    // The input waits for short's result, which needs a step that old generate() ran only after
    // the input's next request; long runs on beside it, and b comes while it still runs.
    const gotShort = signal();
    const events: string[] = [];
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield reqs.long;
      yield reqs.short;
      await gotShort.wait;
      events.push('input b');
      yield reqs.b;
    }
    const out: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generate(input(), { ...params, order: 'finish' })) {
      events.push(r.id);
      out.push(r);
      if (r.id === 'short') gotShort.fire();
    }
    expect(events).toEqual(['short', 'input b', 'b', 'long']);
    for (const r of out) expect(r).toEqual(alone.get(r.id));
  });

  it("in input order, a later result held back by a running one still comes: the input's wait ends", async () => {
    const gotShort = signal();
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield reqs.long;
      yield reqs.short;
      await gotShort.wait;
      yield reqs.b;
    }
    const out: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generate(input(), params)) {
      out.push(r);
      if (r.id === 'short') gotShort.fire();
    }
    expect(out).toEqual(['long', 'short', 'b'].map((id) => alone.get(id)));
  });

  it('requests the input has at hand go into the first block together', async () => {
    // (an async generator's items settle a few promise turns after next(): they must not be
    // taken for an input that waits, or the first block would open with one row)
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield* [reqs.a, reqs.b, reqs.long, reqs.short];
    }
    const out = await all(model.generate(input(), params));
    expect(out).toEqual(['a', 'b', 'long', 'short'].map((id) => alone.get(id)));
    const runner = (model as unknown as { runner: { keptCacheShape: { rows: number } | null } }).runner;
    expect(runner.keptCacheShape?.rows).toBe(4);
  });

  it('an idle generate() waiting for its input lets the scheduler run', async () => {
    const served = signal();
    let result: GenerationResult | RequestError | undefined;
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield reqs.a;
      await served.wait;
      yield reqs.b;
    }
    const out: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generate(input(), params)) {
      out.push(r);
      // (not awaited here: generate() is resumed, waits for its input, and must then give the
      // block it holds to the scheduler)
      if (r.id === 'a') void model.scheduler(params).submit(reqs.short).then((s) => (result = s)).then(served.fire);
    }
    expect(result).toEqual(alone.get('short'));
    expect(out).toEqual([alone.get('a'), alone.get('b')]);
  });

  it('an error the input throws while requests run rejects generate(); the model stays usable', async () => {
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield reqs.long;
      await null;
      throw new Error('the queue failed');
    }
    await expect(all(model.generate(input(), params))).rejects.toThrow('the queue failed');
    expect(await all(model.generate([reqs.a], params))).toEqual([alone.get('a')]);
  });

  it('a consumer that stops while the input waits leaves the runner free', async () => {
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield reqs.a;
      yield reqs.long;
      await new Promise(() => undefined); // never comes
    }
    for await (const r of model.generate(input(), params)) {
      expect(r).toEqual(alone.get('a'));
      break;
    }
    expect(await all(model.generate([reqs.b], params))).toEqual([alone.get('b')]);
  });

  it("a consumer that stops early ends the input with its return(), as for-await does: the input's finally runs", async () => {
    // Items at hand (sync and async generators), and a next() still pending when the consumer
    // stops: its finally runs once that read settles. Before, none of them ran.
    const ended: string[] = [];
    function* sync(): Generator<GenerationRequest> {
      try {
        yield reqs.a;
        yield reqs.b;
      } finally {
        ended.push('sync');
      }
    }
    async function* later(): AsyncGenerator<GenerationRequest> {
      try {
        yield reqs.a;
        yield reqs.b;
      } finally {
        ended.push('async');
      }
    }
    const more = signal();
    async function* pending(): AsyncGenerator<GenerationRequest> {
      try {
        yield reqs.a;
        await more.wait;
        yield reqs.b;
      } finally {
        ended.push('pending');
      }
    }
    for (const input of [sync(), later(), pending()]) {
      for await (const r of model.generate(input, params)) {
        expect(r).toEqual(alone.get('a'));
        break;
      }
    }
    more.fire();
    await new Promise((r) => setTimeout(r, 20));
    expect(ended).toEqual(['sync', 'async', 'pending']);
    // An input that ended (done, or threw) is not ended again; a read that rejects after the
    // consumer stopped is nobody's error (no unhandled rejection).
    let returned = 0;
    const done = { [Symbol.iterator]: () => ({ next: () => ({ done: true as const, value: undefined }), return: () => (returned++, { done: true as const, value: undefined }) }) };
    expect(await all(model.generate(done, params))).toEqual([]);
    expect(returned).toBe(0);
    const fail = signal();
    async function* failsLater(): AsyncGenerator<GenerationRequest> {
      yield reqs.a;
      await fail.wait;
      throw new Error('after the consumer stopped');
    }
    for await (const r of model.generate(failsLater(), params)) {
      expect(r.id).toBe('a');
      break;
    }
    fail.fire();
    await new Promise((r) => setTimeout(r, 20));
  });
});

describe('close() while generate() waits for its input', () => {
  it('close() returns; generate() stops with an error when the input yields again', async () => {
    const model = await loadModel(tiny);
    const closed = signal();
    async function* input(): AsyncGenerator<GenerationRequest> {
      yield req('a', 2);
      await closed.wait;
      yield req('b', 2);
    }
    const out: string[] = [];
    const run = (async () => {
      for await (const r of model.generate(input(), params)) {
        out.push(r.id);
        if (r.id === 'a') void model.close().then(closed.fire);
      }
    })();
    await expect(run).rejects.toThrow(/the model was closed \(close\(\)\) while generate\(\) was running/);
    expect(out).toEqual(['a']);
  });
});
