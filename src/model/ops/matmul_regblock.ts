/**
 * Generated WGSL for matmul on CPU adapters (llvmpipe, SwiftShader). With its
 * neighbour src/model/ops/matmul_gpu.ts (the GPU family) it is the only WGSL in the
 * package written by code rather than by hand.
 *
 * C[M,N] (+)= op(A)[M,K] · op(B)[K,N] (+ bias[N]), where op(A) is A [M,K]
 * or Aᵀ with A stored [K,M], and op(B) is B [K,N] or Bᵀ with B stored [N,K].
 * Each operand is f32 or f16 (`types`); products accumulate in f32.
 *
 * Why generated: llvmpipe runs 8 invocations as the lanes of one AVX register,
 * and turns every storage load whose address differs per lane into a scalar loop
 * over the lanes, so speed follows the number of load instructions. Each
 * invocation therefore computes a TM x (4·TN4) block held in named vec4
 * variables (local arrays indexed in loops would be spilled and gathered too),
 * loads both operands as vec4, and the 8 invocations of a workgroup share the
 * same columns so that B's loads have one address for all lanes.
 *
 * Bindings: A, B, C (rw), bias (only when `bias`), all array<vec4<T>> with T each operand's
 * element type, and the uniforms: declared through src/model/ops/matmul_kernel.ts's
 * matmulKernel, which prepends them to the generated body.
 * Geometry: workgroup (L,1,1), L lanes (8 by default, 4 to 32); grid
 * (ceil(M / (L·TM)), ceil(N / (4·TN4)), 1). Named variants (rb{L}_t{TM}x{4·TN4}) are
 * what the tuner and `--matmul` choose among; "regblock" is the default for the size.
 * Loop bound per invocation: ceil(K / 4) + 3 (the generated code has no other loop);
 * src/model/ops/matmul.ts splits K past the budget.
 * Requires: the contiguous dimension of A, B and C, the leading dimensions and
 * the element offsets to be multiples of 4 (vec4 loads).
 */

import type { DType } from "../../gpu/dtype.ts";
import type { BlockProduct, KernelPlan } from "./matmul_gpu.ts";
import { type MatmulDecl, matmulKernel, matmulTypes } from "./matmul_kernel.ts";

/** What a generated kernel computes. */
export interface RegblockVariant {
  transA: boolean;
  transB: boolean;
  bias: boolean;
  accumulate: boolean;
  /** Rows per invocation, a multiple of 4. */
  tm: number;
  /** vec4 column groups per invocation. */
  tn4: number;
  /**
   * Spread the 8 invocations of a workgroup over columns instead of rows (for
   * short products such as decoding's M = 1, where rows would leave lanes idle).
   * A's loads are then the uniform ones. Not with transA.
   */
  cols?: boolean;
  /** Element types of the operands (default all f32); f16 needs shader-f16. */
  types?: Partial<Record<"a" | "b" | "c" | "bias", DType>>;
  /** Invocations per workgroup (default 8, one AVX2 register of lanes; 16 fills AVX-512). */
  lanes?: number;
  /**
   * K may leave a remainder of 1 to 3 (only matters with transA and not transB, whose loop
   * is otherwise written twice); default true. Plans set it from the block's K.
   */
  kTail?: boolean;
}

/** A register-blocked kernel's geometry: lanes per workgroup, rows x columns per lane. */
export interface RegblockTile {
  lanes: number;
  tm: number;
  tn4: number;
}

/** The name of a tile, as `--matmul` takes it: rb{lanes}_t{rows}x{columns}. */
export function regblockName(t: RegblockTile): `rb${number}_t${number}x${number}` {
  return `rb${t.lanes}_t${t.tm}x${4 * t.tn4}`;
}

/** Why a tile cannot be generated, or undefined when it can. */
export function regblockProblem(t: RegblockTile): string | undefined {
  if (![4, 8, 16, 32].includes(t.lanes)) return `lanes must be 4, 8, 16 or 32, got ${t.lanes}`;
  if (t.tm < 4 || t.tm > 32 || t.tm % 4 !== 0) {
    return `rows per lane must be a multiple of 4 from 4 to 32, got ${t.tm}`;
  }
  if (t.tn4 < 1 || t.tn4 > 8) {
    return `columns per lane must be 4 to 32 in steps of 4, got ${4 * t.tn4}`;
  }
  return undefined;
}

/** `name` (rb{lanes}_t{rows}x{columns}) as a tile, or undefined when it is not one. */
export function parseRegblockName(name: string): RegblockTile | undefined {
  const m = /^rb(\d+)_t(\d+)x(\d+)$/.exec(name);
  if (!m || Number(m[3]) % 4 !== 0) return undefined;
  return { lanes: Number(m[1]), tm: Number(m[2]), tn4: Number(m[3]) / 4 };
}

/** Rows of C one workgroup covers. */
export function regblockRows(v: RegblockVariant): number {
  return v.cols ? v.tm : (v.lanes ?? 8) * v.tm;
}

/** Columns of C one workgroup covers. */
export function regblockCols(v: RegblockVariant): number {
  return v.cols ? 4 * (v.lanes ?? 8) * v.tn4 : 4 * v.tn4;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const comp = ["x", "y", "z", "w"];

/** Loop iterations of a register-blocked kernel for a K of `k`: ceil(k / 4) + 3. */
export function regblockLoops(k: number): number {
  return Math.ceil(k / 4) + 3;
}

/** The declaration of a variant's generated kernel (every operand vec4). */
export function matmulRegblockKernel(v: RegblockVariant): MatmulDecl {
  const all4 = { a: true, b: true, c: true, bias: true };
  return matmulKernel("matmul_regblock", regblockBody(v), {
    vec4: all4,
    bias: v.bias,
    loopBound: regblockLoops,
  });
}

/** WGSL source for one variant: its declaration's header, then the generated body. */
export function matmulRegblockWgsl(v: RegblockVariant): string {
  const types = { a: "f32", b: "f32", c: "f32", bias: "f32", ...v.types } as const;
  return matmulRegblockKernel(v).header(matmulTypes(types)) + regblockBody(v);
}

/** The generated body of one variant (no bindings: see matmulKernel). */
function regblockBody(v: RegblockVariant): string {
  const { transA, transB, tm, tn4 } = v;
  const lanes = v.lanes ?? 8;
  if (v.cols && transA) throw new RangeError("Matmul lanes over columns do not support transA");
  if (tm % 4 !== 0 && (transA || !v.cols)) {
    throw new RangeError(`Matmul tile rows must be a multiple of 4, got ${tm}`);
  }
  const I = range(tm), J = range(tn4);
  const ty = { a: "f32", b: "f32", c: "f32", bias: "f32", ...v.types };
  // Loads widen f16 to f32; stores narrow back.
  const load = (t: string, e: string) => (t === "f16" ? `vec4f(${e})` : e);
  const out: string[] = [];
  const o = (s: string) => out.push(s);
  o(
    `// matmul_regblock transA=${transA} transB=${transB} bias=${v.bias} ` +
      `accumulate=${v.accumulate} lanes=${lanes} tile=${tm}x${
        4 * tn4
      } a=${ty.a} b=${ty.b} c=${ty.c} ` +
      `(generated by src/model/ops/matmul_regblock.ts)`,
  );
  o(`@compute @workgroup_size(${lanes}, 1, 1)`);
  o(`fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wid: vec3u,`);
  o(`        @builtin(local_invocation_id) lid: vec3u) {`);
  if (v.cols) {
    o(`  let r0 = wid.x * ${tm}u;`);
    o(`  if (r0 >= p.M) { return; }`);
    o(`  let c4 = (wid.y * ${lanes}u + lid.x) * ${tn4}u;`);
  } else {
    o(`  let r0 = gid.x * ${tm}u;`);
    o(`  if (r0 >= p.M) { return; }`);
    o(`  let c4 = wid.y * ${tn4}u;`);
  }
  o(`  let N4 = p.N / 4u; let lda4 = p.lda / 4u; let ldb4 = p.ldb / 4u;`);
  // Clamped indices: rows and columns past the edge load valid data that is never stored.
  if (!transA) {
    for (const i of I) o(`  let ar${i} = p.a_off / 4u + min(r0 + ${i}u, p.M - 1u) * lda4;`);
  } else {for (const q of range(tm / 4)) {
      o(`  let aq${q} = p.a_off / 4u + min(r0 / 4u + ${q}u, p.M / 4u - 1u);`);
    }}
  if (!transB) { for (const j of J) o(`  let bc${j} = p.b_off / 4u + min(c4 + ${j}u, N4 - 1u);`); }
  else {
    for (const j of J) {
      for (const e of range(4)) {
        o(`  let bn${j}_${e} = p.b_off / 4u + min(4u * (c4 + ${j}u) + ${e}u, p.N - 1u) * ldb4;`);
      }
    }
  }
  for (const i of I) for (const j of J) o(`  var acc${i}_${j} = vec4f(0.0);`);

  // One step of `kc` consecutive k values starting at k (a u32 expression).
  const step = (kc: number) => {
    // a(i, kk) as an expression
    const aExpr: (i: number, kk: number) => string = transA
      ? (i, kk) => `a${kk}_${i >> 2}.${comp[i & 3]}`
      : (i, kk) => (kc === 4 ? `a${i}.${comp[kk]}` : `a${i}`);
    if (!transA) {
      for (const i of I) o(`    let a${i} = ${load(ty.a, `A[ar${i} + k / 4u]`)};`);
    } else {
      for (const kk of range(kc)) {
        for (const q of range(tm / 4)) {
          o(`    let a${kk}_${q} = ${load(ty.a, `A[aq${q} + (k + ${kk}u) * lda4]`)};`);
        }
      }
    }
    if (!transB) {
      for (const kk of range(kc)) {
        for (const j of J) {
          o(`    let b${kk}_${j} = ${load(ty.b, `B[bc${j} + (k + ${kk}u) * ldb4]`)};`);
        }
      }
    } else {
      for (const j of J) {
        for (const e of range(4)) {
          o(`    let t${j}_${e} = ${load(ty.b, `B[bn${j}_${e} + k / 4u]`)};`);
        }
        for (const kk of range(kc)) {
          o(`    let b${kk}_${j} = vec4f(${
            range(4).map((e) => `t${j}_${e}.${comp[kk]}`).join(", ")
          });`);
        }
      }
    }
    for (const i of I) {
      for (const j of J) {
        const terms = range(kc).map((kk) => `${aExpr(i, kk)} * b${kk}_${j}`).join(" + ");
        o(`    acc${i}_${j} += ${terms};`);
      }
    }
  };
  const kContiguous = !transA || transB;
  if (kContiguous || v.kTail === false) {
    o(`  for (var k = 0u; k < p.K; k += 4u) {`);
    step(4);
    o(`  }`);
  } else {
    o(`  let K4 = p.K & ~3u;`);
    o(`  for (var k = 0u; k < K4; k += 4u) {`);
    step(4);
    o(`  }`);
    o(`  for (var k = K4; k < p.K; k += 1u) {`);
    step(1);
    o(`  }`);
  }
  // Epilogue: bias, accumulate, guarded stores.
  const ldc4 = `(p.ldc / 4u)`;
  for (const j of J) {
    o(`  if (c4 + ${j}u < N4) {`);
    if (v.bias) o(`    let bias${j} = ${load(ty.bias, `bias[p.bias_off / 4u + c4 + ${j}u]`)};`);
    for (const i of I) {
      o(`    if (r0 + ${i}u < p.M) {`);
      o(`      let ci = p.c_off / 4u + (r0 + ${i}u) * ${ldc4} + c4 + ${j}u;`);
      let val = `acc${i}_${j}`;
      if (v.bias) val += ` + bias${j}`;
      if (v.accumulate) val = `${load(ty.c, "C[ci]")} + ${val}`;
      o(`      C[ci] = ${ty.c === "f16" ? `vec4<f16>(${val})` : val};`);
      o(`    }`);
    }
    o(`  }`);
  }
  o(`}`);
  return out.join("\n") + "\n";
}

/**
 * The default tile for a product: big tiles run up to 2x faster on llvmpipe, but its LLVM
 * compiles them for far longer (Mesa 25.0 cold, 32 columns: 32 rows 30-90 s, 16 rows 11-27
 * s; 8 rows x 16 columns 2-4 s), so they go only to products whose every side is large and
 * whose work repays the compile: 32 rows from 256 on every side and 2^28 FLOPs (every product
 * of GPT-2 124M at 256 tokens), 16 from 128 and 2^28 (gpt2-mini's lm-head); a test model's products
 * (32 to 64 channels) keep the small tile. Under 8 rows the lanes spread over columns
 * (decoding).
 */
export function regblockDefault(b: { M: number; N: number; K: number; transA: boolean }) {
  const { M, N, K } = b;
  const flops = 2 * M * N * K, side = Math.min(N, K);
  if (M < 8 && !b.transA) return { tm: Math.min(M, 4), tn4: 2, lanes: 8, cols: true };
  const tile = M >= 256 && side >= 256 && flops >= 2 ** 28
    ? { tm: 32, tn4: 8 }
    : M >= 128 && side >= 128 && flops >= 2 ** 28
    ? { tm: 16, tn4: 8 }
    : M >= 64
    ? { tm: 8, tn4: 4 }
    : { tm: 4, tn4: 8 };
  return { ...tile, lanes: 8, cols: false };
}

/**
 * The plan for one product block: the default tile for its size (regblockDefault) unless
 * `tile` forces one.
 */
export function regblockPlan(
  b: BlockProduct,
  tile?: { tm: number; tn4: number; lanes?: number },
): KernelPlan {
  const { M, N } = b;
  const t = tile ? { lanes: 8, ...tile, cols: false } : regblockDefault(b);
  const v: RegblockVariant = {
    transA: b.transA,
    transB: b.transB,
    bias: b.bias,
    accumulate: b.accumulate,
    tm: t.tm,
    tn4: t.tn4,
    cols: t.cols,
    types: b.types,
    lanes: t.lanes,
    kTail: b.K % 4 !== 0,
  };
  return {
    kernel: "matmul_regblock",
    decl: matmulRegblockKernel(v),
    workgroups: [Math.ceil(M / regblockRows(v)), Math.ceil(N / regblockCols(v)), 1],
    binding4: b.bias ? "bias" : "none",
  };
}
