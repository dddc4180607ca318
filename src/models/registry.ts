// model_type → architecture.
import fs from 'node:fs';
import path from 'node:path';
import { ModelFileError } from '../util/errors.js';
import { readJsonObject } from '../util/json-file.js';
import type { Architecture } from './architecture.js';
import { ConfigReader, type ModelConfig } from './config.js';
import { llama } from './llama.js';
import { mistral } from './mistral.js';
import { opt } from './opt.js';
import { presetJson } from './presets.js';
import { qwen2 } from './qwen2.js';

const ARCHITECTURES: Architecture[] = [opt, llama, mistral, qwen2];

export function supportedModelTypes(): string[] {
  return ARCHITECTURES.flatMap((a) => a.modelTypes);
}

export function architectureFor(modelType: string, file: string): Architecture {
  const arch = ARCHITECTURES.find((a) => a.modelTypes.includes(modelType));
  if (!arch) {
    throw new ModelFileError(file, `unsupported model_type "${modelType}" (supported: ${supportedModelTypes().join(', ')})`);
  }
  return arch;
}

/** Reads and checks DIR/config.json. */
export function readConfig(dir: string): { arch: Architecture; config: ModelConfig; raw: Record<string, unknown> } {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new ModelFileError(file, 'not found (is this a model directory?)');
  const raw = readJsonObject(file);
  const reader = new ConfigReader(file, raw);
  const arch = architectureFor(reader.str('model_type'), file);
  return { arch, config: arch.parseConfig(reader), raw };
}

/** A named shape (src/models/presets.ts), cut to `layers` layers when given, as readConfig reads a
 *  model directory. */
export function readPreset(name: string | undefined, layers?: number): { arch: Architecture; config: ModelConfig } {
  const json = presetJson(name, layers);
  const arch = architectureFor(String(json.model_type), `config ${name}`);
  return { arch, config: arch.parseConfig(new ConfigReader(`config ${name}`, json)) };
}
