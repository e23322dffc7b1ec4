// Each GPT-2 kernel (other than matmul, see matmul_test.ts) against its float64
// reference, forward and backward, at sizes that are not multiples of the
// workgroup size.
import { equal, match, ok } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32, type Runtime } from "../src/gpu/runtime.ts";
import {
  classifier,
  encoderBackward,
  encoderForward,
  flashAttentionBackward,
  flashAttentionForward,
  type FlashRows,
  geluBackward,
  geluForward,
  layernormBackward,
  layernormForward,
  residualForward,
  tableChunks,
} from "../src/model/ops/mod.ts";
import { checkLayernormRows, defineLayernormRows } from "../src/model/ops/layernorm.ts";
import { attentionBackward, attentionForward } from "./reference/attention_gpu.ts";
import {
  attention,
  attentionBack,
  gelu,
  geluGrad,
  layernorm,
  layernormBack,
} from "./reference/gpt2.ts";
import { assertAllClose, gpuTest, randn, rng } from "./_harness.ts";

const tol = { rtol: 1e-5, atol: 1e-5 };

/** Buffers made in a test, freed at its end. */
function pool(rt: Runtime) {
  const made = new Map<GPUBuffer, number>(); // buffer -> element count
  return {
    data(label: string, d: Float32Array<ArrayBuffer> | Uint32Array<ArrayBuffer>) {
      const b = rt.arena.allocWith(label, "scratch", d);
      made.set(b, d.length);
      return b;
    },
    empty(label: string, floats: number) {
      const b = rt.arena.alloc(label, "scratch", floats * 4);
      made.set(b, floats);
      return b;
    },
    /** The buffer's elements (without the arena's rounding). */
    read: (b: GPUBuffer) => readF32(rt.device, b, 0, made.get(b)),
    free: () => made.forEach((_, b) => rt.arena.free(b)),
  };
}

const f64 = (x: ArrayLike<number>) => Float64Array.from(x);
const range = (buffer: GPUBuffer, size: number) => ({ buffer, offset: 0, size });

gpuTest("layernorm forward and backward match float64", async (rt) => {
  const N = 37, C = 20;
  const p = pool(rt);
  try {
    const x = randn(N * C, 1, 2), w = randn(C, 2), b = randn(C, 3), dout = randn(N * C, 4);
    const dinp0 = randn(N * C, 5), dw0 = randn(C, 6), db0 = randn(C, 7);
    const X = p.data("x", x), W = p.data("w", w), Bb = p.data("b", b);
    const out = p.empty("out", N * C), mean = p.empty("mean", N), rstd = p.empty("rstd", N);
    const D = p.data("dout", dout), dinp = p.data("dinp", dinp0);
    const dw = p.data("dw", dw0), db = p.data("db", db0);
    const fwd = await layernormForward(rt, { N, C }, {
      inp: X,
      weight: range(W, C),
      bias: range(Bb, C),
      out,
      mean,
      rstd,
    });
    const bwd = await layernormBackward(rt, { N, C }, {
      inp: X,
      weight: range(W, C),
      mean,
      rstd,
      dout: D,
      dinp,
      dweight: range(dw, C),
      dbias: range(db, C),
    });
    await runDispatches(rt.device, [fwd, ...bwd]);
    const ref = layernorm(f64(x), f64(w), f64(b), N, C);
    assertAllClose(await p.read(out), ref.out, { ...tol, label: "out" });
    assertAllClose(await p.read(mean), ref.mean, { ...tol, label: "mean" });
    assertAllClose(await p.read(rstd), ref.rstd, { ...tol, label: "rstd" });
    const rdinp = f64(dinp0), rdw = f64(dw0), rdb = f64(db0);
    layernormBack(f64(dout), f64(x), f64(w), ref.mean, ref.rstd, rdinp, rdw, rdb, N, C);
    assertAllClose(await p.read(dinp), rdinp, { ...tol, label: "dinp (accumulated)" });
    assertAllClose(await p.read(dw), rdw, { ...tol, label: "dweight" });
    assertAllClose(await p.read(db), rdb, { ...tol, label: "dbias" });
  } finally {
    p.free();
  }
});

// The GPU path (a workgroup per row, subgroup sums), forced on whatever adapter runs the
// tests: with and without bias, C below, at and above the 64 lanes, GPT-2 medium's C=1024 with
// a row scale far from 1 (a mean that dwarfs the spread: the two-pass variance matters), and
// more rows than one grid dimension holds (the grid folds into y).
for (
  const [N, C, bias, scale] of [
    [37, 20, true, 2],
    [5, 64, false, 1],
    [9, 1024, true, 30],
    [66_000, 16, true, 1],
  ] as const
) {
  gpuTest(
    `layernorm with a workgroup per row: N=${N} C=${C}${bias ? "" : " no bias"}`,
    async (rt) => {
      if (!rt.gpu.features.subgroups) throw new Error(`${rt.gpu.name} grants no subgroups`);
      const p = pool(rt), sub = { subgroups: true };
      try {
        const x = randn(N * C, 1, scale), w = randn(C, 2), b = randn(C, 3), dout = randn(N * C, 4);
        for (let i = 0; i < x.length; i++) x[i] += 3 * scale; // rows with a mean far from 0
        const dinp0 = randn(N * C, 5), zeros = new Float32Array(C);
        const X = p.data("x", x), W = p.data("w", w), Bb = p.data("b", b), D = p.data("dout", dout);
        const out = p.empty("out", N * C), mean = p.empty("mean", N), rstd = p.empty("rstd", N);
        const dinp = p.data("dinp", dinp0), dw = p.data("dw", zeros), db = p.data("db", zeros);
        const fwd = await layernormForward(rt, { N, C }, {
          inp: X,
          weight: range(W, C),
          bias: bias ? range(Bb, C) : undefined,
          out,
          mean,
          rstd,
        }, sub);
        const bwd = await layernormBackward(rt, { N, C }, {
          inp: X,
          weight: range(W, C),
          mean,
          rstd,
          dout: D,
          dinp,
          dweight: range(dw, C),
          dbias: bias ? range(db, C) : undefined,
        }, sub);
        equal(fwd.name, bias ? "layernorm_rows_forward" : "layernorm_rows_forward_no_bias");
        equal(bwd[0].name, "layernorm_rows_backward_input");
        await runDispatches(rt.device, [fwd, ...bwd]);
        const ref = layernorm(f64(x), f64(w), bias ? f64(b) : new Float64Array(C), N, C);
        const rdinp = f64(dinp0), rdw = new Float64Array(C), rdb = new Float64Array(C);
        layernormBack(f64(dout), f64(x), f64(w), ref.mean, ref.rstd, rdinp, rdw, rdb, N, C);
        const t = { rtol: 1e-4, atol: 1e-4 };
        assertAllClose(await p.read(out), ref.out, { ...t, label: "out" });
        assertAllClose(await p.read(mean), ref.mean, { ...t, atol: 1e-4 * scale, label: "mean" });
        assertAllClose(await p.read(rstd), ref.rstd, { ...t, label: "rstd" });
        assertAllClose(await p.read(dinp), rdinp, { ...t, label: "dinp (accumulated)" });
        assertAllClose(await p.read(dw), rdw, { ...t, label: "dweight" });
      } finally {
        p.free();
      }
    },
  );
}

gpuTest(
  "the rows form is checked on the device before graphs use it; a wrong variant is refused",
  async (rt) => {
    if (!rt.gpu.features.subgroups) throw new Error(`${rt.gpu.name} grants no subgroups`);
    equal(await checkLayernormRows(rt), undefined);
    const text = await Deno.readTextFile(
      new URL("../kernels/layernorm_rows.wgsl", import.meta.url),
    );
    const noBias = text.replace("* f32(weight[c]) + f32(bias[c])", "* f32(weight[c])");
    ok(noBias !== text);
    const why = await checkLayernormRows(rt, defineLayernormRows(noBias, "layernorm_rows_wrong"));
    match(why ?? "", /differs from float64 on 3 rows of 200: worst out\[\d+\]/);
  },
);

gpuTest("gelu and residual forward and backward match float64", async (rt) => {
  const N = 203;
  const p = pool(rt);
  try {
    const x = randn(N, 1, 3), y = randn(N, 2), dout = randn(N, 3);
    x[0] = 30; // large |x|: tanh must not overflow
    x[1] = -30;
    const X = p.data("x", x), Y = p.data("y", y), D = p.data("d", dout);
    const out = p.empty("out", N), dinp = p.empty("dinp", N), sum = p.empty("sum", N);
    await runDispatches(rt.device, [
      await geluForward(rt, N, { inp: X, out }),
      await geluBackward(rt, N, { inp: X, dout: D, dinp }),
      await residualForward(rt, N, { a: X, b: Y, out: sum }),
    ]);
    assertAllClose(await p.read(out), Array.from(x, gelu), { ...tol, label: "gelu" });
    assertAllClose(
      await p.read(dinp),
      Array.from(x, (v, i) => geluGrad(v) * dout[i]),
      { ...tol, label: "gelu backward" },
    );
    assertAllClose(await p.read(sum), Array.from(x, (v, i) => v + y[i]), tol);
  } finally {
    p.free();
  }
});

gpuTest("attention forward and backward match float64", async (rt) => {
  const B = 2, T = 7, NH = 3, C = 12;
  const p = pool(rt);
  try {
    const qkv = randn(B * T * 3 * C, 1), dout = randn(B * T * C, 2);
    const Q = p.data("qkv", qkv), D = p.data("dout", dout);
    const out = p.empty("out", B * T * C), att = p.empty("att", B * NH * T * T);
    const dpre = p.empty("dpre", B * NH * T * T), dqkv = p.empty("dqkv", B * T * 3 * C);
    const s = { B, T, C, NH };
    await runDispatches(rt.device, [
      await attentionForward(rt, s, { qkv: Q, out, att }),
      ...await attentionBackward(rt, s, { qkv: Q, att, dout: D, dpre, dqkv }),
    ]);
    const ref = attention(f64(qkv), B, T, C, NH);
    assertAllClose(await p.read(out), ref.out, { ...tol, label: "out" });
    assertAllClose(await p.read(att), ref.att, { ...tol, label: "att" });
    const rd = attentionBack(f64(dout), f64(qkv), ref.att, B, T, C, NH);
    assertAllClose(await p.read(dqkv), rd, { ...tol, label: "dqkv" });
  } finally {
    p.free();
  }
});

gpuTest(
  "flash attention matches float64 and the plain kernel, forward and backward",
  async (rt) => {
    // The last cases split the keys into chunks (split-KV, merged in order), with 1 and 4 rows
    // per invocation (the GPU and the CPU-adapter variants).
    const cases: [number, number, number, number, number?, FlashRows?][] = [
      [2, 7, 3, 12],
      [1, 70, 2, 16],
      [2, 150, 2, 24, 64, 1],
      [1, 600, 2, 24, 256, 4],
    ];
    for (const [B, T, NH, C, chunkRows, rows] of cases) {
      const p = pool(rt);
      try {
        const qkv = randn(B * T * 3 * C, T, 1.5), dout = randn(B * T * C, T + 1);
        const Q = p.data("qkv", qkv), D = p.data("dout", dout);
        const out = p.empty("out", B * T * C), lse = p.empty("lse", B * NH * T);
        const delta = p.empty("delta", B * NH * T), dqkv = p.empty("dqkv", B * T * 3 * C);
        const out2 = p.empty("out2", B * T * C), att = p.empty("att", B * NH * T * T);
        const dpre = p.empty("dpre", B * NH * T * T), dqkv2 = p.empty("dqkv2", B * T * 3 * C);
        const s = { B, T, C, NH, chunkRows, rows };
        await runDispatches(rt.device, [
          ...await flashAttentionForward(rt, s, { qkv: Q, out, lse }),
          ...await flashAttentionBackward(rt, s, { qkv: Q, out, lse, dout: D, delta, dqkv }),
          await attentionForward(rt, s, { qkv: Q, out: out2, att }),
          ...await attentionBackward(rt, s, { qkv: Q, att, dout: D, dpre, dqkv: dqkv2 }),
        ]);
        const ref = attention(f64(qkv), B, T, C, NH);
        const rd = attentionBack(f64(dout), f64(qkv), ref.att, B, T, C, NH);
        const tag = `B${B} T${T} NH${NH} C${C}`;
        assertAllClose(await p.read(out), ref.out, { ...tol, label: `out ${tag}` });
        assertAllClose(await p.read(dqkv), rd, { rtol: 1e-4, atol: 1e-5, label: `dqkv ${tag}` });
        assertAllClose(await p.read(out), await p.read(out2), {
          ...tol,
          label: `flash vs plain out ${tag}`,
        });
        assertAllClose(await p.read(dqkv), await p.read(dqkv2), {
          rtol: 1e-4,
          atol: 1e-5,
          label: `flash vs plain dqkv ${tag}`,
        });
        // lse is the log-sum-exp of each row's scaled scores
        const HS = C / NH, l = await p.read(lse);
        const b = B - 1, h = NH - 1, t = T - 1;
        let mx = -Infinity;
        const sc: number[] = [];
        for (let t2 = 0; t2 <= t; t2++) {
          let d = 0;
          for (let j = 0; j < HS; j++) {
            d += qkv[(b * T + t) * 3 * C + h * HS + j] * qkv[(b * T + t2) * 3 * C + C + h * HS + j];
          }
          sc.push(d / Math.sqrt(HS));
          mx = Math.max(mx, d / Math.sqrt(HS));
        }
        const want = mx + Math.log(sc.reduce((a, x) => a + Math.exp(x - mx), 0));
        ok(
          Math.abs(l[(b * NH + h) * T + t] - want) < 1e-4,
          `lse ${l[(b * NH + h) * T + t]} vs ${want}`,
        );
      } finally {
        p.free();
      }
    }
  },
);

gpuTest("encoder forward and backward match float64, with wte in chunks", async (rt) => {
  const B = 3, T = 5, C = 8, V = 150, Vp = 192, BT = B * T;
  // 64 rows per chunk: three chunks, so both the chunked and the first-chunk paths run.
  const maxBindingBytes = 64 * C * 4;
  equal(tableChunks(rt, Vp, C, maxBindingBytes).length, 3);
  const p = pool(rt);
  try {
    const u = rng(3);
    const tokens = Uint32Array.from({ length: BT }, () => Math.floor(u() * V));
    tokens[4] = tokens[9] = tokens[10] = 149; // repeats, in the last chunk
    tokens[0] = 3;
    const order = Uint32Array.from(
      Array.from({ length: BT }, (_, i) => i).sort((a, b) => tokens[a] - tokens[b] || a - b),
    );
    const wte = randn(Vp * C, 1), wpe = randn(T * C, 2), dout = randn(BT * C, 3);
    const dwte0 = randn(Vp * C, 4), dwpe0 = randn(T * C, 5);
    const Tok = p.data("tokens", tokens), Ord = p.data("order", order);
    const Wte = p.data("wte", wte), Wpe = p.data("wpe", wpe), D = p.data("dout", dout);
    const dwte = p.data("dwte", dwte0), dwpe = p.data("dwpe", dwpe0);
    const out = p.empty("out", BT * C);
    const s = { BT, T, C, Vp, maxBindingBytes };
    const tok = { buffer: Tok, offset: 0, size: BT * 4 };
    await runDispatches(rt.device, [
      ...await encoderForward(rt, s, {
        tokens: tok,
        wte: range(Wte, Vp * C),
        wpe: range(Wpe, T * C),
        out,
      }),
      ...await encoderBackward(rt, s, {
        tokens: tok,
        order: { buffer: Ord, offset: 0, size: BT * 4 },
        dout: D,
        dwte: range(dwte, Vp * C),
        dwpe: range(dwpe, T * C),
      }),
    ]);
    const ref = new Float64Array(BT * C), rdwte = f64(dwte0), rdwpe = f64(dwpe0);
    for (let n = 0; n < BT; n++) {
      for (let c = 0; c < C; c++) {
        ref[n * C + c] = wte[tokens[n] * C + c] + wpe[(n % T) * C + c];
        rdwte[tokens[n] * C + c] += dout[n * C + c];
        rdwpe[(n % T) * C + c] += dout[n * C + c];
      }
    }
    assertAllClose(await p.read(out), ref, { ...tol, label: "encoded" });
    assertAllClose(await p.read(dwte), rdwte, { ...tol, label: "dwte" });
    assertAllClose(await p.read(dwpe), rdwpe, { ...tol, label: "dwpe" });
  } finally {
    p.free();
  }
});

// Both reduction forms (src/model/ops/reduce.ts), each forced, at a toy vocabulary in row chunks
// and at GPT-2's (V 50257 padded to 50304) with logits spread wide.
for (
  const [subgroups, N, V, Vp, spread] of [
    [false, 150, 75, 128, 3],
    [true, 150, 75, 128, 3],
    [false, 5, 50257, 50304, 12],
    [true, 5, 50257, 50304, 12],
  ] as const
) {
  gpuTest(
    `classifier loss and in-place gradient match float64, in row chunks: V=${V}, ` +
      (subgroups ? "subgroup" : "tree") + " reductions",
    async (rt) => {
      if (subgroups && !rt.gpu.features.subgroups) {
        throw new Error(`${rt.gpu.name} grants no subgroups`);
      }
      // Rows in 64-row chunks (maxBindingBytes): three dispatches per call for 150.
      const dloss = 1 / 7, maxBindingBytes = 64 * Vp * 4, chunks = Math.ceil(N / 64);
      const p = pool(rt);
      const lossScale = rt.arena.allocWith(
        "loss_scale",
        "scratch",
        new Float32Array([4, 0, 0, 0]),
        GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      );
      try {
        const logits = randn(N * Vp, 1, spread);
        const u = rng(2);
        const targets = Uint32Array.from({ length: N }, () => Math.floor(u() * V));
        targets[4] = targets[Math.min(130, N - 2)] = 0xffffffff; // no loss at these positions
        const L = p.data("logits", logits), Tg = p.data("targets", targets);
        const losses = p.empty("losses", N);
        const L2 = p.data("logits2", logits), losses2 = p.empty("losses2", N);
        const tg = { buffer: Tg, offset: 0, size: N * 4 };
        const s = { N, V, Vp, dloss, maxBindingBytes };
        // The loss scale (mixed precision) multiplies the gradient, not the loss.
        const withGrad = await classifier(rt, { ...s, writeGrad: true }, {
          logits: L,
          targets: tg,
          losses: { buffer: losses },
          lossScale,
        }, { subgroups });
        equal(withGrad.length, chunks);
        await runDispatches(rt.device, [
          ...withGrad,
          ...await classifier(rt, { ...s, writeGrad: false }, {
            logits: L2,
            targets: tg,
            losses: { buffer: losses2 },
            lossScale,
          }, { subgroups }),
        ]);
        const refLoss = new Float64Array(N), refGrad = new Float64Array(N * Vp);
        for (let n = 0; n < N; n++) {
          if (targets[n] === 0xffffffff) continue;
          const row = Array.from(logits.subarray(n * Vp, n * Vp + V));
          const m = row.reduce((a, x) => Math.max(a, x), -Infinity);
          const sum = row.reduce((s, x) => s + Math.exp(x - m), 0);
          refLoss[n] = Math.log(sum) + m - row[targets[n]];
          for (let v = 0; v < V; v++) {
            refGrad[n * Vp + v] = (Math.exp(row[v] - m) / sum - (v === targets[n] ? 1 : 0)) *
              dloss *
              4;
          }
        }
        assertAllClose(await p.read(losses), refLoss, { ...tol, label: "losses" });
        assertAllClose(await p.read(L), refGrad, { ...tol, label: "dlogits" });
        assertAllClose(await p.read(losses2), refLoss, { ...tol, label: "loss only" });
        assertAllClose(await p.read(L2), logits, { rtol: 0, atol: 0, label: "logits kept" });
      } finally {
        rt.arena.free(lossScale);
        p.free();
      }
    },
  );
}
