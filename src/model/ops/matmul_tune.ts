/**
 * Matmul's use of the autotuner (src/gpu/autotune.ts): which kernels are candidates on
 * this adapter, what a shape class is, and how one candidate is timed on the product's
 * own operands.
 *
 * - Candidates: on CPU adapters regblock's default tile for the size (the incumbent; tiled
 *   when the operands are not 4-aligned), and half its rows over 16 and over 8 lanes (each
 *   costs a compile: seconds on Mesa 22, up to a minute on Mesa 25 cold, not timed; the GPU
 *   tiles, 2-5x slower there, are not tried); on GPUs tiled (the incumbent)
 *   and every tile of GPU_TILES the device can run, and with f16 A and B on a device with
 *   subgroup matrices (Dawn) the tensor-core tiles of src/model/ops/matmul_sgmat.ts.
 * - Shape class: the transposes, element types, which operands are 4-aligned, N, and M
 *   and K rounded up to powers of two.
 * - Timing: the real A, B and bias buffers are read as they are (their contents do not
 *   change the time); C is a scratch buffer. Large products are timed on part of K and,
 *   past that, on their first rows, so that one timing stays a few ms on a GPU and tens
 *   of ms on a CPU adapter, and scratch stays under 256 MiB (32 MiB on CPU adapters).
 * - Products under 2^26 FLOPs (2^32 on CPU adapters) are not timed: they take the
 *   incumbent (on a CPU adapter compiling the candidates would cost more than they save).
 * - Checking: before it is timed, each candidate computes a small product of the same kind
 *   and must agree with the incumbent, itself checked against float64
 *   (src/model/ops/matmul_check.ts); one that does not is dropped.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { freeDispatches } from "../../gpu/dispatch.ts";
import { type DType, dtypeBytes, dtypeOf } from "../../gpu/dtype.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { dispatchTimer, type TuneResult, tunerFor } from "../../gpu/autotune.ts";
import { GPU_TILES, type GpuTileName, gpuTileProblem, parseGpuTile } from "./matmul_gpu.ts";
import { regblockDefault, regblockName, regblockProblem } from "./matmul_regblock.ts";
import { deviceFragment, sgmSubgroupMax, type SgmTileName, sgmTiles } from "./matmul_sgmat.ts";
import { matmulCheck } from "./matmul_check.ts";

/** A register-blocked tile's name: rb{lanes}_t{rows}x{columns}. */
export type RegblockName = `rb${number}_t${number}x${number}`;

/**
 * A kernel the tuner can pick: regblock (default tile), an rb tile, tiled, a GPU tile or a
 * subgroup-matrix (tensor core) tile.
 */
export type MatmulKernel = "regblock" | "tiled" | RegblockName | GpuTileName | SgmTileName;

/** Products smaller than this (2·M·N·K) take the incumbent without timing, by adapter kind. */
export const TUNE_MIN_FLOPS = { gpu: 2 ** 26, cpu: 2 ** 32 };

/** The product as the tuner sees it (dimensions, strides, flags all resolved). */
export interface TuneProduct {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  lda: number;
  ldb: number;
  ldc: number;
  bias: boolean;
  accumulate: boolean;
}

/** Operands with their offsets, as matmul() got them. */
export interface TuneOperands {
  a: { buffer: GPUBuffer; offset?: number };
  b: { buffer: GPUBuffer; offset?: number };
  c: { buffer: GPUBuffer; offset?: number };
  bias?: { buffer: GPUBuffer; offset?: number };
}

/** Builds a product's dispatches with a given kernel (matmul() with `impl` forced). */
export type BuildWith = (
  kernel: MatmulKernel,
  shape: TuneProduct,
  operands: TuneOperands,
) => Promise<Dispatch[]>;

/**
 * The candidates for a product on this adapter, incumbent first. On a CPU adapter: the
 * default register-blocked tile for the size, and half its rows over 16 lanes (the same rows
 * per workgroup: one AVX-512 register's worth of lanes) and over 8; the
 * GPU tiles, 2-5x slower on llvmpipe, are not worth their compile, except for operands
 * that cannot be read as vec4, where the choice is tiled or the best GPU tile. On a GPU: tiled,
 * the GPU tiles, and where the device has subgroup matrices and A and B are f16 (`types`),
 * the subgroup-matrix tiles for its f16 x f16 -> f32 fragment.
 */
export function matmulCandidates(
  rt: Runtime,
  aligned: boolean,
  s: { M: number; N: number; K: number; transA: boolean },
  types?: Record<"a" | "b", DType>,
): MatmulKernel[] {
  if (rt.gpu.isCpu) {
    // Without vec4 operands: tiled, and the GPU tile llvmpipe runs best (scalar loads).
    if (!aligned) return ["tiled", "wg128x128x8_t8x8"];
    const d = regblockDefault(s);
    if (d.cols) return ["regblock"];
    // Half the rows, over 8 and over 16 lanes: each compiles faster than the default (a
    // 32x32 tile over 16 lanes took up to 2 minutes on Mesa 25).
    const tiles = [{ ...d, lanes: 16, tm: d.tm / 2 }, { ...d, tm: d.tm / 2 }];
    return ["regblock", ...tiles.filter((t) => !regblockProblem(t)).map(regblockName)];
  }
  const tiles = GPU_TILES.filter((t) =>
    gpuTileProblem(parseGpuTile(t)!, rt.gpu.limits) === undefined
  );
  const frag = deviceFragment(rt.gpu);
  const sgm = frag && types?.a === "f16" && types.b === "f16"
    ? sgmTiles(frag, rt.gpu.limits, sgmSubgroupMax(rt.gpu))
    : [];
  return ["tiled", ...tiles, ...sgm];
}

const pow2 = (x: number) => 2 ** Math.ceil(Math.log2(x));

/** The shape class of a product: what its tuning key names. */
export function matmulTuneKey(
  s: TuneProduct,
  types: Record<"a" | "b" | "c", DType>,
  aligned: Record<"a" | "b" | "c", boolean>,
): string {
  const t = `${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}`;
  const al = (["a", "b", "c"] as const).map((k) => (aligned[k] ? "4" : "1")).join("");
  return `matmul ${t} ${types.a}.${types.b}.${types.c} vec${al} ` +
    `M${pow2(s.M)} N${s.N} K${pow2(s.K)}`;
}

/**
 * The part of a product that is timed: K, then M, cut to at least 256, then N to at least
 * 2048 (each keeping its residue mod 64, hence its alignment): time is linear in K, while
 * fewer rows change regblock's tile and a GPU's occupancy.
 */
function timedShape(rt: Runtime, s: TuneProduct, cBytes: number): TuneProduct {
  const cpu = rt.gpu.isCpu;
  const maxFlops = cpu ? 2 ** 28 : 2 ** 36, maxC = cpu ? 32 * 2 ** 20 : 256 * 2 ** 20;
  const cut = (x: number, to: number) => (x <= to ? x : x - Math.floor((x - to) / 64) * 64);
  const K = cut(s.K, Math.max(256, Math.floor(maxFlops / (2 * s.M * s.N))));
  const rows = Math.min(maxFlops / (2 * s.N * K), maxC / (s.ldc * cBytes));
  const M = cut(s.M, Math.max(256, Math.floor(rows)));
  const N = cut(s.N, Math.max(2048, Math.floor(maxFlops / (2 * M * K))));
  return { ...s, M, N, K, ldc: s.ldc - (s.N - N) };
}

/**
 * The kernel the tuner picks for a product (timing the candidates the first time its shape
 * class is seen on this device).
 */
export async function tuneMatmul(
  rt: Runtime,
  s: TuneProduct,
  ops: TuneOperands,
  options: {
    /** Which operands are 4-aligned (bias: true when absent). */
    aligned: Record<"a" | "b" | "c", boolean> & { bias?: boolean };
    /**
     * Builds a candidate's dispatches, for its check (a small product of the same kind, on
     * buffers of its own) and for its timing.
     */
    build: BuildWith;
  },
): Promise<TuneResult<MatmulKernel>> {
  const types = {
    a: dtypeOf(ops.a.buffer),
    b: dtypeOf(ops.b.buffer),
    c: dtypeOf(ops.c.buffer),
  };
  const candidates = matmulCandidates(
    rt,
    Object.values(options.aligned).every(Boolean),
    s,
    types,
  );
  if (2 * s.M * s.N * s.K < TUNE_MIN_FLOPS[rt.gpu.isCpu ? "cpu" : "gpu"]) {
    return { choice: candidates[0], source: "only", ms: {}, reason: "too small to time" };
  }
  const key = matmulTuneKey(s, types, options.aligned);
  const eb = dtypeBytes(types.c);
  const part = timedShape(rt, s, eb);
  const tuner = tunerFor(rt);
  const check = matmulCheck(rt, s, {
    ops,
    aligned: { ...options.aligned, bias: options.aligned.bias ?? true },
    build: options.build,
    incumbent: candidates[0],
  });
  try {
    return await tuner.choose({
      key,
      candidates,
      check,
      prepare: (kernel) => prepare(kernel),
    });
  } finally {
    check.dispose();
  }

  async function prepare(kernel: MatmulKernel) {
    // Scratch C keeps the real offset's residue, hence the same alignment.
    const off = (ops.c.offset ?? 0) % 64;
    const c = rt.arena.alloc(
      "matmul.tune.c",
      "scratch",
      (off + (part.M - 1) * part.ldc + part.N) * eb,
      undefined,
      types.c,
    );
    let d: Dispatch[] = [];
    try {
      d = await options.build(kernel, part, { ...ops, c: { buffer: c, offset: off } });
    } catch (e) {
      rt.arena.free(c);
      throw e;
    }
    return dispatchTimer(rt, d, {
      dispose: () => {
        freeDispatches(rt.arena, d);
        rt.arena.free(c);
      },
    });
  }
}
