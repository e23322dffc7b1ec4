/**
 * Test helpers: seeded random data, an allclose assertion that shows the first
 * mismatches, and GPU tests that skip with a reason when there is no adapter
 * (and fail instead under CI, where GPU tests must never skip).
 *
 * @module
 */

import { createRuntime, type Runtime } from "../src/gpu/runtime.ts";
import { quietDisplayProbe } from "../src/gpu/device.ts";
import {
  type Backend,
  backendChoice,
  requestAdapterOf,
  resolveBackend,
} from "../src/gpu/backend.ts";
import type { DType } from "../src/gpu/dtype.ts";
import type { GPT2 } from "../src/model/gpt2.ts";
import { fillNormal, mulberry32 } from "../src/model/init.ts";
import { encodeSafetensors, parseSafetensors } from "../src/io/safetensors.ts";
import { hfShape } from "../src/model/weights.ts";
import { parameterLayout } from "../src/model/params.ts";
import type { GPT2Config } from "../src/model/config.ts";

// ---------------------------------------------------------------------------
// GPU availability, decided once when the module loads (Deno.test's `ignore`
// must be known when a test is registered).

const inCi = Deno.env.get("CI") === "true" || Deno.env.get("CI") === "1";
quietDisplayProbe();
/** The WebGPU implementation the GPU tests run on (WEBGPU_GPT2_BACKEND, else Deno's own). */
export const testBackend: Backend = (await resolveBackend(backendChoice())).backend;
const probe = await requestAdapterOf(testBackend);

/** True when a WebGPU adapter exists. */
export const hasGpu: boolean = probe !== null;

/** The adapter's description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" ("" without one). */
export const adapterDescription: string = probe?.info.description ?? "";

/** True when the adapter has shader-f16 (mixed-precision tests skip without it). */
export const hasF16: boolean = probe?.features.has("shader-f16") ?? false;

if (!hasGpu) {
  const msg = `no WebGPU adapter found (backend ${testBackend}): install a GPU driver with ` +
    "Vulkan support, or mesa-vulkan-drivers for a CPU fallback (Dawn needs Mesa 24+)";
  if (inCi) throw new Error(`GPU tests cannot run in CI: ${msg}`);
  console.warn(`skipping GPU tests: ${msg}`);
}

let shared: Promise<Runtime> | undefined;
const gpuErrors: string[] = [];

/** The runtime shared by all GPU tests in one test file. */
export function testRuntime(): Promise<Runtime> {
  shared ??= createRuntime().then((rt) => {
    rt.device.addEventListener("uncapturederror", (e) => {
      gpuErrors.push((e as GPUUncapturedErrorEvent).error.message);
    });
    return rt;
  });
  return shared;
}

/** Optional adapter features a test may need (it is ignored, with the reason, without them). */
export type TestNeed = "shader-f16";

/**
 * `WEBGPU_GPT2_TESTS=shader-f16` runs only the GPU tests that need that feature: what .ci/run
 * does on a second adapter that has it when the first (Mesa 25's lavapipe under Deno) has not.
 */
const onlyNeeding = Deno.env.get("WEBGPU_GPT2_TESTS") as TestNeed | undefined;
const warned = new Set<TestNeed>();

/**
 * Registers a test that needs a GPU; it is ignored (with a warning) when none
 * exists, when it `needs` a feature the adapter lacks (said once per file), or when
 * `ignore` says so (e.g. ../shared/data is absent). A WebGPU validation error during the
 * test fails it: such errors only drop the command, which could otherwise pass unnoticed.
 */
export function gpuTest(
  test: string | { name: string; ignore?: boolean; needs?: TestNeed },
  fn: (rt: Runtime) => Promise<void>,
): void {
  const { name, ignore = false, needs } = typeof test === "string" ? { name: test } : test;
  const missing = needs === "shader-f16" && !hasF16;
  if (missing && hasGpu && !warned.has(needs)) {
    warned.add(needs);
    console.warn(
      `ignoring the tests that need ${needs} in ${callerFile()}: ${probe?.info.description} ` +
        "has none under this runtime",
    );
  }
  Deno.test({
    name,
    ignore: !hasGpu || ignore || missing || (onlyNeeding !== undefined && needs !== onlyNeeding),
    // WebGPU keeps internal resources alive between tests.
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      const rt = await testRuntime();
      const before = gpuErrors.length;
      await fn(rt);
      await rt.device.queue.onSubmittedWorkDone();
      if (gpuErrors.length > before) {
        throw new Error(`WebGPU errors during the test:\n${gpuErrors.slice(before).join("\n")}`);
      }
    },
  });
}

// ---------------------------------------------------------------------------
// Seeded random numbers.

/** A seeded generator of uniforms in [0, 1) (the package's own mulberry32). */
export const rng: (seed: number) => () => number = mulberry32;

/** A buffer of `data` stored as `dtype` (f16 rounds), for kernel tests. */
export function uploadAs(
  rt: Runtime,
  label: string,
  data: Float32Array<ArrayBuffer>,
  dtype: DType = "f32",
): GPUBuffer {
  const bytes = dtype === "f16" ? new Float16Array(data) : data;
  return rt.arena.allocWith(label, "scratch", bytes, undefined, dtype);
}

/**
 * Uniform random weights of ±0.3 (LayerNorm weights around 1), larger than
 * GPT-2's init so that every path of the model carries signal.
 */
export function randomiseWeights(model: GPT2, seed: number): void {
  const u = mulberry32(seed);
  const cfg = model.config;
  for (const t of model.layout.tensors) {
    const n = t.name === "wte.weight" ? cfg.vocabSize * cfg.nEmbd : t.size;
    const data = new Float32Array(n);
    const isLnW = /ln_\d\.weight|ln_f\.weight/.test(t.name);
    for (let i = 0; i < n; i++) data[i] = (isLnW ? 1 : 0) + (u() - 0.5) * 0.6;
    model.writeTensor(t.name, data);
  }
}

/** `n` standard normal samples as float32, scaled by `scale`. */
export function randn(n: number, seed: number, scale = 1): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  fillNormal(out, scale, mulberry32(seed));
  return out;
}

// ---------------------------------------------------------------------------
// Comparison.

/** Tolerances for {@linkcode assertAllClose}: |a - e| <= atol + rtol * |e|. */
export interface CloseOptions {
  rtol?: number;
  atol?: number;
  label?: string;
}

/**
 * Asserts two arrays agree elementwise. On failure the message gives the count
 * of mismatches, the first few with their indices, and the max abs/rel error.
 */
export function assertAllClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  options: CloseOptions = {},
): void {
  const { rtol = 1e-5, atol = 1e-6, label = "values" } = options;
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length} != expected ${expected.length}`);
  }
  let bad = 0, maxAbs = 0, maxRel = 0;
  const first: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    const err = Math.abs(a - e);
    if (a !== e && !(err <= atol + rtol * Math.abs(e))) { // NaN fails; equal infinities pass
      bad++;
      if (first.length < 8) first.push(`  [${i}] got ${a}, expected ${e} (diff ${err})`);
    }
    if (err > maxAbs || Number.isNaN(err)) maxAbs = Number.isNaN(err) ? NaN : err;
    if (Math.abs(e) > atol) maxRel = Math.max(maxRel, err / Math.abs(e));
  }
  if (bad > 0) {
    throw new Error(
      `${label}: ${bad} of ${expected.length} elements differ (rtol ${rtol}, atol ${atol}); ` +
        `max abs error ${maxAbs}, max rel error ${maxRel}\n${first.join("\n")}`,
    );
  }
}

/** Largest |a - e| / (atol + |e|), to report how close a result came. */
export function maxRelError(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  atol = 1e-6,
): number {
  let m = 0;
  for (let i = 0; i < expected.length; i++) {
    m = Math.max(m, Math.abs(actual[i] - expected[i]) / (atol + Math.abs(expected[i])));
  }
  return m;
}

/** The test file that called into the harness (for messages). */
function callerFile(): string {
  const stack = new Error().stack?.split("\n") ?? [];
  const line = stack.find((l) => /_test\.ts/.test(l)) ?? "";
  return /([\w.-]+_test\.ts)/.exec(line)?.[1] ?? "this file";
}

/** True when ../shared/data/NAME exists (real data for tests; absent in a fresh clone). */
export async function hasSharedData(name: string): Promise<boolean> {
  const ok = await Deno.stat(new URL(`../../shared/data/${name}`, import.meta.url)).then(
    () => true,
    () => false,
  );
  if (!ok) console.warn(`skipping tests that need ../shared/data/${name}: it is absent`);
  return ok;
}

// ---------------------------------------------------------------------------
// checkpoint files without a GPU; damaged files, as a disk or a stray write leaves them

/** Weights of `cfg` as a model.safetensors, every value `value` (made without a GPU). */
export function constantWeights(cfg: GPT2Config, value = 0.01): Uint8Array {
  return encodeSafetensors(
    parameterLayout(cfg).tensors.map((t) => {
      const shape = hfShape(t, cfg);
      return {
        name: t.name,
        shape,
        data: new Float32Array(shape.reduce((a, b) => a * b)).fill(value),
      };
    }),
  );
}

/** 16 f32 NaNs: 64 bytes of 0xFF. */
export const NAN_BYTES: Uint8Array = new Uint8Array(64).fill(0xff);
/** 256 f32 values of 3e4: finite, so only a checksum can tell them from trained weights. */
export const BIG_FLOATS: Uint8Array = new Uint8Array(new Float32Array(256).fill(3e4).buffer);

/**
 * Overwrites the first bytes of tensor `name` in the safetensors file at `path` with `bytes`,
 * in place (same size, same name); returns the file position written.
 */
export async function damageTensor(path: string, name: string, bytes: Uint8Array): Promise<number> {
  const file = parseSafetensors(await Deno.readFile(path), path);
  const t = file.tensors.get(name);
  if (!t) throw new Error(`${path} has no tensor "${name}"`);
  const at = file.dataOffset! + t.data_offsets[0];
  using f = await Deno.open(path, { write: true });
  await f.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < bytes.length) done += await f.write(bytes.subarray(done));
  return at;
}

/** What `main(argv)` of a task returns or throws, and the lines it wrote to stderr. */
export async function runTask(
  main: (argv: string[]) => Promise<number>,
  argv: string[],
): Promise<{ code?: number; error?: Error; stderr: string[] }> {
  const stderr: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => stderr.push(a.join(" "));
  try {
    return { code: await main(argv), stderr };
  } catch (e) {
    return { error: e as Error, stderr };
  } finally {
    console.error = error;
  }
}
