// One run at a time writes a results file: `tierlm generate --out` and `tierlm batch --output`
// hold `FILE.lock` (an flock, dropped by the kernel if the run dies) from before they read which
// ids the file has answered until they end. Two runs on one file each read the same finished ids
// and both wrote every result (every id twice).
import fs from 'node:fs';
import { FileLock } from '../tensor/disk/lock.js';
import { UserError } from '../util/errors.js';

/** Takes FILE's lock, or refuses naming the flag; returns its release (which deletes the lock file). */
export function lockResults(flag: string, file: string): () => void {
  const stat = file === '-' ? null : fs.statSync(file, { throwIfNoEntry: false });
  if (file === '-' || (stat && !stat.isFile())) return () => {}; // standard output, a pipe, a device
  const lockFile = `${file}.lock`;
  for (let attempt = 0; attempt < 3; attempt++) {
    let lock: FileLock | null;
    try {
      lock = FileLock.tryAcquire(lockFile);
    } catch (e) {
      throw new UserError(`${flag} ${file}: cannot create its lock file ${lockFile} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    if (!lock) throw new UserError(`${flag} ${file}: another run is writing it (it holds ${lockFile}); wait for it to end, or write to another file`);
    if (!lock.isCurrent()) {
      lock.release(); // the file a finishing run just deleted: take the new one
      continue;
    }
    return () => {
      fs.rmSync(lockFile, { force: true });
      lock.release();
    };
  }
  throw new UserError(`${flag} ${file}: cannot hold its lock file ${lockFile}: other runs keep replacing it`);
}
