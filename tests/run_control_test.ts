/**
 * How long a run lasts and how it stops: the time budget (--time), the "continue" advice,
 * a finished run resumed, stops by signal at every stage (startup, a validation pass, a
 * second Ctrl-C), a dead run's unfinished save, and a run directory that cannot be written
 * (read-only, full).
 *
 * @module
 */

import { deepEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import { parseTrainArgs } from "../tasks/train.ts";
import { train } from "../src/train/trainer.ts";
import { DEFAULT_TIME_S, parseDuration, runLength, StepBudget } from "../src/train/budget.ts";
import { formatSummary } from "../src/train/log.ts";
import { recoverCheckpoints } from "../src/train/run_dir.ts";
import { listCheckpoints } from "../src/io/checkpoint.ts";
import { gpuTest } from "./_harness.ts";
import { syntheticText, testTrainConfig } from "./_train_config.ts";

const TRAIN = new URL("../tasks/train.ts", import.meta.url).pathname;

/** The CLI runs below: a small model on `dir`/text.txt into `out`, its cache in `dir`. */
const smallRun = (dir: string, out = `${dir}/run`) => [
  ...["--model", "gpt2-mini", "--n-layer", "1", "--n-embd", "32", "--n-head", "2"],
  ...["--batch", "2", "--seq", "32", "--sample-tokens", "0"],
  ...["--data", `${dir}/text.txt`, "--out", out, "--cache-dir", `${dir}/cache`],
];

/** A running `deno task train`: its output so far, read up to a pattern; then its end. */
class TrainProcess {
  readonly child: Deno.ChildProcess;
  out = "";
  #reader: ReadableStreamDefaultReader<string>;
  /** `stdin`: a pipe the test writes (for `--data /dev/stdin`); otherwise none. */
  constructor(args: string[], { stdin = false } = {}) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TRAIN, ...args],
      env: { NO_COLOR: "1" },
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#reader = this.child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  }
  /** Reads stdout until `re` matches (or it ends); true when it matched. */
  async until(re: RegExp): Promise<boolean> {
    while (!re.test(this.out)) {
      const { value, done } = await this.#reader.read();
      if (done) return false;
      this.out += value;
    }
    return true;
  }
  /** Reads to the end; the exit code and stderr. */
  async end(): Promise<{ code: number; err: string }> {
    for (;;) {
      const { value, done } = await this.#reader.read();
      if (done) break;
      this.out += value;
    }
    const { code } = await this.child.status;
    const err = new TextDecoder().decode(await new Response(this.child.stderr).arrayBuffer());
    return { code, err };
  }
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "run-control-" });
  try {
    await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(4000, 5));
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---------------------------------------------------------------------------
// the time budget

Deno.test("--time reads durations; a run without --steps gets the default budget", async () => {
  equal(parseDuration("90s"), 90);
  equal(parseDuration("5m"), 300);
  equal(parseDuration("1h30m"), 5400);
  equal(parseDuration("1.5h"), 5400);
  equal(parseDuration("45"), 45);
  for (const bad of ["", "5x", "m", "0", "-5m", "5m junk"]) {
    throws(() => parseDuration(bad), /must be a duration such as 90s, 5m or 1h30m/, bad);
  }
  deepEqual(runLength({}), { seconds: DEFAULT_TIME_S });
  deepEqual(runLength({ steps: 100 }), { steps: 100 });
  deepEqual(runLength({ time: 60, steps: 100 }), { seconds: 60, steps: 100 });
  const d = await parseTrainArgs([]);
  ok(d !== "help");
  equal(d.steps, undefined);
  equal(d.time, undefined); // the default job's budget comes from runLength
  const t = await parseTrainArgs(["--time", "2m", "--steps", "50"]);
  ok(t !== "help");
  equal(t.time, 120);
  equal(t.steps, 50);
  await rejects(parseTrainArgs(["--time", "soon"]), /--time: must be a duration/);
});

Deno.test("the budget decides once, after timing steps past the first, within its cap", () => {
  const b = new StepBudget({ seconds: 100, valEvery: 0, valBatches: 0 });
  // Setup and the first step (compilation) took 10 s; then 0.5 s a step.
  equal(b.afterStep(1, 10_000), undefined);
  equal(b.afterStep(2, 10_500), undefined);
  equal(b.afterStep(3, 11_000), undefined);
  equal(b.afterStep(4, 11_500), undefined, "3 steps but under 2 s: keep timing");
  const d = b.afterStep(5, 12_000)!;
  // 95 s of budget minus 12 s spent, at 0.5 s a step: 166 more steps after step 5.
  equal(d.steps, 5 + 166);
  equal(d.perStep, 0.5);
  deepEqual(d.measured, [2, 5]);
  match(d.line, /0\.500 s\/step over steps 2-5, 12s spent so far .* the run takes 171 steps/);
  equal(b.afterStep(6, 12_500), undefined, "it decides once");
  // Validation every 10 steps of 6 batches costs 6/3 = 2 steps' time per 10.
  const v = new StepBudget({ seconds: 100, valEvery: 10, valBatches: 6 });
  for (const [s, ms] of [[1, 10_000], [2, 11_000], [3, 12_000]]) v.afterStep(s, ms);
  equal(v.afterStep(4, 13_000)?.steps, 4 + Math.floor((95 - 13) / (1 * 1.2)));
  const capped = new StepBudget({ seconds: 1000, cap: 20, valEvery: 0, valBatches: 0 });
  for (const [s, ms] of [[1, 0], [2, 1000], [3, 2000]]) capped.afterStep(s, ms);
  const c = capped.afterStep(4, 3000)!;
  equal(c.steps, 20);
  match(c.line, /--steps 20 is the most/);
  const over = new StepBudget({ seconds: 5, valEvery: 0, valBatches: 0 });
  for (const [s, ms] of [[1, 0], [2, 2000], [3, 4000]]) over.afterStep(s, ms);
  equal(over.afterStep(4, 6000)?.steps, 4, "a spent budget ends at the step it decides");
});

gpuTest("a --time run decides its steps once, saves them, and a resume keeps them", async (rt) => {
  await withDir(async (dir) => {
    const out = `${dir}/run`;
    const lines: string[] = [];
    const c = testTrainConfig(out, `${dir}/text.txt`, { steps: undefined, time: 30, warmup: 4 });
    const decision = () => lines.find((l) => l.startsWith("time: 30s budget"));
    const r = await train(rt, c, {
      logger: { log: (l) => lines.push(l) },
      stopAfter: () => !!decision(),
    });
    const decided = decision();
    ok(decided, lines.join("\n"));
    const steps = Number(/the run takes (\d+) steps/.exec(decided)![1]);
    ok(steps > r.lastStep + 2, decided);
    equal(r.stopped, true);
    const saved = JSON.parse(await Deno.readTextFile(`${out}/run_config.json`));
    equal(saved.steps, steps, "run_config.json holds the decided steps");
    equal(saved.time, 30);
    match(lines.join("\n"), new RegExp(`continue +deno task train --out ${out} --resume latest `));
    ok(!/--resume latest --steps/.test(lines.join("\n")), "an interrupted run is finished as is");
    // The resume (no --time: it is not inherited) runs to the decided steps, on their schedule.
    const more: string[] = [];
    const r2 = await train(rt, { ...c, time: undefined, steps, resume: r.checkpoint }, {
      logger: { log: (l) => more.push(l) },
      stopAfter: (s) => s === r.lastStep + 2,
    });
    equal(r2.lastStep, r.lastStep + 2);
    const next = new RegExp(`^step +${r.lastStep + 1}/${steps} `);
    ok(more.some((l) => next.test(l)), more.join("\n"));
    ok(!more.some((l) => l.startsWith("time:")), "the resume decides nothing");
  });
});

// ---------------------------------------------------------------------------
// what the summary offers, and a finished run resumed

Deno.test("continue finishes an interrupted run; a finished one is offered a new total", () => {
  const base = { out: "runs/x", steps: 300, totalBatch: 256 };
  const at = { checkpoint: "runs/x/checkpoints/step_00000019", dataDir: "runs/data/x" };
  const stopped = formatSummary({ ...base, stopped: true }, [10, 9], 19, performance.now(), 5, at);
  match(
    stopped,
    /continue +deno task train --out runs\/x --resume latest +\(finishes the 300 steps\)/,
  );
  ok(!/--steps/.test(stopped), stopped);
  const done = formatSummary({ ...base, stopped: false }, [10, 9], 300, performance.now(), 5, at);
  match(done, /go further +deno task train --out runs\/x --resume latest --steps 600 /);
});

gpuTest("resuming a finished run says so and how to go further", async (rt) => {
  await withDir(async (dir) => {
    const c = testTrainConfig(`${dir}/run`, `${dir}/text.txt`, { steps: 2 });
    const r = await train(rt, c, { logger: { log: () => {} } });
    const before = await listCheckpoints(`${dir}/run/checkpoints`);
    await rejects(
      train(rt, { ...c, resume: r.checkpoint }, { logger: { log: () => {} } }),
      /step_00000002 is at step 2 and the run was for 2 steps: it is finished\. To train further give a larger total, e\.g\. --steps 4/,
    );
    deepEqual(await listCheckpoints(`${dir}/run/checkpoints`), before);
  });
});

Deno.test("shape flags with --init are an error, not ignored", async () => {
  await rejects(
    parseTrainArgs(["--init", "some/gpt2", "--n-layer", "4", "--n-embd", "256"]),
    /--init some\/gpt2 takes its shape from the checkpoint, so --n-layer, --n-embd would be ignored: drop them/,
  );
});

// ---------------------------------------------------------------------------
// stops

Deno.test("an unfinished save is cleaned up: .tmp removed, a moved-aside checkpoint put back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const mk = async (name: string) => {
      await Deno.mkdir(`${dir}/${name}`);
      await Deno.writeTextFile(`${dir}/${name}/model.safetensors`, name);
    };
    await mk("step_00000004");
    await mk(".tmp-step_00000008-0a1b2c3d"); // died while writing step 8
    await mk(".old-step_00000006-11223344"); // died between the two renames of step 6
    await mk(".old-step_00000004-55667788"); // died after the new step 4 was in place
    await mk("notes"); // not ours: left alone
    const done = await recoverCheckpoints(dir);
    equal(done.length, 3, done.join("\n"));
    deepEqual(await listCheckpoints(dir), [`${dir}/step_00000004`, `${dir}/step_00000006`]);
    equal(
      await Deno.readTextFile(`${dir}/step_00000006/model.safetensors`),
      ".old-step_00000006-11223344",
    );
    equal(await Deno.readTextFile(`${dir}/step_00000004/model.safetensors`), "step_00000004");
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    deepEqual(names, ["notes", "step_00000004", "step_00000006"]);
    deepEqual(await recoverCheckpoints(`${dir}/missing`), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("SIGTERM during startup stops with a message and writes nothing", async () => {
  await withDir(async (dir) => {
    // The run reads its text from a pipe that stays empty until the signal was handled: the
    // stop lands during startup however fast the machine (a file let a quick one train step 1).
    const args = smallRun(dir).map((a) => a === `${dir}/text.txt` ? "/dev/stdin" : a);
    const p = new TrainProcess([...args, "--steps", "50"], { stdin: true });
    ok(await p.until(/^starting: /m), p.out);
    p.child.kill("SIGTERM");
    ok(await p.until(/SIGTERM: stopping/), p.out);
    // Stopped while waiting for its data, or before it asked for it (a closed pipe then).
    const feed = p.child.stdin.getWriter();
    await feed.write(new TextEncoder().encode(syntheticText(4000, 5))).catch(() => {});
    await feed.close().catch(() => {});
    const { code, err } = await p.end();
    equal(code, 143, `${p.out}\n${err}`);
    match(p.out, /SIGTERM: stopping after this step/);
    match(p.out, /stopped before the first step: nothing was trained or saved/);
    deepEqual(await listCheckpoints(`${dir}/run/checkpoints`), []);
  });
});

gpuTest("SIGTERM during validation saves at once, without waiting for the pass", async () => {
  await withDir(async (dir) => {
    // 100,000 validation batches would take hours: the stop must cut the pass short.
    const p = new TrainProcess([
      ...smallRun(dir),
      ...["--steps", "50", "--val-every", "2", "--val-batches", "100000"],
    ]);
    ok(await p.until(/^step +2\/50 /m), p.out);
    p.child.kill("SIGTERM");
    const { code, err } = await p.end();
    equal(code, 0, `${p.out}\n${err}`);
    match(p.out, /stopped at step 2: checkpoint \S+step_00000002/);
    const log = (await Deno.readTextFile(`${dir}/run/log.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    ok(!log.some((r) => "val_loss" in r), "the cut pass logs no validation loss");
  });
});

gpuTest("a second Ctrl-C exits at once, and the next run cleans up after it", async () => {
  await withDir(async (dir) => {
    // Steps of ~0.1-1 s (128 wide, B=4, T=64): the second signal lands while the stopping run
    // still finishes its step, however fast the machine (the 32-wide model's took ~10 ms).
    const args = smallRun(dir).map((a, i, all) =>
      all[i - 1] === "--n-embd"
        ? "128"
        : all[i - 1] === "--batch"
        ? "4"
        : all[i - 1] === "--seq"
        ? "64"
        : a
    );
    const p = new TrainProcess([...args, "--steps", "100000", "--save-every", "2"]);
    ok(await p.until(/^step +3\/100000 /m), p.out);
    p.child.kill("SIGINT");
    ok(await p.until(/SIGINT: stopping after this step/), p.out);
    p.child.kill("SIGINT"); // while the step finishes and saves
    const { code, err } = await p.end();
    equal(code, 130, `${p.out}\n${err}`);
    match(p.out, /SIGINT again: exiting without saving; the checkpoints under \S+ are intact/);
    // What a save cut short would leave; the resume removes it and goes on.
    const ck = `${dir}/run/checkpoints`;
    await Deno.mkdir(`${ck}/.tmp-step_00000009-deadbeef`);
    const q = new TrainProcess([...args, "--resume", "latest", "--steps", "6"]);
    const end = await q.end();
    equal(end.code, 0, `${q.out}\n${end.err}`);
    match(q.out, /removed \S+\.tmp-step_00000009-deadbeef, left by an interrupted save/);
    ok(!(await Array.fromAsync(Deno.readDir(ck))).some((e) => e.name.startsWith(".tmp-")));
  });
});

// ---------------------------------------------------------------------------
// a run directory that cannot be written

const isRoot = Deno.uid?.() === 0;
const mountReason = "needs root to mount a small tmpfs (read-only or full)";
if (!isRoot) console.warn(`skipping the read-only and full-disk run tests: ${mountReason}`);

/** A tmpfs at a new directory under `dir` (options e.g. "ro" or "size=64k"), unmounted after. */
async function withMount(dir: string, options: string, fn: (at: string) => Promise<void>) {
  const at = `${dir}/mnt`;
  await Deno.mkdir(at);
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", options, "tmpfs", at],
  }).output();
  if (!mount.success) throw new Error(new TextDecoder().decode(mount.stderr));
  try {
    await fn(at);
  } finally {
    await new Deno.Command("umount", { args: [at] }).output();
  }
}

gpuTest({ name: "a read-only --out is a clear error", ignore: !isRoot }, async () => {
  await withDir(async (dir) => {
    await withMount(dir, "ro,size=64k", async (at) => {
      const p = new TrainProcess([...smallRun(dir, `${at}/run`), "--steps", "2"]);
      const { code, err } = await p.end();
      equal(code, 1, p.out);
      match(
        err,
        new RegExp(
          `error: Cannot use ${at}/run as the run directory: .*Read-only file system.*: choose a writable --out`,
        ),
      );
      ok(!/\.lock\.\d+/.test(err), `no temporary names: ${err}`);
    });
  });
});

gpuTest(
  { name: "a full disk names the last checkpoint to resume from", ignore: !isRoot },
  async (rt) => {
    await withDir(async (dir) => {
      const probe = testTrainConfig(`${dir}/probe`, `${dir}/text.txt`, { steps: 1 });
      const first = await train(rt, probe, { logger: { log: () => {} } });
      let bytes = 0;
      for await (const e of Deno.readDir(first.checkpoint)) {
        bytes += (await Deno.stat(`${first.checkpoint}/${e.name}`)).size;
      }
      // Room for one checkpoint and the log, not for two.
      await withMount(dir, `size=${Math.ceil((1.6 * bytes) / 4096) * 4}k`, async (at) => {
        const c = testTrainConfig(`${at}/run`, `${dir}/text.txt`, {
          steps: 6,
          saveEvery: 2,
          cacheDir: `${dir}/cache`,
        });
        await rejects(
          train(rt, c, { logger: { log: () => {} } }),
          new RegExp(
            `Cannot write the checkpoint of step 4 under ${at}/run/checkpoints: the disk is full: ` +
              `free some space\\. Nothing partial was left\\. The last complete checkpoint is ` +
              `${at}/run/checkpoints/step_00000002: continue from it with --resume latest`,
          ),
        );
        const names = (await Array.fromAsync(Deno.readDir(`${at}/run/checkpoints`))).map((e) =>
          e.name
        );
        deepEqual(names, ["step_00000002"]);
      });
    });
  },
);
