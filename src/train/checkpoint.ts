// Checkpoints in a run's output directory:
//   OUT/checkpoint-<step>/                 a Hugging Face model directory (model-writer.ts)
//   OUT/checkpoint-<step>/training-state/  what a resume needs beyond it (training-state.ts)
//   OUT/latest -> checkpoint-<step>        a symlink, so `tierlm generate --model OUT/latest` works
//
// A save is atomic: everything is written into OUT/.checkpoint-<step>.tmp-<pid>/, each file and
// directory fsynced, then the directory is renamed into place and the link replaced by renaming a
// new link over it. A checkpoint directory therefore exists only once complete, and a crash at any
// moment (SIGKILL, power cut) leaves the previous checkpoint and the link to it intact; older
// checkpoints are removed only after the new one is linked. The newest checkpoint directory is
// the latest, whatever the link says: a crash between the two renames leaves the link on the one
// before (a resume from it redid the steps since, and saved their checkpoint a second time), and a
// crash before the prune leaves more checkpoints than kept; a resume sets both right (settle).

import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { fsyncPath } from '../util/atomic.js';
import { removeAtExit } from '../schedule/spill-files.js';
import { type Weight, writeModelFiles } from './model-writer.js';
import { type F32Source, STATE_DIR, type StateAlloc, type TrainingState, readTrainingState, writeTrainingState } from './training-state.js';

export const LATEST = 'latest';
const NAME = /^checkpoint-(\d+)(?:-(\d+))?$/;
// What a save, a prune or a publish killed midway leaves in OUT: a checkpoint's directory, the
// `latest` link (made beside it, then renamed over it) or a model file's link, named .NAME.tmp-PID;
// and metrics.jsonl.tmp-PID, the rewrite of metrics.jsonl a resume makes (writeFileDurable).
const TEMP = /^(?:\.(?:checkpoint-.*|latest|[^/]+\.(?:json|safetensors|model|txt|jinja))|metrics\.jsonl)\.tmp-\d+$/;

export interface SaveOptions {
  /** Checkpoints kept after a save, the new one included (default 1). */
  keep?: number;
}

/** Saves `state` (its master weights as the model, in the dtype of the model in `modelDir`)
 *  as OUT/checkpoint-<step> and points OUT/latest at it; returns the checkpoint's directory. */
export async function saveCheckpoint(outDir: string, modelDir: string, state: TrainingState<F32Source>, o: SaveOptions = {}): Promise<string> {
  const keep = keepCount(o);
  const { name, tmp } = startSave(outDir, state.step);
  const weights = new Map<string, Weight>([...state.tensors].map(([n, p]) => [n, { shape: p.shape, data: p.master }]));
  await writeCheckpointFiles(tmp, modelDir, weights, state);
  return commitSave(outDir, name, tmp, keep);
}

export function keepCount(o: SaveOptions): number {
  const keep = o.keep ?? 1;
  if (!Number.isSafeInteger(keep) || keep < 1) throw new RangeError(`keep must be a positive integer, got ${keep}`);
  return keep;
}

/** The first part of a save: the checkpoint's name and the temporary directory it is written in
 *  (data-parallel ranks write their slices of the training state there too). */
export function startSave(outDir: string, step: number): { name: string; tmp: string } {
  fs.mkdirSync(outDir, { recursive: true });
  removeTemporaries(outDir);
  const name = freeName(outDir, step);
  const tmp = path.join(outDir, `.${name}.tmp-${process.pid}`);
  try {
    fs.mkdirSync(path.join(tmp, STATE_DIR), { recursive: true });
  } catch (e) {
    // (a full disk can fail the inner directory once the outer one is made)
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  // A whole checkpoint's size: a SIGTERM or Ctrl-C during the save left it in OUT until a resume
  // into the same OUT. Removed at exit or on a signal until commitSave renames it into place.
  saving.set(tmp, removeAtExit(tmp));
  return { name, tmp };
}

/** The temporary directories of saves in progress, each with the function that forgets it. */
const saving = new Map<string, () => void>();

/** Removes a save's temporary directory (a failed save), and forgets it. */
function discardSave(tmp: string): void {
  fs.rmSync(tmp, { recursive: true, force: true });
  forgetSave(tmp);
}

function forgetSave(tmp: string): void {
  saving.get(tmp)?.();
  saving.delete(tmp);
}

/** Writes the model files and the training state into `tmp`, fsynced (removing tmp on failure). */
export async function writeCheckpointFiles(tmp: string, modelDir: string, weights: Map<string, Weight>, state: TrainingState<F32Source>): Promise<void> {
  try {
    await writeModelFiles(tmp, modelDir, weights);
    await pauseForTest('model', state.step);
    await writeTrainingState(path.join(tmp, STATE_DIR), state);
    fsyncPath(path.join(tmp, STATE_DIR));
    fsyncPath(tmp);
    await pauseForTest('rename', state.step);
  } catch (e) {
    discardSave(tmp);
    throw e;
  }
}

/** The last part: renames `tmp` into place, links OUT/latest to it, prunes older checkpoints. */
export function commitSave(outDir: string, name: string, tmp: string, keep: number): string {
  const final = path.join(outDir, name);
  fs.renameSync(tmp, final);
  forgetSave(tmp); // (now the checkpoint: an exit must not remove it)
  fsyncPath(outDir);
  pauseForTestSync('link', name);
  link(outDir, name);
  pauseForTestSync('prune', name);
  prune(outDir, name, keep);
  return final;
}

/** Points OUT/latest at checkpoint `name`: a new link renamed over the old one. */
function link(outDir: string, name: string): void {
  const tmp = path.join(outDir, `.${LATEST}.tmp-${process.pid}`);
  fs.rmSync(tmp, { force: true });
  fs.symlinkSync(name, tmp);
  fs.renameSync(tmp, path.join(outDir, LATEST));
  fsyncPath(outDir);
}

/** Finishes what a save killed after its rename left undone (before a resume): OUT/latest linked
 *  to the newest checkpoint, and no more than `keep` checkpoints. */
export function settleCheckpoints(outDir: string, keep: number): void {
  const newest = latestCheckpoint(outDir);
  if (!newest) return;
  const name = path.basename(newest);
  let target: string | null = null;
  try {
    target = fs.readlinkSync(path.join(outDir, LATEST));
  } catch {
    // no link yet
  }
  if (target !== name) link(outDir, name);
  prune(outDir, name, keepCount({ keep }));
}

/** The directory of OUT's latest checkpoint (its newest), or null when it has none. */
export function latestCheckpoint(outDir: string): string | null {
  const newest = checkpoints(outDir).filter((c) => fs.existsSync(path.join(outDir, c.name, STATE_DIR))).at(-1);
  return newest ? path.join(outDir, newest.name) : null;
}

/** Reads the training state of `dir`: a checkpoint directory, or an output directory whose latest
 *  checkpoint is taken. `expected` (parameter name → shape) is checked as readTrainingState does. */
export async function loadCheckpoint(dir: string, expected?: Map<string, number[]>, alloc?: StateAlloc): Promise<{ dir: string; state: TrainingState }> {
  const ckpt = fs.existsSync(path.join(dir, STATE_DIR)) ? dir : latestCheckpoint(dir);
  if (!ckpt) throw new UserError(`${dir}: no checkpoint to resume from (no ${LATEST} link, no checkpoint-<step> directory)`);
  return { dir: ckpt, state: await readTrainingState(path.join(ckpt, STATE_DIR), expected, alloc) };
}

/** Checkpoint directories of OUT, oldest first. */
function checkpoints(outDir: string): { name: string; order: [number, number] }[] {
  const list: { name: string; order: [number, number] }[] = [];
  for (const name of fs.existsSync(outDir) ? fs.readdirSync(outDir) : []) {
    const m = NAME.exec(name);
    if (m && fs.statSync(path.join(outDir, name)).isDirectory()) list.push({ name, order: [Number(m[1]), Number(m[2] ?? 0)] });
  }
  return list.sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1]);
}

/** checkpoint-<step>, or checkpoint-<step>-<k> when a checkpoint of that step exists (a run resumed
 *  and saved again at the same step): an existing checkpoint is never overwritten in place. */
function freeName(outDir: string, step: number): string {
  if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`step must be a non-negative integer, got ${step}`);
  const taken = new Set(fs.readdirSync(outDir));
  let name = `checkpoint-${step}`;
  for (let k = 1; taken.has(name); k++) name = `checkpoint-${step}-${k}`;
  return name;
}

/** Leftovers of saves that crashed: never renamed into place, so never a checkpoint. */
/** What a save or a prune that crashed left in OUT (a run resuming, or the next save, clears it). */
export function removeTemporaries(outDir: string): void {
  for (const name of fs.readdirSync(outDir)) {
    if (TEMP.test(name)) fs.rmSync(path.join(outDir, name), { recursive: true, force: true });
  }
}

function prune(outDir: string, current: string, keep: number): void {
  const older = checkpoints(outDir).filter((c) => c.name !== current);
  for (const c of older.slice(0, Math.max(0, older.length - (keep - 1)))) {
    // Renamed first, so that a crash in the middle of removing it leaves a temporary, not a
    // half checkpoint.
    const doomed = path.join(outDir, `.${c.name}.tmp-${process.pid}`);
    fs.renameSync(path.join(outDir, c.name), doomed);
    fs.rmSync(doomed, { recursive: true, force: true });
  }
}

/** Crash tests stop a save here (TIERLM_TEST_CHECKPOINT_PAUSE=model|rename|link|prune: every
 *  save, or model@STEP and so on: that step's, so that checkpoints before it are complete) and
 *  kill the process. */
async function pauseForTest(stage: string, step: number): Promise<void> {
  if (!pausesAt(stage, step)) return;
  process.stdout.write(`checkpoint save paused at ${stage}\n`);
  await new Promise(() => setInterval(() => {}, 1 << 30));
}

function pausesAt(stage: string, step: number): boolean {
  const pause = process.env.TIERLM_TEST_CHECKPOINT_PAUSE;
  return pause === stage || pause === `${stage}@${step}`;
}

/** pauseForTest where the save cannot wait (commitSave is synchronous): the thread blocks. */
function pauseForTestSync(stage: string, name: string): void {
  if (!pausesAt(stage, Number(NAME.exec(name)![1]))) return;
  fs.writeSync(1, `checkpoint save paused at ${stage}\n`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}
