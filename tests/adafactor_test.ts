// Adafactor against its float64 reference, its tiny state in the memory plan, and a run that
// names it with --optimizer (through the registry row alone) and resumes exactly.
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { layoutOf, type ParamLayout } from "../src/model/params.ts";
import { Adafactor } from "../src/optim/adafactor.ts";
import { createOptimizer, OPTIMIZERS, parseOptions } from "../src/optim/registry.ts";
import { GradNorm } from "../src/train/grad_norm.ts";
import { setReduceForm } from "../src/model/ops/reduce.ts";
import { planMemory } from "../src/train/memory_plan.ts";
import { train } from "../src/train/trainer.ts";
import { parseTrainArgs } from "../tasks/train.ts";
import { gradNormRef } from "./reference/adamw.ts";
import { adafactorRef, adafactorRefState } from "./reference/adafactor.ts";
import { assertAllClose, gpuTest, randn } from "./_harness.ts";
import { syntheticText, testTrainConfig } from "./_train_config.ts";

/** Awkward sizes: a 2-D tensor, a 1-D one, and one that runs in three pieces of rows. */
function fakeLayout(): ParamLayout {
  return layoutOf([
    { name: "w", shape: [37, 45] }, // factored, decayed
    { name: "b", shape: [29] }, // full second moment, not decayed
    { name: "tall", shape: [130, 5] }, // pieces of 64, 64 and 2 rows at 1280-byte bindings
  ]);
}

/**
 * Real sizes: gpt2's c_fc weight and bias, and a 40,000-row tensor whose column sums walk its
 * rows in two dispatches (32,768 + 7,232), within the loop budget; the adapter's bindings.
 */
function realLayout(): ParamLayout {
  return layoutOf([
    { name: "h.0.mlp.c_fc.weight", shape: [768, 3072] },
    { name: "h.0.mlp.c_fc.bias", shape: [3072] },
    { name: "tall", shape: [40000, 4] },
  ]);
}

// The sums in the tree form, and once through subgroups (src/model/ops/reduce.ts), forced.
const CASES = [
  { name: "awkward sizes, beta1 0", layout: fakeLayout, beta1: 0, maxBindingBytes: 1280 },
  { name: "awkward sizes, beta1 0.9", layout: fakeLayout, beta1: 0.9, maxBindingBytes: 1280 },
  { name: "gpt2's c_fc and a 40,000-row tensor", layout: realLayout, beta1: 0.9 },
  {
    name: "awkward sizes, beta1 0.9, sums through subgroups",
    layout: fakeLayout,
    beta1: 0.9,
    maxBindingBytes: 1280,
    form: "subgroup",
  },
] as const;

for (const c of CASES) {
  const { name: label, layout: makeLayout, beta1 } = c;
  const maxBindingBytes = "maxBindingBytes" in c ? c.maxBindingBytes : undefined;
  const form = "form" in c ? c.form : "tree";
  gpuTest(`Adafactor matches a float64 reference over four steps: ${label}`, async (rt) => {
    setReduceForm(rt, form);
    const layout = makeLayout();
    const n = layout.totalElements;
    const p0 = randn(n, 3);
    const params = rt.arena.allocWith("p", "parameters", p0);
    const grads = rt.arena.alloc("g", "gradients", n * 4);
    const cfg = { beta1, decay: 0.8, clip: 1, eps1: 1e-30, weightDecay: 0.1 };
    const opt = await Adafactor.create(rt, layout, { params, grads }, cfg, { maxBindingBytes });
    const gn = await GradNorm.create(rt, layout, grads, opt.gradStats, { maxBindingBytes });
    if (maxBindingBytes) equal(opt.tensors[2].pieces.length, 3, "the tall tensor runs in pieces");
    const sums = opt.dispatches.filter((d) => d.pipeline.label.startsWith("adafactor_sum_"));
    ok(
      sums.length > 0 && sums.every((d) => d.pipeline.label.endsWith("_sg") === (form !== "tree")),
    );
    const ref = layout.tensors.map((t) => ({
      t,
      p: Float64Array.from(p0.subarray(t.offset, t.offset + t.size)),
      st: adafactorRefState(t.shape, beta1),
    }));
    // Growing gradients: RMS(U) passes the threshold, so update clipping acts. Step 3 also
    // clips the global norm (the training step's scale).
    const scales = [1, 10, 30, 0.5], gradClips = [0, 0, 5, 0];
    const rms: number[][] = [];
    try {
      for (let step = 1; step <= 4; step++) {
        const g = randn(n, 20 + step, scales[step - 1]);
        rt.device.queue.writeBuffer(grads, 0, g);
        gn.setStep({ gradClip: gradClips[step - 1] });
        const lr = 1e-2 / step;
        opt.setStep(step, lr);
        await runDispatches(rt.device, [...gn.dispatches, ...opt.dispatches]);
        const gs = ref.map((r) => g.subarray(r.t.offset, r.t.offset + r.t.size));
        const norm = gradNormRef(gs), clip = gradClips[step - 1];
        const k = clip > 0 ? Math.min(1, clip / (norm + 1e-6)) : 1;
        rms.push(
          ref.map((r, i) =>
            adafactorRef(r.p, gs[i].map((x) => x * k), r.st, r.t.decay, { ...cfg, lr, t: step })
          ),
        );
      }
      console.log(
        `RMS(U) per step and tensor: ${
          JSON.stringify(rms.map((r) => r.map((x) => +x.toFixed(3))))
        }`,
      );
      ok(rms.some((r) => r[0] > 1.1) && rms.some((r) => r[1] > 1.1), "update clipping never acted");
      const state = new Map((await opt.readState()).map((s) => [s.name, s.data as Float32Array]));
      for (const r of ref) {
        const { offset, size, name } = r.t;
        const tol = { rtol: 2e-4, atol: 1e-6 };
        assertAllClose(await readF32(rt.device, params, offset, size), r.p, {
          ...tol,
          label: `p ${name}`,
        });
        if (r.st.r) {
          assertAllClose(state.get(`adafactor.r.${name}`)!, r.st.r, { ...tol, label: `R ${name}` });
          assertAllClose(state.get(`adafactor.c.${name}`)!, r.st.c!, {
            ...tol,
            label: `C ${name}`,
          });
        } else {
          assertAllClose(state.get(`adafactor.v.${name}`)!, r.st.v!, {
            ...tol,
            label: `V ${name}`,
          });
        }
        if (beta1) {
          assertAllClose(state.get(`adafactor.m.${name}`)!, r.st.m!, {
            ...tol,
            label: `m ${name}`,
          });
        } else ok(!state.has(`adafactor.m.${name}`), "no first moment without beta1");
      }
      // Saved state comes back: a fresh optimizer restored from it holds the same tensors.
      const again = await Adafactor.create(rt, layout, { params, grads }, cfg, { maxBindingBytes });
      const saved = await opt.readState();
      again.writeState({
        path: "test",
        has: (k) => saved.some((s) => s.name === k),
        f32: (k) => saved.find((s) => s.name === k)!.data as Float32Array<ArrayBuffer>,
        bytes: () => new Uint8Array(),
      });
      deepEqual(await again.readState(), saved);
      again.destroy();
    } finally {
      setReduceForm(rt, undefined);
      gn.destroy();
      opt.destroy();
      rt.arena.free(params);
      rt.arena.free(grads);
    }
  });
}

Deno.test("Adafactor's options come from its registry row, checked", async () => {
  ok("adafactor" in OPTIMIZERS);
  deepEqual(parseOptions("adafactor", OPTIMIZERS.adafactor, "beta1=0.9, clip=2"), {
    beta1: 0.9,
    decay: 0.8,
    clip: 2,
    eps1: 1e-30,
  });
  throws(() => parseOptions("adafactor", OPTIMIZERS.adafactor, "beta2=0.9"), /options beta1/);
  throws(() => parseOptions("adafactor", OPTIMIZERS.adafactor, "clip=0"), /above 0/);
  throws(() => parseOptions("adamw", OPTIMIZERS.adamw, "beta1=0.9"), /adamw has no options/);
  const c = await parseTrainArgs(["--optimizer", "adafactor", "--optimizer-option", "beta1=0.5"]);
  ok(c !== "help");
  equal(c.optimizer, "adafactor");
  equal(c.optimizerOptions, "beta1=0.5");
});

gpuTest("Adafactor's state is row and column vectors, and the memory plan shows it", async (rt) => {
  const cfg = { nLayer: 2, nHead: 2, nEmbd: 64, nCtx: 64, vocabSize: 50257 };
  const o = { B: 2, T: 48, logitsChunkRows: 64 };
  for (const optimizerOptions of ["", "beta1=0.9"]) {
    const before = rt.arena.report().current;
    const m = await GPT2.create(rt, cfg, { ...o, seed: 1 });
    const opt = await createOptimizer("adafactor", rt, m.layout, m, { optimizerOptions });
    try {
      const now = rt.arena.report().current;
      const plan = planMemory(cfg, { ...o, optimizer: "adafactor", optimizerOptions }).bytes;
      equal(now.optimizer - before.optimizer, plan.optimizer, `adafactor ${optimizerOptions}`);
      equal(opt.stateBytes, plan.optimizer);
      const adamw = planMemory(cfg, { ...o, optimizer: "adamw" }).bytes.optimizer;
      const share = plan.optimizer / adamw;
      console.log(
        `adafactor ${optimizerOptions || "(no m)"}: ${plan.optimizer} bytes of state, ` +
          `${(100 * share).toFixed(2)}% of AdamW's`,
      );
      ok(optimizerOptions ? share < 0.51 : share < 0.01, `state is ${share} of AdamW's`);
    } finally {
      opt.destroy();
      m.destroy();
    }
  }
});

gpuTest("a run with --optimizer adafactor learns, and resumes exactly", async (rt) => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/t.txt`, syntheticText(5000, 4, 7));
    const argv = (out: string, ...more: string[]) => [
      "--optimizer",
      "adafactor",
      "--data",
      `${dir}/t.txt`,
      "--out",
      out,
      "--steps",
      "6",
      "--seq",
      "16",
      "--batch",
      "2",
      "--total-batch",
      "32",
      "--lr",
      "1e-2",
      "--schedule",
      "constant",
      ...more,
    ];
    const quiet = { logger: { log: () => {} } };
    const config = async (out: string, ...more: string[]) => {
      const c = await parseTrainArgs(argv(out, ...more));
      if (c === "help") throw new Error("unexpected --help");
      return testTrainConfig(out, `${dir}/t.txt`, {
        ...c,
        model: { nLayer: 1, nHead: 2, nEmbd: 32, nCtx: 16, vocabSize: 50257 },
        modelName: "adafactor",
        cacheDir: `${dir}/cache`,
      });
    };
    // A bad option is refused before the model is built.
    await rejects(
      () =>
        train(rt, {
          ...testTrainConfig(`${dir}/bad`, `${dir}/t.txt`),
          optimizer: "adafactor",
          optimizerOptions: "beta2=0.9",
        }, quiet),
      /--optimizer-option beta2=0\.9: adafactor has the options beta1, decay, clip, eps1/,
    );
    const full = await train(rt, await config(`${dir}/full`), quiet);
    ok(full.losses.every(Number.isFinite));
    ok(full.losses[5] < full.losses[0], `no learning: ${full.losses}`);
    const part = await train(rt, await config(`${dir}/part`), {
      ...quiet,
      stopAfter: (s) => s === 3,
    });
    const rest = await train(rt, await config(`${dir}/part`, "--resume", part.checkpoint), quiet);
    deepEqual([...part.losses, ...rest.losses], full.losses);
    // The saved state is Adafactor's: another optimizer refuses it.
    await rejects(
      async () =>
        await train(
          rt,
          await config(`${dir}/part`, "--resume", rest.checkpoint, "--optimizer", "adamw"),
          quiet,
        ),
      /optimizer/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
