// One run at a time writes a results file: `tierlm generate --out` and `tierlm batch --output`
// hold `FILE.lock` (an flock, dropped by the kernel if the run dies) from before they read which
// ids the file has answered until they end. Two runs on one file each read the same finished ids
// and both wrote every result (every id twice).
import fs from 'node:fs';
import { lockRunFile } from '../tensor/disk/lock.js';
import { removeAtExit } from '../schedule/spill-files.js';
import { UserError } from '../util/errors.js';

/** Takes FILE's lock, or refuses naming the flag; returns its release (which deletes the lock file). */
export function lockResults(flag: string, file: string): () => void {
  const stat = file === '-' ? null : fs.statSync(file, { throwIfNoEntry: false });
  if (file === '-' || (stat && !stat.isFile())) return () => {}; // standard output, a pipe, a device
  const lockFile = `${file}.lock`;
  const lock = lockRunFile(lockFile, `${flag} ${file}`);
  if (!lock) throw new UserError(`${flag} ${file}: another run is writing it (it holds ${lockFile}); wait for it to end, or write to another file`);
  // (a run ended by SIGTERM or Ctrl-C never reaches its release: the file went at exit only)
  const forget = removeAtExit(lockFile);
  return () => {
    fs.rmSync(lockFile, { force: true });
    forget();
    lock.release();
  };
}
