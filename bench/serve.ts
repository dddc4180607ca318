// A bounded load test of `tierlm serve` on 127.0.0.1: for each concurrency (1, 8, 32, 64 by
// default) that many clients send streamed /v1/completions in a loop for --duration seconds;
// reported: total tokens/s, time to first chunk and the server's time to first token (median and
// p90; the server's over its last 1000 requests), failed requests, and the
// server's peak RSS, beside `tierlm bench` at the same block shape. With --ram (and --disk-dir,
// default .bench/disk) below the model's size, the model is served with its weights streaming
// from disk. Dummy-weight models are made once under .bench/ (prompts are token ids).
// Then the time to first token of a request arriving during decode (the issue's bound: one decode
// step plus its own prefill): the block's rows but one decode answers of one-token prompts (up to
// --probe-background tokens each, in a loop) while --probes requests of --prompt-len tokens and
// one new token (their latency is their first token, as the client sees it) arrive one at a
// time at random moments.
//
//   node --import tsx bench/serve.ts [--config opt-125m | --model DIR] [--concurrency 1,8,32,64]
//     [--duration 60] [--prompt-len 64] [--max-tokens 32] [--gpu-batch-size 8] [--num-gpu-batches 1]
//     [--probes 100] [--probe-background N (prompt + max tokens)] [--ram 256MiB [--disk-dir DIR]] [--json]
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initModel } from '../src/models/init.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt?: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const json = args.includes('--json');
const levels = opt('--concurrency', '1,8,32,64')!.split(',').map(Number);
const duration = Number(opt('--duration', '60'));
const promptLen = Number(opt('--prompt-len', '64'));
const maxTokens = Number(opt('--max-tokens', '32'));
const probes = Number(opt('--probes', '100'));
// The background's answers reach the positions the bench's own rows reach (prompt + answer), so
// that its decode steps are no longer than the one in the bound.
const probeBackground = Number(opt('--probe-background', String(promptLen + maxTokens)));
const shape = ['--gpu-batch-size', opt('--gpu-batch-size', '8')!, '--num-gpu-batches', opt('--num-gpu-batches', '1')!];
const ram = opt('--ram');
const root = path.resolve(import.meta.dirname, '..');
// The compiled CLI, as users run it (through tsx the loader alone adds ~50 MiB to the peak RSS
// that --ram's allowance is measured against): src/ is compiled first.
execFileSync(process.execPath, [createRequire(import.meta.url).resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
const cliPath = path.join(root, 'bin/tierlm.js');

const config = opt('--config', 'opt-125m')!;
const model = opt('--model') ?? path.resolve('.bench', config);
if (!opt('--model') && !fs.existsSync(path.join(model, 'model.safetensors'))) {
  process.stderr.write(`making ${model} with dummy weights...\n`);
  initModel({ config, out: model, dtype: 'f16', seed: 1 });
}
const limits: string[] = [];
if (ram) {
  const disk = path.resolve(opt('--disk-dir', '.bench/disk')!);
  fs.mkdirSync(disk, { recursive: true });
  limits.push('--ram', ram, '--disk-dir', disk);
}
const vocab = (JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
const modelBytes = fs.readdirSync(model).filter((f) => f.endsWith('.safetensors')).reduce((n, f) => n + fs.statSync(path.join(model, f)).size, 0);

/** The server: its address from stderr, its peak RSS from /proc at the end. */
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tierlm-bench-serve-'));
const server = spawn(process.execPath, [cliPath, 'serve', '--model', model, '--served-model-name', 'bench', '--host', '127.0.0.1', '--port', '0',
  '--data-dir', dataDir, '--max-queue', '1024', ...shape, ...limits], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
let log = '';
const url = await new Promise<string>((resolve, reject) => {
  server.stderr!.on('data', (d: Buffer) => {
    log += d.toString();
    const m = /serving \S+ at (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
    if (m) resolve(m[1]!);
  });
  server.on('exit', (code) => reject(new Error(`tierlm serve exited (${code}): ${log}`)));
});

const peakRss = () => Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${server.pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;

/** A request's prompt: n token ids spread over the vocabulary, different for each seed. */
const promptIds = (seed: number, n: number) => Array.from({ length: n }, (_, j) => 3 + ((seed * 7919 + j * 104729) % (vocab - 3)));

/** One streamed request: its time to first chunk and tokens, or a failure. */
async function one(seed: number, tokensWanted = maxTokens, promptTokens = promptLen): Promise<{ ttft: number; tokens: number } | null> {
  const start = performance.now();
  const prompt = promptIds(seed, promptTokens);
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'bench', prompt, max_tokens: tokensWanted, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200 || !res.body) return null;
  let ttft = -1;
  let tokens = -1;
  let buf = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (ttft < 0) ttft = (performance.now() - start) / 1000;
    buf += Buffer.from(chunk).toString();
    for (let at = buf.indexOf('\n\n'); at >= 0; at = buf.indexOf('\n\n')) {
      const event = buf.slice(0, at).replace(/^data: /, '');
      buf = buf.slice(at + 2);
      if (event === '[DONE]') continue;
      const e = JSON.parse(event) as { usage?: { completion_tokens: number }; error?: unknown };
      if (e.error) return null;
      if (e.usage) tokens = e.usage.completion_tokens;
    }
  }
  return tokens >= 0 ? { ttft, tokens } : null;
}

const q = (xs: number[], p: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]! : NaN);

const rows: Record<string, number>[] = [];
let seed = 0;
for (const c of levels) {
  const end = performance.now() + duration * 1000;
  const ttfts: number[] = [];
  let tokens = 0;
  let failed = 0;
  let done = 0;
  const start = performance.now();
  await Promise.all(Array.from({ length: c }, async () => {
    while (performance.now() < end) {
      const r = await one(seed++).catch(() => null);
      if (!r) failed++;
      else {
        done++;
        tokens += r.tokens;
        ttfts.push(r.ttft);
      }
    }
  }));
  const secs = (performance.now() - start) / 1000;
  // The server's own time to first token (its first sampled token: a model without a tokenizer
  // streams no text before the end, so the client's first chunk can come with the last token).
  const metrics = await (await fetch(`${url}/metrics`)).text();
  const serverQ = (p: number) => Number(new RegExp(`tierlm_time_to_first_token_seconds\\{quantile="${p}"\\} (\\S+)`).exec(metrics)?.[1] ?? NaN);
  rows.push({ concurrency: c, requests: done, failed, tokens_per_second: tokens / secs, ttft_p50_s: q(ttfts, 0.5), ttft_p90_s: q(ttfts, 0.9),
    server_ttft_p50_s: serverQ(0.5), server_ttft_p90_s: serverQ(0.9), seconds: secs });
}

// Requests arriving during decode: rows − 1 background clients keep the block decoding (so a
// slot is free), and one-token probes arrive one at a time, each after a random pause; a probe's
// latency is its first token as the client sees it (HTTP included), and the server reports its
// own in Server-Timing. The background prompts are
// one token and their answers of random lengths, so that the block decodes rather than prefills
// when a probe arrives, and their restarts do not come together.
const probeLatencies: number[] = [];
const probeServerTtfts: number[] = [];
let probeFailed = 0;
/** A probe: a whole (not streamed) one-token request, whose latency is its first token; the
 *  server's own time to it (without HTTP and the client) from its Server-Timing header. */
async function probe(seed: number): Promise<boolean> {
  const prompt = promptIds(seed, promptLen);
  const start = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'bench', prompt, max_tokens: 1, temperature: 0 }),
  });
  await res.arrayBuffer();
  if (res.status !== 200) return false;
  probeLatencies.push((performance.now() - start) / 1000);
  probeServerTtfts.push(Number(/ttft;dur=([\d.]+)/.exec(res.headers.get('server-timing') ?? '')?.[1] ?? NaN) / 1000);
  return true;
}
if (probes > 0) {
  const rowsInBlock = Number(shape[1]) * Number(shape[3]);
  let stop = false;
  const background = Promise.all(Array.from({ length: Math.max(0, rowsInBlock - 1) }, async () => {
    while (!stop) {
      const wanted = Math.ceil(probeBackground * (0.5 + Math.random() / 2));
      if (!(await one(seed++, wanted, 1).catch(() => null))) probeFailed++;
    }
  }));
  await new Promise((r) => setTimeout(r, 2000));
  for (let i = 0; i < probes; i++) {
    await new Promise((r) => setTimeout(r, Math.random() * 100));
    if (!(await probe(seed++).catch(() => false))) probeFailed++;
  }
  stop = true;
  await background;
}

const peak = peakRss();
server.kill('SIGTERM');
await new Promise((r) => server.on('exit', r));
fs.rmSync(dataDir, { recursive: true, force: true });

// `tierlm bench` at the same block shape and placement (the server's, from its log: planned for
// its own workload, which may keep fewer weights in RAM than a plan for these lengths would):
// prompt and generation lengths as the clients'.
const policyFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tierlm-bench-serve-policy-')), 'policy.json');
fs.writeFileSync(policyFile, /tierlm: policy (.*)/.exec(log)?.[1] ?? '{}');
/** `tierlm bench` in the server's placement with these flags: its --json result ({} on failure). */
const tierlmBench = (what: string, flags: string[]): Record<string, number> => {
  const r = spawnSync(process.execPath, [cliPath, 'bench', '--model', model, '--policy', policyFile, ...flags, ...limits, '--json'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) process.stderr.write(`tierlm bench (${what}) failed: ${r.stderr}\n`);
  return r.status === 0 ? (JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>) : {};
};
const benchOut = tierlmBench('the block', ['--prompt-len', String(promptLen), '--gen-len', String(maxTokens), ...shape]);
const offline = benchOut.total_tokens_per_second ?? NaN;
// The TTFT target's bound: one decode step of the block (the block's rows, one token each, at
// `tierlm bench`'s decode rate) plus the request's own prefill: one prompt prefilled alone, in
// the server's placement (bench's batched prefill rate shares each weight pass among the block's
// prompts, which a lone request cannot).
const rowsPerBlock = Number(shape[1]) * Number(shape[3]);
const decodeStep = rowsPerBlock / (benchOut.decode_tokens_per_second ?? NaN);
const ownPrefill = tierlmBench('one prompt', ['--prompt-len', String(promptLen), '--gen-len', '2', '--gpu-batch-size', '1', '--num-gpu-batches', '1']).prefill_seconds ?? NaN;
fs.rmSync(path.dirname(policyFile), { recursive: true, force: true });

const summary = {
  model, model_bytes: modelBytes, ram: ram ?? null, shape: shape.join(' '), prompt_len: promptLen, max_tokens: maxTokens, duration_s: duration,
  peak_rss_bytes: peak, bench_total_tokens_per_second: offline, bench: benchOut, ttft_bound_s: decodeStep + ownPrefill, levels: rows,
  own_prefill_s: ownPrefill, decode_step_s: decodeStep,
  probe: { requests: probeLatencies.length, failed: probeFailed, background_tokens: probeBackground, ttft_p50_s: q(probeLatencies, 0.5), ttft_p90_s: q(probeLatencies, 0.9), ttft_max_s: q(probeLatencies, 1),
    server_ttft_p50_s: q(probeServerTtfts, 0.5), server_ttft_p90_s: q(probeServerTtfts, 0.9), server_ttft_max_s: q(probeServerTtfts, 1),
    ttft_s: probeLatencies, server_ttft_s: probeServerTtfts },
  machine: `${os.cpus()[0]?.model} × ${os.availableParallelism()}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`, date: new Date().toISOString(),
};
if (json) process.stdout.write(JSON.stringify(summary) + '\n');
else {
  process.stdout.write(`${model} (${(modelBytes / 2 ** 20).toFixed(0)} MiB${ram ? `, --ram ${ram}` : ''}), ${shape.join(' ')}, prompt ${promptLen}, ${maxTokens} new tokens, ${duration} s per level\n`);
  process.stdout.write('clients  requests  failed  tokens/s  TTFT p50  TTFT p90\n');
  for (const r of rows) {
    process.stdout.write(`${String(r.concurrency).padStart(7)}  ${String(r.requests).padStart(8)}  ${String(r.failed).padStart(6)}  ${r.tokens_per_second!.toFixed(1).padStart(8)}  ${r.ttft_p50_s!.toFixed(3).padStart(7)}s  ${r.ttft_p90_s!.toFixed(3).padStart(7)}s\n`);
  }
  process.stdout.write(`server peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB; tierlm bench at the same shape: ${offline.toFixed(1)} tokens/s\n`);
  process.stdout.write(`one decode step ${decodeStep.toFixed(3)} s + one prompt's prefill ${ownPrefill.toFixed(3)} s = ${(decodeStep + ownPrefill).toFixed(3)} s (TTFT bound)\n`);
  if (probes > 0) {
    process.stdout.write(`requests arriving during decode (${probeLatencies.length}, ${probeFailed} failed): time to first token p50 ${q(probeLatencies, 0.5).toFixed(3)} s, ` +
      `p90 ${q(probeLatencies, 0.9).toFixed(3)} s, max ${q(probeLatencies, 1).toFixed(3)} s; the server's own (Server-Timing) p50 ` +
      `${q(probeServerTtfts, 0.5).toFixed(3)} s, p90 ${q(probeServerTtfts, 0.9).toFixed(3)} s, max ${q(probeServerTtfts, 1).toFixed(3)} s\n`);
  }
}
