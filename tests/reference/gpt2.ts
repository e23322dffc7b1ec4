/**
 * Plain float64 CPU reference of GPT-2: forward (loss) and backward (every
 * parameter's gradient), written for clarity, not speed (llm.c's CPU code is
 * the model). Parameters use the same names and shapes as src/model/params.ts;
 * wte has V rows here (no padding). A config with `bias: false` has no bias tensors
 * (nanoGPT's bias=False): its Linear and LayerNorm layers add none.
 *
 * @module
 */

import type { GPT2Config } from "../../src/model/config.ts";
import { parameterShapes } from "../../src/model/params.ts";

/** Parameters (or gradients) by Hugging Face name, float64. */
export type RefParams = Map<string, Float64Array>;

/** Zero tensors of every parameter's shape (wte unpadded). */
export function refZeros(cfg: GPT2Config): RefParams {
  const out: RefParams = new Map();
  for (const { name, shape } of parameterShapes(cfg)) {
    const n = name === "wte.weight" ? cfg.vocabSize * cfg.nEmbd : shape.reduce((a, b) => a * b);
    out.set(name, new Float64Array(n));
  }
  return out;
}

const GELU_S = Math.sqrt(2 / Math.PI);

/** GPT-2's tanh GELU. */
export function gelu(x: number): number {
  return 0.5 * x * (1 + Math.tanh(GELU_S * (x + 0.044715 * x ** 3)));
}

/** d gelu(x) / dx */
export function geluGrad(x: number): number {
  const th = Math.tanh(GELU_S * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * GELU_S * (1 + 3 * 0.044715 * x * x);
}

// out [N, OC] = inp [N, C] · w [C, OC] + b
/** See the kernel of the same name. */
export function linear(
  inp: Float64Array,
  w: Float64Array,
  b: Float64Array | null,
  N: number,
  C: number,
  OC: number,
) {
  const out = new Float64Array(N * OC);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < OC; o++) {
      let s = b ? b[o] : 0;
      for (let c = 0; c < C; c++) s += inp[n * C + c] * w[c * OC + o];
      out[n * OC + o] = s;
    }
  }
  return out;
}

/** See the kernel of the same name. */
export function linearBack(
  dout: Float64Array,
  inp: Float64Array,
  w: Float64Array,
  dw: Float64Array,
  db: Float64Array | null,
  N: number,
  C: number,
  OC: number,
) {
  const dinp = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < OC; o++) {
      const d = dout[n * OC + o];
      if (db) db[o] += d;
      for (let c = 0; c < C; c++) {
        dinp[n * C + c] += d * w[c * OC + o];
        dw[c * OC + o] += d * inp[n * C + c];
      }
    }
  }
  return dinp;
}

/** See the kernel of the same name. */
export function layernorm(
  inp: Float64Array,
  w: Float64Array,
  b: Float64Array | null,
  N: number,
  C: number,
) {
  const out = new Float64Array(N * C), mean = new Float64Array(N), rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let m = 0;
    for (let c = 0; c < C; c++) m += inp[n * C + c];
    m /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (inp[n * C + c] - m) ** 2;
    const r = 1 / Math.sqrt(v / C + 1e-5);
    for (let c = 0; c < C; c++) out[n * C + c] = (inp[n * C + c] - m) * r * w[c] + (b ? b[c] : 0);
    mean[n] = m;
    rstd[n] = r;
  }
  return { out, mean, rstd };
}

/** See the kernel of the same name. */
export function layernormBack(
  dout: Float64Array,
  inp: Float64Array,
  w: Float64Array,
  mean: Float64Array,
  rstd: Float64Array,
  dinp: Float64Array,
  dw: Float64Array,
  db: Float64Array | null,
  N: number,
  C: number,
) {
  for (let n = 0; n < N; n++) {
    let dm = 0, dnm = 0;
    for (let c = 0; c < C; c++) {
      const norm = (inp[n * C + c] - mean[n]) * rstd[n];
      const dnorm = w[c] * dout[n * C + c];
      dm += dnorm;
      dnm += dnorm * norm;
    }
    dm /= C;
    dnm /= C;
    for (let c = 0; c < C; c++) {
      const norm = (inp[n * C + c] - mean[n]) * rstd[n];
      const dnorm = w[c] * dout[n * C + c];
      if (db) db[c] += dout[n * C + c];
      dw[c] += norm * dout[n * C + c];
      dinp[n * C + c] += (dnorm - dm - norm * dnm) * rstd[n];
    }
  }
}

// qkv [B, T, 3C] -> out [B, T, C], att [B, NH, T, T]
/** See the kernel of the same name. */
export function attention(qkv: Float64Array, B: number, T: number, C: number, NH: number) {
  const HS = C / NH, scale = 1 / Math.sqrt(HS);
  const out = new Float64Array(B * T * C), att = new Float64Array(B * NH * T * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < NH; h++) {
        const q = (b * T + t) * 3 * C + h * HS, arow = ((b * NH + h) * T + t) * T;
        let max = -Infinity;
        for (let t2 = 0; t2 <= t; t2++) {
          const k = (b * T + t2) * 3 * C + C + h * HS;
          let s = 0;
          for (let i = 0; i < HS; i++) s += qkv[q + i] * qkv[k + i];
          att[arow + t2] = s * scale;
          max = Math.max(max, s * scale);
        }
        let sum = 0;
        for (let t2 = 0; t2 <= t; t2++) {
          att[arow + t2] = Math.exp(att[arow + t2] - max);
          sum += att[arow + t2];
        }
        for (let t2 = 0; t2 <= t; t2++) att[arow + t2] /= sum;
        for (let i = 0; i < HS; i++) {
          let s = 0;
          for (let t2 = 0; t2 <= t; t2++) {
            s += att[arow + t2] * qkv[(b * T + t2) * 3 * C + 2 * C + h * HS + i];
          }
          out[(b * T + t) * C + h * HS + i] = s;
        }
      }
    }
  }
  return { out, att };
}

/** See the kernel of the same name. */
export function attentionBack(
  dout: Float64Array,
  qkv: Float64Array,
  att: Float64Array,
  B: number,
  T: number,
  C: number,
  NH: number,
) {
  const HS = C / NH, scale = 1 / Math.sqrt(HS);
  const dqkv = new Float64Array(B * T * 3 * C);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < NH; h++) {
        const arow = ((b * NH + h) * T + t) * T, d = (b * T + t) * C + h * HS;
        const datt = new Float64Array(T);
        for (let t2 = 0; t2 <= t; t2++) {
          const v = (b * T + t2) * 3 * C + 2 * C + h * HS;
          for (let i = 0; i < HS; i++) {
            datt[t2] += dout[d + i] * qkv[v + i];
            dqkv[v + i] += att[arow + t2] * dout[d + i];
          }
        }
        let dot = 0;
        for (let t2 = 0; t2 <= t; t2++) dot += att[arow + t2] * datt[t2];
        const q = (b * T + t) * 3 * C + h * HS;
        for (let t2 = 0; t2 <= t; t2++) {
          const dpre = att[arow + t2] * (datt[t2] - dot) * scale;
          const k = (b * T + t2) * 3 * C + C + h * HS;
          for (let i = 0; i < HS; i++) {
            dqkv[q + i] += dpre * qkv[k + i];
            dqkv[k + i] += dpre * qkv[q + i];
          }
        }
      }
    }
  }
  return dqkv;
}

/** Result of {@linkcode gpt2Reference}. */
export interface RefResult {
  loss: number;
  /** Per-position losses [B*T]. */
  losses: Float64Array;
  /** Logits [B*T, V] (before the classifier). */
  logits: Float64Array;
  grads?: RefParams;
}

/**
 * Forward pass (mean cross-entropy over B*T positions) and, with `backward`,
 * the gradient of that mean loss with respect to every parameter.
 */
export function gpt2Reference(
  cfg: GPT2Config,
  params: RefParams,
  tokens: ArrayLike<number>,
  targets: ArrayLike<number>,
  B: number,
  T: number,
  backward = false,
): RefResult {
  const { nLayer: L, nHead: NH, nEmbd: C, vocabSize: V } = cfg;
  const N = B * T;
  const P = (name: string) => params.get(name)!;
  // A model without biases (config bias: false) has no bias tensors: layers add nothing.
  const Pb = (name: string) => params.get(name) ?? null;
  // encoder
  const wte = P("wte.weight"), wpe = P("wpe.weight");
  const encoded = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      encoded[n * C + c] = wte[tokens[n] * C + c] + wpe[(n % T) * C + c];
    }
  }
  type Layer = Record<string, Float64Array>;
  const acts: Layer[] = [];
  let residual = encoded;
  for (let l = 0; l < L; l++) {
    const h = (s: string) => P(`h.${l}.${s}`);
    const hb = (s: string) => Pb(`h.${l}.${s}`);
    const ln1 = layernorm(residual, h("ln_1.weight"), hb("ln_1.bias"), N, C);
    const qkv = linear(ln1.out, h("attn.c_attn.weight"), hb("attn.c_attn.bias"), N, C, 3 * C);
    const at = attention(qkv, B, T, C, NH);
    const proj = linear(at.out, h("attn.c_proj.weight"), hb("attn.c_proj.bias"), N, C, C);
    const res2 = residual.map((x, i) => x + proj[i]);
    const ln2 = layernorm(res2, h("ln_2.weight"), hb("ln_2.bias"), N, C);
    const fch = linear(ln2.out, h("mlp.c_fc.weight"), hb("mlp.c_fc.bias"), N, C, 4 * C);
    const geluOut = fch.map(gelu);
    const fcproj = linear(geluOut, h("mlp.c_proj.weight"), hb("mlp.c_proj.bias"), N, 4 * C, C);
    const res3 = res2.map((x, i) => x + fcproj[i]);
    acts.push({
      residual,
      ln1: ln1.out,
      ln1Mean: ln1.mean,
      ln1Rstd: ln1.rstd,
      qkv,
      atty: at.out,
      att: at.att,
      res2,
      ln2: ln2.out,
      ln2Mean: ln2.mean,
      ln2Rstd: ln2.rstd,
      fch,
      gelu: geluOut,
    });
    residual = res3;
  }
  const lnf = layernorm(residual, P("ln_f.weight"), Pb("ln_f.bias"), N, C);
  // logits = lnf · wteᵀ
  const logits = new Float64Array(N * V);
  for (let n = 0; n < N; n++) {
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += lnf.out[n * C + c] * wte[v * C + c];
      logits[n * V + v] = s;
    }
  }
  const losses = new Float64Array(N);
  const probs = new Float64Array(N * V);
  for (let n = 0; n < N; n++) {
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[n * V + v]);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[n * V + v] - max);
    for (let v = 0; v < V; v++) probs[n * V + v] = Math.exp(logits[n * V + v] - max) / sum;
    losses[n] = Math.log(sum) + max - logits[n * V + targets[n]];
  }
  const loss = losses.reduce((a, b) => a + b, 0) / N;
  if (!backward) return { loss, losses, logits };

  // ---- backward
  const grads = refZeros(cfg);
  const G = (name: string) => grads.get(name)!;
  const Gb = (name: string) => grads.get(name) ?? null;
  const dlogits = probs.map((p) => p / N);
  for (let n = 0; n < N; n++) dlogits[n * V + targets[n]] -= 1 / N;
  const dlnf = new Float64Array(N * C);
  const dwte = G("wte.weight");
  for (let n = 0; n < N; n++) {
    for (let v = 0; v < V; v++) {
      const d = dlogits[n * V + v];
      for (let c = 0; c < C; c++) {
        dlnf[n * C + c] += d * wte[v * C + c];
        dwte[v * C + c] += d * lnf.out[n * C + c];
      }
    }
  }
  const dres = new Float64Array(N * C);
  layernormBack(
    dlnf,
    residual,
    P("ln_f.weight"),
    lnf.mean,
    lnf.rstd,
    dres,
    G("ln_f.weight"),
    Gb("ln_f.bias"),
    N,
    C,
  );
  for (let l = L - 1; l >= 0; l--) {
    const a = acts[l];
    const h = (s: string) => P(`h.${l}.${s}`);
    const g = (s: string) => G(`h.${l}.${s}`);
    const gb = (s: string) => Gb(`h.${l}.${s}`);
    const dgelu = linearBack(
      dres,
      a.gelu,
      h("mlp.c_proj.weight"),
      g("mlp.c_proj.weight"),
      gb("mlp.c_proj.bias"),
      N,
      4 * C,
      C,
    );
    const dfch = dgelu.map((d, i) => d * geluGrad(a.fch[i]));
    const dln2 = linearBack(
      dfch,
      a.ln2,
      h("mlp.c_fc.weight"),
      g("mlp.c_fc.weight"),
      gb("mlp.c_fc.bias"),
      N,
      C,
      4 * C,
    );
    layernormBack(
      dln2,
      a.res2,
      h("ln_2.weight"),
      a.ln2Mean,
      a.ln2Rstd,
      dres,
      g("ln_2.weight"),
      gb("ln_2.bias"),
      N,
      C,
    );
    const datty = linearBack(
      dres,
      a.atty,
      h("attn.c_proj.weight"),
      g("attn.c_proj.weight"),
      gb("attn.c_proj.bias"),
      N,
      C,
      C,
    );
    const dqkv = attentionBack(datty, a.qkv, a.att, B, T, C, NH);
    const dln1 = linearBack(
      dqkv,
      a.ln1,
      h("attn.c_attn.weight"),
      g("attn.c_attn.weight"),
      gb("attn.c_attn.bias"),
      N,
      C,
      3 * C,
    );
    layernormBack(
      dln1,
      a.residual,
      h("ln_1.weight"),
      a.ln1Mean,
      a.ln1Rstd,
      dres,
      g("ln_1.weight"),
      gb("ln_1.bias"),
      N,
      C,
    );
  }
  const dwpe = G("wpe.weight");
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      dwte[tokens[n] * C + c] += dres[n * C + c];
      dwpe[(n % T) * C + c] += dres[n * C + c];
    }
  }
  return { loss, losses, logits, grads };
}
