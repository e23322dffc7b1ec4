/**
 * `deno task sample CHECKPOINT [flags]`: text generation with a KV cache,
 * streamed to stdout.
 *
 * @module
 */

import { flagHelp, parseCheckpointArgs, runMain, tableFlags } from "./_cli.ts";
import { SAMPLE_CONFIG } from "../src/eval/config.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import { loadCheckpoint } from "../src/io/checkpoint.ts";
import { loadTensors } from "../src/model/weights.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { Decoder } from "../src/model/decode.ts";
import { generateCached } from "../src/eval/generate.ts";
import { decodeTokens, encodeOrdinary, EOT } from "../src/data/tokenizer.ts";

const HELP = `Usage: deno task sample CHECKPOINT_DIR [flags]

Generates text from a GPT-2 checkpoint (ours or Hugging Face's) and streams it to stdout.
Defaults are the library's (src/eval/config.ts), so generate() samples the same way.

${flagHelp(tableFlags(SAMPLE_CONFIG))}
  -h, --help            this text`;

/** `deno task sample`: parse, load, stream; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const args = parseCheckpointArgs(argv, "sample", SAMPLE_CONFIG);
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  const { config: c, dir } = args;
  const opts = {
    maxTokens: c.maxTokens,
    temperature: c.temperature,
    topK: c.topK,
    topP: c.topP,
    seed: c.seed,
    stopToken: c.stopAtEot ? EOT : undefined,
  };
  const ck = await loadCheckpoint(dir, { weightsOnly: true });
  for (const line of ck.notices ?? []) console.error(`notice: ${line}`);
  const nCtx = ck.config.nCtx;
  const T = c.ctx ?? Math.min(nCtx, 1024);
  if (T > nCtx) {
    throw new TypeError(
      `--ctx ${T} is above the model's context of ${nCtx} tokens (n_positions of ${dir}): ` +
        `give --ctx ${nCtx} or less`,
    );
  }
  const rt = await createRuntime({ backend: c.backend });
  const weights = await GPT2.create(rt, ck.config, {
    B: 1,
    T: 1,
    seed: null,
    inference: true,
    precision: c.precision,
  });
  loadTensors(ck.model, weights);
  const dec = await Decoder.create(rt, weights, T);
  try {
    const prompt = c.prompt ? encodeOrdinary(c.prompt) : [EOT];
    if (prompt.length === 0) throw new TypeError("--prompt encodes to no tokens: give some text");
    if (prompt.length > T) {
      // As Hugging Face's generate does: keep the end, the part the continuation follows.
      const limit = T === nCtx
        ? `the model's context of ${T}`
        : `--ctx ${T}${c.ctx === undefined ? " (the default)" : ""}`;
      console.error(
        `warning: the prompt is ${prompt.length} tokens, longer than ${limit}: only its last ` +
          `${T} tokens are used` + (T < nCtx ? ` (the model allows --ctx up to ${nCtx})` : ""),
      );
    }
    if (c.prompt) await Deno.stdout.write(new TextEncoder().encode(c.prompt));
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
