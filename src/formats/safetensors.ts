// Reader for the safetensors format: an 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets}, then the raw data. Tensors are read by offset, so a
// file is never read whole. Every header is checked before any data is trusted: files come from
// strangers.

import fs from 'node:fs';
import path from 'node:path';
import { type FloatDType, DTYPE_BYTES, viewAs } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import { ModelFileError } from '../util/errors.js';
import { readJsonObject } from '../util/json-file.js';

const DTYPES: Record<string, FloatDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
/** The dtype the engine computes with for a dtype as a file names it (F32, F16, BF16), or null. */
export function floatDType(stored: string): FloatDType | null {
  return DTYPES[stored] ?? null;
}

/** Every other dtype safetensors defines, by its element size. A tensor of one (an int64
 *  `position_ids` buffer, a boolean mask) is checked like the rest and kept aside: a model that
 *  does not compute with it loads, as transformers loads it; one it needs is refused by name. */
const OTHER_DTYPE_BYTES: Record<string, number> = {
  F64: 8, I64: 8, U64: 8, I32: 4, U32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};
/** Larger headers are refused before allocating them (real ones are a few MB at most). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: FloatDType;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
}

/** A tensor of a dtype the engine does not compute with: its bytes can be copied, not read as numbers. */
export interface OtherTensor {
  name: string;
  /** As the file names it (I64, BOOL, ...). */
  dtype: string;
  shape: number[];
  offset: number;
  byteLength: number;
}

export class SafetensorsFile {
  private constructor(
    readonly file: string,
    private readonly fd: number,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
    readonly others: Map<string, OtherTensor> = new Map(),
  ) {}

  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new ModelFileError(file, `cannot open: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      // A directory opens for reading on Linux; reading it then fails with a bare EISDIR.
      if (!fs.fstatSync(fd).isFile()) throw new ModelFileError(file, 'not a regular file (a directory?)');
      const { tensors, others, metadata } = readHeader(file, fd);
      return new SafetensorsFile(file, fd, tensors, metadata, others);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  has(name: string): boolean {
    return this.tensors.has(name) || this.others.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t) return t;
    const o = this.others.get(name);
    if (o) throw new ModelFileError(this.file, `dtype "${o.dtype}" is not one the engine computes with (F32, F16, BF16)`, name);
    throw new ModelFileError(this.file, 'tensor not found', name);
  }

  /** A tensor of either kind, as stored: its dtype as the file names it, shape and bytes. */
  stored(name: string): OtherTensor {
    const t = this.tensors.get(name);
    if (t) return { name, dtype: Object.keys(DTYPES).find((k) => DTYPES[k] === t.dtype)!, shape: t.shape, offset: t.offset, byteLength: t.byteLength };
    const o = this.others.get(name);
    if (!o) throw new ModelFileError(this.file, 'tensor not found', name);
    return o;
  }

  /** Reads one tensor into a new buffer of its own dtype. */
  read(name: string): Tensor {
    const t = this.info(name);
    const buf = new ArrayBuffer(t.byteLength);
    this.readInto(t, new Uint8Array(buf));
    return new Tensor(t.dtype, t.shape, viewAs(t.dtype, buf, 0, t.byteLength / DTYPE_BYTES[t.dtype]));
  }

  /** Reads rows [start, end) of a tensor's first dimension into `dst` (exactly that many bytes). */
  readRowsInto(name: string, start: number, end: number, dst: Uint8Array): void {
    const t = this.info(name);
    const rowBytes = t.shape.slice(1).reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    const want = (end - start) * rowBytes;
    if (dst.byteLength !== want) throw new RangeError(`readRowsInto: destination holds ${dst.byteLength} bytes, needs ${want}`);
    readFully(this.file, this.fd, dst, t.offset + start * rowBytes, name);
  }

  /** Reads dst.byteLength bytes of a tensor's data (of any dtype) from byte `start` of it into `dst`. */
  readBytesInto(name: string, start: number, dst: Uint8Array): void {
    const t = this.stored(name);
    if (start < 0 || start + dst.byteLength > t.byteLength) throw new RangeError(`readBytesInto: bytes [${start}, ${start + dst.byteLength}) of ${t.byteLength}`);
    readFully(this.file, this.fd, dst, t.offset + start, name);
  }

  private readInto(t: TensorInfo, dst: Uint8Array): void {
    readFully(this.file, this.fd, dst, t.offset, t.name);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

function readFully(file: string, fd: number, dst: Uint8Array, position: number, tensor: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const n = fs.readSync(fd, dst, done, Math.min(dst.byteLength - done, 1 << 30), position + done);
    if (n === 0) throw new ModelFileError(file, `file ends before the tensor's data does (truncated?)`, tensor);
    done += n;
  }
}

function readHeader(file: string, fd: number): { tensors: Map<string, TensorInfo>; others: Map<string, OtherTensor>; metadata: Record<string, string> } {
  const size = fs.fstatSync(fd).size;
  if (size < 8) throw new ModelFileError(file, `file is ${size} bytes, too short to be safetensors (truncated?)`);
  const lenBuf = Buffer.alloc(8);
  fs.readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  if (headerLen > size - 8) {
    throw new ModelFileError(file, `header length ${headerLen} exceeds the file's ${size - 8} remaining bytes (truncated or not safetensors)`);
  }
  if (headerLen > MAX_HEADER_BYTES) throw new ModelFileError(file, `header length ${headerLen} is implausibly large`);
  const headerBuf = Buffer.alloc(headerLen);
  fs.readSync(fd, headerBuf, 0, headerLen, 8);
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (e) {
    throw new ModelFileError(file, `header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new ModelFileError(file, 'header is not a JSON object');
  }
  const dataStart = 8 + headerLen;
  const dataSize = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  const others = new Map<string, OtherTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = (raw ?? {}) as Record<string, string>;
      continue;
    }
    const e = parseEntry(file, name, raw, dataStart, dataSize);
    const dtype = DTYPES[e.dtype];
    if (dtype) tensors.set(name, { name, dtype, shape: e.shape, offset: e.offset, byteLength: e.byteLength });
    else others.set(name, e);
  }
  checkOverlaps(file, [...tensors.values(), ...others.values()], dataStart);
  return { tensors, others, metadata };
}

function parseEntry(file: string, name: string, raw: unknown, dataStart: number, dataSize: number): OtherTensor {
  const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e !== 'object' || e === null) throw new ModelFileError(file, 'header entry is not an object', name);
  const dtype = typeof e.dtype === 'string' && (DTYPES[e.dtype] !== undefined || OTHER_DTYPE_BYTES[e.dtype] !== undefined) ? e.dtype : undefined;
  if (!dtype) throw new ModelFileError(file, `unsupported dtype ${JSON.stringify(e.dtype)} (supported: F32, F16, BF16; others are kept aside: ${Object.keys(OTHER_DTYPE_BYTES).join(', ')})`, name);
  const elementBytes = DTYPES[dtype] ? DTYPE_BYTES[DTYPES[dtype]] : OTHER_DTYPE_BYTES[dtype]!;
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ModelFileError(file, `invalid shape ${JSON.stringify(shape)}`, name);
  }
  const offs = e.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[0] > offs[1]) {
    throw new ModelFileError(file, `invalid data_offsets ${JSON.stringify(offs)}`, name);
  }
  const [begin, end] = offs as [number, number];
  if (end > dataSize) {
    throw new ModelFileError(file, `data_offsets [${begin}, ${end}] overrun the file's ${dataSize} data bytes (truncated?)`, name);
  }
  const elements = (shape as number[]).reduce((a, b) => a * b, 1);
  if ((end - begin) !== elements * elementBytes) {
    throw new ModelFileError(file, `data_offsets span ${end - begin} bytes, but shape [${shape.join(', ')}] of ${dtype} needs ${elements * elementBytes}`, name);
  }
  return { name, dtype, shape: shape as number[], offset: dataStart + begin, byteLength: end - begin };
}

function checkOverlaps(file: string, tensors: { name: string; offset: number; byteLength: number }[], dataStart: number): void {
  const sorted = tensors.filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.byteLength) {
      throw new ModelFileError(file, `data overlaps tensor '${prev.name}' (bytes ${prev.offset - dataStart}..${prev.offset - dataStart + prev.byteLength})`, cur.name);
    }
  }
}

/** The tensors of a model directory: one file, or shards listed by model.safetensors.index.json. */
export class TensorStore {
  private constructor(
    readonly dir: string,
    private readonly files: SafetensorsFile[],
    private readonly where: Map<string, SafetensorsFile>,
  ) {}

  static open(dir: string): TensorStore {
    const single = path.join(dir, 'model.safetensors');
    const index = path.join(dir, 'model.safetensors.index.json');
    // The single file first where both are present, as transformers looks for them (a directory
    // that kept a stale index beside a newer model.safetensors loads the file transformers loads).
    if (!fs.existsSync(single)) {
      if (fs.existsSync(index)) return TensorStore.openSharded(dir, index);
      throw new ModelFileError(dir, 'no model.safetensors or model.safetensors.index.json in the model directory');
    }
    const f = SafetensorsFile.open(single);
    return new TensorStore(dir, [f], new Map([...f.tensors.keys(), ...f.others.keys()].map((k) => [k, f])));
  }

  private static openSharded(dir: string, index: string): TensorStore {
    const map = readJsonObject(index).weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new ModelFileError(index, 'missing "weight_map" object');
    const realDir = fs.realpathSync(dir);
    const byName = new Map<string, SafetensorsFile>();
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    try {
      for (const [tensor, shard] of Object.entries(map)) {
        if (typeof shard !== 'string') throw new ModelFileError(index, 'shard name is not a string', tensor);
        let f = byName.get(shard);
        if (!f) {
          f = SafetensorsFile.open(shardPath(index, realDir, shard, tensor));
          byName.set(shard, f);
          files.push(f);
        }
        if (!f.has(tensor)) throw new ModelFileError(f.file, 'tensor listed in model.safetensors.index.json is missing from its shard', tensor);
        where.set(tensor, f);
      }
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    return new TensorStore(dir, files, where);
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  info(name: string): TensorInfo & { file: string } {
    const f = this.fileOf(name);
    return { ...f.info(name), file: f.file };
  }

  /** A tensor of any dtype as stored (see SafetensorsFile.stored). */
  stored(name: string): OtherTensor & { file: string } {
    const f = this.fileOf(name);
    return { ...f.stored(name), file: f.file };
  }

  read(name: string): Tensor {
    return this.fileOf(name).read(name);
  }

  readRowsInto(name: string, start: number, end: number, dst: Uint8Array): void {
    this.fileOf(name).readRowsInto(name, start, end, dst);
  }

  readBytesInto(name: string, start: number, dst: Uint8Array): void {
    this.fileOf(name).readBytesInto(name, start, dst);
  }

  /** The file to blame in an error about `name`. */
  fileName(name: string): string {
    return this.where.get(name)?.file ?? (this.files.length === 1 ? this.files[0]!.file : this.dir);
  }

  private fileOf(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new ModelFileError(this.fileName(name), 'tensor not found', name);
    return f;
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

/** Resolves a shard named by the index, refusing anything outside the model directory. */
function shardPath(index: string, realDir: string, shard: string, tensor: string): string {
  if (shard.length === 0 || path.isAbsolute(shard) || shard.includes('\0')) {
    throw new ModelFileError(index, `shard '${shard}' is not a file name inside the model directory`, tensor);
  }
  const resolved = path.resolve(realDir, shard);
  if (path.dirname(resolved) !== realDir && !resolved.startsWith(realDir + path.sep)) {
    throw new ModelFileError(index, `shard '${shard}' points outside the model directory`, tensor);
  }
  // The name must lie in the directory; the file may be a link to anywhere, as a Hugging Face cache
  // snapshot's every file is (snapshots/REV/model-00001-of-00002.safetensors -> ../../blobs/HASH).
  try {
    return fs.realpathSync(resolved);
  } catch {
    throw new ModelFileError(index, `shard '${shard}' does not exist`, tensor);
  }
}
