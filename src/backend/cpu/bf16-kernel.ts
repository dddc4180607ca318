// bf16 compute has two GEMM kernels: bf16 weights widened for fp32 FMAs (the native default) and
// AVX512_BF16's vdpbf16ps dot products. Which is faster depends on the CPU: on one Xeon vdpbf16ps
// ran at half the FMA rate (docs/benchmarks.md, Kernels), on the AMD EPYC (Zen 4) of 2026-11-29 at
// 1.9× it (385 vs 205 GFLOP/s on 2 threads). So a bf16 run measures both on one of the model's
// layer shapes and keeps the faster, for generation and training alike. The two kernels round
// differently, so the choice must not change between runs that are meant to agree: two models in
// one process (a run and its reference), a run and its rerun, a run with its state offloaded and
// the same run in RAM. A measurement alone can flip where the two rates are close, so the first
// measurement on a machine is kept in a small cache file that every later process reads, and the
// vdpbf16ps kernel is taken only when clearly faster (its rounding of activations to bf16 costs
// accuracy; a tie goes to the FMA kernel). A resumed training run passes the kernel its checkpoint
// saved and `tierlm profile` saves one; TIERLM_BF16_KERNEL=fma|dot|amx (or the older
// TIERLM_BF16_DOT=0|1) decides instead. AMX is taken only after its results on a product matched
// vdpbf16ps's (the two round alike), so a faulty tile path on some CPU or OS costs speed, not
// results.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type PackedWeight, cpuBackend, isaInfo } from '../index.js';
import { gemmBf16Kernel } from './gemm.js';
import { fromFloat32 } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import { writeFileDurable } from '../../util/atomic.js';

export type Bf16Kernel = 'fma' | 'dot' | 'amx';
const BF16_KERNELS: readonly Bf16Kernel[] = ['fma', 'dot', 'amx'];

/** Whether `k` names a bf16 kernel (a value read from a file or the environment). */
export function isBf16Kernel(k: unknown): k is Bf16Kernel {
  return typeof k === 'string' && (BF16_KERNELS as readonly string[]).includes(k);
}

/** A layer's GEMM shape: rows × k inputs → n outputs. */
export interface GemmShape {
  rows: number;
  n: number;
  k: number;
}

/** How much faster vdpbf16ps must measure to be chosen: below it the rates are too close for one
 *  measurement to tell, and the FMA kernel, which keeps activations in f32, is the better default. */
export const DOT_MARGIN = 0.9;

let measured: Bf16Kernel | null = null;

/** Where selectBf16Kernel's `saved` choice came from, for the note when it cannot run here, and
 *  where the note goes (default: stderr). */
export interface Bf16KernelSource {
  savedFrom?: string;
  log?: (msg: string) => void;
}

/** Sets the bf16 GEMM kernel and returns the one that runs: `saved` (a checkpoint's) when given,
 *  else the environment's, else `profile` (the machine's saved profile's), else this machine's
 *  kept measurement (measured on `shape` and kept when there is none yet; once per process). A
 *  saved, profiled or kept kernel this process cannot run (runnableBf16Kernel) is replaced by the
 *  nearest that can, with a note to `log`: 'amx' by 'dot', which rounds as AMX does, and 'dot' by
 *  'fma', which does not (a resumed run continues, but not bit for bit as on the machine that
 *  saved it). The return value is what a checkpoint must record. */
export function selectBf16Kernel(shape: GemmShape, saved: Bf16Kernel | null = null, profile: Bf16Kernel | null = null,
  source: Bf16KernelSource = {}): Bf16Kernel {
  const choice: Bf16Kernel = saved ?? forcedBf16Kernel() ?? profile ?? (measured ??= keptBf16Kernel(shape, kernelCachePath()));
  const runs = runnableBf16Kernel(choice);
  if (runs !== choice) {  // (never the environment's: forcedBf16Kernel refuses one that cannot run)
    const from = saved ? source.savedFrom ?? 'the saved choice' : profile ? 'the hardware profile (kernels.bf16)' : `the kernel cache ${kernelCachePath()}`;
    const rounding = runs === 'dot' ? 'which rounds as AMX does' : 'which rounds differently, so results will not match bit for bit those computed with it';
    (source.log ?? ((m: string) => process.stderr.write(`tierlm: ${m}\n`)))(
      `${from} names bf16 kernel '${choice}', which cannot run here (${whyNot(choice)}); running '${runs}' instead, ${rounding}`);
  }
  gemmBf16Kernel(runs);
  return runs;
}

/** `k`, or the nearest kernel this process can run where it cannot: AMX needs its tiles
 *  (isaInfo().amx) and, as vdpbf16ps, AVX512_BF16 at the active ISA level; without them native
 *  would run the FMA kernel while the setting still named `k`. */
export function runnableBf16Kernel(k: Bf16Kernel): Bf16Kernel {
  const dotRuns = isaInfo().active === 'avx512bf16';
  if (k === 'amx' && !(isaInfo().amx && dotRuns)) k = 'dot';
  return k === 'dot' && !dotRuns ? 'fma' : k;
}

function whyNot(k: Bf16Kernel): string {
  if (k === 'amx' && !isaInfo().amx) return 'this CPU or OS does not let the process run AMX-BF16 tiles, isaInfo().amx is false';
  return `${k === 'dot' ? 'vdpbf16ps' : 'AMX'} needs AVX512_BF16 and this process runs at ${isaInfo().active}, isaInfo().active`;
}

/** The kernel the environment names: TIERLM_BF16_KERNEL=fma|dot|amx, else TIERLM_BF16_DOT=1|0;
 *  null when neither is set. A kernel this process cannot run is refused (as the addon's loader
 *  refuses it, env.ts), not run as another. */
export function forcedBf16Kernel(): Bf16Kernel | null {
  const named = process.env.TIERLM_BF16_KERNEL;
  if (named !== undefined && named !== '') {
    if (!isBf16Kernel(named)) throw new RangeError(`TIERLM_BF16_KERNEL must be one of ${BF16_KERNELS.join(', ')}, got ${JSON.stringify(named)}`);
    if (runnableBf16Kernel(named) !== named) throw new RangeError(`TIERLM_BF16_KERNEL=${named}: ${whyNot(named)}; accepted here: ${acceptedHere()}`);
    return named;
  }
  const env = process.env.TIERLM_BF16_DOT;
  if (env === '1' && runnableBf16Kernel('dot') !== 'dot') throw new RangeError(`TIERLM_BF16_DOT=1: ${whyNot('dot')}; accepted here: 0`);
  return env === '0' || env === '1' ? (env === '1' ? 'dot' : 'fma') : null;
}

function acceptedHere(): string {
  return BF16_KERNELS.filter((k) => runnableBf16Kernel(k) === k).join(', ');
}

/** Where measured kernel choices are kept: TIERLM_KERNEL_CACHE, else ~/.cache/tierlm/kernels.json. */
export function kernelCachePath(): string {
  return path.resolve(process.env.TIERLM_KERNEL_CACHE || path.join(os.homedir(), '.cache', 'tierlm', 'kernels.json'));
}

/** The machine a kept choice belongs to: another CPU or instruction set measures anew. */
export function machineKey(): string {
  return `${os.cpus()[0]?.model.trim() || 'unknown'} | ${isaInfo().active}`;
}

/** The kernel `file` keeps for this machine; when it has none (or is unreadable), measures on
 *  `shape` and keeps the result there (atomically; a file that cannot be written only costs the
 *  next process a measurement). */
export function keptBf16Kernel(shape: GemmShape, file: string): Bf16Kernel {
  // { "<cpu model> | <isa>": { bf16, dot_ms, fma_ms, measured } }
  let kept: Record<string, Record<string, unknown>> = {};
  try {
    const j: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (j && typeof j === 'object' && !Array.isArray(j)) kept = j as typeof kept;
  } catch {
    // None yet, or not ours to read: measure.
  }
  const key = machineKey();
  const k = kept[key]?.bf16;
  // (a kept 'amx' where AMX is not usable now, e.g. an older kernel: measured anew)
  if (isBf16Kernel(k) && (k !== 'amx' || isaInfo().amx)) return k;
  const t = timeKernels(shape);
  const choice = fasterBf16Kernel(t);
  kept[key] = {
    bf16: choice,
    ...(Number.isFinite(t.dot) ? { dot_ms: t.dot, fma_ms: t.fma } : {}),
    ...(t.amx !== undefined ? { amx_ms: t.amx } : {}),
    ...(t.amxMismatch !== undefined ? { amx_mismatch: t.amxMismatch } : {}),
    measured: new Date().toISOString(),
  };
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    writeFileDurable(file, JSON.stringify(kept, null, 2) + '\n');
  } catch {
    // Read-only home: the choice still holds for this process.
  }
  return choice;
}

/** The fastest kernel, where vdpbf16ps or AMX (both round x to bf16) must take under DOT_MARGIN
 *  of the FMA kernel's time to be chosen over it; AMX (absent: not timed) also under vdpbf16ps's. */
export function fasterBf16Kernel(ms: { dot: number; fma: number; amx?: number }): Bf16Kernel {
  let best: Bf16Kernel = 'fma', t = ms.fma;
  if (ms.dot < DOT_MARGIN * ms.fma) [best, t] = ['dot', ms.dot];
  if (ms.amx !== undefined && ms.amx < DOT_MARGIN * ms.fma && ms.amx < t) best = 'amx';
  return best;
}

/** How far apart AMX's results may lie from vdpbf16ps's (normalised error: the two take the same
 *  bf16 products and differ only in the order and rounding of their sums). */
const AMX_AGREEMENT = 1e-3;

/** Where AMX runs (isaInfo().amx): AMX's normalised difference from vdpbf16ps on x · wᵀ (bf16
 *  weights), or null where it is within AMX_AGREEMENT. A tile path that some CPU or OS gets wrong
 *  must never be chosen for its speed. Leaves the bf16 kernel setting as it found it. */
export function amxDisagreement(x: Tensor<'f32'>, w: PackedWeight): number | null {
  const b = cpuBackend();
  const before = gemmBf16Kernel();
  try {
    gemmBf16Kernel('dot');
    const dot = b.matmul(x, w, null).data;
    gemmBf16Kernel('amx');
    const d = normalisedDifference(b.matmul(x, w, null).data, dot);
    return d <= AMX_AGREEMENT ? null : d;
  } finally {
    gemmBf16Kernel(before);
  }
}

/** The largest difference between `a` and `b` over the largest magnitude of `b` (NaN when either
 *  holds a NaN). */
function normalisedDifference(a: Float32Array, b: Float32Array): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
    if (Number.isNaN(a[i]!) || Number.isNaN(b[i]!)) return NaN;
  }
  return diff / (scale || 1);
}

/** Best of several calls of each kernel, in ms (vdpbf16ps: Infinity where the CPU lacks it; AMX:
 *  absent where it cannot run, Infinity where its results did not match vdpbf16ps's, with the
 *  difference in amxMismatch). */
function timeKernels(shape: GemmShape): { dot: number; fma: number; amx?: number; amxMismatch?: number } {
  if (isaInfo().active !== 'avx512bf16') return { dot: Infinity, fma: 0 };
  const b = cpuBackend();
  // Capped (at most 4 MiB of weights): the rates are the CPU's, and a run under a tight --ram
  // has no room for a whole large layer beside it.
  const [n, k] = [Math.min(shape.n, 2048), Math.min(shape.k, 1024)];
  const m = Math.max(1, Math.min(shape.rows, 256));
  const w = b.packWeight(new Tensor('bf16', [n, k], fromFloat32('bf16', Float32Array.from({ length: n * k }, (_, i) => ((i * 7919) % 2003) / 2003 - 0.5))), 'bf16');
  const x = new Tensor('f32', [m, k], Float32Array.from({ length: m * k }, (_, i) => ((i * 104729) % 1009) / 1009 - 0.5));
  const out = Tensor.zeros('f32', [m, n]);
  const before = gemmBf16Kernel();
  const time = (kernel: Bf16Kernel) => {
    gemmBf16Kernel(kernel);
    b.matmul(x, w, null, out);
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      b.matmul(x, w, null, out);
      best = Math.min(best, performance.now() - t);
    }
    return best;
  };
  try {
    const amxMismatch = isaInfo().amx ? amxDisagreement(x, w) ?? undefined : undefined;
    const withAmx = isaInfo().amx && amxMismatch === undefined;
    // Interleaved, so that a burst of load on a shared machine hits each.
    const [fma1, dot1, amx1, fma2, dot2, amx2] = [time('fma'), time('dot'), withAmx ? time('amx') : Infinity,
      time('fma'), time('dot'), withAmx ? time('amx') : Infinity];
    return {
      dot: Math.min(dot1, dot2), fma: Math.min(fma1, fma2),
      ...(isaInfo().amx ? { amx: Math.min(amx1, amx2) } : {}),
      ...(amxMismatch !== undefined ? { amxMismatch } : {}),
    };
  } finally {
    gemmBf16Kernel(before);
  }
}
