/**
 * One optimizer step of training as an object: the micro-steps of gradient accumulation,
 * loss scaling and the overflow skip (fp16), the gradient norm, clipping and non-finite count
 * (computed once, here: src/train/grad_norm.ts writes them into the optimizer's gradStats),
 * the optimizer's update, the f16 refresh of the weights, and one readback of the losses and
 * the gradient statistics.
 *
 * Between "gradients ready" and "optimizer update" there is one hook: data-parallel
 * training all-reduces the gradients there. Without it the update is encoded in the last
 * micro-step's command encoder (no extra submit).
 *
 * @module
 */

import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import type { SplitBuffer } from "../gpu/split_buffer.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { GPT2 } from "../model/gpt2.ts";
import type { ParamLayout } from "../model/params.ts";
import { GRAD_STATS, GRAD_STATS_BYTES, type Optimizer } from "../optim/optimizer.ts";
import { GradNorm } from "./grad_norm.ts";
import type { LossScaler } from "./loss_scale.ts";

/** One micro-batch: B*T tokens and their targets. */
export interface MicroBatch {
  /** Token ids [B*T]. */
  inputs: ArrayLike<number>;
  /** Next-token targets [B*T]. */
  targets: ArrayLike<number>;
}

/** Where a step can be extended (data parallelism). */
export interface StepHooks {
  /**
   * Runs once the last micro-step's gradients are complete on the GPU and before the
   * optimizer reads them: e.g. averages them over ranks (they carry the loss scale).
   */
  gradientsReady?: (grads: SplitBuffer) => Promise<void>;
  /**
   * With it, the last micro-step's backward is submitted in parts at the graph's gradMarks,
   * and this runs (without being awaited) after part `mark`: the hook can start reading back
   * and reducing those gradients while the backward goes on. `gradientsReady` then waits.
   */
  bucketReady?: (grads: SplitBuffer, mark: number) => void;
  /**
   * Runs after the step wrote the gradient norm and non-finite count to `stats` (GRAD_STATS)
   * and before it decides the clip factor and the skip from them (ZeRO-1: each rank's norm
   * covers its shard; the hook sums them).
   */
  normReady?: (stats: GPUBuffer) => Promise<void>;
  /** Runs after the update, before the f16 refresh (ZeRO-1: all-gathers the parameters). */
  updated?: (params: SplitBuffer) => Promise<void>;
  /** Combines this process's mean loss with the other ranks' (default: itself). */
  reduceLoss?: (loss: number) => Promise<number>;
}

/** A step encoded and submitted: `end()` reads it back. */
export interface Begun {
  /** Waits for the step and reads its losses and statistics. */
  end(): Promise<StepOutcome>;
}

/** What a step did. */
export interface StepOutcome {
  /** Mean loss over the step's tokens (all ranks with `reduceLoss`). */
  loss: number;
  /** Global gradient norm before clipping (the loss scale divided out). */
  norm: number;
  /** fp16: the gradients overflowed and the update was skipped. */
  overflow: boolean;
  /** The loss scale this step ran with (1 without mixed precision). */
  lossScale: number;
}

/** A bad micro-batch (a token outside the vocabulary, a wrong length): `cause` says which. */
export class BatchError extends Error {
  /** Wraps the loader's or the graph's error about the batch. */
  constructor(cause: Error) {
    super(cause.message, { cause });
    this.name = "BatchError";
  }
}

/** Options of {@linkcode TrainStep}. */
export interface TrainStepOptions {
  /** Micro-steps per optimizer step (gradient accumulation). */
  accum: number;
  /** fp16: the dynamic loss scaler; an overflow skips the step whole. */
  scaler?: LossScaler;
  /** Updates applied so far (AdamW's t; skipped steps do not count). */
  optimizerSteps?: number;
  /**
   * Clip the global gradient norm (the loss scale divided out) to this; 0: off. Default 1
   * (nanoGPT's and llm.c's, AdamW's clip before the step owned it).
   */
  gradClip?: number;
  /**
   * The tensors whose gradients the optimizer updates and the norm covers (a ZeRO-1 shard's);
   * default the model's.
   */
  normLayout?: ParamLayout;
  /** Extension points. */
  hooks?: StepHooks;
  /**
   * Optimizer in backward (LOMO's two passes): the forward and backward run twice per step,
   * the first for the global norm and the overflow decision, the second updating each block
   * as soon as its gradients are complete, so the model needs gradients of one block at a
   * time (GPT2Options.sharedBlockGrads). Clipping and the overflow skip stay exact; the
   * parameters come out bit for bit as from the usual step. One micro-step, no hooks.
   */
  inBackward?: boolean;
}

/** A step begun ahead under a loss scaler, kept to run it again (see TrainStep.canRunAhead). */
interface AheadStep {
  lr: number;
  batches: MicroBatch[];
  staging: GPUBuffer;
  again?: Promise<Begun>;
}

/** Runs optimizer steps of `model` with `opt`. */
export class TrainStep {
  /** Micro-steps per optimizer step. */
  readonly accum: number;
  /** Updates applied so far: AdamW's t. */
  optimizerSteps: number;
  /**
   * True when the next step can be begun before this one is read back. Not with hooks (data
   * parallelism talks to other ranks) nor with the optimizer in backward. With a loss
   * scaler the step begun ahead assumes the unread one will not overflow (its scale and
   * AdamW's t follow from that); if it does, the step begun ahead skips its update on the
   * GPU (it never changes a weight) and runs again, on the same micro-batches, at the
   * halved scale: every number is as if the steps had run one at a time.
   */
  readonly canRunAhead: boolean;
  readonly #rt: Runtime;
  readonly #model: GPT2;
  readonly #opt: Optimizer;
  readonly #scaler?: LossScaler;
  readonly #hooks: StepHooks;
  /** Two readback buffers: step n's is read while step n+1 (begun ahead) writes the other. */
  readonly #staging: [GPUBuffer, GPUBuffer];
  #turn = 0;
  /** Steps begun and not yet read back (2 with one begun ahead). */
  #inFlight = 0;
  /**
   * Under a loss scaler, the step begun ahead of an unread one: its learning rate,
   * micro-batches and readback buffer, to run it again if the unread one overflows; `again`
   * is that second run once begun.
   */
  #ahead?: AheadStep;
  /** The copies of a step's micro-batches that {@linkcode #ahead} keeps (made once). */
  #kept?: { inputs: Float64Array; targets: Float64Array }[];
  readonly #gradClip: number;
  readonly #normLayout: ParamLayout;
  #norm?: GradNorm;
  readonly #inBackward: boolean;
  #inBackwardPlan?: { marks: { norm: Dispatch[]; update: Dispatch[] }[]; reused: GPUBuffer[] };

  /** A step for `model` (its dloss must be 1 / (B*T*accum)) and `opt` over its weights. */
  constructor(rt: Runtime, model: GPT2, opt: Optimizer, o: TrainStepOptions) {
    this.#rt = rt;
    this.#model = model;
    this.#opt = opt;
    this.accum = o.accum;
    this.#scaler = o.scaler;
    this.#hooks = o.hooks ?? {};
    this.optimizerSteps = o.optimizerSteps ?? 0;
    this.#gradClip = o.gradClip ?? 1;
    this.#normLayout = o.normLayout ?? model.layout;
    this.#inBackward = o.inBackward ?? false;
    if (
      this.#inBackward &&
      (o.accum !== 1 || Object.keys(this.#hooks).length || !opt.updatePart)
    ) {
      throw new RangeError(
        "The optimizer in backward takes one micro-step per update, one process and an " +
          "optimizer that updates in parts (not offloaded): drop --optimizer-in-backward, or " +
          "--total-batch, --optimizer-offload or the extra ranks",
      );
    }
    this.canRunAhead = Object.keys(this.#hooks).length === 0 && !this.#inBackward;
    const staging = (i: number) =>
      rt.device.createBuffer({
        label: `train.readback${i}`,
        size: o.accum * model.B * model.T * 4 + GRAD_STATS_BYTES,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
    this.#staging = [staging(0), staging(1)];
  }

  /** One optimizer step at learning rate `lr`; `next` gives each micro-batch. */
  async run(lr: number, next: () => MicroBatch): Promise<StepOutcome> {
    return await (await this.begin(lr, next)).end();
  }

  /**
   * Encodes and submits one optimizer step; its `end()` reads the losses and statistics back.
   * Another step may be begun before this one ends where {@linkcode canRunAhead} says so (the
   * queue runs them in order; each has its own readback buffer); at most one ahead.
   */
  async begin(lr: number, next: () => MicroBatch): Promise<Begun> {
    const staging = this.#staging[this.#turn];
    this.#turn ^= 1;
    if (!this.#scaler || this.#inFlight === 0) return await this.#begin(lr, next, staging, false);
    // Ahead of an unread step under a loss scaler: its micro-batches are kept (copied: the
    // loader reuses its arrays) to run it again. One set of copies, made once, serves: a
    // step is run again before the next one is begun.
    const BT = this.#model.B * this.#model.T;
    const kept = this.#kept ??= Array.from({ length: this.accum }, () => ({
      inputs: new Float64Array(BT),
      targets: new Float64Array(BT),
    }));
    const ahead: AheadStep = { lr, batches: kept, staging };
    this.#ahead = ahead;
    let i = 0;
    const first = await this.#begin(
      lr,
      () => {
        const b = next(), k = kept[i++];
        k.inputs.set(b.inputs);
        k.targets.set(b.targets);
        return b;
      },
      staging,
      true,
    );
    return {
      end: async () => {
        // Read back, this step no longer waits to be run again: only one begun after it.
        if (this.#ahead === ahead) this.#ahead = undefined;
        return await (ahead.again ? (await ahead.again).end() : first.end());
      },
    };
  }

  /**
   * Encodes and submits one step into `staging`. `speculative`: begun ahead of an unread
   * step under a loss scaler, so at the scale and t that follow a clean step, and void on the
   * GPU if that step skips.
   */
  async #begin(
    lr: number,
    next: () => MicroBatch,
    staging: GPUBuffer,
    speculative: boolean,
  ): Promise<Begun> {
    const rt = this.#rt, model = this.#model, opt = this.#opt, scaler = this.#scaler;
    const { accum } = this, BT = model.B * model.T;
    const scale = scaler ? (speculative ? scaler.after(false).scale : scaler.scale) : 1;
    if (scaler) model.setLossScale(scale);
    // Built once, on the first step: it writes the buffer the optimizer's update reads.
    const norm = this.#norm ??= await GradNorm.create(
      rt,
      this.#normLayout,
      model.weights.gradParts,
      opt.gradStats,
    );
    norm.setStep({
      gradClip: this.#gradClip,
      lossScale: scale,
      skipOnOverflow: !!scaler,
      voidAfterSkip: speculative,
    });
    // With a scaler, t moves on when a step is read back clean: one begun ahead assumes so.
    opt.setStep(this.optimizerSteps + 1 + (scaler && speculative ? 1 : 0), lr);
    const hook = this.#hooks.gradientsReady;
    const submit = async (enc: GPUCommandEncoder) => {
      rt.profiler?.resolve(enc);
      rt.device.queue.submit([enc.finish()]);
      await rt.profiler?.collect();
    };
    if (this.#inBackward) {
      this.#take(next);
      const enc = rt.device.createCommandEncoder();
      this.#encodeInBackward(enc, norm, staging);
      await submit(enc);
      await opt.finishUpdate();
      return this.#begun(staging, scale);
    }
    const { normReady, updated } = this.#hooks;
    const encodeUpdate = async (enc: GPUCommandEncoder) => {
      norm.encodeNorm(enc, rt.profiler);
      if (normReady) {
        await submit(enc);
        await normReady(norm.stats);
        enc = rt.device.createCommandEncoder();
      }
      norm.encodeDecide(enc, rt.profiler);
      opt.encodeUpdate(enc, rt.profiler);
      enc.copyBufferToBuffer(norm.stats, 0, staging, accum * BT * 4, GRAD_STATS_BYTES);
      await submit(enc);
      await opt.finishUpdate();
      await updated?.(model.weights.paramParts);
    };
    for (let micro = 0; micro < accum; micro++) {
      this.#take(next);
      const last = micro === accum - 1, bucketReady = this.#hooks.bucketReady;
      if (last && bucketReady && hook) {
        // The backward in parts: each layer's gradients go out while the layers below run.
        const parts = model.gradMarks.length;
        for (let i = 0; i < parts; i++) {
          const part = rt.device.createCommandEncoder();
          model.encodeTrainPart(part, i, micro > 0);
          if (i === parts - 1) {
            part.copyBufferToBuffer(model.losses, 0, staging, micro * BT * 4, BT * 4);
          }
          await submit(part);
          bucketReady(model.weights.gradParts, i);
        }
        await hook(model.weights.gradParts);
        await encodeUpdate(rt.device.createCommandEncoder());
        continue;
      }
      const enc = rt.device.createCommandEncoder();
      model.encodeTrain(enc, micro > 0);
      enc.copyBufferToBuffer(model.losses, 0, staging, micro * BT * 4, BT * 4);
      if (!last) await submit(enc);
      else if (hook) {
        await submit(enc);
        await hook(model.weights.gradParts);
        await encodeUpdate(rt.device.createCommandEncoder());
      } else await encodeUpdate(enc);
    }
    return this.#begun(staging, scale, updated !== undefined);
  }

  /** Uploads the next micro-batch; a bad one is a BatchError. */
  #take(next: () => MicroBatch): void {
    try {
      const b = next();
      this.#model.setBatch(b.inputs, b.targets);
    } catch (e) {
      throw e instanceof RangeError ? new BatchError(e) : e;
    }
  }

  /** The bookkeeping after a step's update was submitted. */
  #begun(staging: GPUBuffer, scale: number, gathered = false): Begun {
    // The f16 copy: written by a fused update, else refreshed before the next pass.
    if (!this.#opt.writesHalf || gathered) this.#model.markParamsChanged();
    this.#inFlight++;
    // Without a scaler every step updates: t moves on now, so a step begun ahead gets its own.
    if (!this.#scaler) this.optimizerSteps++;
    return { end: () => this.#end(staging, scale) };
  }

  /**
   * The optimizer in backward's two passes over one micro-batch: the norm's partial sums after
   * each mark (a block's gradients, then the rest's), then the same forward and backward with
   * each mark's tensors updated there; the shared block gradients are cleared after each. The
   * per-mark dispatch lists are gathered on the first step and replayed.
   */
  #encodeInBackward(enc: GPUCommandEncoder, norm: GradNorm, staging: GPUBuffer): void {
    const model = this.#model, profiler = this.#rt.profiler, BT = model.B * model.T;
    const plan = this.#inBackwardPlan ??= {
      marks: model.gradMarks.map((m) => ({
        norm: m.ranges.flatMap((r) => norm.partDispatches(r.start, r.end)),
        update: m.ranges.flatMap((r) => this.#opt.updatePart!(r.start, r.end)),
      })),
      reused: model.weights.gradParts.shared,
    };
    for (const pass of ["norm", "update"] as const) {
      for (const [i, mark] of plan.marks.entries()) {
        model.encodeTrainPart(enc, i, false);
        encodeDispatches(enc, mark[pass], profiler);
        for (const b of plan.reused) enc.clearBuffer(b);
      }
      if (pass === "update") break;
      enc.copyBufferToBuffer(model.losses, 0, staging, 0, BT * 4);
      encodeDispatches(enc, norm.totalDispatches, profiler);
      norm.encodeDecide(enc, profiler);
    }
    enc.copyBufferToBuffer(norm.stats, 0, staging, BT * 4, GRAD_STATS_BYTES);
  }

  /** Reads a begun step back: mean loss, norm, overflow; the scaler and t move on. */
  async #end(staging: GPUBuffer, scale: number): Promise<StepOutcome> {
    const scaler = this.#scaler, BT = this.#model.B * this.#model.T, accum = this.accum;
    await staging.mapAsync(GPUMapMode.READ);
    const back = new Float32Array(staging.getMappedRange());
    let sum = 0;
    for (let i = 0; i < accum * BT; i++) sum += back[i];
    const stats = back.subarray(accum * BT);
    const gradNorm = stats[GRAD_STATS.norm] / scale;
    const overflow = scaler !== undefined && stats[GRAD_STATS.skip] > 0;
    staging.unmap();
    this.#inFlight--;
    if (scaler && !overflow) this.optimizerSteps++;
    scaler?.update(overflow);
    const ahead = this.#ahead;
    if (overflow && ahead) {
      // The step begun ahead assumed this one clean: it skipped on the GPU and is never read
      // back; it runs again now, on its micro-batches, at the scale and t that follow.
      this.#inFlight--;
      let i = 0;
      ahead.again = this.#begin(ahead.lr, () => ahead.batches[i++], ahead.staging, false);
      await ahead.again;
    }
    const local = sum / (accum * BT);
    const loss = this.#hooks.reduceLoss ? await this.#hooks.reduceLoss(local) : local;
    return { loss, norm: gradNorm, overflow, lossScale: scale };
  }

  /** Frees the readback buffers and the norm's (the model and optimizer are the caller's). */
  destroy(): void {
    for (const b of this.#staging) b.destroy();
    this.#norm?.destroy();
  }
}
