// The hardware profile: what this machine does per second, measured once (`tierlm profile`) and
// saved, so a cost model can price a placement policy without timing anything itself.
//
//   GEMM        FLOP/s per weight format and compute mode, for a range of batch rows M
//               (interpolate with gemmRate: log-log in M, clamped outside the table), with the
//               weights streaming from RAM: calls rotate over copies larger than any last-level
//               cache, as a generation step reads each layer's weights once (one 32 MiB weight
//               timed on its own stayed in cache and ran decode-sized GEMMs 1.6× too fast)
//   attention   decode: bytes of K+V cache read per second (f32 and f16 caches);
//               prefill: FLOP/s of causal attention over one prompt
//   memory      bytes copied per second (a large typed-array copy)
//   disk        O_DIRECT sequential read (best of two passes) and write bytes per second in the
//               disk directory
//   machine     CPU model, cores, RAM, ISA, compute threads, Node version, date
//
// Every rate is the best of several timed repetitions (a shared or noisy machine mostly slows
// runs down, so the best is the most repeatable figure). A GPU and its link are not measured
// yet: `gpu` is a typed slot left unset.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { type PackedWeight, cpuBackend, getThreads, hugePageStatus, isaInfo, readMemoryPass, releaseFreedMemory, setThreads } from '../backend/index.js';
import { type Bf16Kernel, amxDisagreement, fasterBf16Kernel } from '../backend/cpu/bf16-kernel.js';
import { type GemmKernelKind, GEMM_KERNEL_KINDS, GEMM_WIDEN_BLOCKS, gemmBf16Kernel, gemmOnePassRows, gemmWidenPanels } from '../backend/cpu/gemm.js';
import type { CacheDType, ComputeMode, WeightFormat } from '../backend/kernels.js';
import { type FloatDType, fromFloat32 } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import { DirectFile } from '../tensor/disk/io.js';
import { FileLock } from '../tensor/disk/lock.js';
import { BufferPool, sequentialPass } from '../tensor/disk/buffer-pool.js';
import { UserError } from '../util/errors.js';
import { formatSize } from '../tensor/tiers/size.js';
import { runInChild } from '../util/child.js';
import { camelKeys, snakeKeys, toSnake } from '../util/json-case.js';
import { checkKeys } from '../util/names.js';
import { checkApiValue } from '../util/options.js';
import { statOrNull } from '../util/stat.js';

/** How `tierlm profile` names each bf16 GEMM kernel. */
export const BF16_KERNEL_LABELS: Readonly<Record<Bf16Kernel, string>> = { fma: 'widening + FMA', dot: 'vdpbf16ps', amx: 'AMX tiles' };

/** What the profile says about the page size packed weights get (`tierlm profile` prints it). */
export { hugePageStatus };

export const PROFILE_VERSION = 2;

/** How big the measurements are: 'full' (a minute or two), 'quick' (seconds), 'tiny' (tests). */
export type ProfileSizes = 'full' | 'quick' | 'tiny';

export interface GemmRow {
  format: WeightFormat;
  mode: ComputeMode;
  /** FLOP/s (2·M·K·N per call) for each entry of GemmTable.ms. */
  flopsPerSecond: number[];
}

export interface GemmTable {
  /** Shape of the weight: y[M,N] = x[M,K] · W[N,K]ᵀ. */
  k: number;
  n: number;
  /** Batch rows measured, increasing. */
  ms: number[];
  rows: GemmRow[];
}

export interface DecodeAttentionEntry {
  cacheDtype: CacheDType;
  batch: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Valid cache positions per sequence. */
  len: number;
  /** Bytes of K and V cache read by one call. */
  bytes: number;
  /** bytes / seconds of one call. */
  bytesPerSecond: number;
}

export interface PrefillAttentionEntry {
  tokens: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Causal attention FLOP/s, counting 2·2·heads·headDim·tokens·(tokens+1)/2 per call (QKᵀ and PV, lower triangle). */
  flopsPerSecond: number;
}

export interface HardwareProfile {
  version: typeof PROFILE_VERSION;
  /** ISO 8601 time the measurement finished. */
  createdAt: string;
  /** Measured with --quick (smaller shapes, shorter timing). */
  quick: boolean;
  sizes: ProfileSizes;
  machine: {
    cpuModel: string;
    /** Logical CPUs the OS reports. */
    cores: number;
    ramBytes: number;
    isa: { active: string; detected: string; features: Record<string, boolean> };
    /** Compute threads the kernels ran with while measuring. */
    threads: number;
    node: string;
    platform: string;
    arch: string;
  };
  gemm: GemmTable;
  /** Kernel variants chosen by timing them here (absent in older profiles). bf16: the bf16-mode
   *  GEMM kernel, 'fma' (widening + FMA), 'dot' (vdpbf16ps) or 'amx' (AMX-BF16 tiles, where the CPU
   *  has them and their results matched vdpbf16ps's), timed on the GEMM shapes above; the
   *  bf16/bf16 GEMM row holds the chosen kernel's rates, so the cost model plans with them. */
  kernels?: {
    bf16: Bf16Kernel;
    /** The float GEMM kernels whose 15-16-row products (a decode step at batch 15-16) ran faster
     *  as one row block than as two, timed here in pairs (absent in older profiles; AVX-512 only:
     *  other instruction sets have no such block). A model load applies it (gemmOnePassRows). */
    onePassRows?: GemmKernelKind[];
    /** The kernels ('f16', 'bf16': weights widened for fp32 FMA) for which widening a panel group
     *  to f32 once, where a thread sweeps many row blocks over it (prefill), ran faster than
     *  widening in every tile, timed here in pairs (absent in older profiles and without AVX2). A
     *  model load applies it (gemmWidenPanels). */
    widenPanels?: GemmKernelKind[];
  };
  attention: {
    decode: DecodeAttentionEntry[];
    prefill: PrefillAttentionEntry;
  };
  memory: {
    /** Bytes copied per second (each byte read once and written once), Uint8Array.prototype.set. */
    copyBytesPerSecond: number;
    /** Bytes read per second by the compute threads together (each reading a contiguous slice):
     *  the rate a batch-1 decode step, which only reads its weights, is bound by. Absent in
     *  profiles saved before it was measured. */
    readBytesPerSecond?: number;
    /** Size of the copy measured. */
    bytes: number;
  };
  disk: {
    dir: string;
    /** true: O_DIRECT; false: the filesystem refused it and reads/writes were buffered with the page cache dropped. */
    direct: boolean;
    fileBytes: number;
    blockBytes: number;
    inflight: number;
    /** Sequential cold reads. */
    readBytesPerSecond: number;
    /** Sequential writes, the final fsync included. */
    writeBytesPerSecond: number;
  };
  /** Not measured yet: a compute device and its link to RAM. */
  gpu?: {
    name: string;
    memoryBytes: number;
    /** Host→device and device→host copy bandwidth. */
    h2dBytesPerSecond: number;
    d2hBytesPerSecond: number;
    gemm?: GemmTable;
  };
}

export interface MeasureOptions {
  quick: boolean;
  /** Directory for the disk test file (created and deleted there). */
  diskDir: string;
  /** Compute threads to measure with (default: what the engine uses now); restored afterwards. */
  threads?: number;
  /** Internal: overrides the sizes `quick` picks ('tiny' is for tests). Default: $TIERLM_PROFILE_SIZES, else quick ? 'quick' : 'full'. */
  sizes?: ProfileSizes;
  /** Progress messages. */
  log?: (msg: string) => void;
}

interface SizeSpec {
  k: number;
  n: number;
  ms: number[];
  /** Minimum seconds of timed repetitions per point (after one warm-up). */
  minSeconds: number;
  decode: { heads: number; headDim: number; configs: [batch: number, len: number][] };
  prefill: { tokens: number; heads: number; headDim: number };
  copyBytes: number;
  diskBytes: number;
  diskBlock: number;
  /** Bytes of weight copies the GEMM timing rotates over (0: one weight). */
  gemmStreamBytes: number;
}

const MiB = 2 ** 20;
const SIZES: Record<ProfileSizes, SizeSpec> = {
  full: {
    k: 4096, n: 4096, ms: [1, 4, 16, 64, 256, 1024], minSeconds: 0.3,
    decode: { heads: 32, headDim: 128, configs: [[1, 2048], [8, 512]] },
    prefill: { tokens: 512, heads: 32, headDim: 128 },
    copyBytes: 256 * MiB, diskBytes: 2048 * MiB, diskBlock: 16 * MiB, gemmStreamBytes: 512 * MiB,
  },
  quick: {
    k: 2048, n: 2048, ms: [1, 16, 256], minSeconds: 0.2,
    // Caches larger than a last-level cache, as in the full profile.
    decode: { heads: 32, headDim: 128, configs: [[1, 2048], [4, 512]] },
    prefill: { tokens: 512, heads: 16, headDim: 128 },
    // 2 × 128 MiB to copy: still far beyond any last-level cache, and below the GEMM phase's peak.
    copyBytes: 128 * MiB, diskBytes: 256 * MiB, diskBlock: 16 * MiB, gemmStreamBytes: 384 * MiB,
  },
  tiny: {
    k: 256, n: 256, ms: [1, 16, 64], minSeconds: 0.002,
    decode: { heads: 4, headDim: 64, configs: [[1, 256], [4, 64]] },
    prefill: { tokens: 64, heads: 4, headDim: 64 },
    copyBytes: 4 * MiB, diskBytes: 8 * MiB, diskBlock: 1 * MiB, gemmStreamBytes: 0,
  },
};

const DISK_INFLIGHT = 4;

/** The (format, mode) pairs the engine can run: float weights in fp32 mode keep their dtype; in
 *  bf16 mode every float weight is packed as bf16; q4/q8 run in both modes. */
export const GEMM_CASES: readonly { format: WeightFormat; mode: ComputeMode }[] = [
  { format: 'f32', mode: 'fp32' },
  { format: 'f16', mode: 'fp32' },
  { format: 'bf16', mode: 'fp32' },
  { format: 'q4', mode: 'fp32' },
  { format: 'q8', mode: 'fp32' },
  { format: 'bf16', mode: 'bf16' },
  { format: 'q4', mode: 'bf16' },
  { format: 'q8', mode: 'bf16' },
];

// ---- measuring ------------------------------------------------------------------------------------

function sizesFor(opts: MeasureOptions): ProfileSizes {
  if (opts.sizes) return opts.sizes;
  const env = process.env.TIERLM_PROFILE_SIZES;
  if (env !== undefined && env !== '') {
    if (env !== 'full' && env !== 'quick' && env !== 'tiny') throw new UserError(`TIERLM_PROFILE_SIZES must be full, quick or tiny, got "${env}"`);
    return env;
  }
  return opts.quick ? 'quick' : 'full';
}

/** Best seconds of one call of fn, over at least minSeconds of repetitions (and 3 of them) after a warm-up. */
function timeBest(fn: () => unknown, minSeconds: number): number {
  fn();
  let best = Infinity;
  const t0 = performance.now();
  let reps = 0;
  while (reps < 3 || performance.now() - t0 < minSeconds * 1000) {
    const t = performance.now();
    fn();
    best = Math.min(best, performance.now() - t);
    reps++;
  }
  return Math.max(best, 1e-6) / 1000;
}

/** A repeating pattern of small values in (-scale, scale): cheap to fill, no denormals, no NaN. */
function patternF32(len: number, scale: number): Float32Array {
  const out = new Float32Array(len);
  let a = 0x9e3779b9;
  for (let i = 0; i < len; i++) {
    a = (Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    out[i] = (a / 4294967296 * 2 - 1) * scale;
  }
  return out;
}

function tile<T extends Float32Array | Uint16Array>(dst: T, pattern: T): T {
  for (let i = 0; i < dst.length; i += pattern.length) dst.set(pattern.subarray(0, Math.min(pattern.length, dst.length - i)), i);
  return dst;
}

const PATTERN = 65536;

function floatTensor(dtype: FloatDType, shape: number[], scale: number): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const p = patternF32(Math.min(PATTERN, size), scale);
  if (dtype === 'f32') return new Tensor('f32', shape, tile(new Float32Array(size), p));
  return new Tensor(dtype, shape, tile(new Uint16Array(size), fromFloat32(dtype, p)));
}

/** One row block is kept for a kernel's 15-16-row products when it takes at most this share of the
 *  two blocks' time (median of paired passes): below it, one measurement cannot tell them apart. */
export const ONE_PASS_MARGIN = 0.97;

/** Whether turning a process-wide kernel setting on for `kind` makes products faster: passes of
 *  `rows`-row products over `copies` (each copy at least `minCalls` calls' worth, and a tenth of
 *  the table's timing per point at least) with it on and off, 7 each, in turn; the median of the
 *  paired ratios, faster at ONE_PASS_MARGIN or below. The setting is restored afterwards. */
function settingFaster(setting: (kinds?: readonly GemmKernelKind[]) => GemmKernelKind[], kind: GemmKernelKind, copies: PackedWeight[],
  rows: number, k: number, minCalls: number, minSeconds: number): { ratio: number; faster: boolean } {
  const cpu = cpuBackend();
  const x = floatTensor('f32', [rows, k], 1) as Tensor<'f32'>;
  const y = Tensor.zeros('f32', [rows, copies[0]!.n]);
  const before = setting();
  const on = [...new Set([...before, kind])], off = before.filter((b) => b !== kind);
  const pass = (kinds: GemmKernelKind[]) => {
    setting(kinds);
    const t0 = performance.now();
    let calls = 0;
    while (calls < minCalls || performance.now() - t0 < minSeconds * 100) cpu.matmul(x, copies[calls++ % copies.length]!, null, y);
    return (performance.now() - t0) / calls;
  };
  const ratios: number[] = [];
  try {
    pass(on);
    for (let i = 0; i < 7; i++) {
      const [a, b] = i % 2 ? [pass(off), pass(on)] : [pass(on), pass(off)];
      ratios.push(i % 2 ? b / a : a / b);
    }
  } finally {
    setting(before);
  }
  const ratio = ratios.sort((a, b) => a - b)[ratios.length >> 1]!;
  return { ratio, faster: ratio <= ONE_PASS_MARGIN };
}

/** Whether 16-row products over `copies` (weights streaming from RAM, as in decode, every copy
 *  read each pass) run faster as one row block for `kind`. */
function onePassFaster(kind: GemmKernelKind, copies: PackedWeight[], k: number, minSeconds: number): { ratio: number; faster: boolean } {
  return settingFaster(gemmOnePassRows, kind, copies, 16, k, copies.length, minSeconds);
}

/** Whether `kind`'s products over many row blocks (prefill's regime) run faster with each panel
 *  group widened to f32 once. */
function widenFaster(kind: GemmKernelKind, copies: PackedWeight[], rows: number, k: number, minSeconds: number): { ratio: number; faster: boolean } {
  return settingFaster(gemmWidenPanels, kind, copies, rows, k, 2, minSeconds);
}

/** Whether AMX runs here and its results on a product match vdpbf16ps's (amxDisagreement), said
 *  in the log where they do not. */
function amxAgrees(log: (m: string) => void): boolean {
  if (!isaInfo().amx) return false;
  const [m, k, n] = [67, 1000, 97];  // several row blocks and panels, a k tail
  const w = cpuBackend().packWeight(floatTensor('bf16', [n, k], 0.05), 'bf16', 'profile');
  const d = amxDisagreement(floatTensor('f32', [m, k], 1) as Tensor<'f32'>, w);
  if (d !== null) log(`gemm bf16: AMX results differ from vdpbf16ps's (normalised difference ${d}): AMX not used`);
  return d === null;
}

function measureGemm(s: SizeSpec, log: (m: string) => void): { table: GemmTable; bf16: Bf16Kernel; onePassRows?: GemmKernelKind[]; widenPanels?: GemmKernelKind[] } {
  const cpu = cpuBackend();
  const { k, n, ms } = s;
  const rows: GemmRow[] = [];
  const xMax = floatTensor('f32', [ms[ms.length - 1]!, k], 1) as Tensor<'f32'>;
  // bf16 mode has two GEMM kernels where the CPU has AVX512_BF16, three where it also has AMX:
  // each is timed, the fastest (geometric mean over the M points; vdpbf16ps and AMX by a clear
  // margin over FMA) is kept. AMX only after its results matched vdpbf16ps's. The process's own
  // setting is restored afterwards.
  const before = gemmBf16Kernel();
  const bf16Kernels: Bf16Kernel[] = isaInfo().active !== 'avx512bf16' ? ['fma'] : amxAgrees(log) ? ['fma', 'dot', 'amx'] : ['fma', 'dot'];
  const cases = GEMM_CASES.flatMap((c): { format: WeightFormat; mode: ComputeMode; kernel: Bf16Kernel | null }[] => (c.format === 'bf16' && c.mode === 'bf16'
    ? bf16Kernels.map((kernel) => ({ ...c, kernel }))
    : [{ ...c, kernel: null }]));
  let bf16: Bf16Kernel = 'fma';
  let fmaTime: number | undefined;  // the FMA kernel's mean time, once a faster one replaced its row
  // Only AVX-512 tiles take 15-16 rows in one block: elsewhere there is nothing to choose. The
  // process's own setting is restored afterwards, as the bf16 kernel's is.
  const onePassBefore = gemmOnePassRows();
  const onePassDecided = isaInfo().active.startsWith('avx512') ? new Map<GemmKernelKind, boolean>() : null;
  // The kernels decided so far as decided, the others as they were.
  const onePassChosen = () => GEMM_KERNEL_KINDS.filter((g) => onePassDecided?.get(g) ?? onePassBefore.includes(g));
  // Widening a panel group once (f16 and bf16 weights through FMA): AVX2 and AVX-512 only.
  const widenBefore = gemmWidenPanels();
  const widenDecided = isaInfo().active !== 'scalar' ? new Map<GemmKernelKind, boolean>() : null;
  const widenChosen = () => GEMM_KERNEL_KINDS.filter((g) => widenDecided?.get(g) ?? widenBefore.includes(g));
  for (const c of cases) {
    if (c.kernel !== null) gemmBf16Kernel(c.kernel);
    const quant = c.format === 'q4' || c.format === 'q8';
    const src = floatTensor(quant ? 'f32' : (c.format as FloatDType), [n, k], 0.05);
    const w = cpu.packWeight(src, c.mode, 'profile', quant ? { quantize: c.format as 'q4' | 'q8' } : undefined);
    // Packed bytes are position independent: copies of one packing (in buffers allocated as a
    // model's packed weights are).
    const copy = () => {
      const data = cpu.kernels.packedBuffer(w.data.byteLength);
      data.set(w.data);
      return cpu.packedWeight(w.format, w.mode, n, k, data, 'profile');
    };
    const copies = [w, ...Array.from({ length: Math.ceil(s.gemmStreamBytes / w.data.byteLength) - 1 }, copy)];
    const kind: GemmKernelKind | null = c.format === 'f32' || c.format === 'f16' ? c.format
      : c.format === 'bf16' && c.kernel !== 'amx' ? (c.kernel === 'dot' ? 'bf16-dot' : 'bf16') : null;
    if (onePassDecided && kind && !onePassDecided.has(kind)) {
      // Decided before the rates below are timed, so that the table holds the chosen layout's.
      const { ratio, faster } = onePassFaster(kind, copies, k, s.minSeconds);
      onePassDecided.set(kind, faster);
      gemmOnePassRows(onePassChosen());
      log(`gemm ${kind}: 16 rows in one block take ${ratio.toFixed(3)} of two blocks' time: ${faster ? 'one block' : 'two blocks'}`);
    }
    if (widenDecided && (kind === 'f16' || kind === 'bf16') && !widenDecided.has(kind)) {
      // (enough rows for GEMM_WIDEN_BLOCKS row blocks a thread with the largest tiles, AVX-512's 16)
      const m = Math.max(ms[ms.length - 1]!, GEMM_WIDEN_BLOCKS * 16);
      const { ratio, faster } = widenFaster(kind, copies, m, k, s.minSeconds);
      widenDecided.set(kind, faster);
      gemmWidenPanels(widenChosen());
      log(`gemm ${kind}: ${m} rows with panel groups widened once take ${ratio.toFixed(3)} of widening in every tile: ${faster ? 'widen once' : 'in every tile'}`);
    }
    let next = 0;
    const flops: number[] = [];
    for (const m of ms) {
      const x = new Tensor('f32', [m, k], xMax.data.subarray(0, m * k));
      const y = Tensor.zeros('f32', [m, n]);
      const sec = timeBest(() => cpu.matmul(x, copies[next++ % copies.length]!, null, y), s.minSeconds);
      flops.push((2 * m * k * n) / sec);
    }
    const label = c.kernel === null ? '' : ` (${BF16_KERNEL_LABELS[c.kernel]})`;
    const prev = c.kernel === 'dot' || c.kernel === 'amx' ? rows.findIndex((r) => r.format === 'bf16' && r.mode === 'bf16') : -1;
    if (prev >= 0) {
      // The same rule as a run's own measurement (fasterBf16Kernel: vdpbf16ps or AMX only when
      // clearly faster than FMA), on the geometric means' times.
      const meanTime = (f: number[]) => Math.exp(-f.reduce((a, x) => a + Math.log(x), 0) / f.length);
      const t = meanTime(flops), held = meanTime(rows[prev]!.flopsPerSecond);
      fmaTime ??= held;
      const pick: Bf16Kernel = c.kernel === 'dot' ? fasterBf16Kernel({ fma: fmaTime, dot: t })
        : fasterBf16Kernel({ fma: fmaTime, dot: (bf16 as Bf16Kernel) === 'dot' ? held : Infinity, amx: t });
      if (pick === c.kernel) {
        rows[prev] = { format: c.format, mode: c.mode, flopsPerSecond: flops };
        bf16 = pick;
      }
    } else rows.push({ format: c.format, mode: c.mode, flopsPerSecond: flops });
    copies.length = 0;
    collect();
    log(`gemm ${c.format}/${c.mode}${label}: ${flops.map((f, i) => `M=${ms[i]} ${(f / 1e9).toFixed(1)}`).join(', ')} GFLOP/s`);
  }
  gemmBf16Kernel(before);
  log(`bf16 kernel: ${BF16_KERNEL_LABELS[bf16]}`);
  const onePassRows = onePassDecided ? onePassChosen() : undefined;
  gemmOnePassRows(onePassBefore);
  const widenPanels = widenDecided ? widenChosen().filter((g) => g === 'f16' || g === 'bf16') : undefined;
  gemmWidenPanels(widenBefore);
  return { table: { k, n, ms: [...ms], rows }, bf16, ...(onePassRows ? { onePassRows } : {}), ...(widenPanels ? { widenPanels } : {}) };
}

function measureDecode(s: SizeSpec, log: (m: string) => void): DecodeAttentionEntry[] {
  const cpu = cpuBackend();
  const { heads, headDim } = s.decode;
  const out: DecodeAttentionEntry[] = [];
  for (const cacheDtype of ['f32', 'f16'] as const) {
    for (const [batch, len] of s.decode.configs) {
      const shape = [batch, heads, len, headDim];
      const kc = floatTensor(cacheDtype, shape, 1);
      const vc = floatTensor(cacheDtype, shape, 1);
      const q = floatTensor('f32', [batch, heads, headDim], 1) as Tensor<'f32'>;
      const lens = Tensor.i32(new Array<number>(batch).fill(len));
      const y = Tensor.zeros('f32', [batch, heads, headDim]);
      const scale = 1 / Math.sqrt(headDim);
      const sec = timeBest(() => cpu.attentionDecode(q, kc, vc, lens, scale, y), s.minSeconds);
      const bytes = kc.byteLength + vc.byteLength;
      out.push({ cacheDtype, batch, heads, kvHeads: heads, headDim, len, bytes, bytesPerSecond: bytes / sec });
      log(`attention decode ${cacheDtype} cache, batch ${batch} × ${len} positions: ${(bytes / sec / 1e9).toFixed(2)} GB/s`);
    }
  }
  return out;
}

function measurePrefill(s: SizeSpec, log: (m: string) => void): PrefillAttentionEntry {
  const cpu = cpuBackend();
  const { tokens, heads, headDim } = s.prefill;
  const shape = [tokens, heads, headDim];
  const q = floatTensor('f32', shape, 1) as Tensor<'f32'>;
  const k = floatTensor('f32', shape, 1) as Tensor<'f32'>;
  const v = floatTensor('f32', shape, 1) as Tensor<'f32'>;
  const starts = Tensor.i32([0, tokens]);
  const y = Tensor.zeros('f32', shape);
  const sec = timeBest(() => cpu.attentionPrefill(q, k, v, starts, 1 / Math.sqrt(headDim), y), s.minSeconds);
  const flops = 2 * heads * headDim * tokens * (tokens + 1);
  log(`attention prefill ${tokens} tokens: ${(flops / sec / 1e9).toFixed(1)} GFLOP/s`);
  return { tokens, heads, kvHeads: heads, headDim, flopsPerSecond: flops / sec };
}

function measureCopy(s: SizeSpec, log: (m: string) => void): HardwareProfile['memory'] {
  // (allocated as packed weights are, so the read rate is the one a decode step's weights see)
  const src = cpuBackend().kernels.packedBuffer(s.copyBytes);
  for (let i = 0; i < src.length; i += 4096) src[i] = i & 255;  // touch every page
  const dst = new Uint8Array(s.copyBytes);
  dst.fill(1);
  const sec = timeBest(() => dst.set(src), s.minSeconds);
  const rate = s.copyBytes / sec;
  const read = s.copyBytes / timeBest(() => readMemoryPass(src), s.minSeconds);
  log(`memory copy: ${(rate / 1e9).toFixed(2)} GB/s, read: ${(read / 1e9).toFixed(2)} GB/s; ${hugePageStatus() ?? 'page size unknown'}`);
  return { copyBytesPerSecond: rate, readBytesPerSecond: read, bytes: s.copyBytes };
}

async function measureDisk(s: SizeSpec, diskDir: string, log: (m: string) => void): Promise<HardwareProfile['disk']> {
  if (!fs.existsSync(diskDir) || !fs.statSync(diskDir).isDirectory()) throw new UserError(`disk directory ${diskDir} does not exist or is not a directory`);
  const dir = fs.mkdtempSync(path.join(diskDir, 'tierlm-profile-'));
  const file = path.join(dir, 'disk.bin');
  const block = s.diskBlock;
  const size = Math.ceil(s.diskBytes / block) * block;
  const pool = new BufferPool({ bufferBytes: block, count: DISK_INFLIGHT });
  try {
    // Random contents, so nothing downstream can compress or skip zeros.
    const leases = await Promise.all(Array.from({ length: DISK_INFLIGHT }, () => pool.acquire()));
    for (const l of leases) for (let i = 0; i < l.data.length; i += 65536) randomFillSync(l.data, i, Math.min(65536, l.data.length - i));
    for (const l of leases) pool.release(l);
    const w = DirectFile.open(file, 'w');
    let writeSec: number;
    try {
      w.allocate(size);
      writeSec = await sequentialPass(w, pool, size, block, true);
    } finally {
      w.close();
    }
    const r = DirectFile.open(file, 'r');
    let readSec = Infinity;
    try {
      // The best of two passes, like every other rate here: the engine rereads its weights file
      // every generation step, and on a shared disk one pass can catch a slow moment.
      for (let pass = 0; pass < 2; pass++) readSec = Math.min(readSec, await sequentialPass(r, pool, size, block, false));
    } finally {
      r.close();
    }
    const res = {
      dir: path.resolve(diskDir), direct: r.direct, fileBytes: size, blockBytes: block, inflight: DISK_INFLIGHT,
      readBytesPerSecond: size / readSec, writeBytesPerSecond: size / writeSec,
    };
    log(`disk ${res.dir} (${res.direct ? 'O_DIRECT' : 'buffered, cache dropped'}): read ${(res.readBytesPerSecond / 1e9).toFixed(2)} GB/s, write ${(res.writeBytesPerSecond / 1e9).toFixed(2)} GB/s`);
    return res;
  } finally {
    pool.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Frees the last phase's buffers before the next allocates its own, where the collector is
 *  exposed (the child process of ensureProfile runs with --expose-gc), and hands them back to the
 *  OS (malloc keeps freed 16 MiB weight copies otherwise). Without this, GEMM weight copies awaiting
 *  collection sat beside the copy test's buffers and a quick profile peaked at 1 GiB. */
function collect(): void {
  (globalThis as { gc?: () => void }).gc?.();
  releaseFreedMemory();
}

/** Measures this machine. Uses the engine's compute thread count unless `threads` is given. */
export async function measureProfile(opts: MeasureOptions): Promise<HardwareProfile> {
  const sizes = sizesFor(opts);
  const s = SIZES[sizes];
  const log = opts.log ?? (() => {});
  const before = getThreads();
  if (opts.threads !== undefined) setThreads(opts.threads);
  try {
    const threads = getThreads();
    const isa = isaInfo();
    const cpus = os.cpus();
    log(`profiling (${sizes}) with ${threads} compute threads, isa ${isa.active}`);
    const { table: gemm, bf16, onePassRows, widenPanels } = measureGemm(s, log);
    collect();
    const decode = measureDecode(s, log);
    const prefill = measurePrefill(s, log);
    collect();
    const memory = measureCopy(s, log);
    collect();
    const disk = await measureDisk(s, opts.diskDir, log);
    return {
      version: PROFILE_VERSION,
      createdAt: new Date().toISOString(),
      quick: opts.quick,
      sizes,
      machine: {
        cpuModel: cpus[0]?.model.trim() || 'unknown',
        cores: cpus.length || os.availableParallelism(),
        ramBytes: os.totalmem(),
        isa: { active: isa.active, detected: isa.detected, features: { ...isa.features } },
        threads,
        node: process.version,
        platform: process.platform,
        arch: process.arch,
      },
      gemm,
      kernels: { bf16, ...(onePassRows ? { onePassRows } : {}), ...(widenPanels ? { widenPanels } : {}) },
      attention: { decode, prefill },
      memory,
      disk,
    };
  } finally {
    if (opts.threads !== undefined) setThreads(before);
  }
}

// ---- saving and loading ---------------------------------------------------------------------------

/** $TIERLM_PROFILE if set, else ~/.cache/tierlm/hardware.json. */
export function defaultProfilePath(): string {
  const env = process.env.TIERLM_PROFILE;
  if (env) return path.resolve(env);
  return path.join(os.homedir(), '.cache', 'tierlm', 'hardware.json');
}

/** Writes the profile as JSON (creating the folder; atomically, through a temporary file). A file
 *  that cannot be written is a UserError naming it. */
export function saveProfile(p: HardwareProfile, file: string): void {
  validateProfile(p, file);
  try {
    writeProfileFile(p, file);
  } catch (e) {
    throw new UserError(`cannot save the hardware profile to ${file}: ${(e as Error).message}`);
  }
}

/** saveProfile's writing, its errors as Node.js raised them. */
function writeProfileFile(p: HardwareProfile, file: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    fs.writeFileSync(tmp, profileJson(p, 2) + '\n');
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** Refuses, before a measurement of seconds to minutes, a profile file that could not be saved: a
 *  directory, or one whose folder is not writable or cannot be created. `name` leads the message
 *  (a flag, an environment variable). Saving creates missing folders, so the nearest one that
 *  exists is the one checked. */
export function checkProfileFile(file: string, name = 'hardware profile'): void {
  const refuse = (why: string): never => {
    throw new UserError(`${name} ${file}: ${why}; nothing was measured`);
  };
  const abs = path.resolve(file);
  if (statOrNull(abs)?.isDirectory()) refuse('is a directory, not a file');
  let dir = path.dirname(abs);
  let s = statOrNull(dir);
  while (!s && path.dirname(dir) !== dir) {
    dir = path.dirname(dir);
    s = statOrNull(dir);
  }
  if (!s?.isDirectory()) refuse(`${dir} is not a directory, so the profile cannot be saved there`);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    refuse(`${dir} is not writable, so the profile cannot be saved there`);
  }
}

/** A profile as its file holds it and `tierlm profile --json` prints it: snake_case keys. */
export function profileJson(p: HardwareProfile, indent?: number): string {
  return JSON.stringify(snakeKeys(p, OPAQUE), null, indent);
}

/** The CPU feature map's keys are feature names, kept as they are. */
const OPAQUE = ['features'];

/** A malformed or outdated profile file; the message names the file and the field. */
export class ProfileFileError extends UserError {
  constructor(readonly file: string, message: string) {
    super(`hardware profile ${file}: ${message} (run \`tierlm profile\` to measure again, or delete the file)`);
    this.name = 'ProfileFileError';
  }
}

/** The version field of a saved profile, or null when there is none (no file, not JSON). */
function savedVersion(file: string): number | null {
  try {
    const v = (JSON.parse(fs.readFileSync(file, 'utf8')) as { version?: unknown }).version;
    return typeof v === 'number' ? v : null;
  } catch {
    return null;
  }
}

/** The saved profile, or null when the file does not exist. Throws a ProfileFileError naming the
 *  file when it cannot be read, is not JSON, or lacks or mistypes a field. */
export function loadProfile(file: string): HardwareProfile | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    // ENOTDIR: a folder of its path is a file, so there is no profile there either.
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw new ProfileFileError(file, `cannot be read: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = camelKeys(JSON.parse(text), OPAQUE);
  } catch (e) {
    throw new ProfileFileError(file, `is not valid JSON: ${(e as Error).message}`);
  }
  validateProfile(v, file);
  return v;
}

const FORMATS: readonly string[] = ['f32', 'f16', 'bf16', 'q4', 'q8'];
const MODES: readonly string[] = ['fp32', 'bf16'];
/** The cache dtypes decode attention is measured with (measureAttention). */
const DECODE_CACHE_DTYPES: readonly CacheDType[] = ['f32', 'f16'];

function validateProfile(v: unknown, file: string): asserts v is HardwareProfile {
  const bad = (field: string, want: string): never => {
    throw new ProfileFileError(file, `field ${toSnake(field)} must be ${want}`);
  };
  const obj = (x: unknown, field: string): Record<string, unknown> =>
    (typeof x === 'object' && x !== null && !Array.isArray(x) ? (x as Record<string, unknown>) : bad(field, 'an object'));
  const arr = (x: unknown, field: string, nonEmpty = true): unknown[] =>
    (Array.isArray(x) && (!nonEmpty || x.length > 0) ? x : bad(field, nonEmpty ? 'a non-empty array' : 'an array'));
  const pos = (x: unknown, field: string): number => (typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : bad(field, 'a positive finite number'));
  const posInt = (x: unknown, field: string): number => (Number.isInteger(x) && (x as number) > 0 ? (x as number) : bad(field, 'a positive integer'));
  const str = (x: unknown, field: string): string => (typeof x === 'string' ? x : bad(field, 'a string'));
  const oneOf = (x: unknown, field: string, values: readonly string[]): string =>
    (typeof x === 'string' && values.includes(x) ? x : bad(field, `one of ${values.join(', ')}`));

  const p = obj(v, 'profile');
  if (p.version !== PROFILE_VERSION) {
    bad('version', p.version === undefined ? `${PROFILE_VERSION} (it is missing)` : `${PROFILE_VERSION} (this file has ${JSON.stringify(p.version)}, from another version of tierlm)`);
  }
  if (Number.isNaN(Date.parse(str(p.createdAt, 'createdAt')))) bad('createdAt', 'an ISO date');
  if (typeof p.quick !== 'boolean') bad('quick', 'true or false');
  oneOf(p.sizes, 'sizes', ['full', 'quick', 'tiny']);

  const m = obj(p.machine, 'machine');
  str(m.cpuModel, 'machine.cpuModel');
  posInt(m.cores, 'machine.cores');
  pos(m.ramBytes, 'machine.ramBytes');
  const isa = obj(m.isa, 'machine.isa');
  str(isa.active, 'machine.isa.active');
  str(isa.detected, 'machine.isa.detected');
  obj(isa.features, 'machine.isa.features');
  posInt(m.threads, 'machine.threads');
  str(m.node, 'machine.node');
  str(m.platform, 'machine.platform');
  str(m.arch, 'machine.arch');

  validateGemm(p.gemm, 'gemm', { obj, arr, pos, posInt, oneOf, bad }, true);

  const att = obj(p.attention, 'attention');
  const dtypes = arr(att.decode, 'attention.decode').map((e, i) => {
    const f = `attention.decode[${i}]`;
    const d = obj(e, f);
    for (const key of ['batch', 'heads', 'kvHeads', 'headDim', 'len'] as const) posInt(d[key], `${f}.${key}`);
    pos(d.bytes, `${f}.bytes`);
    pos(d.bytesPerSecond, `${f}.bytesPerSecond`);
    return oneOf(d.cacheDtype, `${f}.cacheDtype`, DECODE_CACHE_DTYPES);
  });
  // attentionDecodeRate answers for every cache dtype measured; a missing one would fail a plan later, naming no file.
  for (const t of DECODE_CACHE_DTYPES) if (!dtypes.includes(t)) bad('attention.decode', `a list with an entry for a ${t} cache`);
  const pf = obj(att.prefill, 'attention.prefill');
  for (const key of ['tokens', 'heads', 'kvHeads', 'headDim'] as const) posInt(pf[key], `attention.prefill.${key}`);
  pos(pf.flopsPerSecond, 'attention.prefill.flopsPerSecond');

  if (p.kernels !== undefined) {
    const kn = obj(p.kernels, 'kernels');
    oneOf(kn.bf16, 'kernels.bf16', ['fma', 'dot', 'amx']);
    if (kn.onePassRows !== undefined) {
      if (!Array.isArray(kn.onePassRows)) bad('kernels.one_pass_rows', `a list of kernels (${GEMM_KERNEL_KINDS.join(', ')})`);
      (kn.onePassRows as unknown[]).forEach((k, i) => oneOf(k, `kernels.one_pass_rows[${i}]`, GEMM_KERNEL_KINDS));
    }
    if (kn.widenPanels !== undefined) {
      if (!Array.isArray(kn.widenPanels)) bad('kernels.widen_panels', 'a list of kernels (f16, bf16)');
      (kn.widenPanels as unknown[]).forEach((k, i) => oneOf(k, `kernels.widen_panels[${i}]`, ['f16', 'bf16']));
    }
  }
  const mem = obj(p.memory, 'memory');
  pos(mem.copyBytesPerSecond, 'memory.copyBytesPerSecond');
  if (mem.readBytesPerSecond !== undefined) pos(mem.readBytesPerSecond, 'memory.readBytesPerSecond');
  pos(mem.bytes, 'memory.bytes');

  const d = obj(p.disk, 'disk');
  str(d.dir, 'disk.dir');
  if (typeof d.direct !== 'boolean') bad('disk.direct', 'true or false');
  for (const key of ['fileBytes', 'blockBytes', 'inflight'] as const) posInt(d[key], `disk.${key}`);
  pos(d.readBytesPerSecond, 'disk.readBytesPerSecond');
  pos(d.writeBytesPerSecond, 'disk.writeBytesPerSecond');

  if (p.gpu !== undefined) {
    const g = obj(p.gpu, 'gpu');
    str(g.name, 'gpu.name');
    pos(g.memoryBytes, 'gpu.memoryBytes');
    pos(g.h2dBytesPerSecond, 'gpu.h2dBytesPerSecond');
    pos(g.d2hBytesPerSecond, 'gpu.d2hBytesPerSecond');
    if (g.gemm !== undefined) validateGemm(g.gemm, 'gpu.gemm', { obj, arr, pos, posInt, oneOf, bad });
  }
}

interface Checks {
  obj: (x: unknown, field: string) => Record<string, unknown>;
  arr: (x: unknown, field: string) => unknown[];
  pos: (x: unknown, field: string) => number;
  posInt: (x: unknown, field: string) => number;
  oneOf: (x: unknown, field: string, values: readonly string[]) => string;
  bad: (field: string, want: string) => never;
}

/** `complete`: the table must have a row for every GEMM_CASES pair (the CPU table, which gemmRate
 *  reads for any weights a model has: a missing row failed a plan later, naming no file). */
function validateGemm(x: unknown, field: string, c: Checks, complete = false): void {
  const g = c.obj(x, field);
  c.posInt(g.k, `${field}.k`);
  c.posInt(g.n, `${field}.n`);
  const ms = c.arr(g.ms, `${field}.ms`).map((m, i) => c.posInt(m, `${field}.ms[${i}]`));
  for (let i = 1; i < ms.length; i++) if (ms[i]! <= ms[i - 1]!) c.bad(`${field}.ms`, 'increasing');
  const seen = new Set<string>();
  c.arr(g.rows, `${field}.rows`).forEach((r, i) => {
    const f = `${field}.rows[${i}]`;
    const row = c.obj(r, f);
    const key = `${c.oneOf(row.format, `${f}.format`, FORMATS)}/${c.oneOf(row.mode, `${f}.mode`, MODES)}`;
    if (seen.has(key)) c.bad(f, `the only row for ${key}`);
    seen.add(key);
    const rates = c.arr(row.flopsPerSecond, `${f}.flopsPerSecond`);
    if (rates.length !== ms.length) c.bad(`${f}.flopsPerSecond`, `an array of ${ms.length} rates (one per entry of ${field}.ms)`);
    rates.forEach((v, j) => c.pos(v, `${f}.flopsPerSecond[${j}]`));
  });
  if (complete) {
    for (const { format, mode } of GEMM_CASES) if (!seen.has(`${format}/${mode}`)) c.bad(`${field}.rows`, `a list with a row for ${format}/${mode}`);
  }
}

export interface EnsureOptions {
  /** Default: defaultProfilePath(). */
  file?: string;
  /** Where a measurement puts its disk test file. Default: os.tmpdir(). */
  diskDir?: string;
  /** Measure quickly when there is no saved profile (default true). */
  quick?: boolean;
  threads?: number;
  /** Internal (tests): sizes of a measurement, see MeasureOptions.sizes. */
  sizes?: ProfileSizes;
  log?: (msg: string) => void;
}

/** Profiles measured in this process for a default file that could not be saved (an unwritable
 *  home): reused by later calls here instead of measuring again. */
const unsavedProfiles = new Map<string, HardwareProfile>();

/** The saved profile; if there is none, measures one (quick unless told otherwise), saves it and
 *  returns it. A malformed saved file is an error (ProfileFileError), not silently replaced. Runs
 *  measure one at a time under `FILE.lock`: a run that finds it held waits, then reuses the profile
 *  the holder saved. The default file (no `file`, no $TIERLM_PROFILE) is tierlm's own cache: when
 *  it cannot be saved the run warns and goes on with the profile it measured; a file named by
 *  either is checked before measuring, and failing to save it is an error naming it. */
export async function ensureProfile(opts: EnsureOptions = {}): Promise<HardwareProfile> {
  checkKeys(opts, ['file', 'diskDir', 'quick', 'threads', 'sizes', 'log'], 'ensureProfile() options');
  for (const k of ['file', 'diskDir'] as const) {
    if (opts[k] !== undefined && (typeof opts[k] !== 'string' || opts[k] === '')) throw new TypeError(`ensureProfile(): ${k} must be a non-empty string, got ${JSON.stringify(opts[k])}`);
  }
  if (opts.quick !== undefined && typeof opts.quick !== 'boolean') throw new TypeError(`ensureProfile(): quick must be true or false, got ${JSON.stringify(opts.quick)}`);
  if (opts.threads !== undefined) checkApiValue('threads', opts.threads);
  if (opts.log !== undefined && typeof opts.log !== 'function') throw new TypeError('ensureProfile(): log must be a function');
  const file = opts.file ?? defaultProfilePath();
  const quick = opts.quick ?? true;
  const log = opts.log ?? (() => {});
  const namedBy = opts.file !== undefined ? 'hardware profile' : process.env.TIERLM_PROFILE ? 'TIERLM_PROFILE' : null;
  // The default profile is tierlm's own cache: one an older version wrote is measured again, not
  // an error the user must clear by hand (a file the user names is theirs, and is checked).
  const staleVersion = (): number | null => {
    const v = opts.file === undefined ? savedVersion(file) : null;
    return v !== null && v !== PROFILE_VERSION ? v : null;
  };
  const reusable = (): HardwareProfile | null => unsavedProfiles.get(file) ?? (staleVersion() !== null ? null : loadProfile(file));

  const saved = reusable();
  if (saved) return saved;
  if (namedBy) checkProfileFile(file, namedBy);
  const lock = await lockProfileFile(file, namedBy, log);
  try {
    // The run we waited for has measured and saved it.
    const measured = lock ? reusable() : null;
    if (measured) return measured;
    const stale = staleVersion();
    if (stale !== null) log(`the hardware profile at ${file} is from another version of tierlm (version ${stale}); measuring again`);
    log(`${stale !== null ? 'measuring' : `no hardware profile at ${file}; measuring`} this machine${quick ? ' (quick)' : ''}, once, in a separate process ` +
      '(its memory is not part of this run, nor of its --ram limit)');
    // A child process: the measurement needs far more memory than a tight --ram allows (the quick
    // profile streams GEMM weights through 384 MiB of copies to defeat the last-level cache).
    // --expose-gc: it collects each phase's buffers before the next phase allocates its own. It
    // returns the profile and this process saves it, so a file that cannot be written costs the
    // save only, not the measurement.
    const { value: p, peakRssBytes } = await runInChild<HardwareProfile>(import.meta.url, 'profile-main',
      { quick, diskDir: opts.diskDir ?? os.tmpdir(), threads: opts.threads, sizes: opts.sizes }, log, ['--expose-gc']);
    validateProfile(p, file);
    const rss = `the measuring process peaked at ${formatSize(peakRssBytes)} RSS`;
    if (namedBy) {
      saveProfile(p, file);
    } else {
      try {
        writeProfileFile(p, file);
      } catch (e) {
        log(`warning: could not save the hardware profile to ${file}: ${(e as Error).message}; measured again next run`);
        unsavedProfiles.set(file, p);
        return p;
      }
    }
    log(`saved the hardware profile to ${file} (${rss})`);
    return p;
  } finally {
    lock?.release();
  }
}

/** Takes `FILE.lock` for measuring and saving FILE, waiting (and saying so) while another run
 *  holds it: two first runs measuring at once each slowed the other's timing, and the saved
 *  profile held rates 50-100× too low. The lock file stays (deleting it would let a third run lock
 *  a file the others no longer see). Null for the default file when its folder cannot hold the
 *  lock (an unwritable home): that run measures alone and warns when saving fails too. */
async function lockProfileFile(file: string, namedBy: string | null, log: (msg: string) => void): Promise<FileLock | null> {
  const lockFile = `${file}.lock`;
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    return await FileLock.acquire(lockFile, {
      onWait: () => log(`waiting for another run measuring this machine (it holds ${lockFile}); its profile is used once it is saved`),
    });
  } catch (e) {
    if (namedBy) throw new UserError(`${namedBy} ${file}: cannot take its lock file ${lockFile}: ${(e as Error).message}`);
    return null;
  }
}

// ---- rates for a cost model -----------------------------------------------------------------------

/** The table row that runs (format, mode): in bf16 mode float weights are packed as bf16. */
function gemmRow(table: GemmTable, format: WeightFormat, mode: ComputeMode): GemmRow {
  const f = mode === 'bf16' && (format === 'f32' || format === 'f16') ? 'bf16' : format;
  const row = table.rows.find((r) => r.format === f && r.mode === mode);
  if (!row) throw new RangeError(`the hardware profile has no GEMM rate for ${f} weights in ${mode} mode`);
  return row;
}

/** GEMM FLOP/s for weights in `format`, compute `mode` and m batch rows: interpolated linearly in
 *  log(rate) over log(m) between measured M (exact for rate ∝ m^a, as in the memory-bound
 *  regime), and clamped to the first / last measured M outside the table. */
export function gemmRate(profile: HardwareProfile, format: WeightFormat, mode: ComputeMode, m: number): number {
  if (!(m > 0) || !Number.isFinite(m)) throw new RangeError(`gemmRate: m must be a positive number, got ${m}`);
  const { ms } = profile.gemm;
  const r = gemmRow(profile.gemm, format, mode).flopsPerSecond;
  if (m <= ms[0]!) return r[0]!;
  const last = ms.length - 1;
  if (m >= ms[last]!) return r[last]!;
  let i = 1;
  while (ms[i]! < m) i++;
  if (ms[i] === m) return r[i]!;
  const t = Math.log(m / ms[i - 1]!) / Math.log(ms[i]! / ms[i - 1]!);
  return Math.exp(Math.log(r[i - 1]!) + t * (Math.log(r[i]!) - Math.log(r[i - 1]!)));
}

/** Decode attention: bytes of K+V cache read per second, at the largest cache measured for the dtype. */
export function attentionDecodeRate(profile: HardwareProfile, cacheDtype: CacheDType): number {
  const es = profile.attention.decode.filter((e) => e.cacheDtype === cacheDtype);
  if (es.length === 0) throw new RangeError(`the hardware profile has no decode attention rate for a ${cacheDtype} cache`);
  return es.reduce((a, b) => (b.bytes > a.bytes ? b : a)).bytesPerSecond;
}

/** Causal prefill attention FLOP/s. */
export function attentionPrefillRate(profile: HardwareProfile): number {
  return profile.attention.prefill.flopsPerSecond;
}

/** Sequential O_DIRECT read bytes per second. */
export function diskReadRate(profile: HardwareProfile): number {
  return profile.disk.readBytesPerSecond;
}

/** Sequential O_DIRECT write bytes per second (fsync included). */
export function diskWriteRate(profile: HardwareProfile): number {
  return profile.disk.writeBytesPerSecond;
}

/** RAM copy bytes per second. */
export function memcpyRate(profile: HardwareProfile): number {
  return profile.memory.copyBytesPerSecond;
}

/** The kernel choices of a saved profile of this machine (`tierlm profile`), or null: no profile
 *  or one without them (nothing to say), one measured on another CPU or instruction set, or a file
 *  that cannot be read; for these two `unused` says why, one line for the load's log (loading a
 *  model never fails on the profile; the defaults or the quick measurement run then, and a run
 *  whose profile was silently passed over ran slower with no word why). */
function savedKernels(file: string): { kernels: HardwareProfile['kernels'] | null; unused: string | null } {
  let p: HardwareProfile | null;
  try {
    p = loadProfile(file);
  } catch (e) {
    // (ProfileFileError's message names the file and the field, and says how to measure again)
    return { kernels: null, unused: `${(e as Error).message}; its kernel choices are not used` };
  }
  if (!p?.kernels) return { kernels: null, unused: null };
  const [cpu, isa] = [os.cpus()[0]?.model.trim() || 'unknown', isaInfo().active];
  if (p.machine.cpuModel !== cpu || p.machine.isa.active !== isa) {
    return {
      kernels: null,
      unused: `hardware profile ${file}: kernel choices not used (measured on ${p.machine.cpuModel}, isa ${p.machine.isa.active}; ` +
        `this process: ${cpu}, ${isa}); run \`tierlm profile\` here to measure them`,
    };
  }
  return { kernels: p.kernels, unused: null };
}

/** The bf16 GEMM kernel a saved profile of this machine chose, or null (savedKernels); why a
 *  profile's choice is not used goes to `log`. */
export function savedBf16Kernel(file = defaultProfilePath(), log?: (msg: string) => void): Bf16Kernel | null {
  const { kernels, unused } = savedKernels(file);
  if (unused) log?.(unused);
  return kernels?.bf16 ?? null;
}

/** Applies the GEMM blocking a saved profile of this machine chose, reading it once: which kernels'
 *  15-16-row products take one row block (gemmOnePassRows) and whose panel groups are widened
 *  once (gemmWidenPanels), each unless its environment variable (TIERLM_GEMM_ONE_PASS,
 *  TIERLM_GEMM_WIDEN) decides instead; each field: the kernels set, or null when the setting stays.
 *  Results do not depend on either, only speed. Why a profile's choices are not used goes to `log`. */
export function applySavedGemmBlocking(file = defaultProfilePath(), log?: (msg: string) => void):
  { onePassRows: GemmKernelKind[] | null; widenPanels: GemmKernelKind[] | null } {
  const { kernels: kn, unused } = savedKernels(file);
  if (unused) log?.(unused);
  return {
    // (an empty TIERLM_GEMM_ONE_PASS is unset, as native reads it; an empty TIERLM_GEMM_WIDEN is refused at load)
    onePassRows: !process.env.TIERLM_GEMM_ONE_PASS && kn?.onePassRows ? gemmOnePassRows(kn.onePassRows) : null,
    widenPanels: process.env.TIERLM_GEMM_WIDEN === undefined && kn?.widenPanels ? gemmWidenPanels(kn.widenPanels) : null,
  };
}

/** applySavedGemmBlocking's one-block choice (it applies the widening choice too). */
export function applySavedOnePassRows(file = defaultProfilePath()): GemmKernelKind[] | null {
  return applySavedGemmBlocking(file).onePassRows;
}
