// A sliding window shorter than max_position_embeddings limits a sequence's positions (the window
// is not implemented, so a sequence stays within it): the trainer's over-long error must say so, as
// generation's does, rather than name a limit the config's max_position_embeddings contradicts.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { openTrainer } from '../src/index.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

describe('a sequence past a sliding window', () => {
  it('is refused naming config.json and sliding_window, in step() and evaluate()', async () => {
    const dir = tmpDir('train-window');
    const src = path.join(fixturesDir, 'mistral-tiny');
    for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, sliding_window: 16 }));
    const trainer = await openTrainer(dir);
    try {
      const long = [{ tokenIds: Array.from({ length: 40 }, (_, i) => (i * 7) % 50 + 1) }];
      const want = /sequence 0 has 40 tokens, more than the model's 16 positions \(.*config\.json: sliding_window 16; sliding-window attention is not implemented/;
      await expect(trainer.step([long])).rejects.toThrow(want);
      await expect(trainer.evaluate(long)).rejects.toThrow(want);
      // (within the window it trains)
      const fits = [{ tokenIds: long[0]!.tokenIds.slice(0, 16) }];
      expect((await trainer.step([fits])).loss).toBeGreaterThan(0);
    } finally {
      await trainer.close();
    }
  });
});

describe("openTrainer's offload directory", () => {
  it('a missing one is refused under the API option name, not the CLI flag', async () => {
    const missing = path.join(tmpDir('train-diskdir'), 'absent');
    const err = await openTrainer(path.join(fixturesDir, 'llama-tiny'), { offload: { ram: 64 << 20, diskDir: missing } }).then(() => null, (e: unknown) => e);
    expect(String(err)).toContain(missing);
    expect(String(err)).not.toContain('--disk-dir');
  });
});
