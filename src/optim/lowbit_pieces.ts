/**
 * The update dispatches of one piece of low-bit state: fp32 AdamW, 8-bit block-wise, or
 * 4-bit with rank-1 (row and column max, in walks within the loop budget) or block-wise
 * normalisation of v.
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import type { BindingDecl } from "../gpu/define_kernel.ts";
import { type BufferRange, grid1d, splitRange, WALK_ROWS } from "../gpu/kernel.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { SplitBuffer } from "../gpu/split_buffer.ts";
import { defineReducing, reduceForm } from "../model/ops/reduce.ts";
import type { StateKind, StatePiece } from "./lowbit_plan.ts";
import { adamwKernel } from "./adamw.ts";
import { ADAMW_BINDINGS, optimizerSource } from "./kernel_source.ts";
import adamw8Body from "../../kernels/adamw8bit.wgsl" with { type: "text" };
import adamw4Body from "../../kernels/adamw4bit.wgsl" with { type: "text" };

/** What both low-bit kernels bind: AdamW's, the quantized moments, their block maxima, the maps. */
const LOWBIT_BINDINGS = {
  ...ADAMW_BINDINGS,
  mq: { access: "read_write", type: "u32" },
  vq: { access: "read_write", type: "u32" },
  mabs: { access: "read_write", type: "f32" },
  vabs: { access: "read_write", type: "f32" },
  maps: { access: "read", type: "f32" },
} as const satisfies Record<string, BindingDecl>;

/**
 * kernels/adamw8bit.wgsl's interface: one workgroup of WG per block of 4 * WG elements, in each
 * reduction form (src/model/ops/reduce.ts: the block's max).
 */
export const adamw8bitKernels = defineReducing({
  name: "adamw8bit",
  source: optimizerSource(adamw8Body, { adamw: true, lowbit: true }),
  bindings: LOWBIT_BINDINGS,
  uniforms: { n: "u32", decay: "u32", e0: "u32" },
  overrides: { WG: { type: "u32", default: 64 } },
  entryPoints: {
    main: {
      bindings: ["params", "grads", "mq", "vq", "mabs", "vabs", "maps", "gstats", "s"],
      // The map load, two passes of 4 codes of 9 halvings each, the block's max.
      loopBound: (_, o) => 512 / o.WG + 2 * 4 * 9 + o.WG,
      label: "adamw8bit",
    },
  },
});

/**
 * kernels/adamw4bit.wgsl's interface, in each reduction form (the update's block max).
 * `scales` is the piece's row and column maxima (rank-1 v), or the first 16 bytes of the
 * scales buffer (block-wise v, which never reads it).
 */
export const adamw4bitKernels = defineReducing({
  name: "adamw4bit",
  source: optimizerSource(adamw4Body, { adamw: true, lowbit: true }),
  bindings: { ...LOWBIT_BINDINGS, scales: { access: "read_write", type: "f32" } },
  uniforms: {
    n: "u32",
    decay: "u32",
    rows: "u32",
    cols: "u32",
    lo: "u32",
    hi: "u32",
    first: "u32",
    e0: "u32",
  },
  entryPoints: {
    row_max: {
      bindings: ["grads", "vq", "scales", "maps", "gstats", "s"],
      loopBound: (u) => u.hi - u.lo,
    },
    col_max: {
      bindings: ["grads", "vq", "scales", "maps", "gstats", "s"],
      loopBound: (u) => u.hi - u.lo,
    },
    update: {
      bindings: ["params", "grads", "mq", "vq", "mabs", "vabs", "scales", "maps", "gstats", "s"],
      // The maps, two passes of 8 codes of 5 halvings each, the block's max over 16.
      loopBound: () => 2 + 2 * 8 * 5 + 16,
    },
    // gstats: a skipped step keeps the old scales.
    commit: { bindings: ["scales", "gstats"], loopBound: () => 0 },
  },
});

/** The buffers and settings every piece's dispatches bind. */
export interface PieceContext {
  /** Flat parameters. */
  params: SplitBuffer;
  /** Flat gradients. */
  grads: SplitBuffer;
  /** The state buffers by kind (offload: the one-piece window). */
  state: Record<StateKind, GPUBuffer>;
  /** The gradient statistics (GRAD_STATS), read by the update. */
  gradStats: GPUBuffer;
  /** The per-step uniform. */
  step: GPUBuffer;
  /** The 8-bit maps (signed, unsigned: 512 floats). */
  maps8: GPUBuffer;
  /** The 4-bit maps (signed, linear without zero: 32 floats). */
  maps4: GPUBuffer;
  /** 8-bit block size. */
  block8: number;
  /** Offload: the piece's state sits at the start of the GPU window. */
  offload: boolean;
}

const zero = { f32: 0, words: 0, abs: 0, scales: 0 };
const f = (buffer: GPUBuffer, offset: number, size: number): BufferRange => ({
  buffer,
  offset: offset * 4,
  size: Math.max(16, size * 4),
});

/** Builds the update dispatches of one state piece. */
export async function pieceDispatches(
  rt: Runtime,
  piece: StatePiece,
  ctx: PieceContext,
): Promise<Dispatch[]> {
  const out: Dispatch[] = [];
  // Offloaded state sits at the start of the GPU window.
  const p = ctx.offload ? { ...piece, ...zero } : piece;
  // Parameters and gradients in their own element type (f32, or f16: 16-bit weights/gradients).
  const pr = ctx.params.range(p.offset, p.size), gr = ctx.grads.range(p.offset, p.size);
  if (p.kind === "fp32") {
    out.push(
      await adamwKernel.dispatch(rt, "main", {
        buffers: {
          params: pr,
          grads: gr,
          m: f(ctx.state.m32, p.f32, p.size),
          v: f(ctx.state.v32, p.f32, p.size),
          gstats: ctx.gradStats,
          s: ctx.step,
        },
        uniforms: { n: p.size, decay: p.decay ? 1 : 0, p0: 0, e0: p.offset },
        workgroups: grid1d(p.size, 64),
      }),
    );
    return out;
  }
  const block = p.kind === "q8" ? ctx.block8 : 128;
  const nWords = Math.ceil(p.size / (p.kind === "q8" ? 4 : 8));
  const nBlocks = Math.ceil(p.size / block);
  const common = {
    params: pr,
    grads: gr,
    mq: f(ctx.state.mq, p.words, nWords),
    vq: f(ctx.state.vq, p.words, nWords),
    mabs: f(ctx.state.mabs, p.abs, nBlocks),
    vabs: f(ctx.state.vabs, p.abs, nBlocks),
    gstats: ctx.gradStats,
    s: ctx.step,
  };
  const form = await reduceForm(rt);
  if (p.kind === "q8") {
    out.push(
      await adamw8bitKernels[form].dispatch(rt, "main", {
        buffers: { ...common, maps: ctx.maps8 },
        uniforms: { n: p.size, decay: p.decay ? 1 : 0, e0: p.offset },
        overrides: { WG: block / 4 },
        workgroups: grid1d(nBlocks, 1),
      }),
    );
    return out;
  }
  const rank1 = p.rows > 0;
  const all = {
    ...common,
    // Block-wise v never touches `scales`: its first 16 bytes stand in (never another
    // writable binding's range: WebGPU forbids aliasing them, and Dawn checks it).
    scales: rank1
      ? f(ctx.state.scales, p.scales, 2 * (p.rows + p.cols))
      : f(ctx.state.scales, 0, 4),
    maps: ctx.maps4,
  };
  type Entry = "row_max" | "col_max" | "update" | "commit";
  const spec = (
    entry: Entry,
    workgroups: [number, number, number],
    walk: [number, number, number] = [0, 0, 1], // [lo, hi, first] of row_max/col_max
  ) => {
    // Each entry point binds exactly what it uses.
    const kernel = adamw4bitKernels[form];
    const uses = kernel.decl.entryPoints[entry].bindings;
    return kernel.dispatch(rt, entry, {
      buffers: Object.fromEntries(uses.map((b) => [b, all[b]])),
      uniforms: {
        n: p.size,
        decay: p.decay ? 1 : 0,
        rows: p.rows,
        cols: p.cols,
        lo: walk[0],
        hi: walk[1],
        first: walk[2],
        e0: p.offset,
      },
      workgroups,
    });
  };
  if (rank1) {
    // A row's max walks its columns, a column's its rows: in pieces within the loop budget.
    const walks = [["row_max", p.rows, p.cols], ["col_max", p.cols, p.rows]] as const;
    for (const [entry, lanes, len] of walks) {
      for (const [lo, hi] of splitRange(len, WALK_ROWS)) {
        out.push(await spec(entry, grid1d(lanes, 64), [lo, hi, lo === 0 ? 1 : 0]));
      }
    }
  }
  out.push(await spec("update", grid1d(nBlocks, 1)));
  if (rank1) out.push(await spec("commit", grid1d(p.rows + p.cols, 64)));
  return out;
}
