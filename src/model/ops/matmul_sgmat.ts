/**
 * Matmul on tensor cores: the subgroup-matrix variants of the GPU family, for Dawn's
 * `chromium-experimental-subgroup-matrix` (WGSL `enable chromium_experimental_subgroup_matrix;`,
 * Vulkan's cooperative matrices, Metal's simdgroup matrices). f16 x f16 products summed in
 * f32, in the fragment shapes the adapter lists (`GPUAdapterInfo.subgroupMatrixConfigs`:
 * 16x16x16 on NVIDIA and AMD, 8x8x8 on Apple).
 *
 * C[M,N] (+)= op(A)·op(B) (+ bias[N]) exactly as the other kernels of the family (same
 * bindings and uniforms, src/model/ops/matmul_kernel.ts), A and B f16, C and bias f32 or f16.
 *
 * A variant is named `sm{BM}x{BN}x{BK}_g{GY}x{GX}_f{m}x{n}x{k}`:
 * - a workgroup computes a BM x BN block of C; GY x GX subgroup slots each own a
 *   (BM/GY) x (BN/GX) part of it, as (BM/GY/m) x (BN/GX/n) result fragments of m x n;
 * - per step it stages BK of K: op(A)'s BM x BK and op(B)'s BK x BN tiles are copied to
 *   workgroup memory as they lie in their buffers (row-major or transposed; out-of-range
 *   rows and k zero), each row padded by 8 halves; fragments are loaded from there with the
 *   majorness that matches, so no transpose is ever done by hand;
 * - the epilogue stores one fragment per slot at a time to a small f32 scratch, and the
 *   whole workgroup writes it out with bias, accumulation, conversion and bounds.
 *
 * No code assumes a subgroup size. The workgroup has GY·GX·S invocations, S the adapter's
 * largest subgroup size (`subgroupMaxSize`; Dawn requires the workgroup's x size to be a
 * multiple of it): where the subgroups are S wide there are exactly GY·GX of them; where
 * they are narrower (a GPU whose size varies) there are more, and those past GY·GX only
 * help with staging and the epilogue. Slots use `@builtin(subgroup_id)`.
 *
 * Emulated: the same generator can write plain WGSL in place of the subgroup-matrix types
 * and builtins (every invocation holds a whole fragment in private memory; loads, the
 * multiply-add and stores do what the extension's spec says, a store split over the slot's
 * S invocations), so the tile logic — staging, offsets, strides, majorness, slots, the
 * epilogue — runs and is tested on any adapter, lavapipe included; only the three builtins
 * themselves are left to the device (the autotuner's check, src/model/ops/matmul_check.ts,
 * compares every candidate with the incumbent before it is timed), and the native code is
 * compiled and validated by Dawn's own compiler in the tests (its null backend offers the
 * extension).
 *
 * Loop bound per invocation: ceil(K/BK) + 1 (emulated: plus the fragment loops, see
 * {@linkcode sgmLoops}).
 *
 * @module
 */

import type { DType } from "../../gpu/dtype.ts";
import type { Gpu, GpuLimits } from "../../gpu/device.ts";
import { type MatmulDecl, matmulKernel, matmulTypes } from "./matmul_kernel.ts";
import { type BlockProduct, type KernelPlan, variantOf } from "./matmul_gpu.ts";

/** A subgroup-matrix shape the adapter supports (f16 x f16 -> f32 here). */
export interface SgmFragment {
  /** Rows of the left and result fragments. */
  m: number;
  /** Columns of the right and result fragments. */
  n: number;
  /** Columns of the left fragment, rows of the right one. */
  k: number;
}

/** A point of the subgroup-matrix family's search space. */
export interface SgmTile extends SgmFragment {
  /** Rows of C per workgroup. */
  bm: number;
  /** Columns of C per workgroup. */
  bn: number;
  /** Values of K staged per step. */
  bk: number;
  /** Subgroup slots down the block. */
  gy: number;
  /** Subgroup slots across the block. */
  gx: number;
}

/** The name of a subgroup-matrix tile. */
export type SgmTileName = `sm${number}x${number}x${number}_g${number}x${number}_f${string}`;

/** The blocks tried per fragment shape, as (BM, BN, BK, GY, GX) in units of a fragment. */
const SGM_BLOCKS: readonly [number, number, number, number, number][] = [
  [4, 4, 2, 2, 2], // 64x64x32 over 4 slots of 2x2 fragments (16x16x16)
  [8, 4, 2, 2, 2], // 128x64x32 over 4 slots of 4x2
  [8, 8, 2, 2, 2], // 128x128x32 over 4 slots of 4x4
  [8, 8, 2, 4, 2], // 128x128x32 over 8 slots of 2x4
];

/** Padding of each staged row, in halves (16 bytes: keeps rows 16-byte aligned). */
const PAD = 8;

/** The tiles the autotuner tries for a fragment shape (those the device can run). */
export function sgmTiles(f: SgmFragment, limits?: GpuLimits, subgroupMax = 32): SgmTileName[] {
  return SGM_BLOCKS.map(([bm, bn, bk, gy, gx]) =>
    sgmTileName({ bm: bm * f.m, bn: bn * f.n, bk: bk * f.k, gy, gx, ...f })
  ).filter((name) => !sgmTileProblem(parseSgmTile(name)!, limits, subgroupMax));
}

/** Parses a subgroup-matrix tile name; undefined when `name` is not one. */
export function parseSgmTile(name: string): SgmTile | undefined {
  const r = /^sm(\d+)x(\d+)x(\d+)_g(\d+)x(\d+)_f(\d+)x(\d+)x(\d+)$/.exec(name);
  if (!r) return undefined;
  const [bm, bn, bk, gy, gx, m, n, k] = r.slice(1).map(Number);
  return { bm, bn, bk, gy, gx, m, n, k };
}

/** The name of a tile. */
export function sgmTileName(t: SgmTile): SgmTileName {
  return `sm${t.bm}x${t.bn}x${t.bk}_g${t.gy}x${t.gx}_f${t.m}x${t.n}x${t.k}`;
}

/** Bytes of workgroup memory a tile uses (both staged operands, padded, and the scratch). */
function sharedBytes(t: SgmTile, transA: boolean, transB: boolean): number {
  const a = transA ? t.bk * (t.bm + PAD) : t.bm * (t.bk + PAD);
  const b = transB ? t.bn * (t.bk + PAD) : t.bk * (t.bn + PAD);
  return 2 * (a + b) + 4 * t.gy * t.gx * t.m * t.n;
}

/**
 * Why a tile cannot run (undefined when it can): a shape the generator does not make or,
 * given a device's `limits` and largest subgroup size, a workgroup over its limits.
 */
export function sgmTileProblem(
  t: SgmTile,
  limits?: GpuLimits,
  subgroupMax = 32,
): string | undefined {
  const { bm, bn, bk, gy, gx, m, n, k } = t;
  if ([bm, bn, bk, gy, gx, m, n, k].some((x) => !Number.isInteger(x) || x < 1)) {
    return "every size must be a positive integer";
  }
  if ([m, n, k].some((x) => x % 4 !== 0)) return "fragment sides must be multiples of 4";
  if (bm % (gy * m) !== 0) return "BM must be a multiple of GY x m";
  if (bn % (gx * n) !== 0) return "BN must be a multiple of GX x n";
  if (bk % k !== 0 || bk % 4 !== 0) return "BK must be a multiple of k and of 4";
  if ((bm / gy / m) * (bn / gx / n) > 16) return "at most 16 result fragments per slot";
  if (bk > 64) return "BK is at most 64 (the unrolled step grows with it)";
  if (!limits) return undefined;
  const threads = gy * gx * subgroupMax;
  if (threads > limits.maxComputeInvocationsPerWorkgroup) {
    return `${threads} invocations per workgroup is over the device's limit`;
  }
  if (threads > limits.maxComputeWorkgroupSizeX) return "too wide a workgroup";
  const bytes = Math.max(sharedBytes(t, false, false), sharedBytes(t, true, true));
  if (bytes > limits.maxComputeWorkgroupStorageSize) {
    return `${bytes} bytes of workgroup memory is over the device's limit`;
  }
  return undefined;
}

/**
 * The most loop iterations one invocation runs for a K of `k`: the K loop, unrolled inside.
 * Emulated, the fragment loops count too (every fragment multiply-add is m·n·k iterations
 * in each invocation), so that the loop budget refuses an emulated product too long for
 * drivers that cut invocations off.
 */
export function sgmLoops(t: SgmTile, K: number, emulate = false): number {
  const steps = Math.ceil(K / t.bk);
  if (!emulate) return steps + 1;
  const { m, n, k } = t, rm = t.bm / t.gy / m, rn = t.bn / t.gx / n, ks = t.bk / k;
  // Every iteration of the emulated loads (rows, then columns), multiply-adds (rows,
  // columns, depth) and stores, per K step and in the epilogue.
  const loads = rm * (m * k + m) + rn * (k * n + k);
  const mma = rm * rn * (m * n * k + m * n + m);
  return steps * (ks * (loads + mma) + 1) + rm * rn * (m * n + 1) + 1;
}

/** What a generated kernel computes. */
export interface SgmVariant extends SgmTile {
  transA: boolean;
  transB: boolean;
  bias: boolean;
  accumulate: boolean;
  /** Element types: A and B f16; C and bias f32 or f16. */
  types: Record<"a" | "b" | "c" | "bias", DType>;
  /** Which of A and B are read as vec4 (4-aligned, see matmul_gpu.ts). */
  vec4: Record<"a" | "b", boolean>;
  /** The adapter's largest subgroup size: the workgroup is GY·GX of it. */
  subgroupMax: number;
  /**
   * Plain WGSL in place of the builtins (any adapter; see the module's doc), with subgroups
   * of this many invocations (at most `subgroupMax`; fewer tests the slots left idle).
   */
  emulate?: number;
}

/** The pipeline name of a variant. */
function sgmKernelName(v: SgmVariant): string {
  return `matmul_${sgmTileName(v)}_s${v.subgroupMax}${v.emulate ? `_emulated${v.emulate}` : ""}`;
}

/** The declaration of a variant's generated kernel. */
export function matmulSgmKernel(v: SgmVariant): MatmulDecl {
  return matmulKernel(sgmKernelName(v), matmulSgmBody(v), {
    vec4: { a: v.vec4.a, b: v.vec4.b, c: false, bias: false },
    bias: v.bias,
    loopBound: (K) => sgmLoops(v, K, !!v.emulate),
    enables: v.emulate ? [] : ["chromium_experimental_subgroup_matrix"],
  });
}

/** WGSL source for one variant: its declaration's header, then the generated body. */
export function matmulSgmWgsl(v: SgmVariant): string {
  return matmulSgmKernel(v).header(matmulTypes(v.types)) + matmulSgmBody(v);
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * The fragment types and operations, native or emulated: what differs between the two.
 * Each writes a statement: a load declares fragment `name` from As (left) or Bs (right),
 * column-major or not; the multiply-add updates `acc`; a store writes to the f32 scratch
 * Cs, row-major.
 */
interface FragmentOps {
  /** Declarations the body needs (emulated: the structs and functions). */
  decls: string[];
  left: string;
  right: string;
  result: string;
  load(
    kind: "left" | "right",
    name: string,
    colMajor: boolean,
    off: string,
    stride: string,
  ): string;
  mma(a: string, b: string, acc: string): string;
  store(off: string, value: string, stride: string): string;
}

function nativeOps(t: SgmTile): FragmentOps {
  const left = `subgroup_matrix_left<f16, ${t.k}, ${t.m}>`;
  const right = `subgroup_matrix_right<f16, ${t.n}, ${t.k}>`;
  const result = `subgroup_matrix_result<f32, ${t.n}, ${t.m}>`;
  return {
    decls: [],
    left,
    right,
    result,
    load: (kind, name, colMajor, off, stride) =>
      `let ${name} = subgroupMatrixLoad<${kind === "left" ? left : right}, ${
        colMajor ? "col_major" : "row_major"
      }>(&${kind === "left" ? "As" : "Bs"}, ${off}, ${stride});`,
    mma: (a, b, acc) => `${acc} = subgroupMatrixMultiplyAccumulate(${a}, ${b}, ${acc});`,
    store: (off, value, stride) =>
      `subgroupMatrixStore<row_major>(&Cs, ${off}, ${value}, ${stride});`,
  };
}

/**
 * Plain WGSL with the extension's meaning: a fragment of R rows and C columns is R·C f32 in
 * every invocation; entry [r, c] of a row-major load is p[offset + r·stride + c], of a
 * column-major one p[offset + c·stride + r]; the store writes the entries e ≡ lane (mod S)
 * from each of the slot's S invocations.
 */
function emulatedOps(t: SgmTile, S: number, v: { transA: boolean; transB: boolean }): FragmentOps {
  // S: the emulated subgroup's size.
  const { m, n, k } = t;
  // Fragments stay in function variables, passed by pointer, and the loop bounds are not
  // constants the compiler can see (p.M is never 0, so sg_one is 1): with fragments passed
  // by value and the loops unrolled, lavapipe took ~10 s to compile each variant.
  const decls = [
    `var<private> sg_one: u32;`,
    `struct SgLeft { v: array<f32, ${m * k}> }   // ${m} x ${k}, row-major`,
    `struct SgRight { v: array<f32, ${k * n}> }  // ${k} x ${n}, row-major`,
    `struct SgResult { v: array<f32, ${m * n}> } // ${m} x ${n}, row-major`,
  ];
  // The two loads the body uses: left from As, right from Bs, in the tiles' majorness.
  for (
    const [kind, from, cm, rows, cols] of [
      ["left", "As", v.transA, m, k],
      ["right", "Bs", v.transB, k, n],
    ] as const
  ) {
    const T = kind === "left" ? "SgLeft" : "SgRight";
    const at = cm ? "off + c * stride + r" : "off + r * stride + c";
    decls.push(
      `fn sg_load_${kind}(x: ptr<function, ${T}>, off: u32, stride: u32) {`,
      `  for (var r = 0u; r < ${rows}u * sg_one; r++) {`,
      `    for (var c = 0u; c < ${cols}u * sg_one; c++) {`,
      `      (*x).v[r * ${cols}u + c] = f32(${from}[${at}]);`,
      `    }`,
      `  }`,
      `}`,
    );
  }
  decls.push(
    `fn sg_mma(a: ptr<function, SgLeft>, b: ptr<function, SgRight>, ` +
      `x: ptr<function, SgResult>) {`,
    `  for (var r = 0u; r < ${m}u * sg_one; r++) {`,
    `    for (var c = 0u; c < ${n}u * sg_one; c++) {`,
    `      var s = (*x).v[r * ${n}u + c];`,
    `      for (var i = 0u; i < ${k}u * sg_one; i++) {`,
    `        s = fma((*a).v[r * ${k}u + i], (*b).v[i * ${n}u + c], s);`,
    `      }`,
    `      (*x).v[r * ${n}u + c] = s;`,
    `    }`,
    `  }`,
    `}`,
    `fn sg_store(off: u32, x: ptr<function, SgResult>, stride: u32, lane: u32) {`,
    `  for (var e = lane; e < ${m * n}u; e += ${S}u) {`,
    `    Cs[off + (e / ${n}u) * stride + e % ${n}u] = (*x).v[e];`,
    `  }`,
    `}`,
  );
  return {
    decls,
    left: "SgLeft",
    right: "SgRight",
    result: "SgResult",
    load: (kind, name, _colMajor, off, stride) =>
      `var ${name}: Sg${kind === "left" ? "Left" : "Right"}; ` +
      `sg_load_${kind}(&${name}, ${off}, ${stride});`,
    mma: (a, b, acc) => `sg_mma(&${a}, &${b}, &${acc});`,
    store: (off, value, stride) => `sg_store(${off}, &${value}, ${stride}, lane);`,
  };
}

/** The generated body of one variant (no bindings: see {@linkcode matmulKernel}). */
function matmulSgmBody(v: SgmVariant): string {
  const problem = sgmTileProblem(v);
  if (problem) throw new RangeError(`Matmul tile ${sgmTileName(v)} is not valid: ${problem}`);
  if (v.types.a !== "f16" || v.types.b !== "f16") {
    throw new TypeError(`Matmul tile ${sgmTileName(v)} takes f16 A and B (subgroup matrices)`);
  }
  const { bm, bn, bk, gy, gx, m, n, k, transA, transB } = v;
  const S = v.subgroupMax, G = gy * gx, threads = G * S;
  const rm = bm / gy / m, rn = bn / gx / n;
  if (v.emulate !== undefined && !(v.emulate >= 1 && v.emulate <= S && S % v.emulate === 0)) {
    throw new RangeError(`Emulated subgroups of ${v.emulate} must divide ${S}`);
  }
  const ops = v.emulate ? emulatedOps(v, v.emulate, v) : nativeOps(v);
  const out: string[] = [];
  const o = (s: string) => out.push(s);
  o(
    `// matmul ${sgmTileName(v)} over subgroups of up to ${S} transA=${transA} ` +
      `transB=${transB} bias=${v.bias} accumulate=${v.accumulate} c=${v.types.c}` +
      `${v.emulate ? " (emulated)" : ""} (generated by src/model/ops/matmul_sgmat.ts; loop ` +
      `bound ceil(K/${bk}) + 1${v.emulate ? " plus the fragment loops" : ""})`,
  );
  // Staged tiles as they lie in their buffers: A [BM][BK] or, transposed, [BK][BM]; B
  // [BK][BN] or, transposed, [BN][BK]; each row padded by PAD halves.
  const aRows = transA ? bk : bm, aCols = transA ? bm : bk;
  const bRows = transB ? bn : bk, bCols = transB ? bk : bn;
  const sA = aCols + PAD, sB = bCols + PAD;
  o(`var<workgroup> As: array<f16, ${aRows * sA}>;`);
  o(`var<workgroup> Bs: array<f16, ${bRows * sB}>;`);
  o(`var<workgroup> Cs: array<f32, ${G * m * n}>; // one result fragment per slot`);
  for (const d of ops.decls) o(d);
  o(`@compute @workgroup_size(${threads}, 1, 1)`);
  o(
    `fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) t: u32` +
      (v.emulate ? `) {` : `, @builtin(subgroup_id) g: u32) {`),
  );
  if (v.emulate) {
    o(`  let g = t / ${v.emulate}u; let lane = t % ${v.emulate}u;`);
    o(`  sg_one = select(1u, 2u, p.M == 0u);`);
  }
  o(`  let m0 = wid.y * ${bm}u; let n0 = wid.x * ${bn}u;`);
  o(`  let r0 = (g / ${gx}u) * ${bm / gy}u; let c0 = (g % ${gx}u) * ${bn / gx}u;`);
  for (const i of range(rm)) for (const j of range(rn)) o(`  var acc${i}_${j} = ${ops.result}();`);

  /** Copies one operand's tile: `rows` x `cols` of the buffer from (row0, col0). */
  const stage = (
    X: "A" | "B",
    op: "a" | "b",
    rows: number,
    cols: number,
    stride: number,
    row0: string,
    col0: string,
    rowLim: string,
    colLim: string,
  ) => {
    const vec = v.vec4[op], per = vec ? cols / 4 : cols, total = rows * per;
    for (const r of range(Math.ceil(total / threads))) {
      const guard = (r + 1) * threads > total;
      o(`  {`);
      o(`    let e = ${r * threads}u + t;`);
      if (guard) o(`    if (e < ${total}u) {`);
      o(`    let rr = e / ${per}u; let cc = ${vec ? "4u * (e % " + per + "u)" : `e % ${per}u`};`);
      o(`    let gr = ${row0} + rr; let gc = ${col0} + cc;`);
      if (vec) {
        o(`    var x = vec4<f16>(0.0);`);
        o(`    if (gr < ${rowLim} && gc < ${colLim}) {`);
        o(`      x = ${X}[(p.${op}_off + gr * p.ld${op} + gc) / 4u];`);
        o(`    }`);
        for (const c of range(4)) o(`    ${X}s[rr * ${stride}u + cc + ${c}u] = x[${c}];`);
      } else {
        o(`    var x = f16(0.0);`);
        o(`    if (gr < ${rowLim} && gc < ${colLim}) { x = ${X}[p.${op}_off + gr * p.ld${op} + gc]; }`);
        o(`    ${X}s[rr * ${stride}u + cc] = x;`);
      }
      if (guard) o(`    }`);
      o(`  }`);
    }
  };

  o(`  for (var k0 = 0u; k0 < p.K; k0 += ${bk}u) {`);
  if (transA) stage("A", "a", bk, bm, sA, "k0", "m0", "p.K", "p.M");
  else stage("A", "a", bm, bk, sA, "m0", "k0", "p.M", "p.K");
  if (transB) stage("B", "b", bn, bk, sB, "n0", "k0", "p.N", "p.K");
  else stage("B", "b", bk, bn, sB, "k0", "n0", "p.K", "p.N");
  o(`  workgroupBarrier();`);
  o(`  if (g < ${G}u) {`);
  for (const ks of range(bk / k)) {
    // op(A) rows r0 + i·m, k ks·k: row-major in [BM][BK], column-major in [BK][BM].
    for (const i of range(rm)) {
      const off = transA
        ? `${ks * k * sA}u + r0 + ${i * m}u`
        : `(r0 + ${i * m}u) * ${sA}u + ${ks * k}u`;
      o(`    ${ops.load("left", `a${ks}_${i}`, transA, off, `${sA}u`)}`);
    }
    // op(B) k ks·k, columns c0 + j·n: row-major in [BK][BN], column-major in [BN][BK].
    for (const j of range(rn)) {
      const off = transB
        ? `(c0 + ${j * n}u) * ${sB}u + ${ks * k}u`
        : `${ks * k * sB}u + c0 + ${j * n}u`;
      o(`    ${ops.load("right", `b${ks}_${j}`, transB, off, `${sB}u`)}`);
    }
    for (const i of range(rm)) {
      for (const j of range(rn)) {
        o(`    ${ops.mma(`a${ks}_${i}`, `b${ks}_${j}`, `acc${i}_${j}`)}`);
      }
    }
  }
  o(`  }`);
  o(`  workgroupBarrier();`);
  o(`  }`);

  // Epilogue, one fragment per slot at a time: to Cs, then out with bias and bounds.
  const frag = m * n, each = Math.ceil((G * frag) / threads);
  const cOut = (val: string) => `${v.types.c}(${val})`;
  for (const i of range(rm)) {
    for (const j of range(rn)) {
      o(`  if (g < ${G}u) { ${ops.store(`g * ${frag}u`, `acc${i}_${j}`, `${n}u`)} }`);
      o(`  workgroupBarrier();`);
      for (const q of range(each)) {
        o(`  {`);
        o(`    let e = ${q * threads}u + t;`);
        o(`    let s = e / ${frag}u; let w = e % ${frag}u;`);
        o(`    let row = m0 + (s / ${gx}u) * ${bm / gy}u + ${i * m}u + w / ${n}u;`);
        o(`    let col = n0 + (s % ${gx}u) * ${bn / gx}u + ${j * n}u + w % ${n}u;`);
        o(`    if (s < ${G}u && row < p.M && col < p.N) {`);
        o(`      let ci = p.c_off + row * p.ldc + col;`);
        let val = `Cs[e]`;
        if (v.bias) val += ` + f32(bias[p.bias_off + col])`;
        if (v.accumulate) val = `f32(C[ci]) + ${val}`;
        o(`      C[ci] = ${cOut(val)};`);
        o(`    }`);
        o(`  }`);
      }
      o(`  workgroupBarrier();`);
    }
  }
  o(`}`);
  return out.join("\n") + "\n";
}

/** The plan for a subgroup-matrix kernel (see the module's doc). */
export function sgmPlan(
  t: SgmTile,
  b: BlockProduct,
  o: { subgroupMax: number; emulate?: number },
): KernelPlan {
  const v: SgmVariant = {
    ...t,
    ...variantOf(b),
    vec4: { a: b.aligned.a, b: b.aligned.b },
    subgroupMax: o.subgroupMax,
    emulate: o.emulate,
  };
  return {
    kernel: sgmKernelName(v),
    decl: matmulSgmKernel(v),
    workgroups: [Math.ceil(b.N / t.bn), Math.ceil(b.M / t.bm), 1],
    binding4: b.bias ? "bias" : "none",
  };
}

/**
 * The largest subgroup a tile's workgroup is sized by: an emulated device's, else the
 * adapter's (32, NVIDIA's and Apple's, where it does not say).
 */
export function sgmSubgroupMax(gpu: Gpu, emulated?: { subgroupMax: number }): number {
  return emulated?.subgroupMax ?? (gpu.subgroupMaxSize || 32);
}

/**
 * The fragment shape matmul uses on this device: its first f16 x f16 -> f32 subgroup-matrix
 * configuration (adapters list their preferred first), or undefined without the feature.
 */
export function deviceFragment(gpu: Gpu): SgmFragment | undefined {
  if (!gpu.features.subgroupMatrix) return undefined;
  const c = (gpu.subgroupMatrixConfigs ?? []).find((c) =>
    c.componentType === "f16" && c.resultComponentType === "f32" &&
    [c.M, c.N, c.K].every((x) => x % 4 === 0)
  );
  return c && { m: c.M, n: c.N, k: c.K };
}
