// llama.cpp through node-llama-cpp, for bench/peers. node-llama-cpp is not a dependency of tierlm:
// install it by hand outside the repository (`npm install --no-save node-llama-cpp@3.21.1` in a
// scratch directory; it ships prebuilt CPU binaries) and pass that directory as --llama-cpp.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export interface PeerRow { engine: string; batch: number; prefillTokS: number; decodeTokS: number; totalTokS: number; note?: string }

/** One loaded llama.cpp model (the first run warms it up): run(b, prompt, n) times b sequences of `prompt` random tokens, `n`
 *  greedy tokens each, in one context (node-llama-cpp batches the sequences' evaluations together).
 *  The first new token comes from prefill; prefill time runs until every sequence has its first
 *  token. Seconds of prefill and of decode. */
export interface LlamaCppSession {
  run(b: number, prompt: number, n: number): Promise<{ pre: number; dec: number }>;
  close(): Promise<void>;
}

export async function openLlamaCpp(dir: string, modelPath: string, threads: number): Promise<LlamaCppSession> {
  const lib = await import(pathToFileURL(path.join(dir, 'node_modules', 'node-llama-cpp', 'dist', 'index.js')).href);
  const llama = await lib.getLlama({ gpu: false, build: 'never', maxThreads: threads, logLevel: 'error' });
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  const run = async (batch: number, prompt: number, n: number) => {
    const context = await model.createContext({ contextSize: { max: batch * (prompt + n + 8) }, sequences: batch, batchSize: batch * prompt, threads: { ideal: threads, min: threads } });
    const first: number[] = [];
    const t0 = performance.now();
    await Promise.all(Array.from({ length: batch }, async (_, i) => {
      const seq = context.getSequence();
      const tokens = Array.from({ length: prompt }, (_, j) => 300 + ((i * 7919 + j * 104729) % 20000));
      let k = 0;
      for await (const _t of seq.evaluate(tokens, { temperature: 0 })) {
        if (k++ === 0) first.push(performance.now());
        if (k >= n) break;
      }
    }));
    const t2 = performance.now();
    await context.dispose();
    const t1 = Math.max(...first);
    return { pre: (t1 - t0) / 1000, dec: (t2 - t1) / 1000 };
  };
  return {
    run,
    close: async () => {
      await model.dispose();
      await llama.dispose();
    },
  };
}

/** The best of `repeat` runs (by total time, against short bursts of other load on a shared
 *  machine) of `b` sequences, `prompt` tokens, `newTokens` new tokens. */
export async function runLlamaCpp(dir: string, modelPath: string, b: number, prompt: number, newTokens: number, threads: number, repeat = 1): Promise<PeerRow> {
  const session = await openLlamaCpp(dir, modelPath, threads);
  await session.run(1, prompt, 2); // warm-up
  let { pre, dec } = await session.run(b, prompt, newTokens);
  for (let r = 1; r < repeat; r++) {
    const t = await session.run(b, prompt, newTokens);
    if (t.pre + t.dec < pre + dec) ({ pre, dec } = t);
  }
  await session.close();
  return { engine: 'llama.cpp', batch: b, prefillTokS: (b * prompt) / pre, decodeTokS: (b * (newTokens - 1)) / dec, totalTokS: (b * newTokens) / (pre + dec) };
}
