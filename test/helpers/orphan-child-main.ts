// The child of test/helpers/orphan-parent.ts: says its pid, then blocks its main thread for
// `sleepMs` without returning to the event loop, as the profile's GEMM timing does.
import { childMain } from '../../src/util/child.js';

await childMain(async ({ sleepMs }: { sleepMs: number }) => {
  process.stderr.write(`pid ${process.pid}\n`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, sleepMs);
  return 'done';
});
