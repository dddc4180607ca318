export { type Comm, type Pending, type Numeric, type ReduceOp, SoloComm, worldComm, sumOverRanks } from './comm.js';
export { type RankEnv, rankEnv, threadsPerRank } from './env.js';
