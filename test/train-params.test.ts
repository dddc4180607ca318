// The ParamSource contract the next tiers build on: the model touches a layer's parameters only
// between fetchLayer and releaseLayer, and writes its gradients only between layerGrads and
// releaseLayerGrads. A source that hands out copies and poisons them (NaN) on release must give
// exactly the gradients of the plain in-RAM store.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type PackedWeight, cpuBackend } from '../src/backend/index.js';
import { TensorStore } from '../src/formats/safetensors.js';
import type { Norm } from '../src/models/weights.js';
import { readConfig } from '../src/models/registry.js';
import type { NormGrad } from '../src/models/ops.js';
import { Tensor } from '../src/tensor/tensor.js';
import { packMicroBatch } from '../src/train/batch.js';
import { TrainModel } from '../src/train/model.js';
import { type LayerGrads, type LayerParams, type LinearGrad, ParamStore, type ParamSource, type TrainLinear } from '../src/train/params.js';
import { fixturesDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES, fixtureBatch } from './helpers/train.js';

type F32 = Tensor<'f32'>;
const b = cpuBackend();

function open(dir: string): ParamStore {
  const { arch, config } = readConfig(dir);
  const ts = TensorStore.open(dir);
  try {
    return ParamStore.fromTensors(config, arch.names(config, (n) => ts.has(n)), b, 'fp32', ts);
  } finally {
    ts.close();
  }
}

const copy = (t: F32) => new Tensor('f32', t.shape, t.data.slice());
const copyNorm = (n: Norm): Norm => ({ w: copy(n.w), b: n.b && copy(n.b) });
const copyLinear = (l: TrainLinear): TrainLinear => ({ ...l, b: l.b && copy(l.b) });

/** Lends copies of layer parameters and zeroed gradient buffers; poisons both on release, adding
 *  the lent gradients into the store's first. Counts every call. */
class PoisoningSource implements ParamSource {
  readonly calls: string[] = [];
  private lent = new Map<number, { p: LayerParams }>();
  private lentGrads = new Map<number, { lent: LayerGrads; real: LayerGrads }>();

  constructor(private readonly store: ParamStore) {}

  get config() {
    return this.store.config;
  }

  get mode() {
    return this.store.mode;
  }

  fetchLayer(j: number, backward: boolean): LayerParams {
    this.calls.push(`fetch ${j}${backward ? ' +T' : ''}`);
    const p = this.store.fetchLayer(j, backward);
    const c: LayerParams = {
      attnNorm: copyNorm(p.attnNorm), mlpNorm: copyNorm(p.mlpNorm), q: copyLinear(p.q), k: copyLinear(p.k), v: copyLinear(p.v),
      o: copyLinear(p.o), gate: p.gate && copyLinear(p.gate), up: copyLinear(p.up), down: copyLinear(p.down),
    };
    this.lent.set(j, { p: c });
    return c;
  }

  releaseLayer(j: number): void {
    this.calls.push(`release ${j}`);
    const { p } = this.lent.get(j)!;
    this.lent.delete(j);
    const poison = (t: F32 | null) => t?.data.fill(NaN);
    const poisonPacked = (w: PackedWeight | null) => w?.data.fill(0xff);  // NaN in every float format
    for (const n of [p.attnNorm, p.mlpNorm]) [n.w, n.b].forEach(poison);
    for (const l of [p.q, p.k, p.v, p.o, p.gate, p.up, p.down]) {
      if (!l) continue;
      poison(l.b);
      poisonPacked(l.w);
      poisonPacked(l.wT);
    }
  }

  fetchGlobals(backward: boolean) {
    return this.store.fetchGlobals(backward);
  }

  releaseGlobals(): void {}

  layerGrads(j: number): LayerGrads {
    this.calls.push(`grads ${j}`);
    const real = this.store.layerGrads(j);
    const zero = (t: F32 | null) => t && Tensor.zeros('f32', t.shape);
    const lin = (g: LinearGrad | null): LinearGrad | null => g && { w: zero(g.w)!, b: zero(g.b) };
    const norm = (g: NormGrad): NormGrad => ({ w: zero(g.w)!, b: zero(g.b) });
    const lent: LayerGrads = {
      attnNorm: norm(real.attnNorm), mlpNorm: norm(real.mlpNorm), q: lin(real.q)!, k: lin(real.k)!, v: lin(real.v)!, o: lin(real.o)!,
      gate: lin(real.gate), up: lin(real.up)!, down: lin(real.down)!,
    };
    this.lentGrads.set(j, { lent, real });
    return lent;
  }

  releaseLayerGrads(j: number): void {
    this.calls.push(`release grads ${j}`);
    const { lent, real } = this.lentGrads.get(j)!;
    this.lentGrads.delete(j);
    const pairs = (['attnNorm', 'mlpNorm', 'q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const).flatMap((k) => {
      const [l, r] = [lent[k], real[k]];
      return l && r ? [[l.w, r.w], [l.b, r.b]] : [];
    });
    for (const [l, r] of pairs) {
      if (!l || !r) continue;
      b.add(r, l, r);
      l.data.fill(NaN);
    }
  }

  globalGrads() {
    return this.store.globalGrads();
  }

  releaseGlobalGrads(): void {}
}

describe('ParamSource: parameters and gradients only between fetch and release', () => {
  const cases: [string, string][] = [['opt-train', path.join(TRAIN_FIXTURES, 'opt-train')], ['llama-train', path.join(TRAIN_FIXTURES, 'llama-train')],
    ['opt-350m-style', path.join(fixturesDir, 'opt-350m-style')], ['qwen2-tiny', path.join(fixturesDir, 'qwen2-tiny')]];
  for (const [name, dir] of cases) {
    for (const checkpoint of [true, false]) {
      it(`${name}, checkpointing ${checkpoint ? 'on' : 'off'}`, async () => {
        const plain = open(dir), wrapped = open(dir);
        const source = new PoisoningSource(wrapped);
        const batch = packMicroBatch(fixtureBatch().map((s) => ({ ...s, tokenIds: s.tokenIds.map((id) => id % plain.config.vocabSize) })),
          plain.config);
        const a = await new TrainModel(plain, b, checkpoint).lossAndGrad(batch, 1 / batch.count);
        const w = await new TrainModel(source, b, checkpoint).lossAndGrad(batch, 1 / batch.count);
        expect(w).toEqual(a);
        plain.states.forEach((s, i) => expect(wrapped.states[i]!.grad.data, s.name).toEqual(s.grad.data));
        // Every layer: fetched for the forward, fetched again with its transposes for the backward.
        const L = plain.config.layers;
        const forward = Array.from({ length: L }, (_, j) => [`fetch ${j}`, `release ${j}`]).flat();
        const backward = Array.from({ length: L }, (_, i) => L - 1 - i).flatMap((j) => [`fetch ${j} +T`, `grads ${j}`, `release grads ${j}`, `release ${j}`]);
        expect(source.calls).toEqual([...forward, ...backward]);
      });
    }
  }
});
