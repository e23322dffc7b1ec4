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
 * Two kernels: a register-blocked generated kernel for CPU adapters
 * (src/model/ops/matmul_regblock.ts) and a workgroup-memory tiled kernel for GPUs
 * (kernels/matmul_tiled.wgsl). The first needs 4-aligned contiguous dimensions;
 * when a product does not have them the tiled kernel runs instead.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { debugLog } from "../../gpu/debug.ts";
import { checkLoopBound, LOOP_BUDGET, splitRange } from "../../gpu/kernel.ts";
import { type DType, dtypeBytes, dtypeOf, typedKernel } from "../../gpu/dtype.ts";
import {
  matmulRegblockWgsl,
  regblockCols,
  regblockRows,
  type RegblockVariant,
} from "./matmul_regblock.ts";
import tiledSrc from "../../../kernels/matmul_tiled.wgsl" with { type: "text" };
import biasBackwardSrc from "../../../kernels/matmul_bias_backward.wgsl" with { type: "text" };

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

/** Which kernel computes the product. */
export type MatmulImpl = "regblock" | "tiled";

/** Options for {@linkcode matmul}. */
export interface MatmulOptions {
  /** Default: regblock on CPU adapters, tiled on GPUs. */
  impl?: MatmulImpl;
  /** Label for profiles; default "matmul". */
  name?: string;
  /** Regblock tile: rows and vec4 column groups per invocation (default 32 x 8). */
  tile?: { tm: number; tn4: number };
  /** Override the binding limit (bytes), for tests of the splitting. */
  maxBindingBytes?: number;
}

interface Block {
  m0: number;
  m1: number;
  n0: number;
  n1: number;
  k0: number;
  k1: number;
  accumulate: boolean;
  bias: boolean;
}

/** Extent [start, end) in elements of each operand for a block. */
function extents(s: Required<MatmulShape>, ops: MatmulOperands, b: Block) {
  const span = (off: number, r0: number, r1: number, c0: number, c1: number, ld: number) =>
    [off + r0 * ld + c0, off + (r1 - 1) * ld + c1] as const;
  const ao = ops.a.offset ?? 0, bo = ops.b.offset ?? 0, co = ops.c.offset ?? 0;
  return {
    a: s.transA ? span(ao, b.k0, b.k1, b.m0, b.m1, s.lda) : span(ao, b.m0, b.m1, b.k0, b.k1, s.lda),
    b: s.transB ? span(bo, b.n0, b.n1, b.k0, b.k1, s.ldb) : span(bo, b.k0, b.k1, b.n0, b.n1, s.ldb),
    c: span(co, b.m0, b.m1, b.n0, b.n1, s.ldc),
  };
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
  let impl = options.impl ?? (rt.gpu.isCpu ? "regblock" : "tiled");
  if (impl === "regblock" && !vec4Aligned(s, operands)) {
    debugLog(1, `${name}: shape not 4-aligned, using the tiled kernel`);
    impl = "tiled";
  }
  const limit = options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize;
  const blocks: Block[] = [];
  const split = (b: Block) => {
    if (matmulLoops(impl, b.k1 - b.k0) > LOOP_BUDGET) {
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
 * The most loop iterations one invocation runs for a K of `k`: regblock's loop takes 4 k a
 * step (and up to 3 single steps); tiled's takes 16 a step and runs its 16-step inner loop
 * each time, 18 iterations a step in all (its 4-step loops are unrolled; measured on
 * llvmpipe, pinned by tests/loop_budget_test.ts).
 */
export function matmulLoops(impl: MatmulImpl, k: number): number {
  return impl === "regblock" ? Math.ceil(k / 4) + 3 : Math.ceil(k / 16) * 18;
}

function vec4Aligned(s: Required<MatmulShape>, ops: MatmulOperands): boolean {
  const contiguous = [s.transA ? s.M : s.K, s.transB ? s.K : s.N, s.N];
  const rest = [s.lda, s.ldb, s.ldc, ops.a.offset ?? 0, ops.b.offset ?? 0, ops.c.offset ?? 0];
  if (s.bias) rest.push(ops.bias?.offset ?? 0);
  return [...contiguous, ...rest].every((x) => x % 4 === 0);
}

/**
 * Binds [start, end) elements of a buffer with an aligned offset; returns the
 * remainder (in elements of the buffer's type) and the type.
 */
function bindRange(rt: Runtime, buffer: GPUBuffer, start: number, end: number) {
  const dtype = dtypeOf(buffer), eb = dtypeBytes(dtype);
  if (end * eb > buffer.size) {
    throw new RangeError(
      `Operand buffer "${buffer.label}" is too small: the shape needs ${end * eb} bytes, ` +
        `it has ${buffer.size}: check the shape, offsets and leading dimensions`,
    );
  }
  if (dtype === "f16" && !rt.gpu.features.shaderF16) {
    throw new TypeError(
      `Operand buffer "${buffer.label}" holds f16 but the device has no shader-f16: use f32`,
    );
  }
  const align = rt.gpu.limits.minStorageBufferOffsetAlignment;
  const byteStart = Math.floor((start * eb) / align) * align;
  const size = Math.min(Math.ceil((end * eb - byteStart) / 16) * 16, buffer.size - byteStart);
  return { resource: { buffer, offset: byteStart, size }, rem: start - byteStart / eb, dtype };
}

async function buildBlock(
  rt: Runtime,
  s: Required<MatmulShape>,
  ops: MatmulOperands,
  b: Block,
  impl: MatmulImpl,
  options: MatmulOptions,
  name: string,
): Promise<Dispatch> {
  const e = extents(s, ops, b);
  const a = bindRange(rt, ops.a.buffer, e.a[0], e.a[1]);
  const bb = bindRange(rt, ops.b.buffer, e.b[0], e.b[1]);
  const c = bindRange(rt, ops.c.buffer, e.c[0], e.c[1]);
  const biasOp = ops.bias ?? ops.a;
  const bias = b.bias
    ? bindRange(rt, biasOp.buffer, (biasOp.offset ?? 0) + b.n0, (biasOp.offset ?? 0) + b.n1)
    : undefined;
  const M = b.m1 - b.m0, N = b.n1 - b.n0, K = b.k1 - b.k0;
  checkLoopBound(name, { bound: matmulLoops(impl, K), shape: { M, N, K } });
  const types: Record<"a" | "b" | "c" | "bias", DType> = {
    a: a.dtype,
    b: bb.dtype,
    c: c.dtype,
    bias: bias?.dtype ?? "f32",
  };
  const params = new Uint32Array([
    M,
    N,
    K,
    s.lda,
    s.ldb,
    s.ldc,
    a.rem,
    bb.rem,
    c.rem,
    bias?.rem ?? 0,
    0,
    0,
  ]);
  const uniform = rt.arena.allocWith(
    `${name}.params`,
    "scratch",
    params,
    GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  );
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: a.resource },
    { binding: 1, resource: bb.resource },
    { binding: 2, resource: c.resource },
    { binding: 3, resource: { buffer: uniform } },
  ];
  let pipeline: GPUComputePipeline;
  let workgroups: [number, number, number];
  if (impl === "regblock") {
    // Short products (decoding) spread the lanes over columns: rows would idle them.
    const cols = options.tile === undefined && M < 8 && !s.transA;
    const v: RegblockVariant = {
      transA: s.transA,
      transB: s.transB,
      bias: b.bias,
      accumulate: b.accumulate,
      // Fewer rows per invocation for short products: idle lanes still cost.
      tm: options.tile?.tm ?? (cols ? Math.min(M, 4) : M >= 256 ? 32 : M >= 64 ? 8 : 4),
      tn4: options.tile?.tn4 ?? (cols ? 2 : 8),
      cols,
      types,
    };
    pipeline = await rt.pipelines.get({ name: "matmul_regblock", code: matmulRegblockWgsl(v) });
    if (bias) entries.push({ binding: 4, resource: bias.resource });
    workgroups = [Math.ceil(M / regblockRows(v)), Math.ceil(N / regblockCols(v)), 1];
  } else {
    const code = typedKernel(tiledSrc, {
      a_t: types.a,
      b_t: types.b,
      c_t: types.c,
      // Without bias, binding 4 is A again (below).
      bias_t: bias ? types.bias : types.a,
    });
    pipeline = await rt.pipelines.get({ name: "matmul_tiled", code }, {
      TRANS_A: +s.transA,
      TRANS_B: +s.transB,
      HAS_BIAS: +b.bias,
      ACCUMULATE: +b.accumulate,
    });
    // Without bias the binding is unused but the layout has it: bind A again (read-only).
    entries.push({ binding: 4, resource: (bias ?? a).resource });
    workgroups = [Math.ceil(N / 64), Math.ceil(M / 64), 1];
  }
  const bindGroup = rt.device.createBindGroup({
    label: name,
    layout: pipeline.getBindGroupLayout(0),
    entries,
  });
  return {
    name,
    pipeline,
    bindGroups: [bindGroup],
    workgroups,
    flops: 2 * M * N * K,
    resources: [uniform],
  };
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
  checkLoopBound("matmul_bias_backward", { bound: Math.ceil(M / 4) + 3, shape: { M, N } });
  const dOff = operands.dout.offset ?? 0, bOff = operands.dbias.offset ?? 0;
  const d = bindRange(rt, operands.dout.buffer, dOff, dOff + (M - 1) * ldd + N);
  const db = bindRange(rt, operands.dbias.buffer, bOff, bOff + N);
  const uniform = rt.arena.allocWith(
    "matmul_bias_backward.params",
    "scratch",
    new Uint32Array([M, N, ldd, d.rem, db.rem, 0, 0, 0]),
    GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  );
  const code = typedKernel(biasBackwardSrc, { dout_t: d.dtype, dbias_t: db.dtype });
  const pipeline = await rt.pipelines.get(
    { name: "matmul_bias_backward", code },
    { ACCUMULATE: +shape.accumulate },
  );
  const bindGroup = rt.device.createBindGroup({
    label: "matmul_bias_backward",
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: d.resource },
      { binding: 1, resource: db.resource },
      { binding: 2, resource: { buffer: uniform } },
    ],
  });
  return {
    name: "matmul_bias_backward",
    pipeline,
    bindGroups: [bindGroup],
    workgroups: [Math.ceil(N / 64), 1, 1],
    flops: M * N,
    resources: [uniform],
  };
}
