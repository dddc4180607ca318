// Native training kernels: backward ops, the loss and the optimizer (native/napi/grad.cpp and
// native/napi/optim.cpp; kernels in native/kernels/grad*, gemm_generic.cpp, attention_train*,
// optim*). The native side takes Float32Array only; train.ts hands it f32 tensors.
import type { TrainKernels } from '../kernels-train.js';
import { cachedFn } from './addon.js';

const fn = cachedFn;

export const trainKernels: TrainKernels = {
  packWeightT(src, srcDtype, n, k, format, dst) {
    fn('gemmPackWeightT')(src, srcDtype, n, k, format, dst);
  },
  matmulGradWeight(dy, x, m, n, k, dw, mode) {
    fn('gemmGradWeight')(dy, x, m, n, k, dw, mode, false);
  },
  matmulGradWeightAsync(dy, x, m, n, k, dw, mode) {
    return fn('gemmGradWeight')(dy, x, m, n, k, dw, mode, true) as Promise<void>;
  },
  biasGrad(dy, rows, cols, dbias) {
    fn('biasGrad')(dy, rows, cols, dbias);
  },
  layerNormBackward(x, dy, rows, cols, gamma, eps, dx, dgamma, dbeta) {
    fn('layerNormBackward')(x, dy, rows, cols, gamma, eps, dx, dgamma, dbeta);
  },
  rmsNormBackward(x, dy, rows, cols, gamma, eps, dx, dgamma) {
    fn('rmsNormBackward')(x, dy, rows, cols, gamma, eps, dx, dgamma);
  },
  reluBackward(x, dy, dx) {
    fn('reluBackward')(x, dy, dx);
  },
  geluBackward(x, dy, dx, approximate) {
    fn('geluBackward')(x, dy, dx, approximate);
  },
  siluMulBackward(gate, up, dy, dgate, dup) {
    fn('siluMulBackward')(gate, up, dy, dgate, dup);
  },
  embeddingBackward(dy, ids, vocab, dim, dtable) {
    fn('embeddingBackward')(dy, ids, vocab, dim, dtable);
  },
  softmaxCrossEntropy(logits, rows, vocab, labels, scale) {
    const [loss, count] = fn('softmaxCrossEntropy')(logits, rows, vocab, labels, scale) as [number, number];
    return { loss, count };
  },
  attentionTrainForward(q, k, v, t, hq, hkv, d, seqStarts, scale, out, lse) {
    fn('attentionTrainForward')(q, k, v, t, hq, hkv, d, seqStarts, scale, out, lse);
  },
  attentionTrainBackward(q, k, v, out, lse, dout, t, hq, hkv, d, seqStarts, scale, dq, dk, dv) {
    fn('attentionTrainBackward')(q, k, v, out, lse, dout, t, hq, hkv, d, seqStarts, scale, dq, dk, dv);
  },
  adamw(grad, gradDtype, master, m, v, paramBf16, h) {
    fn('adamw')(grad, gradDtype, master, m, v, paramBf16, master.length, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.gradScale, h.step, false);
  },
  adamwAsync(grad, gradDtype, master, m, v, paramBf16, h) {
    return fn('adamw')(grad, gradDtype, master, m, v, paramBf16, master.length, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.gradScale, h.step,
      true) as Promise<void>;
  },
  sumSquares(x, dtype) {
    return fn('sumSquares')(x, dtype, x.length) as number;
  },
};
