// Kernels at the shapes users train, checked on sampled rows against float64: GPT-2 124M's
// attention (T=1024, NH=12, C=768) and gpt2-medium-4096's (T=4096, NH=16, C=1024). At these
// sizes a kernel whose loops grow with T runs past llvmpipe's silent per-invocation loop
// budget (tests/loop_budget_test.ts), so these are the tests that catch it.
import { equal, ok } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readValues } from "../src/gpu/runtime.ts";
import type { DType } from "../src/gpu/dtype.ts";
import {
  attentionDecode,
  decodePartialBytes,
  encoderBackward,
  flashAttentionBackward,
  flashAttentionForward,
  flashChunkRows,
  type FlashRows,
  flashRows,
  layernormBackward,
  layernormForward,
  setDecodePosition,
} from "../src/model/ops/mod.ts";
import { matmulBiasBackward } from "../src/model/ops/matmul.ts";
import { type GPT2Config, parameterCount, PRESETS } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { gradNormDispatches, gradNormPartials } from "../src/train/grad_norm.ts";
import { gpt2Reference, layernorm, layernormBack, type RefParams } from "./reference/gpt2.ts";
import { headDkv, headDq, headForward } from "./reference/attention_rows.ts";
import { assertAllClose, gpuTest, randn, rng, uploadAs } from "./_harness.ts";

/** Rows worth checking at T: the edges, both sides of each tile and split-KV chunk, the end. */
function sampleRows(T: number, HS: number, perLane: FlashRows, chunk?: number): number[] {
  const kc = chunk
    ? [chunk, 2 * chunk]
    : [flashChunkRows("forward", HS, perLane), flashChunkRows("dkv", HS, perLane)];
  const rows = [0, 1, 31, 32, 63, 64, T >> 1, T - 2, T - 1, ...kc.flatMap((k) => [k - 1, k])];
  return [...new Set(rows.filter((t) => t >= 0 && t < T))].sort((a, b) => a - b);
}

async function checkAttention(
  rt: Parameters<Parameters<typeof gpuTest>[1]>[0],
  s: { B: number; T: number; NH: number; C: number; chunkRows?: number; rows?: FlashRows },
  dtype: DType,
  tol: { rtol: number; atol: number },
) {
  const { B, T, NH, C } = s, HS = C / NH;
  // q|k|v scaled up so that attention is far from uniform (random init hides bugs there).
  const qkvData = randn(B * T * 3 * C, T + NH, 1.5), doutData = randn(B * T * C, T + 7);
  const qkv = uploadAs(rt, "qkv", qkvData, dtype);
  const dout = uploadAs(rt, "dout", doutData);
  const out = rt.arena.alloc(
    "out",
    "scratch",
    B * T * C * (dtype === "f16" ? 2 : 4),
    undefined,
    dtype,
  );
  const lse = rt.arena.alloc("lse", "scratch", B * NH * T * 4);
  const delta = rt.arena.alloc("delta", "scratch", B * NH * T * 4);
  const dqkv = rt.arena.alloc(
    "dqkv",
    "scratch",
    B * T * 3 * C * (dtype === "f16" ? 2 : 4),
    undefined,
    dtype,
  );
  try {
    const d = [
      ...await flashAttentionForward(rt, s, { qkv, out, lse }),
      ...await flashAttentionBackward(rt, s, { qkv, out, lse, dout, delta, dqkv }),
    ];
    await runDispatches(rt.device, d);
    const [o, l, g] = await Promise.all([
      readValues(rt.device, out),
      readValues(rt.device, lse),
      readValues(rt.device, dqkv),
    ]);
    // The reference sees the inputs as the kernel does (rounded to f16 when f16).
    const held = dtype === "f16" ? Float32Array.from(new Float16Array(qkvData)) : qkvData;
    const rows = sampleRows(T, HS, s.rows ?? flashRows(rt, T), s.chunkRows);
    for (const [b, h] of [[0, 0], [B - 1, NH - 1]]) {
      const ref = headForward(held, doutData, s, b, h);
      const tag = `B${B} T${T} NH${NH} C${C} ${dtype} chunk ${
        s.chunkRows ?? "default"
      } b${b} h${h}`;
      const pick = (a: ArrayLike<number>, base: (t: number) => number) =>
        rows.flatMap((t) => Array.from({ length: HS }, (_, i) => a[base(t) + i]));
      assertAllClose(
        pick(o, (t) => (b * T + t) * C + h * HS),
        pick(ref.out, (t) => t * HS),
        { ...tol, label: `out rows ${rows} ${tag}` },
      );
      assertAllClose(
        rows.map((t) => l[(b * NH + h) * T + t]),
        rows.map((t) => ref.lse[t]),
        { rtol: 1e-5, atol: tol.atol, label: `lse ${tag}` },
      );
      const dq = rows.flatMap((t) => Array.from(headDq(held, doutData, s, ref, b, h, t)));
      assertAllClose(pick(g, (t) => (b * T + t) * 3 * C + h * HS), dq, {
        ...tol,
        label: `dq rows ${rows} ${tag}`,
      });
      const kv = rows.map((t) => headDkv(held, doutData, s, ref, b, h, t));
      assertAllClose(
        pick(g, (t) => (b * T + t) * 3 * C + C + h * HS),
        kv.flatMap((x) => Array.from(x.dk)),
        { ...tol, label: `dk rows ${rows} ${tag}` },
      );
      assertAllClose(
        pick(g, (t) => (b * T + t) * 3 * C + 2 * C + h * HS),
        kv.flatMap((x) => Array.from(x.dv)),
        { ...tol, label: `dv rows ${rows} ${tag}` },
      );
    }
  } finally {
    for (const x of [qkv, dout, out, lse, delta, dqkv]) rt.arena.free(x);
  }
}

gpuTest(
  "flash attention at GPT-2 124M's shape (T=1024, NH=12, C=768) matches float64",
  (rt) => checkAttention(rt, { B: 2, T: 1024, NH: 12, C: 768 }, "f32", { rtol: 1e-3, atol: 2e-5 }),
);

gpuTest(
  "flash attention with 1 row per invocation (GPUs' variant) at T=1024 matches float64",
  (rt) =>
    checkAttention(rt, { B: 1, T: 1024, NH: 12, C: 768, rows: 1 }, "f32", {
      rtol: 1e-3,
      atol: 2e-5,
    }),
);

gpuTest(
  "flash attention split into 256-row chunks (T=1024, NH=12, C=768) matches float64",
  // Four forward/dq chunks merged through lse, four dkv chunks summed: the path T > 4096 takes.
  (rt) =>
    checkAttention(rt, { B: 1, T: 1024, NH: 12, C: 768, chunkRows: 256 }, "f32", {
      rtol: 1e-3,
      atol: 2e-5,
    }),
);

gpuTest("flash attention at gpt2-medium-4096's shape (T=4096, NH=16, C=1024) matches float64", (
  rt,
) => checkAttention(rt, { B: 1, T: 4096, NH: 16, C: 1024 }, "f32", { rtol: 1e-3, atol: 2e-5 }));

gpuTest(
  {
    name: "f16 flash attention at T=4096 matches float64 on the f16-rounded inputs",
    needs: "shader-f16",
  },
  (rt) => checkAttention(rt, { B: 1, T: 4096, NH: 16, C: 1024 }, "f16", { rtol: 1e-2, atol: 2e-3 }),
);

// A chunk's max and sum in each reduction form (src/model/ops/reduce.ts).
for (const subgroups of [false, true]) {
  gpuTest(
    "decode attention over a 4096-row cache matches float64 at positions 0 to 4095, " +
      (subgroups ? "subgroup" : "tree") + " reductions",
    async (rt) => {
      if (subgroups && !rt.gpu.features.subgroups) {
        throw new Error(`${rt.gpu.name} grants no subgroups`);
      }
      const maxT = 4096, NH = 16, C = 1024, HS = C / NH;
      const cacheData = randn(maxT * 3 * C, 11, 1.5);
      const cache = uploadAs(rt, "cache", cacheData);
      const q1 = rt.arena.alloc("q1", "scratch", 3 * C * 4);
      const out = rt.arena.alloc("out", "scratch", C * 4);
      const partial = rt.arena.alloc("partial", "scratch", decodePartialBytes({ maxT, C, NH }));
      try {
        const d = await attentionDecode(rt, { maxT, C, NH }, { q1, cache, out, partial }, {
          subgroups,
        });
        equal(d[0].pipeline.label, subgroups ? "attention_decode_sg" : "attention_decode");
        for (const t of [0, 255, 256, 300, 2047, 4095]) {
          // The new token's q|k|v is row t of the cache, as the decoder leaves it.
          rt.device.queue.writeBuffer(q1, 0, cacheData, t * 3 * C, 3 * C);
          setDecodePosition(rt.device.queue, d, t);
          await runDispatches(rt.device, d);
          const want = new Float64Array(C);
          for (let h = 0; h < NH; h++) {
            const s: number[] = [];
            for (let t2 = 0; t2 <= t; t2++) {
              let dot = 0;
              for (let i = 0; i < HS; i++) {
                dot += cacheData[t * 3 * C + h * HS + i] * cacheData[t2 * 3 * C + C + h * HS + i];
              }
              s.push(dot / Math.sqrt(HS));
            }
            const mx = Math.max(...s), e = s.map((x) => Math.exp(x - mx));
            const sum = e.reduce((a, x) => a + x, 0);
            for (let t2 = 0; t2 <= t; t2++) {
              for (let i = 0; i < HS; i++) {
                want[h * HS + i] += (e[t2] / sum) * cacheData[t2 * 3 * C + 2 * C + h * HS + i];
              }
            }
          }
          assertAllClose(await readValues(rt.device, out), want, {
            rtol: 1e-4,
            atol: 1e-5,
            label: `decode out at t=${t}`,
          });
        }
      } finally {
        for (const x of [cache, q1, out, partial]) rt.arena.free(x);
      }
    },
  );
}

// ---------------------------------------------------------------------------
// Reductions over B*T rows, past 65,536 of them (B=16 at T=4096 is 65,536 tokens).

gpuTest("layernorm backward at B*T = 70,000 rows matches float64", async (rt) => {
  const N = 70000, C = 40;
  const x = randn(N * C, 1), w = randn(C, 2), b = randn(C, 3), dout = randn(N * C, 4);
  const buf = (label: string, d: Float32Array<ArrayBuffer>) =>
    rt.arena.allocWith(label, "scratch", d);
  const X = buf("x", x), W = buf("w", w), Bb = buf("b", b), D = buf("dout", dout);
  const made = [X, W, Bb, D];
  const empty = (label: string, n: number) => {
    const g = rt.arena.alloc(label, "scratch", n * 4);
    made.push(g);
    return g;
  };
  const out = empty("out", N * C), mean = empty("mean", N), rstd = empty("rstd", N);
  const dinp = empty("dinp", N * C), dw = empty("dw", C), db = empty("db", C);
  const range = (buffer: GPUBuffer) => ({ buffer, offset: 0, size: C });
  try {
    const fwd = await layernormForward(rt, { N, C }, {
      inp: X,
      weight: range(W),
      bias: range(Bb),
      out,
      mean,
      rstd,
    });
    const bwd = await layernormBackward(rt, { N, C }, {
      inp: X,
      weight: range(W),
      mean,
      rstd,
      dout: D,
      dinp,
      dweight: range(dw),
      dbias: range(db),
    });
    equal(bwd.length, 1 + Math.ceil(N / 32768), "the parameter gradients split the rows");
    await runDispatches(rt.device, [fwd, ...bwd]);
    const ref = layernorm(Float64Array.from(x), Float64Array.from(w), Float64Array.from(b), N, C);
    const rdinp = new Float64Array(N * C), rdw = new Float64Array(C), rdb = new Float64Array(C);
    layernormBack(
      Float64Array.from(dout),
      Float64Array.from(x),
      Float64Array.from(w),
      ref.mean,
      ref.rstd,
      rdinp,
      rdw,
      rdb,
      N,
      C,
    );
    assertAllClose(await readValues(rt.device, dw), rdw, { rtol: 1e-4, atol: 1e-3, label: "dw" });
    assertAllClose(await readValues(rt.device, db), rdb, { rtol: 1e-4, atol: 1e-3, label: "db" });
    const last = await readValues(rt.device, dinp, (N - 1) * C, C);
    assertAllClose(last, rdinp.subarray((N - 1) * C), { rtol: 1e-4, atol: 1e-5, label: "dinp" });
  } finally {
    for (const g of made) rt.arena.free(g);
  }
});

gpuTest("the bias gradient over 270,000 rows matches float64", async (rt) => {
  const M = 270000, N = 32;
  const dout = randn(M * N, 5);
  const D = rt.arena.allocWith("dout", "scratch", dout);
  const db0 = randn(N, 6);
  const Db = rt.arena.allocWith("dbias", "scratch", db0);
  try {
    const d = await matmulBiasBackward(rt, { M, N }, {
      dout: { buffer: D },
      dbias: { buffer: Db },
    });
    equal(d.length, 3, "131072 rows per dispatch");
    await runDispatches(rt.device, d);
    const want = Float64Array.from(db0);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) want[n] += dout[m * N + n];
    assertAllClose(await readValues(rt.device, Db), want, {
      rtol: 1e-4,
      atol: 2e-3,
      label: "dbias",
    });
  } finally {
    rt.arena.free(D);
    rt.arena.free(Db);
  }
});

gpuTest("the wte gradient of one token repeated 70,000 times matches float64", async (rt) => {
  const B = 70, T = 1000, BT = B * T, C = 8, Vp = 128;
  // Every position holds token 5 except a few: one sorted run longer than the loop budget.
  const tokens = new Uint32Array(BT).fill(5);
  tokens[17] = 2;
  tokens[BT - 1] = 9;
  const order = Uint32Array.from(
    Array.from({ length: BT }, (_, i) => i).sort((a, b) => tokens[a] - tokens[b] || a - b),
  );
  const dout = randn(BT * C, 7);
  const Tok = rt.arena.allocWith("tokens", "scratch", tokens);
  const Ord = rt.arena.allocWith("order", "scratch", order);
  const D = rt.arena.allocWith("dout", "scratch", dout);
  const dwte = rt.arena.alloc("dwte", "scratch", Vp * C * 4);
  const dwpe = rt.arena.alloc("dwpe", "scratch", T * C * 4);
  try {
    await runDispatches(
      rt.device,
      await encoderBackward(rt, { BT, T, C, Vp }, {
        tokens: { buffer: Tok, offset: 0, size: BT * 4 },
        order: { buffer: Ord, offset: 0, size: BT * 4 },
        dout: D,
        dwte: { buffer: dwte, offset: 0, size: Vp * C },
        dwpe: { buffer: dwpe, offset: 0, size: T * C },
      }),
    );
    const want = new Float64Array(Vp * C), wpe = new Float64Array(T * C);
    for (let n = 0; n < BT; n++) {
      for (let c = 0; c < C; c++) {
        want[tokens[n] * C + c] += dout[n * C + c];
        wpe[(n % T) * C + c] += dout[n * C + c];
      }
    }
    assertAllClose(await readValues(rt.device, dwte), want, {
      rtol: 1e-4,
      atol: 2e-3,
      label: "dwte",
    });
    assertAllClose(await readValues(rt.device, dwpe), wpe, {
      rtol: 1e-4,
      atol: 1e-4,
      label: "dwpe",
    });
  } finally {
    for (const g of [Tok, Ord, D, dwte, dwpe]) rt.arena.free(g);
  }
});

gpuTest("the gradient norm of a 383M-element buffer (gpt2-medium-4096) matches float64", async (
  rt,
) => {
  // gpt2-medium-4096's parameter count: ~94K partial sums for one finish invocation before.
  const n = parameterCount(PRESETS["gpt2-medium-4096"]);
  const per = rt.gpu.limits.maxStorageBufferBindingSize / 4 / 4096 * 4096; // whole blocks
  const ranges: { offset: number; size: number }[] = [];
  for (let o = 0; o < n; o += per) ranges.push({ offset: o, size: Math.min(per, n - o) });
  const grads = rt.arena.alloc("grads", "scratch", n * 4);
  const partials = rt.arena.alloc("partials", "scratch", gradNormPartials(ranges) * 4);
  const stats = rt.arena.alloc("stats", "scratch", 16);
  try {
    // Filled in slices from a small table whose phase moves, so the data is not periodic
    // in 4096-element blocks; two NaNs and an Inf are counted and left out.
    const table = randn(65537, 8, 0.01);
    let sum = 0;
    const slice = 1 << 24;
    for (let o = 0; o < n; o += slice) {
      const len = Math.min(slice, n - o), x = new Float32Array(len);
      for (let i = 0; i < len; i++) x[i] = table[(o + i) % 65537];
      if (o === 0) [x[3], x[70000], x[123]] = [NaN, Infinity, NaN];
      for (let i = 0; i < len; i++) if (Number.isFinite(x[i])) sum += x[i] * x[i];
      rt.device.queue.writeBuffer(grads, o * 4, x);
    }
    const d = await gradNormDispatches(rt, ranges, grads, partials, stats);
    await runDispatches(rt.device, d);
    const s = await readValues(rt.device, stats);
    ok(
      Math.abs(s[1] - Math.sqrt(sum)) <= 1e-4 * Math.sqrt(sum),
      `norm ${s[1]} vs ${Math.sqrt(sum)}`,
    );
    equal(s[2], 3, "non-finite elements counted");
  } finally {
    for (const g of [grads, partials, stats]) rt.arena.free(g);
  }
});

// ---------------------------------------------------------------------------
// The whole model at a real context length.

gpuTest(
  "a 2-layer GPT-2 at T=1024 with sharp attention: loss, logits and gradients match float64",
  async (
    rt,
  ) => {
    const cfg: GPT2Config = { nLayer: 2, nHead: 2, nEmbd: 128, nCtx: 1024, vocabSize: 512 };
    const B = 1, T = 1024, C = cfg.nEmbd;
    const model = await GPT2.create(rt, cfg, { B, T, seed: 3 });
    try {
      // GPT-2's init makes attention nearly uniform, which hides attention bugs: q and k
      // weights x6 give scores of std ~2, so every row's distribution is its own.
      for (let l = 0; l < cfg.nLayer; l++) {
        const name = `h.${l}.attn.c_attn.weight`;
        const w = Float32Array.from(await model.readTensor(name));
        for (let c = 0; c < C; c++) for (let o = 0; o < 2 * C; o++) w[c * 3 * C + o] *= 6;
        model.writeTensor(name, w);
      }
      const u = rng(12);
      const tokens = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
      const targets = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
      const loss = await model.forwardBackward(tokens, targets);
      const params: RefParams = new Map();
      for (const t of model.layout.tensors) {
        params.set(t.name, Float64Array.from(await model.readTensor(t.name)));
      }
      const ref = gpt2Reference(cfg, params, tokens, targets, B, T, true);
      ok(Math.abs(loss - ref.loss) < 1e-5 * ref.loss, `loss ${loss} vs float64 ${ref.loss}`);
      for (const t of model.layout.tensors) {
        const want = ref.grads!.get(t.name)!;
        const gmax = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        assertAllClose(await model.readTensor(t.name, true), want, {
          rtol: 1e-3,
          atol: 1e-4 * gmax,
          label: `grad ${t.name}`,
        });
      }
      // Every position's logits (the mean loss alone could hide a few wrong rows); the
      // training pass left gradients in their place, so run the forward alone.
      equal(await model.forward(tokens, targets), loss);
      const scale = ref.logits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assertAllClose(await model.readLogits(), ref.logits, {
        rtol: 1e-4,
        atol: 1e-5 * scale,
        label: "logits",
      });
    } finally {
      model.destroy();
    }
  },
);
