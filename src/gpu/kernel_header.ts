/**
 * The WGSL side of a kernel declaration (src/gpu/define_kernel.ts): the element types a buffer
 * binding may have, override constants, and the header generated from them (`enable`
 * directives, float aliases, overrides, uniform structs and the numbered bindings), prepended
 * to the kernel's body. Generated WGSL lives here and nowhere else.
 *
 * @module
 */

import type { DType } from "./dtype.ts";
import type { UniformFields, UniformType } from "./uniforms.ts";

/** Element type of a storage binding: `array<T>` in WGSL. */
export type StorageType =
  | "f32"
  | "f16"
  | "u32"
  | "i32"
  | "vec2f"
  | "vec4f"
  | "vec4h"
  | "vec4u"
  | "atomic<u32>"
  | "atomic<i32>"
  /** f32 or f16, from the bound buffer: `array<alias>`. */
  | "float"
  /** vec4 of f32 or f16, from the bound buffer: `array<vec4<alias>>` (the alias is scalar). */
  | "vec4float";

/** A struct of named fields, declared in the header (`struct <struct> { ... }`). */
export interface StructDecl {
  /** The struct's WGSL name. */
  struct: string;
  /** Its fields in order. */
  fields: UniformFields;
}

/** A buffer binding of a kernel. */
export type BindingDecl =
  | {
    /** `read` and `read_write` are storage; see `type`. */
    access: "read" | "read_write";
    /** Element type of the array, or a struct: the binding is then one struct, no array. */
    type: StorageType | StructDecl;
    /** Name of the element-type alias of a float binding (`<name>_t` by default). */
    alias?: string;
  }
  | {
    /** A uniform buffer the caller owns and binds (written once per step, say). */
    access: "uniform";
    /** A WGSL type, or a struct of named fields. */
    type: UniformType | StructDecl;
  };

/** An override constant: its WGSL type and default (none: every dispatch must set it). */
export type OverrideDecl =
  | "u32"
  | "i32"
  | "f32"
  | "bool"
  | { type: "u32" | "i32" | "f32" | "bool"; default?: number | boolean };

/** Storage element types that hold f16 whatever the bound buffers are. */
export const storageF16: ReadonlySet<StorageType> = new Set<StorageType>(["f16", "vec4h"]);

/** An override declaration in its long form. */
export function overrideDecl(d: OverrideDecl): { type: string; default?: number | boolean } {
  return typeof d === "string" ? { type: d } : d;
}

/** The element-type alias of a float binding (`float` or `vec4float`); none for the others. */
export function floatAlias(name: string, d: BindingDecl): string | undefined {
  if (d.access === "uniform" || (d.type !== "float" && d.type !== "vec4float")) return;
  return d.alias ?? `${name}_t`;
}

function wgslLiteral(type: string, v: number | boolean): string {
  if (type === "bool") return v ? "true" : "false";
  if (type === "u32") return `${v}u`;
  if (type === "i32") return `${v}i`;
  return Number.isInteger(v) ? `${v}.0` : `${v}`;
}

function wgslStruct(name: string, fields: Record<string, string>): string {
  return `struct ${name} { ${Object.entries(fields).map(([f, t]) => `${f}: ${t}`).join(", ")} }`;
}

/** A checked declaration with its bindings numbered: what a header is generated from. */
export interface HeaderSpec {
  /** Kernel name. */
  name: string;
  /** Buffer bindings by name. */
  bindings: Readonly<Record<string, BindingDecl>>;
  /** Binding names in binding-number order. */
  names: readonly string[];
  /** Binding numbers by name (the uniform `p` last, when there is one). */
  numbers: Readonly<Record<string, number>> & { p?: number };
  /** The float bindings' aliases, each once. */
  aliases: readonly string[];
  /** Fields of the per-dispatch uniform `p: Params` (none: no uniform). */
  uniforms: Readonly<Record<string, UniformType>>;
  /** Override constants. */
  overrides: Readonly<Record<string, OverrideDecl>>;
  /** Extra `enable` directives. */
  enables: readonly string[];
}

/** The WGSL header of a kernel, for the given float aliases (f32 where absent). */
export function kernelHeader(spec: HeaderSpec, types: Readonly<Record<string, DType>>): string {
  const { name: k, bindings, names, numbers, aliases, uniforms, overrides } = spec;
  const hasUniform = Object.keys(uniforms).length > 0;
  const lines: string[] = [];
  const f16 = aliases.some((a) => types[a] === "f16") ||
    names.some((b) => {
      const d = bindings[b];
      return d.access !== "uniform" && typeof d.type === "string" && storageF16.has(d.type);
    });
  const enables = [...(f16 ? ["f16"] : []), ...spec.enables];
  for (const e of new Set(enables)) lines.push(`enable ${e};`);
  lines.push(`// ---- ${k}: generated from its declaration (src/gpu/define_kernel.ts)`);
  for (const a of aliases) lines.push(`alias ${a} = ${types[a] ?? "f32"};`);
  for (const [o, d] of Object.entries(overrides)) {
    const { type, default: def } = overrideDecl(d);
    lines.push(
      `override ${o}: ${type}${def === undefined ? "" : ` = ${wgslLiteral(type, def)}`};`,
    );
  }
  const structs = new Set<string>();
  for (const b of names) {
    const d = bindings[b];
    if (typeof d.type === "object" && !structs.has(d.type.struct)) {
      structs.add(d.type.struct);
      lines.push(wgslStruct(d.type.struct, d.type.fields));
    }
  }
  if (hasUniform) lines.push(wgslStruct("Params", uniforms));
  for (const b of names) {
    const d = bindings[b], at = `@group(0) @binding(${numbers[b]})`;
    if (d.access === "uniform") {
      lines.push(
        `${at} var<uniform> ${b}: ${typeof d.type === "object" ? d.type.struct : d.type};`,
      );
      continue;
    }
    if (typeof d.type === "object") {
      lines.push(`${at} var<storage, ${d.access}> ${b}: ${d.type.struct};`);
      continue;
    }
    // The resolved type, not the alias, so the declaration reads as what it is.
    const elem = d.type === "float"
      ? types[floatAlias(b, d)!] ?? "f32"
      : d.type === "vec4float"
      ? `vec4<${types[floatAlias(b, d)!] ?? "f32"}>`
      : d.type;
    lines.push(`${at} var<storage, ${d.access}> ${b}: array<${elem}>;`);
  }
  if (hasUniform) lines.push(`@group(0) @binding(${numbers.p}) var<uniform> p: Params;`);
  lines.push(`// ---- ${k}.wgsl`, "");
  return lines.join("\n");
}
