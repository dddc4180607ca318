// The addon's own argument checks, called directly (the TypeScript wrappers validate first, so
// only a raw call reaches these): sizes computed from huge dimensions must throw a RangeError,
// never wrap around to a small size that passes the buffer-length check and lets a kernel run far
// past its buffers. And failures of the I/O calls that follow a write name the file.
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { nativeFn } from '../src/backend/cpu/addon.js';
import { DirectFile, alignedBytes, type IoError } from '../src/tensor/disk/io.js';

const T40 = 2 ** 40; // int_arg's default ceiling: two of these multiplied pass 2^63
const T31 = 2 ** 31; // the GEMM entry points' ceiling
const f32 = () => new Float32Array(64);
const i32 = () => new Int32Array(4);
const u8 = () => new Uint8Array(256);
const u16 = () => new Uint16Array(64);

// Every entry point that sizes a buffer from its arguments, with dimensions whose product overflows
// (or, for quantDequantize, where the first buffer checked, n·k code bytes, cannot overflow and is
// simply too short).
const calls: [string, unknown[], RegExp?][] = [
  ['attentionPrefill', [f32(), f32(), f32(), T40, T40, T40, T40, new Int32Array([0, 1]), 1, f32(), false]],
  ['attentionDecode', [f32(), f32(), f32(), 'f32', 1, T40, T40, T40, T40, i32(), 1, f32(), false]],
  ['attentionDecode', [f32(), u8(), u8(), 'q4', T40, 1, 1, T40, 1, i32(), 1, f32(), false]],
  ['cacheWrite', [f32(), 'f16', T40, T40, 1, 1, f32(), 0, i32(), i32()]],
  ['gemmPackedByteLength', ['f32', T31, T31]],
  ['gemmPackWeight', [f32(), 'f32', T31, T31, 'f32', u8()]],
  ['gemmMatmul', [f32(), T31, T31, u8(), 'q8', 1, null, f32(), 'fp32', false]],
  ['gemmMatmul', [f32(), 0, T31, u8(), 'f32', T31, null, f32(), 'fp32', false]],
  ['gemmGatherRows', [u8(), 'f32', T31, T31, i32(), f32()]],
  ['quantQuantize', [f32(), T31, T31, 4, 1, u8(), u16()]],
  ['quantDequantize', [u8(), u16(), T31, T31, 8, 1, f32()], /codes holds 256 bytes, needs at least 4611686018427387904/],
  ['embedding', [f32(), 'f32', T40, T40, i32(), f32()]],
  ['layerNorm', [f32(), T40, T40, f32(), null, 1e-5, f32()]],
  ['rmsNorm', [f32(), T40, T40, f32(), 1e-5, f32()]],
  ['softmax', [f32(), T40, T40, f32()]],
  ['logSoftmax', [f32(), T40, T40, f32()]],
  ['rope', [f32(), T40, T40, T40, i32(), 10000, 0]],
  ['copyStrided', [u8(), 0, u8(), 0, 1, T40, T40, T40, T40, 0, 0]],
];

/** What `f` throws or its promise rejects with; undefined when it succeeds. */
async function caught(f: () => unknown): Promise<IoError | undefined> {
  try {
    await f();
  } catch (e) {
    return e as IoError;
  }
  return undefined;
}

describe('native sizes are overflow-checked', () => {
  it.each(calls.map(([name, args, message], i) => [`${name} #${i}`, name, args, message] as const))('%s throws a RangeError naming the overflow', async (_, name, args, message) => {
    const fn = nativeFn<(...a: unknown[]) => unknown>(name);
    const err = await caught(() => fn(...args));
    expect(err, `${name} accepted dimensions whose product overflows`).toBeInstanceOf(RangeError);
    expect((err as Error).message).toMatch(message ?? /overflows a 64-bit size/);
  });

  it('sizes that fit still pass (the checks are not simply stricter)', () => {
    const x = new Float32Array(6).fill(1);
    const out = new Float32Array(6);
    nativeFn<(...a: unknown[]) => void>('softmax')(x, 2, 3, out);
    expect(Array.from(out).map((v) => v.toFixed(4))).toEqual(Array(6).fill((1 / 3).toFixed(4)));
    // A zero dimension makes an empty size, but the other dimensions must still multiply safely.
    const empty = nativeFn<(...a: unknown[]) => void>('layerNorm');
    expect(() => empty(new Float32Array(0), 0, 8, new Float32Array(8), null, 1e-5, new Float32Array(0))).not.toThrow();
    expect(() => nativeFn<(...a: unknown[]) => void>('rope')(f32(), 0, T40, T40, i32(), 10000, 0)).toThrow(/overflows/);
  });
});

describe('integer arguments', () => {
  it.each([1e30, -1e30, NaN, Infinity, 2.5, -1])('%s as a dimension or file offset throws a RangeError', async (bad) => {
    const softmax = nativeFn<(...a: unknown[]) => void>('softmax');
    const err = await caught(() => softmax(f32(), bad, 2, f32()));
    expect(err).toBeInstanceOf(RangeError);
    expect(err!.message).toMatch(/^rows must be an integer in \[0, 1099511627776\], got /);
    const f = DirectFile.open('/dev/null', 'r', { direct: false });
    const read = nativeFn<(...a: unknown[]) => Promise<void>>('ioRead');
    const ioErr = await caught(() => read((f as unknown as { fd: number }).fd, alignedBytes(4096), bad));
    f.close();
    expect(ioErr).toBeInstanceOf(RangeError);
    expect(ioErr!.message).toMatch(/^ioRead: offset must be a non-negative integer/);
  });
});

describe('I/O failures after the transfer name the file', () => {
  it('sync_file_range failing on a buffered write (ESPIPE on a character device) rejects, naming the call and file', async () => {
    if (!fs.existsSync('/dev/null')) throw new Error('this test needs /dev/null');
    // pwrite to /dev/null succeeds; the write-back that keeps the page cache out cannot.
    const f = DirectFile.open('/dev/null', 'rw', { direct: false });
    const err = await caught(() => f.write(alignedBytes(4096), 8192));
    f.close();
    expect(err, 'the failed sync_file_range was ignored').toBeDefined();
    expect(err!.message).toMatch(/^ESPIPE .* writing \/dev\/null at offset 8192 \(sync_file_range\)$/);
    expect(err!.syscall).toBe('sync_file_range');
    expect(err!.path).toBe('/dev/null');
  });

  it('a short read names pread, the file and the offset where the data ended', async () => {
    const f = DirectFile.open('/dev/null', 'r', { direct: false });
    const err = await caught(() => f.read(alignedBytes(4096), 0));
    f.close();
    expect(err!.code).toBe('EOF');
    expect(err!.syscall).toBe('pread');
    expect(err!.message).toMatch(/^EOF reading \/dev\/null at offset 0/);
  });
});
