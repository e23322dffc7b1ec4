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
import {
  activationBuffers,
  layerBufferLabel,
  type LayerField,
  logitsChunkRows,
  type Recompute,
} from "./plan.ts";
import type { Weights } from "./weights.ts";

/** One layer's activations: a block's buffers (its input is the previous output) and lse. */
export type LayerActs = Omit<BlockBuffers, "input"> & {
  /** Log-sum-exp of each attention row [B, NH, T] (flash attention keeps no T x T matrix). */
  lse: GPUBuffer;
};

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
  const { B, T } = s, Vp = w.Vp;
  const { nLayer: L, nHead: NH, nEmbd: C, vocabSize: V } = w.config;
  const BT = B * T;
  const mm = s.matmul;
  // Every activation and scratch buffer comes from the plan (src/model/plan.ts).
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
  const S = s.inputStride;
  const inputs = get("inputs");
  const tokens: BufferRange = { buffer: inputs, offset: 0, size: BT * 4 };
  const targets: BufferRange = { buffer: inputs, offset: S * 4, size: BT * 4 };
  const order: BufferRange = { buffer: inputs, offset: 2 * S * 4, size: BT * 4 };
  const P = (n: string) => w.tensor(n);
  const W = (n: string) => w.weight(n);
  const G = (n: string) => w.tensor(n, true);
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
  const lnf = get("lnf"), lnfMean = get("lnf_mean"), lnfRstd = get("lnf_rstd");
  const logits = get("logits"), losses = get("losses");
  const chunks = splitRange(BT, logitsChunkRows(BT, Vp, s.logitsChunkRows));
  const [k0, k1] = chunks[chunks.length - 1];
  const cls = (r0: number, r1: number, writeGrad: boolean) =>
    classifier(rt, { N: r1 - r0, V, Vp, dloss: s.dloss, writeGrad }, {
      logits,
      targets: {
        buffer: targets.buffer,
        offset: (targets.offset ?? 0) + r0 * 4,
        size: (r1 - r0) * 4,
      },
      losses: { buffer: losses, offset: r0 * 4, size: (r1 - r0) * 4 },
      lossScale: s.lossScale,
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
    const blk = await blockForward(
      rt,
      { weights: w, l, rows: BT, matmul: mm },
      { ...a, input },
      attention,
    );
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
        c: buf(logits),
      }, { name: "lm_head_forward", ...mm })
    ),
  );
  const head: Dispatch[] = [];
  for (let i = 0; i < chunks.length; i++) {
    head.push(...lmHead[i], ...await cls(...chunks[i], false));
  }
  const out: Passes = {
    forward: [...fwd, ...head],
    train: [],
    layers,
    inputs,
    logits,
    losses,
    logitsRows: [k0, k1 - k0],
    gradMarks: [],
    trainParts: [],
  };
  if (s.inference) return out;

  // ---- backward scratch
  const dres = get("dresidual");
  const dbtc = get("d_btc");
  const scratch = {
    dres,
    dbtc,
    datty: get("d_atty"),
    dqkv: get("d_qkv"),
    dfchGelu: get("d_fch_gelu"),
    dfch: get("d_fch"),
    delta: get("attn_delta"),
  };

  // ---- backward (dresidual is cleared before it runs). Per chunk: logits, loss and
  // dlogits in place, then dlnf for those rows and their share of dwte.
  const bwd: Dispatch[] = [];
  for (let i = 0; i < chunks.length; i++) {
    const [r0, r1] = chunks[i];
    bwd.push(...lmHead[i], ...await cls(r0, r1, true));
    bwd.push(
      ...await matmul(rt, { M: r1 - r0, N: C, K: Vp }, {
        a: buf(logits),
        b: op(W("wte.weight")),
        c: { buffer: dbtc, offset: r0 * C },
      }, { name: "lm_head_backward_dinp", ...mm }),
    );
    bwd.push(
      ...await matmul(rt, { M: Vp, N: C, K: r1 - r0, transA: true, accumulate: true }, {
        a: buf(logits),
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
      dinp: dres,
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
      ...await blockBackward(
        rt,
        { weights: w, l, B, T, matmul: mm },
        { ...layers[l], input },
        scratch,
      ),
    );
    const mine = w.layout.tensors.filter((t) => t.name.startsWith(`h.${l}.`));
    const start = mine[0].offset, last = mine[mine.length - 1];
    out.gradMarks.push({
      at: fwd.length + bwd.length,
      ranges: [{ start, end: last.offset + last.size }],
    });
  }
  bwd.push(
    ...await encoderBackward(rt, enc, {
      tokens,
      order,
      dout: dres,
      dwte: G("wte.weight"),
      dwpe: G("wpe.weight"),
    }),
  );
  out.train = [...fwd, ...bwd];
  out.dres = dres;
  const rest = w.layout.tensors.filter((t) => !t.name.startsWith("h."));
  out.gradMarks.push({
    at: out.train.length,
    ranges: rest.map((t) => ({ start: t.offset, end: t.offset + t.size })),
  });
  out.trainParts = out.gradMarks.map((m, i) =>
    out.train.slice(i === 0 ? 0 : out.gradMarks[i - 1].at, m.at)
  );
  return out;
}
