// The adapter's per-invocation loop budget, pinned: llvmpipe silently stops an invocation
// after about 65,535 loop iterations in total. Kernels keep the bound in their headers under
// LOOP_BUDGET and the dispatch builder refuses any dispatch that would not, so no kernel can
// quietly depend on a cap that a future driver may move.
import { equal, ok, throws } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { checkLoopBound, LOOP_BUDGET } from "../src/gpu/kernel.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { matmul, matmulLoops } from "../src/model/ops/matmul.ts";
import { flashChunkRows, flashLoopBound } from "../src/model/ops/attention.ts";
import { attentionForward } from "./reference/attention_gpu.ts";
import { matmulRef } from "./reference/matmul.ts";
import { assertAllClose, gpuTest, randn } from "./_harness.ts";

/** Runs a one-invocation shader and returns the f32 it stores. */
async function runProbe(
  rt: Parameters<Parameters<typeof gpuTest>[1]>[0],
  body: string,
): Promise<number> {
  const code = `@group(0) @binding(0) var<storage, read_write> o: array<f32>;
override N: u32 = 1u;
@compute @workgroup_size(1) fn main() { ${body} }`;
  const pipeline = await rt.pipelines.get({ name: "loop_probe", code }, { N: 100000 });
  const out = rt.arena.alloc("probe", "scratch", 16);
  try {
    const enc = rt.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(
      0,
      rt.device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: { buffer: out } }],
      }),
    );
    pass.dispatchWorkgroups(1);
    pass.end();
    rt.device.queue.submit([enc.finish()]);
    return (await readF32(rt.device, out))[0];
  } finally {
    rt.arena.free(out);
  }
}

gpuTest("the adapter runs a long loop in full, or its cap is at least LOOP_BUDGET", async (rt) => {
  // A loop whose count the compiler cannot know (an override) of 100,000 iterations.
  const n = await runProbe(rt, "var n = 0.0; for (var i = 0u; i < N; i++) { n += 1.0; } o[0] = n;");
  if (n !== 100000) {
    console.warn(`${rt.gpu.name} stops an invocation after ${n} loop iterations`);
    ok(n >= LOOP_BUDGET, `the cap (${n}) is below LOOP_BUDGET (${LOOP_BUDGET}): lower it`);
  }
  // Two loops in a row share the budget: 10 then 300 x 300 = 90,010 iterations.
  const two = await runProbe(
    rt,
    `var n = 0.0; for (var i = 0u; i < 10u; i++) { n += 1.0; }
     for (var i = 0u; i < 300u; i++) { for (var j = 0u; j < N / 333u; j++) { n += 1.0; } }
     o[0] = n;`,
  );
  if (n !== 100000) ok(two < 90010, `consecutive loops got ${two}: the budget is not shared`);
  else equal(two, 90010);
});

for (const [K, splits] of [[50000, 1], [70000, 2]]) {
  gpuTest(`tiled matmul at K = ${K}: its loop bound is what the adapter runs`, async (rt) => {
    // 18 counted iterations per K-tile of 16, so 56,250 at K = 50,000 (one dispatch: right
    // only if the 4-step loops really are unrolled) and a split at 70,000.
    const M = 8, N = 8;
    equal(matmulLoops("tiled", K), Math.ceil(K / 16) * 18);
    const a = randn(M * K, 1), b = randn(K * N, 2);
    const A = rt.arena.allocWith("A", "scratch", a), B = rt.arena.allocWith("B", "scratch", b);
    const C = rt.arena.alloc("C", "scratch", M * N * 4);
    try {
      const d = await matmul(rt, { M, N, K }, {
        a: { buffer: A },
        b: { buffer: B },
        c: { buffer: C },
      }, { impl: "tiled" });
      equal(d.length, splits);
      await runDispatches(rt.device, d);
      assertAllClose(await readF32(rt.device, C), matmulRef(a, b, { M, N, K }), {
        rtol: 1e-4,
        atol: 1e-3,
        label: `tiled K=${K}`,
      });
    } finally {
      for (const x of [A, B, C]) rt.arena.free(x);
    }
  });
}

gpuTest("regblock matmul past the budget splits K and stays exact", async (rt) => {
  const M = 8, N = 8, K = 300000; // 75,003 loop iterations unsplit
  ok(matmulLoops("regblock", K) > LOOP_BUDGET);
  const a = randn(K * M, 3), b = randn(K * N, 4);
  const A = rt.arena.allocWith("A", "scratch", a), B = rt.arena.allocWith("B", "scratch", b);
  const C = rt.arena.alloc("C", "scratch", M * N * 4);
  try {
    // dW's shape: op(A) = Aᵀ with A stored [K, M] (K = tokens).
    const shape = { M, N, K, transA: true };
    const d = await matmul(rt, shape, {
      a: { buffer: A },
      b: { buffer: B },
      c: { buffer: C },
    }, { impl: "regblock" });
    equal(d.length, 2);
    await runDispatches(rt.device, d);
    assertAllClose(await readF32(rt.device, C), matmulRef(a, b, shape), {
      rtol: 1e-4,
      atol: 2e-3,
      label: "regblock K=300000",
    });
  } finally {
    for (const x of [A, B, C]) rt.arena.free(x);
  }
});

gpuTest("a dispatch over the loop budget is refused, naming the kernel and the shape", async (
  rt,
) => {
  const qkv = rt.arena.alloc("qkv", "scratch", 16), out = rt.arena.alloc("out", "scratch", 16);
  try {
    // The plain reference kernel walks all of T per invocation.
    let err: unknown;
    try {
      await attentionForward(rt, { B: 1, T: 1024, C: 768, NH: 12 }, { qkv, out, att: out });
    } catch (e) {
      err = e;
    }
    ok(err instanceof RangeError, String(err));
    ok(
      /Kernel "attention_forward" at T=1024 HS=64: one invocation would run 135232 loop iterations, over the budget of 65535 .*split the work/
        .test(err.message),
      err.message,
    );
  } finally {
    rt.arena.free(qkv);
    rt.arena.free(out);
  }
  throws(
    () => checkLoopBound("k", { bound: LOOP_BUDGET + 1, shape: { T: 9 } }),
    /Kernel "k" at T=9: one invocation would run 65536/,
  );
  checkLoopBound("k", { bound: LOOP_BUDGET, shape: {} });
});

Deno.test("flash attention's split-KV chunks keep every pass within the budget", () => {
  for (const rows of [1, 2, 4] as const) {
    for (const HS of [4, 8, 12, 16, 32, 48, 64, 80, 128]) {
      for (const pass of ["forward", "dq", "dkv"] as const) {
        const kc = flashChunkRows(pass, HS, rows), tag = `${pass} HS=${HS} rows=${rows}`;
        ok(kc % (64 * rows) === 0 && kc >= 64 * rows, `${tag}: chunk ${kc}`);
        ok(flashLoopBound(pass, HS, kc, rows) <= LOOP_BUDGET, tag);
        ok(flashLoopBound(pass, HS, 2 * kc, rows) > LOOP_BUDGET, `${tag}: chunk not the largest`);
      }
    }
  }
  // GPT-2's HS = 64: chunks of 2048 keys on GPUs (1 row per invocation), 1024 on CPU adapters
  // (4 rows), so T = 4096 runs split on both.
  equal(flashChunkRows("forward", 64, 1), 2048);
  equal(flashChunkRows("dkv", 64, 4), 1024);
});
