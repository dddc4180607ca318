// The public API of tierlm. Everything a user may import is exported here; docs/api.md describes it
// (test/api.test.ts checks that every name it documents is exported).

export { loadModel, LanguageModel, type LoadOptions } from './engine/model.js';
export type { GenerateParams, GenerateOptions, GenerateOrder, GenerateStats } from './engine/generate.js';
export type { GenerationRequest, GenerationResult, SampleResult, RequestError, FinishReason, TokenLogprob } from './engine/requests.js';
export { Scheduler, type RequestOptions, type SchedulerStats } from './engine/scheduler.js';
export type { SamplingParams } from './engine/sampling.js';
export type { ModelConfig } from './models/config.js';
export { supportedModelTypes } from './models/registry.js';
export { ropeInvFreq, type RopePositions, type RopeScaling } from './models/rope.js';
export { DEFAULT_POLICY, type Policy, type ScheduleKind, policyToJson, policyFromJson, validatePolicy } from './policy/policy.js';
export {
  type HardwareProfile, ensureProfile, measureProfile, loadProfile, saveProfile, defaultProfilePath,
  gemmRate, attentionDecodeRate, attentionPrefillRate, diskReadRate, diskWriteRate, memcpyRate,
} from './policy/profile.js';
export { type PlanRequest, type PlanResult, planPolicy, predictPolicy } from './engine/plan.js';
export { type BenchOptions, type BenchResult, runBench, benchJson } from './engine/bench.js';
export {
  openTrainer, Trainer, train, TRAIN_DEFAULTS, type TrainerOptions, type StepMetrics, type TrainSequence, type LrSchedule, type TrainRunOptions, type TrainRunInfo,
  type TrainStepMetrics,
} from './train/index.js';
export type { ParamState, Precision } from './optim/state.js';
export { worldComm, type Comm } from './dist/comm.js';
export { Tensor } from './tensor/tensor.js';
export type { DType, FloatDType } from './tensor/dtype.js';
export {
  Backend, PackedWeight, cpuBackend, referenceBackend, getThreads, setThreads, isaInfo, setIsa, nativeBytes, type LinearEpilogue,
  type ComputeMode, type CacheDType, type Isa,
} from './backend/index.js';
export { UserError, ModelFileError } from './util/errors.js';
