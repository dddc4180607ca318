// Exclusive locks on files of a shared disk directory (native/napi/lock.cpp: flock). A lock is held
// by an open descriptor, so the kernel drops it when its holder exits or is killed: a lock that can
// be taken proves its last holder is gone, which a pid in a file name cannot (pids are reused).
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { nativeFn } from '../../backend/cpu/addon.js';
import { UserError } from '../../util/errors.js';

const tryLock = (path: string): number | null => nativeFn<(p: string) => number | null>('fileLockTry')(path);
const releaseLock = (fd: number): void => nativeFn<(fd: number) => void>('fileLockRelease')(fd);

export interface AcquireOptions {
  /** Called once, when the lock is held by another process (or another open in this one) and we start waiting. */
  onWait?: () => void;
  /** How often to try again (default 100 ms). */
  pollMs?: number;
}

export class FileLock {
  private fd: number | null;

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd;
  }

  /** Takes the lock on `path` (created if missing) now, or returns null if someone holds it. */
  static tryAcquire(path: string): FileLock | null {
    const fd = tryLock(path);
    return fd === null ? null : new FileLock(path, fd);
  }

  /** Takes the lock, waiting (without blocking the event loop) while someone else holds it. */
  static async acquire(path: string, options: AcquireOptions = {}): Promise<FileLock> {
    let waited = false;
    for (;;) {
      const lock = FileLock.tryAcquire(path);
      if (lock) return lock;
      if (!waited) options.onWait?.();
      waited = true;
      await sleep(options.pollMs ?? 100);
    }
  }

  get held(): boolean {
    return this.fd !== null;
  }

  /** Whether `path` still names the file this lock is on. A holder that deletes its lock file
   *  when done leaves a moment where another process can lock the deleted file: a lock taken that
   *  way guards nothing, and is taken again on the new file. */
  isCurrent(): boolean {
    if (this.fd === null) return false;
    try {
      return fs.statSync(this.path).ino === fs.fstatSync(this.fd).ino;
    } catch {
      return false;
    }
  }

  /** Drops the lock (the file stays); releasing twice is a no-op. */
  release(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    releaseLock(fd);
  }
}

/** The path whose `.lock` guards `target` (a results file, a training output): `target` as typed,
 *  or, when its last component is a symbolic link, what the link names (followed to the end).
 *  Two runs must collide on one lock file whatever name each gave: a lock named after the link
 *  let a run through `alias -> out` write beside a run on `out` (every result twice; a training
 *  run deleting the other's checkpoint in progress). Symbolic links higher up need nothing: the
 *  kernel resolves `DIR/NAME.lock` through them to the one directory, so the common case keeps
 *  the documented name. Hard links to a results file are caught by locking the file itself
 *  (src/cli/results-lock.ts). */
export function lockTarget(target: string): string {
  // `run/` names `run` (and `alias/` would follow the link in lstat, hiding it)
  let p = target.length > 1 ? target.replace(/\/+$/, '') || '/' : target;
  const typed = p;
  for (let hops = 0; hops < 40; hops++) {
    let link: string;
    try {
      if (!fs.lstatSync(p).isSymbolicLink()) break;
      link = fs.readlinkSync(p);
    } catch {
      break; // nothing there (yet), or unreadable: the run's own checks name it
    }
    // Joined as a string, not path.resolve: a `..` is the kernel's to resolve, through links.
    p = path.isAbsolute(link) ? link : `${path.dirname(p)}/${link}`;
  }
  if (p === typed) return typed;
  // Shown in refusals and left for a later run to find: the clean name of what was followed to.
  try {
    return fs.realpathSync(p);
  } catch {
    try {
      return path.join(fs.realpathSync(path.dirname(p)), path.basename(p));
    } catch {
      return p;
    }
  }
}

/** The lock on `file`, a lock file a run deletes when it ends (a results file's, a training
 *  output's), or null when another process holds it. A lock taken on the file a finishing holder
 *  just deleted guards nothing: it is dropped and taken again on the new file. `what` names what
 *  the lock guards in the errors. */
export function lockRunFile(file: string, what: string): FileLock | null {
  for (let attempt = 0; attempt < 3; attempt++) {
    let lock: FileLock | null;
    try {
      lock = FileLock.tryAcquire(file);
    } catch (e) {
      throw new UserError(`${what}: cannot create its lock file ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    if (!lock || lock.isCurrent()) return lock;
    lock.release();
  }
  throw new UserError(`${what}: cannot hold its lock file ${file}: other runs keep replacing it`);
}
