// Loads the native addon (built from native/ by `npm install`). The same relative path works from
// src/ under tsx and from dist/ after tsc.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { checkKernelEnv } from './env.js';

export interface IsaInfo {
  active: string;
  detected: string;
  features: Record<string, boolean>;
  hardwareThreads: number;
  /** Whether AMX-BF16 tiles may run here: the CPU has them and the OS granted this process their
   *  state. Not an ISA level: one of bf16 mode's GEMM kernels (gemmBf16Kernel). */
  amx: boolean;
}

/** Raw exports of the addon; every call goes through a validated wrapper in this folder. */
export interface Addon {
  getThreads(): number;
  setThreads(n: number): void;
  poolSpin(micros?: number): number;
  getIsa(): IsaInfo;
  setIsa(isa: string): boolean;
  alignedBuffer(bytes: number, alignment?: number): ArrayBuffer;
  trackedBytes(): number;
  adviseHugePages(view: ArrayBufferView): number;
  // Kernel exports (gemm, rowwise, attention) are typed where they are wrapped.
  [name: string]: unknown;
}

let loaded: Addon | undefined;

export function addon(): Addon {
  if (loaded) return loaded;
  const here = path.dirname(fileURLToPath(import.meta.url));
  const file = path.resolve(here, '../../../build/Release/tierlm.node');
  let a: Addon;
  try {
    a = createRequire(import.meta.url)(file) as Addon;
  } catch (e) {
    throw new Error(`tierlm: cannot load the native addon at ${file} (run \`npm install\` to build it): ${(e as Error).message}`);
  }
  // Before any kernel reads its variable (each reads it once, on first use, and cannot report a bad
  // value); on a bad one `loaded` stays unset, so every later call refuses too.
  const isa = a.getIsa();
  const warnings = checkKernelEnv(process.env, isa.detected, isa.hardwareThreads, isa.amx);
  loaded = a;
  for (const w of warnings) process.emitWarning(w);
  return loaded;
}

/** A native function of the addon, typed by the caller. */
export function nativeFn<F>(name: string): F {
  const f = addon()[name];
  if (typeof f !== 'function') throw new Error(`tierlm: the native addon has no export '${name}' (rebuild with \`npm run build:native\`)`);
  return f as F;
}

const cached = new Map<string, (...args: unknown[]) => unknown>();

/** nativeFn for wrappers that take and return plain values, looked up once per name. */
export function cachedFn(name: string): (...args: unknown[]) => unknown {
  let f = cached.get(name);
  if (!f) cached.set(name, (f = nativeFn<(...args: unknown[]) => unknown>(name)));
  return f;
}
