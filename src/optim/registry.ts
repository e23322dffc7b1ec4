/**
 * The optimizers a run can name, in one table: a new one is a row here (and its module),
 * and the trainer, the `--optimizer` flag and its help all follow.
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { AdamW, type AdamWConfig } from "./adamw.ts";
import { LowBitAdamW } from "./lowbit.ts";
import type { Optimizer } from "./optimizer.ts";

/** What every optimizer is built from: the AdamW hyperparameters plus low-bit settings. */
export interface OptimizerSettings extends AdamWConfig {
  /** 8-bit block size (default 256). */
  block8?: number;
  /** Low-bit optimizers: keep wte and wpe state in fp32. */
  fp32Embeddings?: boolean;
  /** Low-bit optimizers: state in CPU memory, streamed through the GPU per piece. */
  offload?: boolean;
  /**
   * ZeRO-1: the layout given is one shard's tensors, starting at this element of the flat
   * buffers; the state covers only the shard.
   */
  stateBase?: number;
}

/** The buffers an optimizer updates: parameters, read with their gradients. */
export interface OptimizerBuffers {
  /** Flat f32 parameters. */
  params: GPUBuffer;
  /** Flat f32 gradients, same layout. */
  grads: GPUBuffer;
  /** The parameters' f16 copy (mixed precision): an optimizer may write it as it updates. */
  half?: GPUBuffer;
  /**
   * The gradient statistics (GRAD_STATS) its update reads; by default its own (scale 1,
   * never skipped), which a training step writes through `Optimizer.gradStats`.
   */
  gradStats?: GPUBuffer;
}

/** One row of the optimizer table. */
export interface OptimizerKind {
  /** What `--optimizer` shows in its help. */
  description: string;
  /** True when `offload` is supported. */
  offload: boolean;
  /** True when its state can be sharded over ranks (ZeRO-1, `stateBase`). */
  zero: boolean;
  /** Builds it over a model's buffers. */
  create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: OptimizerBuffers,
    settings: OptimizerSettings,
  ): Promise<Optimizer>;
}

const lowBit = (bits: 8 | 4): OptimizerKind["create"] => (rt, layout, buffers, s) =>
  LowBitAdamW.create(rt, layout, buffers, {
    ...s,
    bits,
    block8: s.block8 ?? 256,
    fp32Embeddings: s.fp32Embeddings ?? false,
    offload: s.offload ?? false,
  });

/** Every optimizer by the name `--optimizer` takes. */
export const OPTIMIZERS: Record<string, OptimizerKind> = {
  adamw: {
    description: "fp32 state, 8 bytes/param",
    offload: false,
    zero: true,
    create: (rt, layout, buffers, s) =>
      AdamW.create(rt, layout, buffers, s, { stateBase: s.stateBase }),
  },
  adamw8bit: {
    description: "8-bit state, ~2 bytes/param",
    offload: true,
    zero: false,
    create: lowBit(8),
  },
  adamw4bit: {
    description: "4-bit state, ~1 byte/param",
    offload: true,
    zero: false,
    create: lowBit(4),
  },
};

/** Builds the optimizer named `name` (an error lists the names when it is unknown). */
export function createOptimizer(
  name: string,
  rt: Runtime,
  layout: ParamLayout,
  buffers: OptimizerBuffers,
  settings: OptimizerSettings,
): Promise<Optimizer> {
  const kind = OPTIMIZERS[name];
  if (!kind) {
    throw new RangeError(
      `Unknown optimizer "${name}": choose from ${Object.keys(OPTIMIZERS).join(", ")}`,
    );
  }
  if (settings.offload && !kind.offload) {
    const ok = Object.keys(OPTIMIZERS).filter((k) => OPTIMIZERS[k].offload);
    throw new RangeError(`--optimizer-offload works with ${ok.join(" and ")}: pick one of them`);
  }
  if (settings.stateBase !== undefined && !kind.zero) {
    const ok = Object.keys(OPTIMIZERS).filter((k) => OPTIMIZERS[k].zero);
    throw new RangeError(
      `--zero shards the state of ${ok.join(", ")}; ${name} keeps ~1-2 bytes per parameter ` +
        "already: drop --zero or pick " + ok.join(" or "),
    );
  }
  return kind.create(rt, layout, buffers, settings);
}
