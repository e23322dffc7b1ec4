/**
 * llm.c model files (`gpt2_124M.bin` and the checkpoints llm.c writes): a header
 * of 256 little-endian int32 (magic 20240326; version 3 = fp32 or 5 = bf16;
 * maxT, V, L, NH, C, padded V), then every parameter in llm.c's fixed order,
 * matrices as [out, in] (PyTorch nn.Linear) and wte padded to Vp rows:
 *
 *   wte [Vp,C]  wpe [maxT,C]  ln1w [L,C]  ln1b [L,C]  qkvw [L,3C,C]  qkvb [L,3C]
 *   attprojw [L,C,C]  attprojb [L,C]  ln2w [L,C]  ln2b [L,C]  fcw [L,4C,C]  fcb [L,4C]
 *   fcprojw [L,C,4C]  fcprojb [L,C]  lnfw [C]  lnfb [C]
 *
 * Tensors here are Hugging Face's (Conv1D [in, out], wte [V, C]), as the rest
 * of src/io uses them, so that an llm.c file loads wherever a checkpoint does.
 *
 * @module
 */

import { type GPT2Config, validateConfig } from "../model/config.ts";
import type { LoadedCheckpoint } from "./checkpoint.ts";
import { encodeSafetensors, parseSafetensors, type TensorToWrite } from "./safetensors.ts";

/** The first header int of an llm.c model file. */
export const LLMC_MAGIC = 20240326;
/** Header ints (256 x int32 = 1024 bytes). */
const HEADER_INTS = 256;

/** What an llm.c model file holds. */
export interface LlmcModel {
  /** The architecture the header gives (maxT as nCtx). */
  config: GPT2Config;
  /** 3: fp32 parameters; 5: bf16. */
  version: 3 | 5;
  /** Rows of wte in the file (V rounded up, 50304 for GPT-2). */
  paddedVocab: number;
  /** Every parameter under its Hugging Face name and shape, as float32. */
  tensors: TensorToWrite[];
}

/** One llm.c parameter: its place in the file and its Hugging Face tensors. */
interface Slot {
  /** Elements per layer (or in all, for the unlayered ones). */
  size: number;
  /** HF name of layer l's tensor (l is ignored when `layered` is false). */
  name: (l: number) => string;
  layered: boolean;
  /** llm.c's [out, in] matrix: rows and columns as stored (transposed for HF). */
  matrix?: [number, number];
}

function slots(cfg: GPT2Config, Vp: number): Slot[] {
  const C = cfg.nEmbd;
  const h = (s: string) => (l: number) => `h.${l}.${s}`;
  const one = (size: number, name: string): Slot => ({ size, name: () => name, layered: false });
  const per = (size: number, s: string, matrix?: [number, number]): Slot => ({
    size,
    name: h(s),
    layered: true,
    matrix,
  });
  return [
    one(Vp * C, "wte.weight"),
    one(cfg.nCtx * C, "wpe.weight"),
    per(C, "ln_1.weight"),
    per(C, "ln_1.bias"),
    per(3 * C * C, "attn.c_attn.weight", [3 * C, C]),
    per(3 * C, "attn.c_attn.bias"),
    per(C * C, "attn.c_proj.weight", [C, C]),
    per(C, "attn.c_proj.bias"),
    per(C, "ln_2.weight"),
    per(C, "ln_2.bias"),
    per(4 * C * C, "mlp.c_fc.weight", [4 * C, C]),
    per(4 * C, "mlp.c_fc.bias"),
    per(4 * C * C, "mlp.c_proj.weight", [C, 4 * C]),
    per(C, "mlp.c_proj.bias"),
    one(C, "ln_f.weight"),
    one(C, "ln_f.bias"),
  ];
}

/** Parameters in an llm.c file of this config (wte padded to `Vp` rows). */
function fileParams(cfg: GPT2Config, Vp: number): number {
  return slots(cfg, Vp).reduce((n, s) => n + s.size * (s.layered ? cfg.nLayer : 1), 0);
}

/** [rows, cols] row-major to [cols, rows]. */
function transpose(a: Float32Array, rows: number, cols: number): Float32Array<ArrayBuffer> {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  }
  return out;
}

const bf16ToF32 = (bits: Uint16Array): Float32Array<ArrayBuffer> => {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return new Float32Array(u.buffer);
};

/** float32 to bf16 bits, rounding to nearest even (as torch's .to(torch.bfloat16)). */
function f32ToBf16(a: Float32Array): Uint16Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const x = u[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      out[i] = (x >>> 16) | 0x40; // NaN stays NaN
    } else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/**
 * Parses an llm.c model file; a wrong magic, version or size is an Error naming
 * the file and the header field.
 *
 * @example
 * ```ts
 * const m = decodeLlmc(await Deno.readFile("gpt2_124M.bin"), "gpt2_124M.bin");
 * console.log(m.config.nLayer, m.version); // 12 3
 * ```
 */
export function decodeLlmc(bytes: Uint8Array, path: string): LlmcModel {
  if (bytes.length < HEADER_INTS * 4) {
    throw new Error(
      `${path}: ${bytes.length} bytes is shorter than an llm.c header (1024 bytes): not an ` +
        "llm.c model file",
    );
  }
  const head = new Int32Array(bytes.slice(0, HEADER_INTS * 4).buffer);
  if (head[0] !== LLMC_MAGIC) {
    throw new Error(
      `${path}: header int 0 (magic) is ${head[0]}, llm.c model files have ${LLMC_MAGIC}` +
        (head[0] === 20240520 ? " (this is an llm.c token shard: use it with --data)" : ""),
    );
  }
  const version = head[1];
  if (version !== 3 && version !== 5) {
    throw new Error(
      `${path}: header int 1 (version) is ${version}; this reads version 3 (fp32) and 5 (bf16)`,
    );
  }
  const [maxT, V, L, NH, C, Vp] = [head[2], head[3], head[4], head[5], head[6], head[7]];
  let config: GPT2Config;
  try {
    config = validateConfig({ nLayer: L, nHead: NH, nEmbd: C, nCtx: maxT, vocabSize: V });
  } catch (e) {
    throw new Error(`${path}: header ints 2-6 (maxT, V, L, NH, C): ${(e as Error).message}`);
  }
  if (!(Number.isInteger(Vp) && Vp >= V)) {
    throw new Error(`${path}: header int 7 (padded vocab) is ${Vp}, below the vocabulary ${V}`);
  }
  const n = fileParams(config, Vp), width = version === 3 ? 4 : 2;
  const want = HEADER_INTS * 4 + n * width;
  if (bytes.length !== want) {
    throw new Error(
      `${path}: ${bytes.length} bytes, but the header (maxT ${maxT}, V ${V}, L ${L}, NH ${NH}, ` +
        `C ${C}, Vp ${Vp}, version ${version}) needs ${want}: the file is truncated or damaged`,
    );
  }
  const body = bytes.slice(HEADER_INTS * 4);
  const all = version === 3
    ? new Float32Array(body.buffer)
    : bf16ToF32(new Uint16Array(body.buffer));
  const tensors: TensorToWrite[] = [];
  let at = 0;
  for (const s of slots(config, Vp)) {
    for (let l = 0; l < (s.layered ? L : 1); l++) {
      let data = all.subarray(at, at + s.size);
      at += s.size;
      let shape = [s.size];
      if (s.matrix) {
        data = transpose(data, s.matrix[0], s.matrix[1]);
        shape = [s.matrix[1], s.matrix[0]];
      } else if (s.name(l) === "wte.weight") {
        data = data.subarray(0, V * C);
        shape = [V, C];
      } else if (s.name(l) === "wpe.weight") shape = [maxT, C];
      tensors.push({ name: s.name(l), shape, data: new Float32Array(data) });
    }
  }
  return { config, version, paddedVocab: Vp, tensors };
}

/**
 * An llm.c model file of `config` from Hugging Face tensors (`tensor(name)`
 * gives one as float32); wte is padded with zero rows to a multiple of 128.
 *
 * @example
 * ```ts ignore
 * const bytes = encodeLlmc(model.config, (name) => weights.get(name)!, { dtype: "bf16" });
 * await Deno.writeFile("model.bin", bytes);
 * ```
 */
export function encodeLlmc(
  config: GPT2Config,
  tensor: (name: string) => Float32Array,
  options: { dtype?: "fp32" | "bf16" } = {},
): Uint8Array<ArrayBuffer> {
  const C = config.nEmbd, V = config.vocabSize, L = config.nLayer;
  const Vp = Math.ceil(V / 128) * 128;
  const all = new Float32Array(fileParams(config, Vp));
  let at = 0;
  for (const s of slots(config, Vp)) {
    for (let l = 0; l < (s.layered ? L : 1); l++) {
      const name = s.name(l);
      const t = tensor(name);
      const size = name === "wte.weight" ? V * C : s.size;
      if (t.length !== size) {
        throw new RangeError(`${name} has ${t.length} values; this config needs ${size}`);
      }
      // HF Conv1D [in, out] is llm.c's [out, in] transposed.
      all.set(s.matrix ? transpose(t, s.matrix[1], s.matrix[0]) : t, at);
      at += s.size; // wte's padding rows stay zero
    }
  }
  const bf16 = options.dtype === "bf16";
  const head = new Int32Array(HEADER_INTS);
  head.set([LLMC_MAGIC, bf16 ? 5 : 3, config.nCtx, V, L, config.nHead, C, Vp]);
  const body = bf16 ? new Uint8Array(f32ToBf16(all).buffer) : new Uint8Array(all.buffer);
  const out = new Uint8Array(HEADER_INTS * 4 + body.length);
  out.set(new Uint8Array(head.buffer), 0);
  out.set(body, HEADER_INTS * 4);
  return out;
}

/**
 * Reads an llm.c model file as a checkpoint (config and Hugging Face tensors;
 * no optimizer or trainer state), so that --init, eval and sample take one.
 */
export async function loadLlmcCheckpoint(path: string): Promise<LoadedCheckpoint> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
  const m = decodeLlmc(bytes, path);
  return {
    dir: path,
    config: m.config,
    // Re-encoded in memory: its byte positions are not the .bin's, so they are not given.
    model: { ...parseSafetensors(encodeSafetensors(m.tensors), path), dataOffset: undefined },
  };
}
