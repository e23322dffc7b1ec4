/**
 * Token-by-token decoding with a KV cache: each new token costs O(T), not a
 * full forward pass. A batch-1 prefill model (sharing the parameter buffer)
 * runs the prompt and leaves every layer's q|k|v in its activation buffers;
 * those buffers are the cache. Each new token then runs the one-row versions of
 * the block's kernels, copies its q|k|v into row t of the cache, and attends
 * over rows 0..t (kernels/attention_decode.wgsl, split over the cache).
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { type Dispatch, encodeDispatches, freeDispatches } from "../gpu/dispatch.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { type GPT2Config, paddedVocab } from "./config.ts";
import { GPT2 } from "./gpt2.ts";
import { blockForward } from "./block.ts";
import { matmul, type MatmulOptions } from "./ops/matmul.ts";
import {
  attentionDecode,
  decodePartialBytes,
  encoderForward,
  layernormForward,
  setDecodePosition,
  setEncoderPosition,
} from "./ops/mod.ts";
import {
  BLOCK_ACTIVATIONS,
  type BlockActivation,
  type BlockActs,
  type BufferSpec,
  snakeCase,
} from "./block_spec.ts";
import { bufferDType, MODEL_BUFFERS } from "./plan.ts";
import { dtypeBytes } from "../gpu/dtype.ts";

/**
 * Generates logits one token at a time.
 *
 * @example
 * ```ts
 * const dec = await Decoder.create(rt, model, 256);
 * let logits = await dec.start([50256]);
 * logits = await dec.next(464);
 * ```
 */
export class Decoder {
  /** The runtime the decoder's buffers and dispatches belong to. */
  readonly rt: Runtime;
  /** The architecture of the model being decoded. */
  readonly config: GPT2Config;
  /** Context window (rows of the cache). */
  readonly T: number;
  #prefill: GPT2;
  #token: GPUBuffer;
  #logits: GPUBuffer;
  #staging: GPUBuffer;
  #mem: ArenaScope;
  #embed: Dispatch[] = [];
  #before: Dispatch[][] = [];
  #qkv1: GPUBuffer[] = [];
  #after: Dispatch[][] = [];
  /** Each layer's attention dispatches: next() rewrites their uniform's t per token. */
  #attention: Dispatch[][] = [];
  #head: Dispatch[] = [];
  #history: number[] = [];

  private constructor(rt: Runtime, config: GPT2Config, T: number, prefill: GPT2) {
    this.rt = rt;
    this.#mem = rt.arena.scope();
    this.config = config;
    this.T = T;
    this.#prefill = prefill;
    const Vp = paddedVocab(config.vocabSize);
    this.#token = this.#act("decode.token", 16);
    this.#logits = this.#act("decode.logits", Vp * 4);
    this.#staging = rt.device.createBuffer({
      label: "decode.staging",
      size: config.vocabSize * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  #act(label: string, bytes: number): GPUBuffer {
    return this.#mem.alloc(label, "activations", bytes);
  }

  /** One row of a buffer of the block spec: its width, typed as the model's plan types it. */
  #row(label: string, spec: BufferSpec): GPUBuffer {
    const dtype = bufferDType(spec, this.#prefill.precision);
    const bytes = spec.width(this.config) * dtypeBytes(dtype);
    return this.#mem.alloc(label, "activations", bytes, undefined, dtype);
  }

  /** One row of each of layer l's activations (lse too: decode attention writes none). */
  #layerRow(l: number): BlockActs {
    const names = Object.keys(BLOCK_ACTIVATIONS) as BlockActivation[];
    return Object.fromEntries(
      names.map((n) => [n, this.#row(`decode.h.${l}.${snakeCase(n)}`, BLOCK_ACTIVATIONS[n])]),
    ) as BlockActs;
  }

  /**
   * A decoder over the parameters of `source` (a GPT2; its precision too) with
   * a T-token window.
   */
  static async create(
    rt: Runtime,
    source: GPT2,
    T: number,
    mm: MatmulOptions = {},
  ): Promise<Decoder> {
    const prefill = await GPT2.create(rt, source.config, {
      B: 1,
      T,
      inference: true,
      sharedParams: source,
      matmul: mm,
    });
    const d = new Decoder(rt, source.config, T, prefill);
    await d.#build(mm);
    return d;
  }

  async #build(mm: MatmulOptions): Promise<void> {
    const { rt } = this;
    const { nLayer: L, nHead: NH, nEmbd: C } = this.config;
    const Vp = paddedVocab(this.config.vocabSize);
    const m = this.#prefill;
    const P = (n: string) => m.tensor(n);
    const W = (n: string) => m.weight(n);
    const op = (n: string) => ({ buffer: W(n).buffer, offset: W(n).offset });
    const buf = (b: GPUBuffer) => ({ buffer: b });
    const x0 = this.#row("decode.x0", MODEL_BUFFERS.encoded);
    this.#embed = await encoderForward(rt, { BT: 1, T: 1, C, Vp }, {
      tokens: { buffer: this.#token, offset: 0, size: 4 },
      wte: P("wte.weight"),
      wpe: P("wpe.weight"),
      out: x0,
    });
    const partial = this.#act(
      "decode.attention_partial",
      decodePartialBytes({ maxT: this.T, C, NH }),
    );
    let residual = x0;
    for (let l = 0; l < L; l++) {
      const a = this.#layerRow(l);
      this.#qkv1.push(a.qkv);
      const attention = await attentionDecode(rt, { maxT: this.T, C, NH }, {
        q1: a.qkv,
        cache: m.layerQkv(l),
        out: a.atty,
        partial,
      });
      this.#attention.push(attention);
      const blk = await blockForward(
        rt,
        { weights: m.weights, l, rows: 1, matmul: mm },
        { ...a, input: residual },
        attention,
      );
      this.#before.push(blk.pre);
      this.#after.push([...blk.attention, ...blk.post]);
      residual = a.res3;
    }
    const lnf = this.#row("decode.lnf", MODEL_BUFFERS.lnf);
    const mean = this.#row("decode.lnf_mean", MODEL_BUFFERS.lnfMean);
    const rstd = this.#row("decode.lnf_rstd", MODEL_BUFFERS.lnfRstd);
    this.#head = [
      await layernormForward(rt, { N: 1, C }, {
        inp: residual,
        weight: P("ln_f.weight"),
        bias: m.weights.has("ln_f.bias") ? P("ln_f.bias") : undefined,
        out: lnf,
        mean,
        rstd,
      }),
      ...await matmul(rt, { M: 1, N: Vp, K: C, transB: true }, {
        a: buf(lnf),
        b: op("wte.weight"),
        c: buf(this.#logits),
      }, { name: "lm_head_decode", ...mm }),
    ];
  }

  /**
   * Runs the prompt (at most T tokens are kept) and returns the next token's
   * logits [V]: all but the last token go through the batched prefill, which
   * fills the cache; the last goes through the one-token path.
   */
  async start(prompt: number[]): Promise<Float32Array> {
    if (prompt.length === 0) throw new RangeError("Decoder.start needs at least one token");
    this.#history = prompt.slice(-this.T);
    const last = this.#history.pop()!;
    if (this.#history.length) {
      const window = new Array<number>(this.T).fill(0);
      this.#history.forEach((t, i) => (window[i] = t));
      await this.#prefill.forward(window);
    }
    return await this.next(last);
  }

  /** Appends one token and returns the logits [V] for the one after it. */
  async next(token: number): Promise<Float32Array> {
    if (this.#history.length >= this.T) {
      // Window full: keep the last half and rebuild the cache from it.
      return await this.start([...this.#history.slice(-(this.T >> 1)), token]);
    }
    const t = this.#history.length;
    this.#history.push(token);
    const q = this.rt.device.queue;
    q.writeBuffer(this.#token, 0, new Uint32Array([token]));
    setEncoderPosition(q, this.#embed, t);
    setDecodePosition(q, this.#attention.flat(), t);
    const qkv = BLOCK_ACTIVATIONS.qkv; // one row of q|k|v, as the cache stores it
    const C3 = qkv.width(this.config) * dtypeBytes(bufferDType(qkv, this.#prefill.precision));
    const enc = this.rt.device.createCommandEncoder();
    this.#prefill.weights.encodeRefresh(enc);
    encodeDispatches(enc, this.#embed);
    for (let l = 0; l < this.#before.length; l++) {
      encodeDispatches(enc, this.#before[l]);
      enc.copyBufferToBuffer(this.#qkv1[l], 0, this.#prefill.layerQkv(l), t * C3, C3);
      encodeDispatches(enc, this.#after[l]);
    }
    encodeDispatches(enc, this.#head);
    enc.copyBufferToBuffer(this.#logits, 0, this.#staging, 0, this.#staging.size);
    q.submit([enc.finish()]);
    await this.#staging.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(this.#staging.getMappedRange().slice(0));
    this.#staging.unmap();
    return out;
  }

  /** Frees the decoder's buffers (not the shared parameters). */
  destroy(): void {
    freeDispatches(
      this.rt.arena,
      [this.#embed, ...this.#before, ...this.#after, this.#head].flat(),
    );
    this.#mem.freeAll();
    this.#staging.destroy();
    this.#prefill.destroy();
  }
}
