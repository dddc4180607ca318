// The public entry point for generation: load a model directory, then generate for batches of
// requests.

import { type Backend, type ComputeMode, cpuBackend, referenceBackend, setThreads } from '../backend/index.js';
import { TextTokenizer } from '../formats/tokenizer.js';
import type { ModelConfig } from '../models/config.js';
import { type LoadedModel, loadTransformer } from '../models/load.js';
import type { Transformer } from '../models/transformer.js';
import { type GenerateParams, type GenerateStats, Generator } from './generate.js';
import type { GenerationRequest, GenerationResult, RequestError } from './requests.js';

export interface LoadOptions {
  /** 'fp32' (default) reproduces the model's float32 results; 'bf16' rounds activations to bf16 for speed. */
  precision?: ComputeMode;
  /** 'cpu' (default, native kernels) or 'reference' (plain TypeScript, slow). */
  backend?: 'cpu' | 'reference' | Backend;
  /** Compute threads (default: every core). */
  threads?: number;
}

export class LanguageModel {
  private constructor(
    private readonly loaded: LoadedModel,
    readonly tokenizer: TextTokenizer | null,
    readonly precision: ComputeMode,
  ) {}

  static load(dir: string, options: LoadOptions = {}): LanguageModel {
    const precision = options.precision ?? 'fp32';
    if (precision !== 'fp32' && precision !== 'bf16') throw new RangeError(`precision must be fp32 or bf16, got ${String(precision)}`);
    const backend = typeof options.backend === 'object' ? options.backend : options.backend === 'reference' ? referenceBackend() : cpuBackend();
    if (options.threads !== undefined) setThreads(options.threads);
    const loaded = loadTransformer(dir, backend, precision);
    return new LanguageModel(loaded, TextTokenizer.load(dir), precision);
  }

  get config(): ModelConfig {
    return this.loaded.config;
  }

  /** The loaded transformer (weights and forward pass), for benchmarks and advanced use. */
  get transformer(): Transformer {
    return this.loaded.transformer;
  }

  get eosTokenIds(): number[] {
    return this.loaded.eosTokenIds;
  }

  /** Results in input order, each as soon as its batch finishes. Requests that cannot run
   *  (bad prompt, too long) yield `{id, error}` and the rest still run. `stats` (if given) is
   *  filled with timings. */
  async *generate(requests: Iterable<GenerationRequest> | AsyncIterable<GenerationRequest>, params: Partial<GenerateParams> = {},
    stats?: GenerateStats): AsyncGenerator<GenerationResult | RequestError> {
    const g = new Generator(this.loaded, this.tokenizer);
    try {
      yield* g.generate(requests, params);
    } finally {
      if (stats) Object.assign(stats, g.stats);
    }
  }
}

/** Loads a Hugging Face model directory (config.json, safetensors, tokenizer files). */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LanguageModel> {
  return LanguageModel.load(dir, options);
}
