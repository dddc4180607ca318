// The cost model: per-layer prefill and decode time from I/O and compute terms, for a placement
// (fractions of weights, cache and activations on each tier) and a block shape, in the form of
// FlexGen's (design brief §2), extended to what this engine does:
//   - on a CPU-only machine the device and RAM are one memory: no copy between them;
//   - one disk serves reads and writes, so their times add;
//   - weights are read as packed bytes (fp16/bf16/fp32/4-bit), the cache in 4096-byte records;
//   - with overlap a phase takes the larger of its I/O and compute, without it their sum.
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

export interface LayerCosts {
  prefillCompute: number;
  prefillIo: LinearTime;
  decodeCompute: number;
  decodeIo: LinearTime;
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

/** Per-layer time terms for a block, with `layerBytes` the packed weight bytes of one layer. */
export function layerCosts(c: ModelConfig, layerBytes: number, w: Workload, r: Rates): LayerCosts {
  const bls = w.gpuBatchSize * w.numGpuBatches;
  const s = w.promptLen;
  const ctx = s + w.genLen / 2;
  const kvDim = c.kvHeads * c.headDim;
  const record = Math.ceil((2 * kvDim * w.cacheElem) / RECORD) * RECORD;
  const params = layerParams(c);
  const attnPrefillFlops = bls * 4 * (s * s / 2) * c.heads * c.headDim;
  const prefillCompute = (2 * bls * s * params) / r.gemm(w.gpuBatchSize * s) + attnPrefillFlops / r.attentionPrefill;
  const sparse = (1 + (w.attnSparsity ?? 1)) / 2;
  const decodeCompute = (2 * bls * params) / r.gemm(w.gpuBatchSize) + (sparse * bls * ctx * 2 * kvDim * w.cacheElem) / r.attentionDecode;
  // Activations are loaded and stored around each of the two units of a layer.
  const actPrefill = 4 * bls * s * c.hidden * 4;
  const actDecode = 4 * bls * c.hidden * 4;
  return {
    prefillCompute,
    prefillIo: {
      constant: 0,
      wd: layerBytes / r.diskRead,
      cd: (bls * s * record) / r.diskWrite,
      hd: actPrefill / 2 / r.diskRead + actPrefill / 2 / r.diskWrite,
    },
    decodeCompute,
    decodeIo: {
      constant: 0,
      wd: layerBytes / r.diskRead,
      cd: (bls * ctx * record) / r.diskRead + (bls * record) / r.diskWrite,
      hd: actDecode / 2 / r.diskRead + actDecode / 2 / r.diskWrite,
    },
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
  const combine = (io: number, comp: number) => (w.overlap ? Math.max(io, comp) : io + comp);
  const pio = ioTime(costs.prefillIo, p);
  const dio = ioTime(costs.decodeIo, p);
  const pre = c.layers * combine(pio, costs.prefillCompute);
  const dec = c.layers * (w.genLen - 1) * combine(dio, costs.decodeCompute);
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
