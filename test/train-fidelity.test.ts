// Training through the API against the float64 golden runs of test/fixtures/train (a copy of
// ../shared/fixtures/train; see its README): step-1 gradients of every parameter, the 3 per-step
// losses and gradient norms, and every tensor's update after 3 AdamW steps with clipping, in fp32.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { toFloat32 } from '../src/tensor/dtype.js';
import { openTrainer } from '../src/train/index.js';
import { TRAIN_FIXTURES as FIX, fixtureBatch, readAll } from './helpers/train.js';

/** ‖a − b‖ / ‖b‖ (Frobenius), in double. */
function relFrob(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, n = 0;
  for (let i = 0; i < b.length; i++) {
    d += (a[i]! - b[i]!) ** 2;
    n += b[i]! ** 2;
  }
  return Math.sqrt(d / n);
}

const sub = (a: Float32Array, b: Float32Array) => Float64Array.from(a, (x, i) => x - b[i]!);

describe.each(['opt-train', 'llama-train'])('%s against its float64 golden run', (name) => {
  const dir = path.join(FIX, name);
  const ref = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')) as {
    losses: number[]; grad_norms: number[]; lr: number; weight_decay: number; max_grad_norm: number;
  };

  it('fp32: step-1 gradients, 3 losses and every update', async () => {
    const trainer = await openTrainer(dir, { lr: ref.lr, weightDecay: ref.weight_decay, maxGradNorm: ref.max_grad_norm });
    const before = new Map(trainer.parameters().map((p) => [p.name, p.master.data.slice()]));
    const grads = readAll(path.join(dir, 'grads-step1.safetensors'));
    const after = readAll(path.join(dir, 'params-after-3-steps.safetensors'));
    expect(trainer.parameters().map((p) => p.name).sort()).toEqual([...grads.keys()].sort());
    const batch = fixtureBatch();
    const metrics = [await trainer.step(batch)];
    const gradErr: Record<string, number> = {};
    for (const p of trainer.parameters()) gradErr[p.name] = relFrob(p.grad.data as Float32Array, grads.get(p.name)!);
    metrics.push(await trainer.step(batch), await trainer.step(batch));

    const worst = (errs: Record<string, number>, skip: (n: string) => boolean) =>
      Object.entries(errs).filter(([n]) => !skip(n)).reduce((w, e) => (e[1] > w[1] ? e : w), ['', 0]);
    const kBias = (n: string) => n.includes('k_proj.bias');
    const updateErr: Record<string, number> = {};
    for (const p of trainer.parameters()) updateErr[p.name] = relFrob(sub(p.master.data, before.get(p.name)!), sub(after.get(p.name)!, before.get(p.name)!));
    const lossErr = metrics.map((m, i) => Math.abs(m.loss - ref.losses[i]!) / ref.losses[i]!);
    const normErr = metrics.map((m, i) => Math.abs(m.gradNorm - ref.grad_norms[i]!) / ref.grad_norms[i]!);
    console.log(`${name}: worst grad ${worst(gradErr, kBias).join(' ')}; loss rel ${lossErr.map((e) => e.toExponential(2)).join(' ')}; ` +
      `grad-norm rel ${normErr.map((e) => e.toExponential(2)).join(' ')}; worst update ${worst(updateErr, kBias).join(' ')}`);

    for (const [n, e] of Object.entries(gradErr)) {
      // k_proj biases: the true gradient is exactly 0 (README), ours must be rounding-small.
      if (kBias(n)) expect(Math.hypot(...(trainer.parameters().find((p) => p.name === n)!.grad.data as Float32Array)), n).toBeLessThan(1e-5);
      else expect(e, `step-1 gradient of ${n}`).toBeLessThanOrEqual(1e-5);
    }
    // The issue asks 1e-5; we reach 2.2e-7, and 1e-6 catches an fp32 rounding of Adam's 1 − β2
    // (it gave 6.4e-6).
    lossErr.forEach((e, i) => expect(e, `loss of step ${i + 1}`).toBeLessThanOrEqual(1e-6));
    normErr.forEach((e, i) => expect(e, `grad norm of step ${i + 1}`).toBeLessThanOrEqual(1e-5));
    for (const [n, e] of Object.entries(updateErr)) if (!kBias(n)) expect(e, `update of ${n}`).toBeLessThanOrEqual(1e-3);
    expect(metrics.map((m) => m.step)).toEqual([1, 2, 3]);
    expect(metrics[0]!.tokens).toBe(55);
  });
});

describe.each([['opt-train', 'fp32'], ['opt-train', 'bf16'], ['llama-train', 'fp32'], ['llama-train', 'bf16']] as const)('%s in bf16 mixed precision, %s compute', (name, computeMode) => {
  const dir = path.join(FIX, name);
  const ref = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { losses: number[]; lr: number; weight_decay: number; max_grad_norm: number };

  it('bf16 compute, fp32 masters and moments: losses and gradients near the float64 run', async () => {
    const trainer = await openTrainer(dir, { precision: 'bf16', computeMode, lr: ref.lr, weightDecay: ref.weight_decay, maxGradNorm: ref.max_grad_norm });
    const grads = readAll(path.join(dir, 'grads-step1.safetensors'));
    const batch = fixtureBatch();
    const losses = [(await trainer.step(batch)).loss];
    let worst = 0, worstName = '';
    for (const p of trainer.parameters()) {
      expect(p.param.dtype).toBe('bf16');
      expect(p.master.dtype).toBe('f32');
      const e = p.name.includes('k_proj.bias') ? 0 : relFrob(p.grad.data as Float32Array, grads.get(p.name)!);
      if (e > worst) [worst, worstName] = [e, p.name];
    }
    losses.push((await trainer.step(batch)).loss, (await trainer.step(batch)).loss);
    const lossErr = losses.map((l, i) => Math.abs(l - ref.losses[i]!) / ref.losses[i]!);
    console.log(`${name} bf16 (${computeMode} compute): worst step-1 gradient ${worst.toExponential(2)} (${worstName}); loss rel ${lossErr.map((e) => e.toExponential(2)).join(' ')}`);
    // bf16 keeps 8 bits of mantissa (4e-3 relative per rounding of every GEMM input); sums with
    // heavy cancellation lose most (a LayerNorm weight's gradient: 8.5e-2 on opt-train).
    expect(worst).toBeLessThan(0.15);
    lossErr.forEach((e) => expect(e).toBeLessThan(1e-2));
    // The bf16 parameters are the masters rounded.
    const p = trainer.parameters()[3]!;
    const back = toFloat32('bf16', p.param.data as Uint16Array, true);
    back.forEach((x, i) => expect(Math.abs(x - p.master.data[i]!)).toBeLessThanOrEqual(Math.abs(p.master.data[i]!) * 2 ** -8));
  });
});
