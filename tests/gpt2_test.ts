import { deepEqual, equal, ok, throws } from "node:assert/strict";
import {
  type GPT2Config,
  paddedVocab,
  parameterCount,
  PRESETS,
  resolveConfig,
} from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { parameterLayout } from "../src/model/params.ts";
import { gpt2Reference, type RefParams } from "./reference/gpt2.ts";
import type { Runtime } from "../src/gpu/runtime.ts";
import { assertAllClose, gpuTest, randomiseWeights, rng } from "./_harness.ts";

function batch(cfg: GPT2Config, n: number, seed: number) {
  const u = rng(seed);
  const tokens = Array.from({ length: n }, () => Math.floor(u() * cfg.vocabSize));
  const targets = Array.from({ length: n }, () => Math.floor(u() * cfg.vocabSize));
  return { tokens, targets };
}

async function refParamsFrom(model: GPT2): Promise<RefParams> {
  const out: RefParams = new Map();
  for (const t of model.layout.tensors) {
    out.set(t.name, Float64Array.from(await model.readTensor(t.name)));
  }
  return out;
}

Deno.test("presets have GPT-2's parameter counts", () => {
  equal(parameterCount(PRESETS.gpt2), 124_439_808);
  equal(parameterCount(PRESETS["gpt2-medium"]), 354_823_168);
  equal(parameterCount(PRESETS["gpt2-large"]), 774_030_080);
  equal(parameterCount(PRESETS["gpt2-xl"]), 1_557_611_200);
  // gpt2-medium-4096: 26 layers and a 4096-row position table
  equal(parameterCount(PRESETS["gpt2-medium-4096"]), 383_161_344);
  equal(paddedVocab(50257), 50304);
});

Deno.test("the flat layout holds every tensor, aligned, without overlap", () => {
  const layout = parameterLayout(PRESETS.gpt2);
  let end = 0;
  for (const t of layout.tensors) {
    equal(t.offset % 64, 0, t.name);
    ok(t.offset >= end, `${t.name} overlaps the previous tensor`);
    end = t.offset + t.size;
  }
  equal(layout.byName.get("h.11.mlp.c_proj.weight")!.shape.join(","), "3072,768");
  equal(layout.byName.get("wte.weight")!.shape.join(","), "50304,768");
  equal(layout.tensors.length, 2 + 12 * 12 + 2);
});

Deno.test("configs that cannot work are refused with the value and the reason", () => {
  throws(() => resolveConfig("gpt3"), /Unknown model "gpt3": choose one of tiny, gpt2/);
  throws(
    () => resolveConfig("gpt2", { nHead: 5 }),
    /nEmbd 768 is not divisible by nHead 5/,
  );
  throws(() => resolveConfig("gpt2", { vocabSize: 70000 }), /vocabSize 70000 is over 65535/);
  throws(() => resolveConfig("gpt2", { nLayer: 0 }), /nLayer must be a positive integer/);
});

gpuTest("a sequence longer than the position table is refused", async (rt) => {
  let err: unknown;
  try {
    await GPT2.create(rt, PRESETS.tiny, { B: 1, T: 17 });
  } catch (e) {
    err = e;
  }
  ok(
    err instanceof RangeError &&
      /Sequence length 17 is longer than .* \(nCtx 16\)/.test(err.message),
    String(err),
  );
});

for (const impl of ["regblock", "tiled"] as const) {
  gpuTest(`tiny GPT-2 (${impl} matmul): loss and every gradient match float64`, async (rt) => {
    const cfg = PRESETS.tiny;
    const B = 2, T = 5;
    const model = await GPT2.create(rt, cfg, { B, T, seed: 42, matmul: { impl } });
    try {
      randomiseWeights(model, 5); // larger than GPT-2's init: every path carries signal
      const { tokens, targets } = batch(cfg, B * T, 9);
      tokens[3] = tokens[7]; // a repeated token: its wte gradient sums two rows
      const loss = await model.forwardBackward(tokens, targets);
      const params = await refParamsFrom(model);
      const ref = gpt2Reference(cfg, params, tokens, targets, B, T, true);
      ok(Math.abs(loss - ref.loss) / ref.loss < 1e-5, `loss ${loss} vs reference ${ref.loss}`);
      let worst = 0;
      for (const t of model.layout.tensors) {
        const got = await model.readTensor(t.name, true);
        const want = ref.grads!.get(t.name)!;
        const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        let err = 0;
        for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
        worst = Math.max(worst, err / scale);
        assertAllClose(got, want, { rtol: 1e-4, atol: 1e-5 * scale, label: `grad ${t.name}` });
      }
      ok(worst < 1e-4, `worst gradient error relative to the tensor's max: ${worst}`);
      // Forward alone gives the same loss and logits that match the reference.
      const loss2 = await model.forward(tokens, targets);
      equal(loss2, loss);
      const logits = await model.readLogits();
      const scale = ref.logits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assertAllClose(logits, ref.logits, { rtol: 1e-4, atol: 1e-5 * scale, label: "logits" });
    } finally {
      model.destroy();
    }
  });
}

Deno.test("float64 reference gradients match central finite differences", () => {
  const cfg: GPT2Config = { nLayer: 2, nHead: 2, nEmbd: 8, nCtx: 8, vocabSize: 11 };
  const B = 2, T = 4;
  const u = rng(3);
  const params: RefParams = new Map();
  for (const t of parameterLayout(cfg).tensors) {
    const n = t.name === "wte.weight" ? cfg.vocabSize * cfg.nEmbd : t.size;
    const isLnW = /ln_\d\.weight|ln_f\.weight/.test(t.name);
    params.set(t.name, Float64Array.from({ length: n }, () => (isLnW ? 1 : 0) + (u() - 0.5)));
  }
  const { tokens, targets } = batch(cfg, B * T, 4);
  const ref = gpt2Reference(cfg, params, tokens, targets, B, T, true);
  const eps = 1e-6;
  let checked = 0;
  for (const [name, p] of params) {
    const g = ref.grads!.get(name)!;
    // A few elements of every tensor, including ones with the largest gradient.
    const argmax = g.reduce((bi, v, i) => (Math.abs(v) > Math.abs(g[bi]) ? i : bi), 0);
    for (const i of [0, argmax, Math.floor(u() * p.length)]) {
      const keep = p[i];
      p[i] = keep + eps;
      const up = gpt2Reference(cfg, params, tokens, targets, B, T).loss;
      p[i] = keep - eps;
      const down = gpt2Reference(cfg, params, tokens, targets, B, T).loss;
      p[i] = keep;
      const fd = (up - down) / (2 * eps);
      const err = Math.abs(fd - g[i]);
      ok(err <= 1e-7 + 1e-5 * Math.abs(g[i]), `${name}[${i}]: analytic ${g[i]}, numeric ${fd}`);
      checked++;
    }
  }
  ok(checked >= 3 * (2 + 12 * 2 + 2));
});

gpuTest("a randomly initialised GPT-2 starts at a loss near ln(50257) = 10.82", async (rt) => {
  const cfg: GPT2Config = { nLayer: 2, nHead: 4, nEmbd: 64, nCtx: 64, vocabSize: 50257 };
  const before = rt.arena.report().current.total;
  const model = await GPT2.create(rt, cfg, { B: 2, T: 32, seed: 1 });
  try {
    const { tokens, targets } = batch(cfg, 64, 2);
    const loss = await model.forward(tokens, targets);
    ok(Math.abs(loss - Math.log(50257)) < 0.1, `first loss ${loss}`);
    // Seeded: the same seed gives the same parameters.
    const again = await GPT2.create(rt, cfg, { B: 2, T: 32, seed: 1 });
    try {
      equal(await again.forward(tokens, targets), loss);
    } finally {
      again.destroy();
    }
  } finally {
    model.destroy();
  }
  equal(rt.arena.report().current.total, before, "destroy frees everything the model made");
});

gpuTest("logits in chunks of rows: same loss and gradients, logits never whole", async (rt) => {
  const cfg: GPT2Config = { nLayer: 1, nHead: 2, nEmbd: 16, nCtx: 128, vocabSize: 50257 };
  const B = 2, T = 100; // 200 rows: chunks of 64, 64, 64 and 8
  const whole = await GPT2.create(rt, cfg, { B, T, seed: 4 });
  const chunked = await GPT2.create(rt, cfg, { B, T, seed: 4, logitsChunkRows: 64 });
  try {
    const { tokens, targets } = batch(cfg, B * T, 6);
    const a = await whole.forwardBackward(tokens, targets);
    const b = await chunked.forwardBackward(tokens, targets);
    ok(Math.abs(a - b) < 1e-6 * a, `loss ${a} vs ${b}`);
    for (const name of ["wte.weight", "ln_f.weight", "h.0.attn.c_attn.weight", "wpe.weight"]) {
      assertAllClose(await chunked.readTensor(name, true), await whole.readTensor(name, true), {
        rtol: 1e-4,
        atol: 1e-7,
        label: name,
      });
    }
    // Forward only: the last chunk's logits are kept and match.
    await whole.forward(tokens, targets);
    await chunked.forward(tokens, targets);
    assertAllClose(await chunked.readLogits(192, 8), await whole.readLogits(192, 8), {
      rtol: 1e-5,
      atol: 1e-6,
    });
    let err: unknown;
    try {
      await chunked.readLogits(0, 1);
    } catch (e) {
      err = e;
    }
    ok(err instanceof RangeError && /only rows 192\.\.200 are/.test(err.message), String(err));
    const bytes = (m: GPT2) => m.rt.arena.report().buffers.filter((x) => x.label === "logits");
    ok(
      bytes(chunked).some((x) => x.bytes === 64 * 50304 * 4),
      "the chunked model's logits hold 64 rows",
    );
  } finally {
    whole.destroy();
    chunked.destroy();
  }
});

gpuTest("recompute mlp and block give bit-identical losses and gradients", async (rt) => {
  const cfg: GPT2Config = { nLayer: 3, nHead: 2, nEmbd: 16, nCtx: 32, vocabSize: 50257 };
  const { tokens, targets } = batch(cfg, 2 * 20, 8);
  const results: { loss: number; grads: Float32Array[]; act: number }[] = [];
  for (const recompute of ["none", "mlp", "block"] as const) {
    const before = rt.arena.report().current.activations;
    const m = await GPT2.create(rt, cfg, { B: 2, T: 20, seed: 9, recompute });
    try {
      const act = rt.arena.report().current.activations - before;
      const loss = await m.forwardBackward(tokens, targets);
      const grads = [];
      for (const t of m.layout.tensors) grads.push(await m.readTensor(t.name, true));
      results.push({ loss, grads, act });
    } finally {
      m.destroy();
    }
  }
  for (const r of results.slice(1)) {
    equal(r.loss, results[0].loss);
    r.grads.forEach((g, i) => deepEqual(g, results[0].grads[i]));
  }
  ok(
    results[1].act < results[0].act && results[2].act < results[1].act,
    JSON.stringify(results.map((r) => r.act)),
  );
});

/** A setting of the memory plan test: recomputation, optimizer and precision. */
type PlanSetting = {
  recompute: "none" | "block";
  optimizer: "adamw" | "adamw8bit" | "adamw4bit";
  precision: "fp32" | "fp16";
};

/** The plan's categories equal what the arena allocates, for each setting. */
async function checkPlan(rt: Runtime, settings: PlanSetting[]) {
  const { planMemory } = await import("../src/train/memory_plan.ts");
  const { AdamW } = await import("../src/optim/adamw.ts");
  const { LowBitAdamW } = await import("../src/optim/lowbit.ts");
  const cfg: GPT2Config = { nLayer: 2, nHead: 2, nEmbd: 64, nCtx: 64, vocabSize: 50257 };
  for (const { recompute, optimizer, precision } of settings) {
    const o = { B: 2, T: 48, recompute, optimizer, logitsChunkRows: 64, precision };
    const before = rt.arena.report().current;
    const m = await GPT2.create(rt, cfg, { ...o, seed: 1 });
    const opt = optimizer === "adamw"
      ? await AdamW.create(rt, m.layout, m)
      : await LowBitAdamW.create(rt, m.layout, m, { bits: optimizer === "adamw8bit" ? 8 : 4 });
    try {
      const now = rt.arena.report().current;
      const plan = planMemory(cfg, o).bytes;
      for (const k of ["parameters", "gradients", "optimizer", "activations"] as const) {
        equal(now[k] - before[k], plan[k], `${recompute} ${optimizer} ${precision} ${k}`);
      }
      // scratch also holds the dispatches' small uniform buffers, which the plan leaves out
      const extra = now.scratch - before.scratch - plan.scratch;
      ok(extra >= 0 && extra < 1 << 20, `scratch differs by ${extra} bytes`);
    } finally {
      opt.destroy();
      m.destroy();
    }
  }
}

gpuTest("the memory plan agrees with what the arena allocates", async (rt) => {
  const settings: PlanSetting[] = [];
  for (const recompute of ["none", "block"] as const) {
    for (const optimizer of ["adamw", "adamw8bit", "adamw4bit"] as const) {
      settings.push({ recompute, optimizer, precision: "fp32" });
    }
  }
  await checkPlan(rt, settings);
});

gpuTest({
  name: "the memory plan agrees with what the arena allocates, fp16",
  needs: "shader-f16",
}, async (rt) => {
  await checkPlan(rt, [
    { recompute: "none", optimizer: "adamw", precision: "fp16" },
    { recompute: "block", optimizer: "adamw4bit", precision: "fp16" },
  ]);
});

Deno.test("memory plan arithmetic: gpt2-medium-4096 at T=4096 fits 8 GiB with 4-bit AdamW", async () => {
  const { planMemory } = await import("../src/train/memory_plan.ts");
  const cfg = PRESETS["gpt2-medium-4096"];
  const GiB = 2 ** 30;
  const plan = (
    recompute: "none" | "mlp" | "block",
    optimizer: "adamw" | "adamw8bit" | "adamw4bit",
  ) => planMemory(cfg, { B: 1, T: 4096, recompute, optimizer }).bytes;
  const p = plan("block", "adamw4bit");
  // parameters: the flat buffer, fp32, vocabulary padded to 50304 and tensors 256-byte aligned
  equal(p.parameters, parameterLayout(cfg).totalElements * 4);
  equal(p.gradients, p.parameters);
  ok(
    p.optimizer / parameterCount(cfg) > 1 && p.optimizer / parameterCount(cfg) < 1.1,
    "4-bit: ~1 byte/param",
  );
  ok(plan("none", "adamw").optimizer / parameterCount(cfg) > 7.99, "fp32: 8 bytes/param");
  ok(p.total <= 8 * GiB, `4-bit + block: ${(p.total / GiB).toFixed(2)} GiB`);
  // Recomputation shrinks activations; the per-layer residual stream is what block keeps.
  const none = plan("none", "adamw4bit"), mlp = plan("mlp", "adamw4bit");
  ok(none.activations > mlp.activations && mlp.activations > p.activations);
  // none keeps 18 C-wide rows per token per layer plus 4 LayerNorm stats and NH lse values;
  // block keeps the residual (1 of the 18) per layer and one shared copy of the rest.
  const row = 4096 * 1024 * 4, small = (4 + 16) * 4096 * 4;
  equal(none.activations - p.activations, 25 * (17 * row + small));
});
