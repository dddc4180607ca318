// The linter (eslint.config.js: ESLint's and typescript-eslint's recommended rules) over the whole
// repository, so that CI holds every change to it; `npm run lint` prints the same problems.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';
import { expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

it('the sources, tests, benchmarks and tools pass eslint', async () => {
  const results = await new ESLint({ cwd: root }).lintFiles(['.']);
  const problems = results.flatMap((r) =>
    r.messages.map((m) => `${path.relative(root, r.filePath)}:${m.line}:${m.column} ${m.message} (${m.ruleId ?? 'parse'})`));
  expect(results.length).toBeGreaterThan(100);
  expect(problems).toEqual([]);
}, 180_000);
