/**
 * GPT-2 on WebGPU, the graph: activations for a fixed batch shape (B, T) over a set of
 * weights (src/model/weights.ts, which several graphs share), and the forward and backward
 * passes (src/model/passes.ts) as lists of dispatches built once and replayed each step in
 * one command encoder.
 *
 * Semantics are OpenAI GPT-2's: pre-LayerNorm blocks (eps 1e-5), tanh GELU,
 * causal self-attention, learned position embeddings, lm_head tied to wte and
 * mean cross-entropy over the B*T positions.
 *
 * Precision `fp16` (mixed precision, on devices with shader-f16): parameters
 * stay f32 (the master copy the optimizer updates) and the matmuls read an f16
 * copy, refreshed before the next pass after {@linkcode Weights.markChanged}
 * (or, with 16-bit weights, the parameters are f16 and every kernel reads them);
 * the activations marked half in src/model/block_spec.ts are f16; every sum is f32. The
 * loss gradient is multiplied by a loss scale ({@linkcode GPT2.setLossScale}),
 * so that small gradients survive f16.
 *
 * @module
 */

import { type Dispatch, encodeDispatches, freeDispatches } from "../gpu/dispatch.ts";
import type { ArenaScope } from "../gpu/arena.ts";
import type { DType } from "../gpu/dtype.ts";
import { readF32, type Runtime } from "../gpu/runtime.ts";
import { checkSequenceLength, type GPT2Config } from "./config.ts";
import { BatchPacker } from "./batch.ts";
import type { MatmulOptions } from "./ops/matmul.ts";
import type { TensorRange } from "./ops/tensor.ts";
import type { ParamLayout } from "./params.ts";
import { buildPasses, type GradMark, type Passes } from "./passes.ts";
import type { Precision, Recompute } from "./plan.ts";
import { Weights } from "./weights.ts";

export { IGNORE_TARGET } from "./batch.ts";

/** Options for {@linkcode GPT2.create}. */
export interface GPT2Options {
  /** Batch size. */
  B: number;
  /** Sequence length (at most the config's nCtx). */
  T: number;
  /** New weights: initialise like GPT-2 with this seed (default 1337); `null` leaves them zero. */
  seed?: number | null;
  /** Gradient of the loss per position; default 1 / (B*T), the mean. */
  dloss?: number;
  /** Options for every matmul the model builds (kernel choice, tile, binding limit). */
  matmul?: MatmulOptions;
  /** Forward only: no gradient buffer, no backward dispatches (eval, sampling). */
  inference?: boolean;
  /**
   * Rows of logits computed at a time (a multiple of 64): the (B*T, Vp) logits
   * never exist whole. Default: all rows when they take at most 256 MiB, else 512.
   */
  logitsChunkRows?: number;
  /** Activations the backward recomputes instead of storing (default none). */
  recompute?: Recompute;
  /**
   * Read these weights instead of making new ones (the config must be theirs; precision,
   * seed are theirs). The graph does not free them.
   */
  weights?: Weights;
  /** Share this model's weights (the same as `weights: model.weights`). */
  sharedParams?: GPT2;
  /**
   * `fp16`: mixed precision (see the module doc) when the device has
   * shader-f16, else fp32 (read the result from {@linkcode GPT2.precision}).
   * Default fp32.
   */
  precision?: Precision;
  /** New weights: the gradients' element type (f16: 16-bit gradients; see WeightsOptions). */
  gradDtype?: DType;
  /** New weights: the parameters' element type (f16: 16-bit weights; see WeightsOptions). */
  weightDtype?: DType;
  /** New weights: one block's gradients at a time (optimizer in backward; see WeightsOptions). */
  sharedBlockGrads?: boolean;
}

/**
 * A GPT-2 model bound to a device and a batch shape.
 *
 * @example Forward and backward on one batch
 * ```ts
 * import { createRuntime, GPT2, resolveConfig } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const model = await GPT2.create(rt, resolveConfig("tiny"), { B: 2, T: 8 });
 * const tokens = Array.from({ length: 2 * 8 }, (_, i) => i % 101);
 * const targets = tokens.map((t) => (t + 1) % 101);
 * const loss = await model.forwardBackward(tokens, targets); // grads in model.grads
 * console.log(loss, await model.readTensor("wte.weight", true));
 * model.destroy();
 * ```
 */
export class GPT2 {
  /** The runtime the model's buffers and dispatches belong to. */
  readonly rt: Runtime;
  /** The weights this graph reads (shared with other graphs, or its own). */
  readonly weights: Weights;
  /** Batch size: sequences per forward pass. */
  readonly B: number;
  /** Sequence length: tokens per sequence. */
  readonly T: number;
  #ownsWeights: boolean;
  #mem: ArenaScope;
  #lossScale: GPUBuffer;
  #lossStaging: GPUBuffer;
  #batch: BatchPacker;
  #p!: Passes;

  private constructor(rt: Runtime, weights: Weights, owns: boolean, B: number, T: number) {
    checkSequenceLength(weights.config, T);
    if (!Number.isInteger(B) || B < 1) {
      throw new RangeError(`Batch size must be a positive integer, got ${B}`);
    }
    this.rt = rt;
    this.weights = weights;
    this.#ownsWeights = owns;
    this.B = B;
    this.T = T;
    this.#mem = rt.arena.scope();
    this.#lossScale = this.#mem.alloc(
      "loss_scale",
      "scratch",
      16,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    rt.device.queue.writeBuffer(this.#lossScale, 0, new Float32Array([1, 0, 0, 0]));
    this.#batch = new BatchPacker(B, T, weights.config.vocabSize);
    this.#lossStaging = rt.device.createBuffer({
      label: "losses.readback",
      size: B * T * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /** Builds a graph of shape (B, T) over given weights, or over new ones. */
  static async create(rt: Runtime, config: GPT2Config, options: GPT2Options): Promise<GPT2> {
    const shared = options.weights ?? options.sharedParams?.weights;
    // Every field of the config, bias included (absent means GPT-2's biases).
    const fields = (c: GPT2Config): GPT2Config => ({ ...c, bias: c.bias ?? true });
    const keys = Object.keys(fields(config)) as (keyof GPT2Config)[];
    if (shared && keys.some((k) => fields(shared.config)[k] !== fields(config)[k])) {
      throw new RangeError(
        `Shared weights are of another model (${JSON.stringify(shared.config)}) than ` +
          JSON.stringify(config),
      );
    }
    if (
      shared && options.precision === "fp16" && shared.precision !== "fp16" &&
      rt.gpu.features.shaderF16
    ) {
      throw new RangeError(
        "An fp16 model cannot share the parameters of an fp32 model (it has no f16 copy): " +
          "create the source model with precision fp16",
      );
    }
    if (shared && !options.inference && !shared.hasGrads) {
      throw new RangeError("A training graph needs weights with gradients (grads: true)");
    }
    const weights = shared ?? await Weights.create(rt, config, {
      seed: options.seed,
      precision: options.precision,
      grads: !options.inference,
      gradDtype: options.gradDtype,
      weightDtype: options.weightDtype,
      sharedBlockGrads: options.sharedBlockGrads,
    });
    const m = new GPT2(rt, weights, !shared, options.B, options.T);
    m.#p = await buildPasses(rt, weights, {
      B: m.B,
      T: m.T,
      dloss: options.dloss ?? 1 / (m.B * m.T),
      matmul: options.matmul ?? {},
      inference: options.inference ?? false,
      recompute: options.recompute ?? "none",
      logitsChunkRows: options.logitsChunkRows,
      inputStride: m.#batch.stride,
      lossScale: m.#lossScale,
    }, m.#mem);
    return m;
  }

  /** The architecture, validated. */
  get config(): GPT2Config {
    return this.weights.config;
  }

  /** Where each named parameter lies in `params` (and in `grads`). */
  get layout(): ParamLayout {
    return this.weights.layout;
  }

  /** Padded vocabulary: `vocabSize` rounded up to a multiple of 128 (rows of wte). */
  get Vp(): number {
    return this.weights.Vp;
  }

  /** All parameters, flat, f32 (views in `layout`). */
  get params(): GPUBuffer {
    return this.weights.params;
  }

  /** fp16 (mixed) or fp32, as resolved for this device. */
  get precision(): Precision {
    return this.weights.precision;
  }

  /** All gradients, same layout as the parameters (not in inference mode). */
  get grads(): GPUBuffer {
    if (!this.#p.dres) {
      throw new Error("This model was created with inference: true: it has no gradients");
    }
    return this.weights.grads;
  }

  /** True when the model has no backward pass. */
  get inference(): boolean {
    return this.#p.dres === undefined;
  }

  /** Layer l's q|k|v activations [B, T, 3C]: the KV cache a decoder reads. */
  layerQkv(l: number): GPUBuffer {
    return this.#p.layers[l].qkv;
  }

  /** Per-position losses [B*T] of the last forward pass. */
  get losses(): GPUBuffer {
    return this.#p.losses;
  }

  /**
   * Call after changing the parameters on the GPU outside the model (an
   * optimizer step): the f16 copy is refreshed before the next pass.
   */
  markParamsChanged(): void {
    this.weights.markChanged();
  }

  /** Sets the loss scale the loss gradient is multiplied by (mixed precision); default 1. */
  setLossScale(scale: number): void {
    this.rt.device.queue.writeBuffer(this.#lossScale, 0, new Float32Array([scale, 0, 0, 0]));
  }

  /** The range matmuls read a weight from: the f16 copy under fp16, else the parameters. */
  weight(name: string): TensorRange {
    return this.weights.weight(name);
  }

  /** A named parameter's range in the flat buffer (or in the gradient buffer). */
  tensor(name: string, grads = false): TensorRange {
    if (grads && this.inference) {
      throw new Error("This model was created with inference: true: it has no gradients");
    }
    return this.weights.tensor(name, grads);
  }

  /**
   * Per-position losses [B*T] of the last forward pass (0 where there was no
   * target), read through a staging buffer the model keeps.
   */
  async readLosses(): Promise<Float32Array> {
    const staging = this.#lossStaging;
    const enc = this.rt.device.createCommandEncoder();
    enc.copyBufferToBuffer(this.#p.losses, 0, staging, 0, staging.size);
    this.rt.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    return out;
  }

  async #meanLoss(): Promise<number> {
    return this.#batch.meanLoss(await this.readLosses());
  }

  /** The gradients' buffers (one, or several past maxBufferSize). */
  get #gradBuffers(): GPUBuffer[] {
    if (!this.#p.dres) {
      throw new Error("This model was created with inference: true: it has no gradients");
    }
    return this.weights.gradParts.buffers;
  }

  #submit(dispatches: Dispatch[], clear: GPUBuffer[]): void {
    const encoder = this.rt.device.createCommandEncoder();
    for (const b of clear) encoder.clearBuffer(b);
    this.weights.encodeRefresh(encoder);
    encodeDispatches(encoder, dispatches, this.rt.profiler);
    this.rt.profiler?.resolve(encoder);
    this.rt.device.queue.submit([encoder.finish()]);
  }

  /**
   * Encodes one training micro-step (forward + backward) after {@linkcode setBatch}:
   * clears dresidual and, unless `accumulate`, the gradients.
   */
  encodeTrain(encoder: GPUCommandEncoder, accumulate = false): void {
    this.#encodeStart(encoder, accumulate);
    encodeDispatches(encoder, this.#p.train, this.rt.profiler);
  }

  /**
   * Encodes part `i` of the training micro-step: its dispatches up to {@linkcode gradMarks}[i]
   * (part 0 also clears and refreshes as {@linkcode encodeTrain} does). A step can submit the
   * backward in parts and read each layer's gradients back while the rest runs.
   */
  encodeTrainPart(encoder: GPUCommandEncoder, i: number, accumulate = false): void {
    if (i === 0) this.#encodeStart(encoder, accumulate);
    encodeDispatches(encoder, this.#p.trainParts[i], this.rt.profiler);
  }

  #encodeStart(encoder: GPUCommandEncoder, accumulate: boolean): void {
    encoder.clearBuffer(this.#p.dres!);
    if (!accumulate) this.#gradBuffers.forEach((b) => encoder.clearBuffer(b));
    this.weights.encodeRefresh(encoder);
  }

  /** Where in the training micro-step each range of gradients is complete (see passes.ts). */
  get gradMarks(): readonly GradMark[] {
    return this.#p.gradMarks;
  }

  /** Encodes the forward pass (loss only, logits kept) after {@linkcode setBatch}. */
  encodeForward(encoder: GPUCommandEncoder): void {
    this.weights.encodeRefresh(encoder);
    encodeDispatches(encoder, this.#p.forward, this.rt.profiler);
  }

  /** Uploads the next batch: tokens and targets [B*T] (targets may use IGNORE_TARGET). */
  setBatch(tokens: ArrayLike<number>, targets?: ArrayLike<number>): void {
    this.rt.device.queue.writeBuffer(this.#p.inputs, 0, this.#batch.pack(tokens, targets));
  }

  /**
   * Forward pass only. Returns the mean loss over positions with a target (NaN
   * without targets); the logits stay readable with {@linkcode readLogits}.
   */
  async forward(tokens: ArrayLike<number>, targets?: ArrayLike<number>): Promise<number> {
    this.setBatch(tokens, targets);
    this.#submit(this.#p.forward, []);
    const loss = await this.#meanLoss();
    await this.rt.profiler?.collect();
    return loss;
  }

  /**
   * Forward and backward in one command encoder: gradients of the mean loss are
   * added to `grads` (zeroed first unless `accumulate`). Returns the mean loss.
   */
  async forwardBackward(
    tokens: ArrayLike<number>,
    targets: ArrayLike<number>,
    options: { accumulate?: boolean } = {},
  ): Promise<number> {
    if (this.inference) throw new Error("This model was created with inference: true: no backward");
    this.setBatch(tokens, targets);
    const dres = this.#p.dres!;
    this.#submit(this.#p.train, options.accumulate ? [dres] : [dres, ...this.#gradBuffers]);
    const loss = await this.#meanLoss();
    await this.rt.profiler?.collect();
    return loss;
  }

  /** Sets all gradients to zero. */
  zeroGrad(): void {
    const encoder = this.rt.device.createCommandEncoder();
    this.#gradBuffers.forEach((b) => encoder.clearBuffer(b));
    this.rt.device.queue.submit([encoder.finish()]);
  }

  /**
   * Logits [rows, V] for positions row0.. after {@linkcode forward} (padding
   * dropped). Only the last chunk of `logitsChunkRows` rows is kept.
   */
  async readLogits(
    row0: number = this.#p.logitsRows[0],
    rows: number = this.B * this.T - row0,
  ): Promise<Float32Array> {
    const { Vp } = this, V = this.config.vocabSize;
    const [k0, kn] = this.#p.logitsRows;
    if (row0 < k0 || row0 + rows > k0 + kn) {
      throw new RangeError(
        `Logits of rows ${row0}..${row0 + rows} are not kept: only rows ${k0}..${k0 + kn} are ` +
          "(the last chunk); create the model with logitsChunkRows >= B*T to keep all",
      );
    }
    const raw = await readF32(this.rt.device, this.#p.logits, (row0 - k0) * Vp, rows * Vp);
    const out = new Float32Array(rows * V);
    for (let r = 0; r < rows; r++) out.set(raw.subarray(r * Vp, r * Vp + V), r * V);
    return out;
  }

  /** A parameter (or its gradient) by Hugging Face name; wte without padding rows. */
  readTensor(name: string, grads = false): Promise<Float32Array> {
    return this.weights.readTensor(name, grads);
  }

  /** Overwrites a parameter by name (wte may omit its padding rows). */
  writeTensor(name: string, data: Float32Array<ArrayBuffer>): void {
    this.weights.writeTensor(name, data);
  }

  /** Number of dispatches in one training step (forward + backward), or forward in inference. */
  get dispatchCount(): number {
    return this.#p.train.length || this.#p.forward.length;
  }

  /** Frees every buffer the graph allocated, and its weights when it made them. */
  destroy(): void {
    // The forward list is a prefix of the training list plus its own classifier dispatches.
    // The lists share the forward body and the lm_head dispatches: free each once.
    freeDispatches(this.rt.arena, [...new Set([...this.#p.train, ...this.#p.forward])]);
    this.#p.train = this.#p.forward = [];
    this.#mem.freeAll();
    this.#lossStaging.destroy();
    if (this.#ownsWeights) this.weights.destroy();
  }
}
