// Attention throughput. Decode: GB/s of K+V cache read per second (q4: codes + step/min params);
// sparse decode (top-k, F = 0.1 / 0.25) as time per call against dense on the same cache, its GB/s
// the dense cache bytes over that time ("effective"). Prefill: GFLOP/s of causal
// attention (4·s²·d/2 per sequence and query head, the scores and the weighted sum of values).
//   node --import tsx bench/attention.ts            both tables
//   node --import tsx bench/attention.ts --json     one JSON object per line
//   node --import tsx bench/attention.ts --decode   (or --prefill) one of them
//   node --import tsx bench/attention.ts --decode --quick   a small grid (b 1/8, len 2048)
import { fileURLToPath } from 'node:url';
import { getThreads, setThreads, type CacheDType } from '../src/backend/index.js';
import { cpuKernels } from '../src/backend/cpu/index.js';
import { q4RecordBytes } from '../src/backend/kernels.js';

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
  /** Sparse lines only: the sparsity F, ms per call, and that time over dense's (same config). */
  sparsity?: number;
  ms?: number;
  vsDense?: number;
}

export interface BenchAttentionOptions {
  batches?: number[];
  lens?: number[];
  /** [query heads, key/value heads] */
  heads?: [number, number][];
  headDim?: number;
  dtypes?: CacheDType[];
  /** Sparse decode lines (F < 1) after each dense one; none by default. */
  sparsities?: number[];
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

export function fillPattern(a: Float32Array | Uint16Array | Uint8Array, dtype: CacheDType, d: number): void {
  // Cheap deterministic values in [-1, 1); f16 bit patterns of small numbers; q4 records of
  // patterned codes with step 1/8 and min -1.
  if (dtype === 'q4') {
    const rb = q4RecordBytes(d), cb = Math.ceil(d / 2);
    for (let i = 0; i < a.length; i++) {
      const o = i % rb;
      a[i] = o < cb ? (i * 2654435761) & 0xff : (o - cb) % 4 === 0 ? 0x00 : (o - cb) % 4 === 1 ? 0x30 : (o - cb) % 4 === 2 ? 0x00 : 0xbc;
    }
  } else if (dtype === 'f32') {
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
  const dtypes = opts.dtypes ?? ['f32', 'f16', 'q4'];
  const sparsities = opts.sparsities ?? [];
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
            const rowLen = dtype === 'q4' ? q4RecordBytes(d) : d;
            const m = b * hkv * cap * rowLen;
            const alloc = () => (dtype === 'f32' ? new Float32Array(m) : dtype === 'f16' ? new Uint16Array(m) : new Uint8Array(m));
            const kc = alloc(), vc = alloc();
            fillPattern(kc, dtype, d);
            fillPattern(vc, dtype, d);
            const q = new Float32Array(b * hq * d);
            for (let i = 0; i < q.length; i++) q[i] = ((i * 7) % 13) / 13 - 0.5;
            const out = new Float32Array(b * hq * d);
            const lensArr = new Int32Array(b).fill(len);
            const scale = 1 / Math.sqrt(d);
            const bytes = 2 * (dtype === 'q4' ? m : n * (dtype === 'f32' ? 4 : 2));
            for (const threads of threadsList) {
              setThreads(threads);
              const run = (F: number) => bestSeconds(() => cpuKernels.attentionDecode(q, kc, vc, dtype, b, hq, hkv, d, cap, lensArr, scale, out, F), minSeconds);
              cpuKernels.attentionDecode(q, kc, vc, dtype, b, hq, hkv, d, cap, lensArr, scale, out); // warm-up
              const dense = run(1);
              records.push({ op: 'attention_decode', dtype, b, heads: hq, kvHeads: hkv, headDim: d, len, threads, gbps: bytes / dense / 1e9 });
              for (const F of sparsities) {
                const best = run(F);
                records.push({ op: 'attention_decode', dtype, b, heads: hq, kvHeads: hkv, headDim: d, len, threads, gbps: bytes / best / 1e9,
                  sparsity: F, ms: best * 1e3, vsDense: best / dense });
              }
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
  const quick = process.argv.includes('--quick');
  const decode = onlyPrefill ? [] : benchAttentionDecode({
    sparsities: [0.1, 0.25],
    ...(quick ? { batches: [1, 8], lens: [2048], minSeconds: 0.1 } : {}),
  });
  const prefill = onlyDecode ? [] : benchAttentionPrefill();
  if (json) {
    for (const r of [...decode, ...prefill]) console.log(JSON.stringify(r));
    return;
  }
  if (decode.length) {
    console.log('decode  dtype  F     b   heads kv  d    len   thr  GB/s    (sparse: ms, time vs dense)');
    for (const r of decode) {
      const sp = r.sparsity === undefined ? '' : `  (effective; ${r.ms!.toFixed(3)} ms, ${r.vsDense!.toFixed(2)}x dense time)`;
      console.log(`        ${r.dtype.padEnd(6)} ${String(r.sparsity ?? 1).padEnd(5)} ${String(r.b).padEnd(3)} ${String(r.heads).padEnd(5)} ${String(r.kvHeads).padEnd(3)} ${String(r.headDim).padEnd(4)} ${String(r.len).padEnd(5)} ${String(r.threads).padEnd(4)} ${r.gbps.toFixed(1)}${sp}`);
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
