// Messages a job holds (error lines waiting behind a request, refusals in the engine's queue,
// train's skipped-line messages) name the value or key at fault in at most 100 characters, in
// strings of their own: quoted whole, or cut as a V8 slice (a view of the whole value), each
// kept a value of up to a line's length alive, and runs went to 330-630 MiB under limits of
// 152-176 MiB. And under --ram, the garbage of long lines is collected before it piles up.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { promptIds } from '../src/engine/requests.js';
import { checkBody } from '../src/openai/validate.js';
import { ApiError } from '../src/openai/errors.js';
import { RUNTIME_OVERHEAD_BYTES } from '../src/policy/memory.js';
import { excerpt, illFormedField, shortName } from '../src/util/text.js';
import { cliPeak } from './helpers/cli.js';
import { fixturesDir, readJsonl, tmpDir } from './helpers/fixtures.js';

const MiB = 2 ** 20;
const long = 'k'.repeat(300_000);

describe('held messages name long values and keys briefly', () => {
  it('excerpt, shortName and the messages built from them stay short', () => {
    expect(excerpt(long)).toMatch(/^"k{99}… \(300002 characters\)$/);
    expect(shortName(long)).toMatch(/^k{100}… \(300000 characters\)$/);
    expect(shortName('top_p')).toBe('top_p');
    const bad = illFormedField({ text: { [long]: 'x\ud800' } });
    expect(bad!.field).toMatch(/^text\.k{100}… \(300000 characters\)$/);
    const ids = promptIds({ id: 'a', promptTokenIds: [5, long as unknown as number] }, null, 100);
    expect(ids).toMatch(/^promptTokenIds\[1\] = "k{99}… \(300002 characters\) is not a token id in \[0, 100\)$/);
    let e: unknown;
    try {
      checkBody('/v1/completions', { model: 'm', prompt: 'x', [long]: 1 });
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).message.length).toBeLessThan(200);
    expect((e as ApiError).param).toMatch(/^k{100}… \(300000 characters\)$/);
  });

  // 200 Batch API lines, each naming an unknown argument by a 1 MB key: JSON.parse interns keys,
  // and their dead copies piled up (the scan and the run read each line) until V8's own heap
  // limit, ~470 MB, collected them: 593 MiB against 176.
  it('tierlm batch --ram 48MiB reading lines with 1 MB keys stays within the limit', () => {
    const dir = tmpDir('long-keys-batch');
    const input = path.join(dir, 'in.jsonl');
    const fd = fs.openSync(input, 'w');
    for (let i = 0; i < 200; i++) {
      fs.writeSync(fd, JSON.stringify({ custom_id: `c${i}`, method: 'POST', url: '/v1/completions', body: { model: 'm', prompt: [5, 6], [`${'k'.repeat(1_000_000)}${i}`]: 1 } }) + '\n');
    }
    fs.closeSync(fd);
    const out = path.join(dir, 'out.jsonl');
    const r = cliPeak(['batch', '--model', path.join(fixturesDir, 'opt-tiny'), '--served-model-name', 'm', '--input', input, '--output', out, '--ram', '48MiB',
      '--disk-dir', dir, '--threads', '1']);
    expect(r.code, r.stderr).toBe(2);
    const lines = readJsonl<{ custom_id: string; response: { status_code: number; body: { error: { param: string } } } }>(out);
    expect(lines).toHaveLength(200);
    expect(lines[0]!.response.body.error.param).toMatch(/^k{100}… \(1000001 characters\)$/);
    expect(r.peakRssBytes).toBeLessThanOrEqual(48 * MiB + RUNTIME_OVERHEAD_BYTES);
  });
});
