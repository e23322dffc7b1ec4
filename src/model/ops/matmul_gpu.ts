/**
 * The GPU matmul family: one WGSL generator with a tile shape as its parameters, and the
 * plans that turn a product into a dispatch of the generated kernel or of the plain tiled
 * kernel (kernels/matmul_tiled.wgsl, the family's scalar baseline).
 *
 * C[M,N] (+)= op(A)[M,K] · op(B)[K,N] (+ bias[N]), op(A) = A [M,K] or Aᵀ with A stored
 * [K,M], op(B) = B [K,N] or Bᵀ with B stored [N,K]; operands f32 or f16, sums f32.
 *
 * A variant is named `wg{BM}x{BN}x{BK}_t{TM}x{TN}`: a workgroup of (BN/TN) x (BM/TM)
 * invocations computes a BM x BN block of C, staging BM x BK of op(A) and BK x BN of op(B)
 * in workgroup memory per step, and each invocation keeps a TM x TN register tile
 * (TM/4 x TN/4 vec4 accumulators in named variables, the k step unrolled). What each
 * variant does with its operands follows from the product, not from the name:
 * - an operand whose contiguous dimension, leading dimension and offset are multiples of
 *   4 is read as vec4 (vec4<f16> for f16), otherwise as scalars (any size works);
 * - both tiles are stored k-major ([BK][BM], [BK][BN]) so the compute loop reads vec4s of
 *   4 rows or 4 columns; a tile whose global reads run along k is transposed on the way
 *   in and padded by 4 floats a row, which spreads those stores over the banks;
 * - an invocation owns the vec4 column groups tx, tx + BN/TN, ... and the row groups
 *   ty, ty + BM/TM, ..., so neighbouring invocations read neighbouring shared vec4s and
 *   write neighbouring vec4s of C.
 *
 * Every kernel of the family, the tiled one included, declares its bindings (A, B, C
 * read_write, bias) and uniforms through {@linkcode matmulKernel}; the generator writes only
 * the body. Geometry: workgroup (BN/TN, BM/TM, 1); grid (ceil(N/BN),
 * ceil(M/BM), 1). Loop bound per invocation: ceil(K / BK) + 1 (the k0 loop; every other
 * loop is unrolled by the generator).
 *
 * @module
 */

import type { DType } from "../../gpu/dtype.ts";
import type { GpuLimits } from "../../gpu/device.ts";
import { type MatmulDecl, matmulKernel, matmulTypes } from "./matmul_kernel.ts";
import tiledSrc from "../../../kernels/matmul_tiled.wgsl" with { type: "text" };

/** Loop iterations of kernels/matmul_tiled.wgsl for a K of `k` (see its header). */
export function tiledLoops(k: number): number {
  return Math.ceil(k / 16) * 18;
}

/** kernels/matmul_tiled.wgsl's declaration (bias always bound: A again without one). */
const tiledKernel = matmulKernel("matmul_tiled", tiledSrc, {
  vec4: { a: false, b: false, c: false, bias: false },
  bias: true,
  loopBound: tiledLoops,
  overrides: true,
});

/** A point of the family's search space. */
export interface GpuTile {
  /** Rows of C per workgroup. */
  bm: number;
  /** Columns of C per workgroup. */
  bn: number;
  /** Values of K staged per step. */
  bk: number;
  /** Rows of C per invocation (a multiple of 4). */
  tm: number;
  /** Columns of C per invocation (a multiple of 4). */
  tn: number;
}

/** The name of a tile, `wg{BM}x{BN}x{BK}_t{TM}x{TN}`. */
export type GpuTileName = `wg${number}x${number}x${number}_t${number}x${number}`;

/**
 * The tiles the autotuner tries on GPUs: from the textbook 64x64 with 4x4 per invocation
 * (the tiled kernel with vec4 operands) to 128x128 with 8x8, and a narrow one for short
 * products. Seven, since each costs a compile per shape class on first use; all fit
 * WebGPU's default 16 KiB of workgroup memory except 128x128x16 (16.5 KiB).
 */
export const GPU_TILES: readonly GpuTileName[] = [
  "wg64x64x16_t4x4",
  "wg32x64x32_t4x4",
  "wg128x64x16_t8x4",
  "wg64x128x16_t4x8",
  "wg128x64x16_t8x8",
  "wg128x128x8_t8x8",
  "wg128x128x16_t8x8",
];

/** Parses a tile name; undefined when `name` is not one. */
export function parseGpuTile(name: string): GpuTile | undefined {
  const m = /^wg(\d+)x(\d+)x(\d+)_t(\d+)x(\d+)$/.exec(name);
  if (!m) return undefined;
  const [bm, bn, bk, tm, tn] = m.slice(1).map(Number);
  return { bm, bn, bk, tm, tn };
}

/** The name of a tile. */
export function gpuTileName(t: GpuTile): GpuTileName {
  return `wg${t.bm}x${t.bn}x${t.bk}_t${t.tm}x${t.tn}`;
}

/** Floats of workgroup memory one tile holds (both staged operands, padded). */
function sharedFloats(t: GpuTile, transA: boolean, transB: boolean): number {
  return t.bk * (t.bm + (transA ? 0 : 4)) + t.bk * (t.bn + (transB ? 4 : 0));
}

/**
 * Why a tile cannot run (undefined when it can): a shape the generator does not make or,
 * given a device's `limits`, a workgroup over its invocation or memory limits.
 */
export function gpuTileProblem(t: GpuTile, limits?: GpuLimits): string | undefined {
  const { bm, bn, bk, tm, tn } = t;
  if ([bm, bn, bk, tm, tn].some((x) => !Number.isInteger(x) || x < 4 || x % 4 !== 0)) {
    return "every size must be a multiple of 4";
  }
  if (bm % tm !== 0 || bn % tn !== 0) return "BM must be a multiple of TM and BN of TN";
  if (tm > 16 || tn > 16) return "TM and TN are at most 16 (registers)";
  if (bk > 64) return "BK is at most 64 (the unrolled step grows with it)";
  if (!limits) return undefined;
  const threads = (bm / tm) * (bn / tn);
  if (threads > limits.maxComputeInvocationsPerWorkgroup) {
    return `${threads} invocations per workgroup is over the device's limit`;
  }
  if (bn / tn > limits.maxComputeWorkgroupSizeX) return "too wide a workgroup";
  if (bm / tm > limits.maxComputeWorkgroupSizeY) return "too tall a workgroup";
  const bytes = 4 * sharedFloats(t, false, true);
  if (bytes > limits.maxComputeWorkgroupStorageSize) {
    return `${bytes} bytes of workgroup memory is over the device's limit`;
  }
  return undefined;
}

/** The most loop iterations one invocation of a generated kernel runs for a K of `k`. */
export function gpuTileLoops(t: GpuTile, k: number): number {
  return Math.ceil(k / t.bk) + 1;
}

/** What a generated kernel computes (the product's side of a variant). */
export interface GpuMatmulVariant extends GpuTile {
  transA: boolean;
  transB: boolean;
  bias: boolean;
  accumulate: boolean;
  /** Element types of the operands. */
  types: Record<"a" | "b" | "c" | "bias", DType>;
  /** Which operands are read or written as vec4 (they must be 4-aligned, see above). */
  vec4: Record<"a" | "b" | "c" | "bias", boolean>;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const comp = ["x", "y", "z", "w"];

/** The declaration of a variant's generated kernel. */
export function matmulGpuKernel(v: GpuMatmulVariant): MatmulDecl {
  return matmulKernel(`matmul_${gpuTileName(v)}`, matmulGpuBody(v), {
    vec4: v.vec4,
    bias: v.bias,
    loopBound: (K) => gpuTileLoops(v, K),
  });
}

/** WGSL source for one variant: its declaration's header, then the generated body. */
export function matmulGpuWgsl(v: GpuMatmulVariant): string {
  return matmulGpuKernel(v).header(matmulTypes(v.types)) + matmulGpuBody(v);
}

/** The generated body of one variant (no bindings: see {@linkcode matmulKernel}). */
function matmulGpuBody(v: GpuMatmulVariant): string {
  const problem = gpuTileProblem(v);
  if (problem) throw new RangeError(`Matmul tile ${gpuTileName(v)} is not valid: ${problem}`);
  const { bm, bn, bk, tm, tn, transA, transB } = v;
  const wx = bn / tn, wy = bm / tm, threads = wx * wy;
  const ty = v.types;
  const out: string[] = [];
  const o = (s: string) => out.push(s);
  const vt = (k: "a" | "b" | "c" | "bias") => (v.vec4[k] ? `vec4<${ty[k]}>` : ty[k]);
  o(
    `// matmul ${gpuTileName(v)} transA=${transA} transB=${transB} bias=${v.bias} ` +
      `accumulate=${v.accumulate} a=${vt("a")} b=${vt("b")} c=${vt("c")} ` +
      `(generated by src/model/ops/matmul_gpu.ts; loop bound ceil(K/${bk}) + 1)`,
  );
  // Row lengths of the staged tiles in vec4s: +1 where the stores transpose.
  const as4 = (bm + (transA ? 0 : 4)) / 4, bs4 = (bn + (transB ? 4 : 0)) / 4;
  o(`var<workgroup> As: array<vec4f, ${bk * as4}>; // [BK][BM(+4)] of op(A), k-major`);
  o(`var<workgroup> Bs: array<vec4f, ${bk * bs4}>; // [BK][BN(+4)] of op(B), k-major`);
  o(`@compute @workgroup_size(${wx}, ${wy}, 1)`);
  o(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {`);
  o(`  let m0 = wid.y * ${bm}u; let n0 = wid.x * ${bn}u;`);
  o(`  let t = lid.y * ${wx}u + lid.x;`);
  for (const [k, off, ld] of [["a", "a_off", "lda"], ["b", "b_off", "ldb"]] as const) {
    if (v.vec4[k]) o(`  let ${off}4 = p.${off} / 4u; let ${ld}4 = p.${ld} / 4u;`);
  }
  for (const i of range(tm)) for (const j of range(tn / 4)) o(`  var acc${i}_${j} = vec4f(0.0);`);

  /**
   * Stages one operand's tile. `outer` is the operand's non-K dimension (M for A, N for
   * B); `kMajor` says its global reads run along `outer` (A transposed, B not).
   */
  const stage = (
    x: "A" | "B",
    op: "a" | "b",
    outer: number,
    outerDim: string,
    o0: string,
    kMajor: boolean,
    row4: number,
  ) => {
    const vec = v.vec4[op], off = `p.${op}_off`, ld = `p.ld${op}`, S = `${x}s`;
    const load = (idx: string) => (vec ? `vec4f(${x}[${idx}])` : `f32(${x}[${idx}])`);
    const total = (outer * bk) / (vec ? 4 : 1);
    for (const r of range(Math.ceil(total / threads))) {
      const guard = (r + 1) * threads > total;
      o(`  {`);
      o(`    let e = ${r * threads}u + t;`);
      if (guard) o(`    if (e < ${total}u) {`);
      if (kMajor) {
        // Rows of k; `outer` contiguous: vec4s (or scalars) stored as they come.
        const per = vec ? outer / 4 : outer;
        o(`    let kr = e / ${per}u; let oo = e % ${per}u;`);
        o(`    let k = k0 + kr; let o = ${o0} + ${vec ? "4u * oo" : "oo"};`);
        o(`    var v = ${vec ? "vec4f(0.0)" : "0.0"};`);
        const idx = vec ? `${op}_off4 + k * ld${op}4 + o / 4u` : `${off} + k * ${ld} + o`;
        o(`    if (k < p.K && o < p.${outerDim}) { v = ${load(idx)}; }`);
        if (vec) o(`    ${S}[kr * ${row4}u + oo] = v;`);
        else o(`    ${S}[kr * ${row4}u + oo / 4u][oo % 4u] = v;`);
      } else {
        // Rows of `outer`; k contiguous: transposed into the k-major tile.
        const per = vec ? bk / 4 : bk;
        o(`    let oo = e / ${per}u; let kq = e % ${per}u;`);
        o(`    let o = ${o0} + oo; let k = k0 + ${vec ? "4u * kq" : "kq"};`);
        o(`    var v = ${vec ? "vec4f(0.0)" : "0.0"};`);
        const idx = vec ? `${op}_off4 + o * ld${op}4 + k / 4u` : `${off} + o * ${ld} + k`;
        o(`    if (k < p.K && o < p.${outerDim}) { v = ${load(idx)}; }`);
        if (vec) {
          for (const c of range(4)) {
            o(`    ${S}[(4u * kq + ${c}u) * ${row4}u + oo / 4u][oo % 4u] = v.${comp[c]};`);
          }
        } else o(`    ${S}[kq * ${row4}u + oo / 4u][oo % 4u] = v;`);
      }
      if (guard) o(`    }`);
      o(`  }`);
    }
  };

  o(`  for (var k0 = 0u; k0 < p.K; k0 += ${bk}u) {`);
  stage("A", "a", bm, "M", "m0", transA, as4);
  stage("B", "b", bn, "N", "n0", !transB, bs4);
  o(`  workgroupBarrier();`);
  for (const kk of range(bk)) {
    for (const q of range(tm / 4)) o(`  let a${kk}_${q} = As[${kk * as4}u + lid.y + ${q * wy}u];`);
    for (const j of range(tn / 4)) o(`  let b${kk}_${j} = Bs[${kk * bs4}u + lid.x + ${j * wx}u];`);
    for (const i of range(tm)) {
      for (const j of range(tn / 4)) {
        o(`  acc${i}_${j} = fma(vec4f(a${kk}_${i >> 2}.${
          comp[i & 3]
        }), b${kk}_${j}, acc${i}_${j});`);
      }
    }
  }
  o(`  workgroupBarrier();`);
  o(`  }`);

  // Epilogue: bias, accumulate, guarded stores.
  const cOut = (val: string) => (v.vec4.c ? `vec4<${ty.c}>(${val})` : `${ty.c}(${val})`);
  for (const j of range(tn / 4)) {
    o(`  {`);
    o(`  let c4 = n0 / 4u + lid.x + ${j * wx}u;`);
    if (v.bias) {
      if (v.vec4.bias) {
        o(`  let bias${j} = vec4f(bias[p.bias_off / 4u + min(c4, p.N / 4u - 1u)]);`);
      } else {
        o(`  let bias${j} = vec4f(${
          range(4).map((e) => `f32(bias[p.bias_off + min(4u * c4 + ${e}u, p.N - 1u)])`).join(", ")
        });`);
      }
    }
    for (const i of range(tm)) {
      o(`  {`);
      o(`    let row = m0 + 4u * (lid.y + ${(i >> 2) * wy}u) + ${i & 3}u;`);
      let val = `acc${i}_${j}`;
      if (v.bias) val += ` + bias${j}`;
      if (v.vec4.c) {
        o(`    if (row < p.M && 4u * c4 < p.N) {`);
        o(`      let ci = p.c_off / 4u + row * (p.ldc / 4u) + c4;`);
        if (v.accumulate) val = `vec4f(C[ci]) + ${val}`;
        o(`      C[ci] = ${cOut(val)};`);
        o(`    }`);
      } else {
        o(`    let v = ${val};`);
        for (const e of range(4)) {
          o(`    if (row < p.M && 4u * c4 + ${e}u < p.N) {`);
          o(`      let ci = p.c_off + row * p.ldc + 4u * c4 + ${e}u;`);
          o(`      C[ci] = ${cOut(`${v.accumulate ? "f32(C[ci]) + " : ""}v.${comp[e]}`)};`);
          o(`    }`);
        }
      }
      o(`  }`);
    }
    o(`  }`);
  }
  o(`}`);
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// Plans: a product block -> kernel source, constants and grid.

/** One dispatch's product, as the plans see it. */
export interface BlockProduct {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  bias: boolean;
  accumulate: boolean;
  types: Record<"a" | "b" | "c" | "bias", DType>;
  /** Which operands are 4-aligned (contiguous dimension, leading dimension, offset). */
  aligned: Record<"a" | "b" | "c" | "bias", boolean>;
}

/** What matmul.ts needs to build the dispatch. */
export interface KernelPlan {
  /** Pipeline name. */
  kernel: string;
  /** The kernel's declaration (its body included). */
  decl: MatmulDecl;
  /** Override constants (the tiled kernel's). */
  constants?: Partial<Record<"TRANS_A" | "TRANS_B" | "HAS_BIAS" | "ACCUMULATE", boolean>>;
  workgroups: [number, number, number];
  /** The bias binding: the bias, A again (the kernel uses it, ignoring it), or none. */
  binding4: "bias" | "a" | "none";
}

/** What a generated variant takes from a block's product: its transposes, epilogue and types. */
export function variantOf(b: BlockProduct) {
  const { transA, transB, bias, accumulate, types } = b;
  return { transA, transB, bias, accumulate, types };
}

/** The plan for a generated GPU-family kernel. */
export function gpuTilePlan(t: GpuTile, b: BlockProduct): KernelPlan {
  const decl = matmulGpuKernel({ ...t, ...variantOf(b), vec4: b.aligned });
  return {
    kernel: `matmul_${gpuTileName(t)}`,
    decl,
    workgroups: [Math.ceil(b.N / t.bn), Math.ceil(b.M / t.bm), 1],
    binding4: b.bias ? "bias" : "none",
  };
}

/** The plan for kernels/matmul_tiled.wgsl (scalar loads, any shape). */
export function tiledPlan(b: BlockProduct): KernelPlan {
  return {
    kernel: "matmul_tiled",
    decl: tiledKernel,
    constants: {
      TRANS_A: b.transA,
      TRANS_B: b.transB,
      HAS_BIAS: b.bias,
      ACCUMULATE: b.accumulate,
    },
    workgroups: [Math.ceil(b.N / 64), Math.ceil(b.M / 64), 1],
    binding4: b.bias ? "bias" : "a",
  };
}
