// Timing helpers shared by the training benchmarks (bench/adamw.ts, bench/grad.ts).
import { readFileSync } from 'node:fs';

/** Best wall time (seconds) of fn over `reps` runs after one warm-up. */
export function bestOf(reps: number, fn: () => void): number {
  fn();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    fn();
    best = Math.min(best, performance.now() - t);
  }
  return best / 1000;
}

/** Best wall time (seconds) of each fn, run in turn `reps` times after a warm-up: on a shared
 *  machine, interleaving exposes every fn to the same load, so their ratios stay meaningful. */
export function bestOfEach(reps: number, fns: (() => void)[]): number[] {
  for (const fn of fns) fn();
  const best = fns.map(() => Infinity);
  for (let i = 0; i < reps; i++) {
    fns.forEach((fn, j) => {
      const t = performance.now();
      fn();
      best[j] = Math.min(best[j]!, performance.now() - t);
    });
  }
  return best.map((b) => b / 1000);
}

/** The CPU's model name from /proc/cpuinfo ('unknown' elsewhere). */
export function cpuModel(): string {
  try {
    return /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The number after `--name` on the command line, or `def`. */
export function numberArg(name: string, def: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}
