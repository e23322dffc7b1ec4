// nanoGPT's bias=False (--no-bias): Linear and LayerNorm layers without biases. The kernels'
// bias-less variants and a tiny model against the float64 reference.
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { type GPT2Config, parameterCount, PRESETS } from "../src/model/config.ts";
import { Decoder } from "../src/model/decode.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { layernormBackward, layernormForward } from "../src/model/ops/mod.ts";
import { exportTensors, loadTensors } from "../src/model/weights.ts";
import { loadCheckpoint } from "../src/io/checkpoint.ts";
import { decodeLlmc } from "../src/io/llmc.ts";
import { encodeSafetensors, parseSafetensors, tensorF32 } from "../src/io/safetensors.ts";
import { train } from "../src/train/trainer.ts";
import { parseTrainArgs } from "../tasks/train.ts";
import { main as exportMain } from "../tasks/export.ts";
import { gpt2Reference, layernorm, layernormBack, type RefParams } from "./reference/gpt2.ts";
import { assertAllClose, gpuTest, randn, randomiseWeights, rng } from "./_harness.ts";
import { SMALL_MODEL, syntheticText, testTrainConfig } from "./_train_config.ts";

const f64 = (x: ArrayLike<number>) => Float64Array.from(x);

gpuTest("layernorm without a bias: forward and backward match float64", async (rt) => {
  const N = 37, C = 20, tol = { rtol: 1e-5, atol: 1e-5 };
  const x = randn(N * C, 1, 2), w = randn(C, 2), dout = randn(N * C, 4);
  const dinp0 = randn(N * C, 5), dw0 = randn(C, 6);
  const made: GPUBuffer[] = [];
  const data = (label: string, d: Float32Array<ArrayBuffer>) => {
    const b = rt.arena.allocWith(label, "scratch", d);
    made.push(b);
    return b;
  };
  const empty = (label: string, n: number) => data(label, new Float32Array(n));
  try {
    const X = data("x", x), W = data("w", w), D = data("dout", dout);
    const out = empty("out", N * C), mean = empty("mean", N), rstd = empty("rstd", N);
    const dinp = data("dinp", dinp0), dw = data("dw", dw0);
    const weight = { buffer: W, offset: 0, size: C }, dweight = { buffer: dw, offset: 0, size: C };
    const fwd = await layernormForward(rt, { N, C }, { inp: X, weight, out, mean, rstd });
    const bwd = await layernormBackward(rt, { N, C }, {
      inp: X,
      weight,
      mean,
      rstd,
      dout: D,
      dinp,
      dweight,
    });
    await runDispatches(rt.device, [fwd, ...bwd]);
    const ref = layernorm(f64(x), f64(w), null, N, C);
    const read = (b: GPUBuffer, n: number) => readF32(rt.device, b, 0, n);
    assertAllClose(await read(out, N * C), ref.out, { ...tol, label: "out" });
    const rdinp = f64(dinp0), rdw = f64(dw0);
    layernormBack(f64(dout), f64(x), f64(w), ref.mean, ref.rstd, rdinp, rdw, null, N, C);
    assertAllClose(await read(dinp, N * C), rdinp, { ...tol, label: "dinp" });
    assertAllClose(await read(dw, C), rdw, { ...tol, label: "dweight" });
  } finally {
    made.forEach((b) => rt.arena.free(b));
  }
});

gpuTest("a tiny model without biases: loss and every gradient match float64", async (rt) => {
  const cfg: GPT2Config = { ...PRESETS.tiny, bias: false };
  const B = 2, T = 5;
  const model = await GPT2.create(rt, cfg, { B, T, seed: 42 });
  const withBias = await GPT2.create(rt, PRESETS.tiny, { B, T, seed: 42 });
  try {
    // No bias is allocated: the layout holds every other tensor, and only those.
    const biases = withBias.layout.tensors.filter((t) => t.name.endsWith(".bias"));
    equal(model.layout.tensors.filter((t) => t.name.endsWith(".bias")).length, 0);
    equal(model.layout.tensors.length, withBias.layout.tensors.length - biases.length);
    equal(
      parameterCount(cfg),
      parameterCount(PRESETS.tiny) - biases.reduce((n, t) => n + t.size, 0),
    );
    // No bias gradient dispatches: one per linear layer fewer (4 per block).
    equal(model.dispatchCount, withBias.dispatchCount - 4 * cfg.nLayer);

    randomiseWeights(model, 5);
    const u = rng(9);
    const tokens = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
    const targets = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
    const loss = await model.forwardBackward(tokens, targets);
    const params: RefParams = new Map();
    for (const t of model.layout.tensors) {
      params.set(t.name, Float64Array.from(await model.readTensor(t.name)));
    }
    const ref = gpt2Reference(cfg, params, tokens, targets, B, T, true);
    ok(Math.abs(loss - ref.loss) / ref.loss < 1e-5, `loss ${loss} vs reference ${ref.loss}`);
    for (const t of model.layout.tensors) {
      const want = ref.grads!.get(t.name)!;
      const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assertAllClose(await model.readTensor(t.name, true), want, {
        rtol: 1e-4,
        atol: 1e-5 * scale,
        label: `grad ${t.name}`,
      });
    }
    // A graph of the biased config cannot read these weights.
    await rejects(
      () => GPT2.create(rt, PRESETS.tiny, { B: 1, T: 4, inference: true, sharedParams: model }),
      /Shared weights are of another model/,
    );
    // The one-token decoder (its buffers from the same spec) agrees with the full forward.
    const full = await GPT2.create(rt, cfg, { B: 1, T: 8, inference: true, sharedParams: model });
    const dec = await Decoder.create(rt, model, 8);
    try {
      const prompt = tokens.slice(0, 6);
      await full.forward([...prompt, 0, 0]);
      assertAllClose(await dec.start(prompt), await full.readLogits(5, 1), {
        rtol: 1e-4,
        atol: 1e-4,
        label: "decoder logits",
      });
    } finally {
      dec.destroy();
      full.destroy();
    }
    // Exports carry every GPT-2 tensor: the biases as zeros.
    const out = await exportTensors(model);
    equal(out.length, withBias.layout.tensors.length);
    for (const t of out.filter((t) => t.name.endsWith(".bias"))) {
      ok(t.data.every((x) => x === 0), t.name);
    }
  } finally {
    model.destroy();
    withBias.destroy();
  }
});

gpuTest(
  "--no-bias trains, saves, resumes bit for bit and exports zero biases; non-zero biases are refused",
  async (rt) => {
    const parsed = await parseTrainArgs(["--no-bias"]);
    ok(parsed !== "help" && parsed.noBias === true, "--no-bias sets noBias");
    const dir = await Deno.makeTempDir();
    const quiet = { logger: { log: () => {} } };
    try {
      const text = `${dir}/text.txt`;
      await Deno.writeTextFile(text, syntheticText(3000, 1));
      const config = (out: string, over = {}) =>
        testTrainConfig(`${dir}/${out}`, text, { noBias: true, steps: 4, ...over });
      const full = await train(rt, config("full"), quiet);
      const part = await train(rt, config("part"), { ...quiet, stopAfter: (s) => s === 2 });
      const rest = await train(rt, config("part", { resume: part.checkpoint }), quiet);
      deepEqual([...part.losses, ...rest.losses], full.losses); // bit for bit
      ok(full.losses[3] < full.losses[0], `loss ${full.losses}`);

      // The checkpoint says bias: false and holds zero biases; so does its HF export.
      const ck = await loadCheckpoint(full.checkpoint);
      equal(ck.config.bias, false);
      await exportMain([full.checkpoint, "--hf", `${dir}/hf`]);
      const hf = parseSafetensors(await Deno.readFile(`${dir}/hf/model.safetensors`), "hf");
      const json = JSON.parse(await Deno.readTextFile(`${dir}/hf/config.json`));
      equal(json.bias, false);
      const names = [...hf.tensors.keys()].filter((n) => n.endsWith(".bias"));
      equal(names.length, 6 * SMALL_MODEL.nLayer + 1); // six per block and ln_f.bias
      for (const n of names) ok(tensorF32(hf, n).every((x) => x === 0), n);
      // llm.c's format has biases too: zeros, and the same weights.
      await exportMain([full.checkpoint, "--llmc", `${dir}/m.bin`]);
      const llmc = decodeLlmc(await Deno.readFile(`${dir}/m.bin`), "m.bin");
      const biases = llmc.tensors.filter((t) => t.name.endsWith(".bias"));
      equal(biases.length, names.length);
      for (const t of biases) ok(t.data.every((x) => x === 0), `llm.c ${t.name}`);
      const fc = llmc.tensors.find((t) => t.name === "h.1.mlp.c_fc.weight")!;
      deepEqual(fc.data, tensorF32(hf, "h.1.mlp.c_fc.weight"));

      // A checkpoint with a non-zero bias cannot load into a model without biases.
      const tensors = [...hf.tensors.keys()].map((name) => ({
        name,
        shape: hf.tensors.get(name)!.shape,
        data: name === "h.1.mlp.c_fc.bias"
          ? tensorF32(hf, name).map((_, i) => (i === 3 ? 0.5 : 0))
          : tensorF32(hf, name),
      }));
      const biased = parseSafetensors(encodeSafetensors(tensors), "biased.safetensors");
      const model = await GPT2.create(rt, ck.config, { B: 1, T: 8, inference: true });
      try {
        throws(
          () => loadTensors(biased, model),
          /tensor "h\.1\.mlp\.c_fc\.bias" is non-zero \(max \|x\| 0\.5\).*drop --no-bias/,
        );
        loadTensors(hf, model); // zero biases load
      } finally {
        model.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
