// Attention throughput. Decode: GB/s of K+V cache read per second. Prefill: GFLOP/s of causal
// attention (4·s²·d/2 per sequence and query head, the scores and the weighted sum of values).
//   node --import tsx bench/attention.ts            both tables
//   node --import tsx bench/attention.ts --json     one JSON object per line
//   node --import tsx bench/attention.ts --decode   (or --prefill) one of them
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
  /** Minimum seconds of timed calls per configuration (the fastest call is reported). */
  minSeconds?: number;
}

/** The fastest of repeated calls (at least 3, for at least minSeconds): the machine may be shared,
 *  and the best call is the one least disturbed. */
function bestSeconds(call: () => void, minSeconds: number): number {
  let best = Infinity, iters = 0;
  const t0 = process.hrtime.bigint();
  for (;;) {
    const a = process.hrtime.bigint();
    call();
    const b = process.hrtime.bigint();
    best = Math.min(best, Number(b - a) / 1e9);
    iters++;
    if (iters >= 3 && Number(b - t0) / 1e9 >= minSeconds) return best;
  }
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
              const best = bestSeconds(call, minSeconds);
              records.push({ op: 'attention_decode', dtype, b, heads: hq, kvHeads: hkv, headDim: d, len, threads, gbps: bytes / best / 1e9 });
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

export interface AttentionPrefillRecord {
  op: 'attention_prefill';
  seqs: number;
  prompt: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  threads: number;
  gflops: number;
}

export interface BenchPrefillOptions {
  prompts?: number[];
  /** Sequences in the ragged batch. */
  seqs?: number;
  heads?: [number, number][];
  headDim?: number;
  threads?: number[];
  minSeconds?: number;
}

export function benchAttentionPrefill(opts: BenchPrefillOptions = {}): AttentionPrefillRecord[] {
  const prompts = opts.prompts ?? [64, 512];
  const nseq = opts.seqs ?? 8;
  const headsList = opts.heads ?? [[32, 32], [32, 8]];
  const d = opts.headDim ?? 128;
  const threadsList = opts.threads ?? [1, 2];
  const minSeconds = opts.minSeconds ?? 0.25;
  const startThreads = getThreads();
  const records: AttentionPrefillRecord[] = [];
  try {
    for (const [hq, hkv] of headsList) {
      for (const s of prompts) {
        const t = nseq * s;
        const q = new Float32Array(t * hq * d), k = new Float32Array(t * hkv * d), v = new Float32Array(t * hkv * d);
        for (let i = 0; i < q.length; i++) q[i] = ((i * 7) % 13) / 13 - 0.5;
        for (let i = 0; i < k.length; i++) k[i] = ((i * 2654435761) % 2000) / 1000 - 1;
        for (let i = 0; i < v.length; i++) v[i] = ((i * 40503) % 2000) / 1000 - 1;
        const starts = new Int32Array(nseq + 1).map((_, i) => i * s);
        const out = new Float32Array(t * hq * d);
        const flops = nseq * hq * (4 * s * s * d) / 2;
        for (const threads of threadsList) {
          setThreads(threads);
          const call = () => cpuKernels.attentionPrefill(q, k, v, t, hq, hkv, d, starts, 1 / Math.sqrt(d), out);
          call();
          const best = bestSeconds(call, minSeconds);
          records.push({ op: 'attention_prefill', seqs: nseq, prompt: s, heads: hq, kvHeads: hkv, headDim: d, threads, gflops: flops / best / 1e9 });
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
  const onlyDecode = process.argv.includes('--decode'), onlyPrefill = process.argv.includes('--prefill');
  const decode = onlyPrefill ? [] : benchAttentionDecode();
  const prefill = onlyDecode ? [] : benchAttentionPrefill();
  if (json) {
    for (const r of [...decode, ...prefill]) console.log(JSON.stringify(r));
    return;
  }
  if (decode.length) {
    console.log('decode  dtype  b   heads kv  d    len   thr  GB/s');
    for (const r of decode) {
      console.log(`        ${r.dtype.padEnd(6)} ${String(r.b).padEnd(3)} ${String(r.heads).padEnd(5)} ${String(r.kvHeads).padEnd(3)} ${String(r.headDim).padEnd(4)} ${String(r.len).padEnd(5)} ${String(r.threads).padEnd(4)} ${r.gbps.toFixed(1)}`);
    }
  }
  if (prefill.length) {
    console.log('prefill seqs prompt heads kv  d    thr  GFLOP/s');
    for (const r of prefill) {
      console.log(`        ${String(r.seqs).padEnd(4)} ${String(r.prompt).padEnd(6)} ${String(r.heads).padEnd(5)} ${String(r.kvHeads).padEnd(3)} ${String(r.headDim).padEnd(4)} ${String(r.threads).padEnd(4)} ${r.gflops.toFixed(1)}`);
    }
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
