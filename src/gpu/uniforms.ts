/**
 * Uniform structs by field name: WGSL's layout rules for the uniform address space and the
 * packing of named values into words (src/gpu/define_kernel.ts declares the fields).
 *
 * @module
 */

/** Type of a uniform field (host-shareable, 32-bit components). */
export type UniformType = "u32" | "i32" | "f32" | "vec2u" | "vec2f" | "vec4u" | "vec4i" | "vec4f";

/** Named uniform fields, in the order WGSL lays them out. */
export type UniformFields = Record<string, UniformType>;

// ---------------------------------------------------------------------------
// Uniform layout (WGSL's rules for the uniform address space: scalars align to 4, vec2 to 8,
// vec4 to 16; the struct to at least 16, its size rounded up to that)

const uniformShape: Record<UniformType, { align: number; words: number; kind: "u" | "i" | "f" }> = {
  u32: { align: 4, words: 1, kind: "u" },
  i32: { align: 4, words: 1, kind: "i" },
  f32: { align: 4, words: 1, kind: "f" },
  vec2u: { align: 8, words: 2, kind: "u" },
  vec2f: { align: 8, words: 2, kind: "f" },
  vec4u: { align: 16, words: 4, kind: "u" },
  vec4i: { align: 16, words: 4, kind: "i" },
  vec4f: { align: 16, words: 4, kind: "f" },
};

/** A field's byte offset and type in a uniform struct. */
export interface UniformSlot {
  /** Byte offset in the struct. */
  offset: number;
  /** The field's type. */
  type: UniformType;
}

/** Byte offsets of uniform fields and the struct's size, as WGSL lays them out. */
export function uniformLayout(
  fields: Readonly<Record<string, UniformType>>,
): { slots: Record<string, UniformSlot>; size: number } {
  const slots: Record<string, UniformSlot> = {};
  let end = 0, align = 16;
  for (const [name, type] of Object.entries(fields)) {
    const s = uniformShape[type];
    if (!s) throw new TypeError(`Uniform field "${name}" has unknown type "${type}"`);
    const offset = Math.ceil(end / s.align) * s.align;
    slots[name] = { offset, type };
    end = offset + s.words * 4;
    align = Math.max(align, s.align);
  }
  return { slots, size: Math.max(align, Math.ceil(end / align) * align) };
}

const f32Scratch = new Float32Array(1);
const u32View = new Uint32Array(f32Scratch.buffer);
const i32Scratch = new Int32Array(1);
const i32AsU32 = new Uint32Array(i32Scratch.buffer);

function uniformWord(where: string, kind: "u" | "i" | "f", x: number): number {
  if (typeof x !== "number" || !Number.isFinite(x) && kind !== "f") {
    throw new TypeError(`${where} is ${x}: pass a finite number`);
  }
  if (kind === "f") {
    f32Scratch[0] = x;
    return u32View[0];
  }
  if (!Number.isInteger(x)) throw new TypeError(`${where} is ${x}: pass an integer`);
  if (kind === "u") {
    if (x < 0 || x > 0xffffffff) throw new RangeError(`${where} is ${x}: out of u32's range`);
    return x;
  }
  if (x < -(2 ** 31) || x >= 2 ** 31) throw new RangeError(`${where} is ${x}: out of i32's range`);
  i32Scratch[0] = x;
  return i32AsU32[0];
}

/**
 * Packs named values into a uniform struct's words; every field must be given, and nothing
 * else (`what` names the struct in errors).
 */
export function packUniforms(
  what: string,
  fields: Readonly<Record<string, UniformType>>,
  values: Readonly<Record<string, number | readonly number[]>>,
): Uint32Array<ArrayBuffer> {
  const { slots, size } = uniformLayout(fields);
  const words = new Uint32Array(size / 4);
  for (const name of Object.keys(values)) {
    if (!(name in slots)) {
      throw new TypeError(
        `${what}: unknown uniform "${name}": its fields are ${Object.keys(fields).join(", ")}`,
      );
    }
  }
  for (const [name, slot] of Object.entries(slots)) {
    if (!(name in values)) throw new TypeError(`${what}: uniform "${name}" is missing: pass it`);
    writeField(what, name, slot, values[name], words);
  }
  return words;
}

/** Writes one named field's value at its slot of `words` (`what` names the struct in errors). */
export function writeField(
  what: string,
  name: string,
  slot: UniformSlot,
  value: number | readonly number[],
  words: Uint32Array,
): void {
  const s = uniformShape[slot.type];
  const xs = typeof value === "number" ? [value] : value;
  if (xs.length !== s.words) {
    throw new TypeError(
      `${what}: uniform "${name}" is a ${slot.type}: pass ${
        s.words === 1 ? "a number" : `${s.words} numbers`
      }`,
    );
  }
  xs.forEach((x, i) =>
    words[slot.offset / 4 + i] = uniformWord(`${what}: uniform "${name}"`, s.kind, x)
  );
}

/** 32-bit words a field of this type holds. */
export function uniformWords(t: UniformType): number {
  return uniformShape[t].words;
}
