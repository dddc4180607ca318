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

  // bf16 precision keeps its cache in f16 unless told otherwise (policy cacheDtype 'auto'): the
  // same results as asking for f16, not those of an f32 cache; fp32 stays on f32.
  it('the cache type follows the precision unless given', async () => {
    const dir = models.find(([n]) => n === 'llama-tiny')![1];
    const gen = async (precision: 'fp32' | 'bf16', cacheDtype?: 'f32' | 'f16') => {
      const model = await loadModel(dir, { precision, policy: cacheDtype ? { cacheDtype } : {} });
      const out: number[][] = [];
      for await (const r of model.generate(requests, { maxNewTokens: 6, logprobs: true, stopAtEos: false, batchSize: 5 })) {
        if ('error' in r) throw new Error(r.error);
        out.push(r.logprobs!);
      }
      await model.close();
      return out;
    };
    const auto = await gen('bf16');
    expect(auto).toEqual(await gen('bf16', 'f16'));
    expect(auto).not.toEqual(await gen('bf16', 'f32'));
    expect(await gen('fp32')).toEqual(await gen('fp32', 'f32'));
  });

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

describe('compress_weight packs the LM head and the embedding 4-bit (as llama.cpp\'s Q4_0 files)', () => {
  for (const name of ['opt-tiny', 'llama-tiny']) {
    it(`${name}: head == the reference q4 matmul, embedding rows == reference q4 rows, sizes count them`, async () => {
      const { openModel } = await import('../src/models/load.js');
      const { cpuBackend, referenceBackend } = await import('../src/backend/index.js');
      const { TensorStore } = await import('../src/formats/safetensors.js');
      const { Tensor } = await import('../src/tensor/tensor.js');
      const { expectClose, randomF32 } = await import('./helpers/harness.js');
      const dir = models.find(([n]) => n === name)![1];
      const cpu = cpuBackend();
      const ref = referenceBackend();
      const q4 = openModel(dir, cpu, 'fp32', true);
      const plain = openModel(dir, cpu, 'fp32', false);
      const g = q4.loader.globals();
      const p = plain.loader.globals();
      const c = q4.config;
      expect(g.lmHead.format).toBe('q4');
      expect('packed' in g.embed).toBe(true);
      if (name === 'opt-tiny') expect('packed' in g.embed && g.embed.packed).toBe(g.lmHead); // tied: one weight
      const store = TensorStore.open(dir);
      const headName = name === 'opt-tiny' ? 'model.decoder.embed_tokens.weight' : 'lm_head.weight';
      const embedName = name === 'opt-tiny' ? headName : 'model.embed_tokens.weight';
      const refHead = ref.packWeight(store.read(headName), 'fp32', 'h', { quantize: 'q4' });
      // Odd row counts, each over the whole vocabulary (fp32 mode: exact dequantization, only the
      // summation order differs from the reference).
      for (const m of [1, 3, 7]) {
        const x = randomF32([m, c.embedDim], 900 + m);
        expectClose(cpu.matmul(x, g.lmHead).data, ref.matmul(x, refHead).data, 2e-5, `${name} head m=${m}`);
      }
      const ids = new Tensor('i32', [5], Int32Array.from([0, c.vocabSize - 1, 31, 32, 5]));
      const refEmbed = ref.packWeight(store.read(embedName), 'fp32', 'e', { quantize: 'q4' });
      const gathered = cpu.gatherRows((g.embed as { packed: typeof g.lmHead }).packed, ids);
      expect(Array.from(gathered.data)).toEqual(Array.from(ref.gatherRows(refEmbed, ids).data));
      // The planner's sizes count the 4-bit head and embedding instead of the stored ones.
      const bytes = (w: typeof p) => w.lmHead.data.byteLength + ('table' in w.embed ? w.embed.table.data.byteLength
        : w.embed.packed === w.lmHead ? 0 : w.embed.packed.data.byteLength);
      expect(plain.loader.sizes().globalBytes - q4.loader.sizes().globalBytes).toBe(bytes(p) - bytes(g));
      expect(bytes(g)).toBeLessThan(0.4 * bytes(p)); // bf16 or f32 as stored vs 4.5 bits (rows padded to whole groups)
      store.close();
      q4.close();
      plain.close();
    });
  }
});
