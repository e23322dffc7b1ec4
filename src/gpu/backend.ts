/**
 * Which WebGPU implementation runs the kernels: Deno's own (wgpu; the default, what the
 * package promises) or Dawn, Chrome's WebGPU, through its Node-API build (npm `webgpu`,
 * imported only when asked for or probed). Dawn reaches features Deno's build keeps off
 * (subgroup matrices: tensor cores) and maps buffers without Deno's 10 ms polling sleep.
 *
 * The choice: `--backend` on every task, else `WEBGPU_GPT2_BACKEND`, else "deno". "auto"
 * takes Dawn where its adapter offers subgroup matrices and Deno's own otherwise.
 *
 * Kernels are written once: {@linkcode withDirectives} adds what a backend's compiler
 * requires (Dawn wants `enable subgroups;` before subgroup builtins; Deno's naga rejects the
 * directive and compiles the builtins without it), in the one place shaders are compiled.
 *
 * @module
 */

import type { ConfigRow } from "../table.ts";

/** A WebGPU implementation. */
export type Backend = "deno" | "dawn";
/** What a user may ask for: a backend, or "auto". */
export type BackendChoice = Backend | "auto";

/** The backends, for flag parsing and help. */
export const BACKEND_CHOICES: readonly BackendChoice[] = ["deno", "dawn", "auto"];

/** Dawn's Node-API build, pinned: its prebuilt dawn.node ships in the package. */
export const DAWN_PACKAGE = "npm:webgpu@0.6.2";

/** Dawn's toggles: the experimental features (subgroup matrices) need unsafe APIs allowed. */
const DAWN_FLAGS = ["enable-dawn-features=allow_unsafe_apis,disable_robustness"];

/** The feature that brings tensor cores to WGSL on Dawn. */
export const SUBGROUP_MATRIX = "chromium-experimental-subgroup-matrix";

/**
 * The backend asked for: `explicit` (a flag), else `WEBGPU_GPT2_BACKEND`, else "deno". An
 * unknown name is an error that lists the choices and says where it came from.
 */
export function backendChoice(explicit?: string): BackendChoice {
  let env: string | undefined;
  try {
    env = Deno.env.get("WEBGPU_GPT2_BACKEND") || undefined;
  } catch {
    env = undefined; // no --allow-env: the default
  }
  const value = explicit ?? env ?? "deno";
  if (!(BACKEND_CHOICES as readonly string[]).includes(value)) {
    const from = explicit !== undefined ? "--backend" : "WEBGPU_GPT2_BACKEND";
    throw new Error(`${from} ${value} is not a backend: use ${BACKEND_CHOICES.join(", ")}`);
  }
  return value as BackendChoice;
}

let dawn: Promise<GPU> | undefined;

/**
 * Dawn's objects that must outlive every callback Dawn schedules: its Node-API build frees
 * the instance when the GPU or an adapter wrapper is garbage-collected, and a pending
 * event-processing callback then crashes the process (about one run in two, seen with
 * Deno 2.9.6 and npm:webgpu 0.6.2, fixed by holding them). Held for the process's life.
 */
const pinned: object[] = [];

/**
 * Dawn's Node-API build polls its events by rescheduling a native callback with
 * `setImmediate` for as long as any of its promises is pending: a busy loop (upstream
 * dawn-gpu/node-webgpu#17) that here made ~900,000 calls in 40 small training steps, took a
 * core from the driver and left garbage whose collection stalled every other step for
 * ~1.4 s. Native callbacks (Dawn's; this package schedules none) go through a zero-delay
 * timer instead, which waits on the event loop: 1,300 calls, no stalls, a step 20x
 * faster on lavapipe. Other callbacks keep `setImmediate` as it was.
 */
function throttleNativeImmediates(): void {
  const g = globalThis as { setImmediate?: (cb: unknown, ...args: unknown[]) => unknown };
  const original = g.setImmediate;
  if (!original || (original as { dawnThrottled?: boolean }).dawnThrottled) return;
  const throttled = (cb: unknown, ...args: unknown[]) =>
    typeof cb === "function" && Function.prototype.toString.call(cb).includes("[native code]")
      ? setTimeout(cb as (...a: unknown[]) => void, 0, ...args)
      : original(cb, ...args);
  g.setImmediate = Object.assign(throttled, { dawnThrottled: true });
}

/**
 * Dawn's Node-API build (npm:webgpu 0.6.2) divides by the element size of the typed array
 * given to `queue.writeBuffer`, and knows none for a Float16Array: the process dies of SIGFPE.
 * The device's queue sends f16 data as the Uint16Array over the same bytes instead (element
 * offsets and sizes mean the same). Done once per device, where Dawn's device is made.
 */
export function mendDawnQueue(device: GPUDevice): void {
  const queue = device.queue as GPUQueue & { dawnMended?: boolean };
  if (queue.dawnMended) return;
  const write = queue.writeBuffer;
  queue.writeBuffer = function (
    this: GPUQueue,
    buffer: GPUBuffer,
    offset: number,
    data: BufferSource,
    ...rest: number[]
  ) {
    const d = data instanceof Float16Array
      ? new Uint16Array(data.buffer, data.byteOffset, data.length)
      : data;
    return write.call(this, buffer, offset, d, ...rest);
  };
  queue.dawnMended = true;
}

/** Holds a Dawn object (an adapter, a device) for the life of the process. */
export function pinDawnObject(o: object): void {
  pinned.push(o);
}

/**
 * Dawn's GPU object (one per process), or an error saying why it cannot be loaded (no
 * network the first time and no cached copy, or a platform without a prebuilt dawn.node).
 */
export function dawnGpu(): Promise<GPU> {
  dawn ??= (async () => {
    let gpu: GPU;
    try {
      gpu = await createDawn(DAWN_FLAGS);
    } catch (e) {
      dawn = undefined; // a later call may try again
      throw new Error(
        `Cannot load Dawn (${DAWN_PACKAGE}) for --backend dawn: ${(e as Error).message}; ` +
          "it is downloaded from the npm registry on first use (run once with network), or " +
          "use --backend deno",
      );
    }
    return gpu;
  })();
  return dawn;
}

/** A new Dawn GPU object with `flags`, held for the process's life. */
async function createDawn(flags: string[]): Promise<GPU> {
  const mod: { create(flags: string[]): GPU } = await import(DAWN_PACKAGE);
  throttleNativeImmediates();
  const gpu = mod.create(flags);
  pinned.push(gpu);
  return gpu;
}

let validator: Promise<GPUDevice> | undefined;

/**
 * A device of Dawn's null backend: it runs nothing, but compiles and validates shaders and
 * pipelines with every feature Dawn knows, subgroup matrices included, so that kernels for
 * hardware this machine lacks are checked by Dawn's own compiler (tests, `deno task check`).
 * Its largest subgroup is `subgroupMaxSize` (128). Rejects where npm:webgpu cannot load.
 */
export function dawnValidator(): Promise<{ device: GPUDevice; subgroupMaxSize: number }> {
  validator ??= (async () => {
    const gpu = await createDawn(["backend=null", ...DAWN_FLAGS]);
    const adapter = await gpu.requestAdapter();
    if (!adapter) throw new Error("Dawn's null backend offers no adapter");
    pinned.push(adapter);
    const device = await adapter.requestDevice({
      requiredFeatures: ["shader-f16", "subgroups", SUBGROUP_MATRIX] as GPUFeatureName[],
      requiredLimits: {
        maxComputeInvocationsPerWorkgroup: adapter.limits.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: adapter.limits.maxComputeWorkgroupSizeX,
        maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
      },
    });
    pinned.push(device);
    return device;
  })().catch((e) => {
    validator = undefined;
    throw e;
  });
  return validator.then((device) => ({
    device,
    subgroupMaxSize: (device as unknown as { adapterInfo?: { subgroupMaxSize?: number } })
      .adapterInfo?.subgroupMaxSize ?? 128,
  }));
}

/** The `GPU` object of a backend: `navigator.gpu` for Deno, Dawn's for Dawn. */
async function gpuOf(backend: Backend): Promise<GPU | undefined> {
  if (backend === "dawn") return await dawnGpu();
  return typeof navigator !== "undefined" && "gpu" in navigator ? navigator.gpu : undefined;
}

/**
 * An adapter of `backend` (null when it has none, or no WebGPU at all); Dawn's is held for
 * the process's life (see {@linkcode pinDawnObject}).
 */
export async function requestAdapterOf(
  backend: Backend,
  options?: GPURequestAdapterOptions,
): Promise<GPUAdapter | null> {
  const adapter = await (await gpuOf(backend))?.requestAdapter(options) ?? null;
  if (adapter && backend === "dawn") pinDawnObject(adapter);
  return adapter;
}

/**
 * Resolves "auto": Dawn when it loads and its adapter has {@linkcode SUBGROUP_MATRIX}, else
 * Deno's own; `why` says which and why (for the run's log). A named backend is itself.
 */
export async function resolveBackend(
  choice: BackendChoice,
  powerPreference: GPUPowerPreference = "high-performance",
): Promise<{ backend: Backend; why?: string }> {
  if (choice !== "auto") return { backend: choice };
  try {
    const adapter = await requestAdapterOf("dawn", { powerPreference });
    if ((adapter?.features as ReadonlySet<string> | undefined)?.has(SUBGROUP_MATRIX)) {
      return { backend: "dawn", why: `auto: Dawn's adapter has ${SUBGROUP_MATRIX}` };
    }
    return {
      backend: "deno",
      why: adapter
        ? `auto: Dawn's adapter has no ${SUBGROUP_MATRIX}`
        : "auto: Dawn found no adapter",
    };
  } catch (e) {
    return { backend: "deno", why: `auto: ${(e as Error).message}` };
  }
}

/** Uses of subgroup builtins (functions and `@builtin(subgroup_...)` inputs). */
const SUBGROUP_USE = /\bsubgroup[A-Z]\w*\s*\(|@builtin\(\s*subgroup_/;
const ENABLE_SUBGROUPS = /^[ \t]*enable\s+subgroups\s*;[ \t]*\n?/m;

/**
 * `code` with the `enable` directives `backend`'s compiler needs, and the number of lines
 * added before it (negative when removed), so compile errors keep the body's line numbers.
 * Dawn: `enable subgroups;` when subgroup builtins are used; Deno: none (naga rejects it).
 * `enable f16;` is in the spec and both accept it: kernel headers write it themselves.
 */
export function withDirectives(code: string, backend: Backend): { code: string; lines: number } {
  const has = ENABLE_SUBGROUPS.test(code);
  if (backend === "dawn" && !has && SUBGROUP_USE.test(code)) {
    return { code: `enable subgroups;\n${code}`, lines: 1 };
  }
  if (backend === "deno" && has) {
    const m = ENABLE_SUBGROUPS.exec(code)!;
    return { code: code.replace(ENABLE_SUBGROUPS, ""), lines: m[0].endsWith("\n") ? -1 : 0 };
  }
  return { code, lines: 0 };
}

/**
 * The `--backend` row every task's configuration table shares (src/table.ts). Unset means
 * WEBGPU_GPT2_BACKEND, else "deno"; a resumed run does not inherit it (any backend gives the
 * same numbers).
 */
export const BACKEND_ROW: ConfigRow<BackendChoice | undefined> = {
  flag: "backend",
  kind: "string",
  choices: BACKEND_CHOICES,
  default: undefined,
  arg: BACKEND_CHOICES.join("|"),
  resume: "fresh",
  help: "WebGPU implementation: deno (Deno's own, the default), dawn (npm:webgpu, Chrome's; " +
    "subgroup matrices, fast readbacks) or auto (Dawn where it has tensor cores); default " +
    "WEBGPU_GPT2_BACKEND, else deno",
};
