import os from 'node:os';
import path from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // dist/ fresh from src/: peak-memory tests run the compiled CLI (test/helpers/build-dist.ts).
    globalSetup: ['test/helpers/build-dist.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Kernels already use every core; running test files side by side only adds contention.
    fileParallelism: false,
    setupFiles: ['test/helpers/cleanup.ts'],
    // --policy auto reads a hardware profile; tests use a committed one instead of measuring.
    // The bf16 GEMM kernel first measured in this test run is kept in a file of its own, so every
    // process of the run (each CLI, each rank) computes with it, and no test writes to ~/.cache.
    env: {
      TIERLM_PROFILE: new URL('./test/fixtures/hardware-profile.json', import.meta.url).pathname,
      TIERLM_KERNEL_CACHE: path.join(os.tmpdir(), `tierlm-test-kernels-${process.pid}.json`),
    },
  },
});
