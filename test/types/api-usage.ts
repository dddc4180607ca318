// Type-checked by test/api.test.ts (never run): the API as docs/api.md shows it compiles, with
// every option optional, and a misspelt option is a type error.
import {
  type GenerateOptions, type GenerationResult, type LoadOptions, type Policy, loadModel, planPolicy, policyFromJson, policyToJson,
} from '../../src/index.js';

export async function usage(dir: string): Promise<GenerationResult[]> {
  const model = await loadModel(dir);
  const load: LoadOptions = { policy: { gpuBatchSize: 4 }, ramBytes: 2 ** 30 };
  const params: GenerateOptions = { sampling: { temperature: 0.7, seed: 1 }, n: 2, onToken: (id, token) => void [id, token] };
  // @ts-expect-error: the API's names are camelCase; a snake_case key is refused by the types too.
  const misspelt: GenerateOptions = { max_new_tokens: 3 };
  const out: GenerationResult[] = [];
  for await (const r of model.generate([{ id: 'a', prompt: 'x', sampling: { minP: 0.1 } }], params)) if (!('error' in r)) out.push(r);
  await model.close();
  const policy: Policy = policyFromJson(policyToJson(model.policy));
  void [load, misspelt, policy, planPolicy];
  return out;
}
