/**
 * AdamW on the GPU over the flat parameter buffer, fp32 state (m, v) in the same layout.
 *
 * Each tensor is one or more binding-sized ranges; every range gets an AdamW dispatch (with
 * its weight-decay flag). Per-step values go into one uniform buffer written once per step;
 * the gradient scale (clip, loss scale) and skip flag are read from `gradStats`, which the
 * training step writes (src/train/grad_norm.ts).
 *
 * @module
 */

import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import type { ArenaScope } from "../gpu/arena.ts";
import { defineKernel } from "../gpu/define_kernel.ts";
import { type SplitBuffer, splitOf } from "../gpu/split_buffer.ts";
import { grid1d } from "../gpu/kernel.ts";
import type { Profiler } from "../gpu/profiler.ts";
import { readSpans, type Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import {
  dispatchesWithin,
  type Optimizer,
  otherOptimizerError,
  type SavedState,
  type StateTensor,
} from "./optimizer.ts";

export type { Optimizer } from "./optimizer.ts";
import adamwBody from "../../kernels/adamw.wgsl" with { type: "text" };
import {
  ADAMW_DEFAULTS,
  type AdamWConfig,
  parameterRanges,
  stepBuffers,
  stepWords,
} from "./adamw_common.ts";
import { ADAMW_BINDINGS, optimizerSource } from "./kernel_source.ts";

export {
  ADAMW_DEFAULTS,
  type AdamWConfig,
  parameterRanges,
  type ParamRange,
  stepBuffers,
  stepWords,
} from "./adamw_common.ts";

/**
 * kernels/adamw.wgsl's interface: `main` writes the f32 parameters, `main_f16copy` their f16
 * copy as well (mixed precision, fused: no cast pass after the step).
 */
export const adamwKernel = defineKernel({
  name: "adamw",
  source: optimizerSource(adamwBody, { adamw: true }),
  bindings: {
    ...ADAMW_BINDINGS,
    m: { access: "read_write", type: "f32" },
    v: { access: "read_write", type: "f32" },
    // The f16 copy (an f16 buffer; f32 in the header of `main`, which never touches it).
    half: { access: "read_write", type: "float" },
  },
  uniforms: { n: "u32", decay: "u32", p0: "u32", e0: "u32" },
  entryPoints: {
    main: {
      bindings: ["params", "grads", "m", "v", "gstats", "s"],
      loopBound: () => 0,
      label: "adamw",
    },
    main_f16copy: {
      bindings: ["params", "grads", "m", "v", "gstats", "s", "half"],
      loopBound: () => 0,
      label: "adamw_f16copy",
    },
  },
});

/** The f16 copy's binding for a range: from the 256-byte boundary at or before its start. */
function halfWindow(half: GPUBuffer, offset: number, size: number) {
  const base = Math.floor(offset / 128) * 128;
  return { buffer: half, offset: base * 2, size: Math.ceil(((offset - base + size) * 2) / 4) * 4 };
}

/**
 * fp32 AdamW for one model's flat buffers.
 *
 * @example One optimizer step after a backward pass
 * ```ts
 * import {
 *   AdamW,
 *   createRuntime,
 *   GPT2,
 *   readF32,
 *   resolveConfig,
 *   runDispatches,
 * } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const model = await GPT2.create(rt, resolveConfig("tiny"), { B: 1, T: 8 });
 * const opt = await AdamW.create(rt, model.layout, { params: model.params, grads: model.grads });
 * const tokens = [1, 2, 3, 4, 5, 6, 7, 8];
 * await model.forwardBackward(tokens, [...tokens.slice(1), 9]); // gradients in model.grads
 * opt.setStep(1, 6e-4); // step 1 at learning rate 6e-4
 * await runDispatches(rt.device, opt.dispatches); // the update, gradients as they are
 * model.markParamsChanged();
 * console.log(await readF32(rt.device, model.params, 0, 4));
 * ```
 */
export class AdamW implements Optimizer {
  /** The runtime the optimizer's buffers and dispatches belong to. */
  readonly rt: Runtime;
  /** The hyperparameters, defaults filled in. */
  readonly config: AdamWConfig;
  /** The parameter layout the state follows (the model's, or a shard of it). */
  readonly layout: ParamLayout;
  /** Element of the parameters where the state starts (a ZeRO-1 shard's first; else 0). */
  readonly stateBase: number;
  /** True when the update also writes the parameters' f16 copy (no cast pass after it). */
  readonly writesHalf: boolean;
  /** First moments (m), flat f32, same layout as the parameters. */
  readonly m: GPUBuffer;
  /** Second moments (v), flat f32, same layout as the parameters. */
  readonly v: GPUBuffer;
  /** The gradient statistics the update reads (GRAD_STATS: scale, skip). */
  readonly gradStats: GPUBuffer;
  /** The AdamW dispatches, one per range. */
  dispatches: Dispatch[] = [];
  /** Each range's dispatch, by the elements it updates. */
  #parts: { offset: number; size: number; dispatches: Dispatch[] }[] = [];
  #stepUniform: GPUBuffer;
  #params?: SplitBuffer;
  #mem: ArenaScope;

  private constructor(
    rt: Runtime,
    layout: ParamLayout,
    config: AdamWConfig,
    stateBase: number,
    writesHalf: boolean,
    gradStats?: GPUBuffer,
  ) {
    this.rt = rt;
    this.writesHalf = writesHalf;
    this.#mem = rt.arena.scope();
    this.layout = layout;
    this.config = config;
    this.stateBase = stateBase;
    const bytes = (layout.totalElements - stateBase) * 4;
    this.m = this.#mem.alloc("adamw.m", "optimizer", bytes);
    this.v = this.#mem.alloc("adamw.v", "optimizer", bytes);
    ({ gradStats: this.gradStats, step: this.#stepUniform } = stepBuffers(
      this.#mem,
      "adamw",
      gradStats,
    ));
  }

  /** Builds the optimizer for the given parameter and gradient buffers. */
  static async create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: {
      params: GPUBuffer | SplitBuffer;
      grads: GPUBuffer | SplitBuffer;
      half?: GPUBuffer | SplitBuffer;
      gradStats?: GPUBuffer;
    },
    config: Partial<AdamWConfig> = {},
    options: {
      maxBindingBytes?: number;
      /**
       * ZeRO-1: the layout holds one shard's tensors, which start at this element; the state
       * covers only [stateBase, layout.totalElements).
       */
      stateBase?: number;
    } = {},
  ): Promise<AdamW> {
    const opt = new AdamW(
      rt,
      layout,
      { ...ADAMW_DEFAULTS, ...config },
      options.stateBase ?? 0,
      buffers.half !== undefined,
      buffers.gradStats,
    );
    await opt.#build(
      splitOf(buffers.params),
      splitOf(buffers.grads),
      options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize,
      buffers.half && splitOf(buffers.half),
    );
    return opt;
  }

  async #build(
    params: SplitBuffer,
    grads: SplitBuffer,
    maxBindingBytes: number,
    half?: SplitBuffer,
  ): Promise<void> {
    if (half && half.dtype !== "f16") {
      throw new TypeError(
        `AdamW: the parameters' f16 copy ("${half.parts[0].buffer.label}") holds ${half.dtype}: ` +
          "pass the f16 buffer (Weights.half)",
      );
    }
    const rt = this.rt;
    this.#params = params;
    const ranges = parameterRanges(this.layout, maxBindingBytes);
    const update: Dispatch[] = [];
    for (const r of ranges) {
      const state = (buffer: GPUBuffer) => ({
        buffer,
        offset: (r.offset - this.stateBase) * 4,
        size: r.size * 4,
      });
      const buffers = {
        params: params.range(r.offset, r.size),
        grads: grads.range(r.offset, r.size),
        m: state(this.m),
        v: state(this.v),
        gstats: this.gradStats,
        s: this.#stepUniform, // per-step values, shared by every range
      };
      // With the f16 copy: bound from the 128-element (256-byte) boundary at or before the
      // range, which the kernel's p.p0 (the range's offset past that boundary) skips.
      const h = half?.at(r.offset, r.size);
      update.push(
        await adamwKernel.dispatch(rt, h ? "main_f16copy" : "main", {
          buffers: h ? { ...buffers, half: halfWindow(h.buffer, h.offset, r.size) } : buffers,
          uniforms: { n: r.size, decay: r.decay ? 1 : 0, p0: r.offset % 128, e0: r.offset },
          workgroups: grid1d(r.size, 64),
          flops: 12 * r.size,
        }),
      );
    }
    this.dispatches = update;
    this.#parts = ranges.map((r, i) => ({
      offset: r.offset,
      size: r.size,
      dispatches: [update[i]],
    }));
  }

  /** Writes the per-step uniform for step `t` (1-based) at learning rate `lr`. */
  setStep(t: number, lr: number): void {
    this.rt.device.queue.writeBuffer(
      this.#stepUniform,
      0,
      stepWords(this.config, t, lr, this.#params!),
    );
  }

  /** Encodes the update (all of it runs in the step's encoder). */
  encodeUpdate(encoder: GPUCommandEncoder, profiler?: Profiler): void {
    encodeDispatches(encoder, this.dispatches, profiler);
  }

  /** The update of the tensors in elements [start, end) (optimizer in backward). */
  updatePart(start: number, end: number): Dispatch[] {
    return dispatchesWithin(this.#parts, start, end);
  }

  /** Nothing to finish: the update ran in the step's encoder. */
  finishUpdate(): Promise<void> {
    return Promise.resolve();
  }

  /** m and v per tensor, for a checkpoint. */
  readState(): Promise<StateTensor[]> {
    return readAdamWState(this);
  }

  /** Restores m and v saved by {@linkcode readState}; checks every size first. */
  writeState(saved: SavedState): void {
    const arrays = new Map<string, Float32Array<ArrayBuffer>>();
    for (const which of ["m", "v"]) {
      for (const t of this.layout.tensors) {
        const name = `${which}.${t.name}`;
        if (!saved.has(name)) throw otherOptimizerError(saved, name);
        const a = saved.f32(name);
        if (a.length !== t.size) {
          throw new Error(`${saved.path}: "${name}" has ${a.length} values, needs ${t.size}`);
        }
        arrays.set(name, a);
      }
    }
    writeAdamWState(this, (name) => arrays.get(name)!);
  }

  /** Bytes of optimizer state (m and v). */
  get stateBytes(): number {
    return this.m.size + this.v.size;
  }

  /** All state is on the GPU. */
  get hostBytes(): number {
    return 0;
  }

  /** Frees the state and every buffer the optimizer made. */
  destroy(): void {
    for (const d of this.dispatches) for (const b of d.resources ?? []) this.rt.arena.free(b);
    this.#mem.freeAll();
    this.dispatches = [];
  }
}

// ---------------------------------------------------------------------------
// State for checkpoints: m and v per tensor, full (padded) size, f32.

/** m and v of every tensor as named f32 arrays (`m.<name>`, `v.<name>`), read in a few spans. */
export async function readAdamWState(opt: AdamW): Promise<StateTensor[]> {
  const out: StateTensor[] = [];
  for (const which of ["m", "v"] as const) {
    const tensors = opt.layout.tensors.map((t) => ({ ...t, offset: t.offset - opt.stateBase }));
    const data = await readSpans(opt.rt.device, which === "m" ? opt.m : opt.v, tensors);
    tensors.forEach((t, i) =>
      out.push({ name: `${which}.${t.name}`, shape: [t.size], data: data[i] })
    );
  }
  return out;
}

/** Restores m and v from arrays named as {@linkcode readAdamWState} writes them. */
export function writeAdamWState(
  opt: AdamW,
  get: (name: string, size: number) => Float32Array<ArrayBuffer>,
): void {
  for (const which of ["m", "v"] as const) {
    const buf = which === "m" ? opt.m : opt.v;
    for (const t of opt.layout.tensors) {
      const at = (t.offset - opt.stateBase) * 4;
      opt.rt.device.queue.writeBuffer(buf, at, get(`${which}.${t.name}`, t.size));
    }
  }
}
