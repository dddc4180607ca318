// The file interface schedules use for the disk tier: aligned O_DIRECT reads and writes on the
// native I/O threads (src/tensor/disk), resolving when done.

import { DirectFile, type TransferOptions, alignedBytes as nativeAligned } from '../tensor/disk/io.js';

export interface BlockFile {
  readonly path: string;
  read(dst: Uint8Array, offset: number, options?: TransferOptions): Promise<void>;
  write(src: Uint8Array, offset: number, options?: TransferOptions): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
  /** Reserves the file's first `bytes` bytes on disk, so that the writes a block plans cannot meet
   *  a full disk midway (a disk that is short fails here, before the block's work, naming the
   *  file), and gives back what an earlier, larger block reserved past them: the cache and the
   *  activation files each kept their largest block's, and together passed --disk. */
  reserve(bytes: number): void;
}

export async function openBlockFile(path: string, mode: 'r' | 'rw' | 'w'): Promise<BlockFile> {
  const f = DirectFile.open(path, mode);
  let reserved = 0;
  return {
    path,
    read: (dst, offset, options) => f.read(dst, offset, options),
    write: (src, offset, options) => f.write(src, offset, options),
    sync: () => f.sync(),
    close: async () => f.close(),
    reserve: (bytes) => {
      if (bytes === reserved) return;
      if (bytes < reserved) f.truncate(bytes);
      else f.allocate(bytes);
      reserved = bytes;
    },
  };
}

/** A zero-filled buffer outside the JavaScript heap, 4096-byte aligned for O_DIRECT. */
export function alignedBytes(n: number): Uint8Array {
  return nativeAligned(n);
}
