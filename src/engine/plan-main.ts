// Entry of the child process that plans a run under a RAM limit (planPolicyInChild).
import { childMain } from '../util/child.js';
import { type PlanRequest, planPolicy } from './plan.js';

await childMain((r: PlanRequest) => planPolicy(r));
