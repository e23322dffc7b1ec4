// The autotuner's check before timing (src/gpu/autotune.ts TuneCheck): with fake timers, a
// fast candidate whose check fails is dropped (never timed, chosen or cached), verdicts are
// remembered per id, a cached choice that fails its check is tuned again, and DEBUG=1 names
// the dropped candidate.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { Autotuner, type TuneSpec } from "../src/gpu/autotune.ts";

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
