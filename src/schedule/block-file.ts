// The file interface schedules use for the disk tier: aligned reads and writes that resolve when
// done. Backed by the native O_DIRECT I/O pool (src/tensor/disk).

export interface BlockFile {
  readonly path: string;
  read(dst: Uint8Array, offset: number): Promise<void>;
  write(src: Uint8Array, offset: number): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

import fs from 'node:fs';

/** Temporary implementation over node:fs (no O_DIRECT) until the native pool is wired in. */
export async function openBlockFile(path: string, mode: 'r' | 'rw' | 'w'): Promise<BlockFile> {
  const fh = await fs.promises.open(path, mode === 'r' ? 'r' : mode === 'w' ? 'w+' : 'r+');
  return {
    path,
    async read(dst, offset) {
      let done = 0;
      while (done < dst.byteLength) {
        const { bytesRead } = await fh.read(dst, done, dst.byteLength - done, offset + done);
        if (bytesRead === 0) {
          dst.fill(0, done);
          break;
        }
        done += bytesRead;
      }
    },
    async write(src, offset) {
      let done = 0;
      while (done < src.byteLength) {
        const { bytesWritten } = await fh.write(src, done, src.byteLength - done, offset + done);
        done += bytesWritten;
      }
    },
    sync: () => fh.sync(),
    close: () => fh.close(),
  };
}

export function alignedBytes(n: number): Uint8Array {
  return new Uint8Array(n);
}
