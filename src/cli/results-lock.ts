// One run at a time writes a results file: `tierlm generate --out` and `tierlm batch --output`
// hold `FILE.lock` (an flock, dropped by the kernel if the run dies) from before they read which
// ids the file has answered until they end. Two runs on one file each read the same finished ids
// and both wrote every result (every id twice).
import fs from 'node:fs';
import path from 'node:path';
import { FileLock, lockRunFile, lockTarget } from '../tensor/disk/lock.js';
import { removeAtExit } from '../schedule/spill-files.js';
import { UserError } from '../util/errors.js';

/** Takes FILE's lock, or refuses naming the flag; returns its release (which deletes the lock file).
 *  The lock file is named after what FILE names (lockTarget: a symbolic link is followed), and the
 *  results file is locked itself as well, so that a run through another hard link to it is refused
 *  too (its `.lock` has another name). A results file not there yet is created (empty) to be
 *  locked: made later by the first result, a hard link to it made then let a second run write it
 *  beside the first. The release (or the run's exit) deletes it again if it is still empty. */
export function lockResults(flag: string, file: string): () => void {
  const before = file === '-' ? null : fs.statSync(file, { throwIfNoEntry: false });
  if (file === '-' || (before && !before.isFile())) return () => {}; // standard output, a pipe, a device
  const lockFile = `${lockTarget(file)}.lock`;
  const lock = lockRunFile(lockFile, `${flag} ${file}`);
  if (!lock) throw new UserError(`${flag} ${file}: another run is writing it (it holds ${lockFile}); wait for it to end, or write to another file`);
  // (a run ended by SIGTERM or Ctrl-C never reaches its release: the file went at exit only)
  const forget = removeAtExit(lockFile);
  const release = () => {
    fs.rmSync(lockFile, { force: true });
    forget();
    lock.release();
  };
  // (made once the run's lock is held: a run refused leaves nothing)
  const created = !before && createEmpty(file);
  const empty = () => fs.statSync(file, { throwIfNoEntry: false })?.size === 0;
  // (a run stopped by SIGTERM or Ctrl-C before its first result leaves no empty file either)
  const forgetEmpty = created ? removeAtExit(file, empty) : () => {};
  const stat = before ?? fs.statSync(file, { throwIfNoEntry: false });
  let own: FileLock | null = null;
  try {
    own = stat ? lockItself(flag, file) : null;
  } catch (e) {
    forgetEmpty();
    release();
    throw e;
  }
  return () => {
    forgetEmpty();
    if (created && empty()) fs.rmSync(file, { force: true });
    own?.release();
    release();
  };
}

/** Creates FILE empty if nothing is there (a dangling symbolic link, a missing directory or a
 *  read-only one: left to the results writer, which names what is wrong); whether it did. */
function createEmpty(file: string): boolean {
  try {
    fs.closeSync(fs.openSync(file, 'wx'));
    return true;
  } catch {
    return false;
  }
}

/** The flock on the results file itself (it exists), which every name of it shares; the file is
 *  only opened, never changed. A file this process cannot open for writing is left unlocked: the
 *  results writer refuses it next, saying so, which a lock error here would not. */
function lockItself(flag: string, file: string): FileLock | null {
  let lock: FileLock | null;
  try {
    lock = FileLock.tryAcquire(file);
  } catch {
    return null;
  }
  if (!lock) {
    throw new UserError(`${flag} ${file}: another run is writing it (under another name: it holds a lock on the file itself); ` +
      'wait for it to end, or write to another file');
  }
  return lock;
}

/** Whether two results files given are one file: the same file (device and inode) when both
 *  exist, else the same name once symbolic links are followed (`DIR/./f` and `DIR/f` included). */
export function sameResultsFile(a: string, b: string): boolean {
  const sa = fs.statSync(a, { throwIfNoEntry: false });
  const sb = fs.statSync(b, { throwIfNoEntry: false });
  if (sa && sb) return sa.dev === sb.dev && sa.ino === sb.ino;
  if (sa || sb) return false;
  return canonical(a) === canonical(b);
}

/** A name of a file that does not exist (yet), as its directory's real path and its own name. */
function canonical(file: string): string {
  const target = lockTarget(file);
  try {
    return path.join(fs.realpathSync(path.dirname(target)), path.basename(target));
  } catch {
    return path.resolve(target);
  }
}
