import { equal, rejects } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32, readValues, type Runtime } from "../src/gpu/runtime.ts";
import { type DType, roundToF16 } from "../src/gpu/dtype.ts";
import { matmul, type MatmulImpl, type MatmulShape } from "../src/model/ops/matmul.ts";
import { linearBackward, linearForward } from "../src/model/ops/linear.ts";
import { linearBackwardRef, linearForwardRef, matmulRef } from "./reference/matmul.ts";
import { assertAllClose, gpuTest, randn, uploadAs } from "./_harness.ts";

const tol = { rtol: 2e-5, atol: 2e-5 };

function upload(rt: Runtime, label: string, data: Float32Array<ArrayBuffer>): GPUBuffer {
  return rt.arena.allocWith(label, "scratch", data);
}

/** Runs one matmul on the GPU and compares with the float64 reference. */
async function checkMatmul(
  rt: Runtime,
  impl: MatmulImpl,
  shape: MatmulShape,
  opts: {
    offsets?: [number, number, number];
    maxBindingBytes?: number;
    seed?: number;
    /** Element types of A, B and C (default f32); bias stays f32. */
    types?: [DType, DType, DType];
  } = {},
) {
  const { M, N, K, transA = false, transB = false } = shape;
  const lda = shape.lda ?? (transA ? M : K), ldb = shape.ldb ?? (transB ? K : N);
  const ldc = shape.ldc ?? N;
  const [ao, bo, co] = opts.offsets ?? [0, 0, 0];
  const seed = opts.seed ?? 1;
  const aLen = ao + (transA ? (K - 1) * lda + M : (M - 1) * lda + K);
  const bLen = bo + (transB ? (N - 1) * ldb + K : (K - 1) * ldb + N);
  const cLen = co + (M - 1) * ldc + N;
  const [at, bt, ct] = opts.types ?? ["f32", "f32", "f32"];
  // f16 operands hold rounded values: the reference starts from the same ones.
  const round = (x: Float32Array<ArrayBuffer>, t: DType) => (t === "f16" ? roundToF16(x) : x);
  const a = round(randn(aLen, seed), at), b = round(randn(bLen, seed + 1), bt);
  const c0 = round(randn(cLen, seed + 2), ct);
  const bias = randn(N, seed + 3);
  const A = uploadAs(rt, "A", a, at), B = uploadAs(rt, "B", b, bt), C = uploadAs(rt, "C", c0, ct);
  const Bias = upload(rt, "bias", bias);
  try {
    const dispatches = await matmul(rt, shape, {
      a: { buffer: A, offset: ao },
      b: { buffer: B, offset: bo },
      c: { buffer: C, offset: co },
      bias: shape.bias ? { buffer: Bias } : undefined,
    }, { impl, maxBindingBytes: opts.maxBindingBytes });
    await runDispatches(rt.device, dispatches);
    const got = await readValues(rt.device, C, 0, cLen);
    const want = Float64Array.from(c0);
    matmulRef(a.subarray(ao), b.subarray(bo), shape, {
      c: want.subarray(co),
      bias: shape.bias ? bias : undefined,
      accumulate: shape.accumulate,
    });
    // An f16 result is rounded once at the end: half an f16 ulp (2^-11 relative).
    const t = ct === "f16" ? { rtol: 1e-3, atol: 1e-3 } : tol;
    assertAllClose(got, want, {
      ...t,
      label: `${impl} ${at}/${bt}/${ct} ${JSON.stringify(shape)}`,
    });
    return dispatches.length;
  } finally {
    for (const buf of [A, B, C, Bias]) rt.arena.free(buf);
  }
}

// Sizes that are not multiples of any tile (regblock needs 4-aligned contiguous dims).
for (const impl of ["regblock", "tiled"] as const) {
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      const tag = `${transA ? "T" : "N"}${transB ? "T" : "N"}`;
      gpuTest(`matmul ${impl} ${tag} matches float64 reference at awkward sizes`, async (rt) => {
        // M, K in TN case (no contiguous constraint) are odd; elsewhere 4-aligned.
        const M = transA ? 68 : 37, K = !transA && !transB ? 44 : transA && !transB ? 45 : 52;
        await checkMatmul(rt, impl, { M, N: 36, K, transA, transB });
        await checkMatmul(rt, impl, { M: 300, N: 100, K: 24, transA, transB }, { seed: 7 });
      });
      gpuTest(`matmul ${impl} ${tag} with bias, accumulate, strides and offsets`, async (rt) => {
        const M = 20, N = 44, K = 28;
        await checkMatmul(rt, impl, {
          M,
          N,
          K,
          transA,
          transB,
          bias: true,
          accumulate: true,
          lda: (transA ? M : K) + 8,
          ldb: (transB ? K : N) + 4,
          ldc: N + 12,
        }, { offsets: [4, 8, 12] });
      });
    }
  }
  gpuTest(`matmul ${impl} splits products over the binding limit`, async (rt) => {
    // 4 KiB bindings force splits along M, N and K; every split must agree.
    const n = await checkMatmul(rt, impl, { M: 64, N: 48, K: 40, transB: true, bias: true }, {
      maxBindingBytes: 4096,
    });
    if (n < 2) throw new Error(`expected several dispatches, got ${n}`);
    await checkMatmul(rt, impl, { M: 64, N: 48, K: 40, bias: true, accumulate: true }, {
      maxBindingBytes: 4096,
    });
    await checkMatmul(rt, impl, { M: 64, N: 48, K: 40, transA: true }, { maxBindingBytes: 4096 });
  });
}

for (const impl of ["regblock", "tiled"] as const) {
  gpuTest({
    name: `matmul ${impl} with f16 operands accumulates in f32`,
    needs: "shader-f16",
  }, async (rt) => {
    // Mixed precision's cases: f16 x f16 -> f16 (forward), f32 x f16 -> f32 (dinp),
    // f16 x f32 -> f32 accumulate (dweight), and with bias, strides and offsets.
    const f16 = "f16", f32 = "f32";
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const M = 36, N = 44, K = 52;
        await checkMatmul(rt, impl, { M, N, K, transA, transB, bias: true }, {
          types: [f16, f16, f16],
        });
        await checkMatmul(rt, impl, { M, N, K, transA, transB }, { types: [f32, f16, f32] });
        await checkMatmul(rt, impl, { M, N, K, transA, transB, accumulate: true }, {
          types: [f16, f32, f32],
          offsets: [4, 8, 12],
        });
      }
    }
    // Over the binding limit, f16 operands split by their own element size.
    const n = await checkMatmul(rt, impl, { M: 64, N: 48, K: 40, transB: true, bias: true }, {
      maxBindingBytes: 2048,
      types: [f16, f16, f32],
    });
    if (n < 2) throw new Error(`expected several dispatches, got ${n}`);
    // Decoding's short products (lanes over columns).
    if (impl === "regblock") {
      await checkMatmul(rt, impl, { M: 1, N: 100, K: 36, transB: true, bias: true }, {
        types: [f16, f16, f16],
      });
    }
  });
}

gpuTest("matmul regblock with lanes over columns for short products (decoding)", async (rt) => {
  // M < 8 spreads the lanes over columns; N = 100 is not a multiple of the 64-column tile.
  for (const M of [1, 3, 5, 7]) {
    await checkMatmul(rt, "regblock", { M, N: 100, K: 36 }, { seed: M });
    await checkMatmul(rt, "regblock", { M, N: 100, K: 36, transB: true, bias: true }, { seed: M });
    await checkMatmul(rt, "regblock", { M, N: 44, K: 20, bias: true, accumulate: true, ldc: 52 }, {
      seed: M,
      offsets: [4, 8, 12],
    });
  }
});

gpuTest("matmul falls back to the tiled kernel for unaligned shapes", async (rt) => {
  // N = 23 cannot be loaded as vec4; the result must still be right.
  await checkMatmul(rt, "regblock", { M: 19, N: 23, K: 33, bias: true });
});

gpuTest("matmul refuses bad shapes and too-small buffers with a clear error", async (rt) => {
  const buf = rt.arena.alloc("small", "scratch", 64);
  const out = rt.arena.alloc("out", "scratch", 64 * 64 * 4);
  try {
    const ops = { a: { buffer: buf }, b: { buffer: buf }, c: { buffer: out } };
    await rejects(() => matmul(rt, { M: 0, N: 4, K: 4 }, ops), /M must be a positive/);
    await rejects(
      () => matmul(rt, { M: 64, N: 64, K: 64 }, ops),
      /"small" is too small: the shape needs 16384 bytes, it has 64/,
    );
  } finally {
    rt.arena.free(buf);
    rt.arena.free(out);
  }
});

for (const impl of ["regblock", "tiled", "auto", "wg64x64x16_t4x4"] as const) {
  gpuTest(`linear layer ${impl} forward and backward match float64 reference`, async (rt) => {
    const BT = 70, C = 48, OC = 3 * 48;
    const inp = randn(BT * C, 11), w = randn(C * OC, 12, 0.1), bias = randn(OC, 13);
    const dout = randn(BT * OC, 14);
    // Parameter gradients accumulate: start them non-zero.
    const dw0 = randn(C * OC, 15), db0 = randn(OC, 16);
    const b = (l: string, d: Float32Array<ArrayBuffer>) => upload(rt, l, d);
    const bufs = {
      inp: b("inp", inp),
      weight: b("w", w),
      bias: b("bias", bias),
      out: rt.arena.alloc("out", "scratch", BT * OC * 4),
      dout: b("dout", dout),
      dinp: rt.arena.alloc("dinp", "scratch", BT * C * 4),
      dweight: b("dw", dw0),
      dbias: b("db", db0),
    };
    try {
      const shape = { BT, C, OC, bias: true };
      const op = (x: GPUBuffer) => ({ buffer: x });
      const fwd = await linearForward(rt, shape, {
        inp: op(bufs.inp),
        weight: op(bufs.weight),
        bias: op(bufs.bias),
        out: op(bufs.out),
      }, { impl });
      const bwd = await linearBackward(rt, shape, {
        inp: op(bufs.inp),
        weight: op(bufs.weight),
        dout: op(bufs.dout),
        dinp: op(bufs.dinp),
        dweight: op(bufs.dweight),
        dbias: op(bufs.dbias),
      }, { impl });
      await runDispatches(rt.device, [...fwd, ...bwd]);
      assertAllClose(
        await readF32(rt.device, bufs.out),
        linearForwardRef(inp, w, bias, BT, C, OC),
        { ...tol, label: "out" },
      );
      const ref = linearBackwardRef(inp, w, dout, BT, C, OC);
      assertAllClose(await readF32(rt.device, bufs.dinp), ref.dinp, { ...tol, label: "dinp" });
      assertAllClose(
        await readF32(rt.device, bufs.dweight),
        ref.dweight.map((v, i) => v + dw0[i]),
        { ...tol, label: "dweight" },
      );
      assertAllClose(
        await readF32(rt.device, bufs.dbias),
        ref.dbias.map((v, i) => v + db0[i]),
        { ...tol, label: "dbias" },
      );
      equal(bwd.length, 3);
    } finally {
      for (const x of Object.values(bufs)) rt.arena.free(x);
    }
  });
}

// The default ("auto": the tuner's choice, regblock on llvmpipe) and a GPU-family tile
// through the same checks as regblock and tiled above (tests/matmul_variants_test.ts
// checks every tile).
for (const impl of ["auto", "wg64x64x16_t4x4"] as const) {
  gpuTest(`matmul ${impl} matches float64: transposes, bias, strides, offsets, splits`, async (
    rt,
  ) => {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const M = transA ? 68 : 37, K = !transA && !transB ? 44 : transA && !transB ? 45 : 52;
        await checkMatmul(rt, impl, { M, N: 36, K, transA, transB });
        await checkMatmul(rt, impl, {
          M: 20,
          N: 44,
          K: 28,
          transA,
          transB,
          bias: true,
          accumulate: true,
          lda: (transA ? 20 : 28) + 8,
          ldb: (transB ? 28 : 44) + 4,
          ldc: 56,
        }, { offsets: [4, 8, 12] });
      }
    }
    const n = await checkMatmul(rt, impl, { M: 64, N: 48, K: 40, transB: true, bias: true }, {
      maxBindingBytes: 4096,
    });
    if (n < 2) throw new Error(`expected several dispatches, got ${n}`);
    await checkMatmul(rt, impl, { M: 19, N: 23, K: 33, bias: true });
  });
}
