/**
 * One GPU per process on a machine with several: the Vulkan device-select variables that make
 * Deno's WebGPU adapter a given local rank's GPU.
 *
 * @module
 */

import type { EnvReader } from "./dist.ts";

// ---------------------------------------------------------------------------
// GPU per process. Deno's requestAdapter takes no adapter index: wgpu sorts
// the adapters by type (discrete first) and takes the first, so every rank on
// a machine with identical GPUs would land on the same one. What does choose
// is the Vulkan device list itself, which Mesa's device-select layer (an
// implicit layer installed with mesa-vulkan-drivers, applied to every
// driver's devices, NVIDIA's included) can cut down to one PCI address.
// The layer and the loader read these variables when Deno creates its Vulkan
// instance, at the first requestAdapter, so Deno.env.set before that works.

/** Options for {@link gpuSelectionEnv}. */
export interface GpuSelectionOptions {
  /**
   * PCI addresses ("0000:41:00.0") of this machine's GPUs, in the order local
   * ranks take them, e.g. from
   * `nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader`.
   * Default: display controllers from /sys/bus/pci/devices (NVIDIA, AMD or,
   * when there is no other, Intel), sorted by address.
   */
  pciAddresses?: readonly string[];
  /** Where to look for selections the user already made (default Deno.env). */
  env?: EnvReader;
}

/** Variables a user sets to choose the Vulkan device; when one is set we leave the choice alone. */
const USER_SELECTORS = [
  "DRI_PRIME",
  "MESA_VK_DEVICE_SELECT",
  "VK_LOADER_DEVICE_SELECT",
  "VK_LOADER_DEVICE_ID_FILTER",
  "VK_ICD_FILENAMES",
  "VK_DRIVER_FILES",
  "VK_LOADER_DRIVERS_SELECT",
];

/**
 * Environment variables that make this process's WebGPU adapter the GPU at
 * index `localRank % gpus` of this machine. Empty when there is at most one
 * GPU (nothing to choose) or the user already chose with one of the Vulkan
 * selector variables. Set them with Deno.env.set before the first
 * `navigator.gpu.requestAdapter()`; needs Mesa's device-select layer
 * (`apt-get install mesa-vulkan-drivers`), see docs_dist_notes.md.
 *
 * @example
 * ```ts
 * const dist = await initDist();
 * for (const [k, v] of Object.entries(gpuSelectionEnv(dist.localRank))) Deno.env.set(k, v);
 * // ... then create the WebGPU runtime
 * ```
 */
export function gpuSelectionEnv(
  localRank: number,
  options: GpuSelectionOptions = {},
): Record<string, string> {
  if (!Number.isInteger(localRank) || localRank < 0) {
    throw new RangeError(`localRank must be a whole number >= 0, got ${localRank}`);
  }
  const env = options.env ?? Deno.env;
  if (USER_SELECTORS.some((k) => env.get(k) !== undefined)) return {};
  const gpus = options.pciAddresses ?? listPciGpus();
  if (gpus.length <= 1) return {};
  const m = /^(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i.exec(
    gpus[localRank % gpus.length].trim(),
  );
  if (!m) {
    throw new RangeError(
      `not a PCI address: "${gpus[localRank % gpus.length]}": use the form 0000:41:00.0`,
    );
  }
  const domain = (m[1] ?? "0000").slice(-4).toLowerCase();
  const tag = `pci-${domain}_${m[2].toLowerCase()}_${m[3].toLowerCase()}_${m[4]}`;
  return {
    // The device-select layer's PCI tag; with FORCE_DEFAULT_DEVICE it hides
    // every other device rather than only moving this one to the front.
    DRI_PRIME: tag,
    MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: "1",
    // Without Vulkan, wgpu falls back to OpenGL (llvmpipe): a wrong selection
    // should fail loudly instead of training on the CPU.
    DENO_WEBGPU_BACKEND: "vulkan",
  };
}

/** GPUs from sysfs, sorted by PCI address; empty off Linux or without read access. */
function listPciGpus(): string[] {
  const found: { addr: string; vendor: string }[] = [];
  try {
    for (const e of Deno.readDirSync("/sys/bus/pci/devices")) {
      const dir = `/sys/bus/pci/devices/${e.name}`;
      const cls = Deno.readTextFileSync(`${dir}/class`).trim(); // 0x0300xx VGA, 0x0302xx 3D
      if (!cls.startsWith("0x03")) continue;
      const vendor = Deno.readTextFileSync(`${dir}/vendor`).trim();
      // NVIDIA, AMD, Intel; a server's BMC display (e.g. ASPEED) has no Vulkan driver.
      if (["0x10de", "0x1002", "0x8086"].includes(vendor)) found.push({ addr: e.name, vendor });
    }
  } catch {
    return [];
  }
  // An Intel iGPU beside discrete cards would take a rank of its own.
  const discrete = found.filter((g) => g.vendor !== "0x8086");
  return (discrete.length > 0 ? discrete : found).map((g) => g.addr).sort();
}
