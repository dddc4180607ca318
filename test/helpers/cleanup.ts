// Every test file removes the temporary directories it made (setupFiles in vitest.config.ts).
import { afterAll } from 'vitest';
import { removeTmpDirs } from './fixtures.js';

afterAll(removeTmpDirs);
