// `npm run lint` (and test/lint.test.ts, so CI runs it): ESLint's and typescript-eslint's recommended
// rules over the sources, tests, benchmarks and tools; plain .js/.mjs/.cjs files run on Node.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'build/', 'node_modules/', '.bench/', '.scratch/', 'test/fixtures/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.{js,mjs,cjs}'],
    languageOptions: { globals: globals.node },
  },
  {
    files: ['**/*.cjs'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // Tests read JSON results, whose honest type is any.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // A leading underscore marks a parameter or binding kept for its position (an interface's
    // signature, a destructured tuple), not one forgotten.
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      // a generator function (no arrow form) reaching its object
      '@typescript-eslint/no-this-alias': ['error', { allowedNames: ['self'] }],
    },
  },
);
