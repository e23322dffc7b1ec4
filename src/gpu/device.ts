/**
 * One place that finds the WebGPU adapter, requests its real limits and the
 * optional features we use, and says clearly what is missing.
 *
 * @module
 */

import {
  type Backend,
  type BackendChoice,
  backendChoice,
  mendDawnQueue,
  pinDawnObject,
  requestAdapterOf,
  resolveBackend,
  SUBGROUP_MATRIX,
} from "./backend.ts";

/** Optional adapter features the package uses when they exist (the last one Dawn's only). */
export const OPTIONAL_FEATURES: GPUFeatureName[] = [
  "shader-f16",
  "timestamp-query",
  "subgroups",
  SUBGROUP_MATRIX as GPUFeatureName,
];

/** A subgroup-matrix shape the adapter supports (`GPUAdapterInfo.subgroupMatrixConfigs`). */
export interface SubgroupMatrixConfig {
  /** Element type of the left and right fragments ("f16", "f32", "i8", ...). */
  componentType: string;
  /** Element type of the result fragment. */
  resultComponentType: string;
  /** Rows of the left and result fragments. */
  M: number;
  /** Columns of the right and result fragments. */
  N: number;
  /** Columns of the left fragment, rows of the right one. */
  K: number;
}

/** Limits requested at the adapter's maximum (WebGPU defaults are far lower). */
const RAISED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
] as const;

/** The limits the package reads, copied from the device. */
export interface GpuLimits {
  /** Largest storage-buffer binding, in bytes. */
  maxStorageBufferBindingSize: number;
  /** Largest buffer the device can create, in bytes. */
  maxBufferSize: number;
  /** Most storage buffers one shader stage may bind. */
  maxStorageBuffersPerShaderStage: number;
  /** Workgroup (shared) memory per workgroup, in bytes. */
  maxComputeWorkgroupStorageSize: number;
  /** Most invocations in one workgroup (the product of its x, y and z sizes). */
  maxComputeInvocationsPerWorkgroup: number;
  /** Largest workgroup size in x. */
  maxComputeWorkgroupSizeX: number;
  /** Largest workgroup size in y. */
  maxComputeWorkgroupSizeY: number;
  /** Largest workgroup size in z. */
  maxComputeWorkgroupSizeZ: number;
  /** Most workgroups in one dispatch dimension (at least 65535). */
  maxComputeWorkgroupsPerDimension: number;
  /** Storage-buffer binding offsets must be multiples of this many bytes. */
  minStorageBufferOffsetAlignment: number;
  /** Uniform-buffer binding offsets must be multiples of this many bytes. */
  minUniformBufferOffsetAlignment: number;
}

/** A device with what we learnt about its adapter. */
export interface Gpu {
  /** The device, requested with the adapter's limits and optional features. */
  device: GPUDevice;
  /** The WebGPU implementation it came from (src/gpu/backend.ts). */
  backend: Backend;
  /** Why `--backend auto` took this backend; undefined when it was named. */
  backendWhy?: string;
  /** Human-readable adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  name: string;
  /** True for software adapters (llvmpipe, SwiftShader, WARP): kernels pick CPU-friendly variants. */
  isCpu: boolean;
  /**
   * The driver and its version where they can be read ("Mesa 25.0.7", "nvidia 550.54.15"),
   * else "": WebGPU does not report it, so it is read from the loaded driver library.
   */
  driver: string;
  /** The device's limits that the package reads. */
  limits: GpuLimits;
  /**
   * Whether the device has `shader-f16`, `timestamp-query`, `subgroups` and (Dawn)
   * `chromium-experimental-subgroup-matrix` enabled.
   */
  features: {
    shaderF16: boolean;
    timestampQuery: boolean;
    subgroups: boolean;
    subgroupMatrix?: boolean;
  };
  /** The adapter's largest subgroup size where it says (Dawn does), else 0. */
  subgroupMaxSize?: number;
  /** The subgroup-matrix shapes the adapter supports (empty without the feature). */
  subgroupMatrixConfigs?: SubgroupMatrixConfig[];
  /** Messages of uncaptured WebGPU errors so far (such errors only drop the command). */
  errors: string[];
}

/** Thrown when no WebGPU adapter can be found; tests catch it to skip. */
export class NoAdapterError extends Error {
  /**
   * Builds the message, which says how to install a driver.
   *
   * @param detail Appended to the message (e.g. why there is no adapter).
   */
  constructor(detail = "") {
    super(
      "No WebGPU adapter found: install a GPU driver with Vulkan support, or " +
        "mesa-vulkan-drivers for a CPU fallback (apt-get install -y mesa-vulkan-drivers)" +
        detail,
    );
    this.name = "NoAdapterError";
  }
}

/** Options for {@linkcode requestGpu}. */
export interface RequestGpuOptions {
  /** Which adapter to ask for when there are several; "high-performance" by default. */
  powerPreference?: GPUPowerPreference;
  /** Features that must exist; a missing one is an error that names it. */
  requiredFeatures?: GPUFeatureName[];
  /** Optional features not to use even when the adapter has them (e.g. to test fallbacks). */
  withoutFeatures?: GPUFeatureName[];
  /** The WebGPU implementation; by default WEBGPU_GPT2_BACKEND's, else Deno's own. */
  backend?: BackendChoice;
}

const CPU_ADAPTER = /llvmpipe|lavapipe|swiftshader|warp|softpipe/i;

/**
 * Keeps the Vulkan stack quiet in a headless shell. While an adapter is created, Mesa's
 * Vulkan drivers look for a Wayland display, and with XDG_RUNTIME_DIR unset (ssh, containers,
 * CI) libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
 * twice: alarming and meaningless here, since nothing is displayed. On Linux, when the
 * variable is unset, this points it at a private directory (/tmp/webgpu-gpt2-UID, mode
 * 0700) for this process before the first adapter request. Without --allow-env (or write
 * access to /tmp) it does nothing and the message may show; nothing else depends on it.
 */
export function quietDisplayProbe(): void {
  try {
    if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
    const dir = `/tmp/webgpu-gpt2-${Deno.uid() ?? "user"}`;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch {
    // No permission: the probe's message is harmless.
  }
}

/**
 * Gets an adapter and a device with the adapter's real limits and every optional
 * feature it has.
 *
 * @example
 * ```ts
 * const gpu = await requestGpu();
 * console.log(gpu.name, gpu.limits.maxStorageBufferBindingSize);
 * ```
 */
export async function requestGpu(options: RequestGpuOptions = {}): Promise<Gpu> {
  const { backend, why } = await resolveBackend(
    options.backend ?? backendChoice(),
    options.powerPreference,
  );
  if (backend === "deno" && (typeof navigator === "undefined" || !("gpu" in navigator))) {
    throw new NoAdapterError(": this runtime has no navigator.gpu (use Deno 2.9 or later)");
  }
  quietDisplayProbe();
  const adapter = await requestAdapterOf(backend, {
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) {
    throw new NoAdapterError(
      backend === "dawn" ? " (Dawn found none: it needs Vulkan 1.1+, e.g. Mesa 24 or later)" : "",
    );
  }
  for (const f of options.requiredFeatures ?? []) {
    if (!adapter.features.has(f)) {
      throw new Error(
        `WebGPU adapter "${adapterName(adapter)}" lacks the feature "${f}": ` +
          "use a GPU and driver that support it, or run without the option that needs it",
      );
    }
  }
  // Deno's WebGPU grants "subgroups" on request although adapter.features omits it: asked
  // for there anyway, and dropped again if the device refuses it.
  const offered = (f: GPUFeatureName) =>
    adapter.features.has(f) || (backend === "deno" && f === "subgroups");
  const requiredFeatures = [
    ...new Set([
      ...(options.requiredFeatures ?? []),
      ...OPTIONAL_FEATURES.filter((f) => offered(f) && !options.withoutFeatures?.includes(f)),
    ]),
  ];
  const requiredLimits: Record<string, number> = {};
  for (const k of RAISED_LIMITS) requiredLimits[k] = adapter.limits[k];
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits }).catch((e) => {
    if (adapter.features.has("subgroups") || !requiredFeatures.includes("subgroups")) throw e;
    const without = requiredFeatures.filter((f) => f !== "subgroups");
    return adapter.requestDevice({ requiredFeatures: without, requiredLimits });
  });
  if (backend === "dawn") {
    pinDawnObject(device);
    mendDawnQueue(device);
  }
  // Errors outside an error scope would otherwise only drop the command silently.
  const errors: string[] = [];
  device.addEventListener("uncapturederror", (e) => {
    const message = (e as GPUUncapturedErrorEvent).error.message;
    errors.push(message);
    console.error(`WebGPU error: ${message}`);
  });
  const l = device.limits;
  const name = adapterName(adapter);
  const driver = readDriverVersion(name);
  const advice = driverAdvice(name, driver);
  if (advice && !adviceGiven) {
    adviceGiven = true;
    console.error(`note: ${advice}`);
  }
  return {
    device,
    backend,
    backendWhy: why,
    name,
    driver,
    isCpu: adapter.info.isFallbackAdapter || CPU_ADAPTER.test(name),
    limits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupSizeZ: l.maxComputeWorkgroupSizeZ,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
    },
    features: {
      shaderF16: device.features.has("shader-f16"),
      timestampQuery: device.features.has("timestamp-query"),
      subgroups: device.features.has("subgroups"),
      subgroupMatrix: device.features.has(SUBGROUP_MATRIX as GPUFeatureName),
    },
    ...subgroupInfo(adapter),
    errors,
  };
}

/** The adapter's subgroup sizes and subgroup-matrix shapes, as far as it tells them. */
function subgroupInfo(adapter: GPUAdapter) {
  const info = adapter.info as GPUAdapterInfo & {
    subgroupMaxSize?: number;
    subgroupMatrixConfigs?: readonly SubgroupMatrixConfig[];
  };
  return {
    subgroupMaxSize: info.subgroupMaxSize ?? 0,
    subgroupMatrixConfigs: (info.subgroupMatrixConfigs ?? []).map((c) => ({
      componentType: c.componentType,
      resultComponentType: c.resultComponentType,
      M: c.M,
      N: c.N,
      K: c.K,
    })),
  };
}

function adapterName(adapter: GPUAdapter): string {
  const i = adapter.info;
  return i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(" ") ||
    "unknown adapter";
}

// ---------------------------------------------------------------------------
// The driver's version: WebGPU does not report it, so it is read where the OS keeps it.

let adviceGiven = false;

/**
 * The driver's name and version: NVIDIA's kernel module from /proc, Mesa's from the string
 * "Mesa X.Y.Z" inside the Vulkan driver library this process loaded (found in
 * /proc/self/maps). "" where neither can be read (another OS, no --allow-read).
 */
export function readDriverVersion(adapterName: string): string {
  try {
    if (Deno.build.os !== "linux") return "";
    if (/llvmpipe|lavapipe/i.test(adapterName)) {
      const lib = /\s(\/\S*libvulkan_lvp\S*\.so\S*)$/m.exec(
        Deno.readTextFileSync("/proc/self/maps"),
      );
      return lib ? mesaVersionIn(Deno.readFileSync(lib[1])) : "";
    }
    const v = Deno.readTextFileSync("/proc/driver/nvidia/version");
    const m = /Kernel Module\s+(?:for \S+\s+)?(\d\S*)/.exec(v);
    return m ? `nvidia ${m[1]}` : "";
  } catch {
    return "";
  }
}

/** "Mesa X.Y.Z" as a Mesa library names its own version, or "" when it holds none. */
export function mesaVersionIn(library: Uint8Array): string {
  const m = /Mesa (\d+\.\d+\.\d+)/.exec(new TextDecoder("latin1").decode(library));
  return m ? `Mesa ${m[1]}` : "";
}

/**
 * Advice for a driver that holds the package back, or undefined. Mesa's lavapipe before 24
 * cuts every invocation off after ~65,535 loop iterations and ran the kernels 3x slower than
 * 25 on a Zen 3 box (on an AVX-512 EPYC, 22.3 was as fast); requestGpu prints this once per
 * process, on stderr.
 */
export function driverAdvice(adapterName: string, driver: string): string | undefined {
  const m = /^Mesa (\d+)\./.exec(driver);
  if (!m || Number(m[1]) >= 24 || !/llvmpipe|lavapipe/i.test(adapterName)) return undefined;
  return `this CPU adapter is lavapipe from ${driver}; Mesa 24 or later has no cap on loop ` +
    "iterations and ran the kernels up to 3x faster on some CPUs (not all: see README, " +
    "Requirements): on Debian 12 add the bookworm-backports suite and run " +
    "`apt-get install -t bookworm-backports mesa-vulkan-drivers` (Debian 13 and Ubuntu 24.04 " +
    "ship it)";
}
