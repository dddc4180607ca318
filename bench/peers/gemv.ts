// Batch-1 decode's kernels against the RAM read rate (issue #14 item 3), run by hand:
//
//   node --import tsx bench/peers/gemv.ts [--json] [--formats q4,bf16]
//
// RAM read bandwidth (every compute thread reading its slice of 1 GiB once), then the matmul of
// one row (M=1) by the Llama-7B layer shapes and LM head, each weight's copies rotated over ~1 GiB
// so that every call reads RAM, in 4-bit (bf16 mode's VNNI path) and bf16 (both bf16 kernels).
// Rate = packed weight bytes / seconds: the fraction of RAM bandwidth a decode step can reach
// (each GEMV pass paired with a RAM read pass run just before it).
import os from 'node:os';
import { cpuBackend, getThreads, Tensor } from '../../src/index.js';
import { readMemoryPass } from '../../src/backend/index.js';
import { gemmBf16Dot } from '../../src/backend/cpu/gemm.js';
import { fromFloat32 } from '../../src/tensor/dtype.js';
import { bestOf, bestOfEach } from '../timing.js';

const json = process.argv.includes('--json');
const GiB = 2 ** 30;
const best = (fn: () => void, reps: number) => bestOf(reps, fn);
const out: Record<string, number> = {};
const say = (k: string, v: number, unit: string) => {
  out[k] = +v.toFixed(2);
  if (!json) console.log(`${k}: ${v.toFixed(2)} ${unit}`);
};

const big = cpuBackend().kernels.packedBuffer(GiB);  // (as the weights are allocated)
for (let i = 0; i < big.length; i += 4096) big[i] = i & 255;
const readBw = GiB / best(() => void readMemoryPass(big), 5) / 1e9;
say('ram_read_GBps', readBw, 'GB/s');

const cpu = cpuBackend();
const shapes: [string, number, number][] = [['qkvo 4096x4096', 4096, 4096], ['up/gate 11008x4096', 11008, 4096], ['down 4096x11008', 4096, 11008], ['lm_head 32000x4096', 32000, 4096]];
const x = new Tensor('f32', [1, 11008], Float32Array.from({ length: 11008 }, (_, i) => Math.sin(i)));
const fmtArg = process.argv.indexOf('--formats');
const formats = (fmtArg > 0 ? process.argv[fmtArg + 1]!.split(',') : ['q4', 'bf16']) as ('q4' | 'bf16')[];
for (const fmt of formats) {
  for (const [name, n, k] of shapes) {
    const data = new Uint16Array(n * k);
    data.set(fromFloat32('bf16', Float32Array.from({ length: 4099 }, (_, i) => ((i * 7919) % 2003) / 2003 - 0.5)));
    for (let len = 4099; len < data.length; len *= 2) data.copyWithin(len, 0, Math.min(len, data.length - len));
    const src = new Tensor('bf16', [n, k], data);
    const w = cpu.packWeight(src, 'bf16', 'w', fmt === 'q4' ? { quantize: 'q4' } : undefined);
    const copies = [w, ...Array.from({ length: Math.ceil(GiB / w.data.byteLength) - 1 }, () => cpu.packedWeight(w.format, w.mode, n, k, w.data.slice(), 'w'))];
    const xr = new Tensor('f32', [1, k], x.data.subarray(0, k));
    const y = Tensor.zeros('f32', [1, n]);
    const kernels = fmt === 'bf16' ? [false, true] : [null];
    for (const dot of kernels) {
      if (dot !== null) gemmBf16Dot(dot);
      let next = 0;
      const pass = () => { for (let i = 0; i < copies.length; i++) cpu.matmul(xr, copies[next++ % copies.length]!, null, y); };
      // RAM read and GEMV passes in turn: the machine's memory rate drifts with other load (its
      // read pass ranged 27-51 GB/s within minutes), so the fraction is the median over pairs
      // measured next to each other, and the GB/s the best pass.
      pass();
      const pairs: { gemv: number; read: number }[] = [];
      for (let r = 0; r < 7; r++) {
        const [read, gemv] = bestOfEach(1, [() => void readMemoryPass(big), pass]) as [number, number];
        pairs.push({ read: GiB / read / 1e9, gemv: (w.data.byteLength * copies.length) / gemv / 1e9 });
      }
      const ratios = pairs.map((q) => q.gemv / q.read).sort((a, b) => a - b);
      const gbs = Math.max(...pairs.map((q) => q.gemv));
      const label = `${fmt}${dot === null ? '' : dot ? '-dot' : '-fma'} ${name}`;
      say(label, gbs, `GB/s best (${(w.data.byteLength / gbs / 1e6).toFixed(3)} ms); median of paired GEMV / RAM read: ${(ratios[3]! * 100).toFixed(0)}%`);
      out[`${label} paired_fraction`] = +ratios[3]!.toFixed(3);
    }
  }
}
if (json) console.log(JSON.stringify({ bench: 'gemv', cpu: os.cpus()[0]?.model, threads: getThreads(), ...out }));
