/**
 * The pipeline cache: compute pipelines keyed by kernel source, entry point and
 * override constants, compiled once and shared. Compile errors name the kernel
 * and give line:column.
 *
 * @module
 */

import { type Backend, withDirectives } from "./backend.ts";
import { debugLevel, debugLog } from "./debug.ts";

/** Pipeline compiles slower than this are logged under DEBUG=1. */
const SLOW_COMPILE_MS = 1000;

/** A WGSL kernel: its name (for errors and profiles) and source. */
export interface KernelSource {
  /** Kernel name, used as the pipeline label and in compile errors. */
  name: string;
  /** WGSL source code. */
  code: string;
  /** Entry-point function; "main" by default. */
  entryPoint?: string;
  /** Lines of generated header before the .wgsl body, so errors give the body's lines. */
  headerLines?: number;
  /** The body's file, for compile errors (`<name>.wgsl` by default). */
  file?: string;
  /** Bind group 0's layout entries, explicit; "auto" without them. */
  layout?: readonly GPUBindGroupLayoutEntry[];
}

/** An explicit layout: bind group 0 and the pipeline layout around it. */
export interface KernelLayout {
  /** Bind group 0's layout. */
  bindGroupLayout: GPUBindGroupLayout;
  /** The pipeline layout of that one group. */
  pipelineLayout: GPUPipelineLayout;
}

/** Override constants as passed to `GPUProgrammableStage.constants`. */
export type OverrideConstants = Record<string, number>;

/** A shader that failed to compile or validate. */
export class ShaderError extends Error {
  /**
   * Builds the message from the kernel's name and the compiler's messages.
   *
   * @param kernel The kernel's name.
   * @param detail What went wrong, e.g. `name.wgsl:line:column: message` lines.
   */
  constructor(kernel: string, detail: string) {
    super(`Kernel "${kernel}" failed to compile: ${detail}`);
    this.name = "ShaderError";
  }
}

/**
 * Compiles each (source, entry point, constants) once.
 *
 * @example
 * ```ts
 * const gpu = await requestGpu();
 * const cache = new PipelineCache(gpu.device);
 * const p = await cache.get({ name: "fill", code: "@compute @workgroup_size(1) fn main() {}" });
 * ```
 */
export class PipelineCache {
  /** The device pipelines are compiled for. */
  readonly device: GPUDevice;
  /** Its WebGPU implementation, which decides the `enable` directives added to a kernel. */
  readonly backend: Backend;
  #modules = new Map<string, GPUShaderModule>();
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();
  #layouts = new Map<string, KernelLayout>();

  /** An empty cache for `device`, from `backend` (Deno's own by default). */
  constructor(device: GPUDevice, backend: Backend = "deno") {
    this.device = device;
    this.backend = backend;
  }

  /** Number of distinct pipelines compiled so far. */
  get size(): number {
    return this.#pipelines.size;
  }

  /** The bind-group and pipeline layouts for these entries, made once. */
  layout(entries: readonly GPUBindGroupLayoutEntry[]): KernelLayout {
    const key = JSON.stringify(entries);
    let l = this.#layouts.get(key);
    if (!l) {
      const bindGroupLayout = this.device.createBindGroupLayout({ entries: [...entries] });
      const pipelineLayout = this.device.createPipelineLayout({
        bindGroupLayouts: [bindGroupLayout],
      });
      l = { bindGroupLayout, pipelineLayout };
      this.#layouts.set(key, l);
    }
    return l;
  }

  /** The pipeline for a kernel with the given override constants. */
  get(kernel: KernelSource, constants: OverrideConstants = {}): Promise<GPUComputePipeline> {
    const entryPoint = kernel.entryPoint ?? "main";
    const sortedConstants = Object.keys(constants).sort().map((k) => [k, constants[k]]);
    const layoutKey = kernel.layout ? JSON.stringify(kernel.layout) : "auto";
    const key = `${entryPoint}\0${JSON.stringify(sortedConstants)}\0${layoutKey}\0${kernel.code}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      p = this.#compile(kernel, entryPoint, constants);
      this.#pipelines.set(key, p);
      p.catch(() => this.#pipelines.delete(key)); // a failed compile is not cached
    }
    return p;
  }

  async #compile(
    kernel: KernelSource,
    entryPoint: string,
    constants: OverrideConstants,
  ): Promise<GPUComputePipeline> {
    if (debugLevel() === 2) {
      console.error(`[debug2] kernel ${kernel.name} ${JSON.stringify(constants)}\n${kernel.code}`);
    }
    const device = this.device;
    let module = this.#modules.get(kernel.code);
    if (!module) {
      const source = withDirectives(kernel.code, this.backend);
      device.pushErrorScope("validation");
      module = device.createShaderModule({ label: kernel.name, code: source.code });
      const info = await module.getCompilationInfo();
      const scopeError = await device.popErrorScope();
      const errors = info.messages.filter((m) => m.type === "error");
      if (errors.length) {
        const lines = source.code.split("\n"), h = (kernel.headerLines ?? 0) + source.lines;
        // Lines of the generated header are named as such; the body's as in its .wgsl file.
        const at = (line: number) =>
          line > h
            ? `${kernel.file ?? `${kernel.name}.wgsl`}:${line - h}`
            : `${kernel.name} (generated header):${line}`;
        throw new ShaderError(
          kernel.name,
          errors.map((m) =>
            `${at(m.lineNum)}:${m.linePos}: ${m.message.trim()}` +
            (lines[m.lineNum - 1] !== undefined ? `\n    ${lines[m.lineNum - 1].trim()}` : "")
          ).join("\n"),
        );
      }
      if (scopeError) throw new ShaderError(kernel.name, scopeError.message);
      this.#modules.set(kernel.code, module);
    }
    device.pushErrorScope("validation");
    const t0 = performance.now();
    const pipeline = device.createComputePipeline({
      label: kernel.name,
      layout: kernel.layout ? this.layout(kernel.layout).pipelineLayout : "auto",
      compute: { module, entryPoint, constants },
    });
    const ms = performance.now() - t0;
    // The driver compiles here; a slow one is worth knowing about (lavapipe, cold cache).
    if (ms > SLOW_COMPILE_MS) debugLog(1, `compile ${kernel.name}: ${(ms / 1000).toFixed(1)} s`);
    const err = await device.popErrorScope();
    if (err) {
      throw new ShaderError(
        kernel.name,
        `${err.message.trim()} (entry point "${entryPoint}", constants ${
          JSON.stringify(constants)
        })`,
      );
    }
    return pipeline;
  }
}
