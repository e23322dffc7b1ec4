/**
 * A kernel's interface, declared once, by name, in TypeScript: its bindings (name, access,
 * element type), the fields of its per-dispatch uniform, its override constants, and per
 * entry point the bindings it uses and its loop bound. Everything positional comes from that
 * one declaration: the WGSL declarations (generated and prepended to the kernel's body, which
 * declares no binding itself), binding numbers, the explicit bind-group and pipeline layouts,
 * the packed uniform words, and `enable` directives. Builders pass buffers, uniforms and
 * constants by name; a missing, unknown or mistyped one is an error that names it.
 *
 * Element-type variants come from the declaration too: a binding of type `"float"` (or
 * `"vec4float"`) takes f32 or f16 from the buffer bound to it (src/gpu/dtype.ts) and the
 * header declares its alias (`alias out_t = f16;`) and `enable f16;` to match.
 *
 * Converting a kernel: delete its `@group/@binding` lines, its `struct Params`, its
 * `alias x_t = f32;` lines, its `override` lines and any `enable`; declare them here instead
 * (storage bindings by name in binding order, uniform fields by name as `p.<field>`, a
 * caller-owned uniform buffer as a binding with `access: "uniform"` and a WGSL type or
 * `{ struct, fields }`, a storage buffer holding one struct likewise, bindings only some dispatches pass as an entry's `optional`), and
 * state each entry point's loop bound as a function of the uniforms and constants.
 *
 * @example
 * ```ts
 * const gelu = defineKernel({
 *   name: "gelu",
 *   source: "...fn forward(...) { out[i] = out_t(f(f32(inp[i]))); }",
 *   bindings: {
 *     inp: { access: "read", type: "float" },
 *     out: { access: "read_write", type: "float" },
 *   },
 *   uniforms: { N: "u32" },
 *   entryPoints: { forward: { bindings: ["inp", "out"], loopBound: () => 0 } },
 * });
 * const d = await gelu.dispatch(rt, "forward", {
 *   buffers: { inp: x, out: y },
 *   uniforms: { N: 1000 },
 *   workgroups: grid1d(1000, 64),
 * });
 * ```
 *
 * @module
 */

import type { Dispatch } from "./dispatch.ts";
import { type DType, dtypeOf } from "./dtype.ts";
import { type BufferRange, checkLoopBound, makeDispatch } from "./kernel.ts";
import type { Runtime } from "./runtime.ts";
import {
  type BindingDecl,
  floatAlias,
  type HeaderSpec,
  kernelHeader,
  type OverrideDecl,
  overrideDecl,
  storageF16,
} from "./kernel_header.ts";
import {
  packUniforms,
  uniformLayout,
  type UniformSlot,
  type UniformType,
  uniformWords,
  writeField,
} from "./uniforms.ts";

export type { BindingDecl, OverrideDecl, StorageType, StructDecl } from "./kernel_header.ts";
export {
  packUniforms,
  type UniformFields,
  uniformLayout,
  type UniformSlot,
  type UniformType,
} from "./uniforms.ts";

// ---------------------------------------------------------------------------
// Declarations

/** An entry point of a kernel. */
export interface EntryDecl<B extends string, U extends string, O extends string> {
  /** The bindings it uses: its bind-group layout, and what every dispatch must pass. */
  bindings: readonly B[];
  /** Bindings in its layout only when a dispatch passes them. */
  optional?: readonly B[];
  /**
   * The most loop iterations one invocation runs, from the uniforms and override constants
   * (defaults filled in); checked against {@linkcode LOOP_BUDGET} at every dispatch.
   */
  loopBound: (u: Readonly<Record<U, number>>, o: Readonly<Record<O, number>>) => number;
  /** Pipeline label, and dispatch name by default (`<kernel>_<entry>` by default). */
  label?: string;
}

/** What {@linkcode defineKernel} takes. */
export interface KernelDecl<
  B extends string,
  U extends string,
  O extends string,
  E extends string,
> {
  /** Kernel name (its .wgsl file without the extension), for errors. */
  name: string;
  /** The .wgsl file compile errors name, when not `<name>.wgsl` (a variant's). */
  file?: string;
  /** The WGSL body: functions, constants, workgroup memory; no `@group`/`@binding` lines. */
  source: string;
  /** Buffer bindings by name; numbered 0, 1, ... in this order. */
  bindings: Record<B, BindingDecl>;
  /** Fields of the per-dispatch uniform `p: Params` (bound after the buffers). */
  uniforms?: Record<U, UniformType>;
  /** Override constants, declared in the header with their defaults. */
  overrides?: Record<O, OverrideDecl>;
  /** Entry points by function name. */
  entryPoints: Record<E, EntryDecl<NoInfer<B>, NoInfer<U>, NoInfer<O>>>;
  /** Extra `enable` directives (`enable f16;` is added by itself when a type needs it). */
  enables?: readonly string[];
}

/** A buffer to bind: the whole buffer or a byte range of it. */
export type BindingArg = GPUBuffer | BufferRange;

/** What one dispatch of an entry point takes, by name. */
export interface DispatchArgs<B extends string, U extends string, O extends string> {
  /** Buffers by binding name: exactly the entry point's bindings (and optional ones). */
  buffers: Partial<Record<B, BindingArg>>;
  /** Uniform values by field name: every field (vectors as arrays). */
  uniforms?: Record<U, number | readonly number[]>;
  /** Override constants by name (those without a default are required). */
  overrides?: Partial<Record<O, number | boolean>>;
  /** Workgroup counts in x, y and z. */
  workgroups: readonly [number, number, number];
  /** Floating-point operations the dispatch does, for GFLOP/s reports. */
  flops?: number;
  /** Dispatch name, for profiles (the entry's label by default; the pipeline keeps that). */
  name?: string;
}

/** A dispatch as data: what {@linkcode makeDispatch} is given (built without a GPU). */
export interface DispatchPlan {
  /** Dispatch name. */
  name: string;
  /** The pipeline's label: the entry's. */
  pipelineName: string;
  /** The full WGSL: generated header, then the body. */
  code: string;
  /** Lines of the header, so compile errors point into the .wgsl body. */
  headerLines: number;
  /** The entry point. */
  entryPoint: string;
  /** Override constants, numbers as WebGPU takes them. */
  constants: Record<string, number>;
  /** Bind-group layout entries, by binding number. */
  layout: GPUBindGroupLayoutEntry[];
  /** Buffers by binding number. */
  buffers: Record<number, BufferRange>;
  /** The uniform's binding number and packed words (absent without uniforms). */
  uniform?: { binding: number; words: number[] };
  /** Loop bound and the values it was computed from. */
  loops: { bound: number; shape: Record<string, number> };
  /** The scalar uniforms and the override constants (defaults filled in) by name. */
  values: { uniforms: Record<string, number>; overrides: Record<string, number> };
}

// ---------------------------------------------------------------------------
// The kernel

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A declared kernel: plans and builds dispatches of its entry points. */
export interface Kernel<B extends string, U extends string, O extends string, E extends string> {
  /** The declaration it was made from. */
  readonly decl: KernelDecl<B, U, O, E>;
  /** Binding numbers by name (the uniform `p` last). */
  readonly bindingNumbers: Readonly<Record<B, number>> & { p?: number };
  /** The generated WGSL header for the given float aliases (f32 where absent). */
  header(types?: Readonly<Record<string, DType>>): string;
  /** Bind-group layout entries of an entry point (with these optional bindings). */
  layoutEntries(entry: E, optional?: readonly B[]): GPUBindGroupLayoutEntry[];
  /** The uniform's field offsets and size. */
  readonly uniformLayout: { slots: Record<string, UniformSlot>; size: number };
  /** Everything a dispatch needs, checked, without touching a GPU. */
  plan(entry: E, args: DispatchArgs<B, U, O>): DispatchPlan;
  /** Compiles (or reuses) the pipeline and builds the dispatch. */
  dispatch(rt: Runtime, entry: E, args: DispatchArgs<B, U, O>): Promise<Dispatch>;
  /**
   * Writes some uniform fields of a dispatch this kernel built (a per-token position, say)
   * through the queue; the other fields keep their values.
   */
  writeUniforms(
    queue: GPUQueue,
    dispatch: Dispatch,
    values: Partial<Record<U, number | readonly number[]>>,
  ): void;
}

/**
 * The uniform buffer of each dispatch made by a declared kernel, which kernel and entry point
 * made it, and the values its loop bound was checked for.
 */
const uniformBuffers = new WeakMap<Dispatch, {
  // deno-lint-ignore no-explicit-any
  kernel: Kernel<any, any, any, any>;
  entry: string;
  buffer: GPUBuffer;
  uniforms: Record<string, number>;
  overrides: Record<string, number>;
}>();

/**
 * Declares a kernel once, by name: see the module doc. Checks the declaration and that the
 * body declares no bindings of its own.
 */
export function defineKernel<
  B extends string,
  U extends string = never,
  O extends string = never,
  E extends string = string,
>(decl: KernelDecl<B, U, O, E>): Kernel<B, U, O, E> {
  return new DeclaredKernel(decl);
}

/**
 * Writes some uniform fields of a dispatch a declared kernel built, through that kernel's
 * {@linkcode Kernel.writeUniforms} (for dispatches of several kernels or variants alike).
 */
export function writeDispatchUniforms(
  queue: GPUQueue,
  dispatch: Dispatch,
  values: Record<string, number | readonly number[]>,
): void {
  const u = uniformBuffers.get(dispatch);
  if (!u) {
    throw new TypeError(`Dispatch "${dispatch.name}" was not built by a declared kernel`);
  }
  u.kernel.writeUniforms(queue, dispatch, values);
}

/**
 * Throws when the declaration is wrong or disagrees with the WGSL body: a name that is not a
 * WGSL identifier, a binding named like the uniform, a binding or a generated alias declared
 * in the body, an entry point with an undeclared binding or no function in the body.
 */
function checkDeclaration<B extends string, U extends string, O extends string, E extends string>(
  decl: KernelDecl<B, U, O, E>,
  spec: HeaderSpec,
): void {
  const k = decl.name;
  const { names, uniforms, overrides } = spec;
  const hasUniform = Object.keys(uniforms).length > 0;
  for (const n of [...names, ...Object.keys(uniforms), ...Object.keys(overrides)]) {
    if (!IDENT.test(n)) throw new TypeError(`Kernel "${k}": "${n}" is not a WGSL identifier`);
  }
  if (hasUniform && names.includes("p")) {
    throw new TypeError(`Kernel "${k}": a binding is named "p", the uniform's name: rename it`);
  }
  const bodyDecl = decl.source.match(/^.*@(group|binding)\s*\(.*$/m);
  if (bodyDecl) {
    throw new TypeError(
      `Kernel "${k}": its WGSL declares a binding ("${bodyDecl[0].trim()}"): ` +
        "declare bindings in TypeScript (defineKernel) and keep only the body in the .wgsl file",
    );
  }
  for (const a of spec.aliases) {
    if (new RegExp(`\\balias\\s+${a}\\b`).test(decl.source)) {
      throw new TypeError(`Kernel "${k}": its WGSL declares "alias ${a}", which is generated`);
    }
  }
  for (const [e, ep] of Object.entries(decl.entryPoints) as [E, EntryDecl<B, U, O>][]) {
    for (const b of [...ep.bindings, ...(ep.optional ?? [])]) {
      if (!(b in decl.bindings)) {
        throw new TypeError(`Kernel "${k}" entry point "${e}" uses undeclared binding "${b}"`);
      }
    }
    if (!new RegExp(`\\bfn\\s+${e}\\s*\\(`).test(decl.source)) {
      throw new TypeError(`Kernel "${k}": its WGSL has no function "${e}" (an entry point)`);
    }
  }
}

/** What {@linkcode defineKernel} returns: the declaration, numbered, with its headers cached. */
class DeclaredKernel<B extends string, U extends string, O extends string, E extends string>
  implements Kernel<B, U, O, E> {
  readonly decl: KernelDecl<B, U, O, E>;
  readonly bindingNumbers: Record<B, number> & { p?: number };
  readonly uniformLayout: { slots: Record<string, UniformSlot>; size: number };
  readonly #spec: HeaderSpec;
  readonly #uniforms: Record<U, UniformType>;
  readonly #overrides: Record<O, OverrideDecl>;
  readonly #hasUniform: boolean;
  readonly #headers = new Map<string, string>();

  constructor(decl: KernelDecl<B, U, O, E>) {
    const names = Object.keys(decl.bindings) as B[];
    this.#uniforms = (decl.uniforms ?? {}) as Record<U, UniformType>;
    this.#overrides = (decl.overrides ?? {}) as Record<O, OverrideDecl>;
    this.#hasUniform = Object.keys(this.#uniforms).length > 0;
    const aliases = names.map((b) => floatAlias(b, decl.bindings[b]));
    const numbers = Object.fromEntries(names.map((n, i) => [n, i])) as Record<B, number> & {
      p?: number;
    };
    this.#spec = {
      name: decl.name,
      bindings: decl.bindings,
      names,
      numbers,
      aliases: [...new Set(aliases.filter((a): a is string => a !== undefined))],
      uniforms: this.#uniforms,
      overrides: this.#overrides,
      enables: decl.enables ?? [],
    };
    checkDeclaration(decl, this.#spec);
    if (this.#hasUniform) numbers.p = names.length;
    this.decl = decl;
    this.bindingNumbers = numbers;
    this.uniformLayout = uniformLayout(this.#uniforms);
  }

  header(types: Readonly<Record<string, DType>> = {}): string {
    const key = this.#spec.aliases.map((a) => types[a] ?? "f32").join(",");
    const cached = this.#headers.get(key);
    if (cached !== undefined) return cached;
    const text = kernelHeader(this.#spec, types);
    this.#headers.set(key, text);
    return text;
  }

  #entryOf(entry: E): EntryDecl<B, U, O> {
    const eps = this.decl.entryPoints;
    const ep = (eps as Record<string, EntryDecl<B, U, O>>)[entry];
    if (!ep || !Object.hasOwn(eps, entry)) {
      throw new TypeError(
        `Kernel "${this.decl.name}" has no entry point "${entry}": use one of ${
          Object.keys(eps).join(", ")
        }`,
      );
    }
    return ep;
  }

  layoutEntries(entry: E, optional: readonly B[] = []): GPUBindGroupLayoutEntry[] {
    const ep = this.#entryOf(entry);
    const used = new Set<B>([...ep.bindings, ...optional.filter((b) => ep.optional?.includes(b))]);
    const numbers = this.bindingNumbers;
    const out: GPUBindGroupLayoutEntry[] = (this.#spec.names as B[]).filter((b) => used.has(b))
      .map((b) => {
        const d = this.decl.bindings[b];
        if (d.access === "uniform") {
          const fields = typeof d.type === "string" ? { v: d.type } : d.type.fields;
          return {
            binding: numbers[b],
            visibility: GPUShaderStage.COMPUTE,
            buffer: { type: "uniform", minBindingSize: uniformLayout(fields).size },
          };
        }
        return {
          binding: numbers[b],
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: d.access === "read" ? "read-only-storage" : "storage" },
        };
      });
    // Uniforms state their size in the layout: checked when a bind group is made, not at
    // each dispatch (wgpu checked a dispatch's late-sized uniform against the previous
    // dispatch's bind group in one pass: a classifier's 16-byte loss scale against the next
    // matmul's 40-byte parameters).
    if (this.#hasUniform) {
      out.push({
        binding: numbers.p!,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: "uniform", minBindingSize: this.uniformLayout.size },
      });
    }
    return out;
  }

  plan(entry: E, args: DispatchArgs<B, U, O>): DispatchPlan {
    const ep = this.#entryOf(entry);
    const pipelineName = ep.label ?? `${this.decl.name}_${entry}`;
    const name = args.name ?? pipelineName;
    const where = `Kernel "${this.decl.name}" entry point "${entry}"`;
    const { buffers, types, optionalGiven } = this.#bindBuffers(where, ep, args);
    // ---- uniforms and override constants, by name
    let uniform: DispatchPlan["uniform"];
    const uValues = (args.uniforms ?? {}) as Record<string, number | readonly number[]>;
    if (this.#hasUniform) {
      uniform = {
        binding: this.bindingNumbers.p!,
        words: Array.from(packUniforms(where, this.#uniforms, uValues)),
      };
    } else if (Object.keys(uValues).length) {
      throw new TypeError(`${where}: the kernel has no uniforms, but some were passed`);
    }
    const { constants, oAll } = this.#overrideValues(where, args);
    const uAll: Record<string, number> = {};
    for (const [f, v] of Object.entries(uValues)) if (typeof v === "number") uAll[f] = v;
    const bound = ep.loopBound(uAll as Record<U, number>, oAll as Record<O, number>);
    checkLoopBound(name, { bound, shape: { ...uAll, ...oAll } });
    return {
      name,
      pipelineName,
      code: this.header(types) + this.decl.source,
      headerLines: this.header(types).split("\n").length - 1,
      entryPoint: entry,
      constants,
      layout: this.layoutEntries(entry, optionalGiven),
      buffers,
      uniform,
      loops: { bound, shape: { ...uAll, ...oAll } },
      values: { uniforms: uAll, overrides: oAll },
    };
  }

  /**
   * The buffers of a dispatch by binding number, checked against the entry point, and the
   * float aliases' element types they set.
   */
  #bindBuffers(where: string, ep: EntryDecl<B, U, O>, args: DispatchArgs<B, U, O>): {
    buffers: Record<number, BufferRange>;
    types: Record<string, DType>;
    optionalGiven: B[];
  } {
    const allowed = [...ep.bindings, ...(ep.optional ?? [])];
    for (const b of Object.keys(args.buffers) as B[]) {
      if (!allowed.includes(b)) {
        throw new TypeError(
          `${where}: unknown binding "${b}": it binds ${allowed.join(", ")}`,
        );
      }
    }
    const buffers: Record<number, BufferRange> = {};
    const types: Record<string, DType> = {};
    const optionalGiven: B[] = [];
    for (const b of allowed) {
      const arg = args.buffers[b];
      if (arg === undefined) {
        if (ep.bindings.includes(b)) {
          throw new TypeError(`${where}: binding "${b}" is missing: pass it in buffers`);
        }
        continue;
      }
      if (!ep.bindings.includes(b)) optionalGiven.push(b);
      const range: BufferRange = "buffer" in arg ? arg : { buffer: arg };
      const d = this.decl.bindings[b], held = dtypeOf(range.buffer);
      if (d.access !== "uniform") {
        const alias = floatAlias(b, d);
        if (alias !== undefined) {
          if (types[alias] !== undefined && types[alias] !== held) {
            throw new TypeError(
              `${where}: binding "${b}" holds ${held} but another binding of type ${alias} ` +
                `holds ${types[alias]}: bind buffers of one element type`,
            );
          }
          types[alias] = held;
        } else if (
          (held === "f16") !== (typeof d.type === "string" && storageF16.has(d.type))
        ) {
          const type = typeof d.type === "string" ? d.type : d.type.struct;
          throw new TypeError(
            `${where}: binding "${b}" is declared ${type} but its buffer ` +
              `("${range.buffer.label}") holds ${held}: bind a buffer of that type`,
          );
        }
      }
      buffers[this.bindingNumbers[b]] = range;
    }
    return { buffers, types, optionalGiven };
  }

  /**
   * The override constants a dispatch sets (as WebGPU takes them) and every override's value,
   * defaults filled in.
   */
  #overrideValues(where: string, args: DispatchArgs<B, U, O>): {
    constants: Record<string, number>;
    oAll: Record<string, number>;
  } {
    const overrides = this.#overrides;
    const constants: Record<string, number> = {};
    const oValues = (args.overrides ?? {}) as Record<string, number | boolean>;
    for (const o of Object.keys(oValues)) {
      if (!(o in overrides)) {
        throw new TypeError(
          `${where}: unknown override "${o}": its overrides are ${
            Object.keys(overrides).join(", ") || "none"
          }`,
        );
      }
    }
    const oAll: Record<string, number> = {};
    for (const [o, d] of Object.entries(overrides) as [O, OverrideDecl][]) {
      const given = oValues[o];
      const def = overrideDecl(d).default;
      if (given === undefined && def === undefined) {
        throw new TypeError(`${where}: override "${o}" has no default: pass it in overrides`);
      }
      if (given !== undefined) constants[o] = +given;
      oAll[o] = +(given ?? def!);
    }
    return { constants, oAll };
  }

  async dispatch(rt: Runtime, entry: E, args: DispatchArgs<B, U, O>): Promise<Dispatch> {
    const p = this.plan(entry, args);
    const d = await makeDispatch(rt, {
      name: p.name,
      pipelineName: p.pipelineName,
      code: p.code,
      headerLines: p.headerLines,
      file: this.decl.file ?? `${this.decl.name}.wgsl`,
      entryPoint: p.entryPoint,
      constants: p.constants,
      layout: p.layout,
      buffers: p.buffers,
      uniform: p.uniform,
      workgroups: args.workgroups,
      flops: args.flops,
      loops: p.loops,
    });
    if (p.uniform) {
      const buffer = d.resources![0];
      uniformBuffers.set(d, { kernel: this, entry, buffer, ...p.values });
    }
    return d;
  }

  writeUniforms(
    queue: GPUQueue,
    dispatch: Dispatch,
    values: Partial<Record<U, number | readonly number[]>>,
  ): void {
    const k = this.decl.name;
    const u = uniformBuffers.get(dispatch);
    if (!u || u.kernel !== this) {
      throw new TypeError(
        `Kernel "${k}": dispatch "${dispatch.name}" was not built by it: write its own uniforms`,
      );
    }
    const writes: [number, Uint32Array<ArrayBuffer>][] = [];
    const next = { ...u.uniforms };
    for (const [f, v] of Object.entries(values) as [string, number | readonly number[]][]) {
      const slot = this.uniformLayout.slots[f];
      if (!slot) {
        throw new TypeError(
          `Kernel "${k}": unknown uniform "${f}": its fields are ${
            Object.keys(this.#uniforms).join(", ")
          }`,
        );
      }
      const words = new Uint32Array(uniformWords(slot.type));
      writeField(`Kernel "${k}"`, f, { offset: 0, type: slot.type }, v, words);
      writes.push([slot.offset, words]);
      if (typeof v === "number") next[f] = v;
    }
    // The new values keep the loop bound within the budget, or nothing is written.
    const ep = this.#entryOf(u.entry as E);
    const bound = ep.loopBound(next as Record<U, number>, u.overrides as Record<O, number>);
    checkLoopBound(dispatch.name, { bound, shape: { ...next, ...u.overrides } });
    for (const [offset, words] of writes) queue.writeBuffer(u.buffer, offset, words);
    u.uniforms = next;
  }
}
