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
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** What {@linkcode makeDispatch} needs. */
export interface DispatchSpec {
  name: string;
  code: string;
  entryPoint: string;
  constants?: OverrideConstants;
  /** Buffer bindings (storage, or a shared uniform buffer) by binding number. */
  buffers: Record<number, BufferRange>;
  /** Uniform parameters (u32 words; floats go through f32Bits) and their binding number. */
  uniform?: { binding: number; words: number[] };
  workgroups: readonly [number, number, number];
  flops?: number;
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
  const pipeline = await rt.pipelines.get(
    { name: spec.name, code: spec.code, entryPoint: spec.entryPoint },
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
    layout: pipeline.getBindGroupLayout(0),
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
