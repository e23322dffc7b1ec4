/**
 * The update dispatches of one piece of low-bit state: fp32 AdamW, 8-bit block-wise, or
 * 4-bit with rank-1 (row and column max, in walks within the loop budget) or block-wise
 * normalisation of v.
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import { type BufferRange, grid1d, makeDispatch, splitRange, WALK_ROWS } from "../gpu/kernel.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { StateKind, StatePiece } from "./lowbit_plan.ts";
import { adamwKernel } from "./adamw.ts";
import { optimizerKernel } from "./kernel_source.ts";
import adamw8Body from "../../kernels/adamw8bit.wgsl" with { type: "text" };
import adamw4Body from "../../kernels/adamw4bit.wgsl" with { type: "text" };

const adamwSrc = adamwKernel();
const [adamw8Src, adamw4Src] = [adamw8Body, adamw4Body].map((body) =>
  optimizerKernel(body, { adamw: true, lowbit: true })
);

/** The buffers and settings every piece's dispatches bind. */
export interface PieceContext {
  /** Flat parameters and gradients. */
  params: GPUBuffer;
  /** Flat gradients. */
  grads: GPUBuffer;
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
  const pr = f(ctx.params, p.offset, p.size), gr = f(ctx.grads, p.offset, p.size);
  if (p.kind === "fp32") {
    out.push(
      await makeDispatch(rt, {
        name: "adamw",
        code: adamwSrc,
        entryPoint: "main",
        buffers: {
          0: pr,
          1: gr,
          2: f(ctx.state.m32, p.f32, p.size),
          3: f(ctx.state.v32, p.f32, p.size),
          4: { buffer: ctx.gradStats },
          5: { buffer: ctx.step },
        },
        uniform: { binding: 6, words: [p.size, p.decay ? 1 : 0] },
        workgroups: grid1d(p.size, 64),
      }),
    );
    return out;
  }
  const block = p.kind === "q8" ? ctx.block8 : 128;
  const nWords = Math.ceil(p.size / (p.kind === "q8" ? 4 : 8));
  const nBlocks = Math.ceil(p.size / block);
  const common = {
    0: pr,
    1: gr,
    2: f(ctx.state.mq, p.words, nWords),
    3: f(ctx.state.vq, p.words, nWords),
    4: f(ctx.state.mabs, p.abs, nBlocks),
    5: f(ctx.state.vabs, p.abs, nBlocks),
  };
  if (p.kind === "q8") {
    out.push(
      await makeDispatch(rt, {
        name: "adamw8bit",
        code: adamw8Src,
        entryPoint: "main",
        constants: { WG: block / 4 },
        buffers: {
          ...common,
          6: { buffer: ctx.maps8 },
          7: { buffer: ctx.gradStats },
          8: { buffer: ctx.step },
        },
        uniform: { binding: 9, words: [p.size, p.decay ? 1 : 0] },
        workgroups: grid1d(nBlocks, 1),
      }),
    );
    return out;
  }
  const rank1 = p.rows > 0;
  const all: Record<number, BufferRange> = {
    ...common,
    6: rank1
      ? f(ctx.state.scales, p.scales, 2 * (p.rows + p.cols))
      : f(ctx.state.mabs, p.abs, nBlocks),
    7: { buffer: ctx.maps4 },
    8: { buffer: ctx.gradStats },
    9: { buffer: ctx.step },
  };
  // Each entry point binds exactly what it uses ("auto" layouts).
  const uses: Record<string, number[]> = {
    row_max: [1, 3, 6, 7, 8, 9],
    col_max: [1, 3, 6, 7, 8, 9],
    update: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    commit: [6, 8], // gradStats: a skipped step keeps the old scales
  };
  const spec = (
    entryPoint: string,
    workgroups: [number, number, number],
    walk: [number, number, number] = [0, 0, 1], // [lo, hi, first] of row_max/col_max
  ) =>
    makeDispatch(rt, {
      name: `adamw4bit_${entryPoint}`,
      code: adamw4Src,
      entryPoint,
      buffers: Object.fromEntries(uses[entryPoint].map((b) => [b, all[b]])),
      uniform: { binding: 10, words: [p.size, p.decay ? 1 : 0, p.rows, p.cols, ...walk, 0] },
      workgroups,
      loops: { bound: walk[1] - walk[0], shape: { rows: p.rows, cols: p.cols } },
    });
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
