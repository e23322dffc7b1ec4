/**
 * Every bench `deno task bench` knows, by name.
 *
 * @module
 */

import type { BenchCase } from "./_harness.ts";
import { attentionBench } from "./attention_bench.ts";
import { reduceBench } from "./reduce_bench.ts";
import { checkpointBench } from "./checkpoint_bench.ts";
import { dataBench } from "./data_bench.ts";
import { ddpBench } from "./ddp_bench.ts";
import { evalBench } from "./eval_bench.ts";
import { matmulBench } from "./matmul_bench.ts";
import { memoryBench } from "./memory_bench.ts";
import { modelBench } from "./model_bench.ts";
import { optimBench } from "./optim_bench.ts";
import { qualityBench } from "./quality_bench.ts";

/** All benches, in the order `deno task bench` runs them. */
export const BENCHES: BenchCase[] = [
  matmulBench,
  modelBench,
  attentionBench,
  reduceBench,
  dataBench,
  evalBench,
  optimBench,
  memoryBench,
  qualityBench,
  checkpointBench,
  ddpBench,
];
