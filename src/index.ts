// The public API of tierlm. Everything a user may import is exported here; docs/api.md describes it.

export { loadModel, LanguageModel, type LoadOptions } from './engine/model.js';
export type { GenerateParams, GenerateStats } from './engine/generate.js';
export type { GenerationRequest, GenerationResult, RequestError, FinishReason } from './engine/requests.js';
export type { SamplingParams } from './engine/sampling.js';
export type { ModelConfig } from './models/config.js';
export { supportedModelTypes } from './models/registry.js';
export { ropeInvFreq, type RopePositions, type RopeScaling } from './models/rope.js';
export {
  openTrainer, Trainer, train, TRAIN_DEFAULTS, type TrainerOptions, type StepMetrics, type TrainSequence, type LrSchedule, type TrainRunOptions, type TrainRunInfo,
  type TrainStepMetrics,
} from './train/index.js';
export type { ParamState, Precision } from './optim/state.js';
export { Tensor } from './tensor/tensor.js';
export type { DType, FloatDType } from './tensor/dtype.js';
export {
  Backend, PackedWeight, cpuBackend, referenceBackend, getThreads, setThreads, isaInfo, setIsa, nativeBytes,
  type ComputeMode, type CacheDType, type Isa,
} from './backend/index.js';
export { UserError, ModelFileError } from './util/errors.js';
