// Run by test/memory-limit.test.ts with --expose-gc: rounds of a "block" (large buffers, native
// aligned and ArrayBuffer, as a generation block's cache staging) allocated, touched and dropped,
// each followed by small buffers that stay alive (as a server's requests leave behind). Prints the
// RSS after each round once the collector has freed the block, and the bytes kept alive.
const fs = require('node:fs');
const path = require('node:path');

const addon = require(path.join(__dirname, '../../build/Release/tierlm.node'));
const MiB = 2 ** 20;
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
const touch = (ab) => {
  new Uint8Array(ab).fill(1);
  return ab;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  const rounds = [];
  const kept = [];
  for (let round = 0; round < 6; round++) {
    const block = [addon.alignedBuffer(16 * MiB), new ArrayBuffer(16 * MiB), addon.alignedBuffer(8 * MiB), new ArrayBuffer(8 * MiB)].map(touch);
    for (let i = 0; i < 8; i++) kept.push(touch(new ArrayBuffer(256 * 1024)), touch(addon.alignedBuffer(256 * 1024)));
    block.length = 0;
    // Backing stores and native finalizers are released after the collection, not in it.
    for (let i = 0; i < 5; i++) {
      global.gc();
      await sleep(20);
    }
    rounds.push(rss());
  }
  process.stdout.write(JSON.stringify({ rounds, keptPerRound: 16 * 256 * 1024 }));
})();
