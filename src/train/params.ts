// Where the training forward and backward get their parameters and put their gradients.
//
// The layer code owns no tensor: before running layer j it fetches the layer's parameters from a
// ParamSource and releases them after, and it accumulates gradients into buffers the source lends
// (released when the layer's backward is done with them). ParamStore below keeps every model
// state in RAM as separate typed buffers (src/optim/state.ts); a source that reads parameters from
// disk or gathers them across ranks, and writes or reduces gradients on release, fits behind the
// same interface without touching the layer code (ZeRO-3 / ZeRO-Infinity's parameter hooks).

import { type Backend, type ComputeMode, PackedWeight } from '../backend/index.js';
import type { TiledGrad, TiledWeight } from '../backend/tiled.js';
import type { ModelConfig } from '../models/config.js';
import type { NormGrad } from '../models/ops.js';
import type { Norm } from '../models/weights.js';
import { type Precision, type ParamState, allocParamState } from '../optim/state.js';
import { toFloat32 } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import { type GlobalSlot, type LayerSlot, type NameTable, expectedShape } from '../models/architecture.js';
import type { TensorStore } from '../formats/safetensors.js';
import { ModelFileError } from '../util/errors.js';

type F32 = Tensor<'f32'>;

/** A linear layer's weight W [out, in] packed for y = x·Wᵀ, and (for backward) Wᵀ packed for
 *  dx = dy·W; bias [out]. */
export interface TrainLinear {
  /** Packed whole, or (a source short of memory) in row tiles made as the GEMM asks for them. */
  w: PackedWeight | TiledWeight;
  wT: PackedWeight | TiledWeight | null;
  b: F32 | null;
}

/** An embedding table a source short of memory keeps off RAM: gathers the rows of `ids` into
 *  out [ids, cols] (f32), as Backend.embedding does from a whole table. */
export interface TableRows {
  readonly rows: number;
  readonly cols: number;
  gather(ids: Tensor<'i32'>, out: F32): F32;
}

export interface LinearGrad {
  w: F32 | TiledGrad; // [out, in]
  b: F32 | null; // [out]
}

export interface LayerParams {
  attnNorm: Norm;
  q: TrainLinear; // [heads·headDim, hidden]
  k: TrainLinear; // [kvHeads·headDim, hidden]
  v: TrainLinear; // [kvHeads·headDim, hidden]
  o: TrainLinear; // [hidden, heads·headDim]
  mlpNorm: Norm;
  gate: TrainLinear | null; // [ffn, hidden]
  up: TrainLinear; // [ffn, hidden]
  down: TrainLinear; // [hidden, ffn]
}

export interface LayerGrads {
  attnNorm: NormGrad;
  q: LinearGrad;
  k: LinearGrad;
  v: LinearGrad;
  o: LinearGrad;
  mlpNorm: NormGrad;
  gate: LinearGrad | null;
  up: LinearGrad;
  down: LinearGrad;
}

export interface GlobalParams {
  embed: Tensor | TableRows; // [vocab, embedDim], f32 or bf16 (or read row by row)
  posEmbed: Tensor | null; // [maxPositions + offset, hidden]
  projectIn: TrainLinear | null; // [hidden, embedDim]
  projectOut: TrainLinear | null; // [embedDim, hidden]
  finalNorm: Norm | null;
  head: TrainLinear; // [vocab, embedDim], no bias (packed whole, or in tiles of vocab rows)
}

export interface GlobalGrads {
  embed: F32 | TiledGrad;
  posEmbed: F32 | null;
  projectIn: LinearGrad | null;
  projectOut: LinearGrad | null;
  finalNorm: NormGrad | null;
  /** The embedding's own buffer when the head is tied: both uses add into it. */
  head: F32 | TiledGrad;
}

export interface ParamSource {
  readonly config: ModelConfig;
  /** The mode GEMMs compute in: 'fp32' (f32 activations; bf16 weights are widened in the kernel)
   *  or 'bf16' (activations rounded to bf16 too). */
  readonly mode: ComputeMode;
  /** Layer j's parameters; `backward` also packs the transposed weights. */
  fetchLayer(j: number, backward: boolean): LayerParams;
  releaseLayer(j: number): void;
  fetchGlobals(backward: boolean): GlobalParams;
  releaseGlobals(): void;
  /** Buffers layer j's gradients accumulate into, until releaseLayerGrads(j). */
  layerGrads(j: number): LayerGrads;
  releaseLayerGrads(j: number): void;
  globalGrads(): GlobalGrads;
  releaseGlobalGrads(): void;
  /** Awaited before fetchLayer(j, backward) (and, in backward, layerGrads(j)): a source whose
   *  states are not all in RAM reads them here (src/train/offload). Absent: nothing to wait for. */
  prepareLayer?(j: number, backward: boolean): Promise<void>;
  /** Awaited before fetchGlobals(backward) and globalGrads(). */
  prepareGlobals?(backward: boolean): Promise<void>;
  /** A kept layer input (activation checkpoint, layer j's input): the source may move it off RAM
   *  until recallInput(j) returns it (into `into`). Absent: the model keeps it itself. */
  keepInput?(j: number, x: Tensor<'f32'>): Promise<void>;
  recallInput?(j: number, into: Tensor<'f32'>): Promise<Tensor<'f32'>>;
}

/** One parameter's states, and what compute reads of it. */
interface Entry {
  state: ParamState;
  /** f32 copy of a bf16 vector (norms and biases feed f32 kernels), refreshed on fetch. */
  f32?: F32;
}

/** Every model state in RAM (see the top of this file). */
export class ParamStore implements ParamSource, ParamLookup {
  private readonly entries = new Map<string, Entry>();
  /** In the order parameters are listed and saved. */
  readonly states: ParamState[] = [];

  /** values(name, slot, part) gives a parameter's initial f32 values. */
  constructor(
    readonly config: ModelConfig,
    readonly names: NameTable,
    private readonly backend: Backend,
    readonly precision: Precision,
    values: (name: string, slot: LayerSlot | GlobalSlot, part: 'weight' | 'bias') => Float32Array,
    readonly mode: ComputeMode = 'fp32',
  ) {
    for (const { name, slot, part } of paramList(config, names)) {
      const state = allocParamState(name, expectedShape(config, slot, part), precision, values(name, slot, part));
      this.entries.set(name, { state });
      this.states.push(state);
    }
  }

  /** A store initialised from a checkpoint's tensors (any float dtype, widened to f32), each
   *  checked against the shape config.json implies. */
  static fromTensors(config: ModelConfig, names: NameTable, backend: Backend, precision: Precision, store: TensorStore,
    mode: ComputeMode = 'fp32'): ParamStore {
    return new ParamStore(config, names, backend, precision, checkpointValues(config, store), mode);
  }

  get(name: string): ParamState {
    const e = this.entries.get(name);
    if (!e) throw new Error(`no parameter ${name}`);
    return e.state;
  }

  /** The f32 view compute reads of a vector parameter (a widened copy in bf16 precision). */
  vector(name: string): F32 {
    const e = this.entries.get(name)!;
    const p = e.state.param;
    if (p.dtype === 'f32') return p as F32;
    e.f32 ??= Tensor.zeros('f32', p.shape);
    e.f32.data.set(toFloat32('bf16', p.data as Uint16Array, false));
    return e.f32;
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  grad(name: string): F32 {
    return this.get(name).grad as F32;
  }

  param(name: string): Tensor {
    return this.get(name).param;
  }

  /** Packed copies kept from beginStep() to endStep(): within a step the parameters do not change,
   *  so the backward's recompute and later micro-batches reuse the forward's packing. */
  private packs: Map<string, PackedWeight> | null = null;
  /** The bytes each packed copy is written into, kept across steps: a fresh buffer per weight and
   *  step (twice the compute copy's size) cost a page fault per 4 KiB and its zero-fill on every
   *  step (a sixth of a bf16 OPT-125m step). The bytes are rewritten whenever a step packs. */
  private readonly packBuffers = new Map<string, Uint8Array>();

  beginStep(): void {
    this.packs = new Map();
  }

  endStep(): void {
    this.packs = null;
  }

  packed(base: string, transposed: boolean): PackedWeight {
    const key = transposed ? `${base}ᵀ` : base;
    let w = this.packs?.get(key);
    if (!w) {
      const p = this.get(`${base}.weight`).param;
      const into = this.packBuffers.get(key);
      w = transposed ? this.backend.packWeightT(p, this.mode, base, { into }) : this.backend.packWeight(p, this.mode, base, { into });
      this.packBuffers.set(key, w.data);
      this.packs?.set(key, w);
    }
    return w;
  }

  linear(base: string, backward: boolean): TrainLinear {
    return {
      w: this.packed(base, false),
      wT: backward ? this.packed(base, true) : null,
      b: this.has(`${base}.bias`) ? this.vector(`${base}.bias`) : null,
    };
  }

  fetchLayer(j: number, backward: boolean): LayerParams {
    return layerParams(this.config, this.names, this, j, backward);
  }

  releaseLayer(_j: number): void {
    // The states stay where they are; packed copies live until endStep().
  }

  fetchGlobals(backward: boolean): GlobalParams {
    return globalParams(this.names, this, backward);
  }

  releaseGlobals(): void {}

  layerGrads(j: number): LayerGrads {
    return layerGrads(this.config, this.names, this, j);
  }

  releaseLayerGrads(_j: number): void {}

  globalGrads(): GlobalGrads {
    return globalGrads(this.names, this);
  }

  releaseGlobalGrads(): void {}
}

/** What a source looks its tensors up by (Hugging Face names): the functions below assemble a
 *  layer's or the globals' parameters and gradients from it, for every source alike. */
export interface ParamLookup {
  has(name: string): boolean;
  /** The tensor compute reads (f32, or bf16 in bf16 precision): the embeddings. */
  param(name: string): Tensor;
  /** A linear layer `base` packed for compute (and transposed for backward). */
  linear(base: string, backward: boolean): TrainLinear;
  /** A vector parameter (norm weight, bias) as f32. */
  vector(name: string): F32;
  grad(name: string): F32;
  /** A linear weight's gradient, tiled where the source tiles the weight (default: grad(name)). */
  linearGrad?(name: string): F32 | TiledGrad;
  /** An embedding table the source keeps in tiles, or null (default: param(name) whole). */
  table?(name: string): TableRows | null;
}

const layerName = (names: NameTable, slot: LayerSlot, j: number) => names.layer[slot]!.replace('{L}', String(j));

function norm(l: ParamLookup, base: string): Norm {
  return { w: l.vector(`${base}.weight`), b: l.has(`${base}.bias`) ? l.vector(`${base}.bias`) : null };
}

function normGrad(l: ParamLookup, base: string): NormGrad {
  return { w: l.grad(`${base}.weight`), b: l.has(`${base}.bias`) ? l.grad(`${base}.bias`) : null };
}

function linearGrad(l: ParamLookup, base: string): LinearGrad {
  return { w: l.linearGrad?.(`${base}.weight`) ?? l.grad(`${base}.weight`), b: l.has(`${base}.bias`) ? l.grad(`${base}.bias`) : null };
}

export function layerParams(c: ModelConfig, names: NameTable, l: ParamLookup, j: number, backward: boolean): LayerParams {
  const n = (s: LayerSlot) => layerName(names, s, j);
  const lin = (s: LayerSlot) => l.linear(n(s), backward);
  return {
    attnNorm: norm(l, n('attn_norm')), q: lin('q'), k: lin('k'), v: lin('v'), o: lin('o'),
    mlpNorm: norm(l, n('mlp_norm')), gate: c.gatedMlp ? lin('gate') : null, up: lin('up'), down: lin('down'),
  };
}

export function globalParams(names: NameTable, l: ParamLookup, backward: boolean): GlobalParams {
  const g = names.global;
  return {
    embed: l.table?.(`${g.embed!}.weight`) ?? l.param(`${g.embed!}.weight`),
    posEmbed: g.pos_embed ? l.param(`${g.pos_embed}.weight`) : null,
    projectIn: g.project_in ? l.linear(g.project_in, backward) : null,
    projectOut: g.project_out ? l.linear(g.project_out, backward) : null,
    finalNorm: g.final_norm ? norm(l, g.final_norm) : null,
    head: l.linear(g.lm_head!, backward),
  };
}

export function layerGrads(c: ModelConfig, names: NameTable, l: ParamLookup, j: number): LayerGrads {
  const n = (s: LayerSlot) => layerName(names, s, j);
  const lin = (s: LayerSlot) => linearGrad(l, n(s));
  return {
    attnNorm: normGrad(l, n('attn_norm')), q: lin('q'), k: lin('k'), v: lin('v'), o: lin('o'),
    mlpNorm: normGrad(l, n('mlp_norm')), gate: c.gatedMlp ? lin('gate') : null, up: lin('up'), down: lin('down'),
  };
}

export function globalGrads(names: NameTable, l: ParamLookup): GlobalGrads {
  const g = names.global;
  return {
    embed: l.linearGrad?.(`${g.embed!}.weight`) ?? l.grad(`${g.embed!}.weight`),
    posEmbed: g.pos_embed ? l.grad(`${g.pos_embed}.weight`) : null,
    projectIn: g.project_in ? linearGrad(l, g.project_in) : null,
    projectOut: g.project_out ? linearGrad(l, g.project_out) : null,
    finalNorm: g.final_norm ? normGrad(l, g.final_norm) : null,
    head: l.linearGrad?.(`${g.lm_head!}.weight`) ?? l.grad(`${g.lm_head!}.weight`),
  };
}

/** Every trainable tensor of a model: Hugging Face name, slot and part. A tied head is listed once
 *  (as the embedding). */
export function paramList(c: ModelConfig, names: NameTable): { name: string; slot: LayerSlot | GlobalSlot; part: 'weight' | 'bias' }[] {
  const out: { name: string; slot: LayerSlot | GlobalSlot; part: 'weight' | 'bias' }[] = [];
  const add = (base: string | undefined, slot: LayerSlot | GlobalSlot, bias: boolean) => {
    if (!base || out.some((e) => e.name === `${base}.weight`)) return;
    out.push({ name: `${base}.weight`, slot, part: 'weight' });
    if (bias) out.push({ name: `${base}.bias`, slot, part: 'bias' });
  };
  const g = names.global;
  const ln = c.norm === 'layernorm';
  add(g.embed, 'embed', false);
  add(g.pos_embed, 'pos_embed', false);
  add(g.project_in, 'project_in', false);
  for (let j = 0; j < c.layers; j++) {
    const n = (s: LayerSlot) => names.layer[s]!.replace('{L}', String(j));
    add(n('attn_norm'), 'attn_norm', ln);
    for (const s of ['q', 'k', 'v'] as const) add(n(s), s, c.qkvBias);
    add(n('o'), 'o', c.outBias);
    add(n('mlp_norm'), 'mlp_norm', ln);
    if (c.gatedMlp) add(n('gate'), 'gate', c.mlpBias);
    add(n('up'), 'up', c.mlpBias);
    add(n('down'), 'down', c.mlpBias);
  }
  add(g.final_norm, 'final_norm', ln);
  add(g.project_out, 'project_out', false);
  add(g.lm_head, 'lm_head', false);
  return out;
}

/** A checkpoint's tensor as initial f32 values (any float dtype, widened), checked against the
 *  shape config.json implies. */
export function checkpointValues(config: ModelConfig, store: TensorStore): (name: string, slot: LayerSlot | GlobalSlot, part: 'weight' | 'bias') => Float32Array {
  return (name, slot, part) => {
    if (!store.has(name)) throw new ModelFileError(store.fileName(name), 'missing tensor', name);
    const t = store.read(name);
    const want = expectedShape(config, slot, part);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
      throw new ModelFileError(store.fileName(name), `shape [${t.shape.join(', ')}] disagrees with config.json (expected [${want.join(', ')}])`, name);
    }
    return toFloat32(t.dtype as 'f32' | 'f16' | 'bf16', t.data as Float32Array | Uint16Array, true);
  };
}
