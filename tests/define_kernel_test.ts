// Kernel declarations (src/gpu/define_kernel.ts) without a GPU: the generated WGSL header,
// layout entries, named uniform packing with WGSL's alignment, and the errors for missing,
// unknown and mistyped bindings, uniforms and constants. One GPU test runs a declared kernel.
import { deepEqual, equal, match, rejects, throws } from "node:assert/strict";
import { defineKernel, packUniforms, uniformLayout } from "../src/gpu/define_kernel.ts";
import { setDType } from "../src/gpu/dtype.ts";
import { LOOP_BUDGET } from "../src/gpu/kernel.ts";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { gpuTest } from "./_harness.ts";

/** A stand-in buffer: the planner reads only its label, size and element type. */
const fake = (label: string, dtype: "f32" | "f16" = "f32") => {
  const b = { label, size: 1024 } as GPUBuffer;
  setDType(b, dtype);
  return b;
};

const body = `
@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= p.N) { return; }
  out[gid.x] = out_t(f32(inp[gid.x]) * SCALE);
}
@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= p.N) { return; }
  dinp[gid.x] = dout[gid.x] * SCALE;
}`;

const scale = defineKernel({
  name: "scale",
  source: body,
  bindings: {
    inp: { access: "read", type: "float" },
    out: { access: "read_write", type: "float" },
    dout: { access: "read", type: "f32" },
    dinp: { access: "read_write", type: "f32" },
    stats: { access: "uniform", type: "vec4f" },
  },
  uniforms: { N: "u32", K: "u32" },
  overrides: { SCALE: { type: "f32", default: 2 }, ROWS: "u32" },
  entryPoints: {
    forward: { bindings: ["inp", "out"], optional: ["stats"], loopBound: (u) => 3 * u.K },
    backward: { bindings: ["dout", "dinp"], loopBound: () => 0, label: "scale_bwd" },
  },
});

Deno.test("a declared kernel's header declares its bindings, aliases and constants", () => {
  equal(
    scale.header(),
    [
      "// ---- scale: generated from its declaration (src/gpu/define_kernel.ts)",
      "alias inp_t = f32;",
      "alias out_t = f32;",
      "override SCALE: f32 = 2.0;",
      "override ROWS: u32;",
      "struct Params { N: u32, K: u32 }",
      "@group(0) @binding(0) var<storage, read> inp: array<f32>;",
      "@group(0) @binding(1) var<storage, read_write> out: array<f32>;",
      "@group(0) @binding(2) var<storage, read> dout: array<f32>;",
      "@group(0) @binding(3) var<storage, read_write> dinp: array<f32>;",
      "@group(0) @binding(4) var<uniform> stats: vec4f;",
      "@group(0) @binding(5) var<uniform> p: Params;",
      "// ---- scale.wgsl",
      "",
    ].join("\n"),
  );
  const half = scale.header({ out_t: "f16" });
  match(half, /^enable f16;\n/);
  match(half, /alias out_t = f16;/);
  match(half, /alias inp_t = f32;/);
  match(half, /var<storage, read_write> out: array<f16>;/);
});

Deno.test("a declared kernel's layout holds only the entry point's bindings", () => {
  // Uniforms carry their size (16 bytes here: vec4f, and Params' two u32 rounded up).
  const storage = (binding: number, type: GPUBufferBindingType) => ({
    binding,
    visibility: GPUShaderStage.COMPUTE,
    buffer: type === "uniform" ? { type, minBindingSize: 16 } : { type },
  });
  deepEqual(scale.layoutEntries("forward"), [
    storage(0, "read-only-storage"),
    storage(1, "storage"),
    storage(5, "uniform"),
  ]);
  deepEqual(scale.layoutEntries("forward", ["stats"]), [
    storage(0, "read-only-storage"),
    storage(1, "storage"),
    storage(4, "uniform"),
    storage(5, "uniform"),
  ]);
  deepEqual(scale.layoutEntries("backward"), [
    storage(2, "read-only-storage"),
    storage(3, "storage"),
    storage(5, "uniform"),
  ]);
});

Deno.test("a dispatch plan binds by name and takes float types from the buffers", () => {
  const inp = fake("inp", "f16"), out = fake("out");
  const plan = scale.plan("forward", {
    buffers: { inp: { buffer: inp, offset: 256, size: 512 }, out },
    uniforms: { N: 7, K: 100 },
    overrides: { ROWS: 4 },
    workgroups: [1, 1, 1],
  });
  equal(plan.name, "scale_forward");
  equal(plan.entryPoint, "forward");
  deepEqual(plan.buffers, { 0: { buffer: inp, offset: 256, size: 512 }, 1: { buffer: out } });
  deepEqual(plan.uniform, { binding: 5, words: [7, 100, 0, 0] });
  deepEqual(plan.constants, { ROWS: 4 });
  deepEqual(plan.loops, { bound: 300, shape: { N: 7, K: 100, SCALE: 2, ROWS: 4 } });
  match(plan.code, /^enable f16;\n[^]*alias inp_t = f16;[^]*fn forward/);
  equal(plan.code.split("\n")[plan.headerLines], body.split("\n")[0]);
  equal(
    scale.plan("backward", {
      buffers: { dout: fake("dout"), dinp: fake("dinp") },
      uniforms: { N: 1, K: 1 },
      overrides: { ROWS: 1 },
      workgroups: [1, 1, 1],
    }).name,
    "scale_bwd",
  );
});

Deno.test("named uniforms pack with WGSL's alignment", () => {
  const fields = { n: "u32", scale: "f32", off: "vec2u", x: "u32", v: "vec4f", i: "i32" } as const;
  const l = uniformLayout(fields);
  deepEqual(
    Object.fromEntries(Object.entries(l.slots).map(([k, s]) => [k, s.offset])),
    { n: 0, scale: 4, off: 8, x: 16, v: 32, i: 48 },
  );
  equal(l.size, 64);
  const w = packUniforms("t", fields, {
    n: 3,
    scale: 1.5,
    off: [5, 6],
    x: 7,
    v: [1, 2, 3, 4],
    i: -1,
  });
  equal(w.length, 16);
  deepEqual(Array.from(w.slice(0, 4)), [3, 0x3fc00000, 5, 6]);
  equal(w[4], 7);
  deepEqual(Array.from(new Float32Array(w.buffer, 32, 4)), [1, 2, 3, 4]);
  equal(w[12], 0xffffffff);
  equal(uniformLayout({ a: "u32" }).size, 16);
  throws(() => packUniforms("t", { a: "u32" }, { a: -1 }), /"a" is -1: out of u32's range/);
  throws(() => packUniforms("t", { a: "u32" }, { a: 1.5 }), /"a" is 1.5: pass an integer/);
  throws(() => packUniforms("t", { a: "vec2u" }, { a: 1 }), /"a" is a vec2u: pass 2 numbers/);
});

Deno.test("missing, unknown and mistyped bindings, uniforms and constants are clear errors", () => {
  const args = {
    buffers: { inp: fake("inp"), out: fake("out") },
    uniforms: { N: 1, K: 1 },
    overrides: { ROWS: 1 },
    workgroups: [1, 1, 1] as const,
  };
  throws(
    () => scale.plan("forward", { ...args, buffers: { inp: fake("inp") } }),
    /Kernel "scale" entry point "forward": binding "out" is missing: pass it in buffers/,
  );
  throws(
    // @ts-expect-error: a typo in a binding's name does not type-check either
    () => scale.plan("forward", { ...args, buffers: { ...args.buffers, outt: fake("x") } }),
    /unknown binding "outt": it binds inp, out, stats/,
  );
  throws(
    () => scale.plan("forward", { ...args, buffers: { ...args.buffers, dout: fake("x") } }),
    /unknown binding "dout"/,
  );
  throws(
    () =>
      scale.plan("backward", {
        ...args,
        buffers: { dout: fake("dout", "f16"), dinp: fake("dinp") },
      }),
    /binding "dout" is declared f32 but its buffer \("dout"\) holds f16/,
  );
  // @ts-expect-error: an unknown entry point does not type-check
  throws(() => scale.plan("fwd", args), /no entry point "fwd": use one of forward, backward/);
  // @ts-expect-error: a missing uniform does not type-check
  throws(() => scale.plan("forward", { ...args, uniforms: { N: 1 } }), /uniform "K" is missing/);
  throws(
    // @ts-expect-error: nor does an unknown one
    () => scale.plan("forward", { ...args, uniforms: { N: 1, K: 1, M: 2 } }),
    /unknown uniform "M": its fields are N, K/,
  );
  throws(
    () => scale.plan("forward", { ...args, overrides: {} }),
    /override "ROWS" has no default: pass it in overrides/,
  );
  throws(
    // @ts-expect-error: an unknown override does not type-check
    () => scale.plan("forward", { ...args, overrides: { ROWS: 1, ROW: 1 } }),
    /unknown override "ROW": its overrides are SCALE, ROWS/,
  );
  const two = defineKernel({
    name: "two",
    source: "fn main() { }",
    bindings: {
      a: { access: "read", type: "float", alias: "x_t" },
      b: { access: "read", type: "float", alias: "x_t" },
    },
    entryPoints: { main: { bindings: ["a", "b"], loopBound: () => 0 } },
  });
  throws(
    () =>
      two.plan("main", { buffers: { a: fake("a"), b: fake("b", "f16") }, workgroups: [1, 1, 1] }),
    /binding "b" holds f16 but another binding of type x_t holds f32/,
  );
});

Deno.test("a declaration whose body declares bindings, or lacks an entry point, is refused", () => {
  throws(
    () =>
      defineKernel({
        name: "old",
        source: "@group(0) @binding(0) var<storage, read> a: array<f32>;\nfn main() {}",
        bindings: { a: { access: "read", type: "f32" } },
        entryPoints: { main: { bindings: ["a"], loopBound: () => 0 } },
      }),
    /Kernel "old": its WGSL declares a binding .*: declare bindings in TypeScript/,
  );
  throws(
    () =>
      defineKernel({
        name: "none",
        source: "fn mian() {}",
        bindings: { a: { access: "read", type: "f32" } },
        entryPoints: { main: { bindings: ["a"], loopBound: () => 0 } },
      }),
    /Kernel "none": its WGSL has no function "main"/,
  );
  throws(
    () =>
      defineKernel({
        name: "alias",
        source: "alias a_t = f32;\nfn main() {}",
        bindings: { a: { access: "read", type: "float" } },
        entryPoints: { main: { bindings: ["a"], loopBound: () => 0 } },
      }),
    /declares "alias a_t", which is generated/,
  );
});

Deno.test("a loop bound over the budget names the kernel and its uniforms", () => {
  const args = {
    buffers: { inp: fake("inp"), out: fake("out") },
    overrides: { ROWS: 1 },
    workgroups: [1, 1, 1] as const,
  };
  equal(scale.plan("forward", { ...args, uniforms: { N: 1, K: 21845 } }).loops.bound, 65535);
  throws(
    () => scale.plan("forward", { ...args, uniforms: { N: 1, K: LOOP_BUDGET } }),
    /Kernel "scale_forward" at N=1 K=65535 SCALE=2 ROWS=1: one invocation would run 196605 loop iterations/,
  );
});

gpuTest(
  "a declared kernel runs with its explicit layout and rewrites a uniform by name",
  async (rt) => {
    const k = defineKernel({
      name: "axpb",
      source: `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= p.n) { return; }
  y[gid.x] = x[gid.x] * p.a + f32(p.b) + bias.x;
}`,
      bindings: {
        x: { access: "read", type: "f32" },
        y: { access: "read_write", type: "f32" },
        bias: { access: "uniform", type: "vec4f" },
      },
      uniforms: { n: "u32", a: "f32", b: "u32" },
      entryPoints: { main: { bindings: ["x", "y", "bias"], loopBound: () => 0 } },
    });
    const x = rt.arena.allocWith("x", "scratch", new Float32Array([1, 2, 3, 4, 5]));
    const y = rt.arena.alloc("y", "scratch", 5 * 4);
    const bias = rt.arena.allocWith(
      "bias",
      "scratch",
      new Float32Array([0.25, 0, 0, 0]),
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    try {
      const d = await k.dispatch(rt, "main", {
        buffers: { x, y, bias },
        uniforms: { n: 4, a: 2, b: 10 },
        workgroups: [1, 1, 1],
      });
      await runDispatches(rt.device, [d]);
      deepEqual(Array.from(await readF32(rt.device, y, 0, 5)), [12.25, 14.25, 16.25, 18.25, 0]);
      k.writeUniforms(rt.device.queue, d, { b: 20 });
      await runDispatches(rt.device, [d]);
      deepEqual(Array.from(await readF32(rt.device, y, 0, 5)), [22.25, 24.25, 26.25, 28.25, 0]);
      throws(() => scale.writeUniforms(rt.device.queue, d, { N: 1 }), /was not built by it/);
      // @ts-expect-error: an unknown field does not type-check
      throws(() => k.writeUniforms(rt.device.queue, d, { m: 1 }), /unknown uniform "m"/);
      const looped = await scale.dispatch(rt, "forward", {
        buffers: { inp: x, out: y },
        uniforms: { N: 4, K: 1 },
        overrides: { ROWS: 1 },
        workgroups: [1, 1, 1],
      });
      throws(
        () => scale.writeUniforms(rt.device.queue, looped, { K: LOOP_BUDGET }),
        /Kernel "scale_forward" at N=4 K=65535 .*196605 loop iterations/,
      );
      rt.arena.free(looped.resources![0]);
      rt.arena.free(d.resources![0]);
    } finally {
      for (const b of [x, y, bias]) rt.arena.free(b);
    }
  },
);

Deno.test("the optimizers' interfaces are expressible: a shared Step struct, an optional binding", () => {
  // A sketch of kernels/adamw.wgsl's (src/optim/adamw.ts declares the real one).
  const adamw = defineKernel({
    name: "adamw",
    source: "@compute @workgroup_size(WG) fn main() { }",
    bindings: {
      params: { access: "read_write", type: "f32" },
      grads: { access: "read", type: "f32" },
      m: { access: "read_write", type: "f32" },
      v: { access: "read_write", type: "f32" },
      stats: { access: "read", type: "f32" },
      s: {
        access: "uniform",
        type: {
          struct: "Step",
          fields: { lr: "f32", beta1: "f32", inv_scale: "f32", skip_overflow: "u32" },
        },
      },
      half: { access: "read_write", type: "f16" },
    },
    uniforms: { n: "u32", decay: "u32", p0: "u32", p1: "u32" },
    overrides: { WG: { type: "u32", default: 64 }, HALF_COPY: { type: "bool", default: false } },
    entryPoints: {
      main: {
        bindings: ["params", "grads", "m", "v", "stats", "s"],
        optional: ["half"],
        loopBound: () => 0,
      },
    },
  });
  const h = adamw.header();
  match(h, /^enable f16;\n/);
  match(h, /struct Step \{ lr: f32, beta1: f32, inv_scale: f32, skip_overflow: u32 \}\n/);
  match(h, /@binding\(5\) var<uniform> s: Step;/);
  match(h, /@binding\(6\) var<storage, read_write> half: array<f16>;/);
  match(h, /@binding\(7\) var<uniform> p: Params;/);
  match(h, /override WG: u32 = 64u;\noverride HALF_COPY: bool = false;/);
  equal(adamw.layoutEntries("main").length, 7);
  equal(adamw.layoutEntries("main", ["half"]).length, 8);
  const args = {
    buffers: {
      params: fake("params"),
      grads: fake("grads"),
      m: fake("m"),
      v: fake("v"),
      stats: fake("stats"),
      s: fake("step"),
    },
    uniforms: { n: 10, decay: 1, p0: 0, p1: 0 },
    workgroups: [1, 1, 1] as const,
  };
  equal(Object.keys(adamw.plan("main", args).buffers).length, 6);
  const half = adamw.plan("main", {
    ...args,
    buffers: { ...args.buffers, half: fake("half", "f16") },
    overrides: { HALF_COPY: true },
  });
  deepEqual(half.constants, { HALF_COPY: 1 });
  equal(half.layout.map((e) => e.binding).join(","), "0,1,2,3,4,5,6,7");
});

Deno.test("a storage binding may hold one struct, shared by name with a uniform's", () => {
  // The optimizers' gradient statistics: one struct the training step writes, read by name.
  const stats = { struct: "Stats", fields: { scale: "f32", skip: "f32" } } as const;
  const k = defineKernel({
    name: "stats",
    source: "@compute @workgroup_size(1) fn main() { out.scale = inp.scale; }",
    bindings: {
      inp: { access: "read", type: stats },
      out: { access: "read_write", type: stats },
      u: { access: "uniform", type: stats },
    },
    entryPoints: { main: { bindings: ["inp", "out", "u"], loopBound: () => 0 } },
  });
  const h = k.header();
  equal(h.match(/struct Stats \{ scale: f32, skip: f32 \}\n/g)?.length, 1);
  match(h, /@binding\(0\) var<storage, read> inp: Stats;/);
  match(h, /@binding\(1\) var<storage, read_write> out: Stats;/);
  match(h, /@binding\(2\) var<uniform> u: Stats;/);
  equal(/enable f16/.test(h), false);
  const buffers = { inp: fake("inp"), out: fake("out"), u: fake("u") };
  deepEqual(
    k.plan("main", { buffers, workgroups: [1, 1, 1] }).layout.map((e) => e.buffer?.type),
    ["read-only-storage", "storage", "uniform"],
  );
  throws(
    () =>
      k.plan("main", { buffers: { ...buffers, out: fake("out", "f16") }, workgroups: [1, 1, 1] }),
    /binding "out" is declared Stats but its buffer \("out"\) holds f16/,
  );
});

gpuTest("a declared kernel's compile errors give the line in its .wgsl body", async (rt) => {
  const broken = defineKernel({
    name: "broken",
    source: "@compute @workgroup_size(1)\nfn main() {\n  x[0] = undefined_thing;\n}\n",
    bindings: { x: { access: "read_write", type: "f32" } },
    uniforms: { n: "u32" },
    entryPoints: { main: { bindings: ["x"], loopBound: () => 0 } },
  });
  const x = rt.arena.alloc("x", "scratch", 16);
  try {
    await rejects(
      () =>
        broken.dispatch(rt, "main", { buffers: { x }, uniforms: { n: 1 }, workgroups: [1, 1, 1] }),
      /Kernel "broken_main" failed to compile: broken\.wgsl:3:\d+: /,
    );
  } finally {
    rt.arena.free(x);
  }
});

Deno.test("kernels/*.wgsl declare no bindings: their interfaces are declared in TypeScript", async () => {
  const declaring: string[] = [];
  for await (const f of Deno.readDir(new URL("../kernels/", import.meta.url))) {
    if (!f.name.endsWith(".wgsl")) continue;
    const text = await Deno.readTextFile(new URL(`../kernels/${f.name}`, import.meta.url));
    if (/@(group|binding)\s*\(|^struct Params\b|^enable /m.test(text)) declaring.push(f.name);
  }
  deepEqual(declaring, []);
});
