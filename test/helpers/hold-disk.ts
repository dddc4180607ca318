// A stand-in for another run on a shared disk directory, for test/shared-disk-dir.test.ts. Run with
// `node --import tsx test/helpers/hold-disk.ts MODE PATH`:
//   tier DIR   opens a disk tier in DIR and prints its spill files as JSON
//   exit DIR   the same, then exits with code 7 without closing it
//   lock FILE  takes the lock FILE (a weights folder's convert.lock) and prints {"locked": FILE}
//   train DIR  makes a training run's state directory in DIR, a file in it, and prints {"states": path}
//   convert DIR  starts converting packed weights in DIR/weights-held (the folder's lock held, its
//              partial file written) and prints {"partial": path}
// then (but for exit) waits until it is killed.
import fs from 'node:fs';
import path from 'node:path';
import { DiskTier } from '../../src/schedule/disk-tier.js';
import { SpillFiles } from '../../src/schedule/spill-files.js';
import { publishConverted, withWeightsLock } from '../../src/schedule/weights-dir.js';
import { FileLock } from '../../src/tensor/disk/lock.js';

const [mode, target] = process.argv.slice(2);
if (mode === 'tier' || mode === 'exit') {
  const tier = await DiskTier.open(target);
  console.log(JSON.stringify({ cache: tier.cacheFile.path, act: tier.actFile.path }));
  if (mode === 'exit') process.exit(7);
} else if (mode === 'train') {
  const states = SpillFiles.claim(target!).makeDir('train');
  fs.writeFileSync(path.join(states, 'param.bin'), Buffer.alloc(4096));
  console.log(JSON.stringify({ states }));
} else if (mode === 'convert') {
  const folder = path.join(target!, 'weights-held');
  fs.mkdirSync(folder, { recursive: true });
  void withWeightsLock(folder, () => {}, () => publishConverted(path.join(folder, 'weights.bin'), path.join(folder, 'weights.json'), async (partial) => {
    fs.writeFileSync(partial, Buffer.alloc(4096));
    console.log(JSON.stringify({ partial }));
    return new Promise<never>(() => {}); // converting until killed
  }));
} else if (mode === 'lock') {
  if (!FileLock.tryAcquire(target!)) process.exit(3); // held until this process dies
  console.log(JSON.stringify({ locked: target }));
} else {
  throw new Error(`hold-disk: unknown mode ${mode}`);
}
setInterval(() => {}, 1 << 30);
