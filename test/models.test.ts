// Every fixture model reproduces its float64 reference: every greedy token, and each token's
// log-probability within 2e-3. Batched generation equals one prompt at a time.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import type { GenerationResult } from '../src/engine/requests.js';
import { type Reference, fixtureModels, fixturePrompts, readJsonl } from './helpers/fixtures.js';
import path from 'node:path';

const models = fixtureModels();
const prompts = fixturePrompts();
const requests = prompts.map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));

async function run(dir: string, batchSize: number, precision: 'fp32' | 'bf16' = 'fp32', cacheDtype: 'f32' | 'f16' = 'f32'): Promise<GenerationResult[]> {
  const model = await loadModel(dir, { precision });
  const out: GenerationResult[] = [];
  for await (const r of model.generate(requests, { maxNewTokens: 8, logprobs: true, stopAtEos: false, batchSize, cacheDtype })) {
    if ('error' in r) throw new Error(r.error);
    out.push(r);
  }
  return out;
}

describe('fixture models reproduce their float64 references', () => {
  it('finds every fixture in test/fixtures', () => {
    expect(models.map(([n]) => n)).toEqual(expect.arrayContaining(['opt-tiny', 'llama-tiny', 'qwen2-tiny', 'opt-350m-style', 'opt-unprefixed', 'mistral-tiny', 'llama-headdim', 'opt-sharded', 'llama3-tiny', 'llama-linear-rope']));
  });

  for (const [name, dir] of models) {
    it(`${name}: tokens exact, logprobs within 2e-3, batched = unbatched`, async () => {
      const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
      const batched = await run(dir, 5);
      for (const r of ref) {
        const got = batched.find((b) => b.id === r.id)!;
        expect(got.tokenIds, `${name} ${r.id} tokens`).toEqual(r.token_ids);
        got.logprobs!.forEach((lp, i) => expect(Math.abs(lp - r.logprobs[i]!), `${name} ${r.id} logprob ${i}`).toBeLessThan(2e-3));
      }
      const single = await run(dir, 1);
      expect(single).toEqual(batched);
    });
  }

  it('an f16 KV cache keeps the greedy tokens of llama-tiny', async () => {
    const dir = models.find(([n]) => n === 'llama-tiny')![1];
    const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
    const got = await run(dir, 5, 'fp32', 'f16');
    ref.forEach((r, i) => expect(got[i]!.tokenIds).toEqual(r.token_ids));
  });
});

describe('loading packs large tensors in chunks', () => {
  it('gives the same packed bytes as packing the whole tensor (f16 and 4-bit), loaded or converted for the disk tier', async () => {
    const { initModel } = await import('../src/models/init.js');
    const { TensorStore } = await import('../src/formats/safetensors.js');
    const { cpuBackend } = await import('../src/backend/index.js');
    const { alignedBytes } = await import('../src/schedule/block-file.js');
    const { tmpDir } = await import('./helpers/fixtures.js');
    const root = tmpDir('chunks');
    const dir = path.join(root, 'm');
    initModel({ config: 'opt-offload-test', out: dir, layers: 1, seed: 5 });
    const store = TensorStore.open(dir);
    const raw = store.read('model.decoder.layers.0.fc1.weight'); // [4096, 1024] f16: eight 1 MiB chunks
    expect(raw.shape[0]).toBeGreaterThan(2048);
    store.close();
    for (const compressWeight of [false, true]) {
      const whole = cpuBackend().packWeight(raw, 'fp32', 'w', compressWeight ? { quantize: 'q4' } : undefined);
      const model = await loadModel(dir, { policy: { compressWeight } });
      const w = (await model.layers.load(0, 'all', null)).up!.w;
      expect(Buffer.from(w.data).equals(Buffer.from(whole.data))).toBe(true);
      await model.close();
      // Every weight on disk: converted through the same chunked reads, read back whole.
      const onDisk = await loadModel(dir, { policy: { compressWeight, wCpuPercent: 0 }, diskDir: root });
      const slot = alignedBytes(onDisk.layers.slotBytes('all'));
      const d = (await onDisk.layers.load(0, 'all', slot)).up!.w;
      expect(Buffer.from(d.data).equals(Buffer.from(whole.data))).toBe(true);
      await onDisk.close();
    }
  });
});
