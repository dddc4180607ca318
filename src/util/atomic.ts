// Durable, all-or-nothing file updates: write beside the target, fsync the file, rename over the
// target, fsync the directory. After a crash at any point the target is either the old file or
// the new one, never a mix, and once these return the new one survives a power cut too.

import fs from 'node:fs';
import path from 'node:path';
import { namedError, writeFully } from './write-fully.js';

/** fsync by path: of a file already written and closed (a copy), or of a directory, which makes
 *  its entries (creations, renames, removals) durable. Linux syncs through a read-only fd. */
export function fsyncPath(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `data` to `file` durably; without `atomic` the caller guarantees no reader sees it
 *  half written (it is inside a directory that is renamed into place later). */
export function writeFileDurable(file: string, data: string | Uint8Array, atomic = true): void {
  const tmp = atomic ? `${file}.tmp-${process.pid}` : file;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeFully(fd, data, file);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    if (!atomic) return;
    fs.renameSync(tmp, file);
  } catch (e) {
    // (a full or read-only disk: the file keeps its old content, and no temporary is left beside it)
    if (atomic) fs.rmSync(tmp, { force: true });
    throw namedError(file, 'writing', e);
  }
  fsyncPath(path.dirname(file));
}
