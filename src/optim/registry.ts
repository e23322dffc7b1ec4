/**
 * The optimizers a run can name, in one table: a new one is a row here (and its module), and
 * the trainer, the `--optimizer` flag and its help, `--optimizer-option` and the memory plan
 * all follow. A row carries the optimizer's own settings (name, default, check, help), how it
 * reads the run's settings, the size of its state for a layout, and how to build it.
 *
 * @module
 */

import type { SplitBuffer } from "../gpu/split_buffer.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { arenaBytes } from "../model/plan.ts";
import {
  Adafactor,
  ADAFACTOR_DEFAULTS,
  type AdafactorConfig,
  adafactorStateBytes,
} from "./adafactor.ts";
import { AdamW, ADAMW_DEFAULTS, type AdamWConfig } from "./adamw.ts";
import { LowBitAdamW, type LowBitConfig, lowBitStateBytes } from "./lowbit.ts";
import type { Optimizer } from "./optimizer.ts";

/**
 * What a run gives every optimizer, under the run configuration's own keys (TrainConfig's),
 * so that a run's settings pass as they are. Each row takes what it uses.
 */
export interface OptimizerSettings {
  /** AdamW's first-moment decay (default 0.9). */
  beta1?: number;
  /** AdamW's second-moment decay (default 0.95). */
  beta2?: number;
  /** AdamW's epsilon (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay on matrices and embeddings (default 0.1). */
  weightDecay?: number;
  /** 8-bit block size (default 256). */
  optimizerBlock?: number;
  /** Low-bit optimizers: keep wte and wpe state in fp32. */
  optimizerFp32Embeddings?: boolean;
  /** Low-bit optimizers: state in CPU memory, streamed through the GPU per piece. */
  optimizerOffload?: boolean;
  /** The optimizer's own settings, "key=value,key=value" (its row's `options`). */
  optimizerOptions?: string;
  /**
   * ZeRO-1: the layout given is one shard's tensors, starting at this element of the flat
   * buffers; the state covers only the shard.
   */
  stateBase?: number;
}

/** The buffers an optimizer updates: parameters, read with their gradients. */
export interface OptimizerBuffers {
  /** Flat parameters (f32, or f16: 16-bit weights), in one buffer or split. */
  params: GPUBuffer | SplitBuffer;
  /** Flat gradients (f32 or f16), same layout and parts. */
  grads: GPUBuffer | SplitBuffer;
  /** The parameters' f16 copy (mixed precision): an optimizer may write it as it updates. */
  half?: GPUBuffer | SplitBuffer;
  /**
   * The gradient statistics (GRAD_STATS) its update reads; by default its own (scale 1,
   * never skipped), which a training step writes through `Optimizer.gradStats`.
   */
  gradStats?: GPUBuffer;
}

/** One of an optimizer's own settings (`--optimizer-option NAME=X`). */
export interface OptionRow {
  /** The value when the option is not given. */
  default: number;
  /** What it accepts, in words, and the test. */
  check: [string, (x: number) => boolean];
  /** The help line. */
  help: string;
}

/** Where the state goes: the binding limit tensors are split at, and the ZeRO-1 shard start. */
export interface StatePlacement {
  /** Largest binding in bytes (the adapter's maxStorageBufferBindingSize). */
  maxBindingBytes: number;
  /** ZeRO-1: the first element the state covers (0 without sharding). */
  stateBase: number;
}

/** One row of the optimizer table; `C` is the optimizer's own config. */
export interface OptimizerKind<C = unknown> {
  /** What `--optimizer` shows in its help. */
  description: string;
  /** True when `optimizerOffload` is supported. */
  offload: boolean;
  /** True when its state can be sharded over ranks (ZeRO-1, `stateBase`). */
  zero: boolean;
  /** Its own settings, by the name `--optimizer-option` takes. */
  options?: Record<string, OptionRow>;
  /** Its config from the run's settings and its options (checked, defaults filled in). */
  configure(settings: OptimizerSettings, options: Record<string, number>): C;
  /** Bytes of state it allocates on the GPU for a layout (the memory plan's figure). */
  stateBytes(layout: ParamLayout, config: C, at: StatePlacement): number;
  /** Builds it over a model's buffers. */
  create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: OptimizerBuffers,
    config: C,
    at: StatePlacement,
  ): Promise<Optimizer>;
}

/** A row with its config type checked, stored untyped in {@linkcode OPTIMIZERS}. */
function row<C>(kind: OptimizerKind<C>): OptimizerKind {
  return kind as unknown as OptimizerKind;
}

/** The AdamW hyperparameters a run gives, defaults filled in. */
function adamwConfig(s: OptimizerSettings): AdamWConfig {
  return {
    beta1: s.beta1 ?? ADAMW_DEFAULTS.beta1,
    beta2: s.beta2 ?? ADAMW_DEFAULTS.beta2,
    eps: s.eps ?? ADAMW_DEFAULTS.eps,
    weightDecay: s.weightDecay ?? ADAMW_DEFAULTS.weightDecay,
  };
}

const lowBit = (bits: 8 | 4, description: string) =>
  row<LowBitConfig>({
    description,
    offload: true,
    zero: false,
    configure: (s) =>
      LowBitAdamW.check({
        ...adamwConfig(s),
        bits,
        block8: s.optimizerBlock ?? 256,
        fp32Embeddings: s.optimizerFp32Embeddings ?? false,
        offload: s.optimizerOffload ?? false,
      }),
    stateBytes: (layout, c, at) => lowBitStateBytes(layout, c, at.maxBindingBytes),
    create: (rt, layout, buffers, c, at) =>
      LowBitAdamW.create(rt, layout, buffers, c, { maxBindingBytes: at.maxBindingBytes }),
  });

/** Every optimizer by the name `--optimizer` takes. */
export const OPTIMIZERS: Record<string, OptimizerKind> = {
  adamw: row<AdamWConfig>({
    description: "fp32 state, 8 bytes/param",
    offload: false,
    zero: true,
    configure: adamwConfig,
    stateBytes: (layout, _c, at) => 2 * arenaBytes((layout.totalElements - at.stateBase) * 4),
    create: (rt, layout, buffers, c, at) => AdamW.create(rt, layout, buffers, c, at),
  }),
  adamw8bit: lowBit(8, "8-bit state, ~2 bytes/param"),
  adamw4bit: lowBit(4, "4-bit state, ~1 byte/param"),
  adafactor: row<AdafactorConfig>({
    description: "factored second moment, ~0 bytes/param (its own --optimizer-option)",
    offload: false,
    zero: false,
    options: {
      beta1: {
        default: 0,
        check: ["a number in [0, 1)", (x) => x >= 0 && x < 1],
        help: "first moment, 0: none",
      },
      decay: {
        default: 0.8,
        check: ["a number in (0, 1]", (x) => x > 0 && x <= 1],
        help: "beta2_t = 1 - t^-decay",
      },
      clip: {
        default: 1,
        check: ["a number above 0", (x) => x > 0],
        help: "update clipping threshold d on RMS",
      },
      eps1: { default: 1e-30, check: ["a number above 0", (x) => x > 0], help: "added to g^2" },
    },
    configure: (s, { beta1, decay, clip, eps1 }) => ({
      beta1,
      decay,
      clip,
      eps1,
      weightDecay: s.weightDecay ?? ADAFACTOR_DEFAULTS.weightDecay,
    }),
    stateBytes: (layout, c, at) => adafactorStateBytes(layout, c, at.maxBindingBytes),
    create: (rt, layout, buffers, c, at) => Adafactor.create(rt, layout, buffers, c, at),
  }),
};

/** The row named `name` and its config from `settings`, after every check. */
function resolve(
  name: string,
  settings: OptimizerSettings,
): { kind: OptimizerKind; config: unknown; stateBase: number } {
  const kind = OPTIMIZERS[name];
  if (!kind) {
    throw new RangeError(
      `Unknown optimizer "${name}": choose from ${Object.keys(OPTIMIZERS).join(", ")}`,
    );
  }
  if (settings.optimizerOffload && !kind.offload) {
    const ok = Object.keys(OPTIMIZERS).filter((k) => OPTIMIZERS[k].offload);
    throw new RangeError(`--optimizer-offload works with ${ok.join(" and ")}: pick one of them`);
  }
  if (settings.stateBase !== undefined && !kind.zero) {
    const ok = Object.keys(OPTIMIZERS).filter((k) => OPTIMIZERS[k].zero);
    throw new RangeError(
      `--zero shards the state of ${ok.join(", ")}; ${name} keeps little state per parameter ` +
        "already: drop --zero or pick " + ok.join(" or "),
    );
  }
  const options = parseOptions(name, kind, settings.optimizerOptions ?? "");
  return { kind, config: kind.configure(settings, options), stateBase: settings.stateBase ?? 0 };
}

/**
 * `--optimizer-option`'s "key=value,..." checked against the row's options, every option
 * present (defaults filled in); a RangeError names what is allowed.
 */
export function parseOptions(
  name: string,
  kind: OptimizerKind,
  spec: string,
): Record<string, number> {
  const rows = kind.options ?? {};
  const out: Record<string, number> = {};
  for (const [k, r] of Object.entries(rows)) out[k] = r.default;
  for (const part of spec.split(",").map((p) => p.trim()).filter(Boolean)) {
    const [key, raw, extra] = part.split("=").map((p) => p.trim());
    const r = rows[key];
    if (!r) {
      const known = Object.keys(rows);
      throw new RangeError(
        `--optimizer-option ${part}: ${name} has ` +
          (known.length ? `the options ${known.join(", ")}` : "no options"),
      );
    }
    const x = raw === undefined || raw === "" || extra !== undefined ? NaN : Number(raw);
    if (!Number.isFinite(x) || !r.check[1](x)) {
      throw new RangeError(`--optimizer-option ${key} must be ${r.check[0]}, got "${raw}"`);
    }
    out[key] = x;
  }
  return out;
}

/** The help of every row's own options, for `--optimizer-option`. */
export function optionsHelp(): string {
  const lines: string[] = [];
  for (const [name, kind] of Object.entries(OPTIMIZERS)) {
    for (const [k, r] of Object.entries(kind.options ?? {})) {
      lines.push(`${name}: ${k} (${r.help}; default ${r.default})`);
    }
  }
  return lines.join("; ");
}

/**
 * Checks `settings` for the optimizer named `name` as {@linkcode createOptimizer} would,
 * without building anything: a RangeError says what is wrong.
 */
export function checkOptimizer(name: string, settings: OptimizerSettings): void {
  resolve(name, settings);
}

/** Builds the optimizer named `name` (an error lists the names when it is unknown). */
export function createOptimizer(
  name: string,
  rt: Runtime,
  layout: ParamLayout,
  buffers: OptimizerBuffers,
  settings: OptimizerSettings,
): Promise<Optimizer> {
  const { kind, config, stateBase } = resolve(name, settings);
  return kind.create(rt, layout, buffers, config, {
    maxBindingBytes: rt.gpu.limits.maxStorageBufferBindingSize,
    stateBase,
  });
}

/**
 * Bytes of GPU state the optimizer named `name` allocates for `layout` (a shard's, with
 * `settings.stateBase`): the memory plan's figure, from the row that builds it.
 */
export function optimizerStateBytes(
  name: string,
  layout: ParamLayout,
  settings: OptimizerSettings,
  maxBindingBytes: number,
): number {
  const { kind, config, stateBase } = resolve(name, settings);
  return kind.stateBytes(layout, config, { maxBindingBytes, stateBase });
}
