/**
 * The parameter layout: one flat buffer with a named view per tensor, computed
 * from the block spec's table of {name, shape} (llm.c's fill_in_parameter_sizes). Names and
 * shapes are Hugging Face GPT-2's (Conv1D weights are [in, out]), so a
 * checkpoint maps one to one. Gradients and optimizer state use the same layout.
 *
 * wte is stored padded to [Vp, C]; its padding rows are zero.
 *
 * @module
 */

import { modelParams } from "./block_spec.ts";
import { type GPT2Config, paddedVocab } from "./config.ts";

/** One tensor's place in the flat buffer (offset and size in elements). */
export interface TensorView {
  /** Hugging Face name, e.g. "h.0.attn.c_attn.weight". */
  name: string;
  /** Dimensions, outermost first (Conv1D weights are [in, out]). */
  shape: number[];
  /** Element offset in the flat buffer; a multiple of TENSOR_ALIGN (128). */
  offset: number;
  /** Number of elements: the product of `shape`. */
  size: number;
  /** Weight decay applies (matrices and embeddings, not biases or LayerNorm). */
  decay: boolean;
}

/** The whole layout. */
export interface ParamLayout {
  /** Every tensor, in the flat buffer's order. */
  tensors: TensorView[];
  /** The same tensors by Hugging Face name. */
  byName: Map<string, TensorView>;
  /** Elements in the flat buffer, alignment padding included. */
  totalElements: number;
}

/**
 * Tensor offsets are aligned to 128 elements: 256 bytes (WebGPU's largest binding offset
 * alignment) in f16 buffers (16-bit weights and gradients), 512 in f32 ones.
 */
export const TENSOR_ALIGN = 128;

/**
 * The tensors of GPT-2 in the flat buffer's order (from the block spec): Hugging Face shapes,
 * except wte's rows padded to Vp.
 */
export function parameterShapes(cfg: GPT2Config): { name: string; shape: number[] }[] {
  const Vp = paddedVocab(cfg.vocabSize);
  return modelParams(cfg).map(({ name, shape }) => ({
    name,
    shape: name === "wte.weight" ? [Vp, cfg.nEmbd] : shape(cfg),
  }));
}

/** Offsets of every tensor in the flat buffer. */
export function parameterLayout(cfg: GPT2Config): ParamLayout {
  return layoutOf(parameterShapes(cfg));
}

/** A flat layout of any named shapes: aligned offsets, decay on 2-D and larger tensors. */
export function layoutOf(shapes: { name: string; shape: number[] }[]): ParamLayout {
  const tensors: TensorView[] = [];
  let offset = 0;
  for (const { name, shape } of shapes) {
    const size = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name, shape, offset, size, decay: shape.length >= 2 });
    offset += Math.ceil(size / TENSOR_ALIGN) * TENSOR_ALIGN;
  }
  return { tensors, byName: new Map(tensors.map((t) => [t.name, t])), totalElements: offset };
}
