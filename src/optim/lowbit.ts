/**
 * 8-bit and 4-bit AdamW on the GPU.
 *
 * adamw8bit (Dettmers et al. 2022): m and v as 8-bit codes of bitsandbytes'
 * dynamic map (signed for m, unsigned for v), absmax per block of 256
 * (configurable); tensors under 4096 elements keep fp32 state.
 * adamw4bit (Li, Chen and Zhu 2023): m in blocks of 128 with the signed
 * dynamic-exponent map (16 codes); v with rank-1 normalisation for 2-D tensors
 * (min of row and column max) and the linear map without zero, blocks of 128
 * for 1-D; two codes per byte; tensors of 4096 elements or fewer keep fp32.
 * Tensors over the binding limit run in pieces of whole rows; rank-1 maxima are
 * then per piece. `fp32Embeddings` keeps wte and wpe in fp32.
 *
 * Gradient clipping, step uniforms and the stats buffer work as in AdamW.
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import { type BufferRange, grid1d, makeDispatch } from "../gpu/kernel.ts";
import { readBuffer, type Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import type { SafeTensorsFile, TensorToWrite } from "../io/safetensors.ts";
import { tensorBytes } from "../io/safetensors.ts";
import {
  ADAMW_DEFAULTS,
  type AdamWConfig,
  gradNormDispatches,
  gradNormPartials,
  stepWords,
} from "./adamw.ts";
import { dynamicMap, linearMapNoZero } from "./quant_maps.ts";
import adamwSrc from "../../kernels/adamw.wgsl" with { type: "text" };
import adamw8Src from "../../kernels/adamw8bit.wgsl" with { type: "text" };
import adamw4Src from "../../kernels/adamw4bit.wgsl" with { type: "text" };

/** Options of the low-bit optimizers. */
export interface LowBitConfig extends AdamWConfig {
  bits: 8 | 4;
  /** 8-bit block size: 4 x a power of two, 4..1024 (default 256). */
  block8: number;
  /** Keep wte and wpe state in fp32. */
  fp32Embeddings: boolean;
}

/** How one piece of one tensor keeps its state. */
export interface StatePiece {
  name: string;
  kind: "fp32" | "q8" | "q4";
  /** Parameter range, elements. */
  offset: number;
  size: number;
  decay: boolean;
  /** q4 rank-1 shape (rows * cols = size); rows 0 for block-wise (1-D). */
  rows: number;
  cols: number;
  /** State offsets: fp32 floats, code words, absmax floats, rank-1 scale floats. */
  f32: number;
  words: number;
  abs: number;
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

/**
 * Low-bit AdamW for one model's flat buffers.
 *
 * @example
 * ```ts
 * const opt = await LowBitAdamW.create(rt, model.layout, model, { bits: 4 });
 * opt.setStep(1, 1e-3); // then encode opt.dispatches after the backward pass
 * ```
 */
export class LowBitAdamW {
  readonly rt: Runtime;
  readonly config: LowBitConfig;
  readonly pieces: StatePiece[];
  /** [loss, grad norm]. */
  readonly stats: GPUBuffer;
  dispatches: Dispatch[] = [];
  #state: Record<"m32" | "v32" | "mq" | "vq" | "mabs" | "vabs" | "scales", GPUBuffer>;
  #step: GPUBuffer;
  #owned: GPUBuffer[] = [];
  #totals: { f32: number; words: number; abs: number; scales: number };

  private constructor(
    rt: Runtime,
    layout: ParamLayout,
    config: LowBitConfig,
    maxBindingBytes: number,
  ) {
    this.rt = rt;
    this.config = config;
    const { pieces, totals } = statePieces(layout, config, maxBindingBytes);
    this.pieces = pieces;
    this.#totals = totals;
    const a = (label: string, bytes: number) => this.#alloc(label, "optimizer", bytes);
    this.#state = {
      m32: a("opt.m32", totals.f32 * 4),
      v32: a("opt.v32", totals.f32 * 4),
      mq: a("opt.mq", totals.words * 4),
      vq: a("opt.vq", totals.words * 4),
      mabs: a("opt.mabs", totals.abs * 4),
      vabs: a("opt.vabs", totals.abs * 4),
      scales: a("opt.scales", totals.scales * 4),
    };
    this.stats = this.#alloc("opt.stats", "scratch", 16);
    this.#step = this.#alloc(
      "opt.step",
      "scratch",
      32,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
  }

  #alloc(label: string, cat: "optimizer" | "scratch", bytes: number, usage?: GPUBufferUsageFlags) {
    const b = this.rt.arena.alloc(label, cat, bytes, usage);
    this.#owned.push(b);
    return b;
  }

  /** Builds the optimizer over the model's parameter and gradient buffers. */
  static async create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: { params: GPUBuffer; grads: GPUBuffer },
    config: Partial<LowBitConfig> & { bits: 8 | 4 },
    options: { maxBindingBytes?: number } = {},
  ): Promise<LowBitAdamW> {
    const cfg: LowBitConfig = { ...ADAMW_DEFAULTS, block8: 256, fp32Embeddings: false, ...config };
    const wg = cfg.block8 / 4;
    if (!(Number.isInteger(wg) && wg >= 1 && wg <= 256 && (wg & (wg - 1)) === 0)) {
      throw new RangeError(`8-bit block size ${cfg.block8} must be 4 x a power of two, 4 to 1024`);
    }
    const opt = new LowBitAdamW(
      rt,
      layout,
      cfg,
      options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize,
    );
    await opt.#build(buffers.params, buffers.grads);
    return opt;
  }

  async #build(params: GPUBuffer, grads: GPUBuffer): Promise<void> {
    const { rt } = this;
    const st = this.#state;
    const partials = this.#alloc("opt.partials", "scratch", gradNormPartials(this.pieces) * 4);
    const maps8 = this.#alloc("opt.maps8", "scratch", 512 * 4);
    rt.device.queue.writeBuffer(
      maps8,
      0,
      Float32Array.from([...dynamicMap(true, 8), ...dynamicMap(false, 8)]),
    );
    const maps4 = this.#alloc("opt.maps4", "scratch", 32 * 4);
    rt.device.queue.writeBuffer(
      maps4,
      0,
      Float32Array.from([...dynamicMap(true, 4), ...linearMapNoZero(4)]),
    );
    const out: Dispatch[] = await gradNormDispatches(rt, this.pieces, grads, partials, this.stats);
    const f = (buffer: GPUBuffer, offset: number, size: number): BufferRange => ({
      buffer,
      offset: offset * 4,
      size: Math.max(16, size * 4),
    });
    for (const p of this.pieces) {
      const pr = f(params, p.offset, p.size), gr = f(grads, p.offset, p.size);
      if (p.kind === "fp32") {
        out.push(
          await makeDispatch(rt, {
            name: "adamw",
            code: adamwSrc,
            entryPoint: "main",
            buffers: {
              0: pr,
              1: gr,
              2: f(st.m32, p.f32, p.size),
              3: f(st.v32, p.f32, p.size),
              4: { buffer: this.stats },
              5: { buffer: this.#step },
            },
            uniform: { binding: 6, words: [p.size, p.decay ? 1 : 0] },
            workgroups: grid1d(p.size, 64),
          }),
        );
        continue;
      }
      const block = p.kind === "q8" ? this.config.block8 : 128;
      const nWords = Math.ceil(p.size / (p.kind === "q8" ? 4 : 8));
      const nBlocks = Math.ceil(p.size / block);
      const common = {
        0: pr,
        1: gr,
        2: f(st.mq, p.words, nWords),
        3: f(st.vq, p.words, nWords),
        4: f(st.mabs, p.abs, nBlocks),
        5: f(st.vabs, p.abs, nBlocks),
      };
      if (p.kind === "q8") {
        out.push(
          await makeDispatch(rt, {
            name: "adamw8bit",
            code: adamw8Src,
            entryPoint: "main",
            constants: { WG: block / 4 },
            buffers: {
              ...common,
              6: { buffer: maps8 },
              7: { buffer: this.stats },
              8: { buffer: this.#step },
            },
            uniform: { binding: 9, words: [p.size, p.decay ? 1 : 0] },
            workgroups: grid1d(nBlocks, 1),
          }),
        );
        continue;
      }
      const rank1 = p.rows > 0;
      const all: Record<number, BufferRange> = {
        ...common,
        6: rank1 ? f(st.scales, p.scales, 2 * (p.rows + p.cols)) : f(st.mabs, p.abs, nBlocks),
        7: { buffer: maps4 },
        8: { buffer: this.stats },
        9: { buffer: this.#step },
      };
      // Each entry point binds exactly what it uses ("auto" layouts).
      const uses: Record<string, number[]> = {
        row_max: [1, 3, 6, 7, 8, 9],
        col_max: [1, 3, 6, 7, 8, 9],
        update: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        commit: [6],
      };
      const spec = (entryPoint: string, workgroups: [number, number, number]) =>
        makeDispatch(rt, {
          name: `adamw4bit_${entryPoint}`,
          code: adamw4Src,
          entryPoint,
          buffers: Object.fromEntries(uses[entryPoint].map((b) => [b, all[b]])),
          uniform: { binding: 10, words: [p.size, p.decay ? 1 : 0, p.rows, p.cols] },
          workgroups,
        });
      if (rank1) {
        out.push(
          await spec("row_max", grid1d(p.rows, 64)),
          await spec("col_max", grid1d(p.cols, 64)),
        );
      }
      out.push(await spec("update", grid1d(nBlocks, 1)));
      if (rank1) out.push(await spec("commit", grid1d(p.rows + p.cols, 64)));
    }
    this.dispatches = out;
  }

  /** Writes the per-step uniform for step `t` (1-based) at learning rate `lr`. */
  setStep(t: number, lr: number): void {
    this.rt.device.queue.writeBuffer(this.#step, 0, stepWords(this.config, t, lr));
  }

  /** Bytes of optimizer state (what the memory report counts as "optimizer"). */
  get stateBytes(): number {
    return Object.values(this.#state).reduce((a, b) => a + b.size, 0);
  }

  /** The state as raw byte tensors for a checkpoint (bit-exact). */
  async readState(): Promise<TensorToWrite[]> {
    const out: TensorToWrite[] = [];
    for (const [k, b] of Object.entries(this.#state)) {
      const bytes = new Uint8Array(await readBuffer(this.rt.device, b));
      out.push({ name: `lowbit${this.config.bits}.${k}`, shape: [bytes.length], data: bytes });
    }
    return out;
  }

  /** Restores state written by {@linkcode readState} (same model, bits and settings). */
  writeState(file: SafeTensorsFile): void {
    const all = Object.entries(this.#state).map(([k, b]) => {
      const name = `lowbit${this.config.bits}.${k}`;
      if (!file.tensors.has(name)) {
        throw new Error(
          `${file.path} has no "${name}": it holds another optimizer's state; resume with the ` +
            "--optimizer it was saved with",
        );
      }
      const bytes = tensorBytes(file, name);
      if (bytes.length !== b.size) {
        throw new Error(
          `${file.path}: "${name}" has ${bytes.length} bytes, this model needs ${b.size}`,
        );
      }
      return [b, bytes] as const;
    });
    for (const [b, bytes] of all) this.rt.device.queue.writeBuffer(b, 0, bytes);
  }

  /** Frees the state and every buffer the optimizer made. */
  destroy(): void {
    for (const d of this.dispatches) for (const b of d.resources ?? []) this.rt.arena.free(b);
    for (const b of this.#owned) this.rt.arena.free(b);
    this.#owned = [];
    this.dispatches = [];
  }

  /** Counts of pieces by kind (for logs). */
  summary(): string {
    const c = { fp32: 0, q8: 0, q4: 0 };
    for (const p of this.pieces) c[p.kind] += p.size;
    void this.#totals;
    return `state: ${
      c.q8 + c.q4
    } parameters quantized to ${this.config.bits} bits, ${c.fp32} in fp32`;
  }
}
