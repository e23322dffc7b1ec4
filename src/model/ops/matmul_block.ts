/**
 * One block of a matmul (a range of M, N and K that fits the binding limit and the loop
 * budget) into one dispatch: the bound buffer ranges, the uniform parameters, and the plan
 * of the chosen kernel (src/model/ops/matmul_regblock.ts, src/model/ops/matmul_gpu.ts).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { type DType, dtypeBytes, dtypeOf } from "../../gpu/dtype.ts";
import { parseRegblockName, regblockLoops, regblockPlan } from "./matmul_regblock.ts";
import {
  type BlockProduct,
  gpuTileLoops,
  gpuTilePlan,
  type KernelPlan,
  parseGpuTile,
  tiledLoops,
  tiledPlan,
} from "./matmul_gpu.ts";
import type { MatmulKernel } from "./matmul_tune.ts";
import { parseSgmTile, sgmLoops, sgmPlan, sgmSubgroupMax } from "./matmul_sgmat.ts";
import type { MatmulOperands, MatmulOptions, MatmulShape } from "./matmul.ts";

/** A range of the product that one dispatch computes. */
export interface Block {
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
export function extents(s: Required<MatmulShape>, ops: MatmulOperands, b: Block) {
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
 * The most loop iterations one invocation runs for a K of `k`: regblock's loop takes 4 k a
 * step (and up to 3 single steps); tiled's takes 16 a step and runs its 16-step inner loop
 * each time, 18 iterations a step in all (its 4-step loops are unrolled; measured on
 * llvmpipe, pinned by tests/loop_budget_test.ts); a GPU tile's takes BK a step, unrolled;
 * a subgroup-matrix tile's too (emulated, its fragment loops count as well).
 */
export function matmulLoops(impl: MatmulKernel, k: number, emulated = false): number {
  if (impl === "regblock" || parseRegblockName(impl)) return regblockLoops(k);
  if (impl === "tiled") return tiledLoops(k);
  const sm = parseSgmTile(impl);
  if (sm) return sgmLoops(sm, k, emulated);
  const t = parseGpuTile(impl);
  if (!t) throw new TypeError(`Unknown matmul kernel "${impl}"`);
  return gpuTileLoops(t, k);
}

/** Which operands can be read as vec4: contiguous dimension, leading dimension, offset. */
export function aligned(s: Required<MatmulShape>, ops: MatmulOperands) {
  const ok = (...xs: number[]) => xs.every((x) => x % 4 === 0);
  return {
    a: ok(s.transA ? s.M : s.K, s.lda, ops.a.offset ?? 0),
    b: ok(s.transB ? s.K : s.N, s.ldb, ops.b.offset ?? 0),
    c: ok(s.N, s.ldc, ops.c.offset ?? 0),
    bias: !s.bias || ok(s.N, ops.bias?.offset ?? 0),
  };
}

/**
 * Binds [start, end) elements of a buffer with an aligned offset; returns the
 * remainder (in elements of the buffer's type) and the type.
 */
export function bindRange(rt: Runtime, buffer: GPUBuffer, start: number, end: number) {
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

export async function buildBlock(
  rt: Runtime,
  s: Required<MatmulShape>,
  ops: MatmulOperands,
  b: Block,
  impl: MatmulKernel,
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
  const types: Record<"a" | "b" | "c" | "bias", DType> = {
    a: a.dtype,
    b: bb.dtype,
    c: c.dtype,
    bias: bias?.dtype ?? "f32",
  };
  // A block's offsets are the product's plus multiples of 4 (splits are 4-aligned).
  const al = aligned({ ...s, M, N, K }, {
    a: { buffer: ops.a.buffer, offset: a.rem },
    b: { buffer: ops.b.buffer, offset: bb.rem },
    c: { buffer: ops.c.buffer, offset: c.rem },
    bias: bias && { buffer: biasOp.buffer, offset: bias.rem },
  });
  const product: BlockProduct = {
    M,
    N,
    K,
    transA: s.transA,
    transB: s.transB,
    bias: b.bias,
    accumulate: b.accumulate,
    types,
    aligned: { ...al, bias: b.bias && al.bias },
  };
  const tile = parseGpuTile(impl), rb = parseRegblockName(impl), sm = parseSgmTile(impl);
  const em = options.emulateSubgroupMatrix;
  const plan: KernelPlan = impl === "regblock"
    ? regblockPlan(product, options.tile)
    : rb
    ? regblockPlan(product, rb)
    : tile
    ? gpuTilePlan(tile, product)
    : sm
    ? sgmPlan(sm, product, {
      subgroupMax: sgmSubgroupMax(rt.gpu, em),
      emulate: em && (em.subgroupSize ?? em.subgroupMax),
    })
    : tiledPlan(product);
  const biasBinding = plan.binding4 === "bias" ? bias! : plan.binding4 === "a" ? a : undefined;
  return await plan.decl.dispatch(rt, "main", {
    name,
    buffers: {
      A: a.resource,
      B: bb.resource,
      C: c.resource,
      ...(biasBinding ? { bias: biasBinding.resource } : {}),
    },
    uniforms: {
      M,
      N,
      K,
      lda: s.lda,
      ldb: s.ldb,
      ldc: s.ldc,
      a_off: a.rem,
      b_off: bb.rem,
      c_off: c.rem,
      bias_off: bias?.rem ?? 0,
    },
    overrides: plan.constants,
    workgroups: plan.workgroups,
    flops: 2 * M * N * K,
  });
}
