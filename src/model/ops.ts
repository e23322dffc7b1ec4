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
import { type BufferRange, f32Bits, grid1d, makeDispatch } from "../gpu/kernel.ts";
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

/** The whole of a buffer. */
const all = (buffer: GPUBuffer): BufferRange => ({ buffer });

/** A tensor inside a flat buffer: offset and size in f32 elements. */
export interface TensorRange {
  buffer: GPUBuffer;
  offset: number;
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
  const per = Math.max(64, Math.floor(limit / (C * 4) / 64) * 64);
  const out: [number, number][] = [];
  for (let r = 0; r < rows; r += per) out.push([r, Math.min(rows, r + per)]);
  return out;
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
        uniform: { binding: 7, words: [s.BT, s.T, s.C, v0, v1, i === 0 ? 1 : 0, s.pos0 ?? 0] },
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
    uniform: { binding: 7, words: [s.BT, s.T, s.C, 0, 0, 0] },
    workgroups: grid1d(s.T * s.C, 64),
  });
  const wte = await Promise.all(
    tableChunks(rt, s.Vp, s.C, s.maxBindingBytes).map(([v0, v1]) =>
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
        uniform: { binding: 7, words: [s.BT, s.T, s.C, v0, v1, 0] },
        workgroups: grid1d(s.BT * s.C, 64),
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
    }),
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
      workgroups: grid1d(s.C, 64),
    }),
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
}

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
  const chunks: [number, number][] = [];
  for (let r = 0; r < s.N; r += per) chunks.push([r, Math.min(s.N, r + per)]);
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
    })
  ));
}

// ---------------------------------------------------------------------------
// flash attention (no T x T buffers)

function checkHeadSize(s: AttentionShape): void {
  if (s.C / s.NH > 128) {
    throw new RangeError(`Head size ${s.C / s.NH} is over flash attention's maximum of 128`);
  }
}

/** out [B,T,C] and lse [B,NH,T] from qkv [B,T,3C], with an online softmax. */
export function flashAttentionForward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; out: GPUBuffer; lse: GPUBuffer },
): Promise<Dispatch> {
  checkHeadSize(s);
  return makeDispatch(rt, {
    name: "flash_attention_forward",
    code: typedKernel(flashSrc, { qkv_t: dtypeOf(ops.qkv), out_t: dtypeOf(ops.out) }),
    entryPoint: "forward",
    buffers: { 0: all(ops.qkv), 1: all(ops.out), 2: all(ops.lse) },
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
    flops: 2 * s.B * s.NH * s.T * s.T * (s.C / s.NH),
  });
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
  const common = {
    code: typedKernel(flashSrc, {
      qkv_t: dtypeOf(ops.qkv),
      out_t: dtypeOf(ops.out),
      dqkv_t: dtypeOf(ops.dqkv),
    }),
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
  };
  const grads = {
    0: all(ops.qkv),
    2: all(ops.lse),
    3: all(ops.dout),
    4: all(ops.delta),
    5: all(ops.dqkv),
  };
  const flops = 4 * s.B * s.NH * s.T * s.T * (s.C / s.NH);
  return [
    await makeDispatch(rt, {
      ...common,
      name: "flash_attention_backward_delta",
      entryPoint: "backward_delta",
      buffers: { 1: all(ops.out), 3: all(ops.dout), 4: all(ops.delta) },
    }),
    await makeDispatch(rt, {
      ...common,
      name: "flash_attention_backward_dq",
      entryPoint: "backward_dq",
      buffers: grads,
      flops,
    }),
    await makeDispatch(rt, {
      ...common,
      name: "flash_attention_backward_dkv",
      entryPoint: "backward_dkv",
      buffers: grads,
      flops,
    }),
  ];
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
