/**
 * Data-parallel training through mpirun (Open MPI), on the small model of the training tests:
 * 2 ranks with batch B give the losses of one process with batch 2B and end with
 * bit-identical parameters (fp32 AdamW; 8-bit AdamW with fp16 loss scaling and forced
 * overflows; 4-bit AdamW); 16-bit weights and gradients keep the ranks bit-identical and one
 * process's losses within 1e-3; a stopped 2-rank run resumes bit-exactly; a rank killed mid-run
 * ends the job within seconds and leaves its last checkpoint intact. Ignored, with the reason
 * printed, when Open MPI's mpirun is not on PATH.
 *
 * @module
 */

import { deepEqual, equal, ok } from "node:assert/strict";
import { resumeProblem } from "../src/io/checkpoint.ts";
import { matchTensors } from "../src/model/weights.ts";
import { syntheticText } from "./_train_config.ts";

const SMALL = { nLayer: 2, nHead: 2, nEmbd: 32, nCtx: 64, vocabSize: 50257 };
const fixture = new URL("./fixtures/dist/train_rank.ts", import.meta.url).pathname;

function mpirunPath(): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/mpirun`).isFile) {
        const out = new Deno.Command(`${dir}/mpirun`, { args: ["--version"], stdout: "piped" })
          .outputSync();
        if (new TextDecoder().decode(out.stdout).includes("Open MPI")) return `${dir}/mpirun`;
      }
    } catch {
      // not here
    }
  }
  return null;
}
const mpirun = mpirunPath();
if (!mpirun) {
  console.warn(
    "skipping the data-parallel tests: no Open MPI mpirun on PATH " +
      "(apt-get install openmpi-bin libopenmpi-dev)",
  );
}

interface RankResult {
  rank: number;
  size: number;
  losses: number[];
  hash: string;
  checkpoint: string;
}

/** Runs the fixture on `ranks` processes (1: no mpirun); returns each rank's result line. */
async function run(
  ranks: number,
  args: string[],
): Promise<{ code: number; results: RankResult[]; out: string; ms: number }> {
  const deno = [Deno.execPath(), "run", "-A", fixture, ...args];
  const [cmd, ...rest] = ranks === 1
    ? deno
    : [mpirun!, "--allow-run-as-root", "--oversubscribe", "-np", String(ranks), ...deno];
  const t0 = performance.now();
  const { code, stdout, stderr } = await new Deno.Command(cmd, {
    args: rest,
    // Ranks waiting in a collective yield the CPU instead of spinning (2 cores, lavapipe).
    env: { NO_COLOR: "1", OMPI_MCA_mpi_yield_when_idle: "1" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(240_000), // a hang fails the test instead of the suite
  }).output();
  const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  const results = [...out.matchAll(/^result (.*)$/gm)].map((m) => JSON.parse(m[1]) as RankResult)
    .sort((a, b) => a.rank - b.rank);
  return { code, results, out, ms: performance.now() - t0 };
}

/** Both ranks' losses equal one process's within 1e-5 relative; parameters bit-identical. */
function expectSameRun(one: RankResult[], two: RankResult[], what: string) {
  equal(one.length, 1, what);
  equal(two.length, 2, what);
  equal(two[0].hash, two[1].hash, `${what}: the ranks' parameters differ`);
  deepEqual(two[0].losses, two[1].losses, `${what}: the ranks disagree on the losses`);
  equal(two[0].losses.length, one[0].losses.length, what);
  two[0].losses.forEach((l, i) => {
    const want = one[0].losses[i];
    ok(Math.abs(l - want) <= 1e-5 * Math.abs(want), `${what}: step ${i + 1} loss ${l} vs ${want}`);
  });
}

/**
 * Config `c` on 2 ranks stopped after step 4, then resumed from that checkpoint, gives the
 * losses and (on both ranks) the parameters of the uninterrupted run `full`.
 */
async function expectResumesLike(full: RankResult[], dir: string, text: string, c: string) {
  const part = await run(2, [`${dir}/part`, text, c, "4"]);
  equal(part.code, 0, part.out);
  equal(part.results[0].losses.length, 4);
  const resume = JSON.stringify({ ...JSON.parse(c), resume: part.results[0].checkpoint });
  const rest = await run(2, [`${dir}/part`, text, resume]);
  equal(rest.code, 0, rest.out);
  deepEqual([...part.results[0].losses, ...rest.results[0].losses], full[0].losses);
  equal(rest.results[0].hash, full[0].hash);
  equal(rest.results[1].hash, full[1].hash);
}

async function withRun(fn: (dir: string, text: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ddp-" });
  try {
    const text = `${dir}/text.txt`;
    await Deno.writeTextFile(text, syntheticText(6000, 1));
    await fn(dir, text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The small run with `over`; `batch` rows per process, `total` tokens per step. */
const config = (batch: number, over: Record<string, unknown> = {}) =>
  JSON.stringify({ model: SMALL, batch, seq: 32, totalBatch: 4 * 32, steps: 10, ...over });

for (
  const [name, over] of [
    ["fp32 AdamW", {}],
    ["8-bit AdamW, fp16 with overflows", {
      optimizer: "adamw8bit",
      precision: "fp16",
      lossScale: 2 ** 40, // the first steps overflow and are skipped on every rank
    }],
    ["4-bit AdamW", { optimizer: "adamw4bit" }],
  ] as const
) {
  Deno.test({
    name: `ddp: 2 ranks of batch 2 train like 1 process of batch 4 (${name})`,
    ignore: !mpirun,
    fn: () =>
      withRun(async (dir, text) => {
        const cache = { cacheDir: `${dir}/cache` };
        const one = await run(1, [`${dir}/one`, text, config(4, { ...over, ...cache })]);
        equal(one.code, 0, one.out);
        const two = await run(2, [`${dir}/two`, text, config(2, { ...over, ...cache })]);
        equal(two.code, 0, two.out);
        console.log(
          `  ${name}: 1 process ${one.ms.toFixed(0)} ms, 2 ranks ${two.ms.toFixed(0)} ms`,
        );
        expectSameRun(one.results, two.results, name);
      }),
  });
}

Deno.test({
  name: "ddp: a 2-rank run stopped at step 4 resumes bit-exactly",
  ignore: !mpirun,
  fn: () =>
    withRun(async (dir, text) => {
      const c = config(2, { cacheDir: `${dir}/cache`, steps: 8, saveEvery: 4 });
      const full = await run(2, [`${dir}/full`, text, c]);
      equal(full.code, 0, full.out);
      await expectResumesLike(full.results, dir, text, c);
    }),
});

Deno.test({
  name: "ddp: ZeRO-1 trains like 1 process, its ranks agree, and it resumes bit-exactly",
  ignore: !mpirun,
  fn: () =>
    withRun(async (dir, text) => {
      const cache = { cacheDir: `${dir}/cache`, steps: 8, saveEvery: 4 };
      const one = await run(1, [`${dir}/one`, text, config(4, cache)]);
      equal(one.code, 0, one.out);
      const c = config(2, { ...cache, zero: true });
      const full = await run(2, [`${dir}/full`, text, c]);
      equal(full.code, 0, full.out);
      expectSameRun(one.results, full.results, "ZeRO-1");
      await expectResumesLike(full.results, dir, text, c);
    }),
});

Deno.test({
  name: "ddp: eval under 2 ranks reports the HellaSwag and validation loss of 1 process",
  ignore: !mpirun,
  fn: () =>
    withRun(async (dir, text) => {
      const trained = await run(1, [
        `${dir}/m`,
        text,
        config(4, { cacheDir: `${dir}/cache`, steps: 2 }),
      ]);
      equal(trained.code, 0, trained.out);
      const ckpt = trained.results[0].checkpoint;
      const data = JSON.parse(await Deno.readTextFile(`${ckpt}/trainer_state.json`)).data;
      const words = syntheticText(400, 3).split(" ");
      const items = Array.from({ length: 7 }, (_, i) => ({
        ind: i,
        activity_label: "Test",
        ctx_a: words.slice(i * 9, i * 9 + 6).join(" "),
        ctx_b: words[i * 9 + 6],
        ctx: words.slice(i * 9, i * 9 + 7).join(" "),
        label: i % 4,
        endings: [0, 1, 2, 3].map((e) =>
          words.slice(200 + i * 12 + e * 3, 203 + i * 12 + e * 3).join(" ")
        ),
      }));
      const hs = `${dir}/hs.jsonl`;
      await Deno.writeTextFile(hs, items.map((o) => JSON.stringify(o)).join("\n") + "\n");
      const evalTask = new URL("../tasks/eval.ts", import.meta.url).pathname;
      const args = (json: string) => [
        Deno.execPath(),
        "run",
        "-A",
        evalTask,
        ckpt,
        "--hellaswag",
        hs,
        "--loss",
        data,
        "--loss-batches",
        "5",
        "--batch",
        "2",
        "--seq",
        "32",
        "--json",
        json,
      ];
      const env = { NO_COLOR: "1", OMPI_MCA_mpi_yield_when_idle: "1" };
      const one = await new Deno.Command(args("")[0], {
        args: args(`${dir}/one.json`).slice(1),
        env,
      })
        .output();
      ok(one.success, new TextDecoder().decode(one.stderr));
      const two = await new Deno.Command(mpirun!, {
        args: ["--allow-run-as-root", "--oversubscribe", "-np", "2", ...args(`${dir}/two.json`)],
        env,
      }).output();
      ok(two.success, new TextDecoder().decode(two.stdout) + new TextDecoder().decode(two.stderr));
      const a = JSON.parse(await Deno.readTextFile(`${dir}/one.json`));
      const b = JSON.parse(await Deno.readTextFile(`${dir}/two.json`));
      equal(b.ranks, 2);
      for (const style of ["completion", "harness"]) {
        for (const k of ["acc", "acc_norm"]) {
          equal(b.hellaswag[style][k], a.hellaswag[style][k]);
        }
      }
      equal(b.hellaswag.n, 7);
      equal(b.val_loss.batches, a.val_loss.batches);
      ok(
        Math.abs(b.val_loss.loss - a.val_loss.loss) < 1e-9,
        `${b.val_loss.loss} vs ${a.val_loss.loss}`,
      );
    }),
});

Deno.test({
  name: "ddp: 16-bit weights and gradients: the ranks agree bit for bit, train like 1 process " +
    "within 1e-3, resume bit-exactly; ZeRO-1 refuses them",
  ignore: !mpirun,
  fn: () =>
    withRun(async (dir, text) => {
      const lean = {
        cacheDir: `${dir}/cache`,
        steps: 8,
        saveEvery: 4,
        precision: "fp16",
        gradDtype: "f16",
        weightDtype: "f16",
      };
      const one = await run(1, [`${dir}/one`, text, config(4, lean)]);
      equal(one.code, 0, one.out);
      const c = config(2, lean);
      const full = await run(2, [`${dir}/full`, text, c]);
      equal(full.code, 0, full.out);
      const [a, b] = full.results;
      equal(a.hash, b.hash, "the ranks' parameters differ");
      deepEqual(a.losses, b.losses, "the ranks disagree on the losses");
      // Each rank rounds its own half of the batch's gradient to f16 before the sum: not one
      // process's bits, but its losses.
      a.losses.forEach((l, i) => {
        const want = one.results[0].losses[i];
        ok(Math.abs(l - want) <= 1e-3 * want, `step ${i + 1} loss ${l} vs ${want}`);
      });
      await expectResumesLike(full.results, dir, text, c);
      const zero = await run(2, [`${dir}/zero`, text, config(2, { ...lean, zero: true })]);
      ok(zero.code !== 0, zero.out);
      ok(/--zero shards f32 weights and gradients/.test(zero.out), zero.out);
    }),
});

Deno.test({
  name: "ddp: killing one rank ends the other within seconds and keeps the last checkpoint",
  ignore: !mpirun,
  fn: () =>
    withRun(async (dir, text) => {
      const c = config(2, { cacheDir: `${dir}/cache`, steps: 40, saveEvery: 2 });
      const t0 = Date.now();
      const job = await run(2, [`${dir}/killed`, text, c, "", "5"]);
      ok(job.code !== 0, `the job should fail:\n${job.out}`);
      equal(job.results.length, 0, job.out); // no rank finished
      const root = `${dir}/killed/checkpoints`;
      const saved = [...Deno.readDirSync(root)].map((e) => e.name).filter((n) =>
        n.startsWith("step_")
      );
      ok(saved.length > 0, "no checkpoint was saved before the kill");
      for (const s of saved) {
        equal(await resumeProblem(`${root}/${s}`, matchTensors), undefined, `${s} is damaged`);
      }
      console.log(`  killed at step 5: job over in ${Date.now() - t0} ms in all, kept ${saved}`);
    }),
});
