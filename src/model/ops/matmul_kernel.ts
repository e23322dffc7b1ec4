/**
 * The matmul family's interface, declared once for every matmul kernel, generated or not
 * (src/model/ops/matmul_gpu.ts, src/model/ops/matmul_regblock.ts, kernels/matmul_tiled.wgsl):
 * A, B, C and bias by name, the product's uniforms, the tiled kernel's override constants.
 *
 * @module
 */

import type { DType } from "../../gpu/dtype.ts";
import { type BindingDecl, defineKernel, type Kernel } from "../../gpu/define_kernel.ts";

/** A matmul kernel's declaration: A, B, C and bias by name, the product's uniforms. */
export type MatmulDecl = Kernel<
  "A" | "B" | "C" | "bias",
  "M" | "N" | "K" | "lda" | "ldb" | "ldc" | "a_off" | "b_off" | "c_off" | "bias_off",
  "TRANS_A" | "TRANS_B" | "HAS_BIAS" | "ACCUMULATE",
  "main"
>;

const matmulDecls = new Map<string, MatmulDecl>();

/**
 * The declaration of a matmul kernel with this body (made once per body): operands f32 or
 * f16 from their buffers (aliases a_t, b_t, c_t, bias_t), read as vec4 where `vec4` says;
 * a bias binding only with `bias`; the loop bound as a function of the block's K.
 */
export function matmulKernel(
  name: string,
  source: string,
  o: {
    vec4: Record<"a" | "b" | "c" | "bias", boolean>;
    bias: boolean;
    loopBound: (K: number) => number;
    overrides?: boolean;
    /** Extra `enable` directives (a subgroup-matrix kernel's). */
    enables?: readonly string[];
  },
): MatmulDecl {
  const key = `${name}\0${JSON.stringify([o.vec4, o.bias, !!o.overrides, o.enables])}\0${source}`;
  let k = matmulDecls.get(key);
  if (k) return k;
  const operand = (op: "a" | "b" | "c" | "bias", access: "read" | "read_write"): BindingDecl => ({
    access,
    type: o.vec4[op] ? "vec4float" : "float",
    alias: `${op}_t`,
  });
  const u32 = "u32" as const;
  k = defineKernel({
    name,
    source,
    enables: o.enables,
    bindings: {
      A: operand("a", "read"),
      B: operand("b", "read"),
      C: operand("c", "read_write"),
      ...(o.bias ? { bias: operand("bias", "read") } : {}),
    } as Record<"A" | "B" | "C" | "bias", BindingDecl>,
    uniforms: {
      M: u32,
      N: u32,
      K: u32,
      lda: u32,
      ldb: u32,
      ldc: u32,
      a_off: u32,
      b_off: u32,
      c_off: u32,
      bias_off: u32,
    },
    overrides: o.overrides
      ? { TRANS_A: "bool", TRANS_B: "bool", HAS_BIAS: "bool", ACCUMULATE: "bool" }
      : undefined,
    entryPoints: {
      main: {
        bindings: o.bias ? ["A", "B", "C", "bias"] : ["A", "B", "C"],
        label: name,
        loopBound: (u) => o.loopBound(u.K),
      },
    },
  });
  matmulDecls.set(key, k);
  return k;
}

/** The header types of a matmul kernel for its operands' element types. */
export function matmulTypes(t: Record<"a" | "b" | "c" | "bias", DType>): Record<string, DType> {
  return { a_t: t.a, b_t: t.b, c_t: t.c, bias_t: t.bias };
}
