// The public entry point for generation: load a model directory, then generate for batches of
// requests. Weights, KV cache and activations are placed by a policy (all in RAM by default).

import os from 'node:os';
import { type Backend, type ComputeMode, cpuBackend, referenceBackend, setThreads } from '../backend/index.js';
import { TextTokenizer, tokenizerRamBytes } from '../formats/tokenizer.js';
import type { ModelConfig } from '../models/config.js';
import { openModel } from '../models/load.js';
import { Transformer } from '../models/transformer.js';
import { type Policy, cacheDtypeOf, policyFromOptions, shares } from '../policy/policy.js';
import { checkKeys, optionName } from '../util/names.js';
import { checkApiValue, givenOnly } from '../util/options.js';
import { BlockRunner } from '../schedule/runner.js';
import { selectBf16Kernel } from '../backend/cpu/bf16-kernel.js';
import { applySavedGemmBlocking, savedBf16Kernel } from '../policy/profile.js';
import { type LayerSource, ResidentLayers, WeightStore, planSlotBytes } from '../schedule/weight-store.js';
import { type BlockShape, type Limits, type MemoryItem, type WeightSizes, blockItems, checkLimits, packedFileBytes, weightItems } from '../policy/memory.js';
import { DiskTier } from '../schedule/disk-tier.js';
import { type GenerateOptions, type GenerateParams, type GenerateStats, Generator, cacheBytesPerElement, resolveParams, stopIdsOutside } from './generate.js';
import { Scheduler } from './scheduler.js';
import { type OpenedBlock, RunnerLock } from './continuous.js';
import type { GenerationRequest, GenerationResult, RequestError, RequestNames } from './requests.js';

/** Share of this machine's memory a block may take when no RAM limit is set (as planning assumes). */
const MACHINE_RAM_SHARE = 0.8;

export interface LoadOptions {
  /** 'fp32' (default) reproduces the model's float32 results; 'bf16' rounds activations to bf16 for
   *  speed. The same as `policy.precision`. */
  precision?: ComputeMode;
  /** 'cpu' (default, native kernels) or 'reference' (plain TypeScript, slow). */
  backend?: 'cpu' | 'reference' | Backend;
  /** Compute threads (default: every core). */
  threads?: number;
  /** Placement and schedule (default: everything in RAM, zig-zag). */
  policy?: Partial<Policy>;
  /** Directory of the disk tier; needed when the policy puts anything on disk. */
  diskDir?: string;
  /** Capacity of the disk tier in bytes (checked before anything is written). */
  diskBytes?: number;
  /** RAM limit in bytes: a hard limit, checked before loading and before a block opens. */
  ramBytes?: number;
  /** Compute-device memory. On a CPU-only machine the device is RAM: device shares count against ramBytes. */
  deviceBytes?: number;
  /** Where to say what loading waits for (another run converting the weights in the disk directory),
   *  and a generate() call that ran blocks of fewer rows than its shape. Default: stderr. */
  log?: (msg: string) => void;
  /** Requests the run will have (a batch job's lines), when known: the smallest block it can open
   *  (that many rows at most, one position) is checked against the limits before anything loads,
   *  not when the first block opens. */
  requests?: number;
  /** RAM the caller holds beside the model while it runs (a job's request ids), in bytes: counted
   *  against ramBytes with the model's own items. */
  heldBytes?: number;
  /** What heldBytes is, as a refusal names it (default: "RAM held beside the model (heldBytes)"). */
  heldWhat?: string;
}

/** The longest request a run will have, as far as is known before it runs (its prompt's tokens
 *  counted; a text prompt's, not known, as one): the policy's block must hold it. @internal the CLI's. */
export interface LongestRequest {
  id: string;
  promptTokens: number;
  newTokens: number;
  /** promptTokens is only a lower bound (a text prompt, not yet encoded). */
  promptAtLeast?: boolean;
}

/** Blocks a model's calls have opened: how many of each shape, and of fewer rows than their call's
 *  shape (for a request that shape did not hold within the memory limits). */
export interface BlocksRun {
  shapes: { rows: number; batches: number; blocks: number }[];
  smaller: number;
}

export const LOAD_KEYS = ['precision', 'backend', 'threads', 'policy', 'diskDir', 'diskBytes', 'ramBytes', 'deviceBytes', 'log', 'requests', 'heldBytes', 'heldWhat'] as const;

/** The LoadOptions fields of a larger options object (a benchmark's, say). */
export function loadOptionsOf(o: LoadOptions): LoadOptions {
  return Object.fromEntries(LOAD_KEYS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
}

export class LanguageModel {
  private closed = false;
  private sched: Scheduler | null = null;
  /** One block open on the runner at a time (the scheduler's, or a generate() call's); it hears
   *  of each block opened. */
  private readonly lock = new RunnerLock((b) => this.noteBlock(b));
  /** Blocks opened, by "rows × batches". */
  private readonly shapesRun = new Map<string, { rows: number; batches: number; blocks: number }>();
  /** Blocks of fewer rows than their call's shape, and the last one's reason. */
  private smallerRun = 0;
  private lastSmaller: OpenedBlock['smaller'] = null;

  private constructor(
    readonly config: ModelConfig,
    readonly transformer: Transformer,
    /** Where each layer's weights come from (resident, or across tiers). */
    readonly layers: LayerSource,
    private readonly runner: BlockRunner,
    readonly policy: Policy,
    /** Token ids EOS stops at (stopAtEos): generation_config.json's (else config.json's) and the
     *  tokenizer's eos_token (withTokenizerEos). */
    readonly eosTokenIds: number[],
    readonly tokenizer: TextTokenizer | null,
    readonly precision: ComputeMode,
    private readonly disk: DiskTier | null,
    private readonly weightMemory: MemoryItem[],
    readonly limits: Limits,
    private readonly log: (msg: string) => void,
  ) {}

  /** `longest`: the run's longest request, when known (the CLI's jobs): see checkSmallestBlock. */
  static async load(dir: string, options: LoadOptions = {}, longest?: LongestRequest): Promise<LanguageModel> {
    checkKeys(options, LOAD_KEYS, 'loadModel() options');
    const given = options.precision;
    if (given !== undefined && given !== 'fp32' && given !== 'bf16') throw new RangeError(`precision must be "fp32" or "bf16", got ${JSON.stringify(given)}`);
    if (given !== undefined && options.policy?.precision !== undefined && options.policy.precision !== given) {
      throw new RangeError(`precision "${given}" and policy.precision "${options.policy.precision}" disagree; give one of them`);
    }
    if (options.threads !== undefined) checkApiValue('threads', options.threads);
    if (options.requests !== undefined && !(Number.isSafeInteger(options.requests) && options.requests >= 1)) {
      throw new RangeError(`requests must be an integer >= 1, got ${JSON.stringify(options.requests)}`);
    }
    if (options.heldBytes !== undefined && !(Number.isSafeInteger(options.heldBytes) && options.heldBytes >= 0)) {
      throw new RangeError(`heldBytes must be an integer >= 0, got ${JSON.stringify(options.heldBytes)}`);
    }
    if (options.heldWhat !== undefined && typeof options.heldWhat !== 'string') throw new TypeError(`heldWhat must be a string, got ${typeof options.heldWhat}`);
    for (const k of ['diskBytes', 'ramBytes', 'deviceBytes'] as const) {
      const v = options[k];
      if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0)) throw new RangeError(`${k} must be a whole number of bytes, got ${JSON.stringify(v)}`);
    }
    // The policy carries the precision (a policy file records what was planned); `precision` sets it too.
    const policy = policyFromOptions(given === undefined ? options.policy : { ...options.policy, precision: given });
    const precision = policy.precision;
    const b = options.backend;
    if (b !== undefined && b !== 'cpu' && b !== 'reference' && !(typeof b === 'object' && b !== null && 'kernels' in b)) {
      throw new TypeError(`backend must be 'cpu', 'reference' or a Backend, got ${JSON.stringify(b)}`);
    }
    const backend = typeof b === 'object' ? b : b === 'reference' ? referenceBackend() : cpuBackend();
    if (options.threads !== undefined) setThreads(options.threads);
    const model = openModel(dir, backend, precision, policy.compressWeight);
    try {
      const c = model.config;
      // bf16 mode runs the faster of the CPU's two bf16 GEMM kernels: the one `tierlm profile`
      // chose for this machine, else the one first measured on it; TIERLM_BF16_DOT overrides both.
      if (precision === 'bf16' && backend.kernels === cpuBackend().kernels) {
        selectBf16Kernel({ rows: Math.max(64, policy.gpuBatchSize), n: c.ffn, k: c.hidden }, null, savedBf16Kernel());
      }
      // How a decode step at batch 15-16 blocks its rows (one block or two) and whether prefill
      // widens bf16/f16 panel groups once (speed only, the same results), as `tierlm profile`
      // measured it here; without a profile, the defaults. A profile that exists but is not used
      // (not readable, or measured on another CPU) is said once, here (the bf16 choice above read
      // the same file), on stderr by default: nothing else would say that its choices were passed over.
      const log = options.log ?? ((m: string) => process.stderr.write(`tierlm: ${m}\n`));
      if (backend.kernels === cpuBackend().kernels) applySavedGemmBlocking(undefined, log);
      const limits: Limits = { ram: options.ramBytes, disk: options.diskBytes, device: options.deviceBytes };
      const sizes = model.loader.sizes();
      const weightSizes: WeightSizes = {
        layerBytes: sizes.layers.map((l) => l.reduce((n, m) => n + m.bytes, 0)),
        fileBytes: packedFileBytes(sizes.layers),
        slotBytes: planSlotBytes(sizes.layers, shares(policy, 'weights'), policy.sepLayer ? 'attn' : 'all'),
        globalBytes: sizes.globalBytes,
        chunkBytes: sizes.chunkBytes,
        packedChunkBytes: sizes.packedChunkBytes,
        tokenizerBytes: tokenizerRamBytes(dir),
        heldBytes: options.heldBytes,
        heldWhat: options.heldWhat,
      };
      const wItems = weightItems(weightSizes, policy, shares(policy, 'weights').disk > 0);
      checkLimits(wItems, limits, `the weights of ${dir}`);
      if (options.requests !== undefined || longest) checkSmallestBlock(c, policy, wItems, limits, options.requests ?? 1, longest);
      const needsDisk = shares(policy, 'weights').disk > 0 || shares(policy, 'cache').disk > 0 || shares(policy, 'activations').disk > 0;
      const disk = needsDisk ? await DiskTier.open(options.diskDir, options.diskBytes) : null;
      try {
        const wShares = shares(policy, 'weights');
        const layers = wShares.disk > 0
          ? await WeightStore.open(model.loader, c, backend, precision, wShares, disk!.weightsDir(dir, precision + (policy.compressWeight ? '-q4' : '')), model.sourceFiles, log)
          : new ResidentLayers(model.loader, c);
        const transformer = new Transformer(c, backend, model.loader.globals(), policy.attnSparsity);
        const runner = new BlockRunner(transformer, layers, policy, { cache: disk?.cacheFile ?? null, act: disk?.actFile ?? null });
        const tokenizer = TextTokenizer.load(dir);
        return new LanguageModel(c, transformer, layers, runner, policy, withTokenizerEos(model.eosTokenIds, tokenizer), tokenizer, precision, disk, wItems, limits, log);
      } catch (e) {
        await disk?.close(); // a load that fails leaves no spill files or run lock behind
        throw e;
      }
    } finally {
      model.close();
    }
  }

  /** Bytes placed on each tier and moved so far. */
  get placement() {
    return { weights: this.layers.stats, weightStagingBytes: this.runner.weightStagingBytes, keptCacheBytes: this.runner.keptCacheBytes, io: this.runner.io };
  }

  /** The blocks this model's calls have opened so far (the shapes that ran, which are the
   *  policy's only while its block holds the requests within the memory limits). */
  get blocksRun(): BlocksRun {
    return { shapes: [...this.shapesRun.values()].map((x) => ({ ...x })), smaller: this.smallerRun };
  }

  private noteBlock(b: OpenedBlock): void {
    const key = `${b.rows} × ${b.batches}`;
    const seen = this.shapesRun.get(key);
    if (seen) seen.blocks++;
    else this.shapesRun.set(key, { rows: b.rows, batches: b.batches, blocks: 1 });
    if (b.smaller) [this.smallerRun, this.lastSmaller] = [this.smallerRun + 1, b.smaller];
  }

  /** Results in input order, each as soon as it and those before it have finished (`order: 'finish'`:
   *  each as soon as it has finished; ids tell them apart). Requests that cannot run
   *  (bad prompt, too long) yield `{id, error}` and the rest still run. `stats` (if given) is
   *  filled with timings. Bad params, and a call after close(), throw here, before iteration. */
  generate(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, params: GenerateOptions = {},
    stats?: GenerateStats): AsyncGenerator<GenerationResult | RequestError> {
    return this.generateNamed(requests, params, stats, 'api');
  }

  /** generate(), with request fields named in messages as `names` says (JSONL keys for batch jobs). */
  generateNamed(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, params: GenerateOptions,
    stats: GenerateStats | undefined, names: RequestNames): AsyncGenerator<GenerationResult | RequestError> {
    if (this.closed) throw new Error('generate() was called after close(): load the model again');
    const p = this.resolve(params);
    const g = this.generator();
    const before = this.smallerRun;
    const ended = () => this.saySmaller(this.smallerRun - before);
    return (async function* () {
      try {
        yield* g.generate(requests, p, names);
      } finally {
        if (stats) Object.assign(stats, g.stats);
        ended();
      }
    })();
  }

  /** Says once, at the end of a call, that `n` of its blocks had fewer rows than its shape (the
   *  run was that much slower, and nothing else said why). */
  private saySmaller(n: number): void {
    const why = this.lastSmaller;
    if (n <= 0 || !why) return;
    const [them, they] = n > 1 ? ['requests', 'they'] : ['a request', 'it'];
    this.log(`${n} block${n > 1 ? 's' : ''} ran with fewer rows than ${why.shape} (gpu batch size × batches), for ${them} that a block of ` +
      `that shape does not hold within the memory limits (the last, "${why.id}", needs ${why.positions} positions): ${they} ran slower; ` +
      `a smaller shape, or limits that hold ${n > 1 ? 'them' : 'it'}, run ${n > 1 ? 'them' : 'it'} at full width`);
  }

  /** The continuous-batching scheduler of this model, created on the first call (a second call
   *  returns the same one, and its params are checked, then ignored). `params` are the defaults
   *  each request may override. Bad params, and a call after close(), throw. */
  scheduler(params: GenerateOptions = {}): Scheduler {
    if (this.closed) throw new Error('scheduler() was called after close(): load the model again');
    // Checked on every call, though only the first call's are used: a bad value is never silent.
    const p = this.resolve(params);
    this.sched ??= new Scheduler(this.generator(), p);
    return this.sched;
  }

  /** Full params of a call: the policy's block shape and cache type unless the call sets them. */
  private resolve(params: GenerateOptions): GenerateParams {
    // compress_cache stores the KV cache 4-bit: a call asking for f32 or f16 contradicts it (it
    // was overridden silently, so a run meant to compare against an f32 cache compared q4 with q4).
    const cache = this.policy.compressCache ? { cacheDtype: 'q4' as const } : {};
    const given = givenOnly(params);
    if (given.cacheDtype === 'auto') delete given.cacheDtype;
    if (this.policy.compressCache && (given.cacheDtype === 'f32' || given.cacheDtype === 'f16')) {
      throw new RangeError(`cacheDtype "${given.cacheDtype}" contradicts the model's policy.compressCache (a 4-bit KV cache): ` +
        'leave cacheDtype out (or give "q4"), or load the model without compressCache');
    }
    const p = resolveParams({ batchSize: this.policy.gpuBatchSize, numGpuBatches: this.policy.numGpuBatches, cacheDtype: cacheDtypeOf(this.policy), ...given, ...cache });
    const outside = stopIdsOutside(p.stopTokenIds, this.config.vocabSize, optionName('stopTokenIds'));
    if (outside) throw new RangeError(outside);
    return p;
  }

  private generator(): Generator {
    return new Generator({
      config: this.config, transformer: this.transformer, runner: this.runner, eosTokenIds: this.eosTokenIds, tokenizer: this.tokenizer, lock: this.lock,
      closed: () => this.closed,
      checkBlock: (shape, machine) => {
        const limits = machine && this.limits.ram === undefined ? { ...this.limits, ram: Math.floor(os.totalmem() * MACHINE_RAM_SHARE) } : this.limits;
        checkBlockLimits(this.config, this.policy, this.weightMemory, limits, shape);
      },
    });
  }

  /** Closes the model: the scheduler (if any) stops admitting and what it admitted finishes
   *  first, so no step is in flight when the files close. */
  async close(): Promise<void> {
    this.closed = true;
    await this.sched?.drain();
    // A generate() still going holds the runner: it gives its block up at its next result (at
    // once if its caller is away), and then stops with an error rather than step on closed files.
    const release = await this.lock.acquire();
    try {
      this.runner.releaseKeptCache();
      await this.layers.close();
      await this.disk?.close();
    } finally {
      release();
    }
  }
}

/** Loads a Hugging Face model directory (config.json, safetensors, tokenizer files). */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LanguageModel> {
  return LanguageModel.load(dir, options);
}

/** `ids` (generation_config.json's eos_token_id, else config.json's) with the tokenizer's
 *  eos_token where it differs, as vLLM stops at both: training appends the tokenizer's EOS to
 *  each document (src/train/dataset.ts), so a model fine-tuned here learns to end with that token,
 *  and a config naming another one (or none) left its generations running past their end. */
export function withTokenizerEos(ids: readonly number[], tokenizer: TextTokenizer | null): number[] {
  const eos = tokenizer?.eosTokenId ?? null;
  return eos === null || ids.includes(eos) ? [...ids] : [...ids, eos];
}

/** The smallest block a run of `requests` requests opens in the policy's shape (no more rows than
 *  requests; room for the longest request alone, its positions and its prompt at once, when known,
 *  else one position), within the limits, or a UserError as that block's own check gives it. A
 *  shape given by hand that fits no block was refused only after the weights had loaded (and
 *  been converted for the disk tier); one that held no request of a job (a policy file planned
 *  for another limit) ran every request in blocks of fewer rows, ~10× slower, and said nothing. */
function checkSmallestBlock(c: ModelConfig, policy: Policy, wItems: MemoryItem[], limits: Limits, requests: number, longest?: LongestRequest): void {
  const rows = Math.max(1, Math.min(policy.gpuBatchSize, requests));
  const batches = Math.max(1, Math.min(policy.numGpuBatches, Math.ceil(requests / rows)));
  const prompt = longest ? Math.max(1, Math.min(longest.promptTokens, c.maxPositions - 1)) : 0;
  const positions = longest ? Math.min(c.maxPositions, prompt + longest.newTokens) : 1;
  const shape = { rows, batches, capacity: positions, maxTokens: Math.max(rows, prompt), cacheBytesPerElement: cacheBytesPerElement(cacheDtypeOf(policy), c.headDim) };
  const holding = longest ? `, the smallest the policy allows for this job, holding its longest request "${longest.id}" ` +
    `(${positions} positions: a prompt of ${promptSize(prompt, longest.promptAtLeast === true)} and up to ${positions - prompt} new ones)` : '';
  checkLimits([...wItems, ...blockItems(c, policy, shape)], limits, `${blockName(shape)}${holding}`);
}

/** A prompt's length in a message: a text prompt's, not known before it is encoded, as the lower
 *  bound it is ("a prompt of 1 tokens" for a prompt of many words). */
function promptSize(tokens: number, atLeast: boolean): string {
  return `${atLeast ? 'at least ' : ''}${tokens} token${tokens === 1 ? '' : 's'}`;
}

/** How a block is named in messages: its shape as plan prints it. */
function blockName(shape: BlockShape): string {
  return `a block of ${shape.rows} × ${shape.batches} (gpu batch size × batches)`;
}

/** The weights' items and a block of `shape` within the limits, or a UserError naming the block. */
function checkBlockLimits(c: ModelConfig, policy: Policy, wItems: MemoryItem[], limits: Limits, shape: BlockShape): void {
  checkLimits([...wItems, ...blockItems(c, policy, shape)], limits, blockName(shape));
}
