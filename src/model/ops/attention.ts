/**
 * Causal self-attention, FlashAttention-2 style (kernels/flash_attention.wgsl): no T x T
 * buffers, split-KV chunks within the loop budget, forward and backward.
 *
 * @module
 */

import { type Dispatch, freeDispatches } from "../../gpu/dispatch.ts";
import { dispatchTimer, tunerFor } from "../../gpu/autotune.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { grid1d, LOOP_BUDGET, splitRange } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { dtypeOf } from "../../gpu/dtype.ts";
import flashSrc from "../../../kernels/flash_attention.wgsl" with { type: "text" };
import { flashRowsCheck } from "./attention_check.ts";

/** kernels/flash_attention.wgsl's interface. */
export const flashAttentionKernel = defineKernel({
  name: "flash_attention",
  source: flashSrc,
  bindings: {
    qkv: { access: "read", type: "float" },
    out: { access: "read_write", type: "float" },
    lse: { access: "read_write", type: "f32" },
    dout: { access: "read", type: "f32" },
    delta: { access: "read_write", type: "f32" },
    dqkv: { access: "read_write", type: "float" },
  },
  uniforms: {
    B: "u32",
    T: "u32",
    C: "u32",
    NH: "u32",
    k0: "u32",
    k1: "u32",
    blk0: "u32",
    first: "u32",
  },
  overrides: {
    HS: { type: "u32", default: 64 },
    BK: { type: "u32", default: 32 },
    ROWS: { type: "u32", default: 1 },
  },
  entryPoints: {
    forward: {
      bindings: ["qkv", "out", "lse"],
      loopBound: (u, o) => flashLoopBound("forward", o.HS, u.k1 - u.k0, o.ROWS as FlashRows),
    },
    backward_delta: { bindings: ["out", "dout", "delta"], loopBound: (_, o) => o.HS },
    backward_dq: {
      bindings: ["qkv", "lse", "dout", "delta", "dqkv"],
      loopBound: (u, o) => flashLoopBound("dq", o.HS, u.k1 - u.k0, o.ROWS as FlashRows),
    },
    backward_dkv: {
      bindings: ["qkv", "lse", "dout", "delta", "dqkv"],
      loopBound: (u, o) => flashLoopBound("dkv", o.HS, u.k1 - u.k0, o.ROWS as FlashRows),
    },
  },
});

/** The buffers of a flash attention pass, by name. */
type FlashBuffers = Partial<Record<"qkv" | "out" | "lse" | "dout" | "delta" | "dqkv", GPUBuffer>>;

/** Shapes for attention. */
export interface AttentionShape {
  B: number;
  T: number;
  C: number;
  NH: number;
  /**
   * Flash attention only: rows per split-KV chunk, a multiple of 64 * rows (default, and most:
   * the largest that keeps each pass within the loop budget, see {@linkcode flashChunkRows}).
   */
  chunkRows?: number;
  /** Flash attention only: rows per invocation, 1, 2 or 4 (default: {@linkcode flashRows}). */
  rows?: FlashRows;
}

/** Query (or key) rows per workgroup of kernels/flash_attention.wgsl. */
const FLASH_WG = 64;

/** The pass of flash attention whose loop bound is asked for. */
export type FlashPass = "forward" | "dq" | "dkv";

/** Tile geometry for head size HS: vec4s per row and rows per workgroup-memory tile. */
function flashTiles(HS: number): { hs4: number; bk: number } {
  const hs4 = Math.ceil(HS / 4);
  // Two tiles of BK x HS4 vec4 in 16 KiB (WebGPU's default workgroup storage), BK a power of 2.
  return { hs4, bk: Math.min(64, 2 ** Math.floor(Math.log2(512 / hs4))) };
}

/**
 * Rows per invocation (register blocking) flash attention uses by default on an adapter for
 * sequences of T tokens.
 */
export function flashRows(rt: Runtime, T: number): FlashRows {
  // llvmpipe pays for every memory load, so rows that share each loaded element win (1.9x
  // at 4 over 1 at T=1024); GPUs keep registers for occupancy. A block of 64 * rows rows
  // past T would compute on padding: short sequences take fewer.
  if (!rt.gpu.isCpu) return 1;
  return T >= 256 ? 4 : T >= 128 ? 2 : 1;
}

/** Attention smaller than this (FLOPs of the forward) keeps flashRows' choice untimed. */
export const FLASH_TUNE_MIN_FLOPS = { gpu: 2 ** 26, cpu: 2 ** 30 };

/**
 * Rows per invocation for this shape, chosen by the autotuner (src/gpu/autotune.ts): the
 * forward pass is timed with 1, 2 and 4 rows on the real buffers (on as many heads as keep
 * a run near 2^31 FLOPs, 2^34 on GPUs), once per device and shape
 * class (element types, head size, T and B*NH rounded up to powers of two), and the
 * choice is cached; {@linkcode flashRows}'s heuristic is the incumbent and the answer for
 * shapes too small to time. The backward passes take the forward's choice. Each candidate's
 * forward is first checked against float64 on a small problem (src/model/ops/attention_check.ts).
 */
export async function chooseFlashRows(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; out: GPUBuffer; lse: GPUBuffer },
): Promise<FlashRows> {
  const incumbent = flashRows(rt, s.T), HS = s.C / s.NH;
  const flops = 2 * s.B * s.NH * s.T * s.T * HS;
  if (flops < FLASH_TUNE_MIN_FLOPS[rt.gpu.isCpu ? "cpu" : "gpu"]) return incumbent;
  const pow2 = (n: number) => 2 ** Math.ceil(Math.log2(n));
  const candidates = [incumbent, ...([1, 2, 4] as const).filter((r) => r !== incumbent)]
    .map(String);
  const check = flashRowsCheck(rt, HS, {
    types: { qkv: dtypeOf(ops.qkv), out: dtypeOf(ops.out) },
  });
  const { choice } = await tunerFor(rt).choose({
    key: `flash rows ${dtypeOf(ops.qkv)}.${dtypeOf(ops.out)} HS${HS} T${pow2(s.T)} ` +
      `BH${pow2(s.B * s.NH)}`,
    candidates,
    check,
    // Timed on as many (b, h) pairs as keep one run near 2^31 FLOPs (2^34 on GPUs): each pair
    // is the same work, and T=4096 on a CPU adapter would otherwise take seconds a run.
    prepare: async (c) => {
      const budget = rt.gpu.isCpu ? 2 ** 31 : 2 ** 34;
      const NH = Math.max(1, Math.min(s.B * s.NH, Math.floor(budget / (2 * s.T * s.T * HS))));
      const trimmed = { B: 1, T: s.T, C: NH * HS, NH, rows: Number(c) as FlashRows };
      const d = await flashAttentionForward(rt, trimmed, ops);
      return dispatchTimer(rt, d, { dispose: () => freeDispatches(rt.arena, d) });
    },
    reps: 2,
  }).finally(() => check.dispose());
  return Number(choice) as FlashRows;
}

/** Rows per invocation of kernels/flash_attention.wgsl (its ROWS constant). */
export type FlashRows = 1 | 2 | 4;

/**
 * The most loop iterations one invocation of a flash attention pass runs over a chunk of
 * `KC` rows, as the formula in kernels/flash_attention.wgsl's header gives it.
 */
export function flashLoopBound(
  pass: FlashPass,
  HS: number,
  KC: number,
  rows: FlashRows = 1,
): number {
  const { hs4, bk } = flashTiles(HS);
  const tiles = Math.ceil(KC / bk), stage = Math.ceil((bk * hs4) / FLASH_WG);
  const body = tiles * (1 + stage + (bk / 4) * (1 + 2 * hs4 * (1 + rows) + rows));
  return body + rows * (1 + { forward: 2, dq: 6, dkv: 11 }[pass] * hs4);
}

/**
 * Rows per split-KV chunk of a pass: the largest 64 * rows * 2^k whose loop bound is within
 * {@linkcode LOOP_BUDGET} (for HS = 64: 2048 with 1 row per invocation, 1024 with 4).
 */
export function flashChunkRows(pass: FlashPass, HS: number, rows: FlashRows = 1): number {
  let kc = FLASH_WG * rows;
  while (flashLoopBound(pass, HS, 2 * kc, rows) <= LOOP_BUDGET) kc *= 2;
  return kc;
}

function checkHeadSize(s: AttentionShape): void {
  if (s.C / s.NH > 128) {
    throw new RangeError(`Head size ${s.C / s.NH} is over flash attention's maximum of 128`);
  }
  if (s.B * s.NH > 65535) {
    throw new RangeError(
      `Flash attention grids hold B * NH = ${s.B * s.NH} (b, h) pairs, over 65535: ` +
        "use a smaller batch per micro-step",
    );
  }
}

/** Causal (query, key) pairs whose key lies in [k0, k1) (T queries). */
const pairsWithKeys = (T: number, k0: number, k1: number) =>
  (k1 - k0) * T - ((k1 - 1) * k1 - (k0 - 1) * k0) / 2;

/** The chunks [k0, k1) of `T` rows for a pass, with the first row block each dispatch needs. */
function flashChunks(pass: FlashPass, s: AttentionShape, rows: FlashRows) {
  const HS = s.C / s.NH, max = flashChunkRows(pass, HS, rows), R = FLASH_WG * rows;
  const blocks = Math.ceil(s.T / R);
  const KC = s.chunkRows ?? max;
  if (KC % R !== 0 || KC > max) {
    throw new RangeError(
      `Flash attention chunkRows ${KC} must be a multiple of ${R} up to ${max} ` +
        `(head size ${HS}, ${rows} rows per invocation)`,
    );
  }
  return splitRange(s.T, KC).map(([k0, k1]) => {
    // forward and dq: query blocks that reach key k0; dkv: key blocks that start before k1.
    const [blk0, nblk] = pass === "dkv"
      ? [0, Math.ceil(k1 / R)]
      : [Math.floor(k0 / R), blocks - Math.floor(k0 / R)];
    return { k0, k1, blk0, nblk, loops: flashLoopBound(pass, HS, k1 - k0, rows) };
  });
}

function flashDispatches(
  rt: Runtime,
  pass: FlashPass,
  s: AttentionShape,
  entry: "forward" | "backward_dq" | "backward_dkv",
  buffers: FlashBuffers,
  flopsPerPair: number,
): Promise<Dispatch[]> {
  const HS = s.C / s.NH, rows = s.rows ?? flashRows(rt, s.T);
  const { bk } = flashTiles(HS);
  return Promise.all(
    flashChunks(pass, s, rows).map((c, i) =>
      flashAttentionKernel.dispatch(rt, entry, {
        buffers,
        overrides: { HS, BK: bk, ROWS: rows },
        uniforms: {
          B: s.B,
          T: s.T,
          C: s.C,
          NH: s.NH,
          k0: c.k0,
          k1: c.k1,
          blk0: c.blk0,
          first: i === 0 ? 1 : 0,
        },
        workgroups: [c.nblk, s.B * s.NH, 1],
        flops: flopsPerPair * HS * s.B * s.NH *
          (pass === "dkv"
            ? pairsWithKeys(s.T, 0, c.k1) - pairsWithKeys(s.T, 0, c.k0) // by query
            : pairsWithKeys(s.T, c.k0, c.k1)),
      })
    ),
  );
}

/**
 * out [B,T,C] and lse [B,NH,T] from qkv [B,T,3C], FlashAttention-2 style: one dispatch per
 * split-KV chunk of keys, each merging into the output of the ones before.
 */
export async function flashAttentionForward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; out: GPUBuffer; lse: GPUBuffer },
): Promise<Dispatch[]> {
  checkHeadSize(s);
  if (s.rows === undefined && s.chunkRows === undefined) {
    s = { ...s, rows: await chooseFlashRows(rt, s, ops) };
  }
  return flashDispatches(rt, "forward", s, "forward", ops, 4);
}

/** dqkv [B,T,3C] from dout [B,T,C], recomputing the probabilities (delta is scratch [B,NH,T]). */
export async function flashAttentionBackward(
  rt: Runtime,
  s: AttentionShape,
  ops: {
    qkv: GPUBuffer;
    out: GPUBuffer;
    lse: GPUBuffer;
    dout: GPUBuffer;
    delta: GPUBuffer;
    dqkv: GPUBuffer;
  },
): Promise<Dispatch[]> {
  checkHeadSize(s);
  if (s.rows === undefined && s.chunkRows === undefined) {
    s = { ...s, rows: await chooseFlashRows(rt, s, ops) }; // the forward's choice, remembered
  }
  const HS = s.C / s.NH;
  const { qkv, lse, dout, delta, dqkv } = ops;
  const grads = { qkv, lse, dout, delta, dqkv };
  const d = await flashAttentionKernel.dispatch(rt, "backward_delta", {
    overrides: { HS, BK: flashTiles(HS).bk },
    buffers: { out: ops.out, dout, delta },
    uniforms: { B: s.B, T: s.T, C: s.C, NH: s.NH, k0: 0, k1: 0, blk0: 0, first: 0 },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
  });
  const dq = await flashDispatches(rt, "dq", s, "backward_dq", grads, 6);
  const dkv = await flashDispatches(rt, "dkv", s, "backward_dkv", grads, 8);
  return [d, ...dq, ...dkv];
}
