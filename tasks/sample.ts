/**
 * `deno task sample CHECKPOINT [flags]`: text generation with a KV cache,
 * streamed to stdout.
 *
 * @module
 */

import {
  numberFlag,
  type NumberRule,
  parseCheckpointArgs,
  precisionFlag,
  runMain,
} from "./_cli.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import { loadCheckpoint } from "../src/io/checkpoint.ts";
import { loadTensors } from "../src/model/weights.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { Decoder } from "../src/model/decode.ts";
import { generateCached } from "../src/eval/generate.ts";
import { decodeTokens, encodeOrdinary, EOT } from "../src/data/tokenizer.ts";

const HELP = `Usage: deno task sample CHECKPOINT_DIR [flags]

Generates text from a GPT-2 checkpoint (ours or Hugging Face's) and streams it to stdout.

  --prompt TEXT        text to continue (default: start of a document, token 50256)
  --max-tokens N       tokens to generate (default 128)
  --temperature X      0 = greedy (default 0.8)
  --top-k K            sample from the K most likely tokens (default 40; 0 = all)
  --top-p P            nucleus sampling: the smallest set with probability P (default 1)
  --seed S             sampling seed (default 0)
  --ctx T              context window in tokens (default: the model's n_positions, at most
                       1024; above n_positions is an error). A longer prompt keeps its last T
                       tokens, with a warning
  --stop-at-eot        stop at the end-of-text token
  --precision fp32|fp16   fp16: f16 activations, KV cache and weights where the adapter has
                       shader-f16 (default fp32)
  -h, --help           this text`;

export async function main(argv: string[]): Promise<number> {
  const args = parseCheckpointArgs(argv, "sample", {
    strings: ["prompt", "max-tokens", "temperature", "top-k", "top-p", "seed", "ctx"],
    booleans: ["stop-at-eot"],
  });
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  const { v, dir } = args;
  const num = (k: string, d: number, rule: NumberRule = "non-negative-integer") =>
    numberFlag(v, k, d, rule);
  const opts = {
    maxTokens: num("max-tokens", 128),
    temperature: num("temperature", 0.8, "non-negative"),
    topK: num("top-k", 40),
    topP: num("top-p", 1, "probability"),
    seed: num("seed", 0),
    stopToken: v["stop-at-eot"] ? EOT : undefined,
  };
  const ck = await loadCheckpoint(dir, { weightsOnly: true });
  for (const line of ck.notices ?? []) console.error(`notice: ${line}`);
  const nCtx = ck.config.nCtx;
  const T = num("ctx", Math.min(nCtx, 1024), "positive-integer");
  if (T > nCtx) {
    throw new TypeError(
      `--ctx ${T} is above the model's context of ${nCtx} tokens (n_positions of ${dir}): ` +
        `give --ctx ${nCtx} or less`,
    );
  }
  const rt = await createRuntime();
  const weights = await GPT2.create(rt, ck.config, {
    B: 1,
    T: 1,
    seed: null,
    inference: true,
    precision: precisionFlag(v),
  });
  loadTensors(ck.model, weights);
  const dec = await Decoder.create(rt, weights, T);
  try {
    const prompt = v.prompt ? encodeOrdinary(String(v.prompt)) : [EOT];
    if (prompt.length === 0) throw new TypeError("--prompt encodes to no tokens: give some text");
    if (prompt.length > T) {
      // As Hugging Face's generate does: keep the end, the part the continuation follows.
      const limit = T === nCtx
        ? `the model's context of ${T}`
        : `--ctx ${T}${v.ctx === undefined ? " (the default)" : ""}`;
      console.error(
        `warning: the prompt is ${prompt.length} tokens, longer than ${limit}: only its last ` +
          `${T} tokens are used` + (T < nCtx ? ` (the model allows --ctx up to ${nCtx})` : ""),
      );
    }
    if (v.prompt) await Deno.stdout.write(new TextEncoder().encode(String(v.prompt)));
    // Decode the whole continuation each time and print what is new, so that
    // characters split across tokens come out whole.
    const ids: number[] = [];
    let shown = "";
    const t0 = performance.now();
    await generateCached(dec, prompt, opts, async (tok) => {
      ids.push(tok);
      const text = decodeTokens(ids);
      if (!text.endsWith("\uFFFD")) {
        await Deno.stdout.write(new TextEncoder().encode(text.slice(shown.length)));
        shown = text;
      }
    });
    const s = (performance.now() - t0) / 1000;
    console.log();
    console.error(
      `[${ids.length} tokens in ${s.toFixed(1)} s, ${(ids.length / s).toFixed(1)} tokens/s]`,
    );
  } finally {
    dec.destroy();
    weights.destroy();
  }
  return 0;
}

if (import.meta.main) await runMain(main);
