// The spill files (KV cache, activations) of one run in a disk directory that other runs may share,
// and the directories of a training run's model states (`train-<tag>.d`, `train-rank-R-of-N-<tag>.d`).
//
// Each run names its files with a tag of its own, `cache-<pid>-<random>.bin`, and holds an flock on
// `run-<tag>.lock` (src/tensor/disk/lock.ts) while they exist. The files go at close(), and, best
// effort, when the process exits or is stopped by SIGINT / SIGTERM / SIGHUP. A run killed outright
// (SIGKILL, a crash, power loss) cannot clean up, so every run clears what dead runs left when it
// opens the directory: a tag whose lock can be taken has no live owner. The pid in the name is
// only for people reading the directory; liveness comes from the lock, which a reused pid cannot
// fake.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FileLock } from '../tensor/disk/lock.js';

export type SpillKind = 'cache' | 'activations';

const KINDS: readonly SpillKind[] = ['cache', 'activations'];
const TAGGED = /^(?:cache|activations)-(\d+-[0-9a-f]{8})\.bin$|^run-(\d+-[0-9a-f]{8})\.lock$|^(?:train|train-rank-\d+-of-\d+)-(\d+-[0-9a-f]{8})\.d$/;
const CLAIMING = /^run-(\d+)-[0-9a-f]{8}\.lock\.tmp$/;

const spillName = (kind: SpillKind, tag: string): string => `${kind}-${tag}.bin`;
const lockName = (tag: string): string => `run-${tag}.lock`;

export class SpillFiles {
  private lock: FileLock | null;

  private constructor(
    readonly dir: string,
    readonly tag: string,
    lock: FileLock,
  ) {
    this.lock = lock;
  }

  /** Clears what dead runs left in `dir`, then claims a tag for this run. */
  static claim(dir: string): SpillFiles {
    removeStale(dir);
    const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
    // Lock under a temporary name and rename: `run-<tag>.lock` is never seen unlocked while this
    // run lives, so a run clearing the directory at that moment cannot take it for a dead one.
    const claiming = path.join(dir, `${lockName(tag)}.tmp`);
    const lock = FileLock.tryAcquire(claiming);
    if (!lock) throw new Error(`cannot lock ${claiming}: a fresh random name is already locked`);
    try {
      fs.renameSync(claiming, path.join(dir, lockName(tag)));
    } catch (e) {
      lock.release();
      fs.rmSync(claiming, { force: true });
      throw e;
    }
    const files = new SpillFiles(dir, tag, lock);
    live.add(files);
    watchExit();
    return files;
  }

  path(kind: SpillKind): string {
    return path.join(this.dir, spillName(kind, this.tag));
  }

  /** Makes this run's directory `name` (train, or train-rank-R-of-N), deleted with its files. */
  makeDir(name: string): string {
    const dir = path.join(this.dir, `${name}-${this.tag}.d`);
    if (!TAGGED.test(path.basename(dir))) throw new Error(`internal: run directory name ${name}`);
    fs.mkdirSync(dir);
    return dir;
  }

  /** Deletes this run's files and drops its lock (synchronous: it also runs in exit handlers). */
  remove(): void {
    const lock = this.lock;
    if (!lock) return;
    this.lock = null;
    live.delete(this);
    if (live.size === 0 && atExit.size === 0) unwatchExit();
    try {
      removeTag(this.dir, this.tag);
    } finally {
      lock.release();
    }
  }
}

/** A tag's files and directories, its lock file last. */
function removeTag(dir: string, tag: string): void {
  for (const kind of KINDS) fs.rmSync(path.join(dir, spillName(kind, tag)), { force: true });
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // the directory was removed: so is all of it
    throw e;
  }
  for (const name of names) {
    if (name.endsWith(`-${tag}.d`) && TAGGED.exec(name)?.[3] === tag) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
  }
  fs.rmSync(path.join(dir, lockName(tag)), { force: true });
}

/** Deletes the spill files and locks of runs in `dir` that are gone (killed: their lock can be
 *  taken). Called before the free space there is measured too: a killed run's files reserve their
 *  whole block's space, and every rerun planned against what was left was refused. */
export function removeStale(dir: string): void {
  const tags = new Set<string>();
  for (const name of fs.readdirSync(dir)) {
    const m = TAGGED.exec(name);
    if (m) tags.add((m[1] ?? m[2] ?? m[3])!);
    // A claim interrupted between locking and renaming: its lock is gone with the file's rename,
    // so only a dead pid tells it apart from a run claiming right now.
    const c = CLAIMING.exec(name);
    if (c && !pidAlive(Number(c[1]))) fs.rmSync(path.join(dir, name), { force: true });
  }
  for (const tag of tags) {
    let lock: FileLock | null;
    try {
      lock = FileLock.tryAcquire(path.join(dir, lockName(tag)));
    } catch {
      continue; // a lock file we may not open (another user's): not ours to judge
    }
    if (!lock) continue; // its run is alive
    try {
      removeTag(dir, tag);
    } catch {
      // Files we may not delete belong to another user; leave them.
    } finally {
      lock.release();
    }
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // alive, owned by another user
  }
}

// ---- removal at exit ---------------------------------------------------------------------------

const live = new Set<SpillFiles>();
/** Other temporaries of this process (a weights conversion's partial file), removed the same way
 *  (each when its condition, if it has one, holds then). */
const atExit = new Map<string, (() => boolean) | undefined>();
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let watching = false;

/** Deletes `file` (a directory with what it holds) if the process exits or is stopped by SIGINT /
 *  SIGTERM / SIGHUP before the returned function is called (which forgets it): a temporary outside
 *  a run's tag (a weights conversion's partial file, up to the packed model's size, stayed when a
 *  conversion was interrupted; a training checkpoint's save in progress), and only if `onlyIf`
 *  (when given) says so then. A SIGKILLed run's is cleared by the next run's removeStale. */
export function removeAtExit(file: string, onlyIf?: () => boolean): () => void {
  atExit.set(file, onlyIf);
  watchExit();
  return () => {
    atExit.delete(file);
    if (live.size === 0 && atExit.size === 0) unwatchExit();
  };
}

function removeAll(): void {
  for (const f of [...live]) f.remove();
  for (const [f, onlyIf] of [...atExit]) {
    try {
      if (!onlyIf || onlyIf()) fs.rmSync(f, { recursive: true, force: true });
    } catch {
      // (exiting: what cannot be checked or removed stays)
    }
  }
  atExit.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  // Another handler owns the shutdown (it may still be using the files): the 'exit' hook cleans up.
  if (process.listenerCount(signal) > 1) return;
  try {
    removeAll();
  } finally {
    unwatchExit();
    process.kill(process.pid, signal); // no listener now: the default action ends the process
  }
}

function watchExit(): void {
  if (watching) return;
  watching = true;
  process.on('exit', removeAll);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function unwatchExit(): void {
  if (!watching) return;
  watching = false;
  process.off('exit', removeAll);
  for (const s of SIGNALS) process.off(s, onSignal);
}
