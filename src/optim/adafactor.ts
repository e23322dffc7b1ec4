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
 * The kernel is in this file, not kernels/, so that the optimizer is one module: it is put
 * together with the GradStats struct by src/optim/kernel_source.ts like every other one.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import {
  type BufferRange,
  f32Bits,
  grid1d,
  makeDispatch,
  splitRange,
  WALK_ROWS,
} from "../gpu/kernel.ts";
import type { Profiler } from "../gpu/profiler.ts";
import { readSpans, type Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { arenaBytes } from "../model/plan.ts";
import { ownGradStats } from "./adamw_common.ts";
import { optimizerKernel } from "./kernel_source.ts";
import {
  type Optimizer,
  otherOptimizerError,
  type SavedState,
  type StateTensor,
} from "./optimizer.ts";

// ---------------------------------------------------------------------------
// The kernel

/**
 * adafactor: the entry points of one step, in order per 2-D tensor: row_sq and col_sq (per
 * piece, walks of [lo, hi)), decay2, sum_r, u_rows (per piece), sum_u2, update (per piece);
 * per 1-D tensor: decay1, sum_u1, update.
 *
 * Shapes: params, grads, m [n] (a piece: rows x cols, or the whole 1-D tensor); state: R [trows]
 * then C [cols] at so (2-D), V [n] at so (1-D); acc [trows + cols] at ao; sums [2 * tensors]:
 * sum(R), sum(U^2) of tensor k at 2k, 2k + 1.
 * Bindings: 0 params, 1 grads, 2 m, 3 state, 4 acc, 5 sums, 6 gstats, 7 step (uniform),
 * 8 piece (uniform); each entry point binds only what it uses.
 * Geometry: row_sq, u_rows: one invocation per piece row; col_sq: per column; decay2: per
 * row and column; decay1, update: per element (64 wide, folded into y); sum_*: one
 * workgroup of 64.
 * Loop bound per invocation: row_sq, col_sq, u_rows hi - lo (at most WALK_ROWS); sum_r,
 * sum_u2 ceil(trows / 64) + 6; sum_u1 ceil(n / 64) + 6; others 0.
 */
const ADAFACTOR_WGSL = /* wgsl */ `
struct Step { lr: f32, beta2t: f32, beta1: f32, eps1: f32, clip: f32, wd: f32, p0: f32, p1: f32 }
// row0: the piece's first row in its tensor; first: the walk starts the sum; so, ao: state
// and acc offsets; k: the tensor's sums slot; nel: the tensor's elements.
struct Piece {
  n: u32, rows: u32, cols: u32, row0: u32, lo: u32, hi: u32, first: u32, so: u32,
  ao: u32, k: u32, decay: u32, trows: u32, nel: u32, p0: u32, p1: u32, p2: u32,
}

@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;
@group(0) @binding(5) var<storage, read_write> sums: array<f32>;
@group(0) @binding(6) var<storage, read> gstats: GradStats;
@group(0) @binding(7) var<uniform> s: Step;
@group(0) @binding(8) var<uniform> q: Piece;

var<workgroup> red: array<f32, 64>;

fn is_finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The gradient as the update uses it (0 where it is not finite).
fn grad(e: u32) -> f32 {
  let g = grads[e] * gstats.scale;
  return select(0.0, g, is_finite(g));
}

fn sq(e: u32) -> f32 {
  let g = grad(e);
  return g * g + s.eps1;
}

fn linear(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

// The factored (2-D) or full (1-D) second moment of element e of the piece.
fn vhat(e: u32) -> f32 {
  if (q.cols == 0u) { return state[q.so + e]; }
  let i = q.row0 + e / q.cols;
  return state[q.so + i] * state[q.so + q.trows + e % q.cols] / sums[2u * q.k];
}

// The fixed tree sum of red[0..64) (every invocation of the workgroup calls it).
fn tree(l: u32, x: f32) -> f32 {
  red[l] = x;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (l < w) { red[l] += red[l + w]; }
    workgroupBarrier();
  }
  return red[0];
}

@compute @workgroup_size(64, 1, 1)
fn row_sq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear(gid, nwg);
  if (i >= q.rows || gstats.skip != 0.0) { return; }
  var x = select(acc[q.ao + q.row0 + i], 0.0, q.first == 1u);
  for (var j = q.lo; j < q.hi; j++) { x += sq(i * q.cols + j); }
  acc[q.ao + q.row0 + i] = x;
}

@compute @workgroup_size(64, 1, 1)
fn col_sq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear(gid, nwg);
  if (j >= q.cols || gstats.skip != 0.0) { return; }
  var x = select(acc[q.ao + q.trows + j], 0.0, q.first == 1u);
  for (var i = q.lo; i < q.hi; i++) { x += sq(i * q.cols + j); }
  acc[q.ao + q.trows + j] = x;
}

@compute @workgroup_size(64, 1, 1)
fn decay2(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let x = linear(gid, nwg);
  if (x >= q.trows + q.cols || gstats.skip != 0.0) { return; }
  state[q.so + x] = s.beta2t * state[q.so + x] + (1.0 - s.beta2t) * acc[q.ao + x];
}

@compute @workgroup_size(64, 1, 1)
fn decay1(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = linear(gid, nwg);
  if (e >= q.n || gstats.skip != 0.0) { return; }
  state[q.so + e] = s.beta2t * state[q.so + e] + (1.0 - s.beta2t) * sq(e);
}

@compute @workgroup_size(64, 1, 1)
fn sum_r(@builtin(local_invocation_index) l: u32) {
  if (gstats.skip != 0.0) { return; }
  var x = 0.0;
  for (var i = l; i < q.trows; i += 64u) { x += state[q.so + i]; }
  let t = tree(l, x);
  if (l == 0u) { sums[2u * q.k] = t; }
}

@compute @workgroup_size(64, 1, 1)
fn u_rows(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear(gid, nwg);
  if (i >= q.rows || gstats.skip != 0.0) { return; }
  var x = select(acc[q.ao + q.row0 + i], 0.0, q.first == 1u);
  for (var j = q.lo; j < q.hi; j++) {
    let e = i * q.cols + j;
    let g = grad(e);
    x += g * g / vhat(e);
  }
  acc[q.ao + q.row0 + i] = x;
}

@compute @workgroup_size(64, 1, 1)
fn sum_u2(@builtin(local_invocation_index) l: u32) {
  if (gstats.skip != 0.0) { return; }
  var x = 0.0;
  for (var i = l; i < q.trows; i += 64u) { x += acc[q.ao + i]; }
  let t = tree(l, x);
  if (l == 0u) { sums[2u * q.k + 1u] = t; }
}

@compute @workgroup_size(64, 1, 1)
fn sum_u1(@builtin(local_invocation_index) l: u32) {
  if (gstats.skip != 0.0) { return; }
  var x = 0.0;
  for (var e = l; e < q.n; e += 64u) {
    let g = grad(e);
    x += g * g / state[q.so + e];
  }
  let t = tree(l, x);
  if (l == 0u) { sums[2u * q.k + 1u] = t; }
}

@compute @workgroup_size(64, 1, 1)
fn update(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = linear(gid, nwg);
  if (e >= q.n || gstats.skip != 0.0) { return; }
  let g = grads[e] * gstats.scale;
  if (!is_finite(g)) { return; } // NaN/Inf: leave p and m
  let rms = sqrt(sums[2u * q.k + 1u] / f32(q.nel));
  var u = g / sqrt(vhat(e)) / max(1.0, rms / s.clip);
  if (s.beta1 > 0.0) {
    u = s.beta1 * m[e] + (1.0 - s.beta1) * u;
    m[e] = u;
  }
  let p = params[e];
  let wd = select(0.0, s.wd, q.decay == 1u);
  params[e] = p - s.lr * (u + wd * p);
}
`;

const adafactorSrc = optimizerKernel(ADAFACTOR_WGSL);

/** The most loop iterations one invocation of `entry` runs (the kernel's header). */
function loopBound(entry: string, t: AdafactorTensor, n: number, walk: number[]): number {
  if (entry === "row_sq" || entry === "col_sq" || entry === "u_rows") return walk[1] - walk[0];
  if (entry === "sum_r" || entry === "sum_u2") return Math.ceil(t.rows / 64) + 6;
  if (entry === "sum_u1") return Math.ceil(n / 64) + 6;
  return 0;
}

/** The bindings each entry point uses ("auto" layouts bind exactly those). */
const USES: Record<string, number[]> = {
  row_sq: [1, 4, 6, 7, 8],
  col_sq: [1, 4, 6, 7, 8],
  decay2: [3, 4, 6, 7, 8],
  decay1: [1, 3, 6, 7, 8],
  sum_r: [3, 5, 6, 8],
  u_rows: [1, 3, 4, 5, 6, 8],
  sum_u2: [4, 5, 6, 8],
  sum_u1: [1, 3, 5, 6, 8],
  update: [0, 1, 2, 3, 5, 6, 7, 8],
};

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
  readonly #accFloats: number;
  readonly #mem: ArenaScope;
  readonly #step: GPUBuffer;

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
      32,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
  }

  /** Builds the optimizer over the model's parameter and gradient buffers. */
  static async create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: { params: GPUBuffer; grads: GPUBuffer; gradStats?: GPUBuffer },
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
    await opt.#build(buffers.params, buffers.grads);
    return opt;
  }

  async #build(params: GPUBuffer, grads: GPUBuffer): Promise<void> {
    const { rt } = this;
    const acc = this.#mem.alloc("adafactor.acc", "scratch", Math.max(16, this.#accFloats * 4));
    const sums = this.#mem.alloc("adafactor.sums", "scratch", 8 * this.tensors.length);
    // Without a first moment the kernel never touches m: a small stand-in keeps it bound.
    const m = this.m ?? this.#mem.alloc("adafactor.m_unused", "scratch", 16);
    const out: Dispatch[] = [];
    for (const [k, t] of this.tensors.entries()) {
      const range = (buffer: GPUBuffer, first: number, n: number): BufferRange => ({
        buffer,
        offset: (t.offset + first) * 4,
        size: Math.max(16, n * 4),
      });
      const dispatch = (
        entryPoint: string,
        piece: { row0: number; rows: number; n: number },
        workgroups: [number, number, number],
        walk: [number, number, number] = [0, 0, 1], // [lo, hi, first]
      ) => {
        const first = t.cols ? piece.row0 * t.cols : 0;
        const all: Record<number, BufferRange> = {
          0: range(params, first, piece.n),
          1: range(grads, first, piece.n),
          2: this.m ? range(m, first, piece.n) : { buffer: m },
          3: { buffer: this.state },
          4: { buffer: acc },
          5: { buffer: sums },
          6: { buffer: this.gradStats },
          7: { buffer: this.#step },
        };
        const words = [
          piece.n,
          piece.rows,
          t.cols,
          piece.row0,
          ...walk,
          t.so,
          t.ao,
          k,
          t.decay ? 1 : 0,
          t.rows,
          t.size,
        ];
        return makeDispatch(rt, {
          name: `adafactor_${entryPoint}`,
          code: adafactorSrc,
          entryPoint,
          buffers: Object.fromEntries(
            USES[entryPoint].filter((b) => b < 8).map((b) => [
              b,
              all[b],
            ]),
          ),
          uniform: { binding: 8, words },
          workgroups,
          loops: {
            bound: loopBound(entryPoint, t, piece.n, walk),
            shape: { ...piece, cols: t.cols },
          },
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
      const rowWalks = async (entry: string, p: typeof pieces[number]) => {
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
  }

  /** Writes the per-step uniform for step `t` (1-based) at learning rate `lr`. */
  setStep(t: number, lr: number): void {
    const c = this.config;
    const words = [lr, 1 - t ** -c.decay, c.beta1, c.eps1, c.clip, c.weightDecay, 0, 0];
    this.rt.device.queue.writeBuffer(this.#step, 0, new Uint32Array(words.map(f32Bits)));
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
