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

gpuTest({
  name: "under fp16's loss scaler, running ahead changes no number either, overflows included",
  needs: "shader-f16",
}, async (rt) => {
  const dir = await Deno.makeTempDir({ prefix: "run-ahead-" });
  try {
    await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(4000, 3));
    // 2^40 overflows f16 at once: the first steps skip and halve it, and a window of 2 clean
    // steps doubles it again, so overflows recur; each time the step begun ahead assumed a
    // clean one and must run again at the halved scale.
    const over: TrainSettings = {
      steps: 12,
      saveEvery: 6,
      keep: 5,
      precision: "fp16",
      lossScale: 2 ** 40,
      lossScaleWindow: 2,
    };
    const scales: Record<string, number[]> = { one: [], ahead: [] };
    const runs = [];
    for (const name of ["one", "ahead"] as const) {
      const stop = new AbortController();
      const result = await train(rt, testTrainConfig(`${dir}/${name}`, `${dir}/text.txt`, over), {
        logger: { log: () => {} },
        runAhead: name === "ahead",
        signal: stop.signal,
        onStep: (r) => {
          scales[name].push(r.lossScale ?? 0);
        },
      });
      runs.push(result);
    }
    const [one, ahead] = runs;
    deepEqual(ahead.losses, one.losses);
    deepEqual(scales.ahead, scales.one);
    ok(
      scales.one.filter((s, i) => i > 0 && s < scales.one[i - 1]).length >= 2,
      `scales ${scales.one}`,
    );
    for (const step of ["step_00000006", "step_00000012"]) {
      const a = await Deno.readFile(`${dir}/ahead/checkpoints/${step}/model.safetensors`);
      const b = await Deno.readFile(`${dir}/one/checkpoints/${step}/model.safetensors`);
      ok(a.length === b.length && a.every((x, i) => x === b[i]), `${step}'s weights differ`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest({
  name: "a step begun ahead of one that overflows skips on the GPU and runs again, exactly",
  needs: "shader-f16",
}, async (rt) => {
  const { GPT2 } = await import("../src/model/gpt2.ts");
  const { createOptimizer } = await import("../src/optim/registry.ts");
  const { resolveConfig } = await import("../src/model/config.ts");
  const { LossScaler } = await import("../src/train/loss_scale.ts");
  const cfg = resolveConfig("tiny");
  const B = 2, T = 8;
  const batch = (k: number) => {
    const tokens = Array.from({ length: B * T }, (_, i) => (i * 7 + k) % cfg.vocabSize);
    return { inputs: tokens, targets: [...tokens.slice(1), k] };
  };
  const results: { outcomes: StepOutcome[]; t: number; scale: number; params: Float32Array }[] = [];
  for (const ahead of [false, true]) {
    const model = await GPT2.create(rt, cfg, {
      B,
      T,
      seed: 3,
      dloss: 1 / (B * T),
      precision: "fp16",
    });
    const opt = await createOptimizer("adamw", rt, model.layout, model, {});
    // 2^24 overflows at once; then a window of 1 doubles it after every clean step.
    const scaler = new LossScaler({ init: 2 ** 24, window: 1 });
    const step = new TrainStep(rt, model, opt, { accum: 1, scaler });
    try {
      ok(step.canRunAhead);
      const outcomes: StepOutcome[] = [];
      let k = 0;
      if (ahead) {
        // Step n+1 is begun before step n is read back, six times over.
        let pending = await step.begin(1e-2, () => batch(k++));
        for (let s = 1; s < 8; s++) {
          const next = await step.begin(1e-2, () => batch(k++));
          outcomes.push(await pending.end());
          pending = next;
        }
        outcomes.push(await pending.end());
      } else {
        for (let s = 0; s < 8; s++) outcomes.push(await step.run(1e-2, () => batch(k++)));
      }
      const params = Float32Array.from(
        (await model.weights.readAll()).flatMap((t) => [...t.data]),
      );
      results.push({ outcomes, t: step.optimizerSteps, scale: scaler.scale, params });
    } finally {
      step.destroy();
      opt.destroy();
      model.destroy();
    }
  }
  const [one, ahead] = results;
  ok(one.outcomes.filter((o) => o.overflow).length >= 3, "expected several overflows");
  ok(one.outcomes.some((o) => !o.overflow), "expected clean steps too");
  deepEqual(ahead.outcomes, one.outcomes);
  equal(ahead.t, one.t);
  equal(ahead.scale, one.scale);
  ok(ahead.params.every((x, i) => x === one.params[i]), "the weights differ");
});
