// The ZeRO-3 partition without MPI: the layout gives every element of every tensor to exactly one
// rank, and the partitioned store (gathers, reduce-scatters, prefetch buffers, the skipped
// micro-batch of a rank without sequences) run over a one-rank communicator trains exactly as
// the in-RAM ParamStore does. test/train-ranks.test.ts runs it across real ranks under mpirun.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cpuBackend } from '../src/backend/index.js';
import { SoloComm } from '../src/dist/comm.js';
import { TensorStore } from '../src/formats/safetensors.js';
import { readConfig } from '../src/models/registry.js';
import { checkpointValues } from '../src/train/params.js';
import { ownedPart, partitionLayout } from '../src/train/partition/layout.js';
import { PartitionedStore } from '../src/train/partition/store.js';
import { Trainer, openTrainer } from '../src/train/trainer.js';
import { TRAIN_FIXTURES, fixtureBatch, readAll } from './helpers/train.js';

function open(name: string) {
  const dir = path.join(TRAIN_FIXTURES, name);
  const { arch, config } = readConfig(dir);
  const tensors = TensorStore.open(dir);
  return { dir, config, tensors, names: arch.names(config, (n) => tensors.has(n)) };
}

describe('partition layout', () => {
  it.each([['opt-train', 3], ['llama-train', 2], ['llama-train', 7]])('%s over %i ranks: every element owned once', (name, ranks) => {
    const { config, names, tensors } = open(name);
    tensors.close();
    const layouts = Array.from({ length: ranks }, (_, r) => partitionLayout(config, names, ranks, r));
    const g0 = layouts[0]!.groups;
    expect(g0.length).toBe(config.layers + 1);
    for (const [i, g] of g0.entries()) {
      expect(g.slice * ranks).toBeGreaterThanOrEqual(g.total);
      expect(g.slice * ranks - g.total).toBeLessThan(ranks);
      for (const e of g.entries) {
        const seen = new Uint8Array(e.size);
        for (let r = 0; r < ranks; r++) {
          const own = ownedPart(g, e, r);
          if (!own) continue;
          expect(own.at + own.to - own.from).toBeLessThanOrEqual(g.slice);
          for (let k = own.from; k < own.to; k++) seen[k]!++;
        }
        expect(seen.every((c) => c === 1), `${e.name} in group ${i}`).toBe(true);
      }
    }
    // Layer j's tensors are in group j + 1, the rest in group 0.
    expect(g0[2]!.entries.every((e) => e.name.includes('.1.'))).toBe(true);
    expect(g0[0]!.entries.some((e) => e.name.includes('.0.'))).toBe(false);
  });
});

describe('partitioned store on one rank', () => {
  it.each(['opt-train', 'llama-train'])('%s: the steps of ParamStore, with accumulation and an empty micro-batch', async (name) => {
    const { dir, config, names, tensors } = open(name);
    const backend = cpuBackend();
    const opts = { lr: 1e-3 };
    let store: PartitionedStore;
    try {
      store = PartitionedStore.fromValues(config, names, new SoloComm(), backend, 'fp32', checkpointValues(config, tensors));
    } finally {
      tensors.close();
    }
    const parted = new Trainer(config, store, backend, opts);
    const plain = await openTrainer(dir, opts);
    const batch = fixtureBatch();
    const micro = [batch.slice(0, 2), batch.slice(2), []];
    for (let s = 0; s < 3; s++) {
      const a = await parted.step(micro), b = await plain.step(micro.slice(0, 2));
      // Gradients are summed in another grouping (per micro-batch, then into the slice), so the
      // last bits may differ.
      expect(Math.abs(a.loss - b.loss) / b.loss).toBeLessThan(1e-7);
      expect(Math.abs(a.gradNorm - b.gradNorm) / b.gradNorm).toBeLessThan(1e-7);
      expect(a.tokens).toBe(b.tokens);
    }
    expect(store.traffic.gatheredBytes).toBeGreaterThan(0);
    // The masters, gathered, are the plain trainer's: each tensor's update within 1e-4 (OPT's
    // k_proj biases have no true gradient: their updates are rounding noise, test/fixtures/train).
    const want = new Map(plain.parameters().map((p) => [p.name, p.master.data]));
    const before = readAll(path.join(dir, 'model.safetensors'));
    let n = 0;
    store.gatherMasters((tensor, _shape, values) => {
      n++;
      const w = want.get(tensor)!, b = before.get(tensor)!;
      let d = 0, u = 0;
      for (let i = 0; i < w.length; i++) {
        d += (values[i]! - w[i]!) ** 2;
        u += (w[i]! - b[i]!) ** 2;
      }
      if (!tensor.includes('k_proj.bias')) expect(Math.sqrt(d / u), tensor).toBeLessThan(1e-4);
    });
    expect(n).toBe(want.size);
  });
});
