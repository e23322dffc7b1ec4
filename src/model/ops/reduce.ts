/**
 * A workgroup's sum and max in two forms, one interface: a fixed tree in workgroup memory
 * (kernels/reduce_tree.wgsl; every adapter) and subgroup operations
 * (kernels/reduce_subgroup.wgsl; two barriers a reduction where the tree takes log2 of the
 * workgroup plus one). A kernel that reduces across its workgroup is written once against
 * `Lane`, `wg_sum`, `wg_max`, `wg_sum2` and `wg_max2`; {@linkcode defineReducing} declares it
 * in both forms and {@linkcode reduceForm} picks one per device: subgroups on a GPU that has
 * them, once {@linkcode checkSubgroupReductions} agreed with float64 there; the tree on CPU
 * adapters (one invocation at a time: subgroups only add work there) and everywhere else.
 *
 * @example
 * ```ts
 * const k = defineReducing({ name: "rowsum", source, bindings, entryPoints });
 * const kernel = k[await reduceForm(rt)];
 * ```
 *
 * @module
 */

import { debugLog } from "../../gpu/debug.ts";
import { defineKernel, type Kernel, type KernelDecl } from "../../gpu/define_kernel.ts";
import { type Dispatch, freeDispatches, runDispatches } from "../../gpu/dispatch.ts";
import { readF32, type Runtime } from "../../gpu/runtime.ts";
import { mulberry32 } from "../init.ts";
import { worstElement } from "./device_check.ts";
import reduceTreeSrc from "../../../kernels/reduce_tree.wgsl" with { type: "text" };
import reduceSubgroupSrc from "../../../kernels/reduce_subgroup.wgsl" with { type: "text" };
import reduceCheckSrc from "../../../kernels/reduce_check.wgsl" with { type: "text" };

/** How a workgroup reduces: a tree in workgroup memory, or subgroup operations. */
export type ReduceForm = "tree" | "subgroup";

/** The WGSL of each form, put after a reducing kernel's own text. */
export const REDUCE_SOURCES: Readonly<Record<ReduceForm, string>> = {
  tree: reduceTreeSrc,
  subgroup: reduceSubgroupSrc,
};

/**
 * `decl` declared in both forms: its source followed by each form's WGSL; the subgroup form's
 * name and entry labels end in `_sg` (its pipelines and profile rows apart from the tree's),
 * its compile errors name the kernel's own file.
 */
export function defineReducing<
  B extends string,
  U extends string = never,
  O extends string = never,
  E extends string = string,
>(decl: KernelDecl<B, U, O, E>): Record<ReduceForm, Kernel<B, U, O, E>> {
  const entries = Object.entries(decl.entryPoints) as [
    E,
    KernelDecl<B, U, O, E>["entryPoints"][E],
  ][];
  const sg = Object.fromEntries(
    entries.map(([e, d]) => [e, { ...d, label: `${d.label ?? `${decl.name}_${e}`}_sg` }]),
  ) as KernelDecl<B, U, O, E>["entryPoints"];
  // After the kernel's text (WGSL declarations may come in any order), so that a compile
  // error in it names its own line of its own file.
  const file = decl.file ?? `${decl.name}.wgsl`;
  return {
    tree: defineKernel({ ...decl, file, source: `${decl.source}\n${reduceTreeSrc}` }),
    subgroup: defineKernel({
      ...decl,
      name: `${decl.name}_sg`,
      file,
      source: `${decl.source}\n${reduceSubgroupSrc}`,
      entryPoints: sg,
    }),
  };
}

/** Which form a dispatch takes. */
export interface ReduceOptions {
  /**
   * Subgroups (true) or the tree (false). Default: the device's, {@linkcode reduceForm}'s
   * choice.
   */
  subgroups?: boolean;
}

/**
 * The form kernels take on this device: `options.subgroups` where given, else what
 * {@linkcode setReduceForm} set for it, else subgroups where the device has them, is not a CPU
 * adapter and passed {@linkcode checkSubgroupReductions} (DEBUG=1 says why not when it failed).
 */
export async function reduceForm(rt: Runtime, options: ReduceOptions = {}): Promise<ReduceForm> {
  if (options.subgroups !== undefined) return options.subgroups ? "subgroup" : "tree";
  const set = chosen.get(rt.device);
  if (set) return set;
  if (!rt.gpu.features.subgroups || rt.gpu.isCpu) return "tree";
  const why = await checkSubgroupReductions(rt);
  if (why) debugLog(1, `reductions: subgroups are not used on ${rt.gpu.name}: ${why}`);
  return why === undefined ? "subgroup" : "tree";
}

/**
 * Sets the form every reducing kernel built on this device from now on takes unless its
 * dispatch says otherwise (undefined: the device's default again). For tests on CPU adapters
 * and for benchmarks that compare the two forms.
 */
export function setReduceForm(rt: Runtime, form: ReduceForm | undefined): void {
  if (form === "subgroup" && !rt.gpu.features.subgroups) {
    throw new Error(`${rt.gpu.name} has no subgroups: reductions stay in the tree form`);
  }
  if (form) chosen.set(rt.device, form);
  else chosen.delete(rt.device);
}

const chosen = new WeakMap<GPUDevice, ReduceForm>();
const verdicts = new WeakMap<GPUDevice, Promise<string | undefined>>();

const defineCheck = (source: string) =>
  defineKernel({
    name: "reduce_check",
    source: `${reduceCheckSrc}\n${source}`,
    bindings: { inp: { access: "read", type: "f32" }, out: { access: "read_write", type: "f32" } },
    uniforms: { n: "u32" },
    entryPoints: {
      main: { bindings: ["inp", "out"], loopBound: (u) => Math.ceil(u.n / 64) + 4 * 64 },
    },
  });

const subgroupCheck = defineCheck(reduceSubgroupSrc);

/**
 * Why the subgroup form (or `source`, a test's wrong one, in its place) must not be used on
 * this device, or undefined when it agrees with float64: the sum and max of 3 rows of 200
 * (longer than the 64 lanes and not a multiple of them; one row all negative, so a max that
 * starts from 0 shows), the workgroup's size counted and its last index found through the
 * two-value forms. The default form's verdict is kept per device.
 */
export function checkSubgroupReductions(
  rt: Runtime,
  source?: string,
): Promise<string | undefined> {
  if (!rt.gpu.features.subgroups) return Promise.resolve(`${rt.gpu.name} has no subgroups`);
  if (source !== undefined) return runCheck(rt, defineCheck(source));
  let v = verdicts.get(rt.device);
  if (!v) verdicts.set(rt.device, v = runCheck(rt, subgroupCheck));
  return v;
}

async function runCheck(rt: Runtime, kernel: typeof subgroupCheck): Promise<string | undefined> {
  const R = 3, n = 200, u = mulberry32(0x7265);
  const x = Float32Array.from({ length: R * n }, (_, i) => (2 * u() - 1) * (i < n ? 1 : 100));
  for (let i = 2 * n; i < 3 * n; i++) x[i] = -1 - Math.abs(x[i]); // all negative
  const want = new Float64Array(4 * R);
  for (let r = 0; r < R; r++) {
    const row = x.subarray(r * n, (r + 1) * n);
    want.set([row.reduce((a, v) => a + v, 0), Math.max(...row), 64, 63], 4 * r);
  }
  const a = rt.arena;
  const inp = a.allocWith("reduce.check.inp", "scratch", x);
  const out = a.allocWith("reduce.check.out", "scratch", new Float32Array(4 * R));
  const d: Dispatch[] = [];
  try {
    d.push(
      await kernel.dispatch(rt, "main", {
        buffers: { inp, out },
        uniforms: { n },
        workgroups: [R, 1, 1],
      }),
    );
    await runDispatches(rt.device, d);
    // Sums to 1e-5 of the row's absolute sum; the rest exactly.
    const absSum = (r: number) =>
      x.subarray(r * n, (r + 1) * n).reduce((s, v) => s + Math.abs(v), 0);
    const got = await readF32(rt.device, out);
    const wrong = worstElement(
      "sum|max|count|last",
      got,
      want,
      (_, i) => i % 4 ? 1 : absSum(i / 4),
      1e-5,
    );
    return wrong && `differs from float64 on ${R} rows of ${n}: ${wrong}`;
  } catch (e) {
    return `fails on this device: ${(e as Error).message}`;
  } finally {
    freeDispatches(a, d);
    a.free(inp);
    a.free(out);
  }
}
