// Which weight file a model directory loads, and errors about one value of a weight.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import { TensorStore } from '../src/formats/safetensors.js';
import { writeSafetensors } from '../src/formats/safetensors-writer.js';
import { WeightLoader, packChunkRows } from '../src/models/weights.js';
import { DTYPE_BYTES, type FloatDType } from '../src/tensor/dtype.js';
import { ModelFileError } from '../src/util/errors.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

/** A copy of fixture `name` (every file of it). */
function fixtureCopy(name: string): string {
  const dir = tmpDir(name);
  for (const f of fs.readdirSync(path.join(fixturesDir, name))) fs.copyFileSync(path.join(fixturesDir, name, f), path.join(dir, f));
  return dir;
}

describe('model.safetensors beside model.safetensors.index.json', () => {
  it('the single file is loaded, not the shards, as transformers looks for model.safetensors first', () => {
    const dir = fixtureCopy('opt-sharded');
    const shards = TensorStore.open(dir);
    const names = shards.names();
    const changed = 'model.decoder.final_layer_norm.weight';
    // The same tensors in one file, one of them different from the shards'.
    const entries = names.map((name) => ({ name, dtype: shards.info(name).dtype as FloatDType, shape: shards.info(name).shape }));
    writeSafetensors(path.join(dir, 'model.safetensors'), entries, (e, dst, at) => {
      const bytes = new Uint8Array(shards.read(e.name).data.buffer), elem = DTYPE_BYTES[e.dtype];
      dst.set(bytes.subarray(at * elem, at * elem + dst.byteLength));
      if (e.name === changed) dst.fill(0x3c); // (f16, as every tensor of this fixture: 0x3c3c, 1.06)
    });
    const before = Array.from(shards.read(changed).data);
    shards.close();

    const store = TensorStore.open(dir);
    try {
      expect(store.fileName(changed)).toBe(path.join(dir, 'model.safetensors'));
      const loaded = Array.from(store.read(changed).data);
      expect(loaded).not.toEqual(before);
      expect(new Set(loaded)).toEqual(new Set([0x3c3c]));
    } finally {
      store.close();
    }
  });

  it('the shards load where the single file is absent', () => {
    const store = TensorStore.open(path.join(fixturesDir, 'opt-sharded'));
    try {
      expect(store.fileName('model.decoder.final_layer_norm.weight')).toMatch(/model-0000[12]-of-00002\.safetensors$/);
    } finally {
      store.close();
    }
  });
});

describe('--compress-weight on a value 4 bits cannot hold', () => {
  it("names the file, the tensor and the value's row and column in the tensor, not its index in a chunk", async () => {
    const dir = fixtureCopy('llama-tiny');
    const file = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(file);
    const headerBytes = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + headerBytes).toString()) as Record<string, { data_offsets: number[]; shape: number[] }>;
    const tensor = 'model.layers.1.mlp.up_proj.weight';
    const [rows, k] = header[tensor]!.shape as [number, number];
    expect(rows).toBeGreaterThan(37);
    // bf16 0x7f00 = 2^127, 1.7e38: finite, far beyond f16's 65504 (row 37: in the second 32-row chunk)
    buf.writeUInt16LE(0x7f00, 8 + headerBytes + header[tensor]!.data_offsets[0]! + 2 * (37 * k + 7));
    fs.writeFileSync(file, buf);

    const saved = WeightLoader.PACK_CHUNK_BYTES;
    // (the fewest bytes: chunks of 32 rows, so the value is in a chunk that does not start at row 0)
    Object.defineProperty(WeightLoader, 'PACK_CHUNK_BYTES', { value: 1 });
    try {
      expect(packChunkRows(k, 2)).toBe(32);
      const e = await loadModel(dir, { policy: { compressWeight: true } }).then(() => null, (err: Error) => err);
      expect(e).toBeInstanceOf(ModelFileError);
      expect(e!.message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(tensor '${tensor}'\\): row 37, column 7: ` +
        '1\\.70\\d*e\\+38 cannot be quantized to 4 bits \\(--compress-weight\\): values must be finite with \\|x\\| <= 65504$'));
    } finally {
      Object.defineProperty(WeightLoader, 'PACK_CHUNK_BYTES', { value: saved });
    }
  });
});
