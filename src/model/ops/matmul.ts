/**
 * Matmul as GPT-2 uses it, forward and backward, built into dispatches once.
 *
 * C[M,N] (+)= op(A)·op(B) (+ bias[N]) with `transA` (A stored [K,M]) and `transB`
 * (B stored [N,K]); leading dimensions and element offsets let a caller address
 * a slice of a larger buffer. Products whose operands exceed the adapter's
 * per-binding limit (128 MiB on llvmpipe) are split into several dispatches.
 *
 * Operands are f32 or f16, each as its buffer was allocated (src/gpu/dtype.ts);
 * products accumulate in f32 either way.
 *
 * Kernels: a register-blocked generated kernel for CPU adapters
 * (src/model/ops/matmul_regblock.ts), the plain workgroup-memory tiled kernel
 * (kernels/matmul_tiled.wgsl) and a family of generated GPU kernels named by their tile
 * (src/model/ops/matmul_gpu.ts). By default ("auto") the autotuner picks one per shape
 * class and device (src/model/ops/matmul_tune.ts); any can be forced with `impl`.
 * Regblock needs 4-aligned contiguous dimensions; when a product does not have them the
 * tiled kernel runs instead.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { debugLog } from "../../gpu/debug.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { LOOP_BUDGET, splitRange } from "../../gpu/kernel.ts";
import { dtypeBytes, dtypeOf } from "../../gpu/dtype.ts";
import { GPU_TILES, gpuTileProblem, parseGpuTile } from "./matmul_gpu.ts";
import {
  deviceFragment,
  parseSgmTile,
  sgmSubgroupMax,
  type SgmTile,
  sgmTileName,
  sgmTileProblem,
} from "./matmul_sgmat.ts";
import { parseRegblockName, regblockProblem } from "./matmul_regblock.ts";
import { type MatmulKernel, tuneMatmul } from "./matmul_tune.ts";
import {
  aligned,
  bindRange,
  type Block,
  buildBlock,
  extents,
  matmulLoops,
} from "./matmul_block.ts";
import biasBackwardSrc from "../../../kernels/matmul_bias_backward.wgsl" with { type: "text" };

/** kernels/matmul_bias_backward.wgsl's interface. */
export const biasBackwardKernel = defineKernel({
  name: "matmul_bias_backward",
  source: biasBackwardSrc,
  bindings: {
    dout: { access: "read", type: "float" },
    dbias: { access: "read_write", type: "float" },
  },
  uniforms: { M: "u32", N: "u32", ldd: "u32", d_off: "u32", bias_off: "u32" },
  overrides: { ACCUMULATE: { type: "bool", default: true } },
  entryPoints: {
    main: {
      bindings: ["dout", "dbias"],
      label: "matmul_bias_backward",
      loopBound: (u) => Math.ceil(u.M / 4) + 3,
    },
  },
});

/** The product to compute. Dimensions and strides are in elements. */
export interface MatmulShape {
  /** Rows of C and of op(A). */
  M: number;
  /** Columns of C and of op(B). */
  N: number;
  /** The summed dimension: columns of op(A), rows of op(B). */
  K: number;
  /** A is stored [K, M] (so op(A) = Aᵀ). */
  transA?: boolean;
  /** B is stored [N, K] (so op(B) = Bᵀ). */
  transB?: boolean;
  /** Row stride of A as stored; default its row length (M when `transA`, else K). */
  lda?: number;
  /** Row stride of B as stored; default its row length (K when `transB`, else N). */
  ldb?: number;
  /** Row stride of C; default N. */
  ldc?: number;
  /** Add bias[N] to every row. */
  bias?: boolean;
  /** C += product instead of C = product. */
  accumulate?: boolean;
}

/** A buffer and the element offset where an operand starts in it. */
export interface Operand {
  /** The buffer holding the operand (f32 or f16, as allocated). */
  buffer: GPUBuffer;
  /** Where the operand starts, in elements (not bytes); 0 by default. */
  offset?: number;
}

/** Operands of a matmul. */
export interface MatmulOperands {
  /** A: [M, K], or [K, M] with `transA`. */
  a: Operand;
  /** B: [K, N], or [N, K] with `transB`. */
  b: Operand;
  /** C: [M, N], the output (added to with `accumulate`). */
  c: Operand;
  /** bias: [N], required with `bias: true`. */
  bias?: Operand;
}

/**
 * Which kernel computes the product: "auto" (the autotuner's choice), "regblock" (the
 * register-blocked kernel with the default tile for the product's size), a register-blocked
 * tile such as "rb8_t32x32" (`rb{lanes}_t{rows}x{columns}` per lane), "tiled", or a GPU
 * tile such as "wg128x128x8_t8x8" (any valid `wg{BM}x{BN}x{BK}_t{TM}x{TN}`), or a
 * subgroup-matrix (tensor core) tile such as "sm64x64x32_g2x2_f16x16x16"
 * (`sm{BM}x{BN}x{BK}_g{GY}x{GX}_f{m}x{n}x{k}`, Dawn on a device that has them; it computes
 * the f16 x f16 products, and the others take "auto").
 */
export type MatmulImpl =
  | "auto"
  | "regblock"
  | "tiled"
  | `rb${number}_t${number}x${number}`
  | `wg${number}x${number}x${number}_t${number}x${number}`
  | `sm${number}x${number}x${number}_g${number}x${number}_f${string}`;

/** The names `--matmul` offers (any other valid rb or GPU tile name works too). */
export const MATMUL_IMPLS: readonly MatmulImpl[] = [
  "auto",
  "regblock",
  "tiled",
  "rb8_t32x32",
  "rb16_t16x32",
  ...GPU_TILES,
];

/** `name` as a {@linkcode MatmulImpl}, or a TypeError that lists the choices. */
export function parseMatmulImpl(name: string): MatmulImpl {
  if (name === "auto" || name === "regblock" || name === "tiled") return name;
  const r = parseRegblockName(name);
  const t = parseGpuTile(name);
  const sm = parseSgmTile(name);
  const problem = r ? regblockProblem(r) : t ? gpuTileProblem(t) : sm && sgmTileProblem(sm);
  if ((r || t || sm) && !problem) return name as MatmulImpl;
  throw new TypeError(
    `Unknown matmul kernel "${name}"${problem ? ` (${problem})` : ""}: use one of ` +
      `${MATMUL_IMPLS.join(", ")} or another rbL_tTMxTN, wgBMxBNxBK_tTMxTN or ` +
      "smBMxBNxBK_gGYxGX_fMxNxK tile",
  );
}

export { matmulLoops };
export type { MatmulKernel };

/** Options for {@linkcode matmul}. */
export interface MatmulOptions {
  /**
   * Default "auto": the choice of the runtime's autotuner (src/gpu/autotune.ts `tunerFor`;
   * regblock on CPU adapters).
   */
  impl?: MatmulImpl;
  /** Label for profiles; default "matmul". */
  name?: string;
  /**
   * Regblock tile: rows and vec4 column groups per invocation, invocations per workgroup
   * (default: by the product's size, src/model/ops/matmul_regblock.ts regblockDefault).
   */
  tile?: { tm: number; tn4: number; lanes?: number };
  /** Override the binding limit (bytes), for tests of the splitting. */
  maxBindingBytes?: number;
  /**
   * Tests: run subgroup-matrix tiles as plain WGSL on any adapter
   * (src/model/ops/matmul_sgmat.ts), for a device whose largest subgroup is `subgroupMax`
   * and whose subgroups are `subgroupSize` wide (default `subgroupMax`).
   */
  emulateSubgroupMatrix?: { subgroupMax: number; subgroupSize?: number };
}

/**
 * Builds the dispatches for one product. Pipelines come from the runtime's
 * cache; each dispatch gets its own small uniform buffer, written once here.
 *
 * @example
 * ```ts
 * // out[BT, OC] = inp[BT, C] · W[OC, C]ᵀ + bias[OC]
 * const d = await matmul(rt, { M: BT, N: OC, K: C, transB: true, bias: true },
 *   { a: { buffer: inp }, b: { buffer: w }, c: { buffer: out }, bias: { buffer: b } });
 * await runDispatches(rt.device, d);
 * ```
 */
export async function matmul(
  rt: Runtime,
  shape: MatmulShape,
  operands: MatmulOperands,
  options: MatmulOptions = {},
): Promise<Dispatch[]> {
  const s: Required<MatmulShape> = {
    M: shape.M,
    N: shape.N,
    K: shape.K,
    transA: shape.transA ?? false,
    transB: shape.transB ?? false,
    bias: shape.bias ?? false,
    accumulate: shape.accumulate ?? false,
    lda: shape.lda ?? (shape.transA ? shape.M : shape.K),
    ldb: shape.ldb ?? (shape.transB ? shape.K : shape.N),
    ldc: shape.ldc ?? shape.N,
  };
  for (const k of ["M", "N", "K"] as const) {
    if (!Number.isInteger(s[k]) || s[k] < 1) {
      throw new RangeError(`Matmul ${k} must be a positive integer, got ${s[k]}`);
    }
  }
  if (s.bias && !operands.bias) throw new TypeError("Matmul has bias: true but no bias operand");
  const { a, b, c, bias } = operands;
  if (c.buffer === a.buffer || c.buffer === b.buffer || (s.bias && c.buffer === bias?.buffer)) {
    // WebGPU validates usage per buffer, not per range: the dispatch would be dropped.
    throw new TypeError(
      `Matmul output C must not share a buffer with an input ("${c.buffer.label}"): ` +
        "give the output its own buffer",
    );
  }
  const name = options.name ?? "matmul";
  const al = aligned(s, operands);
  let impl: MatmulKernel;
  let asked = options.impl ?? (options.tile ? "regblock" : "auto");
  if (parseSgmTile(asked) && !(dtypeOf(a.buffer) === "f16" && dtypeOf(b.buffer) === "f16")) {
    // A forced tensor-core tile serves the f16 x f16 products; mixed precision's others tune.
    debugLog(1, `${name}: ${asked} takes f16 A and B only, using the tuner's choice`);
    asked = "auto";
  }
  if (asked === "auto") {
    const r = await tuneMatmul(rt, s, operands, {
      aligned: al,
      build: (k, shape, ops) =>
        matmul(rt, shape, ops, { ...options, impl: k, name: `${name}.tune` }),
    });
    impl = r.choice;
  } else impl = parseMatmulImpl(asked) as MatmulKernel;
  const registerBlocked = impl === "regblock" || parseRegblockName(impl) !== undefined;
  if (registerBlocked && !(al.a && al.b && al.c && al.bias)) {
    debugLog(1, `${name}: shape not 4-aligned, using the tiled kernel`);
    impl = "tiled";
  }
  const tile = parseGpuTile(impl), tileProblem = tile && gpuTileProblem(tile, rt.gpu.limits);
  if (tileProblem) {
    throw new RangeError(`Matmul kernel ${impl} cannot run on ${rt.gpu.name}: ${tileProblem}`);
  }
  const emulated = options.emulateSubgroupMatrix;
  const sm = parseSgmTile(impl);
  if (sm) sgmCanRun(rt, sm, emulated);
  const limit = options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize;
  const blocks: Block[] = [];
  const split = (b: Block) => {
    if (matmulLoops(impl, b.k1 - b.k0, !!emulated) > LOOP_BUDGET) {
      // One invocation walks all of K: halve it (the second half accumulates).
      const mid = b.k0 + Math.ceil((b.k1 - b.k0) / 2 / 4) * 4;
      split({ ...b, k1: mid });
      split({ ...b, k0: mid, accumulate: true, bias: false });
      return;
    }
    const e = extents(s, operands, b);
    const over = (["a", "b", "c"] as const)
      .map((k) => ({
        k,
        bytes: (e[k][1] - e[k][0]) * dtypeBytes(dtypeOf(operands[k].buffer)) + 64,
      }))
      .filter((x) => x.bytes > limit)
      .sort((x, y) => y.bytes - x.bytes)[0];
    if (!over) return void blocks.push(b);
    // Halve the dimension that walks the offending operand's rows.
    const dim = over.k === "a"
      ? (s.transA ? "k" : "m")
      : over.k === "b"
      ? (s.transB ? "n" : "k")
      : "m";
    const lo = b[`${dim}0`], hi = b[`${dim}1`];
    if (hi - lo < 2) {
      throw new RangeError(
        `Matmul "${name}": one row of operand ${over.k} is over the ${limit}-byte binding ` +
          "limit: use a smaller leading dimension",
      );
    }
    const mid = lo + Math.ceil((hi - lo) / 2 / 4) * 4;
    const first = { ...b, [`${dim}1`]: mid };
    const second = { ...b, [`${dim}0`]: mid };
    if (dim === "k") Object.assign(second, { accumulate: true, bias: false });
    split(first);
    split(second);
  };
  split({ m0: 0, m1: s.M, n0: 0, n1: s.N, k0: 0, k1: s.K, accumulate: s.accumulate, bias: s.bias });
  return await Promise.all(
    blocks.map((b, i) =>
      buildBlock(rt, s, operands, b, impl, options, blocks.length > 1 ? `${name}[${i}]` : name)
    ),
  );
}

/**
 * Throws unless subgroup-matrix tile `t` can run here (its operands are f16): the device's
 * fragment shape and limits, or emulation.
 */
function sgmCanRun(
  rt: Runtime,
  t: SgmTile,
  emulated?: { subgroupMax: number },
): void {
  const name = sgmTileName(t);
  if (!emulated) {
    const f = deviceFragment(rt.gpu);
    if (!f) {
      throw new TypeError(
        `Matmul kernel ${name} needs subgroup matrices (tensor cores), which ${rt.gpu.name} ` +
          `on ${rt.gpu.backend} does not offer: use --backend dawn on a GPU that has them ` +
          "(chromium-experimental-subgroup-matrix), or another kernel",
      );
    }
    if (f.m !== t.m || f.n !== t.n || f.k !== t.k) {
      throw new RangeError(
        `Matmul kernel ${name} uses ${t.m}x${t.n}x${t.k} fragments; ${rt.gpu.name} has ` +
          `${f.m}x${f.n}x${f.k} (f16 -> f32): use _f${f.m}x${f.n}x${f.k}`,
      );
    }
  }
  const problem = sgmTileProblem(t, rt.gpu.limits, sgmSubgroupMax(rt.gpu, emulated));
  if (problem) {
    throw new RangeError(`Matmul kernel ${name} cannot run on ${rt.gpu.name}: ${problem}`);
  }
}

/** Rows of dout one dispatch of the bias gradient sums (a quarter of that per loop). */
const BIAS_ROWS = 131072;

/**
 * dbias[N] (+)= column sums of dout[M, N] (row stride `ldd`): the bias part of
 * matmul's backward pass. Rows are summed in ranges of 131072, one dispatch each, in
 * order, so that one invocation's loop stays within the budget.
 */
export async function matmulBiasBackward(
  rt: Runtime,
  shape: { M: number; N: number; ldd?: number; accumulate?: boolean },
  operands: { dout: Operand; dbias: Operand },
): Promise<Dispatch[]> {
  const out: Dispatch[] = [];
  const ldd = shape.ldd ?? shape.N;
  for (const [m0, m1] of splitRange(shape.M, BIAS_ROWS)) {
    const rows = m1 - m0;
    out.push(
      await biasBackwardRange(rt, {
        M: rows,
        N: shape.N,
        ldd,
        accumulate: m0 > 0 || (shape.accumulate ?? true),
      }, {
        dout: { buffer: operands.dout.buffer, offset: (operands.dout.offset ?? 0) + m0 * ldd },
        dbias: operands.dbias,
      }),
    );
  }
  return out;
}

async function biasBackwardRange(
  rt: Runtime,
  shape: { M: number; N: number; ldd: number; accumulate: boolean },
  operands: { dout: Operand; dbias: Operand },
): Promise<Dispatch> {
  const { M, N, ldd } = shape;
  const dOff = operands.dout.offset ?? 0, bOff = operands.dbias.offset ?? 0;
  const d = bindRange(rt, operands.dout.buffer, dOff, dOff + (M - 1) * ldd + N);
  const db = bindRange(rt, operands.dbias.buffer, bOff, bOff + N);
  return await biasBackwardKernel.dispatch(rt, "main", {
    buffers: { dout: d.resource, dbias: db.resource },
    uniforms: { M, N, ldd, d_off: d.rem, bias_off: db.rem },
    overrides: { ACCUMULATE: shape.accumulate },
    workgroups: [Math.ceil(N / 64), 1, 1],
    flops: M * N,
  });
}
