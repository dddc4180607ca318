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
    env: { TIERLM_PROFILE: new URL('./test/fixtures/hardware-profile.json', import.meta.url).pathname },
  },
});
