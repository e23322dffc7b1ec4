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

/**
 * `code` with each `alias NAME = f32;` line set to the given type, and
 * `enable f16;` first when any is f16. Every alias named must exist.
 *
 * @deprecated Declare the kernel with `defineKernel` and `"float"` bindings: variants come
 * from the declaration, not from edits of kernel text. No kernel of the package uses this.
 */
export function typedKernel(code: string, aliases: Record<string, DType>): string {
  let out = code;
  for (const [name, t] of Object.entries(aliases)) {
    const re = new RegExp(`^alias ${name} = f32;`, "m");
    if (!re.test(out)) throw new Error(`Kernel has no line "alias ${name} = f32;"`);
    out = out.replace(re, `alias ${name} = ${t};`);
  }
  return Object.values(aliases).includes("f16") ? `enable f16;\n${out}` : out;
}

/** f32 values rounded to f16 and back (what an f16 buffer would hold). */
export function roundToF16(x: ArrayLike<number>): Float32Array<ArrayBuffer> {
  return Float32Array.from(new Float16Array(Array.from(x)));
}
