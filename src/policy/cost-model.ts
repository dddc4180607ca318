// The cost model: per-layer prefill and decode time from I/O and compute terms, for a placement
// (fractions of weights, cache and activations on each tier) and a block shape, in the form of
// FlexGen's (design brief §2), extended to what this engine does:
//   - on a CPU-only machine the device and RAM are one memory: no copy between them;
//   - one disk serves reads and writes, so their times add;
//   - weights are read as packed bytes (fp16/bf16/fp32/4-bit), the cache in 4096-byte records;
//   - with overlap a phase takes the larger of its I/O and compute, without it their sum, per
//     unit the schedule loads: a whole layer, or (sep_layer) its attention part and then its MLP
//     part, each computing while the other part's weights load. Split, a layer takes
//     max(attention compute, MLP weight load + cache I/O) + max(MLP compute, attention weight load),
//     which is more than max(compute, I/O) when the parts are unbalanced: on a CPU the attention
//     part computes in about a third of the MLP part's time but its weights are half the MLP's.
// Every term is linear in the fractions, so for a fixed block shape the best placement is a
// linear program (src/policy/search.ts).

import type { ModelConfig } from '../models/config.js';

/** Rates the model needs, measured by `tierlm profile` (src/policy/profile.ts). */
export interface Rates {
  /** GEMM FLOP/s at M rows for the weight format in use. */
  gemm(m: number): number;
  /** Decode attention: bytes of K+V cache read per second. */
  attentionDecode: number;
  /** Prefill attention FLOP/s. */
  attentionPrefill: number;
  diskRead: number;
  diskWrite: number;
}

export interface Workload {
  promptLen: number;
  genLen: number;
  gpuBatchSize: number;
  numGpuBatches: number;
  /** Bytes per cache element (4 for f32, 2 for f16). */
  cacheElem: number;
  overlap: boolean;
  /** Load each layer as two units, attention then MLP (the policy's sepLayer). */
  sepLayer?: boolean;
  /** Share of attention weights decode keeps: it reads every key and that share of the values. */
  attnSparsity?: number;
}

/** Per-layer coefficients: each time is const + Σ coef[tier variable] · fraction. */
export interface LinearTime {
  constant: number;
  /** Seconds per unit of the fraction on disk: weights, cache, activations. */
  wd: number;
  cd: number;
  hd: number;
}

/** One unit of the schedule: it computes while `io` (the next unit's weights, the cache) moves. */
export interface UnitCost {
  compute: number;
  io: LinearTime;
}

export interface LayerCosts {
  /** Whole-layer totals. */
  prefillCompute: number;
  prefillIo: LinearTime;
  decodeCompute: number;
  decodeIo: LinearTime;
  /** The units of one layer (one, or attention and MLP with sepLayer) per phase. */
  prefillUnits: UnitCost[];
  decodeUnits: UnitCost[];
  /** The LM head over each sequence's last token, once per step (not per layer). */
  headCompute: number;
}

/** Packed bytes of one layer's attention and MLP weights. */
export interface PartBytes {
  attn: number;
  mlp: number;
}

/** Bytes a model's block puts on the tiers (totals over all layers). */
export interface Footprint {
  weights: number;
  cache: number;
  activations: number;
}

const RECORD = 4096;

export function layerParams(c: ModelConfig): number {
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  return c.hidden * (2 * q + 2 * kv) + (c.gatedMlp ? 3 : 2) * c.hidden * c.ffn;
}

/** Per-layer time terms for a block, with `bytes` the packed weight bytes of one layer's parts. */
export function layerCosts(c: ModelConfig, bytes: PartBytes, w: Workload, r: Rates): LayerCosts {
  const bls = w.gpuBatchSize * w.numGpuBatches;
  const s = w.promptLen;
  const ctx = s + w.genLen / 2;
  const kvDim = c.kvHeads * c.headDim;
  const record = Math.ceil((2 * kvDim * w.cacheElem) / RECORD) * RECORD;
  const q = c.heads * c.headDim;
  const attnParams = c.hidden * (2 * q + 2 * kvDim);
  const mlpParams = (c.gatedMlp ? 3 : 2) * c.hidden * c.ffn;
  const attnPrefillFlops = bls * 4 * (s * s / 2) * c.heads * c.headDim;
  const prefillGemm = (params: number) => (2 * bls * s * params) / r.gemm(w.gpuBatchSize * s);
  const sparse = (1 + (w.attnSparsity ?? 1)) / 2;
  const decodeGemm = (params: number) => (2 * bls * params) / r.gemm(w.gpuBatchSize);
  const compute = {
    prefill: { attn: prefillGemm(attnParams) + attnPrefillFlops / r.attentionPrefill, mlp: prefillGemm(mlpParams) },
    decode: { attn: decodeGemm(attnParams) + (sparse * bls * ctx * 2 * kvDim * w.cacheElem) / r.attentionDecode, mlp: decodeGemm(mlpParams) },
  };
  // Activations are loaded and stored around each of the two units of a layer.
  const actPrefill = 4 * bls * s * c.hidden * 4;
  const actDecode = 4 * bls * c.hidden * 4;
  const io = (weightBytes: number, cd: number, hd: number): LinearTime => ({ constant: 0, wd: weightBytes / r.diskRead, cd, hd });
  const cache = {
    prefill: (bls * s * record) / r.diskWrite,
    decode: (bls * ctx * record) / r.diskRead + (bls * record) / r.diskWrite,
  };
  const act = { prefill: actPrefill / 2 / r.diskRead + actPrefill / 2 / r.diskWrite, decode: actDecode / 2 / r.diskRead + actDecode / 2 / r.diskWrite };
  const units = (phase: 'prefill' | 'decode'): UnitCost[] => w.sepLayer
    // The attention unit computes while the MLP weights load and its batches' cache blocks move;
    // the MLP unit computes while the next layer's attention weights load.
    ? [
        { compute: compute[phase].attn, io: io(bytes.mlp, cache[phase], act[phase] / 2) },
        { compute: compute[phase].mlp, io: io(bytes.attn, 0, act[phase] / 2) },
      ]
    : [{ compute: compute[phase].attn + compute[phase].mlp, io: io(bytes.attn + bytes.mlp, cache[phase], act[phase]) }];
  return {
    prefillCompute: compute.prefill.attn + compute.prefill.mlp,
    prefillIo: io(bytes.attn + bytes.mlp, cache.prefill, act.prefill),
    decodeCompute: compute.decode.attn + compute.decode.mlp,
    decodeIo: io(bytes.attn + bytes.mlp, cache.decode, act.decode),
    prefillUnits: units('prefill'),
    decodeUnits: units('decode'),
    headCompute: decodeGemm(c.vocabSize * c.embedDim),
  };
}

export interface Placement {
  wd: number;
  cd: number;
  hd: number;
}

export function ioTime(t: LinearTime, p: Placement): number {
  return t.constant + t.wd * p.wd + t.cd * p.cd + t.hd * p.hd;
}

export interface Prediction {
  prefillSeconds: number;
  decodeSeconds: number;
  /** Generated tokens per second over the block: batch × genLen ÷ (prefill + decode). */
  totalTokensPerSecond: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  bound: { prefill: 'disk' | 'compute'; decode: 'disk' | 'compute' };
}

/** Time of a placement, per the model. */
export function predict(c: ModelConfig, costs: LayerCosts, w: Workload, p: Placement): Prediction {
  const layer = (units: UnitCost[]) => units.reduce((t, u) => {
    const io = ioTime(u.io, p);
    return t + (w.overlap ? Math.max(io, u.compute) : io + u.compute);
  }, 0);
  const pio = ioTime(costs.prefillIo, p);
  const dio = ioTime(costs.decodeIo, p);
  const pre = c.layers * layer(costs.prefillUnits) + costs.headCompute;
  const dec = (w.genLen - 1) * (c.layers * layer(costs.decodeUnits) + costs.headCompute);
  const bls = w.gpuBatchSize * w.numGpuBatches;
  return {
    prefillSeconds: pre,
    decodeSeconds: dec,
    totalTokensPerSecond: (bls * w.genLen) / (pre + dec),
    prefillTokensPerSecond: (bls * w.promptLen) / pre,
    decodeTokensPerSecond: w.genLen > 1 ? (bls * (w.genLen - 1)) / dec : 0,
    bound: { prefill: pio > costs.prefillCompute ? 'disk' : 'compute', decode: dio > costs.decodeCompute ? 'disk' : 'compute' },
  };
}
