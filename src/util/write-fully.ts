// Writes that finish or fail naming their file. fs.writeSync may write less than it was given (a
// disk filling up writes what fits, then fails on the rest): a single call left a line half
// written ({"step":32,…,"grad_norm"{"step":33,…}) and the run went on. And a bare ENOSPC or EIO
// does not say which of a run's files it hit.
import fs from 'node:fs';

/** Writes all of `data` to `fd` (at `position`, or at the file's offset), waiting while a
 *  non-blocking pipe is full; an error names `file` and keeps its code (EPIPE: the reader left). */
export function writeFully(fd: number, data: string | Uint8Array, file: string, position?: number): void {
  let buf = typeof data === 'string' ? Buffer.from(data) : data;
  let at = position;
  while (buf.byteLength > 0) {
    let n: number;
    try {
      n = at === undefined ? fs.writeSync(fd, buf) : fs.writeSync(fd, buf, 0, buf.byteLength, at);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
        continue;
      }
      throw namedError(file, 'writing', e);
    }
    buf = buf.subarray(n);
    if (at !== undefined) at += n;
  }
}

/** `e` (a Node fs error) with the file and what was being done in its message, its code kept. */
export function namedError(file: string, doing: string, e: unknown): Error {
  const err = e as NodeJS.ErrnoException;
  if (!err?.code || err.message.includes(file)) return err;
  const named = new Error(`${file}: ${doing} failed: ${err.message}`) as NodeJS.ErrnoException;
  named.code = err.code;
  return named;
}
