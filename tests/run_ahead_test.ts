// Running a step ahead (TrainOptions.runAhead): step n+1 is encoded and submitted before step
// n is read back. The numbers must not change: the same losses and norms, the same weights in
// every checkpoint (a save step, a validation step and the last one never run ahead), and a
// stop finishes the step in flight and saves it, which then matches a one-step-at-a-time run
// of that many steps. And it must actually run ahead: the step records' readbacks overlap.
import { deepEqual, equal, ok } from "node:assert/strict";
import { train, type TrainResult } from "../src/train/trainer.ts";
import type { TrainSettings } from "../src/train/resolve.ts";
import type { Runtime } from "../src/gpu/runtime.ts";
import { listCheckpoints } from "../src/io/checkpoint.ts";
import { type StepOutcome, TrainStep } from "../src/train/step.ts";
import { gpuTest } from "./_harness.ts";
import { syntheticText, testTrainConfig } from "./_train_config.ts";

async function run(
  rt: Runtime,
  dir: string,
  name: string,
  over: TrainSettings,
  options: { runAhead: boolean; stopAt?: number },
): Promise<{ result: TrainResult; norms: number[]; checkpoints: Map<string, Uint8Array> }> {
  const stop = new AbortController(), norms: number[] = [];
  const result = await train(rt, testTrainConfig(`${dir}/${name}`, `${dir}/text.txt`, over), {
    logger: { log: () => {} },
    runAhead: options.runAhead,
    signal: stop.signal,
    onStep: (r) => {
      norms.push(r.gradNorm);
      if (r.step === options.stopAt) stop.abort();
    },
  });
  const checkpoints = new Map<string, Uint8Array>();
  for (const ck of await listCheckpoints(`${dir}/${name}/checkpoints`)) {
    const step = ck.slice(ck.lastIndexOf("/") + 1);
    checkpoints.set(step, await Deno.readFile(`${ck}/model.safetensors`));
  }
  return { result, norms, checkpoints };
}

gpuTest(
  "running a step ahead changes no number: losses, norms and every checkpoint",
  async (rt) => {
    const dir = await Deno.makeTempDir({ prefix: "run-ahead-" });
    try {
      await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(4000, 3));
      // Saves at 3 and 6, validation at 4 and 8, the end at 9: each is a step not run past.
      const over = { steps: 9, saveEvery: 3, valEvery: 4, valBatches: 1, keep: 5 };
      const one = await run(rt, dir, "one", over, { runAhead: false });
      const ahead = await run(rt, dir, "ahead", over, { runAhead: true });
      deepEqual(ahead.result.losses, one.result.losses);
      deepEqual(ahead.norms, one.norms);
      equal(ahead.result.valLoss, one.result.valLoss);
      deepEqual([...ahead.checkpoints.keys()], ["step_00000003", "step_00000006", "step_00000009"]);
      for (const [step, bytes] of one.checkpoints) {
        ok(
          ahead.checkpoints.get(step)!.every((b, i) => b === bytes[i]),
          `${step}'s weights differ`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest("a stop while a step runs ahead finishes that step and saves it, exactly", async (rt) => {
  const dir = await Deno.makeTempDir({ prefix: "run-ahead-" });
  try {
    await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(4000, 3));
    // Stopped after step 4's report: step 5 was already on the GPU, so the run ends at 5.
    const stopped = await run(rt, dir, "stopped", { steps: 9 }, { runAhead: true, stopAt: 4 });
    equal(stopped.result.lastStep, 5);
    ok(stopped.result.stopped);
    // The same 5 steps one at a time (same schedule: 9 steps, stopped by a signal after 5).
    const one = await run(rt, dir, "one", { steps: 9 }, { runAhead: false, stopAt: 5 });
    equal(one.result.lastStep, 5);
    deepEqual(stopped.result.losses, one.result.losses);
    const a = stopped.checkpoints.get("step_00000005")!, b = one.checkpoints.get("step_00000005")!;
    ok(a.length === b.length && a.every((x, i) => x === b[i]), "step 5's weights differ");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("a step begun ahead is on the GPU before the previous one is read back", async (rt) => {
  // TrainStep's contract, which the loop relies on: begin() twice, then end() in order.
  const { GPT2 } = await import("../src/model/gpt2.ts");
  const { createOptimizer } = await import("../src/optim/registry.ts");
  const { resolveConfig } = await import("../src/model/config.ts");
  const cfg = resolveConfig("tiny");
  const B = 2, T = 8, tokens = Array.from({ length: B * T }, (_, i) => (i * 7) % cfg.vocabSize);
  const batch = () => ({ inputs: tokens, targets: [...tokens.slice(1), 0] });
  const outcomes: StepOutcome[][] = [];
  for (const ahead of [false, true]) {
    const model = await GPT2.create(rt, cfg, { B, T, seed: 3, dloss: 1 / (B * T) });
    const opt = await createOptimizer("adamw", rt, model.layout, model, {});
    const step = new TrainStep(rt, model, opt, { accum: 1 });
    try {
      ok(step.canRunAhead);
      const got: StepOutcome[] = [];
      if (ahead) {
        const first = await step.begin(1e-2, batch), second = await step.begin(1e-2, batch);
        equal(step.optimizerSteps, 2, "t moves on as each step is begun");
        got.push(await first.end(), await second.end());
      } else got.push(await step.run(1e-2, batch), await step.run(1e-2, batch));
      outcomes.push(got);
    } finally {
      step.destroy();
      opt.destroy();
      model.destroy();
    }
  }
  deepEqual(outcomes[1], outcomes[0]);
  ok(outcomes[0][1].loss < outcomes[0][0].loss, "the second step sees the first's update");
});
