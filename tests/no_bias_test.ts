// nanoGPT's bias=False (--no-bias): Linear and LayerNorm layers without biases. The kernels'
// bias-less variants and a tiny model against the float64 reference.
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { layernormBackward, layernormForward } from "../src/model/ops/mod.ts";
import { layernorm, layernormBack } from "./reference/gpt2.ts";
import { assertAllClose, gpuTest, randn } from "./_harness.ts";

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
