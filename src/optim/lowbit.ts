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
 * The gradient statistics (scale, skip) and the step uniform work as in AdamW.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { type SplitBuffer, splitOf } from "../gpu/split_buffer.ts";
import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import { readBuffer, type Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { arenaBytes } from "../model/plan.ts";
import type { Profiler } from "../gpu/profiler.ts";
import { ADAMW_DEFAULTS, type AdamWConfig, stepBuffers, stepWords } from "./adamw_common.ts";
import { dynamicMap, linearMapNoZero } from "./quant_maps.ts";
import { pieceDispatches } from "./lowbit_pieces.ts";
import {
  dispatchesWithin,
  type Optimizer,
  otherOptimizerError,
  type SavedState,
  type StateTensor,
} from "./optimizer.ts";
import {
  pieceExtents,
  STATE_KINDS,
  type StateKind,
  type StatePiece,
  statePieces,
} from "./lowbit_plan.ts";

export { type StatePiece, statePieces } from "./lowbit_plan.ts";

/** Options of the low-bit optimizers. */
export interface LowBitConfig extends AdamWConfig {
  /** Bits per state value: 8 (adamw8bit) or 4 (adamw4bit). */
  bits: 8 | 4;
  /** 8-bit block size: 4 x a power of two, 4..1024 (default 256). */
  block8: number;
  /** Keep wte and wpe state in fp32. */
  fp32Embeddings: boolean;
  /**
   * Keep the state in CPU memory and stream it through the GPU piece by piece
   * ("paged"): GPU memory holds only the largest piece's state.
   */
  offload: boolean;
}

/**
 * Low-bit AdamW for one model's flat buffers.
 *
 * @example A 4-bit step after a backward pass
 * ```ts
 * import {
 *   createRuntime,
 *   GPT2,
 *   LowBitAdamW,
 *   resolveConfig,
 *   runDispatches,
 * } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const model = await GPT2.create(rt, resolveConfig("gpt2-mini"), { B: 1, T: 64 });
 * const opt = await LowBitAdamW.create(rt, model.layout, model, { bits: 4 });
 * console.log(opt.summary()); // how many parameters have 4-bit state
 * const tokens = Array.from({ length: 64 }, (_, i) => 100 + i);
 * await model.forwardBackward(tokens, tokens.map((t) => t + 1));
 * opt.setStep(1, 1e-3); // step 1 at learning rate 1e-3, gradients as they are
 * await runDispatches(rt.device, opt.dispatches);
 * model.markParamsChanged();
 * ```
 */
export class LowBitAdamW implements Optimizer {
  /** The runtime the optimizer's buffers and dispatches belong to. */
  readonly rt: Runtime;
  /** The settings, defaults filled in. */
  readonly config: LowBitConfig;
  /** How each piece of each tensor keeps its state, in layout order. */
  readonly pieces: StatePiece[];
  /** The gradient statistics the update reads (GRAD_STATS: scale, skip). */
  readonly gradStats: GPUBuffer;
  /** Each piece's update dispatches (empty with offload). */
  dispatches: Dispatch[] = [];
  /** GPU state: all of it, or (offload) a window for one piece. */
  #state: Record<StateKind, GPUBuffer>;
  /** Offload: the state in CPU memory, and mappable buffers to bring it back. */
  #host?: Record<StateKind, Uint8Array<ArrayBuffer>>;
  #readback?: Record<StateKind, GPUBuffer>;
  #pieceDispatches: Dispatch[][] = [];
  /** Every piece's update dispatches in order (the pieces' lists, flat). */
  #updates: Dispatch[] = [];
  #step: GPUBuffer;
  #params?: SplitBuffer;
  #mem: ArenaScope;

  private constructor(
    rt: Runtime,
    layout: ParamLayout,
    config: LowBitConfig,
    maxBindingBytes: number,
    gradStats?: GPUBuffer,
  ) {
    this.rt = rt;
    this.#mem = rt.arena.scope();
    this.config = config;
    const { pieces, totals } = statePieces(layout, config, maxBindingBytes);
    this.pieces = pieces;
    const gpuSizes = gpuStateSizes(pieces, totals, config);
    if (config.offload) {
      const sizes = stateSizes(totals);
      this.#host = {} as Record<StateKind, Uint8Array<ArrayBuffer>>;
      this.#readback = {} as Record<StateKind, GPUBuffer>;
      for (const k of STATE_KINDS) {
        this.#host[k] = new Uint8Array(Math.max(16, sizes[k] * 4));
        this.#readback[k] = rt.device.createBuffer({
          label: `opt.host.${k}`,
          size: Math.max(16, sizes[k] * 4),
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        });
      }
    }
    this.#state = Object.fromEntries(
      STATE_KINDS.map((k) => [k, this.#mem.alloc(`opt.${k}`, "optimizer", gpuSizes[k] * 4)]),
    ) as Record<StateKind, GPUBuffer>;
    ({ gradStats: this.gradStats, step: this.#step } = stepBuffers(this.#mem, "opt", gradStats));
  }

  /** Builds the optimizer over the model's parameter and gradient buffers. */
  static async create(
    rt: Runtime,
    layout: ParamLayout,
    buffers: {
      params: GPUBuffer | SplitBuffer;
      grads: GPUBuffer | SplitBuffer;
      gradStats?: GPUBuffer;
    },
    config: Partial<LowBitConfig> & { bits: 8 | 4 },
    options: { maxBindingBytes?: number } = {},
  ): Promise<LowBitAdamW> {
    const cfg = LowBitAdamW.check({
      ...ADAMW_DEFAULTS,
      block8: 256,
      fp32Embeddings: false,
      offload: false,
      ...config,
    });
    const opt = new LowBitAdamW(
      rt,
      layout,
      cfg,
      options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize,
      buffers.gradStats,
    );
    await opt.#build(splitOf(buffers.params), splitOf(buffers.grads));
    return opt;
  }

  /** `cfg` when its block size is 4 x a power of two, 4 to 1024; else a RangeError. */
  static check(cfg: LowBitConfig): LowBitConfig {
    const wg = cfg.block8 / 4;
    if (!(Number.isInteger(wg) && wg >= 1 && wg <= 256 && (wg & (wg - 1)) === 0)) {
      throw new RangeError(`8-bit block size ${cfg.block8} must be 4 x a power of two, 4 to 1024`);
    }
    return cfg;
  }

  async #build(params: SplitBuffer, grads: SplitBuffer): Promise<void> {
    const { rt } = this;
    this.#params = params;
    const st = this.#state;
    const maps8 = this.#mem.alloc("opt.maps8", "scratch", 512 * 4);
    rt.device.queue.writeBuffer(
      maps8,
      0,
      Float32Array.from([...dynamicMap(true, 8), ...dynamicMap(false, 8)]),
    );
    const maps4 = this.#mem.alloc("opt.maps4", "scratch", 32 * 4);
    rt.device.queue.writeBuffer(
      maps4,
      0,
      Float32Array.from([...dynamicMap(true, 4), ...linearMapNoZero(4)]),
    );
    const ctx = {
      params,
      grads,
      state: st,
      gradStats: this.gradStats,
      step: this.#step,
      maps8,
      maps4,
      block8: this.config.block8,
      offload: this.config.offload,
    };
    for (const piece of this.pieces) {
      this.#pieceDispatches.push(await pieceDispatches(rt, piece, ctx));
    }
    this.#updates = this.#pieceDispatches.flat();
    this.dispatches = this.config.offload ? [] : this.#updates;
  }

  /** Writes the per-step uniform for step `t` (1-based) at learning rate `lr`. */
  setStep(t: number, lr: number): void {
    this.rt.device.queue.writeBuffer(this.#step, 0, stepWords(this.config, t, lr, this.#params!));
  }

  /** Bytes of optimizer state on the GPU (offload: the one-piece window). */
  get stateBytes(): number {
    return Object.values(this.#state).reduce((a, b) => a + b.size, 0);
  }

  /** Bytes of optimizer state kept in CPU memory (0 without offload). */
  get hostBytes(): number {
    return this.#host ? Object.values(this.#host).reduce((a, b) => a + b.length, 0) : 0;
  }

  /** True when the state lives in CPU memory: run {@linkcode runOffloaded} for the update. */
  get offloaded(): boolean {
    return this.config.offload;
  }

  /**
   * Offload: streams each piece's state to the GPU window, updates the piece,
   * and copies the state back; then brings all of it back to CPU memory. Call
   * after the submit that wrote the gradient statistics.
   */
  async runOffloaded(): Promise<void> {
    const host = this.#host!, back = this.#readback!;
    const { device } = this.rt;
    this.pieces.forEach((p, i) => {
      const e = pieceExtents(p, this.config.block8);
      for (const k of STATE_KINDS) {
        const [off, n] = e[k];
        if (n) device.queue.writeBuffer(this.#state[k], 0, host[k], off * 4, n * 4);
      }
      const enc = device.createCommandEncoder();
      encodeDispatches(enc, this.#pieceDispatches[i]);
      for (const k of STATE_KINDS) {
        const [off, n] = e[k];
        if (n) enc.copyBufferToBuffer(this.#state[k], 0, back[k], off * 4, n * 4);
      }
      device.queue.submit([enc.finish()]);
    });
    for (const k of STATE_KINDS) {
      await back[k].mapAsync(GPUMapMode.READ);
      host[k].set(new Uint8Array(back[k].getMappedRange()));
      back[k].unmap();
    }
  }

  /** The update of the tensors in elements [start, end) (optimizer in backward). */
  updatePart(start: number, end: number): Dispatch[] {
    if (this.offloaded) {
      throw new Error("Offloaded optimizer state streams whole steps: it cannot update in parts");
    }
    const parts = this.pieces.map((p, i) => ({ ...p, dispatches: this.#pieceDispatches[i] }));
    return dispatchesWithin(parts, start, end);
  }

  /** Encodes the piece updates (offload: nothing here, {@linkcode finishUpdate} streams them). */
  encodeUpdate(encoder: GPUCommandEncoder, profiler?: Profiler): void {
    if (!this.offloaded) encodeDispatches(encoder, this.#updates, profiler);
  }

  /** Offload: streams the state through the GPU ({@linkcode runOffloaded}); else nothing. */
  finishUpdate(): Promise<void> {
    return this.offloaded ? this.runOffloaded() : Promise.resolve();
  }

  /** The state as raw byte tensors for a checkpoint (bit-exact). */
  async readState(): Promise<StateTensor[]> {
    const out: StateTensor[] = [];
    for (const k of STATE_KINDS) {
      const bytes = this.#host
        ? this.#host[k].slice()
        : new Uint8Array(await readBuffer(this.rt.device, this.#state[k]));
      out.push({ name: `lowbit${this.config.bits}.${k}`, shape: [bytes.length], data: bytes });
    }
    return out;
  }

  /** Restores state written by {@linkcode readState} (same model, bits and settings). */
  writeState(saved: SavedState): void {
    const all = STATE_KINDS.map((k) => {
      const name = `lowbit${this.config.bits}.${k}`;
      if (!saved.has(name)) throw otherOptimizerError(saved, name);
      const bytes = saved.bytes(name);
      const want = this.#host ? this.#host[k].length : this.#state[k].size;
      if (bytes.length !== want) {
        throw new Error(
          `${saved.path}: "${name}" has ${bytes.length} bytes, this model needs ${want}`,
        );
      }
      return [k, bytes] as const;
    });
    for (const [k, bytes] of all) {
      if (this.#host) this.#host[k].set(bytes);
      else this.rt.device.queue.writeBuffer(this.#state[k], 0, bytes);
    }
  }

  /** Frees the state and every buffer the optimizer made. */
  destroy(): void {
    for (const d of this.#updates) {
      for (const b of d.resources ?? []) this.rt.arena.free(b);
    }
    for (const b of Object.values(this.#readback ?? {})) b.destroy();
    this.#mem.freeAll();
    this.dispatches = [];
  }

  /** Counts of pieces by kind (for logs). */
  summary(): string {
    const c = { fp32: 0, q8: 0, q4: 0 };
    for (const p of this.pieces) c[p.kind] += p.size;
    return `state: ${
      c.q8 + c.q4
    } parameters quantized to ${this.config.bits} bits, ${c.fp32} in fp32`;
  }
}

// ---------------------------------------------------------------------------
// State sizes: what the constructor allocates and the memory plan counts.

type Totals = ReturnType<typeof statePieces>["totals"];

/** Floats (or words) of each state kind for all pieces. */
function stateSizes(totals: Totals): Record<StateKind, number> {
  return {
    m32: totals.f32,
    v32: totals.f32,
    mq: totals.words,
    vq: totals.words,
    mabs: totals.abs,
    vabs: totals.abs,
    scales: totals.scales,
  };
}

/** Floats of each kind on the GPU: all of the state, or (offload) the largest piece's. */
function gpuStateSizes(
  pieces: StatePiece[],
  totals: Totals,
  cfg: Pick<LowBitConfig, "block8" | "offload">,
): Record<StateKind, number> {
  const sizes = stateSizes(totals);
  if (!cfg.offload) return sizes;
  for (const k of STATE_KINDS) sizes[k] = 0;
  for (const p of pieces) {
    const e = pieceExtents(p, cfg.block8);
    for (const k of STATE_KINDS) sizes[k] = Math.max(sizes[k], e[k][1]);
  }
  return sizes;
}

/** Bytes of GPU state {@linkcode LowBitAdamW} allocates for `layout` (the memory plan's). */
export function lowBitStateBytes(
  layout: ParamLayout,
  cfg: Pick<LowBitConfig, "bits" | "block8" | "fp32Embeddings" | "offload">,
  maxBindingBytes: number,
): number {
  const { pieces, totals } = statePieces(layout, cfg, maxBindingBytes);
  const sizes = gpuStateSizes(pieces, totals, cfg);
  return STATE_KINDS.reduce((a, k) => a + arenaBytes(sizes[k] * 4), 0);
}
