/**
 * LayerNorm (kernels/layernorm.wgsl), forward and backward. On a GPU with subgroups the
 * forward and the input gradient take a workgroup per row, its sums through subgroups
 * (kernels/layernorm_rows.wgsl), once a check on the device agreed with float64; a CPU adapter
 * keeps an invocation per row, which suits it.
 *
 * @module
 */

import { debugLog } from "../../gpu/debug.ts";
import { type Dispatch, freeDispatches, runDispatches } from "../../gpu/dispatch.ts";
import { type BindingDecl, defineKernel } from "../../gpu/define_kernel.ts";
import { grid1d, splitRange, WALK_ROWS } from "../../gpu/kernel.ts";
import { readF32, type Runtime } from "../../gpu/runtime.ts";
import { mulberry32 } from "../init.ts";
import { worstElement } from "./device_check.ts";
import { REDUCE_SOURCES, reduceForm } from "./reduce.ts";
import { bytes, type TensorRange } from "./tensor.ts";
import layernormSrc from "../../../kernels/layernorm.wgsl" with { type: "text" };
import layernormRowsSrc from "../../../kernels/layernorm_rows.wgsl" with { type: "text" };

/** What both LayerNorm kernels bind (the rows form has no parameter gradients). */
const LAYERNORM_BINDINGS = {
  inp: { access: "read", type: "f32" },
  weight: { access: "read", type: "float" },
  bias: { access: "read", type: "float" },
  out: { access: "read_write", type: "float" },
  mean: { access: "read_write", type: "f32" },
  rstd: { access: "read_write", type: "f32" },
  dout: { access: "read", type: "f32" },
  dinp: { access: "read_write", type: "f32" },
  dweight: { access: "read_write", type: "float" },
  dbias: { access: "read_write", type: "float" },
} as const satisfies Record<string, BindingDecl>;

/** kernels/layernorm.wgsl's interface. */
export const layernormKernel = defineKernel({
  name: "layernorm",
  source: layernormSrc,
  bindings: LAYERNORM_BINDINGS,
  uniforms: { N: "u32", C: "u32", n0: "u32", n1: "u32" },
  entryPoints: {
    forward: {
      bindings: ["inp", "weight", "bias", "out", "mean", "rstd"],
      loopBound: (u) => 3 * u.C,
    },
    forward_no_bias: {
      bindings: ["inp", "weight", "out", "mean", "rstd"],
      loopBound: (u) => 3 * u.C,
    },
    backward_input: {
      bindings: ["inp", "weight", "mean", "rstd", "dout", "dinp"],
      loopBound: (u) => 2 * u.C,
    },
    backward_params: {
      bindings: ["inp", "mean", "rstd", "dout", "dweight", "dbias"],
      loopBound: (u) => u.n1 - u.n0,
    },
    backward_params_no_bias: {
      bindings: ["inp", "mean", "rstd", "dout", "dweight"],
      loopBound: (u) => u.n1 - u.n0,
    },
  },
});

/**
 * kernels/layernorm_rows.wgsl's interface (a workgroup of 64 lanes per row, subgroup sums:
 * kernels/reduce_subgroup.wgsl after it) over `source`: the kernel's own text by default (a
 * test gives a wrong one to the check).
 */
export function defineLayernormRows(source: string = layernormRowsSrc, name = "layernorm_rows") {
  const { dweight: _w, dbias: _b, ...bindings } = LAYERNORM_BINDINGS;
  return defineKernel({
    name,
    source: `${source}\n${REDUCE_SOURCES.subgroup}`,
    bindings,
    uniforms: { N: "u32", C: "u32" },
    entryPoints: {
      forward: {
        bindings: ["inp", "weight", "bias", "out", "mean", "rstd"],
        loopBound: (u) => 3 * Math.ceil(u.C / 64) + 2 * 64,
      },
      forward_no_bias: {
        bindings: ["inp", "weight", "out", "mean", "rstd"],
        loopBound: (u) => 3 * Math.ceil(u.C / 64) + 2 * 64,
      },
      backward_input: {
        bindings: ["inp", "weight", "mean", "rstd", "dout", "dinp"],
        loopBound: (u) => 2 * Math.ceil(u.C / 64) + 64,
      },
    },
  });
}

/** The rows form of kernels/layernorm_rows.wgsl. */
export const layernormRowsKernel: LayernormRowsKernel = defineLayernormRows();

/** A kernel declared by {@linkcode defineLayernormRows}. */
export type LayernormRowsKernel = ReturnType<typeof defineLayernormRows>;

/**
 * Why `kernel` (the rows form by default) must not be used on this device, or undefined when
 * it agrees with float64: forward and input gradient on 3 rows of 200 channels (a row longer
 * than the 64 lanes and not a multiple of them, a mean far from 0), to 1e-4 of each value
 * (at least 1). A variant that no machine here has run is checked where it runs before any
 * graph uses it; the default kernel's verdict is kept per device.
 */
export function checkLayernormRows(
  rt: Runtime,
  kernel: LayernormRowsKernel = layernormRowsKernel,
): Promise<string | undefined> {
  if (kernel !== layernormRowsKernel) return runRowsCheck(rt, kernel);
  let v = verdicts.get(rt.device);
  if (!v) verdicts.set(rt.device, v = runRowsCheck(rt, kernel));
  return v;
}

const verdicts = new WeakMap<GPUDevice, Promise<string | undefined>>();

async function runRowsCheck(rt: Runtime, kernel: LayernormRowsKernel): Promise<string | undefined> {
  const N = 3, C = 200, u = mulberry32(0x6c6e);
  const rand = (n: number, shift = 0) =>
    Float32Array.from({ length: n }, () => shift + 2 * u() - 1);
  const x = rand(N * C, 3), w = rand(C), b = rand(C), dout = rand(N * C);
  // float64: the forward, then dinp = rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)).
  const out = new Float64Array(N * C), mean = new Float64Array(N), rstd = new Float64Array(N);
  const dinp = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    const row = x.subarray(n * C, (n + 1) * C);
    const m = row.reduce((a, v) => a + v, 0) / C;
    const r = 1 / Math.sqrt(row.reduce((a, v) => a + (v - m) ** 2, 0) / C + 1e-5);
    [mean[n], rstd[n]] = [m, r];
    let dm = 0, dnm = 0;
    for (let c = 0; c < C; c++) {
      const norm = (row[c] - m) * r, dnorm = w[c] * dout[n * C + c];
      out[n * C + c] = norm * w[c] + b[c];
      dm += dnorm / C;
      dnm += dnorm * norm / C;
    }
    for (let c = 0; c < C; c++) {
      const norm = (row[c] - m) * r, dnorm = w[c] * dout[n * C + c];
      dinp[n * C + c] = (dnorm - dm - norm * dnm) * r;
    }
  }
  const a = rt.arena, made: GPUBuffer[] = [];
  const data = (label: string, v: Float32Array<ArrayBuffer>) => {
    const buf = a.allocWith(`layernorm.check.${label}`, "scratch", v);
    made.push(buf);
    return buf;
  };
  const bufs = {
    inp: data("inp", x),
    weight: data("weight", w),
    bias: data("bias", b),
    out: data("out", new Float32Array(N * C)),
    mean: data("mean", new Float32Array(N)),
    rstd: data("rstd", new Float32Array(N)),
    dout: data("dout", dout),
    dinp: data("dinp", new Float32Array(N * C)),
  };
  const d: Dispatch[] = [];
  try {
    const uniforms = { N, C }, workgroups = grid1d(N, 1);
    const { dout: _, dinp: __, ...fwd } = bufs;
    d.push(await kernel.dispatch(rt, "forward", { buffers: fwd, uniforms, workgroups }));
    const { bias: _b, out: _o, ...bwd } = bufs;
    d.push(await kernel.dispatch(rt, "backward_input", { buffers: bwd, uniforms, workgroups }));
    await runDispatches(rt.device, d);
    const scale = (v: number) => Math.max(1, Math.abs(v));
    for (
      const [name, want] of [["out", out], ["mean", mean], ["rstd", rstd], ["dinp", dinp]] as const
    ) {
      const wrong = worstElement(
        name,
        await readF32(rt.device, bufs[name], 0, want.length),
        want,
        scale,
        1e-4,
      );
      if (wrong) return `differs from float64 on ${N} rows of ${C}: ${wrong}`;
    }
    return undefined;
  } catch (e) {
    return `fails on this device: ${(e as Error).message}`;
  } finally {
    freeDispatches(a, d);
    for (const buf of made) a.free(buf);
  }
}

/**
 * Whether graphs on this device take the rows form: where its reductions take subgroups
 * (src/model/ops/reduce.ts: a GPU that has them, or as set for the device) and the rows form
 * checked.
 */
async function rowsByDefault(rt: Runtime): Promise<boolean> {
  if (await reduceForm(rt) !== "subgroup") return false;
  const why = await checkLayernormRows(rt);
  if (why) {
    debugLog(1, `layernorm: the workgroup-per-row form is not used on ${rt.gpu.name}: ${why}`);
  }
  return why === undefined;
}

/** How a LayerNorm's rows are spread. */
export interface LayernormOptions {
  /**
   * A workgroup per row with subgroup sums (kernels/layernorm_rows.wgsl) instead of an
   * invocation per row. Default: where the device's reductions take subgroups
   * (src/model/ops/reduce.ts's `reduceForm`) and it passed {@linkcode checkLayernormRows}.
   */
  subgroups?: boolean;
}

const rowsPerWorkgroup = async (rt: Runtime, o: LayernormOptions) =>
  o.subgroups ?? await rowsByDefault(rt);

/** out, mean, rstd = LayerNorm(inp [N, C]) with weight and bias (none: no bias add). */
export async function layernormForward(
  rt: Runtime,
  s: { N: number; C: number },
  ops: {
    inp: GPUBuffer;
    weight: TensorRange;
    bias?: TensorRange;
    out: GPUBuffer;
    mean: GPUBuffer;
    rstd: GPUBuffer;
  },
  options: LayernormOptions = {},
): Promise<Dispatch> {
  const { inp, out, mean, rstd } = ops, weight = bytes(ops.weight);
  if (await rowsPerWorkgroup(rt, options)) {
    const uniforms = { N: s.N, C: s.C }, workgroups = grid1d(s.N, 1);
    return ops.bias
      ? layernormRowsKernel.dispatch(rt, "forward", {
        buffers: { inp, weight, bias: bytes(ops.bias), out, mean, rstd },
        uniforms,
        workgroups,
      })
      : layernormRowsKernel.dispatch(rt, "forward_no_bias", {
        buffers: { inp, weight, out, mean, rstd },
        uniforms,
        workgroups,
      });
  }
  const uniforms = { N: s.N, C: s.C, n0: 0, n1: 0 };
  if (!ops.bias) {
    return layernormKernel.dispatch(rt, "forward_no_bias", {
      buffers: { inp, weight, out, mean, rstd },
      uniforms,
      workgroups: grid1d(s.N, 64),
    });
  }
  return layernormKernel.dispatch(rt, "forward", {
    buffers: { inp, weight, bias: bytes(ops.bias), out, mean, rstd },
    uniforms,
    workgroups: grid1d(s.N, 64),
  });
}

/** dinp += input gradient; dweight, dbias += parameter gradients (no dbias: no bias). */
export async function layernormBackward(
  rt: Runtime,
  s: { N: number; C: number },
  ops: {
    inp: GPUBuffer;
    weight: TensorRange;
    mean: GPUBuffer;
    rstd: GPUBuffer;
    dout: GPUBuffer;
    dinp: GPUBuffer;
    dweight: TensorRange;
    dbias?: TensorRange;
  },
  options: LayernormOptions = {},
): Promise<Dispatch[]> {
  const { inp, mean, rstd, dout } = ops;
  // The parameter gradients sum over rows: in ranges within the loop budget, in order.
  const params: Dispatch[] = [];
  for (const [n0, n1] of splitRange(s.N, WALK_ROWS)) {
    const uniforms = { N: s.N, C: s.C, n0, n1 }, dweight = bytes(ops.dweight);
    params.push(
      ops.dbias
        ? await layernormKernel.dispatch(rt, "backward_params", {
          buffers: { inp, mean, rstd, dout, dweight, dbias: bytes(ops.dbias) },
          uniforms,
          workgroups: grid1d(s.C, 64),
        })
        : await layernormKernel.dispatch(rt, "backward_params_no_bias", {
          buffers: { inp, mean, rstd, dout, dweight },
          uniforms,
          workgroups: grid1d(s.C, 64),
        }),
    );
  }
  const input = { inp, weight: bytes(ops.weight), mean, rstd, dout, dinp: ops.dinp };
  return [
    await rowsPerWorkgroup(rt, options)
      ? await layernormRowsKernel.dispatch(rt, "backward_input", {
        buffers: input,
        uniforms: { N: s.N, C: s.C },
        workgroups: grid1d(s.N, 1),
      })
      : await layernormKernel.dispatch(rt, "backward_input", {
        buffers: input,
        uniforms: { N: s.N, C: s.C, n0: 0, n1: 0 },
        workgroups: grid1d(s.N, 64),
      }),
    ...params,
  ];
}
