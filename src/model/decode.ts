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
import { activationDType } from "./plan.ts";
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

  /** One row of activation `name` ([width]), typed as the model's plan types it. */
  #row(label: string, name: string, width: number): GPUBuffer {
    const dtype = activationDType(name, this.#prefill.precision);
    return this.#mem.alloc(label, "activations", width * dtypeBytes(dtype), undefined, dtype);
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
    const x0 = this.#act("decode.x0", C * 4);
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
      const a = (n: string, f: number) => this.#row(`decode.h.${l}.${n}`, n, f);
      const [ln1, mean, rstd] = [a("ln1", C), a("mean", 1), a("rstd", 1)];
      const qkv1 = a("qkv", 3 * C), atty = a("atty", C), proj = a("proj", C), res2 = a("res2", C);
      const ln2 = a("ln2", C), fch = a("fch", 4 * C), fchg = a("fch_gelu", 4 * C);
      const fcproj = a("fcproj", C), res3 = a("res3", C);
      this.#qkv1.push(qkv1);
      const attention = await attentionDecode(rt, { maxT: this.T, C, NH }, {
        q1: qkv1,
        cache: m.layerQkv(l),
        out: atty,
        partial,
      });
      this.#attention.push(attention);
      const blk = await blockForward(
        rt,
        { weights: m.weights, l, rows: 1, matmul: mm },
        {
          input: residual,
          ln1,
          ln1Mean: mean,
          ln1Rstd: rstd,
          qkv: qkv1,
          atty,
          attproj: proj,
          res2,
          ln2,
          ln2Mean: mean,
          ln2Rstd: rstd,
          fch,
          fchGelu: fchg,
          fcproj,
          res3,
        },
        attention,
      );
      this.#before.push(blk.pre);
      this.#after.push([...blk.attention, ...blk.post]);
      residual = res3;
    }
    const lnf = this.#row("decode.lnf", "lnf", C);
    const [mean, rstd] = [this.#act("decode.lnf_mean", 4), this.#act("decode.lnf_rstd", 4)];
    this.#head = [
      await layernormForward(rt, { N: 1, C }, {
        inp: residual,
        weight: P("ln_f.weight"),
        bias: P("ln_f.bias"),
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
    const C3 = 3 * this.config.nEmbd * dtypeBytes(activationDType("qkv", this.#prefill.precision));
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
