/**
 * The memory plan of a training setup: parameters, gradients, optimizer state,
 * activations and scratch, by category, from the same layouts the allocations
 * use (src/model/plan.ts for activations, statePieces for low-bit state).
 *
 * @module
 */

import type { MemoryBytes } from "../gpu/arena.ts";
import type { GPT2Config } from "../model/config.ts";
import { parameterLayout } from "../model/params.ts";
import {
  activationBuffers,
  arenaBytes,
  type PlannedBuffer,
  type PlanOptions,
} from "../model/plan.ts";
import { statePieces } from "../optim/lowbit.ts";
import { zeroShards } from "./data_parallel.ts";

/** The plan's options: the model's, plus the optimizer's. */
export interface TrainPlanOptions extends PlanOptions {
  optimizer?: "adamw" | "adamw8bit" | "adamw4bit";
  optimizerFp32Embeddings?: boolean;
  optimizerOffload?: boolean;
  /** Binding limit the optimizer splits tensors at (default 128 MiB). */
  maxBindingBytes?: number;
  /** ZeRO-1 over this many ranks: the figure is the largest rank's share of the state. */
  zeroRanks?: number;
}

/** Bytes of optimizer state on the GPU (fp32: m and v; low-bit: as LowBitAdamW lays it out). */
export function optimizerBytes(cfg: GPT2Config, o: TrainPlanOptions): number {
  const layout = parameterLayout(cfg);
  const kind = o.optimizer ?? "adamw";
  if (kind === "adamw") {
    if ((o.zeroRanks ?? 1) <= 1) return 2 * arenaBytes(layout.totalElements * 4);
    const biggest = Math.max(...zeroShards(layout, o.zeroRanks!).map((s) => s.end - s.start));
    return 2 * arenaBytes(biggest * 4);
  }
  const { pieces, totals } = statePieces(layout, {
    bits: kind === "adamw8bit" ? 8 : 4,
    block8: 256,
    fp32Embeddings: o.optimizerFp32Embeddings ?? false,
  }, o.maxBindingBytes ?? 128 * 2 ** 20);
  let sizes = [
    totals.f32,
    totals.f32,
    totals.words,
    totals.words,
    totals.abs,
    totals.abs,
    totals.scales,
  ];
  if (o.optimizerOffload) {
    // One piece's worth: the largest extent of each kind.
    const ext = { f32: 0, words: 0, abs: 0, scales: 0 };
    for (const p of pieces) {
      const per = p.kind === "q8" ? 4 : 8, block = p.kind === "q8" ? 256 : 128;
      const align = (n: number) => Math.ceil(n / 64) * 64;
      if (p.kind === "fp32") ext.f32 = Math.max(ext.f32, align(p.size));
      else {
        ext.words = Math.max(ext.words, align(Math.ceil(p.size / per)));
        ext.abs = Math.max(ext.abs, align(Math.ceil(p.size / block)));
      }
      if (p.rows) ext.scales = Math.max(ext.scales, align(2 * (p.rows + p.cols)));
    }
    sizes = [ext.f32, ext.f32, ext.words, ext.words, ext.abs, ext.abs, ext.scales];
  }
  return sizes.reduce((a, n) => a + arenaBytes(n * 4), 0);
}

/** The whole plan: bytes by category and the activation buffers. */
export function planMemory(
  cfg: GPT2Config,
  o: TrainPlanOptions,
): { bytes: MemoryBytes; buffers: PlannedBuffer[] } {
  const elements = parameterLayout(cfg).totalElements;
  const params = arenaBytes(elements * 4);
  const buffers = activationBuffers(cfg, o);
  const bytes: MemoryBytes = {
    // fp16 adds the f16 copy the matmuls read.
    parameters: params + (o.precision === "fp16" ? arenaBytes(elements * 2) : 0),
    gradients: o.inference ? 0 : params,
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
