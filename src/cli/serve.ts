// `tierlm serve`: the OpenAI-compatible HTTP server (src/server) over one loaded model. SIGTERM or
// Ctrl-C stops accepting connections, lets the requests in flight finish, stops each batch job
// after its lines in flight are written (a restart goes on with it), then exits.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { loadModel } from '../engine/model.js';
import { SERVER_PREFILL_CHUNK } from '../engine/generate.js';
import { policyToJson } from '../policy/policy.js';
import { Store } from '../server/store.js';
import { UserError } from '../util/errors.js';
import { MAX_TIMER_MS } from '../util/timers.js';
import { servedName } from './model-name.js';
import { int } from './parse.js';
import { modelDir, newDir } from './paths.js';
import { type PolicyFlags, type Workload, addPolicyOptions, checkPlanningPaths, fitWorkload, loadOptions, sizeOption } from './policy-options.js';

interface ServeFlags extends PolicyFlags {
  model: string;
  host: string;
  port: number;
  apiKey?: string;
  dataDir?: string;
  servedModelName?: string;
  maxQueue: number;
  bodyLimit: number;
  streamHeartbeat: number;
}

/** Batch API uploads: OpenAI's own limit for a batch input file. */
const FILE_LIMIT = 200 * 1024 * 1024;

/** JSON bodies in flight (received, parsed, or behind a request running) are held to this many
 *  --body-limit's bytes in all, beyond which new ones get 429: --max-queue bodies of up to
 *  --body-limit each (1 GiB by default) were held beside a model planned without them. Two, so
 *  that one body at the limit leaves room for the others. */
const BODY_BUDGET_LIMITS = 2;

/** RAM a body's bytes take while it is in flight, per byte: the bytes as received, the string
 *  decoded from them and the values parsed from it, for the body that parses largest: a list of
 *  one-digit token ids, whose every 2 bytes ("0,") parse to an 8-byte array slot (measured: string
 *  and values 4.98 bytes a byte on the heap; text prompts 1.95, four-digit ids 2.60). 3 was counted,
 *  which such a body doubled. (The joined copy of the bytes, garbage as soon as they are decoded,
 *  is the runtime's allowance's.) */
const BODY_RAM_PER_BYTE = 6;

export function addServeCommand(program: Command): void {
  const cmd = program
    .command('serve')
    .description('serve the model over an OpenAI-compatible HTTP API (completions, chat completions, Batch API)')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .option('--host <host>', 'address to listen on (only this machine by default)', '127.0.0.1')
    .option('--port <port>', 'TCP port (0 = any free one)', int('--port'), 8000)
    .option('--api-key <key>', 'every request but /health and /metrics must send "Authorization: Bearer KEY" (default: $TIERLM_API_KEY; none when unset or empty)')
    .option('--data-dir <dir>', 'where uploaded files and batch jobs are kept (default: ~/.cache/tierlm/serve)')
    .option('--served-model-name <name>', 'the name bodies give as "model" (default: the model directory\'s name)')
    .option('--max-queue <n>', 'sequences of interactive requests in flight (a request counts its prompts × n) beyond which new requests get 429 with Retry-After', int('--max-queue', 1), 256)
    .option('--stream-heartbeat <seconds>', 'a streamed response silent this long (queued, say) sends its headers, if not sent yet, and a keep-alive comment, so that clients and proxies wait; a refusal after that is an error event in the 200 stream (0: never, headers wait for the first token)', int('--stream-heartbeat'), 15)
    // (the default shown as a size: shown as 4194304, it was a value the flag refuses)
    .addOption(new Option('--body-limit <size>', 'largest JSON request body, with a unit (413 beyond); bodies in flight are held to twice it in all (429 beyond), counted in --ram').argParser(sizeOption('--body-limit')).default(4 * 1024 * 1024, '4MiB'));
  addPolicyOptions(cmd).action(async (o: ServeFlags) => runServe(o));
}

async function runServe(o: ServeFlags): Promise<void> {
  if (o.port > 65535) throw new UserError(`--port must be at most 65535, got ${o.port}`);
  if (o.streamHeartbeat * 1000 > MAX_TIMER_MS) throw new UserError(`--stream-heartbeat must be at most ${Math.floor(MAX_TIMER_MS / 1000)} seconds (0 turns it off), got ${o.streamHeartbeat}`);
  const apiKey = apiKeyOf(o.apiKey, process.env.TIERLM_API_KEY);
  modelDir('--model', o.model);
  checkPlanningPaths(o);
  const dataDir = dataDirOf(o.dataDir);
  // Planned for prompts of up to 512 tokens and answers of up to 128 (within the model's positions),
  // run as the scheduler runs them: in chunks beside the decode rows, so a step's workspace is a
  // chunk plus a batch's rows, not a batch of whole prompts.
  // The data directory first: one another server keeps is refused before the model loads.
  const store = new Store(dataDir);
  // The address too: a host that does not resolve (or a port in use) was refused only after the
  // model had loaded, in the resolver's words.
  await checkAddress(o.host, o.port);
  // The request bodies the server may hold at once count against --ram with the model's items.
  const bodyBudget = BODY_BUDGET_LIMITS * o.bodyLimit;
  const work = serverWorkload(o.model, BODY_RAM_PER_BYTE * bodyBudget, `the request bodies in flight, ${BODY_BUDGET_LIMITS} × --body-limit at ${BODY_RAM_PER_BYTE} bytes of RAM a byte`);
  const model = await loadModel(o.model, await loadOptions(o, work));
  const name = servedName(o);
  // Fastify, Ajv and the OpenAI schemas load only for this command: every other command's
  // baseline RSS (which counts against --ram) stays without them.
  const { buildServer } = await import('../server/app.js');
  const { batchConcurrency, engineFor } = await import('../openai/complete.js');
  const server = await buildServer({
    engine: engineFor(model, name), dataDir: store, apiKey, maxQueue: o.maxQueue,
    bodyLimit: o.bodyLimit, bodyBudget, fileLimit: FILE_LIMIT, batchConcurrency: batchConcurrency(model),
    streamHeartbeatMs: o.streamHeartbeat * 1000,
  });
  const address = await server.app.listen({ host: o.host, port: o.port }).catch((e: unknown) => {
    throw addressError(o.host, o.port, e);
  });
  server.jobs.resume();
  process.stderr.write(`tierlm: serving ${name} at ${address} (files and batches in ${dataDir}; ` +
    `gpu batch ${model.policy.gpuBatchSize} × ${model.policy.numGpuBatches} batches)\n`);
  // The placement in the form `--policy FILE` reads, so that a run can be repeated (or `tierlm
  // bench` compared) with the same one.
  process.stderr.write(`tierlm: policy ${JSON.stringify({ policy: policyToJson(model.policy) })}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.stderr.write('tierlm: stopping: finishing the requests in flight\n');
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await server.close();
  await model.scheduler().drain();
  await model.close();
  process.stderr.write('tierlm: stopped\n');
}

/** --data-dir as given: a directory, or a new one in a directory that exists (a typo in a parent
 *  made a whole new tree with an empty store, and the batch jobs the user meant to resume seemed
 *  gone; a file gave the raw ENOTDIR of a mkdir). Only the default, under ~/.cache, is made with
 *  its parents. */
function dataDirOf(given: string | undefined): string {
  if (given === undefined) return path.join(os.homedir(), '.cache', 'tierlm', 'serve');
  newDir('--data-dir', given, true);
  if (fs.existsSync(given)) {
    try {
      fs.accessSync(given, fs.constants.W_OK);
    } catch {
      throw new UserError(`--data-dir ${given}: is not writable`);
    }
  }
  return path.resolve(given);
}

/** Binds HOST:PORT once and lets it go, so that an address the server cannot listen on is refused
 *  before the model loads (the port is free again at once: Node listens with SO_REUSEADDR). */
async function checkAddress(host: string, port: number): Promise<void> {
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', (e) => reject(addressError(host, port, e)));
    probe.listen({ host, port }, () => probe.close(() => resolve()));
  });
}

/** A listen error naming the flags, with what its code means. */
function addressError(host: string, port: number, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  const why: Record<string, string> = {
    ENOTFOUND: 'no such host (it does not resolve)',
    EAI_AGAIN: 'the host does not resolve',
    EADDRNOTAVAIL: 'not an address of this machine',
    EADDRINUSE: 'the port is in use',
    EACCES: 'not allowed (ports below 1024 need privileges)',
  };
  return new UserError(`--host ${host} --port ${port}: ${why[code] ? `${why[code]} (${(e as Error).message})` : (e as Error).message}`);
}

/** The workload a server plans for: prompts of up to 512 tokens, answers of up to 128, prefill in
 *  chunks of SERVER_PREFILL_CHUNK, with `heldBytes` held beside the model. `tierlm batch` plans the
 *  same: planned for a file's largest line instead, one line too big for --ram refused the whole
 *  file, and a line without max_tokens ran to another context than the server's (the default
 *  length is what the block's shape leaves, src/engine/continuous.ts contextUnderLimits); with the
 *  server's shape the answers are the server's, and a line the block cannot hold gets its own
 *  error line (context_length_exceeded) from the engine while the rest run. */
export function serverWorkload(model: string, heldBytes: number, heldWhat: string): Workload {
  return { ...fitWorkload(model, { source: { model }, promptLen: 512, genLen: 128 }), prefillChunk: SERVER_PREFILL_CHUNK, heldBytes, heldWhat };
}

/** The key requests must send: --api-key, else $TIERLM_API_KEY. An empty variable is unset (a
 *  `TIERLM_API_KEY=` left in an environment made a server that took only requests without a key,
 *  and every OpenAI SDK sends one); an empty --api-key, typed, is refused rather than guessed at. */
export function apiKeyOf(flag: string | undefined, env: string | undefined): string | undefined {
  if (flag === '') {
    throw new UserError('--api-key is empty: give the key requests must send, or leave --api-key out (and $TIERLM_API_KEY unset) for a server without one');
  }
  return flag ?? (env === '' ? undefined : env);
}
