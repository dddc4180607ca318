// The training state a resume continues from, apart from the model files: per parameter the fp32
// master weight and Adam's first and second moments, plus a JSON record of the step, the data
// position, the RNG state and the run's options. On disk, in a checkpoint's training-state/:
//   state.json             {format, version, step, data_position, rng, options, tensors: [{name, shape}]}
//   optimizer.safetensors  for each parameter, in order: "<name>.master", "<name>.exp_avg", "<name>.exp_avg_sq" (F32)
// The moments sit beside their parameter so that a later per-layer swapper reads one range.
// They live in a subfolder, not beside model.safetensors, because loaders that take every
// *.safetensors of a model directory would read the optimizer as weights.

import fs from 'node:fs';
import path from 'node:path';
import type { TensorInfo } from '../formats/safetensors.js';
import { UserError } from '../util/errors.js';
import { writeFileDurable } from '../util/atomic.js';
import type { DataPosition } from './batcher.js';
import { readTensorFile, writeTensorFile } from './tensor-file.js';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface ParamState<A = Float32Array> {
  shape: number[];
  master: A;
  /** Adam's first moment (exp_avg). */
  m: A;
  /** Adam's second moment (exp_avg_sq). */
  v: A;
}

/** f32 values to save: in RAM, or pulled chunk by chunk (a state in the disk tier). */
export type F32Source = Float32Array | { readonly length: number; copyTo(dst: Float32Array, offset: number): void };

/** Values [offset, offset + n) of a source: a view when it is in RAM, else a scratch buffer
 *  reused by the next call (the writers consume each chunk before asking for the next). */
export function f32Chunk(src: F32Source, offset: number, n: number): Float32Array {
  if (src instanceof Float32Array) return src.subarray(offset, offset + n);
  if (scratch.length < n) scratch = new Float32Array(n);
  const out = scratch.subarray(0, n);
  src.copyTo(out, offset);
  return out;
}

let scratch = new Float32Array(0);

export interface TrainingState<A = Float32Array> {
  /** Optimizer steps done. */
  step: number;
  dataPosition: DataPosition;
  /** Whatever the trainer's generators need to continue identically. */
  rng: Json;
  /** The run's options, for a resume to check against. */
  options: { [key: string]: Json };
  /** By Hugging Face tensor name, in the model's order. */
  tensors: Map<string, ParamState<A>>;
}

export const STATE_DIR = 'training-state';
const STATE_JSON = 'state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
const FORMAT = 'tierlm-training-state';
const VERSION = 1;
export const PARTS = [['master', 'master'], ['m', 'exp_avg'], ['v', 'exp_avg_sq']] as const;

/** Writes the state into `dir` (created), every file fsynced. */
export async function writeTrainingState(dir: string, s: TrainingState<F32Source>): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  const tensors = [...s.tensors].map(([name, p]) => {
    const size = p.shape.reduce((a, b) => a * b, 1);
    for (const [key] of PARTS) {
      if (p[key].length !== size) throw new RangeError(`training state: ${key} of '${name}' has ${p[key].length} values, its shape [${p.shape.join(', ')}] ${size}`);
    }
    return { name, shape: p.shape };
  });
  const entries = [...s.tensors].flatMap(([name, p]) => PARTS.map(([key, suffix]) => ({
    name: `${name}.${suffix}`, dtype: 'f32' as const, shape: p.shape,
    fill: (dst: Uint8Array, offset: number) => {
      const c = f32Chunk(p[key], offset, dst.byteLength / 4);
      dst.set(new Uint8Array(c.buffer, c.byteOffset, dst.byteLength));
    },
  })));
  await writeTensorFile(path.join(dir, OPTIMIZER_FILE), entries, { format: FORMAT });
  const json = { format: FORMAT, version: VERSION, step: s.step, data_position: s.dataPosition, rng: s.rng, options: s.options, tensors };
  writeFileDurable(path.join(dir, STATE_JSON), JSON.stringify(json, null, 1) + '\n', false);
}

/** Where a parameter's master, m or v is read into (default: a new Float32Array), so that a
 *  trainer can place the state in buffers of its own; null: not read (a trainer that streams the
 *  optimizer file itself, after this has checked it). */
export type StateAlloc = (name: string, part: 'master' | 'm' | 'v', size: number) => Float32Array | null;

/** Reads a state written by writeTrainingState. With `expected` (the model's parameters), the
 *  names and shapes must match it exactly. Errors name the file and the field or tensor. */
export async function readTrainingState(dir: string, expected?: Map<string, number[]>,
  alloc: StateAlloc = (_n, _p, size) => new Float32Array(size)): Promise<TrainingState> {
  const jsonFile = path.join(dir, STATE_JSON);
  const j = readStateJson(jsonFile);
  const shapes = new Map(j.tensors.map((t) => [t.name, t.shape]));
  if (expected) checkNames(jsonFile, shapes, expected);
  const file = path.join(dir, OPTIMIZER_FILE);
  if (!fs.existsSync(file)) throw new UserError(`${file}: missing (the checkpoint is incomplete)`);
  const tensors = new Map<string, ParamState>();
  for (const [name, shape] of shapes) {
    const size = shape.reduce((a, b) => a * b, 1);
    const buffer = (part: 'master' | 'm' | 'v') => {
      const a = alloc(name, part, size);
      if (a === null) return new Float32Array(0);
      if (a.length !== size) throw new RangeError(`alloc gave ${a.length} values for ${part} of '${name}', which has ${size}`);
      return a;
    };
    tensors.set(name, { shape, master: buffer('master'), m: buffer('m'), v: buffer('v') });
  }
  const wanted = new Map<string, { p: ParamState; key: 'master' | 'm' | 'v' }>([...tensors].flatMap(([name, p]) => PARTS.map(([key, suffix]) => [`${name}.${suffix}`, { p, key }] as const)));
  const found = await readTensorFile(file, (info) => {
    const w = wanted.get(info.name);
    if (!w) throw new UserError(`${file}: tensor '${info.name}' is not a part of any parameter in ${STATE_JSON}`);
    checkInfo(file, info, w.p.shape);
    const a = w.p[w.key];
    return a.length === 0 && info.byteLength > 0 ? null : new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  });
  for (const name of wanted.keys()) if (!found.has(name)) throw new UserError(`${file}: tensor '${name}' is missing`);
  return { step: j.step, dataPosition: j.data_position, rng: j.rng ?? null, options: j.options, tensors };
}

function checkInfo(file: string, info: TensorInfo, shape: number[]): void {
  if (info.dtype !== 'f32') throw new UserError(`${file}: tensor '${info.name}' is ${info.dtype}, expected f32`);
  if (info.shape.join() !== shape.join()) {
    throw new UserError(`${file}: tensor '${info.name}' has shape [${info.shape.join(', ')}], ${STATE_JSON} says [${shape.join(', ')}]`);
  }
}

function checkNames(file: string, have: Map<string, number[]>, want: Map<string, number[]>): void {
  for (const [name, shape] of want) {
    const got = have.get(name);
    if (!got) throw new UserError(`${file}: the checkpoint has no state for parameter '${name}' of the model`);
    if (got.join() !== shape.join()) throw new UserError(`${file}: parameter '${name}' has shape [${got.join(', ')}] in the checkpoint, [${shape.join(', ')}] in the model`);
  }
  for (const name of have.keys()) if (!want.has(name)) throw new UserError(`${file}: the checkpoint has state for '${name}', which the model does not have`);
}

interface StateJson {
  step: number;
  data_position: DataPosition;
  rng: Json;
  options: { [key: string]: Json };
  tensors: { name: string; shape: number[] }[];
}

function readStateJson(file: string): StateJson {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(`${file}: ${code === 'ENOENT' ? 'missing (is this a checkpoint?)' : `cannot read: ${(e as Error).message}`}`);
  }
  const bad = (field: string, what: string) => new UserError(`${file}: field "${field}" ${what}`);
  if (j?.format !== FORMAT) throw bad('format', `must be "${FORMAT}"`);
  if (j.version !== VERSION) throw bad('version', `is ${JSON.stringify(j.version)}; this tierlm reads version ${VERSION}`);
  if (!Number.isSafeInteger(j.step) || (j.step as number) < 0) throw bad('step', 'must be a non-negative integer');
  const pos = j.data_position as DataPosition | undefined;
  if (typeof pos !== 'object' || pos === null || !Number.isSafeInteger(pos.epoch) || !Number.isSafeInteger(pos.index) || typeof pos.fingerprint !== 'string') {
    throw bad('data_position', 'must be {epoch, index, fingerprint}');
  }
  if (typeof j.options !== 'object' || j.options === null || Array.isArray(j.options)) throw bad('options', 'must be an object');
  const tensors = j.tensors as StateJson['tensors'];
  if (!Array.isArray(tensors)) throw bad('tensors', 'must be an array');
  tensors.forEach((t, i) => {
    if (typeof t?.name !== 'string' || !Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw bad(`tensors[${i}]`, 'must be {name, shape}');
    }
  });
  return j as unknown as StateJson;
}
