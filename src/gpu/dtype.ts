/**
 * Element types of buffers (f32, or f16 for mixed precision) and WGSL kernels
 * specialised to them.
 *
 * A buffer holds one element type. The arena records it at allocation
 * (`arena.alloc(..., { dtype: "f16" })`), and kernel builders read it back
 * with {@linkcode dtypeOf}, so a model switches precision by allocating
 * differently, not by threading types through every call.
 *
 * Kernels that accept either type declare such bindings as `"float"` in their
 * declaration (src/gpu/define_kernel.ts), which generates one alias per tensor, e.g.
 * `alias out_t = f16;`, and `enable f16;`; bodies read with `f32(x[i])` and write with
 * `out_t(value)`.
 *
 * @module
 */

/** An element type a buffer can hold. */
export type DType = "f32" | "f16";

/** Bytes per element. */
export function dtypeBytes(t: DType): number {
  return t === "f16" ? 2 : 4;
}

const types = new WeakMap<GPUBuffer, DType>();

/** Records a buffer's element type (done by the arena). */
export function setDType(buffer: GPUBuffer, t: DType): void {
  if (t === "f32") types.delete(buffer);
  else types.set(buffer, t);
}

/** A buffer's element type: f32 unless it was allocated as something else. */
export function dtypeOf(buffer: GPUBuffer): DType {
  return types.get(buffer) ?? "f32";
}

/** f32 values rounded to f16 and back (what an f16 buffer would hold). */
export function roundToF16(x: ArrayLike<number>): Float32Array<ArrayBuffer> {
  return Float32Array.from(new Float16Array(Array.from(x)));
}
