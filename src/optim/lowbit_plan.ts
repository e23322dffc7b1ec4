/**
 * Where the low-bit optimizers keep their state: each tensor split into pieces that fit one
 * binding, each piece fp32, 8-bit or 4-bit, with the offsets of its codes, block maxima and
 * rank-1 scales in the flat state buffers. Pure arithmetic (the memory plan reads it too).
 *
 * @module
 */

import type { ParamLayout } from "../model/params.ts";
import type { LowBitConfig } from "./lowbit.ts";

/** A kind of state buffer. */
export type StateKind = "m32" | "v32" | "mq" | "vq" | "mabs" | "vabs" | "scales";
/** Every kind of state buffer, in checkpoint order. */
export const STATE_KINDS: StateKind[] = ["m32", "v32", "mq", "vq", "mabs", "vabs", "scales"];

/** Floats (or u32 words) each state kind of a piece occupies, and where. */
export function pieceExtents(p: StatePiece, block8: number): Record<StateKind, [number, number]> {
  const per = p.kind === "q8" ? 4 : 8, block = p.kind === "q8" ? block8 : 128;
  const f32 = p.kind === "fp32" ? align64(p.size) : 0;
  const words = p.kind === "fp32" ? 0 : align64(Math.ceil(p.size / per));
  const abs = p.kind === "fp32" ? 0 : align64(Math.ceil(p.size / block));
  const scales = p.rows ? align64(2 * (p.rows + p.cols)) : 0;
  return {
    m32: [p.f32, f32],
    v32: [p.f32, f32],
    mq: [p.words, words],
    vq: [p.words, words],
    mabs: [p.abs, abs],
    vabs: [p.abs, abs],
    scales: [p.scales, scales],
  };
}

/** How one piece of one tensor keeps its state. */
export interface StatePiece {
  /** Hugging Face name of the tensor the piece belongs to. */
  name: string;
  /** How the state is kept: fp32, 8-bit codes (q8) or 4-bit codes (q4). */
  kind: "fp32" | "q8" | "q4";
  /** Start of the parameter range, in elements of the flat buffer. */
  offset: number;
  /** Elements in the parameter range. */
  size: number;
  /** Weight decay applies to this tensor. */
  decay: boolean;
  /** q4 rank-1 shape (rows * cols = size); rows 0 for block-wise (1-D). */
  rows: number;
  /** Columns of the q4 rank-1 shape; 0 for block-wise. */
  cols: number;
  /** Offset of the fp32 m and v state, in floats (fp32 pieces). */
  f32: number;
  /** Offset of the m and v codes, in u32 words (q8 and q4 pieces). */
  words: number;
  /** Offset of the per-block absmax values of m and v, in floats (q8 and q4 pieces). */
  abs: number;
  /** Offset of the rank-1 row and column scales, in floats (q4 pieces with rows). */
  scales: number;
}

const align64 = (n: number) => Math.ceil(n / 64) * 64;

/** Splits a layout into state pieces and assigns their state offsets. */
export function statePieces(
  layout: ParamLayout,
  cfg: Pick<LowBitConfig, "bits" | "block8" | "fp32Embeddings">,
  maxBindingBytes: number,
): { pieces: StatePiece[]; totals: { f32: number; words: number; abs: number; scales: number } } {
  const pieces: StatePiece[] = [];
  const totals = { f32: 0, words: 0, abs: 0, scales: 0 };
  const limit = Math.floor(maxBindingBytes / 4);
  for (const t of layout.tensors) {
    const small = cfg.bits === 8 ? t.size < 4096 : t.size <= 4096;
    const emb = t.name === "wte.weight" || t.name === "wpe.weight";
    const kind = small || (emb && cfg.fp32Embeddings) ? "fp32" : cfg.bits === 8 ? "q8" : "q4";
    const cols = t.shape.length >= 2 ? t.shape[t.shape.length - 1] : 0;
    // Pieces of whole rows, a multiple of 128 rows (or of 1024 elements for 1-D).
    const unit = kind === "q4" && cols ? 128 * cols : 1024;
    const per = Math.max(unit, Math.floor(limit / unit) * unit);
    for (let o = 0; o < t.size; o += per) {
      const size = Math.min(per, t.size - o);
      const p: StatePiece = {
        name: t.name,
        kind,
        offset: t.offset + o,
        size,
        decay: t.decay,
        rows: kind === "q4" && cols ? size / cols : 0,
        cols: kind === "q4" && cols ? cols : 0,
        f32: 0,
        words: 0,
        abs: 0,
        scales: 0,
      };
      if (kind === "fp32") {
        p.f32 = totals.f32;
        totals.f32 += align64(size);
      } else {
        const block = kind === "q8" ? cfg.block8 : 128;
        p.words = totals.words;
        totals.words += align64(Math.ceil(size / (kind === "q8" ? 4 : 8)));
        p.abs = totals.abs;
        totals.abs += align64(Math.ceil(size / block));
        if (p.rows) {
          p.scales = totals.scales;
          totals.scales += align64(2 * (p.rows + p.cols));
        }
      }
      pieces.push(p);
    }
  }
  return { pieces, totals };
}
