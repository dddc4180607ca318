// A folder of packed weights (weights.bin and its manifest weights.json) that several runs on one
// disk directory share. Runs check, convert and open it one at a time under `convert.lock`, so a
// second run converting the same model waits for the first and then reuses its result. A
// conversion writes `weights.bin.partial`, and the manifest, which marks the folder complete, is
// removed before the new weights.bin is renamed in and written (atomically) after: a conversion
// killed at any point leaves no manifest that matches, and the next run converts again. The
// partial file goes if the run is stopped by a signal (src/schedule/spill-files.ts), and a SIGKILLed
// one's when the next run opens the disk directory (removeDeadConversions).
import fs from 'node:fs';
import path from 'node:path';
import { FileLock } from '../tensor/disk/lock.js';
import { fsyncPath, writeFileDurable } from '../util/atomic.js';
import { removeAtExit } from './spill-files.js';

const LOCK = 'convert.lock';
const PARTIAL = '.partial';

/** Deletes the partial file of every conversion in the disk directory `dir` that no run holds the
 *  lock of (one SIGKILLed midway: it stayed until that model was converted again). */
export function removeDeadConversions(dir: string): void {
  for (const name of fs.readdirSync(dir)) {
    const partial = path.join(dir, name, `weights.bin${PARTIAL}`);
    if (!name.startsWith('weights-') || !fs.existsSync(partial)) continue;
    let lock: FileLock | null;
    try {
      lock = FileLock.tryAcquire(path.join(dir, name, LOCK));
    } catch {
      continue; // not ours to judge
    }
    if (!lock) continue; // a run is converting
    try {
      fs.rmSync(partial, { force: true });
    } catch {
      // another user's
    } finally {
      lock.release();
    }
  }
}

/** Runs `fn` holding the folder's conversion lock, waiting (and saying so once) while another run
 *  holds it. When `fn` fails and leaves the folder holding nothing but the lock (a first conversion
 *  that failed: ENOSPC, a read error), the folder goes too, not to be mistaken for packed weights. */
export async function withWeightsLock<T>(dir: string, log: (msg: string) => void, fn: () => Promise<T>): Promise<T> {
  const lock = await lockFolder(dir, log);
  try {
    return await fn();
  } catch (e) {
    removeIfOnlyLock(dir);
    throw e;
  } finally {
    lock.release();
  }
}

/** The folder's conversion lock. A run that removed the folder (removeIfOnlyLock) leaves a waiting
 *  run no folder, or its lock on the deleted file, which guards nothing: the folder is made again
 *  and the lock taken on the new file. */
async function lockFolder(dir: string, log: (msg: string) => void): Promise<FileLock> {
  const lockFile = path.join(dir, LOCK);
  let said = false;
  for (;;) {
    let lock: FileLock;
    try {
      lock = await FileLock.acquire(lockFile, {
        // The holder may only be checking the manifest, but a wait long enough to notice is a conversion.
        onWait: () => {
          if (!said) log(`waiting for another run that holds ${lockFile} (converting or opening these packed weights)`);
          said = true;
        },
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      fs.mkdirSync(dir, { recursive: true });
      continue;
    }
    if (lock.isCurrent()) return lock;
    lock.release();
  }
}

/** Removes the folder `dir` if it holds only its lock file (called holding the lock). A run that
 *  made a file there meanwhile keeps the folder (rmdir fails); the first error is the one to report. */
function removeIfOnlyLock(dir: string): void {
  try {
    if (fs.readdirSync(dir).some((n) => n !== LOCK)) return;
    fs.rmSync(path.join(dir, LOCK), { force: true });
    fs.rmdirSync(dir);
  } catch {
    // kept: another run's files, or not ours to remove
  }
}

/**
 * Converts into a temporary file with `write` (which must sync it) and publishes it as `file`,
 * then writes `manifest` returned by `write` to `manifestFile` last. Call under withWeightsLock.
 */
export async function publishConverted<M>(file: string, manifestFile: string, write: (partial: string) => Promise<M>): Promise<M> {
  const partial = `${file}${PARTIAL}`;
  fs.rmSync(partial, { force: true }); // left by a conversion that was killed (we hold the lock)
  const forget = removeAtExit(partial);
  let manifest: M;
  try {
    manifest = await write(partial);
  } catch (e) {
    fs.rmSync(partial, { force: true });
    throw e;
  } finally {
    forget();
  }
  // Runs still reading the old weights.bin keep its data through their open descriptors.
  fs.rmSync(manifestFile, { force: true });
  fs.renameSync(partial, file);
  fsyncPath(path.dirname(file));
  writeFileDurable(manifestFile, JSON.stringify(manifest));
  return manifest;
}
