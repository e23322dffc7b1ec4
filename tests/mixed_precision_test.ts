/**
 * Mixed precision (fp16): the kernels' f16 variants against float64 on the
 * same f16-rounded inputs, the fp16 model against the float64 model, and the
 * fallback to fp32 on devices without shader-f16.
 */

import { equal, ok } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { type DType, roundToF16 } from "../src/gpu/dtype.ts";
import { createRuntime, readValues, type Runtime } from "../src/gpu/runtime.ts";
import { type GPT2Config, PRESETS } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { matmulBiasBackward } from "../src/model/ops/matmul.ts";
import {
  castToHalf,
  flashAttentionBackward,
  flashAttentionForward,
  geluBackward,
  geluForward,
  layernormForward,
} from "../src/model/ops/mod.ts";
import { Decoder } from "../src/model/decode.ts";
import {
  attention,
  attentionBack,
  gelu,
  geluGrad,
  gpt2Reference,
  layernorm,
  type RefParams,
} from "./reference/gpt2.ts";
import { assertAllClose, gpuTest, randn, randomiseWeights, rng, uploadAs } from "./_harness.ts";

/** f16 results: inputs are exact (rounded first), outputs are rounded once. */
const half = { rtol: 2e-3, atol: 2e-3 };
const f64 = (x: ArrayLike<number>) => Float64Array.from(x);

/** Buffers of a test, typed, freed at its end. */
function pool(rt: Runtime) {
  const made: GPUBuffer[] = [];
  return {
    /** `data` stored as `dtype`; returns the buffer and the values it holds. */
    data(label: string, d: Float32Array<ArrayBuffer>, dtype: DType = "f32") {
      const held = dtype === "f16" ? roundToF16(d) : d;
      const b = uploadAs(rt, label, held, dtype);
      made.push(b);
      return { b, held };
    },
    empty(label: string, n: number, dtype: DType = "f32") {
      const b = uploadAs(rt, label, new Float32Array(n), dtype);
      made.push(b);
      return b;
    },
    read: (b: GPUBuffer, n: number) => readValues(rt.device, b, 0, n),
    free: () => made.forEach((b) => rt.arena.free(b)),
  };
}

const f16Test = (name: string, fn: (rt: Runtime) => Promise<void>) =>
  gpuTest({ name, needs: "shader-f16" }, fn);

f16Test("f16 layernorm, gelu and bias-gradient kernels match float64", async (rt) => {
  const p = pool(rt);
  try {
    // layernorm: f32 in, f16 out (the matmul's input)
    const N = 37, C = 20;
    const x = p.data("x", randn(N * C, 1, 2)), w = p.data("w", randn(C, 2));
    const bb = p.data("b", randn(C, 3));
    const out = p.empty("out", N * C, "f16");
    const mean = p.empty("mean", N), rstd = p.empty("rstd", N);
    // gelu: f16 in and out; backward f16 in, f32 dout, f16 dinp
    const M = 203;
    const gx = randn(M, 4, 3);
    gx[0] = 30;
    gx[1] = -30;
    const g = p.data("gx", gx, "f16"), gd = p.data("gd", randn(M, 5), "f32");
    const gout = p.empty("gout", M, "f16"), gdin = p.empty("gdin", M, "f16");
    // bias gradient from an f16 dout
    const R = 29, K = 12;
    const db0 = randn(K, 7);
    const dout = p.data("dout", randn(R * K, 6), "f16"), db = p.data("db", db0);
    await runDispatches(rt.device, [
      await layernormForward(rt, { N, C }, {
        inp: x.b,
        weight: { buffer: w.b, offset: 0, size: C },
        bias: { buffer: bb.b, offset: 0, size: C },
        out,
        mean,
        rstd,
      }),
      await geluForward(rt, M, { inp: g.b, out: gout }),
      await geluBackward(rt, M, { inp: g.b, dout: gd.b, dinp: gdin }),
      ...await matmulBiasBackward(rt, { M: R, N: K }, {
        dout: { buffer: dout.b },
        dbias: { buffer: db.b },
      }),
    ]);
    const ref = layernorm(f64(x.held), f64(w.held), f64(bb.held), N, C);
    assertAllClose(await p.read(out, N * C), ref.out, { ...half, label: "layernorm out f16" });
    assertAllClose(await p.read(mean, N), ref.mean, { rtol: 1e-5, atol: 1e-5, label: "mean" });
    assertAllClose(await p.read(gout, M), Array.from(g.held, gelu), { ...half, label: "gelu" });
    assertAllClose(
      await p.read(gdin, M),
      Array.from(g.held, (v, i) => geluGrad(v) * gd.held[i]),
      { ...half, label: "gelu backward" },
    );
    const rdb = f64(db0);
    for (let r = 0; r < R; r++) for (let k = 0; k < K; k++) rdb[k] += dout.held[r * K + k];
    assertAllClose(await p.read(db.b, K), rdb, { rtol: 1e-5, atol: 1e-5, label: "dbias" });
  } finally {
    p.free();
  }
});

f16Test("f16 flash attention matches float64, forward and backward", async (rt) => {
  const B = 2, T = 19, NH = 2, C = 16;
  const p = pool(rt);
  try {
    const qkv = p.data("qkv", randn(B * T * 3 * C, 1, 1.5), "f16");
    const dout = p.data("dout", randn(B * T * C, 2), "f32");
    const out = p.empty("out", B * T * C, "f16"), lse = p.empty("lse", B * NH * T);
    const delta = p.empty("delta", B * NH * T), dqkv = p.empty("dqkv", B * T * 3 * C, "f16");
    const s = { B, T, C, NH };
    await runDispatches(rt.device, [
      ...await flashAttentionForward(rt, s, { qkv: qkv.b, out, lse }),
      ...await flashAttentionBackward(rt, s, {
        qkv: qkv.b,
        out,
        lse,
        dout: dout.b,
        delta,
        dqkv,
      }),
    ]);
    const ref = attention(f64(qkv.held), B, T, C, NH);
    assertAllClose(await p.read(out, B * T * C), ref.out, { ...half, label: "out" });
    // The backward reads the f16 out (for D = dout . out): a little more error.
    const rd = attentionBack(f64(dout.held), f64(qkv.held), ref.att, B, T, C, NH);
    assertAllClose(await p.read(dqkv, B * T * 3 * C), rd, {
      rtol: 5e-3,
      atol: 5e-3,
      label: "dqkv",
    });
  } finally {
    p.free();
  }
});

f16Test("the f16 copy of parameters is exact rounding, in binding-sized chunks", async (rt) => {
  const p = pool(rt);
  try {
    const n = 1000;
    const src = randn(n, 9, 10);
    src[3] = 1e6; // beyond f16: Inf, as PyTorch's .half() gives
    const s = p.data("src", src), dst = p.empty("dst", n, "f16");
    const d = await castToHalf(rt, n, { src: s.b, dst }, 512 * 4);
    equal(d.length, 2);
    await runDispatches(rt.device, d);
    const got = await p.read(dst, n);
    assertAllClose(got, roundToF16(src), { rtol: 0, atol: 0, label: "f16 copy" });
    equal(got[3], Infinity);
  } finally {
    p.free();
  }
});

f16Test("fp16 GPT-2: loss and every gradient close to float64, loss scale undone", async (rt) => {
  const cfg = PRESETS.tiny;
  const B = 2, T = 5, scale = 1024;
  const model = await GPT2.create(rt, cfg, { B, T, precision: "fp16" });
  try {
    equal(model.precision, "fp16");
    randomiseWeights(model, 5);
    const u = rng(9);
    const tokens = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
    const targets = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
    model.setLossScale(scale);
    const loss = await model.forwardBackward(tokens, targets);
    const params: RefParams = new Map();
    for (const t of model.layout.tensors) {
      params.set(t.name, f64(await model.readTensor(t.name)));
    }
    const ref = gpt2Reference(cfg, params, tokens, targets, B, T, true);
    ok(Math.abs(loss - ref.loss) / ref.loss < 5e-3, `loss ${loss} vs reference ${ref.loss}`);
    let worst = 0;
    for (const t of model.layout.tensors) {
      const got = (await model.readTensor(t.name, true)).map((g) => g / scale);
      const want = ref.grads!.get(t.name)!;
      const max = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
      worst = Math.max(worst, err / max);
    }
    // fp32 reaches 1e-4 (tests/gpt2_test.ts); fp16 measured 1.2e-3 (2^-11 per f16 rounding).
    ok(worst < 5e-3, `worst gradient error relative to the tensor's max: ${worst}`);
    ok(worst > 1e-6, `fp16 should not match float64 exactly (${worst}): is f16 in use?`);
    // Writing a parameter refreshes the f16 copy before the next pass.
    const before = await model.forward(tokens, targets);
    model.writeTensor("ln_f.bias", new Float32Array(cfg.nEmbd).fill(0.5));
    model.writeTensor("wte.weight", new Float32Array(cfg.vocabSize * cfg.nEmbd));
    const after = await model.forward(tokens, targets);
    ok(Math.abs(after - Math.log(cfg.vocabSize)) < 1e-3, `zero wte gives uniform logits: ${after}`);
    ok(before !== after);
  } finally {
    model.destroy();
  }
});

f16Test("fp16 decoding with the KV cache matches the fp16 full forward", async (rt) => {
  const cfg: GPT2Config = { ...PRESETS.tiny, nCtx: 12 };
  const model = await GPT2.create(rt, cfg, { B: 1, T: 12, precision: "fp16", inference: true });
  const dec = await Decoder.create(rt, model, 12);
  try {
    randomiseWeights(model, 3);
    const tokens = [5, 17, 3, 99, 42, 7];
    let logits = await dec.start(tokens.slice(0, 3));
    for (let i = 3; i <= tokens.length; i++) {
      const window = [...tokens.slice(0, i), ...new Array(12 - i).fill(0)];
      await model.forward(window);
      const full = await model.readLogits(i - 1, 1);
      assertAllClose(logits, full, { rtol: 1e-2, atol: 1e-2, label: `logits at ${i}` });
      if (i < tokens.length) logits = await dec.next(tokens[i]);
    }
  } finally {
    dec.destroy();
    model.destroy();
  }
});

gpuTest("fp16 falls back to fp32 on a device without shader-f16", async () => {
  const rt = await createRuntime({ withoutFeatures: ["shader-f16"] });
  try {
    equal(rt.gpu.features.shaderF16, false);
    const model = await GPT2.create(rt, PRESETS.tiny, { B: 1, T: 4, precision: "fp16" });
    equal(model.precision, "fp32");
    const loss = await model.forwardBackward([1, 2, 3, 4], [2, 3, 4, 5]);
    ok(Math.abs(loss - Math.log(PRESETS.tiny.vocabSize)) < 0.1, `loss ${loss}`);
    model.destroy();
  } finally {
    rt.device.destroy();
  }
});
