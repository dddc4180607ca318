// Sequential disk bandwidth through the disk tier's I/O engine (O_DIRECT, so reads are cold: the
// page cache never serves them).
//   node --import tsx bench/disk.ts [--size 2GiB] [--dir DIR] [--block 16MiB] [--inflight 4]
//                                   [--threads 4] [--chunk 4MiB] [--no-prealloc] [--buffered] [--json]
// Writes a file of --size in --block transfers with --inflight of them in flight (ending with an
// fsync, counted), then reads it back the same way. GB/s are 10^9 bytes per second.
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DirectFile, ioStats, setIoThreads } from '../src/tensor/disk/io.js';
import { BufferPool, sequentialPass } from '../src/tensor/disk/buffer-pool.js';
import { parseSize } from '../src/tensor/tiers/size.js';

export interface DiskBenchOptions {
  size?: number;
  dir?: string;
  block?: number;
  inflight?: number;
  threads?: number;
  chunk?: number;
  prealloc?: boolean;
  direct?: boolean;
}

export interface DiskBenchRecord {
  op: 'disk';
  dir: string;
  direct: boolean;
  size: number;
  block: number;
  inflight: number;
  threads: number;
  chunk: number;
  writeGBps: number;
  readGBps: number;
  writeSeconds: number;
  readSeconds: number;
}

export async function benchDisk(opts: DiskBenchOptions = {}): Promise<DiskBenchRecord> {
  const block = opts.block ?? 16 * 2 ** 20;
  const size = Math.ceil((opts.size ?? 2 * 2 ** 30) / block) * block;
  const inflight = opts.inflight ?? 4;
  const threads = opts.threads ?? 4;
  const chunk = opts.chunk ?? 4 * 2 ** 20;
  setIoThreads(threads, chunk);
  const dir = fs.mkdtempSync(path.join(opts.dir ?? os.tmpdir(), 'tierlm-bench-disk-'));
  const file = path.join(dir, 'bench.bin');
  const pool = new BufferPool({ bufferBytes: block, count: inflight });
  try {
    // Random contents, so nothing downstream can compress or skip zeros.
    const leases = await Promise.all(Array.from({ length: inflight }, () => pool.acquire()));
    for (const l of leases) for (let i = 0; i < l.data.length; i += 65536) randomFillSync(l.data, i, 65536);
    for (const l of leases) pool.release(l);

    const w = DirectFile.open(file, 'w', { direct: opts.direct ?? true });
    if (opts.prealloc ?? true) w.allocate(size);
    const writeSeconds = await sequentialPass(w, pool, size, block, true);
    w.close();
    const r = DirectFile.open(file, 'r', { direct: opts.direct ?? true });
    const readSeconds = await sequentialPass(r, pool, size, block, false);
    r.close();
    return {
      op: 'disk', dir: opts.dir ?? os.tmpdir(), direct: r.direct, size, block, inflight, threads, chunk,
      writeGBps: size / writeSeconds / 1e9, readGBps: size / readSeconds / 1e9, writeSeconds, readSeconds,
    };
  } finally {
    pool.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const num = (name: string) => (arg(name) !== undefined ? parseSize(arg(name)!, name) : undefined);
  const count = (name: string) => {
    const v = arg(name);
    if (v === undefined) return undefined;
    if (!/^[1-9]\d*$/.test(v)) throw new Error(`${name}: a whole number >= 1, got "${v}"`);
    return Number(v);
  };
  const rec = await benchDisk({
    size: num('--size'),
    dir: arg('--dir'),
    block: num('--block'),
    inflight: count('--inflight'),
    threads: count('--threads'),
    chunk: num('--chunk'),
    prealloc: !process.argv.includes('--no-prealloc'),
    direct: !process.argv.includes('--buffered'),
  });
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify({ ...rec, stats: ioStats() }));
    return;
  }
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  console.log(`disk: ${rec.dir} (${rec.direct ? 'O_DIRECT' : 'buffered, cache dropped'}), file ${mib(rec.size)}, block ${mib(rec.block)}, ` +
    `${rec.inflight} in flight, ${rec.threads} I/O threads, chunk ${mib(rec.chunk)}`);
  console.log(`  write ${rec.writeGBps.toFixed(2)} GB/s  (${rec.writeSeconds.toFixed(2)} s, with fsync)`);
  console.log(`  read  ${rec.readGBps.toFixed(2)} GB/s  (${rec.readSeconds.toFixed(2)} s, cold)`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
