// A full collection before garbage takes the process past its RAM limit. V8 starts a full
// collection by its own heap's growth, not by the process's RSS, and --max-old-space-size cannot
// be set once the process runs: dead strings from long lines (a 1 MB JSON key is interned in the
// old generation), result lines of long prompts scored with 20 alternatives a token, and error
// lines piled up until the heap held ~470 MB of garbage, taking `tierlm batch --ram 48MiB` to
// 593 MiB against the 176 it allows. With a ceiling set (the CLI sets one from --ram), the places
// that read or write large amounts of text call relieve(): when RSS is past the ceiling, a full
// collection runs. Below it, relieve() costs one read of RSS.

import v8 from 'node:v8';
import vm from 'node:vm';

/** RSS past which relieve() collects; Infinity: no limit was set. */
let ceiling = Infinity;
/** RSS after the last collection: while live data holds RSS past the ceiling, the next waits
 *  until RSS has grown by STEP_BYTES, so that the collections never run back to back. */
let after = 0;
const STEP_BYTES = 16 * 2 ** 20;
/** A line at least this long leaves its text (and a JSON key of it, which V8 interns) in the
 *  large-object space; LONG_READ_BYTES of such lines read make relieve() collect whatever RSS
 *  says: their dead copies fragment the process's memory before RSS shows them, and RSS stayed
 *  ~100 MB above the heap after collections that came only at the ceiling (400 batch lines
 *  naming a 1 MB key each: 240 MiB against 176; collected every 8 MiB of such lines, 137). */
const LONG_LINE_BYTES = 64 * 1024;
const LONG_READ_BYTES = 8 * 2 ** 20;
let longRead = 0;
let collections = 0;
let collect: (() => void) | null | undefined;

/** Sets the ceiling: RSS past `bytes` makes relieve() collect. */
export function setRssCeiling(bytes: number): void {
  ceiling = bytes;
  after = 0;
  longRead = 0;
}

/** Collects if RSS is past the ceiling, or long lines of LONG_READ_BYTES were read since the
 *  last collection (see the file's comment); `lineBytes`: a line just read. */
export function relieve(lineBytes = 0): void {
  if (ceiling === Infinity) return;
  if (lineBytes >= LONG_LINE_BYTES) longRead += lineBytes;
  const rss = process.memoryUsage.rss();
  if (longRead < LONG_READ_BYTES && (rss < ceiling || rss < after + STEP_BYTES)) return;
  const gc = collector();
  if (!gc) return;
  gc();
  collections++;
  longRead = 0;
  after = process.memoryUsage.rss();
}

/** Collections relieve() has run (for tests and diagnostics). */
export function reliefCollections(): number {
  return collections;
}

/** V8's full collection: `global.gc` where node runs with --expose-gc, otherwise the same function
 *  exposed now (the flag adds the global only to contexts made after it is set, hence the new
 *  context); null where neither works. */
function collector(): (() => void) | null {
  if (collect !== undefined) return collect;
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return (collect = g);
  try {
    v8.setFlagsFromString('--expose-gc');
    const f = vm.runInNewContext('gc') as unknown;
    collect = typeof f === 'function' ? (f as () => void) : null;
  } catch {
    collect = null;
  }
  return collect;
}
