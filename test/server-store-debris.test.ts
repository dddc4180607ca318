// A server killed in the middle of an upload left its partial file (files/<id>.jsonl.upload-<pid>,
// up to --file-limit bytes) in the data directory for ever: unlisted, so no request could remove
// it; so did a killed durable write's temporary and content whose object was never written. The
// store removes them when it opens the directory, but keeps the files of a batch that goes on.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DISK_FAILED, Store, type StoredBatch } from '../src/server/store.js';
import { tmpDir } from './helpers/fixtures.js';

const fileId = (n: number) => `file-${n.toString(16).padStart(24, '0')}`;
const batchId = (n: number) => `batch_${n.toString(16).padStart(24, '0')}`;

/** A stored batch with only what the store reads of it. */
function batch(n: number, status: string, input: string, outputId: string, errorId: string, code?: string): StoredBatch {
  return {
    batch: { id: batchId(n), status, input_file_id: input, errors: code ? { object: 'list', data: [{ code, message: 'x', param: null, line: null }] } : null },
    outputId, errorId,
  } as unknown as StoredBatch;
}

describe('the data directory a killed server left', () => {
  it('loses the partial uploads, temporaries and objectless content, and keeps the files of batches that go on', () => {
    const dir = tmpDir('store-debris');
    const files = path.join(dir, 'files');
    const batches = path.join(dir, 'batches');
    fs.mkdirSync(files, { recursive: true });
    fs.mkdirSync(batches, { recursive: true });
    const put = (d: string, name: string, text: string) => fs.writeFileSync(path.join(d, name), text);
    const line = '{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"body":{}},"error":null}\n';
    const reserved = (id: string) => JSON.stringify({ id, object: 'file', reserved: true }).padEnd(512);

    // a published input file, which every batch below reads (but the one whose input was deleted)
    const input = fileId(1);
    put(files, `${input}.jsonl`, '{"custom_id":"a"}\n');
    put(files, `${input}.json`, JSON.stringify({ id: input, object: 'file', bytes: 18, created_at: 1, filename: 'in.jsonl', purpose: 'batch', status: 'processed', expires_at: null }));
    // debris: an upload killed midway, a durable write's temporary in each directory, content
    // renamed into place whose object was never written
    put(files, `${fileId(2)}.jsonl.upload-4242`, '{"custom_id":"a"}\n{"cus');
    put(files, `${fileId(3)}.json.tmp-4242`, '{"id":');
    put(batches, `${batchId(9)}.json.tmp-4242`, '{"batch":');
    put(files, `${fileId(4)}.jsonl`, '{"custom_id":"b"}\n');
    // running when the server was killed: output without an object (as an older server left it),
    // errors with a reserved one; the disk failed the second (resumed too): output and reservation
    const running = batch(1, 'in_progress', input, fileId(5), fileId(6));
    put(files, `${fileId(5)}.jsonl`, line + line.slice(0, 20));
    put(files, `${fileId(6)}.jsonl`, line);
    put(files, `${fileId(6)}.json`, reserved(fileId(6)));
    const diskFailed = batch(2, 'failed', input, fileId(7), fileId(8), DISK_FAILED);
    put(files, `${fileId(7)}.jsonl`, line);
    put(files, `${fileId(7)}.json`, reserved(fileId(7)));
    // not resumed: a completed batch whose reservation stayed, one the disk failed whose input
    // was deleted, one failed by the engine
    const completed = batch(3, 'completed', input, fileId(10), fileId(11));
    put(files, `${fileId(10)}.jsonl`, line);
    put(files, `${fileId(10)}.json`, reserved(fileId(10)));
    const inputGone = batch(4, 'failed', fileId(99), fileId(12), fileId(13), DISK_FAILED);
    put(files, `${fileId(12)}.jsonl`, line);
    const engineFailed = batch(5, 'failed', input, fileId(14), fileId(15), 'engine_error');
    put(files, `${fileId(15)}.jsonl`, line);
    for (const b of [running, diskFailed, completed, inputGone, engineFailed]) put(batches, `${b.batch.id}.json`, JSON.stringify(b));
    // not a name of ours: left alone
    put(files, 'README', 'notes\n');

    const store = new Store(dir);
    try {
      expect(fs.readdirSync(files).sort()).toEqual([
        `${input}.json`, `${input}.jsonl`, `${fileId(5)}.jsonl`, `${fileId(6)}.json`, `${fileId(6)}.jsonl`,
        `${fileId(7)}.json`, `${fileId(7)}.jsonl`, 'README',
      ].sort());
      expect(fs.readdirSync(batches).sort()).toEqual([1, 2, 3, 4, 5].map((n) => `${batchId(n)}.json`));
      // the partial output is kept as it was (the resumed job repairs its torn line)
      expect(fs.readFileSync(path.join(files, `${fileId(5)}.jsonl`), 'utf8')).toBe(line + line.slice(0, 20));
      // a reservation is no file to the API
      expect(store.listFiles().map((f) => f.id)).toEqual([input]);
      expect(store.getFile(fileId(6))).toBeNull();
      expect(store.resumes(running) && store.resumes(diskFailed)).toBe(true);
      expect([completed, inputGone, engineFailed].some((b) => store.resumes(b))).toBe(false);
    } finally {
      store.close();
    }
  });
});
