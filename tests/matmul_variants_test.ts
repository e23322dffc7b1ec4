// Every GPU matmul tile (src/model/ops/matmul_gpu.ts) and register-blocked tiles by name
// (src/model/ops/matmul_regblock.ts) against the float64 reference: all
// four transposes with bias, accumulate, strides and offsets, both at sizes whose operands
// are 4-aligned (vec4 loads and stores, partial tiles at every edge) and at odd sizes
// (scalar loads); f16 operands; real GPT-2 shapes with sampled rows; the loop bound.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { freeDispatches, runDispatches } from "../src/gpu/dispatch.ts";
import { LOOP_BUDGET } from "../src/gpu/kernel.ts";
import { readValues, type Runtime } from "../src/gpu/runtime.ts";
import { type DType, roundToF16 } from "../src/gpu/dtype.ts";
import {
  matmul,
  type MatmulImpl,
  matmulLoops,
  type MatmulOptions,
  type MatmulShape,
  parseMatmulImpl,
} from "../src/model/ops/matmul.ts";
import { GPU_TILES, matmulGpuWgsl, parseGpuTile } from "../src/model/ops/matmul_gpu.ts";
import {
  matmulRegblockWgsl,
  parseRegblockName,
  regblockDefault,
  regblockName,
} from "../src/model/ops/matmul_regblock.ts";
import { matmulCandidates } from "../src/model/ops/matmul_tune.ts";
import { parseSgmTile } from "../src/model/ops/matmul_sgmat.ts";
import { matmulRef } from "./reference/matmul.ts";
import { assertAllClose, gpuTest, randn, uploadAs } from "./_harness.ts";

/** Presets and two tiles off the list (any valid name runs): one invocation, TM = 16. */
const TILES = [...GPU_TILES, "wg4x4x4_t4x4", "wg32x32x8_t16x4"] as MatmulImpl[];

/**
 * Runs one product and compares it with float64, on all rows or on `rows` of them.
 * Returns the number of dispatches.
 */
async function check(
  rt: Runtime,
  impl: MatmulImpl,
  shape: MatmulShape,
  opts: {
    offsets?: [number, number, number, number];
    types?: [DType, DType, DType];
    rows?: number[];
    seed?: number;
    /** matmul()'s options beyond `impl` (subgroup-matrix emulation). */
    options?: MatmulOptions;
  } = {},
): Promise<number> {
  const { M, N, K, transA = false, transB = false } = shape;
  const lda = shape.lda ?? (transA ? M : K), ldb = shape.ldb ?? (transB ? K : N);
  const ldc = shape.ldc ?? N;
  const [ao, bo, co, biaso] = opts.offsets ?? [0, 0, 0, 0];
  const [at, bt, ct] = opts.types ?? ["f32", "f32", "f32"];
  const seed = opts.seed ?? 1;
  const aLen = ao + (transA ? (K - 1) * lda + M : (M - 1) * lda + K);
  const bLen = bo + (transB ? (N - 1) * ldb + K : (K - 1) * ldb + N);
  const cLen = co + (M - 1) * ldc + N;
  const round = (x: Float32Array<ArrayBuffer>, t: DType) => (t === "f16" ? roundToF16(x) : x);
  const a = round(randn(aLen, seed), at), b = round(randn(bLen, seed + 1), bt);
  const c0 = round(randn(cLen, seed + 2), ct), bias = randn(biaso + N, seed + 3);
  const A = uploadAs(rt, "A", a, at), B = uploadAs(rt, "B", b, bt), C = uploadAs(rt, "C", c0, ct);
  const Bias = uploadAs(rt, "bias", bias);
  try {
    const d = await matmul(rt, shape, {
      a: { buffer: A, offset: ao },
      b: { buffer: B, offset: bo },
      c: { buffer: C, offset: co },
      bias: shape.bias ? { buffer: Bias, offset: biaso } : undefined,
    }, { ...opts.options, impl });
    if (impl !== "auto" && impl !== "regblock") {
      const label = parseRegblockName(impl) ? "matmul_regblock" : `matmul_${impl}`;
      const sm = parseSgmTile(impl);
      ok(
        d.every((x) => sm ? x.pipeline.label.startsWith(`${label}_s`) : x.pipeline.label === label),
        `${impl} ran another kernel`,
      );
    }
    await runDispatches(rt.device, d);
    const rows = opts.rows ?? Array.from({ length: M }, (_, i) => i);
    const all = await readValues(rt.device, C, 0, cLen);
    const got: number[] = [], want: number[] = [];
    for (const m of rows) {
      got.push(...all.subarray(co + m * ldc, co + m * ldc + N));
      // The reference for row m alone: A's row m (or column m) as a 1-row product.
      const aRow = transA
        ? a.subarray(ao + m, ao + m + (K - 1) * lda + 1)
        : a.subarray(ao + m * lda, ao + m * lda + K);
      const c = Float64Array.from(c0.subarray(co + m * ldc, co + m * ldc + N));
      matmulRef(aRow, b.subarray(bo), { ...shape, M: 1, lda, ldb, ldc: N }, {
        c,
        bias: shape.bias ? bias.subarray(biaso) : undefined,
        accumulate: shape.accumulate,
      });
      want.push(...c);
    }
    // An f16 result is rounded once at the end; long sums carry f32 rounding of ~sqrt(K).
    const tol = ct === "f16" ? 1e-3 : 2e-5 * Math.max(1, Math.sqrt(K / 64));
    assertAllClose(got, want, {
      rtol: tol,
      atol: tol,
      label: `${impl} ${at}/${bt}/${ct} ${JSON.stringify(shape)} offsets ${opts.offsets ?? "0"}`,
    });
    return d.length;
  } finally {
    for (const x of [A, B, C, Bias]) rt.arena.free(x);
  }
}

const TRANSPOSES = [[false, false], [false, true], [true, false], [true, true]] as const;

/**
 * One transpose pair with bias and accumulate, twice: 4-aligned operands (vec4 paths) at
 * 68 x 132 x 92, no dimension a multiple of any tile, with padded strides and offsets; then
 * odd sizes `odd`, strides and offsets (scalar paths). `types`: each run's operand types.
 */
async function stridedCases(
  rt: Runtime,
  impl: MatmulImpl,
  transA: boolean,
  transB: boolean,
  o: { odd: [number, number, number]; types?: [DType, DType, DType][]; options?: MatmulOptions },
): Promise<void> {
  const tr = { transA, transB, bias: true, accumulate: true };
  const [M, N, K] = [68, 132, 92];
  await check(rt, impl, {
    M,
    N,
    K,
    ...tr,
    lda: (transA ? M : K) + 8,
    ldb: (transB ? K : N) + 4,
    ldc: N + 12,
  }, { offsets: [4, 8, 12, 16], types: o.types?.[0], options: o.options });
  const [m, n, k] = o.odd;
  await check(rt, impl, {
    M: m,
    N: n,
    K: k,
    ...tr,
    lda: (transA ? m : k) + 1,
    ldb: (transB ? k : n) + 3,
    ldc: n + 5,
  }, { offsets: [1, 3, 5, 7], seed: 5, types: o.types?.[1], options: o.options });
}

for (const impl of TILES) {
  gpuTest(`matmul ${impl}: every transpose, bias, accumulate, offsets, odd sizes`, async (rt) => {
    for (const [transA, transB] of TRANSPOSES) {
      await stridedCases(rt, impl, transA, transB, { odd: [67, 129, 93] });
    }
    // Plain C = A·B, without bias or accumulate.
    await check(rt, impl, { M: 67, N: 129, K: 93 }, { seed: 9 });
    await check(rt, impl, { M: 36, N: 44, K: 52, transB: true }, { seed: 11 });
  });
}

for (const impl of ["wg64x64x16_t4x4", "wg128x128x8_t8x8"] as const) {
  gpuTest({ name: `matmul ${impl} with f16 operands`, needs: "shader-f16" }, async (rt) => {
    // Mixed precision's cases: f16 x f16 -> f16 + bias (forward), f32 x f16 -> f32 (dinp),
    // f16 x f32 -> f32 accumulate (dweight); vec4<f16> loads where aligned, scalar where odd.
    for (const [transA, transB] of TRANSPOSES) {
      const s = { M: 36, N: 44, K: 52, transA, transB };
      const odd = { M: 37, N: 45, K: 51, transA, transB };
      await check(rt, impl, { ...s, bias: true }, { types: ["f16", "f16", "f16"] });
      await check(rt, impl, odd, { types: ["f32", "f16", "f32"], offsets: [3, 0, 3, 0] });
      await check(rt, impl, { ...s, accumulate: true }, {
        types: ["f16", "f32", "f32"],
        offsets: [4, 8, 12, 0],
      });
    }
    await check(rt, impl, { M: 37, N: 45, K: 51, bias: true }, { types: ["f16", "f16", "f16"] });
  });
}

const sampled = (M: number) => [0, 1, 63, 64, 127, 128, 500, M - 129, M - 2, M - 1];

gpuTest("GPU matmul tiles at GPT-2's shapes (sampled rows)", async (rt) => {
  // qkv forward (1024 x 2304 x 768 + bias) and its dweight (768 x 2304 x 1024, A stored
  // [K, M]), for the smallest and the largest register tile.
  for (const impl of ["wg64x64x16_t4x4", "wg128x128x8_t8x8"] as const) {
    await check(rt, impl, { M: 1024, N: 2304, K: 768, bias: true }, { rows: sampled(1024) });
    await check(rt, impl, { M: 768, N: 2304, K: 1024, transA: true, accumulate: true }, {
      rows: sampled(768),
    });
  }
  // The lm-head: 128 rows x 50304 x 768 with W [Vp, C]; W is 154 MB, over llvmpipe's
  // 128 MiB binding, so this also splits N.
  const n = await check(rt, "wg128x64x16_t8x4", { M: 128, N: 50304, K: 768, transB: true }, {
    rows: [0, 77, 127],
  });
  ok(n >= 2, `expected the lm-head to split, got ${n} dispatch(es)`);
});

gpuTest("a GPU tile's loop bound is what the adapter runs; past it K splits", async (rt) => {
  // ceil(K / BK) + 1 = 65,531 in one dispatch: right only if the unrolled code counts no
  // other loop (llvmpipe would stop the invocation at ~65,535 otherwise).
  const t = "wg128x128x8_t8x8", K = 8 * 65530;
  equal(matmulLoops(t, K), 65531);
  equal(await check(rt, t, { M: 4, N: 4, K, transA: true }), 1);
  ok(matmulLoops("wg4x4x4_t4x4", 4 * 70000) > LOOP_BUDGET);
  equal(await check(rt, "wg4x4x4_t4x4", { M: 4, N: 4, K: 4 * 70000, transA: true }), 2);
});

Deno.test("GPU tile names: parsed, validated, and the generator's header says its bound", () => {
  for (const t of GPU_TILES) equal(parseMatmulImpl(t), t);
  equal(parseMatmulImpl("auto"), "auto");
  throws(() => parseMatmulImpl("fast"), /Unknown matmul kernel "fast".*auto, regblock, tiled/);
  throws(() => parseMatmulImpl("wg64x64x16_t6x4"), /multiple of 4/);
  throws(() => parseMatmulImpl("wg64x64x16_t32x4"), /at most 16/);
  const code = matmulGpuWgsl({
    ...parseGpuTile("wg128x128x8_t8x8")!,
    transA: false,
    transB: true,
    bias: false,
    accumulate: false,
    types: { a: "f16", b: "f16", c: "f32", bias: "f32" },
    vec4: { a: true, b: true, c: true, bias: false },
  });
  ok(code.startsWith("enable f16;"));
  ok(code.includes("loop bound ceil(K/8) + 1"));
  ok(code.includes("array<vec4<f16>>"));
  equal(code.match(/\bfor \(/g)?.length, 1, "one loop: the k0 loop");
});

// Register-blocked tiles (src/model/ops/matmul_regblock.ts) by name: lanes per workgroup
// from 4 to 32, rows and columns per lane off the defaults; vec4 operands only.
// (Small tiles: Mesa 25's lavapipe takes a minute to compile a 32 x 32 one cold.)
const RB_TILES = ["rb4_t4x4", "rb32_t4x8", "rb8_t12x4", "rb16_t8x8"] as const;

for (const impl of RB_TILES) {
  gpuTest(`matmul ${impl}: every transpose, bias, accumulate, offsets, edges`, async (rt) => {
    const t = parseRegblockName(impl)!;
    for (const [transA, transB] of TRANSPOSES) {
      // No dimension a multiple of the tile; K = 45 leaves TN a remainder of 1 to 3.
      const [M, N, K] = [300, 132, transA && !transB ? 45 : 92];
      const bufs = [M * K, K * N, M * N].map((n) => rt.arena.alloc("X", "scratch", n * 4));
      const d = await matmul(rt, { M, N, K, transA, transB }, {
        a: { buffer: bufs[0] },
        b: { buffer: bufs[1] },
        c: { buffer: bufs[2] },
      }, { impl });
      equal(d[0].workgroups[0], Math.ceil(M / (t.lanes * t.tm)), `${impl} rows per workgroup`);
      equal(d[0].workgroups[1], Math.ceil(N / (4 * t.tn4)), `${impl} columns per workgroup`);
      freeDispatches(rt.arena, d);
      for (const b of bufs) rt.arena.free(b);
      await check(rt, impl, { M, N, K, transA, transB }, { seed: 3 });
      await check(rt, impl, {
        M: 68,
        N: 44,
        K: transA && !transB ? 29 : 28,
        transA,
        transB,
        bias: true,
        accumulate: true,
        lda: (transA ? 68 : 28) + 8,
        ldb: (transB ? 28 : 44) + 4,
        ldc: 44 + 12,
      }, { offsets: [4, 8, 12, 16] });
    }
  });
}

gpuTest("register-blocked tiles at GPT-2's shapes (sampled rows)", async (rt) => {
  // The MLP's fc forward (1024 x 3072 x 768 + bias), its dweight (768 x 3072 x 1024, A
  // stored [K, M]) and its dinp (1024 x 768 x 3072, W as stored [N, K]), over 16 lanes.
  const impl = "rb16_t8x16";
  await check(rt, impl, { M: 1024, N: 3072, K: 768, bias: true }, { rows: sampled(1024) });
  await check(rt, impl, { M: 768, N: 3072, K: 1024, transA: true, accumulate: true }, {
    rows: sampled(768),
  });
  await check(rt, impl, { M: 1024, N: 768, K: 3072, transB: true }, { rows: sampled(1024) });
});

Deno.test("register-blocked tiles: names, limits, the default by size, the CPU candidates", () => {
  equal(parseMatmulImpl("rb16_t8x16"), "rb16_t8x16");
  deepEqual(parseRegblockName("rb16_t8x16"), { lanes: 16, tm: 8, tn4: 4 });
  equal(regblockName({ lanes: 8, tm: 32, tn4: 8 }), "rb8_t32x32");
  throws(() => parseMatmulImpl("rb12_t8x16"), /lanes must be 4, 8, 16 or 32, got 12/);
  throws(() => parseMatmulImpl("rb8_t6x16"), /multiple of 4 from 4 to 32, got 6/);
  throws(() => parseMatmulImpl("rb8_t32x64"), /columns per lane must be 4 to 32/);
  throws(() => parseMatmulImpl("rb8_t8x18"), /Unknown matmul kernel "rb8_t8x18"/);
  // Big tiles only where the work repays their compile; lanes over columns under 8 rows.
  const tile = (M: number, N: number, K: number, transA = false) => {
    const d = regblockDefault({ M, N, K, transA });
    return d.cols ? `cols t${d.tm}x${4 * d.tn4}` : regblockName(d);
  };
  equal(tile(1024, 3072, 768), "rb8_t32x32");
  equal(tile(256, 3072, 768), "rb8_t32x32");
  equal(tile(256, 2304, 768), "rb8_t32x32");
  equal(tile(256, 768, 768), "rb8_t32x32");
  equal(tile(256, 256, 256), "rb8_t8x16");
  equal(tile(256, 50304, 128), "rb8_t16x32");
  equal(tile(50304, 128, 256, true), "rb8_t16x32");
  equal(tile(50304, 32, 128, true), "rb8_t8x16");
  equal(tile(128, 50304, 32), "rb8_t8x16");
  equal(tile(32, 50304, 768), "rb8_t4x32");
  equal(tile(1, 50304, 768), "cols t1x8");
  equal(tile(1, 768, 768, true), "rb8_t4x32");
  // The loop bound is regblock's for every tile.
  equal(matmulLoops("rb32_t4x8", 1000), matmulLoops("regblock", 1000));
  // Without a remainder, TN's loop is written once.
  const wgsl = (kTail: boolean) =>
    matmulRegblockWgsl({
      transA: true,
      transB: false,
      bias: false,
      accumulate: true,
      tm: 8,
      tn4: 4,
      kTail,
    });
  equal(wgsl(true).match(/\bfor \(/g)?.length, 2);
  equal(wgsl(false).match(/\bfor \(/g)?.length, 1);
});

gpuTest("the tuner's candidates on this adapter", (rt) => {
  const big = { M: 1024, N: 3072, K: 768, transA: false };
  const got = matmulCandidates(rt, true, big);
  if (rt.gpu.isCpu) {
    deepEqual(got, ["regblock", "rb16_t16x32", "rb8_t16x32"]);
    deepEqual(matmulCandidates(rt, true, { ...big, M: 128, K: 6144 }), [
      "regblock",
      "rb16_t8x32",
      "rb8_t8x32",
    ]);
    deepEqual(matmulCandidates(rt, false, big), ["tiled", "wg128x128x8_t8x8"]);
    deepEqual(matmulCandidates(rt, true, { ...big, M: 1 }), ["regblock"]);
  } else {
    equal(got[0], "tiled");
    ok(got.length > 1 && got.slice(1).every((t) => t.startsWith("wg")));
  }
  return Promise.resolve();
});

// ---------------------------------------------------------------------------
// Subgroup-matrix (tensor core) tiles, emulated: the generator's tile logic (staging, the
// fragments' offsets, strides and majorness, the slots, the epilogue) runs as plain WGSL
// with the extension's meaning (src/model/ops/matmul_sgmat.ts); the native code is compiled
// by Dawn in tests/matmul_sgmat_test.ts.

/**
 * Tiles, the emulated device (largest subgroup, the subgroups' real width) and the
 * transposes tried (each pair compiles two variants: ~4 s each on a cold Mesa 25 cache).
 */
const SGM_CASES: [
  MatmulImpl,
  { subgroupMax: number; subgroupSize?: number },
  readonly (readonly [boolean, boolean])[],
][] = [
  ["sm32x32x16_g2x2_f8x8x8", { subgroupMax: 8 }, TRANSPOSES],
  // Subgroups half the largest size: twice as many as slots, the extra ones idle.
  ["sm64x32x16_g2x1_f8x8x8", { subgroupMax: 16, subgroupSize: 8 }, [[false, true], [true, false]]],
  // A fragment whose three sides differ (8 rows, 4 columns, 12 deep): roles cannot swap.
  ["sm32x16x24_g2x2_f8x4x12", { subgroupMax: 4 }, [[false, false], [true, true]]],
];

for (const [impl, emulate, transposes] of SGM_CASES) {
  gpuTest({
    name: `matmul ${impl} (emulated, subgroups ${JSON.stringify(emulate)}): every transpose, ` +
      "bias, accumulate, offsets, odd sizes",
    needs: "shader-f16",
  }, async (rt) => {
    const options = { emulateSubgroupMatrix: emulate };
    for (const [transA, transB] of transposes) {
      // vec4 staging with f32 C; scalar staging with f16 C.
      await stridedCases(rt, impl, transA, transB, {
        odd: [67, 45, 37],
        types: [["f16", "f16", "f32"], ["f16", "f16", "f16"]],
        options,
      });
    }
    // Plain C = A·B.
    await check(rt, impl, { M: 33, N: 17, K: 9 }, {
      seed: 9,
      types: ["f16", "f16", "f32"],
      options,
    });
  });
}

gpuTest({
  name: "a subgroup-matrix tile (emulated) at GPT-2's shapes (sampled rows)",
  needs: "shader-f16",
}, async (rt) => {
  // The qkv forward with W as stored [N, K], 64 of its rows (emulation repeats every
  // fragment's work in each of a subgroup's invocations: subgroups of 4 keep that small).
  // C is f32: the emulated fragment loops count against the loop budget, so K splits in
  // several dispatches, and an f16 C would be rounded between them.
  const options = { emulateSubgroupMatrix: { subgroupMax: 4 } };
  const n = await check(rt, "sm32x32x16_g2x2_f8x8x8", {
    M: 64,
    N: 2304,
    K: 768,
    transB: true,
    bias: true,
  }, { rows: [0, 1, 31, 32, 45, 62, 63], types: ["f16", "f16", "f32"], options });
  ok(n > 1, `expected K to split under the emulated loop budget, got ${n} dispatch(es)`);
});
