// Decode attention throughput: GB/s of K+V cache read per second.
//   node --import tsx bench/attention.ts          a table
//   node --import tsx bench/attention.ts --json   one JSON object per line
import { fileURLToPath } from 'node:url';
import { getThreads, setThreads, type CacheDType } from '../src/backend/index.js';
import { cpuKernels } from '../src/backend/cpu/index.js';

export interface AttentionDecodeRecord {
  op: 'attention_decode';
  dtype: CacheDType;
  b: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  len: number;
  threads: number;
  gbps: number;
}

export interface BenchAttentionOptions {
  batches?: number[];
  lens?: number[];
  /** [query heads, key/value heads] */
  heads?: [number, number][];
  headDim?: number;
  dtypes?: CacheDType[];
  threads?: number[];
  /** Minimum seconds of timed calls per configuration. */
  minSeconds?: number;
}

function fillPattern(a: Float32Array | Uint16Array, dtype: CacheDType): void {
  // Cheap deterministic values in [-1, 1); f16 bit patterns of small numbers.
  if (dtype === 'f32') {
    for (let i = 0; i < a.length; i++) a[i] = ((i * 2654435761) % 2000) / 1000 - 1;
  } else {
    for (let i = 0; i < a.length; i++) a[i] = 0x3000 + ((i * 2654435761) % 0x0c00) + ((i & 1) << 15);
  }
}

export function benchAttentionDecode(opts: BenchAttentionOptions = {}): AttentionDecodeRecord[] {
  const batches = opts.batches ?? [1, 8, 32];
  const lens = opts.lens ?? [512, 2048];
  const headsList = opts.heads ?? [[32, 32], [32, 8]];
  const d = opts.headDim ?? 128;
  const dtypes = opts.dtypes ?? ['f32', 'f16'];
  const threadsList = opts.threads ?? [1, 2];
  const minSeconds = opts.minSeconds ?? 0.25;
  const startThreads = getThreads();
  const records: AttentionDecodeRecord[] = [];
  try {
    for (const dtype of dtypes) {
      for (const [hq, hkv] of headsList) {
        for (const len of lens) {
          for (const b of batches) {
            const cap = len;
            const n = b * hkv * cap * d;
            const kc = dtype === 'f32' ? new Float32Array(n) : new Uint16Array(n);
            const vc = dtype === 'f32' ? new Float32Array(n) : new Uint16Array(n);
            fillPattern(kc, dtype);
            fillPattern(vc, dtype);
            const q = new Float32Array(b * hq * d);
            for (let i = 0; i < q.length; i++) q[i] = ((i * 7) % 13) / 13 - 0.5;
            const out = new Float32Array(b * hq * d);
            const lensArr = new Int32Array(b).fill(len);
            const scale = 1 / Math.sqrt(d);
            const bytes = 2 * n * (dtype === 'f32' ? 4 : 2);
            for (const threads of threadsList) {
              setThreads(threads);
              const call = () => cpuKernels.attentionDecode(q, kc, vc, dtype, b, hq, hkv, d, cap, lensArr, scale, out);
              call(); // warm-up
              let iters = 0;
              const t0 = process.hrtime.bigint();
              let elapsed = 0;
              do {
                call();
                iters++;
                elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
              } while (elapsed < minSeconds || iters < 3);
              records.push({ op: 'attention_decode', dtype, b, heads: hq, kvHeads: hkv, headDim: d, len, threads, gbps: (bytes * iters) / elapsed / 1e9 });
            }
          }
        }
      }
    }
  } finally {
    setThreads(startThreads);
  }
  return records;
}

function main(): void {
  const json = process.argv.includes('--json');
  const records = benchAttentionDecode();
  if (json) {
    for (const r of records) console.log(JSON.stringify(r));
    return;
  }
  console.log('dtype  b   heads kv  d    len   thr  GB/s');
  for (const r of records) {
    console.log(`${r.dtype.padEnd(6)} ${String(r.b).padEnd(3)} ${String(r.heads).padEnd(5)} ${String(r.kvHeads).padEnd(3)} ${String(r.headDim).padEnd(4)} ${String(r.len).padEnd(5)} ${String(r.threads).padEnd(4)} ${r.gbps.toFixed(1)}`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
