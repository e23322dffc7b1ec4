/**
 * Building a dispatch from a kernel, its buffer ranges and its uniform
 * parameters, once at setup.
 *
 * @module
 */

import type { Dispatch } from "./dispatch.ts";
import type { OverrideConstants } from "./pipelines.ts";
import type { Runtime } from "./runtime.ts";

/** A range of a buffer, in bytes; the whole buffer when offset and size are absent. */
export interface BufferRange {
  /** The buffer to bind. */
  buffer: GPUBuffer;
  /** Start of the range in bytes (0 by default); a multiple of the storage offset alignment. */
  offset?: number;
  /** Length of the range in bytes; the rest of the buffer by default. */
  size?: number;
}

/** What {@linkcode makeDispatch} needs. */
export interface DispatchSpec {
  /** Dispatch name, for profiles and errors (and the pipeline label without `pipelineName`). */
  name: string;
  /** The pipeline's label, for compile errors and logs, when it is not `name`. */
  pipelineName?: string;
  /** WGSL source code. */
  code: string;
  /** Entry-point function in `code`. */
  entryPoint: string;
  /** Lines of generated header before the .wgsl body (for compile errors; 0 by default). */
  headerLines?: number;
  /** The body's file, for compile errors (`<pipeline name>.wgsl` by default). */
  file?: string;
  /**
   * The bind-group layout's entries (src/gpu/define_kernel.ts makes them from a kernel's
   * declaration); without one the pipeline's layout is "auto".
   */
  layout?: readonly GPUBindGroupLayoutEntry[];
  /** Override constants for the pipeline (none by default). */
  constants?: OverrideConstants;
  /** Buffer bindings (storage, or a shared uniform buffer) by binding number. */
  buffers: Record<number, BufferRange>;
  /** Uniform parameters (u32 words; floats go through f32Bits) and their binding number. */
  uniform?: { binding: number; words: number[] };
  /** Workgroup counts in x, y and z. */
  workgroups: readonly [number, number, number];
  /** Floating-point operations the dispatch does, for GFLOP/s reports (0 by default). */
  flops?: number;
  /**
   * The most loop iterations one invocation runs, from the formula in the kernel's header,
   * and the shape it was computed for (named in the error when it is over the budget).
   */
  loops?: { bound: number; shape: Record<string, number> };
}

/**
 * The most loop iterations one invocation may run. llvmpipe (lavapipe) stops every
 * invocation after about 65,535 iterations of all its loops together, silently (measured:
 * tests/loop_budget_test.ts); GPUs have no such cap, but a kernel that needs more in one
 * invocation has too little parallelism for them anyway. Kernels split their work so that
 * the bound in their header stays under this, and {@linkcode makeDispatch} refuses any
 * dispatch whose bound does not.
 */
export const LOOP_BUDGET = 65535;

/**
 * Rows (or elements) one invocation walks per dispatch in a reduction over a long dimension;
 * builders split longer walks into dispatches, in order, with {@linkcode splitRange}.
 */
export const WALK_ROWS = 32768;

/** The ranges [start, end) of at most `per` that cover [0, n), in order. */
export function splitRange(n: number, per: number): [number, number][] {
  const out: [number, number][] = [];
  for (let r = 0; r < n; r += per) out.push([r, Math.min(n, r + per)]);
  return out;
}

/**
 * Throws when a kernel's per-invocation loop bound is over {@linkcode LOOP_BUDGET}, naming
 * the kernel and the shape.
 */
export function checkLoopBound(
  name: string,
  loops: { bound: number; shape: Record<string, number> },
): void {
  if (loops.bound <= LOOP_BUDGET) return;
  const shape = Object.entries(loops.shape).map(([k, v]) => `${k}=${v}`).join(" ");
  throw new RangeError(
    `Kernel "${name}" at ${shape}: one invocation would run ${loops.bound} loop iterations, ` +
      `over the budget of ${LOOP_BUDGET} (CPU adapters such as llvmpipe silently stop an ` +
      "invocation there): split the work into smaller dispatches",
  );
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bit pattern of a float32, for a uniform word that WGSL reads as f32. */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}

/**
 * Grid for `n` invocations in workgroups of `size`, folded into y when x would
 * pass WebGPU's 65535 workgroups per dimension. Kernels recover the linear
 * index as gid.x + gid.y * num_workgroups.x * size.
 */
export function grid1d(n: number, size: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / size));
  if (groups <= 65535) return [groups, 1, 1];
  const y = Math.ceil(groups / 65535);
  return [Math.ceil(groups / y), y, 1];
}

/** Compiles (or reuses) the pipeline and creates the bind group and uniform buffer. */
export async function makeDispatch(rt: Runtime, spec: DispatchSpec): Promise<Dispatch> {
  if (spec.loops) checkLoopBound(spec.name, spec.loops);
  const pipeline = await rt.pipelines.get(
    {
      name: spec.pipelineName ?? spec.name,
      code: spec.code,
      entryPoint: spec.entryPoint,
      headerLines: spec.headerLines,
      file: spec.file,
      layout: spec.layout,
    },
    spec.constants ?? {},
  );
  const limit = rt.gpu.limits.maxStorageBufferBindingSize;
  const align = rt.gpu.limits.minStorageBufferOffsetAlignment;
  const entries: GPUBindGroupEntry[] = [];
  const resources: GPUBuffer[] = [];
  for (const [binding, r] of Object.entries(spec.buffers)) {
    const offset = r.offset ?? 0;
    const size = r.size ?? r.buffer.size - offset;
    if (offset % align !== 0) {
      throw new RangeError(
        `Kernel "${spec.name}" binding ${binding} ("${r.buffer.label}"): offset ${offset} is ` +
          `not a multiple of ${align} bytes: align the tensor`,
      );
    }
    if (size > limit) {
      throw new RangeError(
        `Kernel "${spec.name}" binding ${binding} ("${r.buffer.label}"): ${size} bytes is over ` +
          `the adapter's ${limit}-byte binding limit: split the work into smaller ranges`,
      );
    }
    entries.push({ binding: Number(binding), resource: { buffer: r.buffer, offset, size } });
  }
  if (spec.uniform) {
    const words = new Uint32Array(Math.max(4, Math.ceil(spec.uniform.words.length / 4) * 4));
    words.set(spec.uniform.words);
    const buffer = rt.arena.allocWith(
      `${spec.name}.params`,
      "scratch",
      words,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    entries.push({ binding: spec.uniform.binding, resource: { buffer } });
    resources.push(buffer);
  }
  const bindGroup = rt.device.createBindGroup({
    label: spec.name,
    layout: spec.layout
      ? rt.pipelines.layout(spec.layout).bindGroupLayout
      : pipeline.getBindGroupLayout(0),
    entries,
  });
  return {
    name: spec.name,
    pipeline,
    bindGroups: [bindGroup],
    workgroups: spec.workgroups,
    flops: spec.flops ?? 0,
    resources,
  };
}
