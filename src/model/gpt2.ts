/**
 * GPT-2 on WebGPU: parameters in one flat buffer with named views, activations
 * for a fixed batch shape (B, T), and the forward and backward passes as lists
 * of dispatches built once and replayed each step in one command encoder.
 *
 * Semantics are OpenAI GPT-2's: pre-LayerNorm blocks (eps 1e-5), tanh GELU,
 * causal self-attention, learned position embeddings, lm_head tied to wte and
 * mean cross-entropy over the B*T positions.
 *
 * Precision `fp16` (mixed precision, on devices with shader-f16): parameters
 * stay f32 (the master copy the optimizer updates) and the matmuls read an f16
 * copy, refreshed before the next pass after {@linkcode GPT2.markParamsChanged};
 * the activations listed in src/model/plan.ts are f16; every sum is f32. The
 * loss gradient is multiplied by a loss scale ({@linkcode GPT2.setLossScale}),
 * so that small gradients survive f16.
 *
 * @module
 */

import { type Dispatch, encodeDispatches, freeDispatches } from "../gpu/dispatch.ts";
import type { BufferRange } from "../gpu/kernel.ts";
import type { ArenaScope } from "../gpu/arena.ts";
import { readF32, type Runtime } from "../gpu/runtime.ts";
import { checkSequenceLength, type GPT2Config, paddedVocab, validateConfig } from "./config.ts";
import { initTensor } from "./init.ts";
import { blockBackward, type BlockBuffers, blockForward } from "./block.ts";
import { matmul, type MatmulOptions } from "./ops/matmul.ts";
import {
  classifier,
  encoderBackward,
  encoderForward,
  flashAttentionForward,
  layernormBackward,
  layernormForward,
  type TensorRange,
} from "./ops/mod.ts";
import { parameterLayout, type ParamLayout } from "./params.ts";
import { ParamStore } from "./param_store.ts";
import {
  activationBuffers,
  layerBufferLabel,
  type LayerField,
  logitsChunkRows,
  type Precision,
  type Recompute,
} from "./plan.ts";

/** Target id that marks a position without a loss. */
export const IGNORE_TARGET = 0xffffffff;

/** Options for {@linkcode GPT2.create}. */
export interface GPT2Options {
  /** Batch size. */
  B: number;
  /** Sequence length (at most the config's nCtx). */
  T: number;
  /** Initialise parameters like GPT-2 with this seed (default 1337); `null` leaves them zero. */
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
   * Use this model's parameters (and their f16 copy) instead of new ones; it
   * must have the same config. Precision defaults to that model's.
   */
  sharedParams?: GPT2;
  /**
   * `fp16`: mixed precision (see the module doc) when the device has
   * shader-f16, else fp32 (read the result from {@linkcode GPT2.precision}).
   * Default fp32.
   */
  precision?: Precision;
}

/** One layer's activations: a block's buffers (its input is the previous output) and lse. */
type LayerActs = Omit<BlockBuffers, "input"> & {
  /** Log-sum-exp of each attention row [B, NH, T] (flash attention keeps no T x T matrix). */
  lse: GPUBuffer;
};

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
  /** The architecture, validated. */
  readonly config: GPT2Config;
  /** Where each named parameter lies in `params` (and in `grads`). */
  readonly layout: ParamLayout;
  /** Batch size: sequences per forward pass. */
  readonly B: number;
  /** Sequence length: tokens per sequence. */
  readonly T: number;
  /** Padded vocabulary: `vocabSize` rounded up to a multiple of 128 (rows of wte). */
  readonly Vp: number;
  /** All parameters, flat, f32 (views in `layout`). */
  readonly params: GPUBuffer;
  /** fp16 (mixed) or fp32, as resolved for this device. */
  readonly precision: Precision;
  #store: ParamStore;
  #ownsParams: boolean;
  #lossScale: GPUBuffer;
  #grads: GPUBuffer | undefined;
  #inputs!: GPUBuffer;
  #inputStride: number;
  #logits!: GPUBuffer;
  #losses!: GPUBuffer;
  #dres!: GPUBuffer;
  #forward: Dispatch[] = [];
  /** First row and number of rows of the logits chunk the buffer holds after a forward. */
  #logitsRows: [number, number] = [0, 0];
  #train: Dispatch[] = [];
  #mem: ArenaScope;
  #targets = new Uint32Array(0);
  /** Reused every batch: tokens | targets | token-sorted positions. */
  #uploadData: Uint32Array<ArrayBuffer>;
  #lossStaging: GPUBuffer;
  #layers: LayerActs[] = [];

  private constructor(rt: Runtime, config: GPT2Config, B: number, T: number, o: GPT2Options) {
    this.rt = rt;
    this.#mem = rt.arena.scope();
    this.config = validateConfig(config);
    checkSequenceLength(config, T);
    if (!Number.isInteger(B) || B < 1) {
      throw new RangeError(`Batch size must be a positive integer, got ${B}`);
    }
    this.B = B;
    this.T = T;
    this.Vp = paddedVocab(config.vocabSize);
    this.layout = parameterLayout(config);
    const bytes = this.layout.totalElements * 4;
    if (bytes > rt.gpu.limits.maxBufferSize) {
      throw new RangeError(
        `Model parameters need ${bytes} bytes in one buffer, over this adapter's maxBufferSize ` +
          `of ${rt.gpu.limits.maxBufferSize}: use a smaller model`,
      );
    }
    const src = o.sharedParams;
    if (src && src.params.size < bytes) {
      throw new RangeError(
        `Shared parameter buffer holds ${src.params.size} bytes, needs ${bytes}`,
      );
    }
    const wanted = o.precision ?? src?.precision ?? "fp32";
    this.precision = wanted === "fp16" && rt.gpu.features.shaderF16 ? "fp16" : "fp32";
    if (src && this.precision === "fp16" && !src.#store.half) {
      throw new RangeError(
        "An fp16 model cannot share the parameters of an fp32 model (it has no f16 copy): " +
          "create the source model with precision fp16",
      );
    }
    this.#store = src
      ? src.#store
      : new ParamStore(this.#mem, this.layout.totalElements, this.precision === "fp16");
    this.params = this.#store.params;
    this.#ownsParams = !src;
    this.#lossScale = this.#mem.alloc(
      "loss_scale",
      "scratch",
      16,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    rt.device.queue.writeBuffer(this.#lossScale, 0, new Float32Array([1, 0, 0, 0]));
    this.#grads = o.inference ? undefined : this.#mem.alloc("grads", "gradients", bytes);
    this.#inputStride = Math.ceil((B * T) / 64) * 64;
    this.#uploadData = new Uint32Array(3 * this.#inputStride);
    this.#lossStaging = rt.device.createBuffer({
      label: "losses.readback",
      size: B * T * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /** Allocates the model, initialises it and builds its dispatches. */
  static async create(rt: Runtime, config: GPT2Config, options: GPT2Options): Promise<GPT2> {
    const m = new GPT2(rt, config, options.B, options.T, options);
    const seed = options.seed === undefined ? 1337 : options.seed;
    if (seed !== null && !options.sharedParams) m.#initialise(seed);
    await m.#build(options);
    return m;
  }

  #initialise(seed: number): void {
    this.layout.tensors.forEach((t, i) => {
      const data = initTensor(this.config, t, i, seed);
      this.rt.device.queue.writeBuffer(this.params, t.offset * 4, data);
    });
    this.markParamsChanged();
  }

  /** All gradients, same layout as the parameters (not in inference mode). */
  get grads(): GPUBuffer {
    if (!this.#grads) {
      throw new Error("This model was created with inference: true: it has no gradients");
    }
    return this.#grads;
  }

  /** True when the model has no backward pass. */
  get inference(): boolean {
    return this.#grads === undefined;
  }

  /** Layer l's q|k|v activations [B, T, 3C]: the KV cache a decoder reads. */
  layerQkv(l: number): GPUBuffer {
    return this.#layers[l].qkv;
  }

  /** Per-position losses [B*T] of the last forward pass. */
  get losses(): GPUBuffer {
    return this.#losses;
  }

  /**
   * Call after changing the parameters on the GPU outside the model (an
   * optimizer step): the f16 copy is refreshed before the next pass.
   */
  markParamsChanged(): void {
    this.#store.markChanged();
  }

  /** Sets the loss scale the loss gradient is multiplied by (mixed precision); default 1. */
  setLossScale(scale: number): void {
    this.rt.device.queue.writeBuffer(this.#lossScale, 0, new Float32Array([scale, 0, 0, 0]));
  }

  /** Encodes the refresh of the f16 copy of the parameters when it is stale. */
  encodeHalfParams(encoder: GPUCommandEncoder): void {
    this.#store.encodeRefresh(this.rt, encoder);
  }

  /** The range matmuls read a weight from: the f16 copy under fp16, else the parameters. */
  weight(name: string): TensorRange {
    const t = this.tensor(name);
    return this.precision === "fp16" ? this.#store.weight(t) : t;
  }

  /** A named parameter's range in the flat buffer (or in the gradient buffer). */
  tensor(name: string, grads = false): TensorRange {
    const t = this.layout.byName.get(name);
    if (!t) throw new RangeError(`Unknown parameter "${name}"`);
    return { buffer: grads ? this.grads : this.params, offset: t.offset, size: t.size };
  }

  async #build(options: GPT2Options): Promise<void> {
    const { rt, B, T, Vp } = this;
    const { nLayer: L, nHead: NH, nEmbd: C, vocabSize: V } = this.config;
    const BT = B * T;
    const mm = options.matmul ?? {};
    // Every activation and scratch buffer comes from the plan (src/model/plan.ts).
    const recompute: Recompute = options.inference ? "none" : options.recompute ?? "none";
    const plan = activationBuffers(this.config, {
      B,
      T,
      inference: options.inference,
      recompute,
      logitsChunkRows: options.logitsChunkRows,
      precision: this.precision,
    });
    const made = new Map(
      plan.map((b) => [b.label, this.#mem.alloc(b.label, b.category, b.bytes, undefined, b.dtype)]),
    );
    if (this.#ownsParams) await this.#store.build(rt);
    const get = (label: string) => made.get(label)!;
    const S = this.#inputStride;
    this.#inputs = get("inputs");
    const tokens: BufferRange = { buffer: this.#inputs, offset: 0, size: BT * 4 };
    const targets: BufferRange = { buffer: this.#inputs, offset: S * 4, size: BT * 4 };
    const order: BufferRange = { buffer: this.#inputs, offset: 2 * S * 4, size: BT * 4 };
    const P = (n: string) => this.tensor(n);
    const W = (n: string) => this.weight(n);
    const G = (n: string) => this.tensor(n, true);
    const op = (t: TensorRange) => ({ buffer: t.buffer, offset: t.offset });
    const buf = (b: GPUBuffer) => ({ buffer: b });

    // ---- activations (shared "work" buffers where the backward recomputes)
    const encoded = get("encoded");
    const layers: LayerActs[] = [];
    for (let l = 0; l < L; l++) {
      const a = (f: LayerField) => get(layerBufferLabel(l, f, recompute));
      layers.push({
        ln1: a("ln1"),
        ln1Mean: a("ln1_mean"),
        ln1Rstd: a("ln1_rstd"),
        qkv: a("qkv"),
        atty: a("atty"),
        lse: a("lse"),
        attproj: a("attproj"),
        res2: a("res2"),
        ln2: a("ln2"),
        ln2Mean: a("ln2_mean"),
        ln2Rstd: a("ln2_rstd"),
        fch: a("fch"),
        fchGelu: a("fch_gelu"),
        fcproj: a("fcproj"),
        res3: a("res3"),
      });
    }
    this.#layers = layers;
    const lnf = get("lnf"), lnfMean = get("lnf_mean"), lnfRstd = get("lnf_rstd");
    const rowsPer = logitsChunkRows(BT, Vp, options.logitsChunkRows);
    this.#logits = get("logits");
    this.#losses = get("losses");
    const chunks: [number, number][] = [];
    for (let r = 0; r < BT; r += rowsPer) chunks.push([r, Math.min(BT, r + rowsPer)]);
    this.#logitsRows = [
      chunks[chunks.length - 1][0],
      chunks[chunks.length - 1][1] - chunks[chunks.length - 1][0],
    ];
    const dloss = options.dloss ?? 1 / BT;
    const cls = (r0: number, r1: number, writeGrad: boolean) =>
      classifier(rt, { N: r1 - r0, V, Vp, dloss, writeGrad }, {
        logits: this.#logits,
        targets: {
          buffer: targets.buffer,
          offset: (targets.offset ?? 0) + r0 * 4,
          size: (r1 - r0) * 4,
        },
        losses: { buffer: this.#losses, offset: r0 * 4, size: (r1 - r0) * 4 },
        lossScale: this.#lossScale,
      });
    // ---- forward
    const fwd: Dispatch[] = [];
    const enc = { BT, T, C, Vp };
    fwd.push(
      ...await encoderForward(rt, enc, {
        tokens,
        wte: P("wte.weight"),
        wpe: P("wpe.weight"),
        out: encoded,
      }),
    );
    const fwdLayers: Dispatch[][] = [], mlpLayers: Dispatch[][] = [];
    for (let l = 0; l < L; l++) {
      const a = layers[l];
      const input = l === 0 ? encoded : layers[l - 1].res3;
      const attention = await flashAttentionForward(rt, { B, T, C, NH }, {
        qkv: a.qkv,
        out: a.atty,
        lse: a.lse,
      });
      const blk = await blockForward(rt, { rows: BT, C, l }, P, W, { ...a, input }, attention, mm);
      const all = [...blk.pre, ...blk.attention, ...blk.post];
      fwd.push(...all);
      fwdLayers.push(all);
      mlpLayers.push(blk.mlp);
    }
    const last = L > 0 ? layers[L - 1].res3 : encoded;
    fwd.push(
      await layernormForward(rt, { N: BT, C }, {
        inp: last,
        weight: P("ln_f.weight"),
        bias: P("ln_f.bias"),
        out: lnf,
        mean: lnfMean,
        rstd: lnfRstd,
      }),
    );
    // lm_head and the loss, one chunk of rows at a time (the same matmul dispatches
    // serve the forward-only list and the training list).
    const lmHead = await Promise.all(
      chunks.map(([r0, r1]) =>
        matmul(rt, { M: r1 - r0, N: Vp, K: C, transB: true }, {
          a: { buffer: lnf, offset: r0 * C },
          b: op(W("wte.weight")),
          c: buf(this.#logits),
        }, { name: "lm_head_forward", ...mm })
      ),
    );
    const head: Dispatch[] = [];
    for (let i = 0; i < chunks.length; i++) {
      head.push(...lmHead[i], ...await cls(...chunks[i], false));
    }
    this.#forward = [...fwd, ...head];
    if (options.inference) return;

    // ---- backward scratch
    this.#dres = get("dresidual");
    const dbtc = get("d_btc");
    const datty = get("d_atty");
    const dqkv = get("d_qkv");
    const dfchGelu = get("d_fch_gelu");
    const dfch = get("d_fch");
    const delta = get("attn_delta");

    // ---- backward (dresidual is cleared before it runs). Per chunk: logits, loss and
    // dlogits in place, then dlnf for those rows and their share of dwte.
    const bwd: Dispatch[] = [];
    for (let i = 0; i < chunks.length; i++) {
      const [r0, r1] = chunks[i];
      bwd.push(...lmHead[i], ...await cls(r0, r1, true));
      bwd.push(
        ...await matmul(rt, { M: r1 - r0, N: C, K: Vp }, {
          a: buf(this.#logits),
          b: op(W("wte.weight")),
          c: { buffer: dbtc, offset: r0 * C },
        }, { name: "lm_head_backward_dinp", ...mm }),
      );
      bwd.push(
        ...await matmul(rt, { M: Vp, N: C, K: r1 - r0, transA: true, accumulate: true }, {
          a: buf(this.#logits),
          b: { buffer: lnf, offset: r0 * C },
          c: op(G("wte.weight")),
        }, { name: "lm_head_backward_dweight", ...mm }),
      );
    }
    bwd.push(
      ...await layernormBackward(rt, { N: BT, C }, {
        inp: last,
        weight: P("ln_f.weight"),
        mean: lnfMean,
        rstd: lnfRstd,
        dout: dbtc,
        dinp: this.#dres,
        dweight: G("ln_f.weight"),
        dbias: G("ln_f.bias"),
      }),
    );
    for (let l = L - 1; l >= 0; l--) {
      // Recompute what this layer's backward needs and the forward did not keep.
      if (recompute === "block") bwd.push(...fwdLayers[l]);
      else if (recompute === "mlp") bwd.push(...mlpLayers[l]);
      const input = l === 0 ? encoded : layers[l - 1].res3;
      bwd.push(
        ...await blockBackward(rt, { B, T, C, NH, l }, { P, W, G }, { ...layers[l], input }, {
          dres: this.#dres,
          dbtc,
          datty,
          dqkv,
          dfchGelu,
          dfch,
          delta,
        }, mm),
      );
    }
    bwd.push(
      ...await encoderBackward(rt, enc, {
        tokens,
        order,
        dout: this.#dres,
        dwte: G("wte.weight"),
        dwpe: G("wpe.weight"),
      }),
    );
    this.#train = [...fwd, ...bwd];
  }

  /** Uploads a batch: tokens and targets [B*T] (targets may use IGNORE_TARGET). */
  #upload(tokens: ArrayLike<number>, targets?: ArrayLike<number>): void {
    const BT = this.B * this.T, S = this.#inputStride, V = this.config.vocabSize;
    if (tokens.length !== BT) {
      throw new RangeError(
        `Expected ${BT} tokens (B ${this.B} x T ${this.T}), got ${tokens.length}`,
      );
    }
    if (targets && targets.length !== BT) {
      throw new RangeError(
        `Expected ${BT} targets (B ${this.B} x T ${this.T}), got ${targets.length}`,
      );
    }
    const data = this.#uploadData;
    for (let i = 0; i < BT; i++) {
      const tok = tokens[i];
      if (!(tok >= 0 && tok < V && Number.isInteger(tok))) {
        throw new RangeError(`Token ${tok} at position ${i} is outside the vocabulary [0, ${V})`);
      }
      data[i] = tok;
      const tgt = targets ? targets[i] : IGNORE_TARGET;
      if (tgt !== IGNORE_TARGET && !(tgt >= 0 && tgt < V && Number.isInteger(tgt))) {
        throw new RangeError(`Target ${tgt} at position ${i} is outside the vocabulary [0, ${V})`);
      }
      data[S + i] = tgt;
    }
    // Positions sorted by token (stable): lets the wte backward sum each token's
    // rows in one place, deterministically.
    const order = data.subarray(2 * S, 2 * S + BT);
    for (let i = 0; i < BT; i++) order[i] = i;
    order.sort((a, b) => data[a] - data[b] || a - b);
    this.#targets = data.subarray(S, S + BT);
    this.rt.device.queue.writeBuffer(this.#inputs, 0, data);
  }

  /**
   * Per-position losses [B*T] of the last forward pass (0 where there was no
   * target), read through a staging buffer the model keeps.
   */
  async readLosses(): Promise<Float32Array> {
    const staging = this.#lossStaging;
    const enc = this.rt.device.createCommandEncoder();
    enc.copyBufferToBuffer(this.#losses, 0, staging, 0, staging.size);
    this.rt.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    return out;
  }

  async #meanLoss(): Promise<number> {
    const losses = await this.readLosses();
    let sum = 0, n = 0;
    for (let i = 0; i < losses.length; i++) {
      if (this.#targets[i] !== IGNORE_TARGET) {
        sum += losses[i];
        n++;
      }
    }
    return n ? sum / n : NaN;
  }

  #submit(dispatches: Dispatch[], clear: GPUBuffer[]): void {
    const encoder = this.rt.device.createCommandEncoder();
    for (const b of clear) encoder.clearBuffer(b);
    this.encodeHalfParams(encoder);
    encodeDispatches(encoder, dispatches, this.rt.profiler);
    this.rt.profiler?.resolve(encoder);
    this.rt.device.queue.submit([encoder.finish()]);
  }

  /**
   * Encodes one training micro-step (forward + backward) after {@linkcode setBatch}:
   * clears dresidual and, unless `accumulate`, the gradients.
   */
  encodeTrain(encoder: GPUCommandEncoder, accumulate = false): void {
    encoder.clearBuffer(this.#dres);
    if (!accumulate) encoder.clearBuffer(this.grads);
    this.encodeHalfParams(encoder);
    encodeDispatches(encoder, this.#train, this.rt.profiler);
  }

  /** Encodes the forward pass (loss only, logits kept) after {@linkcode setBatch}. */
  encodeForward(encoder: GPUCommandEncoder): void {
    this.encodeHalfParams(encoder);
    encodeDispatches(encoder, this.#forward, this.rt.profiler);
  }

  /** Uploads the next batch: tokens and targets [B*T] (targets may use IGNORE_TARGET). */
  setBatch(tokens: ArrayLike<number>, targets?: ArrayLike<number>): void {
    this.#upload(tokens, targets);
  }

  /**
   * Forward pass only. Returns the mean loss over positions with a target (NaN
   * without targets); the logits stay readable with {@linkcode readLogits}.
   */
  async forward(tokens: ArrayLike<number>, targets?: ArrayLike<number>): Promise<number> {
    this.#upload(tokens, targets);
    this.#submit(this.#forward, []);
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
    this.#upload(tokens, targets);
    this.#submit(this.#train, options.accumulate ? [this.#dres] : [this.#dres, this.grads]);
    const loss = await this.#meanLoss();
    await this.rt.profiler?.collect();
    return loss;
  }

  /** Sets all gradients to zero. */
  zeroGrad(): void {
    const encoder = this.rt.device.createCommandEncoder();
    encoder.clearBuffer(this.grads);
    this.rt.device.queue.submit([encoder.finish()]);
  }

  /**
   * Logits [rows, V] for positions row0.. after {@linkcode forward} (padding
   * dropped). Only the last chunk of `logitsChunkRows` rows is kept.
   */
  async readLogits(
    row0: number = this.#logitsRows[0],
    rows: number = this.B * this.T - row0,
  ): Promise<Float32Array> {
    const { Vp } = this, V = this.config.vocabSize;
    const [k0, kn] = this.#logitsRows;
    if (row0 < k0 || row0 + rows > k0 + kn) {
      throw new RangeError(
        `Logits of rows ${row0}..${row0 + rows} are not kept: only rows ${k0}..${k0 + kn} are ` +
          "(the last chunk); create the model with logitsChunkRows >= B*T to keep all",
      );
    }
    const raw = await readF32(this.rt.device, this.#logits, (row0 - k0) * Vp, rows * Vp);
    const out = new Float32Array(rows * V);
    for (let r = 0; r < rows; r++) out.set(raw.subarray(r * Vp, r * Vp + V), r * V);
    return out;
  }

  /** A parameter (or its gradient) by Hugging Face name; wte without padding rows. */
  async readTensor(name: string, grads = false): Promise<Float32Array> {
    const t = this.tensor(name, grads);
    const size = name === "wte.weight" ? this.config.vocabSize * this.config.nEmbd : t.size;
    return await readF32(this.rt.device, t.buffer, t.offset, size);
  }

  /** Overwrites a parameter by name (wte may omit its padding rows). */
  writeTensor(name: string, data: Float32Array<ArrayBuffer>): void {
    const t = this.tensor(name);
    const expected = name === "wte.weight" ? this.config.vocabSize * this.config.nEmbd : t.size;
    if (data.length !== expected && data.length !== t.size) {
      throw new RangeError(`Parameter "${name}" has ${expected} elements, got ${data.length}`);
    }
    this.rt.device.queue.writeBuffer(this.params, t.offset * 4, data);
    this.markParamsChanged();
  }

  /** Number of dispatches in one training step (forward + backward), or forward in inference. */
  get dispatchCount(): number {
    return this.#train.length || this.#forward.length;
  }

  /** Frees every buffer the model allocated (not a shared parameter buffer). */
  destroy(): void {
    // The forward list is a prefix of the training list plus its own classifier dispatches.
    // The lists share the forward body and the lm_head dispatches: free each once.
    if (this.#ownsParams) this.#store.destroy(this.rt);
    freeDispatches(this.rt.arena, [...new Set([...this.#train, ...this.#forward])]);
    this.#mem.freeAll();
    this.#train = this.#forward = [];
    this.#lossStaging.destroy();
  }
}
