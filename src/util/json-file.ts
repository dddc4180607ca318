// Reading a model's or a tool's JSON side files (config.json, generation_config.json,
// tokenizer_config.json, the shard index): the value must be a JSON object, and anything else —
// unreadable, not JSON, or `null`, a list, a number — is an error naming the file.

import fs from 'node:fs';
import { ModelFileError } from './errors.js';

/** The JSON object in FILE; a ModelFileError naming FILE otherwise. */
export function readJsonObject(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ModelFileError(file, err.code === 'ENOENT' ? 'not found' : `cannot read: ${err.code ?? err.message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ModelFileError(file, `not valid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ModelFileError(file, `not a JSON object (it holds ${value === null ? 'null' : Array.isArray(value) ? 'a list' : `a ${typeof value}`})`);
  }
  return value as Record<string, unknown>;
}
