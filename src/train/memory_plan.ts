/**
 * The memory plan of a training setup: parameters, gradients, optimizer state,
 * activations and scratch, by category, from the same layouts the allocations
 * use (src/model/plan.ts for activations, the optimizer's registry row for its state).
 *
 * @module
 */

import type { MemoryBytes } from "../gpu/arena.ts";
import type { DType } from "../gpu/dtype.ts";
import type { GPT2Config } from "../model/config.ts";
import { parameterLayout } from "../model/params.ts";
import { blockSpans } from "../model/weights.ts";
import {
  activationBuffers,
  arenaBytes,
  type PlannedBuffer,
  type PlanOptions,
} from "../model/plan.ts";
import { OPTIMIZERS, type OptimizerSettings, optimizerStateBytes } from "../optim/registry.ts";
import { shardLayout, zeroShards } from "./data_parallel.ts";

/** The plan's options: the model's, plus the optimizer's (the run configuration's keys). */
export interface TrainPlanOptions extends PlanOptions, Omit<OptimizerSettings, "stateBase"> {
  /** A name from OPTIMIZERS (default adamw). */
  optimizer?: string;
  /** Binding limit the optimizer splits tensors at (default 128 MiB). */
  maxBindingBytes?: number;
  /** ZeRO-1 over this many ranks: the figure is the largest rank's share of the state. */
  zeroRanks?: number;
  /** f16: 16-bit gradients (default f32). */
  gradDtype?: DType;
  /** f16: 16-bit weights, without the f32 master copy (default f32). */
  weightDtype?: DType;
  /** Optimizer in backward: gradients of one block at a time (plus the embeddings' and ln_f's). */
  optimizerInBackward?: boolean;
}

/** Bytes of optimizer state on the GPU, as the optimizer's registry row counts them. */
export function optimizerBytes(cfg: GPT2Config, o: TrainPlanOptions): number {
  const name = o.optimizer ?? "adamw";
  let layout = parameterLayout(cfg), stateBase: number | undefined;
  if ((o.zeroRanks ?? 1) > 1 && OPTIMIZERS[name]?.zero) {
    const shards = zeroShards(layout, o.zeroRanks!);
    const biggest = shards.reduce((a, s) => (s.end - s.start > a.end - a.start ? s : a));
    layout = shardLayout(layout, biggest);
    stateBase = biggest.start;
  }
  return optimizerStateBytes(name, layout, { ...o, stateBase }, o.maxBindingBytes ?? 128 * 2 ** 20);
}

/** The whole plan: bytes by category and the activation buffers. */
export function planMemory(
  cfg: GPT2Config,
  o: TrainPlanOptions,
): { bytes: MemoryBytes; buffers: PlannedBuffer[] } {
  const layout = parameterLayout(cfg), elements = layout.totalElements;
  // 16-bit weights and gradients exist only under fp16 (as Weights allocates them).
  const half = (t?: DType) => o.precision === "fp16" && t === "f16";
  const size = (t?: DType, n = elements) => arenaBytes(n * (half(t) ? 2 : 4));
  // Optimizer in backward: before the blocks, one block, after them (as Weights allocates).
  const blocks = blockSpans(layout, cfg.nLayer), first = blocks[0][0];
  const last = blocks[cfg.nLayer - 1][1];
  const gradients = o.optimizerInBackward
    ? size(o.gradDtype, first) + size(o.gradDtype, blocks[0][1] - first) +
      size(o.gradDtype, elements - last)
    : size(o.gradDtype);
  const buffers = activationBuffers(cfg, o);
  const bytes: MemoryBytes = {
    // fp16 adds the f16 copy the matmuls read, unless the weights are 16-bit themselves.
    parameters: size(o.weightDtype) +
      (o.precision === "fp16" && !half(o.weightDtype) ? size("f16") : 0),
    gradients: o.inference ? 0 : gradients,
    optimizer: o.inference ? 0 : optimizerBytes(cfg, o),
    activations: 0,
    scratch: 0,
    total: 0,
  };
  for (const b of buffers) bytes[b.category] += b.bytes;
  bytes.total = bytes.parameters + bytes.gradients + bytes.optimizer + bytes.activations +
    bytes.scratch;
  return { bytes, buffers };
}

/** The settings that decide a training run's memory, by name (`bench memory --mode`). */
export interface MemoryMode {
  optimizer: string;
  recompute: "none" | "mlp" | "block";
  precision: "fp32" | "fp16";
  gradDtype?: DType;
  weightDtype?: DType;
  optimizerOffload?: boolean;
  optimizerInBackward?: boolean;
  /** What it keeps exact and what it gives up. */
  note: string;
}

/**
 * The memory modes, from the reference to the leanest: each keeps global gradient clipping
 * and the fp16 overflow skip exact (the whole gradient's norm is known before any update; the
 * optimizer in backward runs forward and backward twice for it).
 */
export const MEMORY_MODES: Record<string, MemoryMode> = {
  "fp32": {
    optimizer: "adamw",
    recompute: "none",
    precision: "fp32",
    note: "the reference: fp32 weights, gradients and AdamW, every activation kept",
  },
  "fp16-4bit": {
    optimizer: "adamw4bit",
    recompute: "block",
    precision: "fp16",
    note: "mixed precision (fp32 master weights, an f16 copy, fp32 gradients), 4-bit AdamW",
  },
  "fp16-adafactor": {
    optimizer: "adafactor",
    recompute: "block",
    precision: "fp16",
    note: "as fp16-4bit with Adafactor's factored second moment (~0 bytes per parameter)",
  },
  "grads16": {
    optimizer: "adafactor",
    recompute: "block",
    precision: "fp16",
    gradDtype: "f16",
    note: "fp16-adafactor with 16-bit gradients (f32 sums inside every kernel)",
  },
  "lean-4bit": {
    optimizer: "adamw4bit",
    recompute: "block",
    precision: "fp16",
    gradDtype: "f16",
    weightDtype: "f16",
    note: "16-bit weights (stochastic rounding, no f32 copy) and gradients, 4-bit AdamW",
  },
  "lean": {
    optimizer: "adafactor",
    recompute: "block",
    precision: "fp16",
    gradDtype: "f16",
    weightDtype: "f16",
    note: "16-bit weights (stochastic rounding, no f32 copy) and gradients, Adafactor",
  },
  "lean-fused": {
    optimizer: "adafactor",
    recompute: "block",
    precision: "fp16",
    gradDtype: "f16",
    weightDtype: "f16",
    optimizerInBackward: true,
    note: "lean, each block updated inside the backward: one block's gradients, 2x the compute",
  },
};

/** A memory mode as `deno task train` flags. */
export function memoryModeFlags(m: MemoryMode): string {
  return [
    `--optimizer ${m.optimizer}`,
    m.optimizerOffload ? "--optimizer-offload" : "",
    m.recompute !== "none" ? `--recompute ${m.recompute}` : "",
    m.precision !== "fp32" ? `--precision ${m.precision}` : "",
    m.gradDtype === "f16" ? "--grad-dtype f16" : "",
    m.weightDtype === "f16" ? "--weight-dtype f16" : "",
    m.optimizerInBackward ? "--optimizer-in-backward" : "",
  ].filter(Boolean).join(" ");
}
