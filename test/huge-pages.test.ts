// Large packed-weight buffers are marked for transparent huge pages before they are first touched
// (native/core/aligned.h): a decode step that streams its weights read them 5-6% faster on the
// machines of docs/benchmarks.md. The advice shows in /proc/self/smaps as the "hg" VmFlag of the
// mappings it covers, whether or not the kernel then finds free huge pages, so the tests look for
// that flag rather than for AnonHugePages.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { cpuBackend, referenceBackend, Tensor } from '../src/index.js';
import { hugePageStatus } from '../src/backend/index.js';
import { addon } from '../src/backend/cpu/addon.js';
import { alignedBytes } from '../src/tensor/disk/io.js';

const MiB = 2 ** 20;
// (a kernel without transparent huge pages refuses the advice: nothing to see there)
const thp = process.platform === 'linux' && fs.existsSync('/proc/self/smaps') && fs.existsSync('/sys/kernel/mm/transparent_hugepage/enabled');
// Every buffer these tests make stays referenced, so that no collection between two looks at
// smaps takes an advised mapping away.
const keep: unknown[] = [];
const kept = <T>(x: T): T => (keep.push(x), x);

/** Bytes of this process's mappings that carry the huge-page advice. */
function advisedBytes(): number {
  let total = 0;
  let size = 0;
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^Size:\s+(\d+) kB/.exec(line);
    if (m) size = Number(m[1]) * 1024;
    if (line.startsWith('VmFlags:') && line.split(/\s+/).includes('hg')) total += size;
  }
  return total;
}

afterEach(() => {
  delete process.env.TIERLM_HUGE_PAGES;
});

describe('packed weight buffers', () => {
  it('are zeroed and of the size asked, small or large, on both backends', () => {
    for (const backend of [cpuBackend(), referenceBackend()]) {
      for (const bytes of [0, 1, 4095, 6 * MiB + 17]) {
        const b = kept(backend.kernels.packedBuffer(bytes));
        expect(b).toBeInstanceOf(Uint8Array);
        expect(b.byteLength).toBe(bytes);
        expect(b.every((x) => x === 0)).toBe(true);
      }
    }
  });

  it.runIf(thp)('of 4 MiB or more carry the huge-page advice over their whole 2 MiB pages', () => {
    const before = advisedBytes();
    const b = kept(cpuBackend().kernels.packedBuffer(9 * MiB + 123));
    const after = advisedBytes();
    // 9 MiB hold at least three whole 2 MiB pages wherever they start.
    expect(after - before).toBeGreaterThanOrEqual(6 * MiB);
    b.fill(7);  // touching it afterwards is fine
    expect(b[b.length - 1]).toBe(7);
  });

  it.runIf(thp)('a weight packed by the CPU backend lands in advised memory; the result is the same as without', () => {
    const n = 3072, k = 1024;  // 6 MiB of bf16 packed: at least two whole 2 MiB pages
    const data = new Uint16Array(n * k).map((_, i) => 0x3c00 + (i % 977));
    const before = advisedBytes();
    const w = kept(cpuBackend().packWeight(new Tensor('bf16', [n, k], data), 'bf16', 'w'));
    expect(advisedBytes() - before).toBeGreaterThanOrEqual(4 * MiB);
    process.env.TIERLM_HUGE_PAGES = '0';
    const w0 = cpuBackend().packWeight(new Tensor('bf16', [n, k], data), 'bf16', 'w');
    expect(Buffer.compare(Buffer.from(w.data), Buffer.from(w0.data))).toBe(0);
  });

  it.runIf(thp)('native aligned buffers of 4 MiB or more are advised too (resident weight stores, staging)', () => {
    const before = advisedBytes();
    const b = kept(alignedBytes(16 * MiB));  // (starts on a 2 MiB page: all of it is advised)
    expect(advisedBytes() - before).toBeGreaterThanOrEqual(16 * MiB);
    expect(b.every((x) => x === 0)).toBe(true);
  });

  it.runIf(thp)('TIERLM_HUGE_PAGES=0 turns the advice off; buffers under 4 MiB never get it', () => {
    const advise = addon().adviseHugePages;
    expect(advise(new Uint8Array(3 * MiB))).toBe(0);
    process.env.TIERLM_HUGE_PAGES = '0';
    const before = advisedBytes();
    const b = kept(cpuBackend().kernels.packedBuffer(9 * MiB));
    const a = kept(alignedBytes(16 * MiB));
    expect(advise(new Uint8Array(9 * MiB))).toBe(0);
    expect(advisedBytes() - before).toBeLessThan(2 * MiB);
    expect(b.byteLength + a.byteLength).toBe(25 * MiB);
    delete process.env.TIERLM_HUGE_PAGES;
    const advised = advise(kept(new Uint8Array(9 * MiB)));
    expect(advised % (2 * MiB)).toBe(0);
    expect(advised).toBeGreaterThanOrEqual(6 * MiB);
  });

  it('tierlm profile says which pages packed weights get', () => {
    const sys = '/sys/kernel/mm/transparent_hugepage/enabled';
    const mode = fs.existsSync(sys) ? /\[(\w+)\]/.exec(fs.readFileSync(sys, 'utf8'))?.[1] : undefined;
    const status = hugePageStatus();
    if (mode === undefined) expect(status).toBeNull();
    else if (mode === 'never') expect(status).toMatch(/4 KiB pages: transparent huge pages are off/);
    else expect(status).toBe(`packed weights on 2 MiB pages where the kernel has them free (transparent huge pages: ${mode})`);
    process.env.TIERLM_HUGE_PAGES = '0';
    expect(hugePageStatus()).toBe('packed weights on 4 KiB pages (TIERLM_HUGE_PAGES=0)');
  });

  it('adviseHugePages refuses what is not a typed array', () => {
    expect(() => addon().adviseHugePages({} as unknown as ArrayBufferView)).toThrow(/adviseHugePages: view/);
  });
});
