// Decode attention on whole layers of a few models' shapes (MHA and GQA, f16 and f32 caches), cold
// (64 MB read before each call, as a decode step's weight stream evicts the cache) and warm: median µs
// of 15 calls and GB/s of cache read. To compare two builds, run it from each checkout in turn.
//
//   node --import tsx bench/attention-layers.ts [--only llama3] [--dtypes f16,f32]
import { cpuKernels } from '../src/backend/cpu/index.js';
import { readMemoryPass } from '../src/backend/index.js';
import { fillPattern } from './attention.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const evict = new Uint8Array(64 << 20).fill(1);
// [name, b, hq, hkv, d, len, cap]
const shapes: [string, number, number, number, number, number, number][] = [
  ['opt-1.3b b32 len70', 32, 32, 32, 64, 70, 80],
  ['llama3-8b b8 len1024 (GQA 32/8)', 8, 32, 8, 128, 1024, 1040],
  ['llama-7b b4 len1024', 4, 32, 32, 128, 1024, 1040],
  ['llama-3.2-1b b8 len1040 (GQA 32/8, d 64)', 8, 32, 8, 64, 1040, 1041],
];
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
for (const dtype of opt('--dtypes', 'f16,f32').split(',') as ('f16' | 'f32')[]) {
  for (const [name, b, hq, hkv, d, len, cap] of shapes.filter((s) => s[0].includes(opt('--only', '')))) {
    const m = b * hkv * cap * d;
    const kc = dtype === 'f32' ? new Float32Array(m) : new Uint16Array(m), vc = dtype === 'f32' ? new Float32Array(m) : new Uint16Array(m);
    fillPattern(kc, dtype, d); fillPattern(vc, dtype, d);
    const q = new Float32Array(b * hq * d).map((_, i) => ((i * 7) % 13) / 13 - 0.5);
    const out = new Float32Array(b * hq * d);
    const lens = new Int32Array(b).fill(len);
    const call = () => cpuKernels.attentionDecode(q, kc, vc, dtype, b, hq, hkv, d, cap, lens, 1 / Math.sqrt(d), out);
    const bytes = 2 * b * hkv * len * d * (dtype === 'f32' ? 4 : 2);
    const res: string[] = [];
    for (const cold of [true, false]) {
      const t: number[] = [];
      call();
      for (let i = 0; i < 15; i++) {
        if (cold) readMemoryPass(evict);
        const t0 = performance.now();
        call();
        t.push((performance.now() - t0) * 1e3);
      }
      const us = med(t);
      res.push(`${cold ? 'cold' : 'warm'} ${us.toFixed(0)} µs ${(bytes / us / 1e3).toFixed(1)} GB/s`);
    }
    console.log(`${dtype} ${name.padEnd(32)} ${res.join(', ')}`);
  }
}
