// Loads a checkpoint's tensors into the backend: GEMM weights packed once, norms and biases as
// float32 vectors. Every tensor's shape is checked against config.json first.

import { constants } from 'node:buffer';
import { type AnyWeight, type Backend, type ComputeMode, type PackedWeight, weightFormatFor } from '../backend/index.js';
import type { TensorStore } from '../formats/safetensors.js';
import { DTYPE_BYTES, toFloat32, viewAs } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import { formatSize } from '../tensor/tiers/size.js';
import { ModelFileError } from '../util/errors.js';
import { type GlobalSlot, type LayerSlot, type NameTable, expectedShape } from './architecture.js';
import type { ModelConfig } from './config.js';

export interface Linear {
  w: AnyWeight; // [out, in]; in pieces when the offload engine keeps only its first rows resident
  b: Tensor<'f32'> | null; // [out]
}

export interface Norm {
  w: Tensor<'f32'>; // [hidden]
  b: Tensor<'f32'> | null; // [hidden] (LayerNorm only)
}

export interface AttentionWeights {
  attnNorm: Norm;
  q: Linear; // [heads·headDim, hidden]
  k: Linear; // [kvHeads·headDim, hidden]
  v: Linear; // [kvHeads·headDim, hidden]
  o: Linear; // [hidden, heads·headDim]
}

export interface MlpWeights {
  mlpNorm: Norm;
  gate: Linear | null; // [ffn, hidden] (gated MLPs)
  up: Linear; // [ffn, hidden] (OPT fc1)
  down: Linear; // [hidden, ffn] (OPT fc2)
}

export type LayerWeights = AttentionWeights & MlpWeights;

export interface GlobalWeights {
  /** Token embedding [vocab, embedDim]: a packed weight (shared with a tied head) or a raw table. */
  embed: { packed: PackedWeight } | { table: Tensor };
  posEmbed: Tensor | null; // [maxPositions + offset, hidden] (OPT)
  projectIn: Linear | null; // [hidden, embedDim]
  projectOut: Linear | null; // [embedDim, hidden]
  finalNorm: Norm | null;
  lmHead: PackedWeight; // [vocab, embedDim]
}

export class WeightLoader {
  constructor(
    private readonly store: TensorStore,
    private readonly config: ModelConfig,
    private readonly names: NameTable,
    private readonly backend: Backend,
    private readonly mode: ComputeMode,
    /** Layer weights, the LM head and the token embedding packed 4-bit (FlexGen's compress_weight;
     *  like llama.cpp's Q4_0 files, whose head and embedding are 4-bit too). */
    private readonly compressWeight = false,
  ) {}

  /** Packing options for a GEMM weight (or the embedding, looked up in packed rows). */
  private layerPack(slot: LayerSlot | GlobalSlot): { quantize?: 'q4' } | undefined {
    return this.compressWeight && Q4_SLOTS.has(slot) ? { quantize: 'q4' } : undefined;
  }

  private layerName(slot: LayerSlot, layer: number): string {
    const n = this.names.layer[slot];
    if (!n) throw new Error(`architecture has no name for ${slot}`);
    return n.replace('{L}', String(layer));
  }

  /** Reads a tensor after checking its shape; null when optional and absent. */
  private read(name: string, shape: number[], optional = false): Tensor | null {
    return this.checkedInfo(name, shape, optional) ? this.store.read(name) : null;
  }

  /** A stored tensor's info after checking it exists and has the shape config.json implies;
   *  null when optional and absent. */
  private checkedInfo(name: string, shape: number[], optional = false) {
    if (!this.store.has(name)) {
      if (optional) return null;
      throw new ModelFileError(this.store.fileName(name), 'missing tensor', name);
    }
    const info = this.store.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFileError(info.file, `shape [${info.shape.join(', ')}] disagrees with config.json (expected [${shape.join(', ')}])`, name);
    }
    return info;
  }

  private vector(name: string, shape: number[], optional: boolean): Tensor<'f32'> | null {
    const t = this.read(name, shape, optional);
    if (!t) return null;
    return new Tensor('f32', t.shape, toFloat32(t.dtype as 'f32' | 'f16' | 'bf16', t.data as Float32Array | Uint16Array, false));
  }

  /** Bytes of raw weight read per chunk when packing (rounded to whole 32-row panels, at least
   *  one): chunks start on panel boundaries, so packing them one after another gives the same
   *  bytes as packing the whole tensor. Bounded in bytes, not rows: 2048 rows of a 28672-wide
   *  f32 weight would be 224 MiB. */
  static readonly PACK_CHUNK_BYTES = 2 ** 20;
  /** The largest buffer a weight may be packed into (Node's typed-array limit; tests lower it). */
  static maxBufferBytes: number = constants.MAX_LENGTH;
  private chunk = { buf: new ArrayBuffer(0) };

  /**
   * Reads and packs a GEMM weight chunk by chunk, each chunk's packed bytes into `dst(offset,
   * bytes)` (offsets in the whole packed tensor), yielding the packed bytes done after each chunk
   * and returning the tensor's packed shape. Neither loading nor conversion ever holds the raw
   * tensor, nor leaves a tensor-sized garbage buffer behind (the collector frees those too late
   * for a tight RAM limit).
   */
  private *packChunks(name: string, slot: LayerSlot | GlobalSlot, dst: (offset: number, bytes: number) => Uint8Array):
    Generator<number, { format: PackedWeight['format']; n: number; k: number; bytes: number }> {
    const { info, format, n, k } = this.packedShape(name, slot);
    const opts = this.layerPack(slot) ?? {};
    const kernels = this.backend.kernels;
    const elem = DTYPE_BYTES[info.dtype];
    const rows = packChunkRows(k, elem);
    if (this.chunk.buf.byteLength < Math.min(n, rows) * k * elem) this.chunk.buf = new ArrayBuffer(Math.min(n, rows) * k * elem);
    for (let r0 = 0; r0 < n; r0 += rows) {
      const r1 = Math.min(n, r0 + rows);
      this.store.readRowsInto(name, r0, r1, new Uint8Array(this.chunk.buf, 0, (r1 - r0) * k * elem));
      const raw = new Tensor(info.dtype, [r1 - r0, k], viewAs(info.dtype, this.chunk.buf, 0, (r1 - r0) * k));
      const offset = kernels.packedByteLength(format, r0, k);
      const end = kernels.packedByteLength(format, r1, k);
      this.packChunk(raw, name, r0, { ...opts, into: dst(offset, end - offset) });
      yield end;
    }
    return { format, n, k, bytes: kernels.packedByteLength(format, n, k) };
  }

  /** Packs rows r0.. of weight `name` (one chunk of packChunks). The kernels refuse a value 4-bit
   *  packing cannot hold by its index in the chunk: named here by file, tensor, row and column. */
  private packChunk(raw: Tensor, name: string, r0: number, opts: { quantize?: 'q4'; into: Uint8Array }): void {
    try {
      this.backend.packWeight(raw, this.mode, name, opts);
    } catch (e) {
      const bad = e instanceof RangeError ? /^element (\d+) \((.*?)\) cannot be quantized: (.*)$/s.exec(e.message) : null;
      if (!bad) throw e;
      const i = Number(bad[1]), k = raw.shape[1]!;
      // (the native kernels print 1.7e38 as 39 digits)
      const value = Number.isNaN(Number(bad[2])) ? bad[2] : String(Number(bad[2]));
      throw new ModelFileError(this.store.fileName(name),
        `row ${r0 + Math.floor(i / k)}, column ${i % k}: ${value} cannot be quantized to 4 bits (--compress-weight): ${bad[3]}`, name);
    }
  }

  /** A GEMM weight packed into a buffer of its own, through packChunks. */
  private packStreaming(name: string, slot: LayerSlot | GlobalSlot): PackedWeight {
    const { format, n, k } = this.packedShape(name, slot);
    const bytes = this.backend.kernels.packedByteLength(format, n, k);
    if (bytes > WeightLoader.maxBufferBytes) {
      // (a bare "Invalid typed array length" otherwise; Node 20 allows 4 GiB, a 405B model's f32 head is 8)
      throw new ModelFileError(this.store.fileName(name), `packed as ${format}, this weight takes ${formatSize(bytes)}, more than the largest ` +
        `buffer this Node.js allows (${formatSize(WeightLoader.maxBufferBytes)}): load it with --compress-weight (4-bit), ` +
        'or on a newer Node.js', name);
    }
    const whole = this.backend.kernels.packedBuffer(bytes);
    const chunks = this.packChunks(name, slot, (offset, bytes) => whole.subarray(offset, offset + bytes));
    while (!chunks.next().done);
    return this.backend.packedWeight(format, this.mode, n, k, whole, name);
  }

  /** A stored GEMM weight's info (shape-checked) and the format this loader packs it in. */
  private packedShape(name: string, slot: LayerSlot | GlobalSlot) {
    const shape = expectedShape(this.config, slot, 'weight');
    const info = this.checkedInfo(name, shape)!;
    const [n, k] = shape as [number, number];
    return { info, n, k, format: this.layerPack(slot)?.quantize ?? weightFormatFor(info.dtype, this.mode) };
  }

  /** Layer weight `name` (without `.weight`) packed as this loader packs it (compressed or not),
   *  chunk by chunk through the same reads as loading: see packChunks. The disk tier's conversion
   *  writes each chunk's bytes out before the next is packed. */
  packMatrixChunks(name: string, slot: LayerSlot, dst: (offset: number, bytes: number) => Uint8Array) {
    return this.packChunks(`${name}.weight`, slot, dst);
  }

  private linear(base: string, slot: LayerSlot | GlobalSlot, bias: boolean): Linear {
    return {
      w: this.packStreaming(`${base}.weight`, slot),
      b: bias ? this.vector(`${base}.bias`, expectedShape(this.config, slot, 'bias'), false) : null,
    };
  }

  private norm(base: string, slot: LayerSlot | GlobalSlot): Norm {
    const withBias = this.config.norm === 'layernorm';
    return {
      w: this.vector(`${base}.weight`, expectedShape(this.config, slot, 'weight'), false)!,
      b: withBias ? this.vector(`${base}.bias`, expectedShape(this.config, slot, 'bias'), false) : null,
    };
  }

  /** The GEMM weights of layer j in their fixed order: attention (q, k, v, o), then MLP. */
  matrices(j: number): { slot: LayerSlot; name: string; bias: boolean; part: 'attn' | 'mlp' }[] {
    const c = this.config;
    const n = (s: LayerSlot) => this.layerName(s, j);
    const list: { slot: LayerSlot; name: string; bias: boolean; part: 'attn' | 'mlp' }[] = [
      { slot: 'q', name: n('q'), bias: c.qkvBias, part: 'attn' },
      { slot: 'k', name: n('k'), bias: c.qkvBias, part: 'attn' },
      { slot: 'v', name: n('v'), bias: c.qkvBias, part: 'attn' },
      { slot: 'o', name: n('o'), bias: c.outBias, part: 'attn' },
    ];
    if (c.gatedMlp) list.push({ slot: 'gate', name: n('gate'), bias: c.mlpBias, part: 'mlp' });
    list.push({ slot: 'up', name: n('up'), bias: c.mlpBias, part: 'mlp' }, { slot: 'down', name: n('down'), bias: c.mlpBias, part: 'mlp' });
    return list;
  }

  readBias(name: string, slot: LayerSlot): Tensor<'f32'> {
    return this.vector(`${name}.bias`, expectedShape(this.config, slot, 'bias'), false)!;
  }

  /** Layer j's norms (small; always kept in RAM). */
  norms(j: number): { attnNorm: Norm; mlpNorm: Norm } {
    return {
      attnNorm: this.norm(this.layerName('attn_norm', j), 'attn_norm'),
      mlpNorm: this.norm(this.layerName('mlp_norm', j), 'mlp_norm'),
    };
  }

  layer(j: number): LayerWeights {
    const c = this.config;
    const n = (s: LayerSlot) => this.layerName(s, j);
    return {
      attnNorm: this.norm(n('attn_norm'), 'attn_norm'),
      q: this.linear(n('q'), 'q', c.qkvBias),
      k: this.linear(n('k'), 'k', c.qkvBias),
      v: this.linear(n('v'), 'v', c.qkvBias),
      o: this.linear(n('o'), 'o', c.outBias),
      mlpNorm: this.norm(n('mlp_norm'), 'mlp_norm'),
      gate: c.gatedMlp ? this.linear(n('gate'), 'gate', c.mlpBias) : null,
      up: this.linear(n('up'), 'up', c.mlpBias),
      down: this.linear(n('down'), 'down', c.mlpBias),
    };
  }

  /** Shape and dtype of a stored tensor (no data is read). */
  tensorInfo(name: string): { shape: number[]; dtype: 'f32' | 'f16' | 'bf16' } | null {
    return this.store.has(name) ? this.store.info(name) : null;
  }

  /** Bytes the model will take once loaded (see packedSizes). */
  sizes(): ModelSizes {
    // config.json counting more layers than the file holds: the first missing one named at once,
    // not after sizing every layer it claims (10^9 layers ran out of memory, or never ended).
    const q = (j: number) => `${this.layerName('q', j)}.weight`;
    if (!this.store.has(q(this.config.layers - 1))) {
      let j = 0;
      while (this.store.has(q(j))) j++;
      throw new ModelFileError(this.store.fileName(q(j)), `missing tensor (config.json says num_hidden_layers = ${this.config.layers})`, q(j));
    }
    this.checkShapes();
    return packedSizes(this.config, this.names, (n) => this.tensorInfo(n), this.backend, this.mode, (j) => this.matrices(j), this.compressWeight);
  }

  /** Every named tensor the files hold against the shape config.json implies, from the headers
   *  alone: a config at odds with its weights (vocab_size 10^15) is named here, before the plan
   *  sizes buffers from it and reports a RAM shortfall instead. */
  private checkShapes(): void {
    const c = this.config;
    for (const [slot, base] of Object.entries(this.names.global) as [GlobalSlot, string | undefined][]) {
      if (!base) continue;
      this.checkedInfo(`${base}.weight`, expectedShape(c, slot, 'weight'), true);
      this.checkedInfo(`${base}.bias`, expectedShape(c, slot, 'bias'), true);
    }
    for (let j = 0; j < c.layers; j++) {
      for (const slot of Object.keys(this.names.layer) as LayerSlot[]) {
        const base = this.layerName(slot, j);
        this.checkedInfo(`${base}.weight`, expectedShape(c, slot, 'weight'), true);
        this.checkedInfo(`${base}.bias`, expectedShape(c, slot, 'bias'), true);
      }
    }
  }

  globals(): GlobalWeights {
    const c = this.config;
    const g = this.names.global;
    const embedName = `${g.embed}.weight`;
    const headName = `${g.lm_head}.weight`;
    const tied = headName === embedName;
    const lmHead = this.packStreaming(headName, 'lm_head');
    // A tied embedding is looked up in the packed head, unless packing rounded it (bf16 mode);
    // compressed, the embedding's rows are 4-bit too (tied: the head's; untied: its own).
    const embed = tied && (this.compressWeight || lmHead.format === this.store.info(headName).dtype) ? { packed: lmHead }
      : this.compressWeight ? { packed: this.packStreaming(embedName, 'embed') }
      : { table: this.read(tied ? headName : embedName, expectedShape(c, 'embed', 'weight'))! };
    return {
      embed,
      posEmbed: g.pos_embed ? this.read(`${g.pos_embed}.weight`, expectedShape(c, 'pos_embed', 'weight')) : null,
      projectIn: g.project_in ? this.linear(g.project_in, 'project_in', false) : null,
      projectOut: g.project_out ? this.linear(g.project_out, 'project_out', false) : null,
      finalNorm: g.final_norm ? this.norm(g.final_norm, 'final_norm') : null,
      lmHead,
    };
  }
}

export interface ModelSizes {
  /** Packed bytes of each layer's GEMM weights, in their fixed order, with their part. */
  layers: { part: 'attn' | 'mlp'; bytes: number }[][];
  /** Everything kept in RAM regardless of placement: embeddings, LM head, norms, biases. */
  globalBytes: number;
  /** The largest raw chunk a GEMM weight is read through while it is packed (one buffer, kept
   *  by the loader while loading). */
  chunkBytes: number;
  /** The largest packed chunk of a layer weight (what conversion for the disk tier stages). */
  packedChunkBytes: number;
}

type Info = (name: string) => { shape: number[]; dtype: 'f32' | 'f16' | 'bf16' } | null;

/** Sizes from tensor shapes and dtypes alone (a checkpoint's headers, or a config's expected shapes). */
export function packedSizes(c: ModelConfig, names: NameTable, info: Info, backend: Backend, mode: ComputeMode,
  matrices: (j: number) => { name: string; part: 'attn' | 'mlp' }[], compressWeight = false): ModelSizes {
  const packed = (name: string, q4 = false) => {
    const t = info(name);
    if (!t || t.shape.length !== 2) return 0;
    const format = q4 && compressWeight ? 'q4' : weightFormatFor(t.dtype, mode);
    return backend.kernels.packedByteLength(format, t.shape[0]!, t.shape[1]!);
  };
  const raw = (name: string | undefined) => {
    const t = name ? info(`${name}.weight`) : null;
    return t ? t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'f32' ? 4 : 2) : 0;
  };
  // Rows of a weight's largest chunk (see WeightLoader.PACK_CHUNK_BYTES).
  const chunkRows = (t: { shape: number[]; dtype: string }) => Math.min(t.shape[0]!, packChunkRows(t.shape[1]!, t.dtype === 'f32' ? 4 : 2));
  const chunk = (name: string) => {
    const t = info(name);
    return t && t.shape.length === 2 ? chunkRows(t) * t.shape[1]! * (t.dtype === 'f32' ? 4 : 2) : 0;
  };
  let chunkBytes = 0;
  let packedChunkBytes = 0;
  const layers = Array.from({ length: c.layers }, (_, j) => matrices(j).map((m) => {
    const name = `${m.name}.weight`;
    const t = info(name);
    chunkBytes = Math.max(chunkBytes, chunk(name));
    if (t && t.shape.length === 2) {
      const format = compressWeight ? 'q4' : weightFormatFor(t.dtype, mode);
      packedChunkBytes = Math.max(packedChunkBytes, backend.kernels.packedByteLength(format, chunkRows(t), t.shape[1]!));
    }
    return { part: m.part, bytes: packed(name, true) };
  }));
  const g = names.global;
  const head = info(`${g.lm_head}.weight`);
  const tied = g.lm_head === g.embed;
  const exact = head ? weightFormatFor(head.dtype, mode) === head.dtype : true;
  const vectors = 4 * c.layers * (4 * c.hidden + 2 * (c.heads + 2 * c.kvHeads) * c.headDim + 2 * c.ffn);
  // Compressed, the head and the embedding are 4-bit (see WeightLoader.globals).
  const embedBytes = tied && (exact || compressWeight) ? 0 : compressWeight ? packed(`${g.embed}.weight`, true) : raw(g.embed);
  const globalBytes = packed(`${g.lm_head}.weight`, true) + embedBytes + raw(g.pos_embed) +
    packed(`${g.project_in}.weight`) + packed(`${g.project_out}.weight`) + vectors;
  for (const n of [g.lm_head, g.project_in, g.project_out, compressWeight ? g.embed : undefined]) if (n) chunkBytes = Math.max(chunkBytes, chunk(`${n}.weight`));
  return { layers, globalBytes, chunkBytes, packedChunkBytes };
}

/** Sizes of a model of this config stored in `dtype`, without any file. */
export function sizesFromConfig(c: ModelConfig, names: NameTable, dtype: 'f32' | 'f16' | 'bf16', backend: Backend, mode: ComputeMode,
  compressWeight = false): ModelSizes {
  const slots = new Map<string, LayerSlot | GlobalSlot>();
  for (const [slot, n] of Object.entries(names.global)) if (n) slots.set(`${n}.weight`, slot as GlobalSlot);
  const layerSlots = Object.entries(names.layer) as [LayerSlot, string][];
  const info: Info = (name) => {
    let slot = slots.get(name);
    if (!slot) {
      for (const [s, pattern] of layerSlots) {
        const re = new RegExp(`^${pattern.replace(/[.]/g, '\\.').replace('{L}', '\\d+')}\\.weight$`);
        if (re.test(name)) slot = s;
      }
    }
    return slot ? { shape: expectedShape(c, slot, 'weight'), dtype } : null;
  };
  const matrices = (j: number) => {
    const list: { name: string; part: 'attn' | 'mlp' }[] = (['q', 'k', 'v', 'o'] as LayerSlot[]).map((s) => ({ name: names.layer[s]!.replace('{L}', String(j)), part: 'attn' }));
    for (const s of (c.gatedMlp ? ['gate', 'up', 'down'] : ['up', 'down']) as LayerSlot[]) list.push({ name: names.layer[s]!.replace('{L}', String(j)), part: 'mlp' });
    return list;
  };
  return packedSizes(c, names, info, backend, mode, matrices, compressWeight);
}

/** Rows per packing chunk of a weight k wide with elements of `elem` bytes (see PACK_CHUNK_BYTES). */
export function packChunkRows(k: number, elem: number): number {
  return Math.max(32, Math.floor(WeightLoader.PACK_CHUNK_BYTES / (k * elem * 32)) * 32);
}

/** What compress_weight packs 4-bit: every layer matrix, the LM head and the token embedding. */
const Q4_SLOTS = new Set<string>(['q', 'k', 'v', 'o', 'gate', 'up', 'down', 'lm_head', 'embed']);
