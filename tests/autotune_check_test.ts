// The autotuner's check before timing (src/gpu/autotune.ts TuneCheck): with fake timers, a
// fast candidate whose check fails is dropped (never timed, chosen or cached), verdicts are
// remembered per id, a cached choice that fails its check is tuned again, and DEBUG=1 names
// the dropped candidate; on the adapter, matmul's check (src/model/ops/matmul_check.ts)
// passes every real candidate of several kinds, catches a deliberately wrong kernel injected
// through tuneMatmul's `build` (half of K: twice as fast by construction), a wrong incumbent
// and a kernel that writes outside the product; flash attention's rows check passes 1, 2
// and 4 and catches a forward that skips its last key chunk.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { Autotuner, deviceKey, type TuneSpec, withTuner } from "../src/gpu/autotune.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { freeDispatches, runDispatches } from "../src/gpu/dispatch.ts";
import { type DType, dtypeOf } from "../src/gpu/dtype.ts";
import { matmul, type MatmulShape } from "../src/model/ops/matmul.ts";
import {
  type BuildWith,
  matmulCandidates,
  type MatmulKernel,
  matmulTuneKey,
  tuneMatmul,
  type TuneProduct,
} from "../src/model/ops/matmul_tune.ts";
import { checkedKernel, checkProblem, matmulCheck } from "../src/model/ops/matmul_check.ts";
import { aligned } from "../src/model/ops/matmul_block.ts";
import { flashRowsCheck } from "../src/model/ops/attention_check.ts";
import { flashAttentionForward } from "../src/model/ops/attention.ts";
import { matmulRef } from "./reference/matmul.ts";
import { assertAllClose, gpuTest, hasF16, randn } from "./_harness.ts";

/**
 * A spec whose candidates "take" the given ms, with a check that calls `bad` candidates
 * wrong; records what was checked, prepared and run.
 */
function checkedSpec(
  key: string,
  times: Record<string, number>,
  bad: Record<string, string | Error>,
  log: string[],
): TuneSpec<string> {
  return {
    key,
    candidates: Object.keys(times),
    check: {
      id: (c) => `kind ${c}`,
      run(c) {
        log.push(`check ${c}`);
        const b = bad[c];
        return b instanceof Error ? Promise.reject(b) : Promise.resolve(b);
      },
    },
    prepare(c) {
      log.push(`prepare ${c}`);
      return Promise.resolve({
        run: () => Promise.resolve(times[c]),
        dispose: () => {},
      });
    },
  };
}

Deno.test("autotune check: a fast candidate that fails its check is dropped, never timed nor cached", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/autotune.json`, log: string[] = [], debug: string[] = [];
    const t = new Autotuner({ deviceKey: "dev", path, debug: (m) => debug.push(m) });
    const bad = { wrong: "worst C[3, 5] = 2 against 1", broken: new Error("no such tile") };
    const r = await t.choose(
      checkedSpec("k", { inc: 10, wrong: 1, broken: 2, ok: 9.5 }, bad, log),
    );
    equal(r.choice, "inc", "ok is only 5% faster; wrong and broken are out");
    deepEqual(Object.keys(r.ms).sort(), ["inc", "ok"]);
    deepEqual(r.rejected, {
      wrong: "worst C[3, 5] = 2 against 1",
      broken: "it failed to build or run: no such tile",
    });
    ok(!log.includes("prepare wrong") && !log.includes("prepare broken"), log.join(", "));
    ok(typeof r.checkMs === "number" && r.checkMs >= 0);
    match(debug.join("\n"), /autotune k: dropped wrong: worst C\[3, 5\] = 2 against 1/);
    match(debug.join("\n"), /autotune k: dropped broken: it failed to build or run/);
    // Verdicts are per check id, not per key: another shape class checks nothing again.
    const log2: string[] = [];
    const r2 = await t.choose(checkedSpec("k2", { inc: 10, wrong: 1, ok: 2 }, bad, log2));
    deepEqual([r2.choice, log2.filter((l) => l.startsWith("check"))], ["ok", []]);
    // What was cached is a verified winner.
    const doc = JSON.parse(await Deno.readTextFile(path));
    deepEqual([doc.devices.dev.k.choice, doc.devices.dev.k2.choice], ["inc", "ok"]);
    // Every candidate wrong: an error that says why, instead of a choice.
    const none = new Autotuner({ deviceKey: "dev" });
    let err: Error | undefined;
    await none.choose(checkedSpec("n", { x: 1, y: 2 }, { x: "off", y: "off too" }, []))
      .catch((e) => (err = e));
    match(String(err), /Autotune "n": no candidate could run: x: wrong numbers: off; y: wrong/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("autotune check: a cached choice that fails its check is not used, and is replaced", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/autotune.json`;
    // A cache written before the check existed (or by a build whose kernel was right).
    const old = new Autotuner({ deviceKey: "dev", path });
    equal((await old.choose(checkedSpec("k", { inc: 10, fast: 1 }, {}, []))).choice, "fast");
    const log: string[] = [], debug: string[] = [];
    const t = new Autotuner({ deviceKey: "dev", path, debug: (m) => debug.push(m) });
    const r = await t.choose(checkedSpec("k", { inc: 10, fast: 1 }, { fast: "wrong" }, log));
    deepEqual([r.choice, r.source, r.rejected], ["inc", "timed", { fast: "wrong" }]);
    deepEqual(log.filter((l) => l.startsWith("check")), ["check fast", "check inc"]);
    match(debug.join("\n"), /cached fast fails its check, tuning again/);
    equal(JSON.parse(await Deno.readTextFile(path)).devices.dev.k.choice, "inc");
    // A cached choice that passes is used, after its check.
    const log2: string[] = [];
    const again = new Autotuner({ deviceKey: "dev", path });
    const r2 = await again.choose(checkedSpec("k", { inc: 10, fast: 1 }, {}, log2));
    deepEqual([r2.choice, r2.source, log2], ["inc", "cache", ["check inc"]]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("autotune check: DEBUG=1 names the dropped candidate and what its check found", async () => {
  const url = new URL("../src/gpu/autotune.ts", import.meta.url).href;
  const code = `
    import { Autotuner } from "${url}";
    const t = new Autotuner({ deviceKey: "dev" });
    const r = await t.choose({
      key: "matmul NN f32",
      candidates: ["inc", "wrong"],
      check: { id: (c) => c, run: (c) => Promise.resolve(c === "wrong" ? "worst C[0, 1] = 3" : undefined) },
      prepare: (c) => Promise.resolve({ run: () => Promise.resolve(c === "wrong" ? 1 : 10), dispose() {} }),
    });
    console.log(r.choice);`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", code],
    env: { DEBUG: "1", NO_COLOR: "1", WEBGPU_GPT2_TUNE_CACHE: "none" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  equal(out.code, 0, stderr);
  equal(new TextDecoder().decode(out.stdout).trim(), "inc");
  match(stderr, /\[debug1\] autotune matmul NN f32: dropped wrong: worst C\[0, 1\] = 3/);
});

// ---------------------------------------------------------------------------
// Matmul's check on the adapter.

/** Buffers for a product of shape `s` with element types `t`, as matmul() would get them. */
function productBuffers(
  rt: Parameters<Parameters<typeof gpuTest>[1]>[0],
  s: TuneProduct,
  t: DType = "f32",
) {
  const rows = (tr: boolean, a: number, b: number) => (tr ? a : b);
  const aLen = (rows(s.transA, s.K, s.M) - 1) * s.lda + rows(s.transA, s.M, s.K);
  const bLen = (rows(s.transB, s.N, s.K) - 1) * s.ldb + rows(s.transB, s.K, s.N);
  const eb = t === "f16" ? 2 : 4;
  const mk = (l: string, n: number) => rt.arena.alloc(l, "scratch", n * eb, undefined, t);
  return {
    a: { buffer: mk("A", aLen) },
    b: { buffer: mk("B", bLen) },
    c: { buffer: mk("C", (s.M - 1) * s.ldc + s.N) },
    bias: s.bias ? { buffer: mk("bias", s.N) } : undefined,
  };
}

function product(shape: MatmulShape): TuneProduct {
  const transA = shape.transA ?? false, transB = shape.transB ?? false;
  return {
    M: shape.M,
    N: shape.N,
    K: shape.K,
    transA,
    transB,
    lda: shape.lda ?? (transA ? shape.M : shape.K),
    ldb: shape.ldb ?? (transB ? shape.K : shape.N),
    ldc: shape.ldc ?? shape.N,
    bias: shape.bias ?? false,
    accumulate: shape.accumulate ?? false,
  };
}

const alignedOf = (s: TuneProduct, ops: ReturnType<typeof productBuffers>) =>
  aligned(s, ops as Parameters<typeof aligned>[1]);

gpuTest("matmul check: every candidate of several kinds passes", async (rt) => {
  const kinds: [string, MatmulShape, DType][] = [
    ["NN bias, vec4", { M: 100, N: 768, K: 768, bias: true }, "f32"],
    [
      "TN accumulate, unaligned",
      { M: 99, N: 771, K: 769, transA: true, accumulate: true },
      "f32",
    ],
    ["TN, K tail, vec4", { M: 100, N: 768, K: 770, transA: true }, "f32"],
  ];
  if (hasF16) {
    kinds.push(["NT bias f16", { M: 100, N: 768, K: 768, transB: true, bias: true }, "f16"]);
  }
  const build: BuildWith = (k, shape, ops) => matmul(rt, shape, ops, { impl: k });
  for (const [label, shape, t] of kinds) {
    const s = product(shape), ops = productBuffers(rt, s, t), al = alignedOf(s, ops);
    const candidates = matmulCandidates(rt, Object.values(al).every(Boolean), s);
    const check = matmulCheck(rt, s, { ops, aligned: al, build, incumbent: candidates[0] });
    try {
      for (const c of candidates) equal(await check.run(c), undefined, `${label}: ${c}`);
      // The small problem keeps the product's vec4 reads, hence the same kernel code.
      const p = checkProblem(s, al);
      const pAl = aligned(p.shape, {
        a: { buffer: ops.a.buffer, offset: p.off.a },
        b: { buffer: ops.b.buffer, offset: p.off.b },
        c: { buffer: ops.c.buffer, offset: p.off.c },
        bias: ops.bias && { buffer: ops.bias.buffer, offset: p.off.bias },
      });
      deepEqual(pAl, al, label);
      equal(dtypeOf(ops.c.buffer), t);
    } finally {
      check.dispose();
      for (const o of Object.values(ops)) if (o) rt.arena.free(o.buffer);
    }
  }
});

gpuTest(
  "matmul check: a wrong incumbent, and a kernel writing outside C, are caught",
  async (rt) => {
    // 100 rows: small tiles, quick to compile on CPU adapters.
    const s = product({ M: 100, N: 768, K: 768, bias: true });
    const ops = productBuffers(rt, s), al = alignedOf(s, ops);
    const candidates = matmulCandidates(rt, true, s);
    const [inc, other] = candidates;
    // The incumbent adds what C held before (accumulate flipped on): its check is against
    // float64, and the others are then checked against float64 too.
    const build: BuildWith = (k, shape, o) =>
      matmul(rt, k === checkedKernel(inc, s) ? { ...shape, accumulate: true } : shape, o, {
        impl: k,
      });
    const check = matmulCheck(rt, s, { ops, aligned: al, build, incumbent: inc });
    // C's rows 4 elements late: the last 4 of each row land in the row padding.
    const spill: BuildWith = (k, shape, o) => {
      const late = { ...o, c: { ...o.c, offset: (o.c.offset ?? 0) + 4 } };
      return matmul(rt, shape, k === other ? late : o, { impl: k });
    };
    const check2 = matmulCheck(rt, s, { ops, aligned: al, build: spill, incumbent: inc });
    try {
      match(
        (await check.run(inc)) ?? "",
        /^differs from the float64 product on 260x132x84 NN bias f32\.f32\.f32\.f32: worst C\[\d+, \d+\] = .* off by .* of the row's scale .* \(tolerance 0\.0001\)$/,
      );
      equal(await check.run(other), undefined);
      equal(await check2.run(inc), undefined);
      match(
        (await check2.run(other)) ?? "",
        /^differs from the incumbent .*: it wrote outside the product: element \d+ of C's buffer/,
      );
    } finally {
      check.dispose();
      check2.dispose();
      for (const o of Object.values(ops)) if (o) rt.arena.free(o.buffer);
    }
  },
);

gpuTest(
  "matmul auto: a wrong candidate twice as fast is dropped, not chosen, and said so",
  async (rt) => {
    const debug: string[] = [];
    const tuner = new Autotuner({ deviceKey: deviceKey(rt), debug: (m) => debug.push(m) });
    const trt = withTuner(rt, tuner);
    // Over 2^32 FLOPs (timed on CPU adapters too), 128 rows (cheap tiles to compile there).
    const M = 128, N = 8192, K = 2048;
    const s = product({ M, N, K, bias: true });
    const a = randn(M * K, 3), b = randn(K * N, 4), bias = randn(N, 5);
    const A = rt.arena.allocWith("A", "scratch", a), B = rt.arena.allocWith("B", "scratch", b);
    const Bias = rt.arena.allocWith("bias", "scratch", bias);
    const C = rt.arena.alloc("C", "scratch", M * N * 4);
    const ops = { a: { buffer: A }, b: { buffer: B }, c: { buffer: C }, bias: { buffer: Bias } };
    const al = aligned(s, ops);
    const candidates = matmulCandidates(rt, true, s);
    const wrong = candidates[1];
    // The wrong candidate runs the incumbent's kernel on the first half of K only: twice as fast
    // as the incumbent by construction, so on times alone it would win.
    const built: string[] = [];
    const build: BuildWith = (k, shape, o) => {
      built.push(`${k} ${shape.M}x${shape.N}x${shape.K}`);
      if (k !== wrong) return matmul(trt, shape, o, { impl: k });
      const half = Math.ceil(shape.K / 8) * 4;
      return matmul(trt, { ...shape, K: half }, o, { impl: checkedKernel(candidates[0], s) });
    };
    try {
      const r = await tuneMatmul(trt, s, ops, { aligned: al, build });
      ok(r.choice !== wrong, `chose ${r.choice}`);
      equal(r.source, "timed");
      ok(!(wrong in r.ms), "the wrong candidate was timed");
      match(
        r.rejected?.[wrong as MatmulKernel] ?? "",
        /^differs from the incumbent .* on 260x132x84 NN bias f32\.f32\.f32\.f32: worst C\[/,
      );
      // Built for its check (the small problem) and never for timing.
      deepEqual(built.filter((x) => x.startsWith(`${wrong} `)), [`${wrong} 260x132x84`]);
      const line = debug.find((l) => l.includes(`dropped ${wrong}`)) ?? "";
      match(line, /^autotune matmul NN f32\.f32\.f32 vec444 M128 N8192 K2048: dropped (rb|wg)/);
      match(line, /worst C\[\d+, \d+\] = .* against .*, off by .* of the row's scale/);
      const key = matmulTuneKey(s, { a: "f32", b: "f32", c: "f32" }, al);
      equal((await tuner.choices())[key], r.choice);
      // And the choice computes the product.
      const d = await matmul(trt, s, ops, { impl: r.choice });
      await runDispatches(rt.device, d);
      const got = await readF32(rt.device, C, 0, 2 * N);
      const want = matmulRef(a.subarray(0, 2 * K), b, { M: 2, N, K }, { bias });
      const tol = 1e-4 * Math.sqrt(K / 768);
      assertAllClose(got, want, { rtol: tol, atol: tol, label: `tuned (${r.choice})` });
    } finally {
      for (const x of [A, B, Bias, C]) rt.arena.free(x);
    }
  },
);

// ---------------------------------------------------------------------------
// Flash attention's rows candidates.

gpuTest(
  "flash rows check: 1, 2 and 4 rows pass; a forward that skips its last key chunk does not",
  async (rt) => {
    const kinds: { qkv: DType; out: DType }[] = [{ qkv: "f32", out: "f32" }];
    if (hasF16) kinds.push({ qkv: "f16", out: "f16" });
    for (const types of kinds) {
      const check = flashRowsCheck(rt, 64, { types });
      try {
        for (const c of ["1", "2", "4"]) {
          equal(
            await check.run(c),
            undefined,
            `${types.qkv} rows ${c}`,
          );
        }
      } finally {
        check.dispose();
      }
    }
    // The split-KV forward without its last chunk: keys past 64 * rows * (chunks - 1) unseen.
    const skip = flashRowsCheck(rt, 64, {
      types: { qkv: "f32", out: "f32" },
      build: async (s, ops) => {
        const d = await flashAttentionForward(rt, s, ops);
        freeDispatches(rt.arena, d.slice(-1));
        return d.slice(0, -1);
      },
    });
    try {
      match(
        (await skip.run("4")) ?? "",
        /^differs from the float64 attention on B=1 T=300 NH=2 f32\.f32 HS64: worst out\[\d+\] = .* off by .* \(tolerance 0\.0001\)$/,
      );
      deepEqual(skip.id("4"), "flash forward f32.f32 HS64 rows 4");
    } finally {
      skip.dispose();
    }
  },
);
