import { equal, match, notEqual, ok, rejects, throws } from "node:assert/strict";
import { driverAdvice, mesaVersionIn, NoAdapterError } from "../src/gpu/device.ts";
import { requestAdapterOf } from "../src/gpu/backend.ts";
import { formatBytes, formatMemory } from "../src/gpu/arena.ts";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { ShaderError } from "../src/gpu/pipelines.ts";
import { Profiler } from "../src/gpu/profiler.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { matmul } from "../src/model/ops/matmul.ts";
import { adapterDescription, gpuTest } from "./_harness.ts";

Deno.test("no-adapter error says what to install", () => {
  match(new NoAdapterError().message, /No WebGPU adapter found: install a GPU driver/);
  match(new NoAdapterError().message, /mesa-vulkan-drivers/);
});

Deno.test("Mesa's version is read from its library, and lavapipe before 24 gets advice", () => {
  const lib = new TextEncoder().encode("\x7fELF\0\0lvp\0Mesa 22.3.6 (LLVM 15.0.6)\0Mesa 9");
  equal(mesaVersionIn(lib), "Mesa 22.3.6");
  equal(mesaVersionIn(new Uint8Array(64)), "");
  const lavapipe = "llvmpipe (LLVM 15.0.6, 256 bits)";
  match(driverAdvice(lavapipe, "Mesa 22.3.6")!, /Mesa 22\.3\.6; Mesa 24 or later .*3x faster/);
  match(driverAdvice(lavapipe, "Mesa 23.1.0")!, /apt-get install -t bookworm-backports/);
  equal(driverAdvice(lavapipe, "Mesa 24.0.1"), undefined);
  equal(driverAdvice(lavapipe, "Mesa 25.0.7"), undefined);
  equal(driverAdvice(lavapipe, ""), undefined, "an unknown version gets no advice");
  equal(driverAdvice("NVIDIA H100 80GB HBM3", "nvidia 550.54.15"), undefined);
});

gpuTest({
  name: "lavapipe's Mesa version is read from the driver this process loaded",
  ignore: !/llvmpipe/.test(adapterDescription) || Deno.build.os !== "linux",
}, async (rt) => {
  match(rt.gpu.driver, /^Mesa \d+\.\d+\.\d+$/);
  await Promise.resolve();
});

Deno.test("formatBytes uses binary units", () => {
  equal(formatBytes(512), "512 B");
  equal(formatBytes(1536), "1.50 KiB");
  equal(formatBytes(8 * 2 ** 30), "8.00 GiB");
});

gpuTest("device reports the adapter's real limits and features", async (rt) => {
  ok(rt.gpu.name.length > 0);
  // The device must carry the adapter's limits, not WebGPU's defaults (128 MiB binding).
  const adapter = await requestAdapterOf(rt.gpu.backend);
  equal(rt.gpu.limits.maxStorageBufferBindingSize, adapter!.limits.maxStorageBufferBindingSize);
  equal(rt.gpu.limits.maxBufferSize, adapter!.limits.maxBufferSize);
  equal(rt.gpu.features.shaderF16, adapter!.features.has("shader-f16"));
  equal(rt.gpu.features.timestampQuery, adapter!.features.has("timestamp-query"));
});

gpuTest("arena tracks current and peak bytes by category", async (rt) => {
  const before = rt.arena.report();
  const p = rt.arena.alloc("p", "parameters", 1000); // rounds up to 1008
  const g = rt.arena.alloc("g", "gradients", 4096);
  const act = rt.arena.alloc("act", "activations", 1 << 16);
  let r = rt.arena.report();
  equal(r.current.parameters - before.current.parameters, 1008);
  equal(r.current.gradients - before.current.gradients, 4096);
  equal(r.current.total - before.current.total, 1008 + 4096 + 65536);
  rt.arena.free(act);
  r = rt.arena.report();
  equal(r.current.activations, before.current.activations);
  ok(r.peak.total >= before.current.total + 1008 + 4096 + 65536, "peak keeps the high-water mark");
  ok(r.buffers.some((b) => b.label === "g" && b.category === "gradients"));
  match(formatMemory(r), /peak/);
  rt.arena.free(p);
  rt.arena.free(g);
  throws(() => rt.arena.free(p), /was not made by this arena/);
  throws(
    () => rt.arena.alloc("huge", "scratch", rt.gpu.limits.maxBufferSize + 16),
    /is over this device's maxBufferSize/,
  );
  await Promise.resolve();
});

gpuTest("pipeline cache compiles each source and constant set once", async (rt) => {
  const code = `override SCALE: f32 = 1.0;
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(1) fn main() { x[0] = x[0] * SCALE; }`;
  const k = { name: "scale", code };
  const n0 = rt.pipelines.size;
  const a = await rt.pipelines.get(k, { SCALE: 2 });
  const b = await rt.pipelines.get(k, { SCALE: 2 });
  const c = await rt.pipelines.get(k, { SCALE: 3 });
  equal(a, b);
  notEqual(a, c);
  equal(rt.pipelines.size - n0, 2);
});

gpuTest("shader compile errors name the kernel and give line:column", async (rt) => {
  const code = `@compute @workgroup_size(1)
fn main() {
  let x: f32 = undefined_thing;
}`;
  await rejects(() => rt.pipelines.get({ name: "broken_kernel", code }), ShaderError);
  try {
    await rt.pipelines.get({ name: "broken_kernel", code });
    throw new Error("expected a compile error");
  } catch (e) {
    ok(e instanceof ShaderError, String(e));
    match(e.message, /Kernel "broken_kernel" failed to compile/);
    match(e.message, /broken_kernel\.wgsl:3:\d+/);
    match(e.message, /undefined_thing/);
  }
});

gpuTest("profiler times each dispatch by kernel name", async (rt) => {
  const profiler = Profiler.create(rt.device);
  if (!profiler) return; // adapter without timestamp-query: nothing to check
  const M = 64;
  const ab = rt.arena.allocWith("prof.ab", "scratch", new Float32Array(2 * M * M).fill(1));
  const c = rt.arena.alloc("prof.c", "scratch", M * M * 4);
  try {
    const d = await matmul(rt, { M, N: M, K: M }, {
      a: { buffer: ab },
      b: { buffer: ab, offset: M * M },
      c: { buffer: c },
    }, { name: "profiled_matmul" });
    await runDispatches(rt.device, [...d, ...d], profiler);
    const t = profiler.timings();
    equal(t.length, 1);
    equal(t[0].name, "profiled_matmul");
    equal(t[0].calls, 2);
    equal(t[0].flops, 2 * 2 * M * M * M);
    ok(t[0].ms > 0);
    match(profiler.format(), /profiled_matmul\s+2/);
    // Results are still right when every dispatch has its own pass.
    const out = await readF32(rt.device, c);
    equal(out.every((v) => v === M), true);
  } finally {
    rt.arena.free(ab);
    rt.arena.free(c);
    profiler.destroy();
  }
});

gpuTest("matmul refuses an output that shares a buffer with an input", async (rt) => {
  const buf = rt.arena.alloc("shared", "scratch", 3 * 16 * 16 * 4);
  try {
    await rejects(
      () =>
        matmul(rt, { M: 16, N: 16, K: 16 }, {
          a: { buffer: buf },
          b: { buffer: buf, offset: 256 },
          c: { buffer: buf, offset: 512 },
        }),
      /output C must not share a buffer with an input/,
    );
  } finally {
    rt.arena.free(buf);
  }
});

gpuTest("creating a runtime in a headless shell prints no XDG_RUNTIME_DIR error", async () => {
  // A child process without the variable, as a user's ssh session or container has it.
  const env = { ...Deno.env.toObject() };
  delete env.XDG_RUNTIME_DIR;
  const runtime = new URL("../src/gpu/runtime.ts", import.meta.url).href;
  const { code, stderr, stdout } = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--no-config",
      `const { createRuntime } = await import(${JSON.stringify(runtime)});
       const rt = await createRuntime();
       console.log(rt.gpu.name);`,
    ],
    env,
    clearEnv: true,
  }).output();
  const err = new TextDecoder().decode(stderr);
  equal(code, 0, err);
  ok(new TextDecoder().decode(stdout).trim().length > 0);
  ok(!err.includes("XDG_RUNTIME_DIR"), `stderr: ${err}`);
});
