// The disk tier's native I/O: O_DIRECT round trips through the I/O thread pool, alignment and OS
// errors, the buffered fallback, batching, the buffer pool and the byte counters.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomFillSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DirectFile, alignedBytes, ioStats, setIoThreads, IO_ALIGNMENT, type IoError } from '../src/tensor/disk/io.js';
import { BufferPool } from '../src/tensor/disk/buffer-pool.js';
import { copyStrided } from '../src/tensor/copy.js';
import { nativeFn } from '../src/backend/cpu/addon.js';
import { rng } from './helpers/harness.js';

const MiB = 1 << 20;
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tierlm-disk-io-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function randomBytes(n: number): Uint8Array {
  const a = alignedBytes(n);
  for (let i = 0; i < n; i += 65536) randomFillSync(a, i, Math.min(65536, n - i));
  return a;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

async function rejection(p: Promise<unknown>): Promise<IoError> {
  try {
    await p;
  } catch (e) {
    return e as IoError;
  }
  throw new Error('expected the promise to reject');
}

describe('O_DIRECT availability', () => {
  it('opens files in os.tmpdir() with O_DIRECT (or reports the fallback)', () => {
    const f = DirectFile.open(path.join(dir, 'probe.bin'), 'w');
    // /tmp here is ext4; on a filesystem without O_DIRECT the file is buffered and says so.
    expect(typeof f.direct).toBe('boolean');
    if (!f.direct) console.warn(`O_DIRECT is not available in ${dir}; testing the buffered fallback only`);
    f.close();
  });

  it('opens buffered when asked (the fallback path)', () => {
    const f = DirectFile.open(path.join(dir, 'probe2.bin'), 'w', { direct: false });
    expect(f.direct).toBe(false);
    f.close();
  });
});

describe.each([
  ['direct', true],
  ['buffered fallback', false],
])('round trips (%s)', (_name, direct) => {
  const open = (name: string, mode: 'r' | 'rw' | 'w' = 'w') => DirectFile.open(path.join(dir, `${name}-${direct}.bin`), mode, { direct });

  it('writes and reads random data at many offsets and sizes, concurrently', async () => {
    const f = open('many');
    const r = rng(direct ? 1 : 2);
    // Non-overlapping aligned ranges in a 48 MiB file, sizes from 4 KiB to ~5 MiB (some span chunks).
    const ranges: { offset: number; data: Uint8Array }[] = [];
    let at = 0;
    for (let i = 0; i < 40; i++) {
      const blocks = 1 + Math.floor(r() ** 3 * 1300);
      at += Math.floor(r() * 8) * IO_ALIGNMENT; // gaps
      ranges.push({ offset: at, data: randomBytes(blocks * IO_ALIGNMENT) });
      at += blocks * IO_ALIGNMENT;
    }
    await Promise.all(ranges.map((x) => f.write(x.data, x.offset)));
    const back = ranges.map((x) => alignedBytes(x.data.length));
    // Read back in a different order.
    await Promise.all(ranges.map((_, i) => ranges.length - 1 - i).map((i) => f.read(back[i], ranges[i].offset)));
    for (let i = 0; i < ranges.length; i++) expect(equalBytes(back[i], ranges[i].data), `range ${i}`).toBe(true);
    // Gaps read back as zeros.
    const gap = alignedBytes(IO_ALIGNMENT);
    gap.fill(7);
    const firstGap = ranges.findIndex((x, i) => i > 0 && x.offset > ranges[i - 1].offset + ranges[i - 1].data.length);
    if (firstGap > 0) {
      await f.read(gap, ranges[firstGap].offset - IO_ALIGNMENT);
      expect(gap.every((v) => v === 0)).toBe(true);
    }
    f.close();
  });

  it('moves 64 MiB in one request spread over the I/O threads', async () => {
    const f = open('big');
    const src = randomBytes(64 * MiB);
    const before = ioStats();
    await f.write(src, 3 * IO_ALIGNMENT);
    const dst = alignedBytes(64 * MiB);
    await f.read(dst, 3 * IO_ALIGNMENT);
    expect(equalBytes(dst, src)).toBe(true);
    const after = ioStats();
    expect(after.bytesWritten - before.bytesWritten).toBeGreaterThanOrEqual(64 * MiB);
    expect(after.bytesRead - before.bytesRead).toBeGreaterThanOrEqual(64 * MiB);
    expect(f.size()).toBe(64 * MiB + 3 * IO_ALIGNMENT);
    f.close();
  });

  it('runs many small requests at once', async () => {
    const f = open('small');
    const n = 256;
    const src = randomBytes(n * IO_ALIGNMENT);
    await f.write(src, 0);
    const outs = Array.from({ length: n }, () => alignedBytes(IO_ALIGNMENT));
    await Promise.all(outs.map((o, i) => f.read(o, i * IO_ALIGNMENT)));
    for (let i = 0; i < n; i++) expect(equalBytes(outs[i], src.subarray(i * IO_ALIGNMENT, (i + 1) * IO_ALIGNMENT))).toBe(true);
    f.close();
  });

  it('reads one region while writes to another run', async () => {
    const f = open('mixed');
    const stable = randomBytes(16 * MiB);
    await f.write(stable, 0);
    const writes: Promise<void>[] = [];
    const written: Uint8Array[] = [];
    for (let i = 0; i < 8; i++) {
      const d = randomBytes(2 * MiB);
      written.push(d);
      writes.push(f.write(d, 16 * MiB + i * 2 * MiB));
    }
    const reads = Array.from({ length: 8 }, (_, i) => {
      const d = alignedBytes(2 * MiB);
      return f.read(d, i * 2 * MiB).then(() => d);
    });
    const got = await Promise.all(reads);
    await Promise.all(writes);
    for (let i = 0; i < 8; i++) expect(equalBytes(got[i], stable.subarray(i * 2 * MiB, (i + 1) * 2 * MiB))).toBe(true);
    const all = alignedBytes(16 * MiB);
    await f.read(all, 16 * MiB);
    for (let i = 0; i < 8; i++) expect(equalBytes(all.subarray(i * 2 * MiB, (i + 1) * 2 * MiB), written[i])).toBe(true);
    f.close();
  });

  it('reads and writes a batch of ranges in one call', async () => {
    const f = open('batch');
    const sizes = [4096, 3 * MiB, 12288, 9 * MiB, 4096];
    const srcs = sizes.map(randomBytes);
    const offsets: number[] = [];
    let at = 0;
    for (const s of sizes) {
      offsets.push(at);
      at += s + IO_ALIGNMENT;
    }
    const before = ioStats();
    await f.writev(srcs, offsets);
    const dsts = sizes.map((s) => alignedBytes(s));
    await f.readv(dsts.slice().reverse(), offsets.slice().reverse());
    for (let i = 0; i < sizes.length; i++) expect(equalBytes(dsts[i], srcs[i])).toBe(true);
    const after = ioStats();
    expect(after.requests - before.requests).toBe(2 * sizes.length);
    expect(after.calls - before.calls).toBe(2);
    await f.readv([], []); // settles at once
    f.close();
  });

  it('rejects reads past the end of the file with code EOF, naming the path', async () => {
    const f = open('eof');
    await f.write(randomBytes(8192), 0);
    const e = await rejection(f.read(alignedBytes(16384), 0));
    expect(e.code).toBe('EOF');
    expect(e.message).toContain(f.path);
    expect(e.message).toMatch(/^EOF reading .* at offset 8192/);
    const e2 = await rejection(f.read(alignedBytes(4096), 1 << 30));
    expect(e2.code).toBe('EOF');
    f.close();
  });

  it('syncs, truncates and preallocates', async () => {
    const f = open('sized');
    await f.write(randomBytes(8192), 0);
    await f.sync();
    f.truncate(4096);
    expect(f.size()).toBe(4096);
    const pre = f.allocate(4 * MiB);
    expect(typeof pre).toBe('boolean');
    expect(f.size()).toBe(4 * MiB);
    f.close();
    f.close(); // no-op
    expect(() => f.truncate(0)).toThrow(/closed/);
  });
});

describe('alignment and argument errors', () => {
  it('rejects misaligned lengths, offsets and buffers on direct files with a clear RangeError', () => {
    const f = DirectFile.open(path.join(dir, 'align.bin'), 'w');
    if (!f.direct) {
      f.close();
      return;
    }
    const buf = alignedBytes(16384);
    expect(() => f.read(buf.subarray(0, 1000), 0)).toThrow(RangeError);
    expect(() => f.read(buf.subarray(0, 1000), 0)).toThrow(/length 1000 is not a multiple of 4096.*O_DIRECT/);
    expect(() => f.write(buf, 100)).toThrow(/file offset 100 is not a multiple of 4096/);
    expect(() => f.write(buf.subarray(512, 512 + 4096), 0)).toThrow(/not a multiple of 4096/);
    // The native check of the buffer's address (the wrapper only sees byteOffset).
    const ioRead = nativeFn<(fd: number, b: ArrayBufferView, o: number) => Promise<void>>('ioRead');
    const fd = (f as unknown as { fd: number }).fd;
    const misaligned = new Uint8Array(buf.buffer, 512, 4096);
    expect(() => ioRead(fd, misaligned, 0)).toThrow(/buffer address is not a multiple of 4096.*align\.bin/);
    f.close();
  });

  it('accepts any alignment on buffered files', async () => {
    const f = DirectFile.open(path.join(dir, 'unaligned.bin'), 'w', { direct: false });
    const src = new Uint8Array(1001);
    randomFillSync(src);
    await f.write(src.subarray(3), 17);
    const dst = new Uint8Array(998);
    await f.read(dst, 17);
    expect(equalBytes(dst, src.subarray(3))).toBe(true);
    f.close();
  });

  it('validates arguments in JavaScript first', () => {
    const f = DirectFile.open(path.join(dir, 'args.bin'), 'w');
    expect(() => f.read(new DataView(new ArrayBuffer(4096)) as never, 0)).toThrow(/args\.bin: dst must be a TypedArray/);
    expect(() => f.read(alignedBytes(4096), -4096)).toThrow(/offset must be a non-negative integer/);
    expect(() => f.readv([alignedBytes(4096)], [])).toThrow(/1 buffers but 0 offsets/);
    expect(() => DirectFile.open(path.join(dir, 'x'), 'a' as never)).toThrow(/mode must be/);
    expect(() => setIoThreads(0)).toThrow(RangeError);
    f.close();
  });

  it('refuses to close while transfers are in flight', async () => {
    const f = DirectFile.open(path.join(dir, 'inflight.bin'), 'w');
    const p = f.write(alignedBytes(32 * MiB), 0);
    expect(() => f.close()).toThrow(/in flight/);
    await p;
    f.close();
  });
});

describe('OS errors name the file and operation', () => {
  it('a missing directory', () => {
    const p = path.join(dir, 'no', 'such', 'dir', 'cache.bin');
    expect(() => DirectFile.open(p, 'w')).toThrow(`ENOENT (No such file or directory) opening ${p} for writing`);
    try {
      DirectFile.open(p, 'r');
    } catch (e) {
      expect((e as IoError).code).toBe('ENOENT');
    }
  });

  it('a path whose parent is a file, and a directory', () => {
    const file = path.join(dir, 'plain-file');
    fs.writeFileSync(file, 'x');
    expect(() => DirectFile.open(path.join(file, 'child.bin'), 'w')).toThrow(/ENOTDIR .*plain-file\/child\.bin/);
    expect(() => DirectFile.open(dir, 'r')).toThrow(/EISDIR .*opening/);
  });

  it('writing a read-only file', () => {
    const p = path.join(dir, 'ro.bin');
    fs.writeFileSync(p, Buffer.alloc(4096));
    const f = DirectFile.open(p, 'r');
    expect(() => f.write(alignedBytes(4096), 0)).toThrow(`write ${p}: the file was opened read-only ('r')`);
    f.close();
  });

  it('ENOSPC (simulated with /dev/full) names the path and offset', async () => {
    // Every Linux system has it; a machine without it must not pass this test silently.
    expect(fs.existsSync('/dev/full'), '/dev/full is missing: this test needs it to simulate a full disk').toBe(true);
    const f = DirectFile.open('/dev/full', 'rw');
    const e = await rejection(f.write(alignedBytes(8 * MiB), 123 * 4096));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/^ENOSPC \(No space left on device\) writing \/dev\/full at offset \d+/);
    expect(e.path).toBe('/dev/full');
    f.close();
  });
});

describe('copyStrided', () => {
  it('copies n0 × n1 runs between strided layouts, as a plain loop does', () => {
    const r = rng(7);
    for (let t = 0; t < 40; t++) {
      const run = 1 + Math.floor(r() * 300);
      const n0 = 1 + Math.floor(r() * 9);
      const n1 = 1 + Math.floor(r() * 13);
      // Strides that keep runs apart in one layout and interleave axes in the other.
      const ss = [run * n1 + Math.floor(r() * 5), run] as const;
      const ds = [run, run * n0 + Math.floor(r() * 7)] as const;
      const srcOffset = Math.floor(r() * 17);
      const dstOffset = Math.floor(r() * 11);
      const src = new Uint8Array(srcOffset + (n0 - 1) * ss[0] + (n1 - 1) * ss[1] + run + 3);
      for (let i = 0; i < src.length; i++) src[i] = Math.floor(r() * 256);
      const size = dstOffset + (n0 - 1) * ds[0] + (n1 - 1) * ds[1] + run;
      const got = new Uint8Array(size);
      const want = new Uint8Array(size);
      for (let i = 0; i < n0; i++) {
        for (let j = 0; j < n1; j++) {
          const s0 = srcOffset + i * ss[0] + j * ss[1];
          want.set(src.subarray(s0, s0 + run), dstOffset + i * ds[0] + j * ds[1]);
        }
      }
      copyStrided(got, src, { run, counts: [n0, n1], dstOffset, dstStrides: ds, srcOffset, srcStrides: ss });
      expect(equalBytes(got, want), `case ${t}`).toBe(true);
    }
  });

  it('refuses ranges outside either array and negative numbers', () => {
    const a = new Uint8Array(100);
    const spec = { run: 10, counts: [3, 2] as const, dstOffset: 0, dstStrides: [20, 10] as const, srcOffset: 0, srcStrides: [20, 10] as const };
    expect(() => copyStrided(a, new Uint8Array(100), spec)).not.toThrow();
    expect(() => copyStrided(new Uint8Array(59), a, spec)).toThrow(/dst needs 60 bytes, holds 59/);
    expect(() => copyStrided(a, new Uint8Array(100), { ...spec, srcOffset: 41 })).toThrow(/src needs 101 bytes, holds 100/);
    expect(() => copyStrided(a, a, { ...spec, run: -1 })).toThrow(/non-negative integers/);
  });
});

describe('BufferPool', () => {
  it('hands the same buffers out again and waits when all are leased', async () => {
    const pool = new BufferPool({ bufferBytes: 100_000, count: 2 });
    expect(pool.bufferBytes).toBe(102400);
    expect(pool.heldBytes).toBe(0);
    const a = await pool.acquire(5000);
    const b = await pool.acquire();
    expect(a.data.buffer).not.toBe(b.data.buffer);
    expect(a.view.length).toBe(8192);
    expect(a.data.length).toBe(102400);
    expect(pool.heldBytes).toBe(2 * 102400);
    expect(pool.tryAcquire()).toBeUndefined();
    let got: Awaited<ReturnType<BufferPool['acquire']>> | undefined;
    const waiting = pool.acquire(4096).then((l) => (got = l));
    await new Promise((r) => setTimeout(r, 10));
    expect(got).toBeUndefined();
    expect(pool.waiting).toBe(1);
    pool.release(a);
    await waiting;
    expect(got!.data.buffer).toBe(a.data.buffer); // reused, not reallocated
    expect(pool.heldBytes).toBe(2 * 102400);
    expect(() => pool.release(a)).toThrow(/already released/);
    expect(() => pool.acquire(200_000)).toThrow(/exceed/);
    pool.release(b);
    pool.release(got!);
    expect(pool.inUse).toBe(0);
    pool.dispose();
    expect(pool.heldBytes).toBe(0);
  });

  it('backs direct reads without allocating after warm-up', async () => {
    const f = DirectFile.open(path.join(dir, 'pool.bin'), 'w');
    const src = randomBytes(8 * MiB);
    await f.write(src, 0);
    const pool = new BufferPool({ bufferBytes: MiB, count: 3 });
    const seen = new Set<ArrayBufferLike>();
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const lease = await pool.acquire(MiB);
        seen.add(lease.data.buffer);
        await f.read(lease.view, i * MiB);
        expect(equalBytes(lease.view, src.subarray(i * MiB, (i + 1) * MiB))).toBe(true);
        pool.release(lease);
      }),
    );
    expect(seen.size).toBe(3);
    expect(pool.heldBytes).toBe(3 * MiB);
    f.close();
  });
});

describe('I/O pool', () => {
  it('counts bytes and time, and can be resized', async () => {
    setIoThreads(2, 1 * MiB);
    expect(ioStats().threads).toBe(2);
    expect(ioStats().chunkBytes).toBe(MiB);
    const f = DirectFile.open(path.join(dir, 'stats.bin'), 'w');
    const before = ioStats();
    await f.write(randomBytes(5 * MiB), 0);
    await f.read(alignedBytes(3 * MiB), MiB);
    const after = ioStats();
    expect(after.bytesWritten - before.bytesWritten).toBe(5 * MiB);
    expect(after.bytesRead - before.bytesRead).toBe(3 * MiB);
    expect(after.requests - before.requests).toBe(2);
    expect(after.readSeconds).toBeGreaterThan(before.readSeconds);
    expect(after.writeSeconds).toBeGreaterThan(before.writeSeconds);
    setIoThreads(4, 4 * MiB);
    expect(ioStats().threads).toBe(4);
    f.close();
  });

  it('runs urgent transfers before queued background ones', async () => {
    // One thread and 1 MiB chunks: the background read's 48 chunks queue one after another, and the
    // urgent read submitted after it must take the thread at the next chunk.
    setIoThreads(1, MiB);
    const f = DirectFile.open(path.join(dir, 'priority.bin'), 'w');
    const data = randomBytes(64 * MiB);
    await f.write(data, 0);
    const order: string[] = [];
    const big = alignedBytes(48 * MiB);
    const small = alignedBytes(MiB);
    const background = f.read(big, 0, { background: true }).then(() => order.push('background'));
    const urgent = f.read(small, 60 * MiB).then(() => order.push('urgent'));
    await Promise.all([background, urgent]);
    expect(order).toEqual(['urgent', 'background']);
    expect(equalBytes(big, data.subarray(0, 48 * MiB))).toBe(true);
    expect(equalBytes(small, data.subarray(60 * MiB, 61 * MiB))).toBe(true);
    // Background writes land too.
    await f.write(data.subarray(0, MiB), 63 * MiB, { background: true });
    const back = alignedBytes(MiB);
    await f.read(back, 63 * MiB);
    expect(equalBytes(back, data.subarray(0, MiB))).toBe(true);
    expect(() => nativeFn<(...a: unknown[]) => unknown>('ioRead')(-1, back, 0, 'yes')).toThrow();
    setIoThreads(4, 4 * MiB);
    f.close();
  });

  it('can be resized while transfers are in flight', async () => {
    const f = DirectFile.open(path.join(dir, 'resize.bin'), 'w');
    const src = randomBytes(32 * MiB);
    const p = f.write(src, 0);
    setIoThreads(1);
    setIoThreads(6);
    setIoThreads(4);
    await p;
    const dst = alignedBytes(32 * MiB);
    const q = f.read(dst, 0);
    setIoThreads(1);
    await q;
    setIoThreads(4);
    expect(equalBytes(dst, src)).toBe(true);
    f.close();
  });

  it('leaves nothing of the file in the page cache, direct or buffered', async () => {
    const which = spawnSync('fincore', ['--version'], { encoding: 'utf8' });
    if (which.status !== 0) return; // util-linux fincore is not installed
    for (const direct of [true, false]) {
      const p = path.join(dir, `cache-${direct}.bin`);
      const f = DirectFile.open(p, 'w', { direct });
      const b = randomBytes(16 * MiB);
      await f.write(b, 0);
      await f.read(b, 0);
      f.close();
      const out = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', p], { encoding: 'utf8' });
      expect(out.status).toBe(0);
      expect(Number(out.stdout.trim()), `resident bytes of ${p}`).toBe(0);
    }
  });

  it('keeps the process alive while I/O is in flight and lets it exit when idle', () => {
    const addonPath = path.resolve(__dirname, '../build/Release/tierlm.node');
    const file = path.join(dir, 'child.bin');
    const script = `
      const a = require(${JSON.stringify(addonPath)});
      const f = a.ioOpen(${JSON.stringify(file)}, 'w');
      const b = new Uint8Array(a.alignedBuffer(32 << 20));
      a.ioWrite(f.fd, b, 0).then(() => a.ioRead(f.fd, b, 0)).then(() => { a.ioClose(f.fd); console.log('settled'); });
    `;
    const t0 = Date.now();
    const out = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(out.stderr).toBe('');
    expect(out.stdout.trim()).toBe('settled');
    expect(out.status).toBe(0);
    expect(Date.now() - t0).toBeLessThan(30_000);
  });
});
