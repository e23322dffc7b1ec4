// Subgroup-matrix (tensor core) matmul tiles (src/model/ops/matmul_sgmat.ts) where no
// machine here has the hardware: every variant's native WGSL is compiled and its pipeline
// validated by Dawn's own compiler (its null backend offers the extension); names, limits
// and the candidates a device with subgroup matrices gets; clear errors where they cannot
// run; and the autotuner's check (src/model/ops/matmul_check.ts) passing the emulated tiles
// and catching a wrong one. The emulated tiles' numbers against float64 are in
// tests/matmul_variants_test.ts.
import { deepEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import { dawnValidator, withDirectives } from "../src/gpu/backend.ts";
import type { Gpu, GpuLimits } from "../src/gpu/device.ts";
import type { DType } from "../src/gpu/dtype.ts";
import type { Runtime } from "../src/gpu/runtime.ts";
import { matmul, parseMatmulImpl } from "../src/model/ops/matmul.ts";
import {
  deviceFragment,
  matmulSgmWgsl,
  parseSgmTile,
  sgmLoops,
  sgmTileName,
  sgmTileProblem,
  sgmTiles,
} from "../src/model/ops/matmul_sgmat.ts";
import {
  type BuildWith,
  matmulCandidates,
  type TuneProduct,
} from "../src/model/ops/matmul_tune.ts";
import { matmulCheck } from "../src/model/ops/matmul_check.ts";
import { aligned } from "../src/model/ops/matmul_block.ts";
import { freeDispatches } from "../src/gpu/dispatch.ts";
import { readValues } from "../src/gpu/runtime.ts";
import { resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { mulberry32 } from "../src/model/init.ts";
import { resolveTrainConfig } from "../src/train/resolve.ts";
import { gpuTest } from "./_harness.ts";

const validatorMissing: string | undefined = await dawnValidator()
  .then(() => undefined)
  .catch((e) => `Dawn's null backend cannot load: ${(e as Error).message}`);
if (validatorMissing) console.warn(`ignoring the native compile test: ${validatorMissing}`);

/** An H100's limits as Dawn reports them (what the tiles are sized against). */
const GPU_LIMITS: GpuLimits = {
  maxStorageBufferBindingSize: 2 ** 31,
  maxBufferSize: 2 ** 31,
  maxStorageBuffersPerShaderStage: 10,
  maxComputeWorkgroupStorageSize: 32768,
  maxComputeInvocationsPerWorkgroup: 1024,
  maxComputeWorkgroupSizeX: 1024,
  maxComputeWorkgroupSizeY: 1024,
  maxComputeWorkgroupSizeZ: 64,
  maxComputeWorkgroupsPerDimension: 65535,
  minStorageBufferOffsetAlignment: 256,
  minUniformBufferOffsetAlignment: 256,
};

Deno.test({
  name: "every subgroup-matrix variant compiles and validates on Dawn (null backend)",
  ignore: !!validatorMissing,
}, async () => {
  const { device, subgroupMaxSize } = await dawnValidator();
  const limits = device.limits as unknown as GpuLimits;
  let compiled = 0, validated = 0;
  for (const frag of [{ m: 16, n: 16, k: 16 }, { m: 8, n: 8, k: 8 }]) {
    // Every tile a GPU gets, at subgroups of 32 (NVIDIA, Apple) and of 128 (the null
    // device's largest, which its pipelines require workgroups to be a multiple of).
    for (const name of sgmTiles(frag, GPU_LIMITS, 32)) {
      for (const subgroupMax of [32, subgroupMaxSize]) await compileAll(name, subgroupMax, false);
    }
  }
  // Pipelines on the null device, whose 256 invocations hold 2 slots of 128: the same
  // generator's code with 1 x 2 and 2 x 1 slots.
  for (
    const name of [
      "sm64x32x32_g2x1_f16x16x16",
      "sm32x64x32_g1x2_f16x16x16",
      "sm32x32x16_g2x1_f8x8x8",
    ]
  ) {
    equal(sgmTileProblem(parseSgmTile(name)!, limits, subgroupMaxSize), undefined, name);
    await compileAll(name, subgroupMaxSize, true);
  }
  equal(compiled, 128 + 24, "4 tiles x 2 fragments x 2 subgroup sizes x 8 kinds, and 3 x 8");
  equal(validated, 24);

  async function compileAll(name: string, subgroupMax: number, pipeline: boolean) {
    for (const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]]) {
      for (
        const [c, bias, accumulate, vec4] of [
          ["f16", true, false, true],
          ["f32", false, true, false],
        ] as [DType, boolean, boolean, boolean][]
      ) {
        const code = matmulSgmWgsl({
          ...parseSgmTile(name)!,
          transA,
          transB,
          bias,
          accumulate,
          types: { a: "f16", b: "f16", c, bias: c },
          vec4: { a: vec4, b: vec4 },
          subgroupMax,
        });
        const label = `${name} s${subgroupMax} transA=${transA} transB=${transB} c=${c}`;
        const module = device.createShaderModule({ code: withDirectives(code, "dawn").code });
        const info = await module.getCompilationInfo();
        const errors = info.messages.filter((m) => m.type !== "info");
        deepEqual(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`), [], label);
        compiled++;
        if (!pipeline) continue;
        device.pushErrorScope("validation");
        device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
        equal((await device.popErrorScope())?.message, undefined, label);
        validated++;
      }
    }
  }
});

Deno.test({
  name: "Dawn's compiler rejects a wrong subgroup-matrix kernel (the test above can fail)",
  ignore: !!validatorMissing,
}, async () => {
  const { device, subgroupMaxSize } = await dawnValidator();
  const code = matmulSgmWgsl({
    ...parseSgmTile("sm64x64x32_g2x2_f16x16x16")!,
    transA: false,
    transB: false,
    bias: false,
    accumulate: false,
    types: { a: "f16", b: "f16", c: "f32", bias: "f32" },
    vec4: { a: true, b: true },
    subgroupMax: subgroupMaxSize,
  });
  // A left fragment fed where the right one goes, and a workgroup not a multiple of the
  // largest subgroup: one fails compiling, the other the pipeline's validation.
  const swapped = code.replace(
    /subgroupMatrixMultiplyAccumulate\((\w+), (\w+),/,
    "subgroupMatrixMultiplyAccumulate($2, $1,",
  );
  ok(swapped !== code);
  device.pushErrorScope("validation"); // captured: Dawn would print it otherwise
  const info = await device.createShaderModule({ code: withDirectives(swapped, "dawn").code })
    .getCompilationInfo();
  match(
    (await device.popErrorScope())?.message ?? "",
    /no matching call to 'subgroupMatrixMultiplyAccumulate/,
  );
  ok(info.messages.some((m) => m.type === "error"), "swapped operands compile");
  const narrow = code.replace(/@workgroup_size\(\d+, 1, 1\)/, "@workgroup_size(32, 1, 1)");
  const module = device.createShaderModule({ code: withDirectives(narrow, "dawn").code });
  device.pushErrorScope("validation");
  device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  match((await device.popErrorScope())?.message ?? "", /multiple of .*maxSubgroupSize/);
});

Deno.test("subgroup-matrix tile names, limits and the tiles tried per fragment shape", () => {
  equal(parseMatmulImpl("sm64x64x32_g2x2_f16x16x16"), "sm64x64x32_g2x2_f16x16x16");
  deepEqual(parseSgmTile("sm128x64x32_g2x2_f16x16x16"), {
    bm: 128,
    bn: 64,
    bk: 32,
    gy: 2,
    gx: 2,
    m: 16,
    n: 16,
    k: 16,
  });
  throws(() => parseMatmulImpl("sm64x64x32_g3x2_f16x16x16"), /BM must be a multiple of GY x m/);
  throws(() => parseMatmulImpl("sm64x64x24_g2x2_f16x16x16"), /BK must be a multiple of k/);
  throws(() => parseMatmulImpl("sm256x256x32_g1x1_f16x16x16"), /at most 16 result fragments/);
  throws(
    () => parseMatmulImpl("sm64x64x32_g2x2"),
    /Unknown matmul kernel.*smBMxBNxBK_gGYxGX_fMxNxK/,
  );
  // NVIDIA (16x16x16, subgroups of 32): 128 or 256 invocations, 12 to 26 KiB of workgroup memory.
  deepEqual(sgmTiles({ m: 16, n: 16, k: 16 }, GPU_LIMITS, 32), [
    "sm64x64x32_g2x2_f16x16x16",
    "sm128x64x32_g2x2_f16x16x16",
    "sm128x128x32_g2x2_f16x16x16",
    "sm128x128x32_g4x2_f16x16x16",
  ]);
  // Apple (8x8x8): the same blocks in its fragments.
  equal(sgmTiles({ m: 8, n: 8, k: 8 }, GPU_LIMITS, 32)[0], "sm32x32x16_g2x2_f8x8x8");
  // WebGPU's default 16 KiB of workgroup memory leaves 64x64 (13.5 KiB) alone.
  const small = { ...GPU_LIMITS, maxComputeWorkgroupStorageSize: 16384 };
  deepEqual(sgmTiles({ m: 16, n: 16, k: 16 }, small, 32), ["sm64x64x32_g2x2_f16x16x16"]);
  // Subgroups of 64 (AMD) double the workgroup: 8 slots x 64 = 512 invocations.
  match(
    sgmTileProblem(parseSgmTile("sm128x128x32_g4x2_f16x16x16")!, {
      ...GPU_LIMITS,
      maxComputeInvocationsPerWorkgroup: 256,
    }, 64) ?? "",
    /512 invocations per workgroup is over the device's limit/,
  );
  // The K loop, and emulated the fragment loops too.
  const t = parseSgmTile("sm64x64x32_g2x2_f16x16x16")!;
  equal(sgmLoops(t, 1000), Math.ceil(1000 / 32) + 1);
  ok(sgmLoops(t, 1000, true) > 100 * sgmLoops(t, 1000));
  equal(sgmTileName(t), "sm64x64x32_g2x2_f16x16x16");
  // The generated kernel states its bound.
  const code = matmulSgmWgsl({
    ...t,
    transA: false,
    transB: true,
    bias: false,
    accumulate: false,
    types: { a: "f16", b: "f16", c: "f32", bias: "f32" },
    vec4: { a: true, b: true },
    subgroupMax: 32,
  });
  ok(code.includes("loop bound ceil(K/32) + 1)"), "the bound in the header");
  equal(code.match(/\bfor \(/g)?.length, 1, "one loop: the k0 loop");
});

/** `rt` seen as a GPU whose adapter has subgroup matrices of `configs` (nothing else changes). */
function withSubgroupMatrices(rt: Runtime, configs: Gpu["subgroupMatrixConfigs"]): Runtime {
  const gpu: Gpu = {
    ...rt.gpu,
    isCpu: false,
    features: { ...rt.gpu.features, subgroupMatrix: true },
    subgroupMaxSize: 32,
    subgroupMatrixConfigs: configs,
    limits: GPU_LIMITS,
  };
  return { ...rt, gpu } as Runtime;
}

gpuTest(
  "a device with subgroup matrices gets their tiles as candidates for f16 products",
  (rt) => {
    const f16 = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 };
    const s = { M: 4096, N: 3072, K: 768, transA: false };
    const gpu = withSubgroupMatrices(rt, [
      { componentType: "i8", resultComponentType: "i32", M: 16, N: 16, K: 32 },
      f16,
    ]);
    deepEqual(deviceFragment(gpu.gpu), { m: 16, n: 16, k: 16 });
    const half = matmulCandidates(gpu, true, s, { a: "f16", b: "f16" });
    equal(half[0], "tiled", "the incumbent stays the plain tiled kernel");
    deepEqual(
      half.filter((c) => c.startsWith("sm")),
      sgmTiles({ m: 16, n: 16, k: 16 }, GPU_LIMITS),
    );
    ok(half.some((c) => c.startsWith("wg")), "the SIMT tiles stay candidates");
    const mixed = matmulCandidates(gpu, true, s, { a: "f32", b: "f16" });
    ok(!mixed.some((c) => c.startsWith("sm")), "f32 operands never go to f16 tensor cores");
    // No f16 -> f32 shape, or no feature: no tiles.
    equal(
      deviceFragment(withSubgroupMatrices(rt, [{ ...f16, resultComponentType: "f16" }]).gpu),
      undefined,
    );
    equal(deviceFragment(rt.gpu), undefined);
    ok(!matmulCandidates(rt, true, s, { a: "f16", b: "f16" }).some((c) => c.startsWith("sm")));
    return Promise.resolve();
  },
);

gpuTest({
  name: "a subgroup-matrix tile where it cannot run is a clear error",
  needs: "shader-f16",
}, async (rt) => {
  const mk = () => rt.arena.alloc("X", "scratch", 64 * 64 * 2, undefined, "f16");
  const [a, b, c] = [mk(), mk(), mk()];
  try {
    const ops = { a: { buffer: a }, b: { buffer: b }, c: { buffer: c } };
    await rejects(
      matmul(rt, { M: 64, N: 64, K: 64 }, ops, { impl: "sm64x64x32_g2x2_f16x16x16" }),
      /needs subgroup matrices \(tensor cores\), which .* does not offer: use --backend dawn/,
    );
    await rejects(
      matmul(
        withSubgroupMatrices(rt, [{
          componentType: "f16",
          resultComponentType: "f32",
          M: 8,
          N: 8,
          K: 8,
        }]),
        { M: 64, N: 64, K: 64 },
        ops,
        { impl: "sm64x64x32_g2x2_f16x16x16" },
      ),
      /uses 16x16x16 fragments; .* has 8x8x8 \(f16 -> f32\): use _f8x8x8/,
    );
  } finally {
    for (const x of [a, b, c]) rt.arena.free(x);
  }
});

gpuTest("f32 products under a forced subgroup-matrix tile tune; the CLI needs fp16", async (rt) => {
  // Mixed precision's f32 products under a forced tensor-core tile take the tuner's kernel.
  const [a, b, c] = [0, 1, 2].map(() => rt.arena.alloc("X", "scratch", 64 * 64 * 4));
  try {
    const d = await matmul(rt, { M: 64, N: 64, K: 64 }, {
      a: { buffer: a },
      b: { buffer: b },
      c: { buffer: c },
    }, { impl: "sm64x64x32_g2x2_f16x16x16" });
    ok(d.every((x) => !x.pipeline.label.includes("sm")), d.map((x) => x.pipeline.label).join());
    freeDispatches(rt.arena, d);
  } finally {
    for (const x of [a, b, c]) rt.arena.free(x);
  }
  // The CLI refuses it without fp16, before anything is built.
  await rejects(
    resolveTrainConfig({ matmul: "sm64x64x32_g2x2_f16x16x16", precision: "fp32" }),
    /--matmul sm64x64x32_g2x2_f16x16x16 is a tensor-core kernel for f16 products: add --precision fp16/,
  );
});

gpuTest({
  name: "an fp16 model's f16 products through an emulated tensor-core tile: same loss, gradients",
  needs: "shader-f16",
}, async (rt) => {
  // Every f16 x f16 product of a 2-layer fp16 model (the forward's q|k|v, projections and
  // MLP, at their real offsets and strides) through the tile; the rest tuned as usual.
  const cfg = resolveConfig("tiny", { nLayer: 2, nEmbd: 64, nHead: 4, nCtx: 32 });
  const B = 2, T = 32, u = mulberry32(5);
  const tokens = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
  const targets = [...tokens.slice(1), 0];
  const runs: { loss: number; grads: Float32Array }[] = [];
  for (
    const matmul of [{}, {
      impl: "sm32x32x16_g2x2_f8x8x8" as const,
      emulateSubgroupMatrix: { subgroupMax: 8 },
    }]
  ) {
    const model = await GPT2.create(rt, cfg, { B, T, seed: 7, precision: "fp16", matmul });
    try {
      const loss = await model.forwardBackward(tokens, targets);
      const grads = await readValues(rt.device, model.weights.grads, 0, model.layout.totalElements);
      runs.push({ loss, grads });
    } finally {
      model.destroy();
    }
  }
  const [base, sm] = runs;
  // Measured: 1e-6 relative in the loss, 1.2e-4 in the gradients (f16 outputs summed in
  // another order round differently).
  ok(Math.abs(sm.loss - base.loss) <= 1e-4 * Math.abs(base.loss), `${sm.loss} vs ${base.loss}`);
  let num = 0, den = 0;
  for (let i = 0; i < base.grads.length; i++) {
    num += (sm.grads[i] - base.grads[i]) ** 2;
    den += base.grads[i] ** 2;
  }
  const rel = Math.sqrt(num / den);
  console.log(`loss ${base.loss} vs ${sm.loss}; relative gradient error ${rel}`);
  ok(rel < 2e-3, `relative gradient error ${rel}`);
  ok(sm.grads.some((g, i) => g !== base.grads[i]), "the tile changed nothing: did it run?");
});

gpuTest({
  name: "the tuner's check passes the emulated subgroup-matrix tiles and drops a wrong one",
  needs: "shader-f16",
}, async (rt) => {
  // fp16's forward product: f16 x f16 -> f16 + bias, W as stored [N, K].
  const s: TuneProduct = {
    M: 256,
    N: 768,
    K: 768,
    transA: false,
    transB: true,
    lda: 768,
    ldb: 768,
    ldc: 768,
    bias: true,
    accumulate: false,
  };
  const mk = (n: number) => ({ buffer: rt.arena.alloc("X", "scratch", n * 2, undefined, "f16") });
  const ops = { a: mk(256 * 768), b: mk(768 * 768), c: mk(256 * 768), bias: mk(768) };
  const al = aligned(s, ops);
  const emulate = { subgroupMax: 8 };
  const good = "sm32x32x16_g2x2_f8x8x8", wrong = "sm32x64x16_g2x2_f8x8x8";
  // The wrong tile sums one K step short: what a fragment loaded from the wrong place does.
  const build: BuildWith = (k, shape, o) =>
    matmul(rt, k === wrong ? { ...shape, K: shape.K - 16 } : shape, o, {
      impl: k,
      emulateSubgroupMatrix: emulate,
    });
  const check = matmulCheck(rt, s, { ops, aligned: al, build, incumbent: "tiled" });
  try {
    equal(await check.run(good), undefined);
    match((await check.run(wrong)) ?? "", /^differs from the incumbent .*: worst C\[/);
  } finally {
    check.dispose();
    for (const o of Object.values(ops)) rt.arena.free(o.buffer);
  }
});
