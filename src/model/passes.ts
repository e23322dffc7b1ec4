/**
 * GPT-2's forward and backward passes for one batch shape, as lists of dispatches built once
 * over given weights and activation buffers (src/model/plan.ts). llm.c's gpt2_forward and
 * gpt2_backward, as data: the graph replays the lists every step.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import type { Dispatch } from "../gpu/dispatch.ts";
import { type BufferRange, splitRange } from "../gpu/kernel.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { blockBackward, blockForward } from "./block.ts";
import {
  BLOCK_ACTIVATIONS,
  BLOCK_SCRATCH,
  type BlockActivation,
  type BlockActs,
  type BlockScratch,
  snakeCase,
} from "./block_spec.ts";
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
import { activationBuffers, layerBufferLabel, logitsChunkRows, type Recompute } from "./plan.ts";
import type { Weights } from "./weights.ts";

/** One layer's activations, as the block spec names them (lse included). */
export type LayerActs = BlockActs;

/** What the passes are built for. */
export interface PassSpec {
  /** Batch size. */
  B: number;
  /** Sequence length. */
  T: number;
  /** Gradient of the loss per position. */
  dloss: number;
  /** Options for every matmul. */
  matmul: MatmulOptions;
  /** Forward only. */
  inference: boolean;
  /** Activations the backward recomputes. */
  recompute: Recompute;
  /** Rows of logits at a time (default: see logitsChunkRows in plan.ts). */
  logitsChunkRows?: number;
  /** Elements between tokens, targets and order in the input buffer. */
  inputStride: number;
  /** The 16-byte uniform the classifier reads the loss scale from. */
  lossScale: GPUBuffer;
}

/** The built passes and the buffers a graph reads and writes between steps. */
export interface Passes {
  /** Forward and loss, logits kept. */
  forward: Dispatch[];
  /** Forward, loss and backward (empty in inference). */
  train: Dispatch[];
  /** Every layer's activations (qkv is the decoder's KV cache). */
  layers: LayerActs[];
  /** tokens | targets | order. */
  inputs: GPUBuffer;
  /** The last chunk of logits. */
  logits: GPUBuffer;
  /** Per-position losses [B*T]. */
  losses: GPUBuffer;
  /** The residual gradient, cleared before each backward (undefined in inference). */
  dres?: GPUBuffer;
  /** First row and number of rows of the logits chunk the buffer holds after a forward. */
  logitsRows: [number, number];
  /**
   * Points in `train` after which ranges of the gradient buffer are final for this
   * micro-step, in the order the backward completes them: each layer's tensors after its
   * block's backward, then the rest (ln_f, wte, wpe) at the end. A data-parallel step
   * starts reducing a layer's gradients while the backward goes on with the layers below.
   */
  gradMarks: GradMark[];
  /** `train` cut at the gradMarks: part i ends where mark i's gradients are complete. */
  trainParts: Dispatch[][];
}

/** A point of the training list where some gradients are complete. */
export interface GradMark {
  /** Dispatches of `train` before the point. */
  at: number;
  /** The complete ranges of the flat gradient buffer, in elements. */
  ranges: { start: number; end: number }[];
}

/** Allocates the activations from the plan and builds the passes over `w`. */
export async function buildPasses(
  rt: Runtime,
  w: Weights,
  s: PassSpec,
  mem: ArenaScope,
): Promise<Passes> {
  const g = allocate(rt, w, s, mem);
  const fwd = await forwardBody(g);
  const lmHead = await lmHeadMatmuls(g);
  const head: Dispatch[] = [];
  for (let i = 0; i < g.chunks.length; i++) {
    head.push(...lmHead[i], ...await classify(g, g.chunks[i], false));
  }
  const [k0, k1] = g.chunks[g.chunks.length - 1];
  const out: Passes = {
    forward: [...fwd.all, ...head],
    train: [],
    layers: g.layers,
    inputs: g.inputs,
    logits: g.logits,
    losses: g.losses,
    logitsRows: [k0, k1 - k0],
    gradMarks: [],
    trainParts: [],
  };
  if (s.inference) return out;
  const bwd = await backward(g, fwd, lmHead);
  out.train = [...fwd.all, ...bwd.list];
  out.dres = g.scratch!.dresidual;
  out.gradMarks = bwd.marks.map((m) => ({ ...m, at: fwd.all.length + m.at }));
  out.trainParts = out.gradMarks.map((m, i) =>
    out.train.slice(i === 0 ? 0 : out.gradMarks[i - 1].at, m.at)
  );
  return out;
}

// ---- the buffers

/** What every step of the build reads: the spec, the weights and the allocated buffers. */
interface Graph {
  rt: Runtime;
  w: Weights;
  s: PassSpec;
  B: number;
  T: number;
  recompute: Recompute;
  inputs: GPUBuffer;
  tokens: BufferRange;
  targets: BufferRange;
  order: BufferRange;
  encoded: GPUBuffer;
  layers: LayerActs[];
  lnf: GPUBuffer;
  lnfMean: GPUBuffer;
  lnfRstd: GPUBuffer;
  logits: GPUBuffer;
  losses: GPUBuffer;
  /** Rows [r0, r1) of each logits chunk. */
  chunks: [number, number][];
  /** The backward's scratch (undefined in inference). */
  scratch?: BlockScratch;
}

/** Allocates every buffer of the plan (src/model/plan.ts) and names them. */
function allocate(rt: Runtime, w: Weights, s: PassSpec, mem: ArenaScope): Graph {
  const { B, T } = s, BT = B * T;
  const recompute: Recompute = s.inference ? "none" : s.recompute;
  const plan = activationBuffers(w.config, {
    B,
    T,
    inference: s.inference,
    recompute,
    logitsChunkRows: s.logitsChunkRows,
    precision: w.precision,
  });
  const made = new Map(
    plan.map((b) => [b.label, mem.alloc(b.label, b.category, b.bytes, undefined, b.dtype)]),
  );
  const get = (label: string) => made.get(label)!;
  // Shared "work" buffers where the backward recomputes.
  const layers: LayerActs[] = [];
  for (let l = 0; l < w.config.nLayer; l++) {
    const names = Object.keys(BLOCK_ACTIVATIONS) as BlockActivation[];
    layers.push(
      Object.fromEntries(
        names.map((f) => [f, get(layerBufferLabel(l, f, recompute))]),
      ) as LayerActs,
    );
  }
  const scratch = s.inference ? undefined : Object.fromEntries(
    Object.keys(BLOCK_SCRATCH).map((n) => [n, get(snakeCase(n))]),
  ) as BlockScratch;
  const inputs = get("inputs"), S = s.inputStride;
  return {
    rt,
    w,
    s,
    B,
    T,
    recompute,
    inputs,
    tokens: { buffer: inputs, offset: 0, size: BT * 4 },
    targets: { buffer: inputs, offset: S * 4, size: BT * 4 },
    order: { buffer: inputs, offset: 2 * S * 4, size: BT * 4 },
    encoded: get("encoded"),
    layers,
    lnf: get("lnf"),
    lnfMean: get("lnf_mean"),
    lnfRstd: get("lnf_rstd"),
    logits: get("logits"),
    losses: get("losses"),
    chunks: splitRange(BT, logitsChunkRows(BT, w.Vp, s.logitsChunkRows)),
    scratch,
  };
}

/** Layer l's input: the embeddings, or the previous block's output. */
const blockInput = (g: Graph, l: number) => l === 0 ? g.encoded : g.layers[l - 1].res3;

/** The residual stream after the last block. */
const lastResidual = (g: Graph) => blockInput(g, g.layers.length);

const operand = (t: TensorRange) => ({ buffer: t.buffer, offset: t.offset });

/** A bias the layout may lack (bias-less models). */
const maybe = (w: Weights, name: string, grads = false) =>
  w.has(name) ? w.tensor(name, grads) : undefined;

// ---- forward

/** The forward up to ln_f: all of it, and each block's (and its MLP's) dispatches. */
interface Forward {
  all: Dispatch[];
  blocks: Dispatch[][];
  mlps: Dispatch[][];
}

/** Encoder, blocks and ln_f. */
async function forwardBody(g: Graph): Promise<Forward> {
  const { rt, w, B, T } = g;
  const { nHead: NH, nEmbd: C } = w.config;
  const out: Forward = { all: [], blocks: [], mlps: [] };
  out.all.push(
    ...await encoderForward(rt, { BT: B * T, T, C, Vp: w.Vp }, {
      tokens: g.tokens,
      wte: w.tensor("wte.weight"),
      wpe: w.tensor("wpe.weight"),
      out: g.encoded,
    }),
  );
  for (let l = 0; l < g.layers.length; l++) {
    const a = g.layers[l];
    const attention = await flashAttentionForward(rt, { B, T, C, NH }, {
      qkv: a.qkv,
      out: a.atty,
      lse: a.lse,
    });
    const blk = await blockForward(
      rt,
      { weights: w, l, rows: B * T, matmul: g.s.matmul },
      { ...a, input: blockInput(g, l) },
      attention,
    );
    const all = [...blk.pre, ...blk.attention, ...blk.post];
    out.all.push(...all);
    out.blocks.push(all);
    out.mlps.push(blk.mlp);
  }
  out.all.push(
    await layernormForward(rt, { N: B * T, C }, {
      inp: lastResidual(g),
      weight: w.tensor("ln_f.weight"),
      bias: maybe(w, "ln_f.bias"),
      out: g.lnf,
      mean: g.lnfMean,
      rstd: g.lnfRstd,
    }),
  );
  return out;
}

/**
 * lm_head, one chunk of rows at a time: the same matmul dispatches serve the forward-only
 * list and the training list.
 */
function lmHeadMatmuls(g: Graph): Promise<Dispatch[][]> {
  const C = g.w.config.nEmbd;
  return Promise.all(
    g.chunks.map(([r0, r1]) =>
      matmul(g.rt, { M: r1 - r0, N: g.w.Vp, K: C, transB: true }, {
        a: { buffer: g.lnf, offset: r0 * C },
        b: operand(g.w.weight("wte.weight")),
        c: { buffer: g.logits },
      }, { name: "lm_head_forward", ...g.s.matmul })
    ),
  );
}

/** Softmax, loss and (with `writeGrad`) dlogits in place for rows [r0, r1). */
function classify(g: Graph, [r0, r1]: [number, number], writeGrad: boolean): Promise<Dispatch[]> {
  const { s, w } = g;
  return classifier(g.rt, {
    N: r1 - r0,
    V: w.config.vocabSize,
    Vp: w.Vp,
    dloss: s.dloss,
    writeGrad,
  }, {
    logits: g.logits,
    targets: {
      buffer: g.targets.buffer,
      offset: (g.targets.offset ?? 0) + r0 * 4,
      size: (r1 - r0) * 4,
    },
    losses: { buffer: g.losses, offset: r0 * 4, size: (r1 - r0) * 4 },
    lossScale: s.lossScale,
  });
}

// ---- backward (dresidual is cleared before it runs)

/** The backward's dispatches and its grad marks (`at` counted from its own start). */
async function backward(
  g: Graph,
  fwd: Forward,
  lmHead: Dispatch[][],
): Promise<{ list: Dispatch[]; marks: GradMark[] }> {
  const list = [...await headBackward(g, lmHead)];
  const marks: GradMark[] = [];
  for (let l = g.layers.length - 1; l >= 0; l--) {
    // Recompute what this layer's backward needs and the forward did not keep.
    if (g.recompute === "block") list.push(...fwd.blocks[l]);
    else if (g.recompute === "mlp") list.push(...fwd.mlps[l]);
    list.push(
      ...await blockBackward(
        g.rt,
        { weights: g.w, l, B: g.B, T: g.T, matmul: g.s.matmul },
        { ...g.layers[l], input: blockInput(g, l) },
        g.scratch!,
      ),
    );
    const mine = g.w.layout.tensors.filter((t) => t.name.startsWith(`h.${l}.`));
    const start = mine[0].offset, last = mine[mine.length - 1];
    marks.push({ at: list.length, ranges: [{ start, end: last.offset + last.size }] });
  }
  list.push(
    ...await encoderBackward(g.rt, { BT: g.B * g.T, T: g.T, C: g.w.config.nEmbd, Vp: g.w.Vp }, {
      tokens: g.tokens,
      order: g.order,
      dout: g.scratch!.dresidual,
      dwte: g.w.tensor("wte.weight", true),
      dwpe: g.w.tensor("wpe.weight", true),
    }),
  );
  const rest = g.w.layout.tensors.filter((t) => !t.name.startsWith("h."));
  marks.push({
    at: list.length,
    ranges: rest.map((t) => ({ start: t.offset, end: t.offset + t.size })),
  });
  return { list, marks };
}

/**
 * Per chunk: logits, loss and dlogits in place, then dlnf for those rows and their share of
 * dwte; then ln_f's backward into dresidual.
 */
async function headBackward(g: Graph, lmHead: Dispatch[][]): Promise<Dispatch[]> {
  const { rt, w } = g, C = w.config.nEmbd, mm = g.s.matmul, d = g.scratch!;
  const out: Dispatch[] = [];
  for (let i = 0; i < g.chunks.length; i++) {
    const [r0, r1] = g.chunks[i];
    out.push(...lmHead[i], ...await classify(g, g.chunks[i], true));
    out.push(
      ...await matmul(rt, { M: r1 - r0, N: C, K: w.Vp }, {
        a: { buffer: g.logits },
        b: operand(w.weight("wte.weight")),
        c: { buffer: d.dBtc, offset: r0 * C },
      }, { name: "lm_head_backward_dinp", ...mm }),
      ...await matmul(rt, { M: w.Vp, N: C, K: r1 - r0, transA: true, accumulate: true }, {
        a: { buffer: g.logits },
        b: { buffer: g.lnf, offset: r0 * C },
        c: operand(w.tensor("wte.weight", true)),
      }, { name: "lm_head_backward_dweight", ...mm }),
    );
  }
  out.push(
    ...await layernormBackward(rt, { N: g.B * g.T, C }, {
      inp: lastResidual(g),
      weight: w.tensor("ln_f.weight"),
      mean: g.lnfMean,
      rstd: g.lnfRstd,
      dout: d.dBtc,
      dinp: d.dresidual,
      dweight: w.tensor("ln_f.weight", true),
      dbias: maybe(w, "ln_f.bias", true),
    }),
  );
  return out;
}
