/**
 * Adafactor (Shazeer & Stern 2018) on the GPU: for a 2-D tensor [rows, cols] the second moment
 * is factored into row sums R and column sums C of g^2 + eps1, V = R C^T / sum(R), so its state
 * is rows + cols floats; 1-D tensors keep the full V. Each step, with g the gradient as the
 * training step scaled it (gradStats: clip, loss scale) and t 1-based:
 *
 *   b2 = 1 - t^(-decay)
 *   R = b2 R + (1 - b2) rowsum(g^2 + eps1),  C = b2 C + (1 - b2) colsum(g^2 + eps1)   (2-D)
 *   V = b2 V + (1 - b2) (g^2 + eps1)                                                  (1-D)
 *   U = g / sqrt(V),  U /= max(1, RMS(U) / clip)      (update clipping, RMS over the tensor)
 *   m = beta1 m + (1 - beta1) U, U = m                (only when beta1 > 0)
 *   p -= lr * (U + wd * p)                            (decoupled decay, `decay` tensors only)
 *
 * The learning rate is the run's (no relative step size). A NaN or Inf gradient element adds
 * nothing to the sums and leaves its parameter (and m) alone; gradStats.skip skips the step.
 * Tensors over the binding limit run in pieces of whole rows (multiples of 64); walks over a
 * long dimension are split at WALK_ROWS.
 *
 * The kernel is kernels/adafactor.wgsl, its interface {@linkcode adafactorKernels}.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { packUniforms, type StructDecl, uniformLayout } from "../gpu/define_kernel.ts";
import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import { type BufferRange, grid1d, splitRange, WALK_ROWS } from "../gpu/kernel.ts";
import type { Profiler } from "../gpu/profiler.ts";
import { readSpans, type Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { arenaBytes } from "../model/plan.ts";
import { defineReducing, reduceForm } from "../model/ops/reduce.ts";
import { SplitBuffer, splitOf } from "../gpu/split_buffer.ts";
import { ownGradStats, roundSeed } from "./adamw_common.ts";
import { optimizerSource } from "./kernel_source.ts";
import {
  dispatchesWithin,
  GRAD_STATS_STRUCT,
  type Optimizer,
  otherOptimizerError,
  type SavedState,
  type StateTensor,
} from "./optimizer.ts";
import adafactorSrc from "../../kernels/adafactor.wgsl" with { type: "text" };

// ---------------------------------------------------------------------------
// The kernel

/** The per-step uniform (kernels/adafactor.wgsl's `s`), written by `setStep`. */
const ADAFACTOR_STEP: StructDecl = {
  struct: "Step",
  fields: {
    lr: "f32",
    beta2t: "f32",
    beta1: "f32",
    eps1: "f32",
    clip: "f32",
    wd: "f32",
    round_seed: "u32",
  },
};

/**
 * kernels/adafactor.wgsl's interface: its entry points, in the order of one step; in each
 * reduction form (src/model/ops/reduce.ts: the sums of one workgroup).
 */
export const adafactorKernels = defineReducing({
  name: "adafactor",
  source: optimizerSource(adafactorSrc),
  bindings: {
    params: { access: "read_write", type: "float" },
    grads: { access: "read", type: "float" },
    m: { access: "read_write", type: "f32" },
    state: { access: "read_write", type: "f32" },
    acc: { access: "read_write", type: "f32" },
    sums: { access: "read_write", type: "f32" },
    gstats: { access: "read", type: GRAD_STATS_STRUCT },
    s: { access: "uniform", type: ADAFACTOR_STEP },
  },
  uniforms: {
    n: "u32",
    rows: "u32",
    cols: "u32",
    row0: "u32",
    lo: "u32",
    hi: "u32",
    first: "u32",
    so: "u32",
    ao: "u32",
    k: "u32",
    decay: "u32",
    trows: "u32",
    nel: "u32",
    e0: "u32",
  },
  entryPoints: {
    row_sq: { bindings: ["grads", "acc", "gstats", "s"], loopBound: (u) => u.hi - u.lo },
    col_sq: { bindings: ["grads", "acc", "gstats", "s"], loopBound: (u) => u.hi - u.lo },
    decay2: { bindings: ["state", "acc", "gstats", "s"], loopBound: () => 0 },
    decay1: { bindings: ["grads", "state", "gstats", "s"], loopBound: () => 0 },
    sum_r: {
      bindings: ["state", "sums", "gstats"],
      loopBound: (u) => Math.ceil(u.trows / 64) + 64,
    },
    u_rows: {
      bindings: ["grads", "state", "acc", "sums", "gstats"],
      loopBound: (u) => u.hi - u.lo,
    },
    sum_u2: {
      bindings: ["acc", "sums", "gstats"],
      loopBound: (u) => Math.ceil(u.trows / 64) + 64,
    },
    sum_u1: {
      bindings: ["grads", "state", "sums", "gstats"],
      loopBound: (u) => Math.ceil(u.n / 64) + 64,
    },
    update: {
      bindings: ["params", "grads", "m", "state", "sums", "gstats", "s"],
      loopBound: () => 0,
    },
  },
});

/** An entry point of {@linkcode adafactorKernels}. */
type Entry = keyof typeof adafactorKernels.tree.decl.entryPoints;

// ---------------------------------------------------------------------------
// Settings and the state plan

/** Adafactor's settings. */
export interface AdafactorConfig {
  /** First-moment decay; 0 (default): no first moment, no m state. */
  beta1: number;
  /** c in the second-moment decay 1 - t^(-c) (default 0.8). */
  decay: number;
  /** Update clipping threshold d on RMS(U) (default 1). */
  clip: number;
  /** Added to every g^2 (default 1e-30). */
  eps1: number;
  /** Decoupled weight decay on `decay` tensors (the run's, default 0.1). */
  weightDecay: number;
}

/** The defaults of {@linkcode AdafactorConfig} (weight decay as AdamW's). */
export const ADAFACTOR_DEFAULTS: AdafactorConfig = {
  beta1: 0,
  decay: 0.8,
  clip: 1,
  eps1: 1e-30,
  weightDecay: 0.1,
};

/** How one tensor keeps its state and where. */
export interface AdafactorTensor {
  /** Hugging Face name. */
  name: string;
  /** First element in the flat buffers. */
  offset: number;
  /** Elements. */
  size: number;
  /** Weight decay applies. */
  decay: boolean;
  /** 2-D (and up): rows = all but the last dimension; 0 for 1-D (full V). */
  rows: number;
  /** Columns of the factored shape; 0 for 1-D. */
  cols: number;
  /** Offset of R then C (2-D) or V (1-D) in the state buffer, floats. */
  so: number;
  /** Offset of the row and column accumulators (2-D), floats. */
  ao: number;
  /** Pieces of whole rows (2-D) that fit one binding: [first row, rows]. */
  pieces: [number, number][];
}

const align64 = (n: number) => Math.ceil(n / 64) * 64;

/** The state plan of a layout: per tensor, and the floats of state and accumulators. */
export function adafactorPlan(
  layout: ParamLayout,
  maxBindingBytes: number,
): { tensors: AdafactorTensor[]; stateFloats: number; accFloats: number } {
  const limit = Math.floor(maxBindingBytes / 4);
  let so = 0, ao = 0;
  const tensors = layout.tensors.map((t): AdafactorTensor => {
    const cols = t.shape.length >= 2 ? t.shape[t.shape.length - 1] : 0;
    const rows = cols ? t.size / cols : 0;
    const x: AdafactorTensor = { ...t, rows, cols, so, ao, pieces: [] };
    if (cols) {
      const per = Math.max(64, Math.floor(limit / cols / 64) * 64);
      for (let r = 0; r < rows; r += per) x.pieces.push([r, Math.min(per, rows - r)]);
      so += align64(rows + cols);
      ao += align64(rows + cols);
    } else {
      if (t.size > limit) {
        throw new RangeError(
          `Adafactor: 1-D tensor ${t.name} of ${t.size} elements is over one binding: ` +
            "reshape it to 2-D",
        );
      }
      so += align64(t.size);
    }
    return x;
  });
  return { tensors, stateFloats: so, accFloats: ao };
}

/** Bytes of GPU state {@linkcode Adafactor} allocates for `layout` (the memory plan's). */
export function adafactorStateBytes(
  layout: ParamLayout,
  c: AdafactorConfig,
  maxBindingBytes: number,
): number {
  const { stateFloats } = adafactorPlan(layout, maxBindingBytes);
  return arenaBytes(stateFloats * 4) + (c.beta1 > 0 ? arenaBytes(layout.totalElements * 4) : 0);
}

// ---------------------------------------------------------------------------
// The optimizer

/**
 * Adafactor for one model's flat buffers (see the module doc).
 *
 * @example A step after a backward pass
 * ```ts ignore
 * const opt = await Adafactor.create(rt, model.layout, model, { beta1: 0 });
 * opt.setStep(1, 1e-2);
 * await runDispatches(rt.device, opt.dispatches);
 * ```
 */
export class Adafactor implements Optimizer {
  /** The runtime the optimizer's buffers and dispatches belong to. */
  readonly rt: Runtime;
  /** The settings, defaults filled in. */
  readonly config: AdafactorConfig;
  /** How each tensor keeps its state. */
  readonly tensors: AdafactorTensor[];
  /** The gradient statistics the update reads (GRAD_STATS: scale, skip). */
  readonly gradStats: GPUBuffer;
  /** R and C (2-D) or V (1-D) of every tensor, f32. */
  readonly state: GPUBuffer;
  /** First moments in the parameters' layout (beta1 > 0), else undefined. */
  readonly m?: GPUBuffer;
  /** Every dispatch of a step, in order. */
  dispatches: Dispatch[] = [];
  /** Each tensor's dispatches, by the elements it updates. */
  #parts: { offset: number; size: number; dispatches: Dispatch[] }[] = [];
  readonly #accFloats: number;
  readonly #mem: ArenaScope;
  readonly #step: GPUBuffer;
  #params?: SplitBuffer;

  private constructor(
    rt: Runtime,
    layout: ParamLayout,
    config: AdafactorConfig,
    maxBindingBytes: number,
    gradStats?: GPUBuffer,
  ) {
    this.rt = rt;
    this.config = config;
    this.#mem = rt.arena.scope();
    const plan = adafactorPlan(layout, maxBindingBytes);
    this.tensors = plan.tensors;
    this.#accFloats = plan.accFloats;
    this.state = this.#mem.alloc("adafactor.state", "optimizer", plan.stateFloats * 4);
    if (config.beta1 > 0) {
      this.m = this.#mem.alloc("adafactor.m", "optimizer", layout.totalElements * 4);
    }
    this.gradStats = gradStats ?? ownGradStats(this.#mem, "adafactor");
    this.#step = this.#mem.alloc(
      "adafactor.step",
      "scratch",
      uniformLayout(ADAFACTOR_STEP.fields).size,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
  }

  /** Builds the optimizer over the model's parameter and gradient buffers. */
  static async create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: {
      params: GPUBuffer | SplitBuffer;
      grads: GPUBuffer | SplitBuffer;
      gradStats?: GPUBuffer;
    },
    config: Partial<AdafactorConfig> = {},
    options: { maxBindingBytes?: number } = {},
  ): Promise<Adafactor> {
    const opt = new Adafactor(
      rt,
      layout,
      { ...ADAFACTOR_DEFAULTS, ...config },
      options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize,
      buffers.gradStats,
    );
    await opt.#build(splitOf(buffers.params), splitOf(buffers.grads));
    return opt;
  }

  async #build(params: SplitBuffer, grads: SplitBuffer): Promise<void> {
    const { rt } = this;
    this.#params = params;
    const acc = this.#mem.alloc("adafactor.acc", "scratch", Math.max(16, this.#accFloats * 4));
    const sums = this.#mem.alloc("adafactor.sums", "scratch", 8 * this.tensors.length);
    // Without a first moment the kernel never touches m: a small stand-in keeps it bound.
    const m = this.m ?? this.#mem.alloc("adafactor.m_unused", "scratch", 16);
    const out: Dispatch[] = [], starts: number[] = [];
    const kernel = adafactorKernels[await reduceForm(rt)];
    for (const [k, t] of this.tensors.entries()) {
      starts.push(out.length);
      // In the buffer's element type: the parameters and gradients may be f16.
      const range = (buffer: SplitBuffer, first: number, n: number): BufferRange => {
        const r = buffer.range(t.offset + first, n);
        return { ...r, size: Math.max(16, r.size) };
      };
      const dispatch = (
        entry: Entry,
        piece: { row0: number; rows: number; n: number },
        workgroups: [number, number, number],
        walk: [number, number, number] = [0, 0, 1], // [lo, hi, first]
      ) => {
        const first = t.cols ? piece.row0 * t.cols : 0;
        const all = {
          params: range(params, first, piece.n),
          grads: range(grads, first, piece.n),
          m: this.m ? range(SplitBuffer.of(m), first, piece.n) : { buffer: m },
          state: this.state,
          acc,
          sums,
          gstats: this.gradStats,
          s: this.#step,
        };
        // Each entry point binds exactly what it uses.
        const uses = kernel.decl.entryPoints[entry].bindings;
        return kernel.dispatch(rt, entry, {
          buffers: Object.fromEntries(uses.map((b) => [b, all[b]])),
          uniforms: {
            n: piece.n,
            rows: piece.rows,
            cols: t.cols,
            row0: piece.row0,
            lo: walk[0],
            hi: walk[1],
            first: walk[2],
            so: t.so,
            ao: t.ao,
            k,
            decay: t.decay ? 1 : 0,
            trows: t.rows,
            nel: t.size,
            e0: t.offset + first,
          },
          workgroups,
        });
      };
      const whole = { row0: 0, rows: t.rows, n: t.size };
      if (!t.cols) {
        out.push(await dispatch("decay1", whole, grid1d(t.size, 64)));
        out.push(await dispatch("sum_u1", whole, [1, 1, 1]));
        out.push(await dispatch("update", whole, grid1d(t.size, 64)));
        continue;
      }
      const pieces = t.pieces.map(([row0, rows]) => ({ row0, rows, n: rows * t.cols }));
      // Row sums walk a row's columns, column sums a piece's rows: within the loop budget.
      const rowWalks = async (entry: Entry, p: typeof pieces[number]) => {
        for (const [lo, hi] of splitRange(t.cols, WALK_ROWS)) {
          out.push(await dispatch(entry, p, grid1d(p.rows, 64), [lo, hi, lo === 0 ? 1 : 0]));
        }
      };
      for (const [i, p] of pieces.entries()) {
        await rowWalks("row_sq", p);
        for (const [lo, hi] of splitRange(p.rows, WALK_ROWS)) {
          const first = i === 0 && lo === 0 ? 1 : 0;
          out.push(await dispatch("col_sq", p, grid1d(t.cols, 64), [lo, hi, first]));
        }
      }
      out.push(await dispatch("decay2", whole, grid1d(t.rows + t.cols, 64)));
      out.push(await dispatch("sum_r", whole, [1, 1, 1]));
      for (const p of pieces) await rowWalks("u_rows", p);
      out.push(await dispatch("sum_u2", whole, [1, 1, 1]));
      for (const p of pieces) out.push(await dispatch("update", p, grid1d(p.n, 64)));
    }
    this.dispatches = out;
    this.#parts = this.tensors.map((t, k) => ({
      offset: t.offset,
      size: t.size,
      dispatches: out.slice(starts[k], starts[k + 1] ?? out.length),
    }));
  }

  /** Writes the per-step uniform for step `t` (1-based) at learning rate `lr`. */
  setStep(t: number, lr: number): void {
    const c = this.config;
    const words = packUniforms("Adafactor step", ADAFACTOR_STEP.fields, {
      lr,
      beta2t: 1 - t ** -c.decay,
      beta1: c.beta1,
      eps1: c.eps1,
      clip: c.clip,
      wd: c.weightDecay,
      round_seed: roundSeed(this.#params!, t),
    });
    this.rt.device.queue.writeBuffer(this.#step, 0, words);
  }

  /** The update of the tensors in elements [start, end) (optimizer in backward). */
  updatePart(start: number, end: number): Dispatch[] {
    return dispatchesWithin(this.#parts, start, end);
  }

  /** Encodes the update (all of it runs in the step's encoder). */
  encodeUpdate(encoder: GPUCommandEncoder, profiler?: Profiler): void {
    encodeDispatches(encoder, this.dispatches, profiler);
  }

  /** Nothing to finish. */
  finishUpdate(): Promise<void> {
    return Promise.resolve();
  }

  /** Bytes of optimizer state (R, C, V and m). */
  get stateBytes(): number {
    return this.state.size + (this.m?.size ?? 0);
  }

  /** All state is on the GPU. */
  get hostBytes(): number {
    return 0;
  }

  /** The names and spans of the state tensors, in checkpoint order. */
  #spans(): { name: string; buffer: GPUBuffer; offset: number; size: number }[] {
    const out = [];
    for (const t of this.tensors) {
      if (t.cols) {
        out.push({ name: `adafactor.r.${t.name}`, buffer: this.state, offset: t.so, size: t.rows });
        out.push({
          name: `adafactor.c.${t.name}`,
          buffer: this.state,
          offset: t.so + t.rows,
          size: t.cols,
        });
      } else {
        out.push({ name: `adafactor.v.${t.name}`, buffer: this.state, offset: t.so, size: t.size });
      }
    }
    if (this.m) {
      for (const t of this.tensors) {
        out.push({ name: `adafactor.m.${t.name}`, buffer: this.m, offset: t.offset, size: t.size });
      }
    }
    return out;
  }

  /** R and C (2-D), V (1-D) and m per tensor, for a checkpoint. */
  async readState(): Promise<StateTensor[]> {
    const spans = this.#spans(), out: StateTensor[] = [];
    for (const buffer of [this.state, this.m]) {
      const mine = spans.filter((s) => s.buffer === buffer);
      if (!buffer || !mine.length) continue;
      const data = await readSpans(this.rt.device, buffer, mine);
      mine.forEach((s, i) => out.push({ name: s.name, shape: [s.size], data: data[i] }));
    }
    return out;
  }

  /** Restores state saved by {@linkcode readState}; checks every size first. */
  writeState(saved: SavedState): void {
    const spans = this.#spans();
    const arrays = spans.map((s) => {
      if (!saved.has(s.name)) throw otherOptimizerError(saved, s.name);
      const a = saved.f32(s.name);
      if (a.length !== s.size) {
        throw new Error(`${saved.path}: "${s.name}" has ${a.length} values, needs ${s.size}`);
      }
      return a;
    });
    spans.forEach((s, i) => this.rt.device.queue.writeBuffer(s.buffer, s.offset * 4, arrays[i]));
  }

  /** Frees the state and every buffer the optimizer made. */
  destroy(): void {
    for (const d of this.dispatches) for (const b of d.resources ?? []) this.rt.arena.free(b);
    this.#mem.freeAll();
    this.dispatches = [];
  }
}
