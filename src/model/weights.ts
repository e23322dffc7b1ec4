/**
 * A model's weights, apart from any graph: the flat parameters (f32, the master copy the
 * optimizer updates; or f16, 16-bit weights the optimizer rounds stochastically), their
 * gradients (f32, or f16), the f16 copy mixed precision reads from f32 parameters, and named
 * views by Hugging Face name. Several graphs of different batch shapes (training, validation,
 * sampling, HellaSwag) share one Weights object, so one f16 refresh serves them all.
 *
 * Hugging Face names and the vocabulary padding live here and nowhere else: wte is stored
 * [Vp, C] with zero padding rows, and read and written as [V, C]. Bulk reads go through one
 * staging buffer per binding-sized span instead of one per tensor.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { type Dispatch, encodeDispatches, freeDispatches } from "../gpu/dispatch.ts";
import { type DType, dtypeBytes } from "../gpu/dtype.ts";
import { readSpans, readValues, type Runtime } from "../gpu/runtime.ts";
import {
  encodeSafetensors,
  type SafeDtype,
  SafeTensorsError,
  tensorF32,
  type TensorToWrite,
} from "../io/safetensors.ts";
import { type GPT2Config, paddedVocab, validateConfig } from "./config.ts";
import { modelParams } from "./block_spec.ts";
import { initTensor } from "./init.ts";
import { castToHalf } from "./ops/cast.ts";
import type { TensorRange } from "./ops/tensor.ts";
import { parameterLayout, type ParamLayout, TENSOR_ALIGN, type TensorView } from "./params.ts";
import { type BufferPart, SplitBuffer } from "../gpu/split_buffer.ts";
import type { MemoryCategory } from "../gpu/arena.ts";
import { arenaBytes, type Precision } from "./plan.ts";

/** Options for {@linkcode Weights.create}. */
export interface WeightsOptions {
  /** Initialise like GPT-2 with this seed (default 1337); `null` leaves the parameters zero. */
  seed?: number | null;
  /** `fp16`: keep an f16 copy for the matmuls where the device has shader-f16 (default fp32). */
  precision?: Precision;
  /** Allocate gradients (default true; false for inference only). */
  grads?: boolean;
  /**
   * The gradients' element type: f32 (default) or f16 (16-bit gradients: half the memory;
   * they carry the fp16 loss scale, so they need precision fp16).
   */
  gradDtype?: DType;
  /**
   * The parameters' element type: f32 (default: the master copy, with an f16 copy under fp16)
   * or f16 (16-bit weights: no f32 copy on the GPU at all, the matmuls read the parameters
   * themselves and the optimizer rounds its updates stochastically; precision fp16 only).
   */
  weightDtype?: DType;
  /** Largest buffer (bytes of f32) before the parameters split (default: maxBufferSize). */
  maxBufferBytes?: number;
  /**
   * Keep one block's gradients at a time: every block's gradient tensors share one block-sized
   * buffer, which the optimizer-in-backward step clears after updating each block (the
   * embeddings' and ln_f's keep their own). Default false.
   */
  sharedBlockGrads?: boolean;
}

/** Each block's element range [start, end) in a layout, alignment padding included. */
export function blockSpans(layout: ParamLayout, nLayer: number): [number, number][] {
  return Array.from({ length: nLayer }, (_, l) => {
    const mine = layout.tensors.filter((t) => t.name.startsWith(`h.${l}.`));
    const last = mine[mine.length - 1];
    return [mine[0].offset, last.offset + alignUp(last.size)];
  });
}

/**
 * The gradients' parts when every block shares one buffer: the tensors before the blocks,
 * each block's (all at base 0 of one buffer), the tensors after them.
 */
function sharedBlockParts(
  layout: ParamLayout,
  nLayer: number,
  alloc: (label: string, elements: number) => GPUBuffer,
): BufferPart[] {
  const blocks = blockSpans(layout, nLayer);
  const first = blocks[0][0], last = blocks[nLayer - 1][1], size = blocks[0][1] - first;
  const shared = alloc("grads.block", size);
  return [
    { start: 0, end: first, buffer: alloc("grads.embeddings", first) },
    ...blocks.map(([start, end], l) => {
      if (end - start !== size) throw new Error(`Block ${l} is not the size of block 0`);
      return { start, end, buffer: shared };
    }),
    {
      start: last,
      end: layout.totalElements,
      buffer: alloc("grads.head", layout.totalElements - last),
    },
  ];
}

const alignUp = (n: number) => Math.ceil(n / TENSOR_ALIGN) * TENSOR_ALIGN;

/**
 * Where a layout's flat buffers split: element ranges of whole tensors, each at most
 * `maxBytes` of f32 (so of f16 too); one range when everything fits.
 */
export function splitPoints(layout: ParamLayout, maxBytes: number): [number, number][] {
  const out: [number, number][] = [];
  let start = 0;
  for (const t of layout.tensors) {
    const end = t.offset + Math.ceil(t.size / TENSOR_ALIGN) * TENSOR_ALIGN;
    if ((end - t.offset) * 4 > maxBytes) {
      throw new RangeError(
        `Parameter "${t.name}" needs ${(end - t.offset) * 4} bytes, over this adapter's ` +
          `maxBufferSize of ${maxBytes}: use a smaller model`,
      );
    }
    if ((end - start) * 4 > maxBytes) {
      out.push([start, t.offset]);
      start = t.offset;
    }
  }
  out.push([start, layout.totalElements]);
  return out;
}

/**
 * Parameters, gradients and the f16 copy of one GPT-2, by Hugging Face name.
 *
 * @example Two graphs over one set of weights
 * ```ts
 * import { createRuntime, GPT2, resolveConfig, Weights } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const weights = await Weights.create(rt, resolveConfig("tiny"));
 * const train = await GPT2.create(rt, weights.config, { B: 4, T: 16, weights });
 * const sample = await GPT2.create(rt, weights.config, { B: 1, T: 16, weights, inference: true });
 * console.log((await weights.readAll()).length, train.B, sample.B);
 * ```
 */
export class Weights {
  /** The runtime the buffers belong to. */
  readonly rt: Runtime;
  /** The architecture, validated. */
  readonly config: GPT2Config;
  /** Where each named tensor lies in the flat buffers. */
  readonly layout: ParamLayout;
  /** Rows of wte: the vocabulary padded to a multiple of 128. */
  readonly Vp: number;
  /** fp16 (an f16 copy for the matmuls) or fp32, as resolved for this device. */
  readonly precision: Precision;
  /**
   * All parameters, flat, f32 (or f16: {@linkcode WeightsOptions.weightDtype}), in one buffer
   * or, past the adapter's maxBufferSize, several (split at tensor boundaries).
   */
  readonly paramParts: SplitBuffer;
  /** The f16 copy (mixed precision), same layout and parts as the parameters. */
  readonly halfParts?: SplitBuffer;
  #grads?: SplitBuffer;
  #mem: ArenaScope;
  #cast: Dispatch[] = [];
  #stale = true;

  private constructor(rt: Runtime, config: GPT2Config, o: WeightsOptions) {
    this.rt = rt;
    this.config = validateConfig(config);
    this.layout = parameterLayout(config);
    this.Vp = paddedVocab(config.vocabSize);
    this.precision = o.precision === "fp16" && rt.gpu.features.shaderF16 ? "fp16" : "fp32";
    // 16-bit weights and gradients need the device's f16 (they fall back with the precision).
    const dtype = (t?: DType): DType => (this.precision === "fp16" && t === "f16" ? "f16" : "f32");
    // Parameters, gradients and the f16 copy share one split, at tensor starts.
    const bounds = splitPoints(this.layout, o.maxBufferBytes ?? rt.gpu.limits.maxBufferSize);
    this.#mem = rt.arena.scope();
    const alloc = (label: string, category: MemoryCategory, t: DType) =>
      new SplitBuffer(bounds.map(([start, end], i) => ({
        start,
        end,
        buffer: this.#mem.alloc(
          bounds.length > 1 ? `${label}.${i}` : label,
          category,
          arenaBytes((end - start) * dtypeBytes(t)),
          undefined,
          t,
        ),
      })));
    this.paramParts = alloc("params", "parameters", dtype(o.weightDtype));
    if (this.precision === "fp16" && dtype(o.weightDtype) === "f32") {
      this.halfParts = alloc("params.f16", "parameters", "f16");
    }
    if ((o.grads ?? true) && o.sharedBlockGrads) {
      const t = dtype(o.gradDtype);
      this.#grads = new SplitBuffer(
        sharedBlockParts(
          this.layout,
          config.nLayer,
          (label, n) =>
            this.#mem.alloc(label, "gradients", arenaBytes(n * dtypeBytes(t)), undefined, t),
        ),
      );
    } else if (o.grads ?? true) this.#grads = alloc("grads", "gradients", dtype(o.gradDtype));
  }

  /** All parameters in one buffer (throws when they span several: use `paramParts`). */
  get params(): GPUBuffer {
    return this.paramParts.single("The parameters");
  }

  /** The f16 copy in one buffer, if any (throws when it spans several: use `halfParts`). */
  get half(): GPUBuffer | undefined {
    return this.halfParts?.single("The f16 copy");
  }

  /** Allocates the weights, initialises them and builds the f16 cast. */
  static async create(
    rt: Runtime,
    config: GPT2Config,
    options: WeightsOptions = {},
  ): Promise<Weights> {
    const w = new Weights(rt, config, options);
    const seed = options.seed === undefined ? 1337 : options.seed;
    if (seed !== null) {
      w.layout.tensors.forEach((t, i) => w.#write(t, initTensor(w.config, t, i, seed)));
    }
    const half = w.halfParts;
    if (half) {
      for (const [i, p] of w.paramParts.parts.entries()) {
        const cast = await castToHalf(rt, p.end - p.start, {
          src: p.buffer,
          dst: half.parts[i].buffer,
        });
        w.#cast.push(...cast);
      }
    }
    return w;
  }

  /**
   * The gradients, same layout and parts as the parameters (throws when created without
   * them).
   */
  get gradParts(): SplitBuffer {
    if (!this.#grads) {
      throw new Error("These weights were created for inference: they have no gradients");
    }
    return this.#grads;
  }

  /** The gradients in one buffer (throws when they span several: use `gradParts`). */
  get grads(): GPUBuffer {
    return this.gradParts.single("The gradients");
  }

  /** The parameters' element type: f32, or f16 (16-bit weights, no f32 copy). */
  get weightDtype(): DType {
    return this.paramParts.dtype;
  }

  /** The gradients' element type: f32, or f16 (16-bit gradients). */
  get gradDtype(): DType {
    return this.gradParts.dtype;
  }

  /** True when the weights have a gradient buffer. */
  get hasGrads(): boolean {
    return this.#grads !== undefined;
  }

  /** True when the layout has a tensor of this name (a bias-less model has no biases). */
  has(name: string): boolean {
    return this.layout.byName.has(name);
  }

  /** A named tensor's range in the parameters (or in the gradients): its buffer's. */
  tensor(name: string, grads = false): TensorRange {
    const t = this.#view(name);
    return { ...(grads ? this.gradParts : this.paramParts).at(t.offset, t.size), size: t.size };
  }

  /** Where matmuls read a weight: the f16 copy under fp16 (unless 16-bit), else the parameters. */
  weight(name: string): TensorRange {
    const t = this.#view(name);
    return this.halfParts
      ? { ...this.halfParts.at(t.offset, t.size), size: t.size }
      : this.tensor(name);
  }

  /** The parameters changed on the GPU (an optimizer step): refresh the f16 copy before use. */
  markChanged(): void {
    this.#stale = true;
  }

  /** Encodes the refresh of the f16 copy when it is stale. */
  encodeRefresh(encoder: GPUCommandEncoder): void {
    if (!this.halfParts || !this.#stale) return;
    encodeDispatches(encoder, this.#cast, this.rt.profiler);
    this.#stale = false;
  }

  /** A tensor (or its gradient) by Hugging Face name; wte without its padding rows. */
  readTensor(name: string, grads = false): Promise<Float32Array> {
    const t = this.tensor(name, grads);
    return readValues(this.rt.device, t.buffer, t.offset, hfSize(this.#view(name), this.config));
  }

  /** Overwrites a tensor by name (wte may omit its padding rows). */
  writeTensor(name: string, data: Float32Array<ArrayBuffer>): void {
    const t = this.#view(name), want = hfSize(t, this.config);
    if (data.length !== want && data.length !== t.size) {
      throw new RangeError(`Parameter "${name}" has ${want} elements, got ${data.length}`);
    }
    this.#write(t, data);
    this.markChanged();
  }

  /** Writes a tensor's values in the parameters' type (f16: rounded to nearest). */
  #write(t: TensorView, data: Float32Array<ArrayBuffer>): void {
    const { buffer, offset } = this.paramParts.at(t.offset, t.size);
    if (this.paramParts.dtype === "f32") {
      this.rt.device.queue.writeBuffer(buffer, offset * 4, data);
      return;
    }
    // Whole 4-byte words: an odd count ends in the alignment padding after the tensor.
    const half = new Float16Array(data.length + (data.length % 2));
    half.set(data);
    this.rt.device.queue.writeBuffer(buffer, offset * 2, half);
  }

  /**
   * Every parameter as Hugging Face tensors (wte without padding), read in a few spans; a
   * model without biases writes zero biases, so that any GPT-2 reader takes the file.
   */
  async readAll(): Promise<TensorToWrite[]> {
    const read = new Map<string, Float32Array<ArrayBuffer>>();
    for (const p of this.paramParts.parts) {
      const mine = this.layout.tensors.filter((t) => t.offset >= p.start && t.offset < p.end);
      const data = await readSpans(
        this.rt.device,
        p.buffer,
        mine.map((t) => ({ offset: t.offset - p.start, size: hfSize(t, this.config) })),
      );
      mine.forEach((t, i) => read.set(t.name, data[i] as Float32Array<ArrayBuffer>));
    }
    return withZeroBiases(this.config, (name) => read.get(name));
  }

  /** Frees the buffers and the cast's uniforms. */
  destroy(): void {
    freeDispatches(this.rt.arena, this.#cast);
    this.#cast = [];
    this.#mem.freeAll();
  }

  #view(name: string): TensorView {
    const t = this.layout.byName.get(name);
    if (!t) throw new RangeError(`Unknown parameter "${name}"`);
    return t;
  }
}

/** A parameter's shape in Hugging Face files: its own, except wte without padding rows. */
export function hfShape(t: { name: string; shape: number[] }, cfg: GPT2Config): number[] {
  return t.name === "wte.weight" ? [cfg.vocabSize, cfg.nEmbd] : t.shape;
}

/** Elements of a parameter in Hugging Face files. */
const hfSize = (t: TensorView, cfg: GPT2Config) => hfShape(t, cfg).reduce((a, b) => a * b, 1);

/** Anything that holds weights: a Weights object or a model graph over one. */
export type WeightsLike = Weights | { readonly weights: Weights };

const weightsOf = (w: WeightsLike): Weights => w instanceof Weights ? w : w.weights;

/** The parameters as Hugging Face tensors (wte without padding rows). */
export function exportTensors(source: WeightsLike): Promise<TensorToWrite[]> {
  return weightsOf(source).readAll();
}

/** model.safetensors bytes for the weights (F32 by default). */
export async function encodeModel(
  source: WeightsLike,
  dtype: SafeDtype = "F32",
): Promise<Uint8Array<ArrayBuffer>> {
  return encodeSafetensors(await exportTensors(source), { dtype, metadata: { format: "pt" } });
}

/** The tensor names and shapes of a safetensors file (its header is enough). */
export interface TensorShapes {
  /** The file, for messages. */
  path: string;
  /** Shape of each tensor by name. */
  tensors: Map<string, { shape: number[] }>;
}

/**
 * Checks that a file holds every parameter of `cfg` with the right shape, and returns the key
 * each parameter has in the file (with or without a `transformer.` prefix). Reads nothing else.
 */
export function matchTensors(file: TensorShapes, cfg: GPT2Config): Map<string, string> {
  const keys = new Map<string, string>();
  for (const t of parameterLayout(cfg).tensors) {
    const key = [t.name, `transformer.${t.name}`].find((k) => file.tensors.has(k));
    if (!key) {
      throw new SafeTensorsError(
        file.path,
        `missing tensor "${t.name}" (nor "transformer.${t.name}"): not a GPT-2 checkpoint of ` +
          "this size",
      );
    }
    const want = hfShape(t, cfg), got = file.tensors.get(key)!.shape;
    if (got.join(",") !== want.join(",")) {
      throw new SafeTensorsError(
        file.path,
        `tensor "${key}" has shape [${got}], the model needs [${want}]: check that config.json ` +
          "matches the weights",
      );
    }
    keys.set(t.name, key);
  }
  return keys;
}

/**
 * Every tensor of a GPT-2 file of `cfg` (Hugging Face names and shapes), read from a
 * checkpoint's model.safetensors; a model without biases gets zero biases, so that exports
 * of it load anywhere GPT-2 does.
 */
export function fileTensors(
  file: Parameters<typeof tensorF32>[0] & TensorShapes,
  cfg: GPT2Config,
): FileTensor[] {
  const keys = matchTensors(file, cfg);
  return withZeroBiases(
    cfg,
    (name) => keys.has(name) ? tensorF32(file, keys.get(name)!) : undefined,
  );
}

/** A tensor of a GPT-2 file, f32. */
export type FileTensor = TensorToWrite & { data: Float32Array<ArrayBuffer> };

/** The file's tensors from `data` (by name), zeros for the biases a model has not. */
function withZeroBiases(
  cfg: GPT2Config,
  data: (name: string) => Float32Array<ArrayBuffer> | undefined,
): FileTensor[] {
  return modelParams(cfg, { files: true }).map(({ name, shape }) => {
    const s = shape(cfg);
    return { name, shape: s, data: data(name) ?? new Float32Array(s.reduce((a, b) => a * b)) };
  });
}

/**
 * Loads every parameter from a parsed model.safetensors (all shapes checked first). A model
 * without biases takes a file's biases only when they are zero: it cannot represent others.
 */
export function loadTensors(file: Parameters<typeof tensorF32>[0], target: WeightsLike): void {
  const w = weightsOf(target);
  const keys = matchTensors(file, w.config); // all checks before any write
  if (w.config.bias === false) checkZeroBiases(file, w.config);
  for (const [name, key] of keys) w.writeTensor(name, tensorF32(file, key));
}

/** Throws naming the first non-zero bias of `file` (a model with bias: false reads it). */
function checkZeroBiases(file: Parameters<typeof tensorF32>[0], cfg: GPT2Config): void {
  for (const { name, bias } of modelParams(cfg, { files: true })) {
    const key = [name, `transformer.${name}`].find((k) => file.tensors.has(k));
    if (!bias || !key) continue;
    const worst = tensorF32(file, key).reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    if (worst !== 0) {
      throw new SafeTensorsError(
        file.path,
        `tensor "${key}" is non-zero (max |x| ${worst}) but the model has no biases ` +
          "(--no-bias): drop --no-bias to train with this checkpoint's biases",
      );
    }
  }
}
