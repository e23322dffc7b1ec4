/**
 * Dispatch builders for GPT-2's kernels other than matmul: encoder, LayerNorm,
 * GELU, residual, attention and the fused classifier. Each returns dispatches
 * made once at setup; the WGSL files document shapes and bindings. Activations
 * may be f16 where a kernel declares a type alias for them: the kernel is
 * specialised to the buffers' element types (src/gpu/dtype.ts).
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import {
  type BufferRange,
  f32Bits,
  grid1d,
  LOOP_BUDGET,
  makeDispatch,
  splitRange,
  WALK_ROWS,
} from "../gpu/kernel.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { dtypeOf, typedKernel } from "../gpu/dtype.ts";
import encoderSrc from "../../kernels/encoder.wgsl" with { type: "text" };
import layernormSrc from "../../kernels/layernorm.wgsl" with { type: "text" };
import geluSrc from "../../kernels/gelu.wgsl" with { type: "text" };
import residualSrc from "../../kernels/residual.wgsl" with { type: "text" };
import attentionSrc from "../../kernels/attention.wgsl" with { type: "text" };
import classifierSrc from "../../kernels/classifier.wgsl" with { type: "text" };
import flashSrc from "../../kernels/flash_attention.wgsl" with { type: "text" };
import castSrc from "../../kernels/cast.wgsl" with { type: "text" };
import decodeSrc from "../../kernels/attention_decode.wgsl" with { type: "text" };

/** The whole of a buffer. */
const all = (buffer: GPUBuffer): BufferRange => ({ buffer });

/** kernels/encoder.wgsl's Params (12 words): BT, T, C, v0, v1, first, pos0, s0, s1. */
const encoderWords = (w: number[]) => [...w, ...new Array(12 - w.length).fill(0)];

/** A tensor inside a flat buffer: offset and size in f32 elements. */
export interface TensorRange {
  /** The flat buffer (parameters, gradients or their f16 copy). */
  buffer: GPUBuffer;
  /** Where the tensor starts, in elements of the buffer (not bytes). */
  offset: number;
  /** Number of elements in the tensor. */
  size: number;
}

const bytes = (t: TensorRange): BufferRange => ({
  buffer: t.buffer,
  offset: t.offset * 4,
  size: t.size * 4,
});

/**
 * Row ranges of an embedding table [rows, C] that each fit in one binding.
 * Chunks hold a multiple of 64 rows so their offsets stay 256-byte aligned.
 */
export function tableChunks(
  rt: Runtime,
  rows: number,
  C: number,
  limit: number = rt.gpu.limits.maxStorageBufferBindingSize,
): [number, number][] {
  return splitRange(rows, Math.max(64, Math.floor(limit / (C * 4) / 64) * 64));
}

// ---------------------------------------------------------------------------
// encoder

/** Shapes for the encoder: B*T tokens of T positions, C channels, Vp table rows. */
export interface EncoderShape {
  BT: number;
  T: number;
  C: number;
  Vp: number;
  /** Binding limit for the wte chunks (default: the adapter's), for tests. */
  maxBindingBytes?: number;
  /** First position (decoding one token at position pos0); word 6 of the uniform. */
  pos0?: number;
}

/** out[BT, C] = wte[tokens] + wpe[t], one dispatch per binding-sized chunk of wte. */
export function encoderForward(
  rt: Runtime,
  s: EncoderShape,
  ops: { tokens: BufferRange; wte: TensorRange; wpe: TensorRange; out: GPUBuffer },
): Promise<Dispatch[]> {
  return Promise.all(
    tableChunks(rt, s.Vp, s.C, s.maxBindingBytes).map(([v0, v1], i) =>
      makeDispatch(rt, {
        name: "encoder_forward",
        code: encoderSrc,
        entryPoint: "forward",
        buffers: {
          0: ops.tokens,
          1: bytes({
            buffer: ops.wte.buffer,
            offset: ops.wte.offset + v0 * s.C,
            size: (v1 - v0) * s.C,
          }),
          2: bytes(ops.wpe),
          3: all(ops.out),
        },
        uniform: {
          binding: 7,
          words: encoderWords([s.BT, s.T, s.C, v0, v1, i === 0 ? 1 : 0, s.pos0 ?? 0]),
        },
        workgroups: grid1d(s.BT * s.C, 64),
      })
    ),
  );
}

/** dwte and dwpe += the encoder's gradients from dout[BT, C]. */
export async function encoderBackward(
  rt: Runtime,
  s: EncoderShape,
  ops: {
    tokens: BufferRange;
    order: BufferRange;
    dout: GPUBuffer;
    dwte: TensorRange;
    dwpe: TensorRange;
  },
): Promise<Dispatch[]> {
  const wpe = await makeDispatch(rt, {
    name: "encoder_backward_wpe",
    code: encoderSrc,
    entryPoint: "backward_wpe",
    buffers: { 4: all(ops.dout), 5: bytes({ ...ops.dwpe, size: s.T * s.C }) },
    uniform: { binding: 7, words: encoderWords([s.BT, s.T, s.C]) },
    workgroups: grid1d(s.T * s.C, 64),
    loops: { bound: s.BT / s.T, shape: { B: s.BT / s.T } },
  });
  // Sorted slots in ranges within the loop budget (a run of one token can be all of BT).
  const slots = splitRange(s.BT, WALK_ROWS);
  const pairs = tableChunks(rt, s.Vp, s.C, s.maxBindingBytes).flatMap((v) =>
    slots.map((r) => [v, r] as const)
  );
  const wte = await Promise.all(
    pairs.map(([[v0, v1], [s0, s1]]) =>
      makeDispatch(rt, {
        name: "encoder_backward_wte",
        code: encoderSrc,
        entryPoint: "backward_wte",
        buffers: {
          0: ops.tokens,
          4: all(ops.dout),
          6: bytes({
            buffer: ops.dwte.buffer,
            offset: ops.dwte.offset + v0 * s.C,
            size: (v1 - v0) * s.C,
          }),
          8: ops.order,
        },
        uniform: { binding: 7, words: encoderWords([s.BT, s.T, s.C, v0, v1, 0, 0, s0, s1]) },
        workgroups: grid1d((s1 - s0) * s.C, 64),
        loops: { bound: s1 - s0, shape: { BT: s.BT, s0 } },
      })
    ),
  );
  return [wpe, ...wte];
}

// ---------------------------------------------------------------------------
// layernorm

/** out, mean, rstd = LayerNorm(inp [N, C]) with weight and bias. */
export function layernormForward(
  rt: Runtime,
  s: { N: number; C: number },
  ops: {
    inp: GPUBuffer;
    weight: TensorRange;
    bias: TensorRange;
    out: GPUBuffer;
    mean: GPUBuffer;
    rstd: GPUBuffer;
  },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "layernorm_forward",
    code: typedKernel(layernormSrc, { out_t: dtypeOf(ops.out) }),
    entryPoint: "forward",
    buffers: {
      0: all(ops.inp),
      1: bytes(ops.weight),
      2: bytes(ops.bias),
      3: all(ops.out),
      4: all(ops.mean),
      5: all(ops.rstd),
    },
    uniform: { binding: 10, words: [s.N, s.C] },
    workgroups: grid1d(s.N, 64),
    loops: { bound: 3 * s.C, shape: { C: s.C } },
  });
}

/** dinp += input gradient; dweight, dbias += parameter gradients. */
export async function layernormBackward(
  rt: Runtime,
  s: { N: number; C: number },
  ops: {
    inp: GPUBuffer;
    weight: TensorRange;
    mean: GPUBuffer;
    rstd: GPUBuffer;
    dout: GPUBuffer;
    dinp: GPUBuffer;
    dweight: TensorRange;
    dbias: TensorRange;
  },
): Promise<Dispatch[]> {
  const common = { code: layernormSrc, uniform: { binding: 10, words: [s.N, s.C] } };
  // The parameter gradients sum over rows: in ranges within the loop budget, in order.
  const params: Dispatch[] = [];
  for (const [n0, n1] of splitRange(s.N, WALK_ROWS)) {
    params.push(
      await makeDispatch(rt, {
        ...common,
        name: "layernorm_backward_params",
        entryPoint: "backward_params",
        buffers: {
          0: all(ops.inp),
          4: all(ops.mean),
          5: all(ops.rstd),
          6: all(ops.dout),
          8: bytes(ops.dweight),
          9: bytes(ops.dbias),
        },
        uniform: { binding: 10, words: [s.N, s.C, n0, n1] },
        workgroups: grid1d(s.C, 64),
        loops: { bound: n1 - n0, shape: { N: s.N, n0 } },
      }),
    );
  }
  return [
    await makeDispatch(rt, {
      ...common,
      name: "layernorm_backward_input",
      entryPoint: "backward_input",
      buffers: {
        0: all(ops.inp),
        1: bytes(ops.weight),
        4: all(ops.mean),
        5: all(ops.rstd),
        6: all(ops.dout),
        7: all(ops.dinp),
      },
      workgroups: grid1d(s.N, 64),
      loops: { bound: 2 * s.C, shape: { C: s.C } },
    }),
    ...params,
  ];
}

// ---------------------------------------------------------------------------
// gelu and residual

/** out = gelu(inp), N elements. */
export function geluForward(
  rt: Runtime,
  N: number,
  ops: { inp: GPUBuffer; out: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "gelu_forward",
    code: typedKernel(geluSrc, { in_t: dtypeOf(ops.inp), out_t: dtypeOf(ops.out) }),
    entryPoint: "forward",
    buffers: { 0: all(ops.inp), 1: all(ops.out) },
    uniform: { binding: 4, words: [N] },
    workgroups: grid1d(N, 64),
  });
}

/** dinp = gelu'(inp) * dout, N elements. */
export function geluBackward(
  rt: Runtime,
  N: number,
  ops: { inp: GPUBuffer; dout: GPUBuffer; dinp: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "gelu_backward",
    code: typedKernel(geluSrc, { in_t: dtypeOf(ops.inp), din_t: dtypeOf(ops.dinp) }),
    entryPoint: "backward",
    buffers: { 0: all(ops.inp), 2: all(ops.dout), 3: all(ops.dinp) },
    uniform: { binding: 4, words: [N] },
    workgroups: grid1d(N, 64),
  });
}

/** out = a + b, N elements. */
export function residualForward(
  rt: Runtime,
  N: number,
  ops: { a: GPUBuffer; b: GPUBuffer; out: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "residual_forward",
    code: residualSrc,
    entryPoint: "forward",
    buffers: { 0: all(ops.a), 1: all(ops.b), 2: all(ops.out) },
    uniform: { binding: 3, words: [N] },
    workgroups: grid1d(N, 64),
  });
}

// ---------------------------------------------------------------------------
// attention

/** Shapes for attention. */
export interface AttentionShape {
  B: number;
  T: number;
  C: number;
  NH: number;
  /**
   * Flash attention only: rows per split-KV chunk, a multiple of 64 * rows (default, and most:
   * the largest that keeps each pass within the loop budget, see {@linkcode flashChunkRows}).
   */
  chunkRows?: number;
  /** Flash attention only: rows per invocation, 1, 2 or 4 (default: {@linkcode flashRows}). */
  rows?: FlashRows;
}

/** kernels/attention.wgsl's loop bound: it grows with T (that kernel is a reference). */
const plainAttentionLoops = (s: AttentionShape) => ({
  bound: s.T * (2 * (s.C / s.NH) + 4) + s.C / s.NH,
  shape: { T: s.T, HS: s.C / s.NH },
});

/** out [B,T,C] and att [B,NH,T,T] from qkv [B,T,3C]. */
export function attentionForward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; out: GPUBuffer; att: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "attention_forward",
    code: attentionSrc,
    entryPoint: "forward",
    buffers: { 0: all(ops.qkv), 1: all(ops.out), 2: all(ops.att) },
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
    flops: 4 * s.B * s.NH * s.T * s.T * (s.C / s.NH) / 2,
    loops: plainAttentionLoops(s),
  });
}

/** dqkv [B,T,3C] from dout [B,T,C] (dpre is scratch [B,NH,T,T]). */
export async function attentionBackward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; att: GPUBuffer; dout: GPUBuffer; dpre: GPUBuffer; dqkv: GPUBuffer },
): Promise<Dispatch[]> {
  const common = {
    code: attentionSrc,
    buffers: {
      0: all(ops.qkv),
      2: all(ops.att),
      3: all(ops.dout),
      4: all(ops.dpre),
      5: all(ops.dqkv),
    },
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
    flops: 4 * s.B * s.NH * s.T * s.T * (s.C / s.NH) / 2,
    loops: plainAttentionLoops(s),
  };
  return [
    await makeDispatch(rt, {
      ...common,
      name: "attention_backward_query",
      entryPoint: "backward_query",
    }),
    await makeDispatch(rt, { ...common, name: "attention_backward_kv", entryPoint: "backward_kv" }),
  ];
}

// ---------------------------------------------------------------------------
// classifier

/**
 * losses[N] = cross-entropy of logits [N, Vp] (first V columns) against targets;
 * with `writeGrad`, logits are replaced by dlogits scaled by `dloss` times the
 * loss scale (x of the 16-byte uniform `lossScale`). Rows are split into
 * binding-sized chunks (64-row multiples keep offsets aligned).
 */
export function classifier(
  rt: Runtime,
  s: {
    N: number;
    V: number;
    Vp: number;
    dloss: number;
    writeGrad: boolean;
    maxBindingBytes?: number;
  },
  ops: { logits: GPUBuffer; targets: BufferRange; losses: BufferRange; lossScale: GPUBuffer },
): Promise<Dispatch[]> {
  const limit = s.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize;
  const per = Math.max(64, Math.floor(limit / (s.Vp * 4) / 64) * 64);
  const chunks = splitRange(s.N, per);
  const t0 = ops.targets.offset ?? 0, l0 = ops.losses.offset ?? 0;
  return Promise.all(chunks.map(([r0, r1]) =>
    makeDispatch(rt, {
      name: s.writeGrad ? "classifier_loss_grad" : "classifier_loss",
      code: classifierSrc,
      entryPoint: "main",
      constants: { WRITE_GRAD: +s.writeGrad },
      buffers: {
        0: { buffer: ops.logits, offset: r0 * s.Vp * 4, size: (r1 - r0) * s.Vp * 4 },
        1: { buffer: ops.targets.buffer, offset: t0 + r0 * 4, size: (r1 - r0) * 4 },
        2: { buffer: ops.losses.buffer, offset: l0 + r0 * 4, size: (r1 - r0) * 4 },
        4: { buffer: ops.lossScale },
      },
      uniform: { binding: 3, words: [r1 - r0, s.V, s.Vp, f32Bits(s.dloss)] },
      workgroups: grid1d(r1 - r0, 1),
      loops: {
        bound: 2 * Math.ceil(s.V / 64) + Math.ceil(s.Vp / 64) + 12,
        shape: { V: s.V, Vp: s.Vp },
      },
    })
  ));
}

// ---------------------------------------------------------------------------
// flash attention (no T x T buffers)

/** Query (or key) rows per workgroup of kernels/flash_attention.wgsl. */
const FLASH_WG = 64;

/** The pass of flash attention whose loop bound is asked for. */
export type FlashPass = "forward" | "dq" | "dkv";

/** Tile geometry for head size HS: vec4s per row and rows per workgroup-memory tile. */
function flashTiles(HS: number): { hs4: number; bk: number } {
  const hs4 = Math.ceil(HS / 4);
  // Two tiles of BK x HS4 vec4 in 16 KiB (WebGPU's default workgroup storage), BK a power of 2.
  return { hs4, bk: Math.min(64, 2 ** Math.floor(Math.log2(512 / hs4))) };
}

/**
 * Rows per invocation (register blocking) flash attention uses by default on an adapter for
 * sequences of T tokens.
 */
export function flashRows(rt: Runtime, T: number): FlashRows {
  // llvmpipe pays for every memory load, so rows that share each loaded element win (1.9x
  // at 4 over 1 at T=1024); GPUs keep registers for occupancy. A block of 64 * rows rows
  // past T would compute on padding: short sequences take fewer.
  if (!rt.gpu.isCpu) return 1;
  return T >= 256 ? 4 : T >= 128 ? 2 : 1;
}

/** Rows per invocation of kernels/flash_attention.wgsl (its ROWS constant). */
export type FlashRows = 1 | 2 | 4;

/**
 * The most loop iterations one invocation of a flash attention pass runs over a chunk of
 * `KC` rows, as the formula in kernels/flash_attention.wgsl's header gives it.
 */
export function flashLoopBound(
  pass: FlashPass,
  HS: number,
  KC: number,
  rows: FlashRows = 1,
): number {
  const { hs4, bk } = flashTiles(HS);
  const tiles = Math.ceil(KC / bk), stage = Math.ceil((bk * hs4) / FLASH_WG);
  const body = tiles * (1 + stage + (bk / 4) * (1 + 2 * hs4 * (1 + rows) + rows));
  return body + rows * (1 + { forward: 2, dq: 6, dkv: 11 }[pass] * hs4);
}

/**
 * Rows per split-KV chunk of a pass: the largest 64 * rows * 2^k whose loop bound is within
 * {@linkcode LOOP_BUDGET} (for HS = 64: 2048 with 1 row per invocation, 1024 with 4).
 */
export function flashChunkRows(pass: FlashPass, HS: number, rows: FlashRows = 1): number {
  let kc = FLASH_WG * rows;
  while (flashLoopBound(pass, HS, 2 * kc, rows) <= LOOP_BUDGET) kc *= 2;
  return kc;
}

function checkHeadSize(s: AttentionShape): void {
  if (s.C / s.NH > 128) {
    throw new RangeError(`Head size ${s.C / s.NH} is over flash attention's maximum of 128`);
  }
  if (s.B * s.NH > 65535) {
    throw new RangeError(
      `Flash attention grids hold B * NH = ${s.B * s.NH} (b, h) pairs, over 65535: ` +
        "use a smaller batch per micro-step",
    );
  }
}

/** Causal (query, key) pairs whose key lies in [k0, k1) (T queries). */
const pairsWithKeys = (T: number, k0: number, k1: number) =>
  (k1 - k0) * T - ((k1 - 1) * k1 - (k0 - 1) * k0) / 2;

/** The chunks [k0, k1) of `T` rows for a pass, with the first row block each dispatch needs. */
function flashChunks(pass: FlashPass, s: AttentionShape, rows: FlashRows) {
  const HS = s.C / s.NH, max = flashChunkRows(pass, HS, rows), R = FLASH_WG * rows;
  const blocks = Math.ceil(s.T / R);
  const KC = s.chunkRows ?? max;
  if (KC % R !== 0 || KC > max) {
    throw new RangeError(
      `Flash attention chunkRows ${KC} must be a multiple of ${R} up to ${max} ` +
        `(head size ${HS}, ${rows} rows per invocation)`,
    );
  }
  return splitRange(s.T, KC).map(([k0, k1]) => {
    // forward and dq: query blocks that reach key k0; dkv: key blocks that start before k1.
    const [blk0, nblk] = pass === "dkv"
      ? [0, Math.ceil(k1 / R)]
      : [Math.floor(k0 / R), blocks - Math.floor(k0 / R)];
    return { k0, k1, blk0, nblk, loops: flashLoopBound(pass, HS, k1 - k0, rows) };
  });
}

function flashDispatches(
  rt: Runtime,
  pass: FlashPass,
  s: AttentionShape,
  spec: { code: string; entryPoint: string; name: string; buffers: Record<number, BufferRange> },
  flopsPerPair: number,
): Promise<Dispatch[]> {
  const HS = s.C / s.NH, rows = s.rows ?? flashRows(rt, s.T);
  const { bk } = flashTiles(HS);
  return Promise.all(
    flashChunks(pass, s, rows).map((c, i) =>
      makeDispatch(rt, {
        ...spec,
        constants: { HS, BK: bk, ROWS: rows },
        uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH, c.k0, c.k1, c.blk0, i === 0 ? 1 : 0] },
        workgroups: [c.nblk, s.B * s.NH, 1],
        flops: flopsPerPair * HS * s.B * s.NH *
          (pass === "dkv"
            ? pairsWithKeys(s.T, 0, c.k1) - pairsWithKeys(s.T, 0, c.k0) // by query
            : pairsWithKeys(s.T, c.k0, c.k1)),
        loops: { bound: c.loops, shape: { B: s.B, T: s.T, NH: s.NH, HS, k0: c.k0, k1: c.k1 } },
      })
    ),
  );
}

/**
 * out [B,T,C] and lse [B,NH,T] from qkv [B,T,3C], FlashAttention-2 style: one dispatch per
 * split-KV chunk of keys, each merging into the output of the ones before.
 */
export function flashAttentionForward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; out: GPUBuffer; lse: GPUBuffer },
): Promise<Dispatch[]> {
  checkHeadSize(s);
  return flashDispatches(rt, "forward", s, {
    name: "flash_attention_forward",
    code: typedKernel(flashSrc, { qkv_t: dtypeOf(ops.qkv), out_t: dtypeOf(ops.out) }),
    entryPoint: "forward",
    buffers: { 0: all(ops.qkv), 1: all(ops.out), 2: all(ops.lse) },
  }, 4);
}

/** dqkv [B,T,3C] from dout [B,T,C], recomputing the probabilities (delta is scratch [B,NH,T]). */
export async function flashAttentionBackward(
  rt: Runtime,
  s: AttentionShape,
  ops: {
    qkv: GPUBuffer;
    out: GPUBuffer;
    lse: GPUBuffer;
    dout: GPUBuffer;
    delta: GPUBuffer;
    dqkv: GPUBuffer;
  },
): Promise<Dispatch[]> {
  checkHeadSize(s);
  const HS = s.C / s.NH;
  const code = typedKernel(flashSrc, {
    qkv_t: dtypeOf(ops.qkv),
    out_t: dtypeOf(ops.out),
    dqkv_t: dtypeOf(ops.dqkv),
  });
  const grads = {
    0: all(ops.qkv),
    2: all(ops.lse),
    3: all(ops.dout),
    4: all(ops.delta),
    5: all(ops.dqkv),
  };
  const delta = await makeDispatch(rt, {
    name: "flash_attention_backward_delta",
    code,
    entryPoint: "backward_delta",
    constants: { HS, BK: flashTiles(HS).bk },
    buffers: { 1: all(ops.out), 3: all(ops.dout), 4: all(ops.delta) },
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH, 0, 0, 0, 0] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
    loops: { bound: HS, shape: { HS } },
  });
  const dq = await flashDispatches(rt, "dq", s, {
    name: "flash_attention_backward_dq",
    code,
    entryPoint: "backward_dq",
    buffers: grads,
  }, 6);
  const dkv = await flashDispatches(rt, "dkv", s, {
    name: "flash_attention_backward_dkv",
    code,
    entryPoint: "backward_dkv",
    buffers: grads,
  }, 8);
  return [delta, ...dq, ...dkv];
}

// ---------------------------------------------------------------------------
// decode attention (one new token over the KV cache, split over the cache)

/** Cache rows per workgroup of kernels/attention_decode.wgsl. */
const DECODE_DK = 256;

/** Shape of decode attention: a cache of `maxT` rows, C channels, NH heads. */
export interface DecodeShape {
  maxT: number;
  C: number;
  NH: number;
}

/** Bytes of the scratch that decode attention's chunks write their partial results to. */
export function decodePartialBytes(s: DecodeShape): number {
  return s.NH * Math.ceil(s.maxT / DECODE_DK) * (s.C / s.NH + 2) * 4;
}

/**
 * out [C] = attention of q1 (the new token's q|k|v [3C]) over cache rows 0..t ([maxT, 3C]),
 * flash-decoding style: a dispatch of chunks, then one that combines them. Both read t from
 * word 0 of their uniform, which the caller rewrites before each token.
 */
export function attentionDecode(
  rt: Runtime,
  s: DecodeShape,
  ops: { q1: GPUBuffer; cache: GPUBuffer; out: GPUBuffer; partial: GPUBuffer },
): Promise<Dispatch[]> {
  const HS = s.C / s.NH, S = Math.ceil(s.maxT / DECODE_DK), lanes = Math.ceil(HS / 64);
  if (HS > 128) throw new RangeError(`Head size ${HS} is over decode attention's maximum of 128`);
  const spec = {
    code: typedKernel(decodeSrc, { qkv_t: dtypeOf(ops.cache), out_t: dtypeOf(ops.out) }),
    constants: { HS },
    uniform: { binding: 3, words: [0, s.C, s.NH, S] },
  };
  const per = DECODE_DK / 64;
  return Promise.all([
    makeDispatch(rt, {
      ...spec,
      name: "attention_decode",
      entryPoint: "partial_chunk",
      buffers: { 0: all(ops.q1), 1: all(ops.cache), 4: all(ops.partial) },
      workgroups: [S, s.NH, 1],
      loops: {
        bound: per * (HS + 1) + per + 12 + lanes * (DECODE_DK + 1),
        shape: { maxT: s.maxT, HS },
      },
    }),
    makeDispatch(rt, {
      ...spec,
      name: "attention_decode_combine",
      entryPoint: "combine",
      buffers: { 2: all(ops.out), 4: all(ops.partial) },
      workgroups: [s.NH, 1, 1],
      loops: { bound: lanes * (2 * S + 1), shape: { maxT: s.maxT, HS } },
    }),
  ]);
}

// ---------------------------------------------------------------------------
// f16 copy

/** dst[n] (f16) = src[n] (f32), in binding-sized chunks. */
export function castToHalf(
  rt: Runtime,
  n: number,
  ops: { src: GPUBuffer; dst: GPUBuffer },
  maxBindingBytes: number = rt.gpu.limits.maxStorageBufferBindingSize,
): Promise<Dispatch[]> {
  // Chunks of 128-element multiples keep both offsets 256-byte aligned.
  const per = Math.max(128, Math.floor(maxBindingBytes / 4 / 128) * 128);
  const out: Promise<Dispatch>[] = [];
  for (let e = 0; e < n; e += per) {
    const len = Math.min(per, n - e);
    out.push(makeDispatch(rt, {
      name: "cast_f16",
      code: castSrc,
      entryPoint: "main",
      buffers: {
        0: { buffer: ops.src, offset: e * 4, size: len * 4 },
        1: { buffer: ops.dst, offset: e * 2, size: Math.ceil((len * 2) / 4) * 4 },
      },
      uniform: { binding: 2, words: [len] },
      workgroups: grid1d(len, 64),
    }));
  }
  return Promise.all(out);
}
