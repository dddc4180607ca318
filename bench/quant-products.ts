// Products with 4- and 8-bit weights (packed as a bf16-mode model packs them, or fp32 mode with
// --mode fp32) at a few row counts: median ms of 15-40 calls, GB/s of packed weights read and
// GFLOP/s. Batch-1 decode is the M = 1 row, batch-16 decode M = 16. To compare two builds, run it
// from each checkout in turn.
//
//   node --import tsx bench/quant-products.ts [--format q4|q8] [--mode bf16|fp32] [--n 4096,11008]
//       [--k 4096] [--m 1,2,4,8,16,32,64]
import { cpuBackend } from '../src/backend/index.js';
import { Tensor } from '../src/tensor/tensor.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const format = opt('--format', 'q4');
if (format !== 'q4' && format !== 'q8') throw new Error(`--format: q4 or q8, got ${format}`);
const mode = opt('--mode', 'bf16');
if (mode !== 'bf16' && mode !== 'fp32') throw new Error(`--mode: bf16 or fp32, got ${mode}`);
const k = Number(opt('--k', '4096'));
const cpu = cpuBackend();
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
for (const n of opt('--n', '4096,11008').split(',').map(Number)) {
  const w = new Tensor('f32', [n, k], Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 0.37) * 0.05));
  const packed = cpu.packWeight(w, mode, 'w', { quantize: format });
  const bytes = packed.data.byteLength;
  for (const m of opt('--m', '1,2,4,8,16,32,64').split(',').map(Number)) {
    const x = new Tensor('f32', [m, k], Float32Array.from({ length: m * k }, (_, i) => Math.cos(i * 0.11)));
    for (let i = 0; i < 3; i++) cpu.matmul(x, packed);
    const times: number[] = [];
    for (let i = 0; i < (m <= 4 ? 40 : 15); i++) {
      const t0 = performance.now();
      cpu.matmul(x, packed);
      times.push(performance.now() - t0);
    }
    const ms = med(times);
    console.log(`${format} ${mode} ${n}x${k} M=${m}: ${ms.toFixed(3)} ms, ${(bytes / ms / 1e6).toFixed(1)} GB/s of weights, ` +
      `${((2 * m * n * k) / ms / 1e6).toFixed(1)} GFLOP/s`);
  }
}
