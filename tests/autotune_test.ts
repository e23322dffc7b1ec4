// The autotuner (src/gpu/autotune.ts) with fake timers: fastest wins, the incumbent keeps
// its place within the margin, failures are skipped, choices persist on disk (atomically,
// per device key), a corrupt cache is ignored with a warning; and matmul's use of it on
// the real adapter (regblock on llvmpipe), with timestamp and wall-clock timing.
import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import {
  Autotuner,
  deviceKey,
  dispatchTimer,
  PACKAGE_VERSION,
  tuneCachePath,
  type TuneSpec,
  withTuner,
} from "../src/gpu/autotune.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { matmul } from "../src/model/ops/matmul.ts";
import { chooseFlashRows, flashAttentionForward, flashRows } from "../src/model/ops/attention.ts";
import { matmulCandidates, matmulTuneKey } from "../src/model/ops/matmul_tune.ts";
import { matmulRef } from "./reference/matmul.ts";
import { assertAllClose, gpuTest, randn } from "./_harness.ts";

/** A spec whose candidates "take" the given ms; records what was prepared and run. */
function fakeSpec(key: string, times: Record<string, number | Error>, log: string[] = []) {
  const spec: TuneSpec<string> = {
    key,
    candidates: Object.keys(times),
    prepare(c) {
      log.push(`prepare ${c}`);
      const t = times[c];
      if (t instanceof Error) return Promise.reject(t);
      return Promise.resolve({
        run: () => {
          log.push(`run ${c}`);
          return Promise.resolve(t);
        },
        dispose: () => log.push(`dispose ${c}`),
      });
    },
  };
  return spec;
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("autotune: the fastest wins, but only by more than the margin over the default", async () => {
  const t = new Autotuner({ deviceKey: "dev" });
  const r = await t.choose(fakeSpec("a", { inc: 10, fast: 5, mid: 7 }));
  equal(r.choice, "fast");
  equal(r.source, "timed");
  deepEqual(r.ms, { inc: 10, fast: 5, mid: 7 });
  match(r.reason, /50% faster than the default inc/);
  const close = await t.choose(fakeSpec("b", { inc: 10, fast: 9.5 }));
  equal(close.choice, "inc");
  match(close.reason, /only 5% faster \(a challenger needs 10%\)/);
  const only = await t.choose(fakeSpec("c", { one: 3 }));
  deepEqual([only.choice, only.source], ["one", "only"]);
});

Deno.test("autotune: failing candidates are skipped, hopeless ones cut short", async () => {
  const log: string[] = [];
  const t = new Autotuner({ deviceKey: "dev" });
  const r = await t.choose(
    fakeSpec("k", { inc: 10, broken: new Error("no shader-f16"), slow: 100 }, log),
  );
  equal(r.choice, "inc");
  deepEqual(Object.keys(r.ms), ["inc", "slow"]);
  // inc: warm-up + 3 runs; slow: its warm-up is over 4x the best, so one more run (the
  // warm-up may have been a compile), which is too, so no more.
  equal(log.filter((l) => l === "run inc").length, 4);
  equal(log.filter((l) => l === "run slow").length, 2);
  ok(log.includes("dispose slow") && !log.includes("dispose broken"));
  await rejects(
    () => t.choose(fakeSpec("none", { x: new Error("nope"), y: new Error("nor this") })),
    /Autotune "none": no candidate could run: x: nope; y: nor this/,
  );
});

Deno.test("autotune: one tuning at a time, and one per key", async () => {
  const t = new Autotuner({ deviceKey: "dev" });
  let active = 0, most = 0, prepared = 0;
  const spec = (key: string): TuneSpec<string> => ({
    key,
    candidates: ["a", "b"],
    prepare() {
      prepared++;
      return Promise.resolve({
        run: async () => {
          active++;
          most = Math.max(most, active);
          await new Promise((r) => setTimeout(r, 1));
          active--;
          return 1;
        },
        dispose: () => {},
      });
    },
  });
  const rs = await Promise.all([t.choose(spec("x")), t.choose(spec("y")), t.choose(spec("x"))]);
  equal(most, 1, "timings of different keys overlapped");
  equal(prepared, 4, "the same key was tuned twice");
  equal(rs[0], rs[2]);
});

Deno.test("autotune: choices persist on disk, per device, written atomically", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/sub/autotune.json`;
    const a = new Autotuner({ deviceKey: "gpu A", path });
    equal((await a.choose(fakeSpec("k", { inc: 10, fast: 2 }))).choice, "fast");
    await a.choose(fakeSpec("k2", { inc: 1, other: 2 }));
    const doc = JSON.parse(await Deno.readTextFile(path));
    equal(doc.format, "webgpu-gpt2-autotune");
    equal(doc.devices["gpu A"].k.choice, "fast");
    deepEqual(doc.devices["gpu A"].k.ms, { inc: 10, fast: 2 });
    deepEqual([...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name), ["autotune.json"]);
    // A new process (a new tuner) reads the choice instead of timing.
    const log: string[] = [];
    const b = new Autotuner({ deviceKey: "gpu A", path });
    const r = await b.choose(fakeSpec("k", { inc: 1, fast: 100 }, log));
    deepEqual([r.choice, r.source, log], ["fast", "cache", []]);
    deepEqual(await b.choices(), { k: "fast", k2: "inc" });
    // Another device tunes for itself; the file keeps both.
    const c = new Autotuner({ deviceKey: "gpu B", path });
    equal((await c.choose(fakeSpec("k", { inc: 1, fast: 100 }))).choice, "inc");
    const both = JSON.parse(await Deno.readTextFile(path));
    deepEqual(Object.keys(both.devices).sort(), ["gpu A", "gpu B"]);
    // A cached choice that is no longer a candidate is tuned again.
    const d = new Autotuner({ deviceKey: "gpu A", path });
    const again = await d.choose(fakeSpec("k", { inc: 5, newer: 1 }));
    deepEqual([again.choice, again.source], ["newer", "timed"]);
  });
});

Deno.test("autotune: a corrupt cache is ignored with a warning and rewritten; unwritable, kept in memory", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/autotune.json`;
    for (const bad of ["{not json", '{"format":"other","version":1,"devices":{}}']) {
      await Deno.writeTextFile(path, bad);
      const warnings: string[] = [];
      const t = new Autotuner({ deviceKey: "dev", path, warn: (m) => warnings.push(m) });
      const r = await t.choose(fakeSpec("k", { inc: 10, fast: 1 }));
      deepEqual([r.choice, r.source], ["fast", "timed"]);
      equal(warnings.length, 1);
      match(warnings[0], /ignoring the autotune cache .*autotune\.json: .*tuning afresh/);
      equal(JSON.parse(await Deno.readTextFile(path)).devices.dev.k.choice, "fast");
    }
    // An unwritable place: a warning, and the choices stay in memory.
    await Deno.writeTextFile(`${dir}/file`, "");
    const warnings: string[] = [];
    const t = new Autotuner({
      deviceKey: "dev",
      path: `${dir}/file/autotune.json`,
      warn: (m) => warnings.push(m),
    });
    equal((await t.choose(fakeSpec("k", { inc: 10, fast: 1 }))).choice, "fast");
    match(warnings.join("\n"), /cannot write the autotune cache .*choices stay in memory/);
    equal(t.path, undefined);
    deepEqual(await t.choices(), { k: "fast" });
  });
});

Deno.test("autotune: the cache path comes from the environment", () => {
  const saved = Deno.env.get("WEBGPU_GPT2_TUNE_CACHE");
  try {
    Deno.env.set("WEBGPU_GPT2_TUNE_CACHE", "/tmp/x/tune.json");
    equal(tuneCachePath(), "/tmp/x/tune.json");
    Deno.env.set("WEBGPU_GPT2_TUNE_CACHE", "none");
    equal(tuneCachePath(), undefined);
    Deno.env.delete("WEBGPU_GPT2_TUNE_CACHE");
    const xdg = Deno.env.get("XDG_CACHE_HOME");
    Deno.env.set("XDG_CACHE_HOME", "/tmp/c");
    equal(tuneCachePath(), "/tmp/c/webgpu-gpt2/autotune.json");
    if (xdg) Deno.env.set("XDG_CACHE_HOME", xdg);
    else Deno.env.delete("XDG_CACHE_HOME");
  } finally {
    if (saved) Deno.env.set("WEBGPU_GPT2_TUNE_CACHE", saved);
    else Deno.env.delete("WEBGPU_GPT2_TUNE_CACHE");
  }
  const version = JSON.parse(Deno.readTextFileSync(new URL("../deno.json", import.meta.url)))
    .version;
  equal(PACKAGE_VERSION, version);
});

gpuTest(
  "dispatch timer: timestamp queries and the wall-clock fallback agree roughly",
  async (rt) => {
    const M = 256, N = 256, K = 256;
    const A = rt.arena.allocWith("A", "scratch", randn(M * K, 1));
    const B = rt.arena.allocWith("B", "scratch", randn(K * N, 2));
    const C = rt.arena.alloc("C", "scratch", M * N * 4);
    try {
      const d = await matmul(rt, { M, N, K }, {
        a: { buffer: A },
        b: { buffer: B },
        c: { buffer: C },
      }, { impl: "regblock" });
      const ts = dispatchTimer(rt, d), wall = dispatchTimer(rt, d, { timestamps: false });
      await ts.run();
      await wall.run();
      const t1 = Math.min(await ts.run(), await ts.run());
      const t2 = Math.min(await wall.run(), await wall.run());
      ts.dispose();
      wall.dispose();
      ok(t1 > 0 && t2 > 0, `times ${t1} and ${t2}`);
      ok(t2 < 20 * t1 + 5, `wall clock ${t2} ms against GPU ${t1} ms`);
    } finally {
      for (const x of [A, B, C]) rt.arena.free(x);
    }
  },
);

gpuTest("matmul auto: the tuner times the candidates once and keeps the choice", async (rt) => {
  await withTemp(async (dir) => {
    const path = `${dir}/autotune.json`;
    const tuner = new Autotuner({ deviceKey: deviceKey(rt), path });
    // Over 2^32 FLOPs (timed on CPU adapters too), 128 rows (cheap tiles to compile there).
    const M = 128, N = 8192, K = 2048;
    const a = randn(M * K, 3), b = randn(K * N, 4), bias = randn(N, 5);
    const A = rt.arena.allocWith("A", "scratch", a), B = rt.arena.allocWith("B", "scratch", b);
    const Bias = rt.arena.allocWith("bias", "scratch", bias);
    const C = rt.arena.alloc("C", "scratch", M * N * 4);
    try {
      const ops = { a: { buffer: A }, b: { buffer: B }, c: { buffer: C }, bias: { buffer: Bias } };
      const shape = { M, N, K, bias: true };
      const d = await matmul(withTuner(rt, tuner), shape, ops);
      const key = matmulTuneKey(
        { ...shape, transA: false, transB: false, lda: K, ldb: N, ldc: N, accumulate: false },
        { a: "f32", b: "f32", c: "f32" },
        { a: true, b: true, c: true },
      );
      const choice = (await tuner.choices())[key];
      ok((matmulCandidates(rt, true, { M, N, K, transA: false }) as string[]).includes(choice));
      if (rt.gpu.isCpu) {
        ok(
          /^(regblock|rb\d+_t\d+x\d+)$/.test(choice),
          `llvmpipe picks register blocking: ${choice}`,
        );
        equal(d[0].pipeline.label, "matmul_regblock");
      }
      const cached = JSON.parse(await Deno.readTextFile(path)).devices[tuner.deviceKey][key];
      equal(cached.choice, choice);
      ok(Object.keys(cached.ms).length >= 2, "every candidate timed");
      // The scratch the timing used is gone; the product is right.
      await runDispatches(rt.device, d);
      const got = await readF32(rt.device, C, 0, 3 * N);
      const want = matmulRef(a.subarray(0, 3 * K), b, { M: 3, N, K }, { bias });
      // f32 rounding of a sum grows as sqrt(K): 1e-4 at GPT-2's K = 768.
      const tol = 1e-4 * Math.sqrt(K / 768);
      assertAllClose(got, want, { rtol: tol, atol: tol, label: `auto (${choice})` });
      // Forcing a kernel asks no tuner; a second product of the class asks the cache.
      const forced = new Autotuner({ deviceKey: "x" });
      const t = await matmul(withTuner(rt, forced), shape, ops, { impl: "tiled" });
      equal(t[0].pipeline.label, "matmul_tiled");
      deepEqual(await forced.choices(), {});
      const fresh = new Autotuner({ deviceKey: deviceKey(rt), path });
      const again = await matmul(withTuner(rt, fresh), { ...shape, M: 100 }, ops);
      equal(again[0].pipeline.label, d[0].pipeline.label);
      equal((await fresh.choices())[key], choice);
    } finally {
      for (const x of [A, B, Bias, C]) rt.arena.free(x);
    }
  });
});

gpuTest("matmul auto: odd shapes and small products are right whatever is chosen", async (rt) => {
  const tuner = new Autotuner({ deviceKey: deviceKey(rt) });
  // Big enough to be timed (over 2^32 FLOPs), with no 4-aligned operand.
  for (const [M, N, K, transA] of [[1029, 2053, 1023, true], [37, 45, 51, false]] as const) {
    const a = randn(M * K, 6), b = randn(K * N, 7);
    const A = rt.arena.allocWith("A", "scratch", a), B = rt.arena.allocWith("B", "scratch", b);
    const C = rt.arena.alloc("C", "scratch", M * N * 4);
    try {
      const shape = { M, N, K, transA };
      const d = await matmul(withTuner(rt, tuner), shape, {
        a: { buffer: A },
        b: { buffer: B },
        c: { buffer: C },
      });
      await runDispatches(rt.device, d);
      const rows = Math.min(M, 8);
      const got = await readF32(rt.device, C, 0, rows * N);
      const ref = matmulRef(a, b, { ...shape, M: rows, lda: transA ? M : K });
      assertAllClose(got, ref, { rtol: 1e-4, atol: 1e-4, label: `auto ${M}x${N}x${K}` });
    } finally {
      for (const x of [A, B, C]) rt.arena.free(x);
    }
  }
  const choices = Object.values(await tuner.choices());
  equal(choices.length, 1, "only the large product is timed");
  ok(!choices.includes("regblock"), "regblock cannot read unaligned operands");
});

gpuTest(
  "flash attention rows: the tuner times 1, 2 and 4 once and the output is the same",
  async (rt) => {
    const tuner = new Autotuner({ deviceKey: deviceKey(rt) });
    const trt = withTuner(rt, tuner);
    // T=1024, 8 heads of 64: 2^30 FLOPs, the smallest a CPU adapter tunes.
    const s = { B: 1, T: 1024, C: 512, NH: 8 };
    const qkv = rt.arena.allocWith("qkv", "scratch", randn(s.T * 3 * s.C, 21, 2));
    const out = rt.arena.alloc("out", "scratch", s.T * s.C * 4);
    const lse = rt.arena.alloc("lse", "scratch", s.NH * s.T * 4);
    try {
      const rows = await chooseFlashRows(trt, s, { qkv, out, lse });
      ok([1, 2, 4].includes(rows), `rows ${rows}`);
      const [key] = Object.keys(await tuner.choices());
      match(key, /^flash rows f32\.f32 HS64 T1024 BH8$/);
      equal((await tuner.choices())[key], String(rows));
      // The tuned forward and an explicit one-row forward write the same output.
      await runDispatches(rt.device, await flashAttentionForward(trt, s, { qkv, out, lse }));
      const tuned = await readF32(rt.device, out);
      await runDispatches(
        rt.device,
        await flashAttentionForward(rt, { ...s, rows: 1 }, {
          qkv,
          out,
          lse,
        }),
      );
      assertAllClose(tuned, await readF32(rt.device, out), { rtol: 1e-5, atol: 1e-6 });
      // Small shapes keep the heuristic without timing.
      const small = new Autotuner({ deviceKey: "small" });
      equal(
        await chooseFlashRows(withTuner(rt, small), { B: 1, T: 64, C: 128, NH: 2 }, {
          qkv,
          out,
          lse,
        }),
        flashRows(rt, 64),
      );
      deepEqual(await small.choices(), {});
    } finally {
      for (const x of [qkv, out, lse]) rt.arena.free(x);
    }
  },
);
