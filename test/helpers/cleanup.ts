// Setup file of every test file (vitest.config.ts): temporary directories made with tmpDir are
// removed when the file's tests end, whether they passed or not.
import { afterAll } from 'vitest';
import { removeTmpDirs } from './fixtures.js';

afterAll(removeTmpDirs);
