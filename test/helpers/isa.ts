// Runs a check at every instruction-set level this CPU has, at 1 and 2 threads, and restores the
// process-wide settings afterwards (for the training-kernel tests).
import { afterAll, expect } from 'vitest';
import { type Isa, getThreads, isaInfo, setIsa, setThreads } from '../../src/backend/index.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
export const ISAS: Isa[] = ALL.slice(0, ALL.indexOf(detected) + 1);

/** Registers the restore hook; call once at the top of a test file. */
export function restoreSettingsAfterAll(): void {
  const threads = getThreads();
  afterAll(() => {
    setIsa(detected);
    setThreads(threads);
  });
}

/** Calls fn(label) with each ISA level and thread count set in turn. */
export function atEveryIsa(fn: (label: string) => void): void {
  for (const isa of ISAS) {
    for (const threads of [1, 2]) {
      expect(setIsa(isa)).toBe(true);
      setThreads(threads);
      fn(`${isa} ${threads}t`);
    }
  }
  setIsa(detected);
}
