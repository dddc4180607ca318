// Layer weights placed across device, RAM and disk by bytes.
//
// Each layer's GEMM weights are packed once, in the backend's layout, into one file on the disk
// tier (every tensor at a 4096-byte-aligned offset, for O_DIRECT). Within each part of a layer
// (attention, MLP) the tensors are laid end to end in a fixed order and cut by the policy's
// shares: a device/RAM prefix stays resident, the rest is read from the file into a staging slot
// when the part runs. Only the
// tensor at a cut is split; it is assembled in the slot from its resident prefix and its disk
// suffix. Norms and biases are small and stay in RAM.

import fs from 'node:fs';
import path from 'node:path';
import { type AnyWeight, type Backend, type ComputeMode, type PackedWeight, weightFormatFor } from '../backend/index.js';
import type { Shares } from '../policy/policy.js';
import type { LayerSlot } from '../models/architecture.js';
import type { ModelConfig } from '../models/config.js';
import type { AttentionWeights, LayerWeights, Linear, MlpWeights, Norm, WeightLoader } from '../models/weights.js';
import { Tensor } from '../tensor/tensor.js';
import { type BlockFile, alignedBytes, openBlockFile } from './block-file.js';
import { type ItemSplit, alignDown, alignUp, splitByBytes } from './placement.js';
import { publishConverted, withWeightsLock } from './weights-dir.js';
import { conversionStagingBytes } from '../policy/memory.js';

/** attn: q, k, v, o (and the attention norm); mlp: the rest. `all` loads both. */
export type LayerPart = 'attn' | 'mlp' | 'all';

interface Matrix {
  slot: LayerSlot;
  part: 'attn' | 'mlp';
  name: string;
  format: PackedWeight['format'];
  n: number;
  k: number;
  bytes: number;
  /** Offset of the packed bytes in the weights file. */
  fileOffset: number;
  bias: Tensor<'f32'> | null;
  split: ItemSplit;
  /** The resident prefix (device + RAM shares), or the whole tensor when nothing is on disk. */
  resident: Uint8Array | null;
  /** Rows in the resident prefix of a tensor cut between RAM and disk at a packed row block
   *  (multiplied in two pieces); null when the cut falls inside a block and the prefix is copied
   *  into the staging slot instead. */
  residentRows: number | null;
}

interface Layer {
  matrices: Matrix[];
  norms: { attnNorm: Norm; mlpNorm: Norm };
}

/** What one load of a layer part needs in a staging slot: every tensor with bytes on disk, whole. */
function stagingBytes(ms: { bytes: number; split: ItemSplit }[]): number {
  return ms.filter((m) => m.split.disk > 0).reduce((n, m) => n + alignUp(m.bytes), 0);
}

/**
 * A layer's placement: the attention part and the MLP part are each cut by the shares, so every
 * unit a schedule loads has the same share on disk. (Cutting the layer as one run put the whole
 * disk share in the MLP part: its load then outlasted the attention part's compute it overlaps.)
 */
export function splitLayer(tensors: readonly { part: 'attn' | 'mlp'; bytes: number }[], shares: Shares): ItemSplit[] {
  const out: ItemSplit[] = new Array(tensors.length);
  for (const part of ['attn', 'mlp'] as const) {
    const idx = tensors.map((t, i) => (t.part === part ? i : -1)).filter((i) => i >= 0);
    const split = splitByBytes(idx.map((i) => tensors[i]!.bytes), shares);
    idx.forEach((i, j) => (out[i] = split[j]!));
  }
  return out;
}

/** The staging slot size a placement needs, from packed sizes alone (before anything is loaded). */
export function planSlotBytes(layers: { part: 'attn' | 'mlp'; bytes: number }[][], shares: Shares, part: LayerPart): number {
  let max = 0;
  for (const l of layers) {
    const splits = splitLayer(l, shares);
    const ms = l.map((m, i) => ({ ...m, split: splits[i]! }));
    const parts = part === 'all' ? [ms] : [ms.filter((m) => m.part === 'attn'), ms.filter((m) => m.part === 'mlp')];
    for (const p of parts) max = Math.max(max, stagingBytes(p));
  }
  return max;
}

export interface WeightStoreStats {
  deviceBytes: number;
  ramBytes: number;
  diskBytes: number;
  /** Bytes read from the disk tier so far. */
  bytesRead: number;
}

/** Where a schedule gets each layer's weights from. */
export interface LayerSource {
  readonly stats: WeightStoreStats;
  readonly onDisk: boolean;
  slotBytes(part: LayerPart): number;
  /** background: a prefetch with time to spare, read behind every urgent transfer. */
  load(j: number, part: LayerPart, slot: Uint8Array | null, background?: boolean): Promise<Partial<AttentionWeights & MlpWeights>>;
  /** Layer j's part at once, when no weight is on disk (onDisk false); else null. */
  resident(j: number, part: LayerPart): Partial<AttentionWeights & MlpWeights> | null;
  close(): Promise<void>;
}

/** Every layer packed in RAM: no disk tier, no staging. */
export class ResidentLayers implements LayerSource {
  readonly stats: WeightStoreStats = { deviceBytes: 0, ramBytes: 0, diskBytes: 0, bytesRead: 0 };
  readonly onDisk = false;
  private readonly layers: LayerWeights[];

  constructor(loader: WeightLoader, config: ModelConfig) {
    this.layers = Array.from({ length: config.layers }, (_, j) => loader.layer(j));
    for (const l of this.layers) {
      for (const lin of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) if (lin && 'data' in lin.w) this.stats.ramBytes += lin.w.data.byteLength;
    }
  }

  slotBytes(): number {
    return 0;
  }

  async load(j: number): Promise<LayerWeights> {
    return this.layers[j]!;
  }

  resident(j: number): LayerWeights {
    return this.layers[j]!;
  }

  async close(): Promise<void> {}
}

export class WeightStore implements LayerSource {
  readonly stats: WeightStoreStats = { deviceBytes: 0, ramBytes: 0, diskBytes: 0, bytesRead: 0 };

  private constructor(
    private readonly backend: Backend,
    private readonly mode: ComputeMode,
    private readonly layers: Layer[],
    private readonly file: BlockFile | null,
  ) {
    for (const l of layers) {
      for (const m of l.matrices) {
        this.stats.deviceBytes += m.split.device;
        this.stats.ramBytes += m.split.ram;
        this.stats.diskBytes += m.split.disk;
      }
    }
  }

  /**
   * Packs the model's layer weights into `dir/weights.bin` (once: a manifest records what was
   * packed from which files, and a rerun with the same model and mode reuses it), then reads
   * each layer's resident share into RAM. Runs sharing `dir` convert one at a time (src/schedule/weights-dir.ts);
   * `log` says when this one waits, and why packed weights whose source files are unchanged are
   * converted again (a tensor list config.json no longer gives, a weights.bin damaged since).
   */
  static async open(loader: WeightLoader, config: ModelConfig, backend: Backend, mode: ComputeMode, shares: Shares, dir: string,
    sourceFiles: string[], log: (msg: string) => void = () => {}): Promise<WeightStore> {
    const layers: Layer[] = [];
    const entries: { j: number; slot: LayerSlot; name: string; part: 'attn' | 'mlp'; bias: boolean }[] = [];
    for (let j = 0; j < config.layers; j++) for (const m of loader.matrices(j)) entries.push({ j, ...m });
    const file = path.join(dir, 'weights.bin');
    const manifestFile = path.join(dir, 'weights.json');
    const wanted = manifestKey(sourceFiles, mode, backend.name);
    const { manifest, bf } = await withWeightsLock(dir, log, async () => {
      const kept = readManifest(manifestFile);
      const manifest = kept && kept.key === wanted && reusable(kept, manifestFile, () => expectedTensors(loader, entries, backend, mode), file, log)
        ? kept
        : await publishConverted(file, manifestFile, async (partial) => ({ ...(await convert(loader, entries, partial)), key: wanted }));
      // Opened under the lock: a run converting later renames a new file in, and this one keeps the old.
      return { manifest, bf: await openBlockFile(file, 'r') };
    });
    let k = 0;
    for (let j = 0; j < config.layers; j++) {
      const mine = entries.filter((e) => e.j === j);
      const metas = mine.map(() => manifest!.tensors[k++]!);
      const splits = splitLayer(mine.map((e, i) => ({ part: e.part, bytes: metas[i]!.bytes })), shares);
      const matrices: Matrix[] = [];
      for (let i = 0; i < mine.length; i++) {
        const e = mine[i]!;
        const meta = metas[i]!;
        const { split, residentRows } = cutAtRowBlock(backend, meta, splits[i]!);
        const keep = split.device + split.ram;
        let resident: Uint8Array | null = null;
        if (keep > 0) {
          // Read the resident prefix back (the aligned range that covers it).
          const buf = alignedBytes(alignUp(keep));
          await bf.read(buf, meta.offset);
          resident = keep === meta.bytes ? buf.subarray(0, meta.bytes) : buf.subarray(0, keep);
        }
        matrices.push({
          slot: e.slot, part: e.part, name: e.name, format: meta.format, n: meta.n, k: meta.k, bytes: meta.bytes,
          fileOffset: meta.offset, bias: e.bias ? loader.readBias(e.name, e.slot) : null, split, resident, residentRows,
        });
      }
      layers.push({ matrices, norms: loader.norms(j) });
    }
    const anyDisk = layers.some((l) => l.matrices.some((m) => m.split.disk > 0));
    if (!anyDisk) await bf.close();
    return new WeightStore(backend, mode, layers, anyDisk ? bf : null);
  }

  /** Bytes a staging slot needs to hold the largest load of `part`. */
  slotBytes(part: LayerPart): number {
    let max = 0;
    for (const l of this.layers) {
      const parts = part === 'all' ? [l.matrices] : [l.matrices.filter((m) => m.part === 'attn'), l.matrices.filter((m) => m.part === 'mlp')];
      for (const ms of parts) max = Math.max(max, stagingBytes(ms));
    }
    return max;
  }

  get layerCount(): number {
    return this.layers.length;
  }

  /** Whether any weight lives on disk (so loads do I/O). */
  get onDisk(): boolean {
    return this.file !== null;
  }

  /**
   * Makes layer j's part ready for compute: resident tensors are used where they are; the others
   * are assembled in `slot` (at least slotBytes(part) bytes, 4096-aligned) from disk.
   */
  async load(j: number, part: LayerPart, slot: Uint8Array | null, background = false): Promise<Partial<AttentionWeights & MlpWeights>> {
    const { weights, reads, fixups } = this.assemble(j, part, slot, background);
    await Promise.all(reads);
    for (const f of fixups) f();
    return weights;
  }

  resident(j: number, part: LayerPart): Partial<AttentionWeights & MlpWeights> | null {
    if (this.file) return null;
    // Nothing is read, so the same objects serve every step.
    const parts = (this.residentParts[j] ??= {});
    return (parts[part] ??= this.assemble(j, part, null, false).weights);
  }

  /** resident()'s answers, by layer and part (asked for every unit of every step). */
  private readonly residentParts: Partial<Record<LayerPart, Partial<AttentionWeights & MlpWeights>>>[] = [];

  /** Layer j's part: its weights (those with disk bytes in `slot`), the reads that fill the slot,
   *  and the copies of resident prefixes to make once the reads are done. */
  private assemble(j: number, part: LayerPart, slot: Uint8Array | null, background: boolean) {
    const layer = this.layers[j]!;
    const out: Record<string, unknown> = {};
    const reads: Promise<void>[] = [];
    const fixups: (() => void)[] = [];
    let offset = 0;
    for (const m of layer.matrices) {
      if (part !== 'all' && m.part !== part) continue;
      const name = `${m.name}.weight`;
      let w: AnyWeight;
      if (m.split.disk === 0) {
        w = this.backend.packedWeight(m.format, this.mode, m.n, m.k, m.resident!, name);
      } else {
        if (!slot || !this.file) throw new Error(`layer ${j}: weights on disk need a staging slot`);
        const data = slot.subarray(offset, offset + m.bytes);
        const keep = m.split.device + m.split.ram;
        const from = alignDown(keep);
        const dst = slot.subarray(offset + from, offset + alignUp(m.bytes));
        reads.push(this.file.read(dst, m.fileOffset + from, { background }));
        this.stats.bytesRead += dst.byteLength;
        if (m.residentRows) {
          const rows = m.residentRows;
          w = this.backend.rowSplitWeight([
            this.backend.packedWeight(m.format, this.mode, rows, m.k, m.resident!, name),
            this.backend.packedWeight(m.format, this.mode, m.n - rows, m.k, data.subarray(keep), name),
          ], name);
        } else {
          if (keep > 0) fixups.push(() => data.set(m.resident!.subarray(0, keep)));
          w = this.backend.packedWeight(m.format, this.mode, m.n, m.k, data, name);
        }
        offset += alignUp(m.bytes);
      }
      const linear: Linear = { w, b: m.bias };
      out[m.slot] = linear;
    }
    if (part !== 'mlp') out.attnNorm = layer.norms.attnNorm;
    if (part !== 'attn') {
      out.mlpNorm = layer.norms.mlpNorm;
      out.gate ??= null;
    }
    return { weights: out as Partial<AttentionWeights & MlpWeights>, reads, fixups };
  }

  async close(): Promise<void> {
    await this.file?.close();
  }
}

/**
 * Moves the cut of a tensor split between RAM and disk down to the backend's packed row block, so
 * that its resident rows and its disk rows are each a packed weight of their own (no copy of the
 * resident rows into the staging slot on every load). The cut moves by less than one block (32
 * rows here), toward the disk, so the plan's RAM is never exceeded.
 */
function cutAtRowBlock(backend: Backend, meta: TensorMeta, split: ItemSplit): { split: ItemSplit; residentRows: number | null } {
  const keep = split.device + split.ram;
  const block = backend.packedRowBlock(meta.format);
  if (keep === 0 || split.disk === 0 || block === null) return { split, residentRows: null };
  const blockBytes = backend.packedByteLength(meta.format, block, meta.k);
  const rows = Math.floor(keep / blockBytes) * block;
  const kept = backend.packedByteLength(meta.format, rows, meta.k);
  const moved = keep - kept;
  const fromRam = Math.min(moved, split.ram);
  const cut = { device: split.device - (moved - fromRam), ram: split.ram - fromRam, disk: split.disk + moved };
  return { split: cut, residentRows: rows > 0 ? rows : null };
}

// ---- the packed file ------------------------------------------------------------------------

interface TensorMeta {
  name: string;
  format: PackedWeight['format'];
  n: number;
  k: number;
  bytes: number;
  offset: number;
}

interface Manifest {
  key: string;
  tensors: TensorMeta[];
}

function manifestKey(sourceFiles: string[], mode: ComputeMode, backend: string): string {
  return JSON.stringify({ v: 2, backend, mode, sources: sourceFiles.map(sourceStamp) });
}

/**
 * What tells a source file's contents apart without reading them: its real path, size, mtime,
 * ctime, device and inode. Size and mtime alone are not enough: rsync -a, cp -p and tar x give a
 * changed file its old mtime (and a renamed-in copy keeps the name). ctime cannot be set back by
 * utime; it also moves on chmod, chown or a new link, which costs a conversion, never wrong weights.
 */
function sourceStamp(file: string): { file: string; id: string } {
  const st = fs.statSync(file, { bigint: true });
  return { file: fs.realpathSync(file), id: `${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.dev}:${st.ino}` };
}

/** Whether a manifest whose key matches can be used as it is: its tensor list is the one this run
 *  packs, and weights.bin holds every tensor it lists. Else says why (the run converts again). */
function reusable(manifest: Manifest, manifestFile: string, expected: () => TensorMeta[], file: string, log: (msg: string) => void): boolean {
  const problem = tensorListProblem(manifestFile, manifest.tensors, expected()) ?? packedFileProblem(file, manifest.tensors);
  if (problem) log(`${problem}: converting the weights again`);
  return problem === null;
}

/** The tensors `convert` would write for `entries`, in order (from the files' headers alone). The
 *  format is one the mode or 4-bit compression gives, and the bytes are what loader.sizes() plans. */
function expectedTensors(loader: WeightLoader, entries: { j: number; name: string }[], backend: Backend, mode: ComputeMode): TensorMeta[] {
  const sizes = loader.sizes().layers;
  const seen = new Map<number, number>();
  let offset = 0;
  return entries.map((e) => {
    const i = seen.get(e.j) ?? 0;
    seen.set(e.j, i + 1);
    const info = loader.tensorInfo(`${e.name}.weight`)!;
    const [n, k] = info.shape as [number, number];
    const bytes = sizes[e.j]![i]!.bytes;
    const plain = weightFormatFor(info.dtype, mode);
    const format = backend.packedByteLength(plain, n, k) === bytes ? plain : 'q4';
    const meta = { name: e.name, format, n, k, bytes, offset };
    offset += alignUp(bytes);
    return meta;
  });
}

/** How a manifest's tensor list differs from the one a run needs (config.json changed since the
 *  conversion: more layers, other names or shapes), or null. Never indexed past what it lists. */
function tensorListProblem(manifestFile: string, tensors: unknown, expected: TensorMeta[]): string | null {
  if (!Array.isArray(tensors)) return `${manifestFile} has no tensor list`;
  if (tensors.length !== expected.length) return `${manifestFile} lists ${tensors.length} packed tensors, this model has ${expected.length}`;
  const fields = ['name', 'format', 'n', 'k', 'bytes', 'offset'] as const;
  for (let i = 0; i < expected.length; i++) {
    const got = tensors[i] as Partial<TensorMeta> | null;
    const want = expected[i]!;
    const field = fields.find((f) => got?.[f] !== want[f]);
    if (field) return `${manifestFile}: tensor ${i} (${String(got?.name)}) has ${field} ${String(got?.[field])}, this model's ${want.name} needs ${want[field]}`;
  }
  return null;
}

/** Why `file` cannot hold the tensors its manifest lists (gone, not a file, or shorter than the end
 *  of the last one: truncated or damaged since), or null. */
function packedFileProblem(file: string, tensors: TensorMeta[]): string | null {
  const end = tensors.reduce((n, t) => Math.max(n, t.offset + alignUp(t.bytes)), 0);
  if (!Number.isSafeInteger(end)) return `${file}: its manifest lists a tensor without a byte range`;
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    return `${file} cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
  }
  if (!st.isFile()) return `${file} is not a regular file`;
  if (st.size < end) return `${file} is ${st.size} bytes, shorter than the ${end} its manifest lists`;
  return null;
}

/** The bytes of the packed weights in `dir` (a WeightStore's folder) when a run would reuse them:
 *  its manifest is written, every source file it was packed from is unchanged since (sourceStamp),
 *  and weights.bin holds every tensor listed; else null. (Whether the tensor list is the one the
 *  model's config.json gives needs the model: a run checks that too.) */
export function reusablePackedBytes(dir: string): number | null {
  const manifest = readManifest(path.join(dir, 'weights.json'));
  if (!manifest) return null;
  try {
    const { backend, mode, sources } = JSON.parse(manifest.key) as { backend: string; mode: ComputeMode; sources: { file: string }[] };
    if (sources.length === 0 || manifestKey(sources.map((s) => s.file), mode, backend) !== manifest.key) return null;
    const file = path.join(dir, 'weights.bin');
    if (!Array.isArray(manifest.tensors) || packedFileProblem(file, manifest.tensors) !== null) return null;
    return fs.statSync(file).size;
  } catch {
    return null;  // an older key, a source file gone, or no packed file: the run converts
  }
}

function readManifest(file: string): Manifest | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest;
  } catch {
    return null;
  }
}

/** Packs every layer weight into the file chunk by chunk, read as loading reads: each chunk is
 *  packed after the unwritten (< 4096-byte) tail of the one before, and every whole 4096-byte
 *  block is written out before the next chunk is read. Staging is one chunk, not one tensor (the
 *  largest OPT-30B weight is 392 MiB), and is the memory plan's 'weight loading' item. */
async function convert(loader: WeightLoader, entries: { slot: LayerSlot; name: string }[], file: string): Promise<Manifest> {
  const bf = await openBlockFile(file, 'w');
  const tensors: TensorMeta[] = [];
  let offset = 0;
  // Allocated once at its largest (native memory is only freed when the collector runs a
  // finalizer, so a buffer per tensor could pile up past the RAM limit).
  const staging = alignedBytes(conversionStagingBytes(loader.sizes().packedChunkBytes));
  try {
    for (const e of entries) {
      // Packed bytes of this tensor before staging[0] are on disk; `base` is a multiple of 4096.
      let base = 0;
      const chunks = loader.packMatrixChunks(e.name, e.slot, (at, bytes) => staging.subarray(at - base, at - base + bytes));
      let r = chunks.next();
      for (; !r.done; r = chunks.next()) {
        const whole = alignDown(r.value - base);
        if (whole === 0) continue;
        await bf.write(staging.subarray(0, whole), offset + base);
        staging.copyWithin(0, whole, r.value - base);
        base += whole;
      }
      const { format, n, k, bytes } = r.value;
      const tail = bytes - base;
      if (tail > 0) {
        staging.fill(0, tail, alignUp(tail));
        await bf.write(staging.subarray(0, alignUp(tail)), offset + base);
      }
      tensors.push({ name: e.name, format, n, k, bytes, offset });
      offset += alignUp(bytes);
    }
    await bf.sync();
  } finally {
    await bf.close();
  }
  return { key: '', tensors };
}
