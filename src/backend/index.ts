// Compute backends and process-wide compute settings.
import fs from 'node:fs';
import { Backend } from './backend.js';
import { addon, cachedFn, type IsaInfo } from './cpu/addon.js';
import { cpuKernels } from './cpu/index.js';
import { referenceKernels } from './reference/index.js';

export { type AnyWeight, Backend, type LinearEpilogue, PackedWeight, RowSplitWeight, weightFormatFor } from './backend.js';
export type { CacheDType, ComputeMode, Kernels, WeightFormat } from './kernels.js';

let cpu: Backend | undefined;
let reference: Backend | undefined;

/** The native CPU backend (loads the addon on first use). */
export function cpuBackend(): Backend {
  addon();
  return (cpu ??= new Backend(cpuKernels));
}

/** The plain TypeScript reference backend. */
export function referenceBackend(): Backend {
  return (reference ??= new Backend(referenceKernels));
}

/** Threads the native kernels use (the persistent pool's size, the caller included). */
export function getThreads(): number {
  return addon().getThreads();
}

export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`threads must be a positive integer, got ${n}`);
  addon().setThreads(n);
}

/** How long an idle compute thread spins before it sleeps, in microseconds (default 1000;
 *  `TIERLM_POOL_SPIN_US` at start-up). Pass a number to change it (0: sleep at once); returns the
 *  setting. Results never depend on it: a sleeping thread's wake-up costs time between kernels, a
 *  spinning one holds its core. */
export function poolSpin(micros?: number): number {
  return addon().poolSpin(micros);
}

export type Isa = 'scalar' | 'avx2' | 'avx512' | 'avx512bf16';

/** The instruction set native kernels use, and what the CPU supports. */
export function isaInfo(): IsaInfo {
  return addon().getIsa();
}

/** Lowers (or restores) the instruction set native kernels use; false when the CPU lacks it. */
export function setIsa(isa: Isa): boolean {
  return addon().setIsa(isa);
}

/** The index of the first largest value of `x` (NaN is never larger; a NaN first value gives 0),
 *  natively with AVX-512: greedy sampling scans a vocabulary of 32–256 thousand logits a row,
 *  ~50 µs in JavaScript. `x` must not be empty. */
export function argmaxF32(x: Float32Array): number {
  return (cachedFn('argmax') as (x: Float32Array) => number)(x);
}

/** Returns memory that malloc holds free to the OS (glibc: malloc_trim over every arena). Call it
 *  after work that leaves freed native memory behind (the planner's WebAssembly solver is compiled
 *  on V8's background threads, whose arenas otherwise keep tens of MB resident for the whole run). */
export function releaseFreedMemory(): boolean {
  return (addon().trimMemory as () => boolean)();
}

/** Memory held by native aligned buffers, in bytes. */
export function nativeBytes(): number {
  return addon().trackedBytes();
}

/** Reads every byte of `bytes` once, split between the compute threads; returns a checksum (for
 *  timing RAM read bandwidth: the rate a batch-1 decode step, which only reads weights, is bound by). */
export function readMemoryPass(bytes: Uint8Array): number {
  return (addon().readPass as (u8: Uint8Array) => number)(bytes);
}

/** Where packed weights live, for `tierlm profile` to say: large ones are advised onto 2 MiB pages
 *  (native/core/aligned.h), which only a kernel with transparent huge pages on grants. null where
 *  there is nothing to tell (no Linux transparent huge pages). */
export function hugePageStatus(): string | null {
  if (process.env.TIERLM_HUGE_PAGES === '0') return 'packed weights on 4 KiB pages (TIERLM_HUGE_PAGES=0)';
  let mode: string | undefined;
  try {
    mode = /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1];
  } catch {
    return null;
  }
  if (mode === 'never') {
    return 'packed weights on 4 KiB pages: transparent huge pages are off in this kernel (as root, ' +
      '`echo madvise > /sys/kernel/mm/transparent_hugepage/enabled` turns them on; a batch-1 decode step ran 5-6% faster on them)';
  }
  return mode ? `packed weights on 2 MiB pages where the kernel has them free (transparent huge pages: ${mode})` : null;
}
