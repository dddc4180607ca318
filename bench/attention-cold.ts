// Decode attention with its KV cache evicted (issue #14): in a decode step the weight stream
// evicts the cache between two layers' attention calls, so each call reads its cache from RAM.
// Paired A/B of the in-stream prefetch (attnPrefetch) in one process: per pair, one call with the
// prefetch off and one with it on (order alternating), each after reading 64 MB; the median of
// the paired on/off ratios. Also the warm time (the same call repeated, nothing read in between).
//
//   node --import tsx bench/attention-cold.ts [--pairs 15] [--bytes 1024,2048] [--dtypes f32,f16]
import { readMemoryPass, type CacheDType } from '../src/backend/index.js';
import { cpuKernels } from '../src/backend/cpu/index.js';
import { attnPrefetch as prefetch } from '../src/backend/cpu/attention.js';
import { q4RecordBytes } from '../src/backend/kernels.js';
import { fillPattern } from './attention.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const pairs = Number(opt('--pairs', '15'));
const distances = opt('--bytes', '2048').split(',').map(Number);
const dtypes = opt('--dtypes', 'f32,f16').split(',') as CacheDType[];
const startBytes = prefetch();
const evict = new Uint8Array(64 << 20).fill(1);

// [name, b, heads, headDim, len, cap]: one layer of the two decode steps of docs/benchmarks.md.
const shapes: [string, number, number, number, number, number][] = [
  ['llama-7b layer, batch 1', 1, 32, 128, 80, 128],
  ['opt-1.3b layer, batch 32', 32, 32, 64, 70, 80],
];
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;

for (const dtype of dtypes) {
  for (const [name, b, h, d, len, cap] of shapes) {
    const m = b * h * cap * (dtype === 'q4' ? q4RecordBytes(d) : d);
    const alloc = () => (dtype === 'f32' ? new Float32Array(m) : dtype === 'f16' ? new Uint16Array(m) : new Uint8Array(m));
    const kc = alloc(), vc = alloc();
    fillPattern(kc, dtype, d);
    fillPattern(vc, dtype, d);
    const q = new Float32Array(b * h * d).map((_, i) => ((i * 7) % 13) / 13 - 0.5);
    const out = new Float32Array(b * h * d);
    const lens = new Int32Array(b).fill(len);
    const call = () => cpuKernels.attentionDecode(q, kc, vc, dtype, b, h, h, d, cap, lens, 1 / Math.sqrt(d), out);
    const timed = (bytes: number, cold: boolean) => {
      prefetch(bytes);
      if (cold) readMemoryPass(evict);
      else call();
      const t0 = process.hrtime.bigint();
      call();
      return Number(process.hrtime.bigint() - t0) / 1e3;
    };
    const readMB = (2 * b * h * len * (dtype === 'q4' ? q4RecordBytes(d) : d * (dtype === 'f32' ? 4 : 2))) / 1e6;
    for (const bytes of distances) {
      for (const cold of [true, false]) {
        const off: number[] = [], on: number[] = [], ratio: number[] = [];
        for (let i = 0; i < pairs; i++) {
          let a: number, c: number;
          if (i % 2 === 0) { a = timed(0, cold); c = timed(bytes, cold); } else { c = timed(bytes, cold); a = timed(0, cold); }
          off.push(a);
          on.push(c);
          ratio.push(c / a);
        }
        console.log(`${dtype} ${name} (${readMB.toFixed(1)} MB), ${cold ? 'cold' : 'warm'}, prefetch ${bytes} B: ` +
          `median ${median(off).toFixed(0)} → ${median(on).toFixed(0)} µs ` +
          `(${(readMB / median(off) * 1e3).toFixed(1)} → ${(readMB / median(on) * 1e3).toFixed(1)} GB/s), median on/off ${median(ratio).toFixed(3)}`);
      }
    }
  }
}
prefetch(startBytes);
