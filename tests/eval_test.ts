import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import type { GPT2Config } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { Decoder } from "../src/model/decode.ts";
import { generate, generateCached } from "../src/eval/generate.ts";
import {
  harnessPreprocess,
  type HellaSwagItem,
  itemRows,
  parseHellaSwagJsonl,
  parseHellaSwagText,
  predict,
  scoreItems,
  summarize,
} from "../src/eval/hellaswag.ts";
import { gpt2Reference, type RefParams } from "./reference/gpt2.ts";
import {
  assertAllClose,
  BIG_FLOATS,
  damageTensor,
  gpuTest,
  NAN_BYTES,
  rng,
  runTask,
} from "./_harness.ts";
import { main as evalMain } from "../tasks/eval.ts";
import { main as sampleMain } from "../tasks/sample.ts";
import { main as exportMain } from "../tasks/export.ts";

const CFG: GPT2Config = { nLayer: 1, nHead: 2, nEmbd: 16, nCtx: 64, vocabSize: 50257 };

/** Our own fixture in rowanz/hellaswag's jsonl format. */
const FIXTURE = [
  {
    ind: 4,
    activity_label: "Removing ice from car",
    ctx_a:
      "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
    ctx_b: "then",
    label: 3,
    endings: [
      ", the man adds wax to the windshield and cuts it.",
      ", a person board a ski lift, while two men supporting the head of the person.",
      ", the man puts on a christmas coat, knitted with netting.",
      ", the man continues removing the snow on his car.",
    ],
  },
  {
    ind: 96,
    activity_label: "Home and Garden",
    ctx_a: "[header] How to grow a lemon tree [title] Choose a sunny spot.",
    ctx_b: "[step] Lemons need",
    label: 1,
    endings: [
      "to be [substeps] watered every hour.",
      "at least eight hours of sun a day.",
      "a garage  to live in.",
      "nothing at all [title] ever.",
    ],
  },
  {
    ind: 7,
    activity_label: "Baking cookies",
    ctx_a: "A woman is in a kitchen with flour on the counter.",
    ctx_b: "she",
    label: 0,
    endings: [
      "mixes the dough and shapes it into balls.",
      "drives a truck across the desert.",
      "plays the violin on a stage.",
      "swims in a lake.",
    ],
  },
].map((o) => ({ ...o, ctx: `${o.ctx_a} ${o.ctx_b}` }));

const jsonl = FIXTURE.map((o) => JSON.stringify(o)).join("\n") + "\n";
/** The same items in llama.cpp's 6-line format. */
const text =
  FIXTURE.map((o) => [`${o.activity_label}: ${o.ctx}`, String(o.label), ...o.endings].join("\n"))
    .join("\n") + "\n";

Deno.test("jsonl and text readers agree on the fields they share", () => {
  const a = parseHellaSwagJsonl(jsonl, "fixture.jsonl"),
    b = parseHellaSwagText(text, "fixture.txt");
  equal(a.length, 3);
  const shared = (x: HellaSwagItem) => [x.activityLabel, x.ctx, x.label, x.endings];
  deepEqual(a.map(shared), b.map(shared));
  equal(a[1].ctxB, "[step] Lemons need");
});

Deno.test("a malformed line names the file and the line", () => {
  const bad = jsonl.split("\n");
  bad[1] = "{ not json";
  throws(() => parseHellaSwagJsonl(bad.join("\n"), "val.jsonl"), /val\.jsonl:2: not valid JSON/);
  throws(
    () => parseHellaSwagJsonl('{"ctx": "x", "endings": ["a"], "label": 0}', "val.jsonl"),
    /val\.jsonl:1: expected fields ctx .*endings \(4 strings\)/,
  );
  const badText = text.split("\n");
  badText[7] = "7";
  throws(
    () => parseHellaSwagText(badText.join("\n"), "val.txt"),
    /val\.txt:8: gold index "7" is not 0-3/,
  );
  throws(
    () => parseHellaSwagText("a\nb\n", "short.txt"),
    /short\.txt:2: 2 lines is not a multiple of 6/,
  );
});

Deno.test("lm-evaluation-harness preprocessing", () => {
  equal(
    harnessPreprocess(" How to grow [title] Choose a spot.  [step] Water it. "),
    "How to grow. Choose a spot.  Water it.", // one pass of "  " -> " ", as the harness does,
  );
  const items = parseHellaSwagJsonl(jsonl, "f.jsonl");
  const rows = itemRows(items[1], "harness");
  equal(rows.length, 4);
  const c = itemRows(items[0], "completion");
  // completion style: ending tokens are those of " " + ending
  ok(c[3].end.length > 3);
});

/** The model with larger random weights, so that scores and argmaxes are far apart. */
async function randomModel(
  rt: Parameters<typeof GPT2.create>[0],
  B: number,
  T: number,
  seed: number,
) {
  const model = await GPT2.create(rt, CFG, { B, T, seed: null, inference: true });
  const u = rng(seed);
  for (const t of model.layout.tensors) {
    const n = t.name === "wte.weight" ? CFG.vocabSize * CFG.nEmbd : t.size;
    const isLnW = /ln_\d\.weight|ln_f\.weight/.test(t.name);
    model.writeTensor(
      t.name,
      Float32Array.from({ length: n }, () => (isLnW ? 1 : 0) + (u() - 0.5) * 0.8),
    );
  }
  return model;
}

gpuTest("HellaSwag scores match the float64 model and do not depend on batching", async (rt) => {
  const items = parseHellaSwagJsonl(jsonl, "f.jsonl");
  const one = await randomModel(rt, 8, 64, 1);
  const three = await GPT2.create(rt, CFG, {
    B: 24,
    T: 64,
    inference: true,
    sharedParams: one,
  });
  try {
    const alone = [];
    for (const it of items) alone.push(...await scoreItems(one, [it]));
    const batched = await scoreItems(three, items);
    // Same predictions and (nearly) the same numbers alone or in a batch.
    for (let i = 0; i < items.length; i++) {
      for (const style of ["completion", "harness"] as const) {
        deepEqual(predict(batched[i][style], style), predict(alone[i][style], style));
        assertAllClose(batched[i][style].sum, alone[i][style].sum, { rtol: 1e-5, atol: 1e-5 });
      }
    }
    // The float64 reference scores every ending the same way.
    const params: RefParams = new Map();
    for (const t of one.layout.tensors) {
      params.set(t.name, Float64Array.from(await one.readTensor(t.name)));
    }
    for (let i = 0; i < items.length; i++) {
      for (const style of ["completion", "harness"] as const) {
        const want = itemRows(items[i], style).map((r) => {
          const seq = [...r.ctx, ...r.end];
          const ref = gpt2Reference(CFG, params, seq.slice(0, -1), seq.slice(1), 1, seq.length - 1);
          return ref.losses.slice(r.ctx.length - 1).reduce((a, b) => a + b, 0);
        });
        assertAllClose(alone[i][style].sum, want, {
          rtol: 1e-4,
          atol: 1e-4,
          label: `item ${i} ${style}`,
        });
        const refPred = predict({
          ...alone[i][style],
          sum: want,
          mean: want.map((s, e) => s / itemRows(items[i], style)[e].end.length),
        }, style);
        deepEqual(predict(alone[i][style], style), refPred);
      }
    }
    const result = summarize(items, batched);
    equal(result.n, 3);
    ok(result.completion.acc >= 0 && result.completion.acc <= 1);
  } finally {
    three.destroy();
    one.destroy();
  }
});

gpuTest("greedy sampling gives the same tokens with and without the KV cache", async (rt) => {
  const model = await randomModel(rt, 1, 24, 2);
  const dec = await Decoder.create(rt, model, 24);
  try {
    const prompt = [464, 2068, 7586, 21831];
    const full = await generate(model, prompt, { maxTokens: 26, temperature: 0 });
    const cached = await generateCached(dec, prompt, { maxTokens: 26, temperature: 0 });
    equal(full.length, 26); // runs past the 24-token window: both slide
    deepEqual(cached.slice(0, 20), full.slice(0, 20));
    // Logits agree token by token while the window has room.
    let logits = await dec.start(prompt);
    const seq = [...prompt];
    for (let i = 0; i < 6; i++) {
      const window = new Array(24).fill(0);
      seq.forEach((t, j) => (window[j] = t));
      await model.forward(window);
      assertAllClose(logits, await model.readLogits(seq.length - 1, 1), {
        rtol: 1e-4,
        atol: 1e-4,
        label: `step ${i}`,
      });
      seq.push(full[i]);
      logits = await dec.next(full[i]);
    }
  } finally {
    dec.destroy();
    model.destroy();
  }
});

Deno.test("sampling: temperature 0 is argmax; top-k and top-p restrict the choice", async () => {
  const { sampleToken } = await import("../src/eval/generate.ts");
  const logits = Float32Array.from([0, 5, 1, 4.9, -2]);
  const u = rng(1);
  equal(sampleToken(logits, { temperature: 0 }, u), 1);
  for (let i = 0; i < 50; i++) ok([1, 3].includes(sampleToken(logits, { topK: 2 }, u)));
  for (let i = 0; i < 50; i++) equal(sampleToken(logits, { topP: 0.3 }, u), 1);
  match(String(sampleToken(logits, { temperature: 1 }, u)), /^[0-4]$/);
});

gpuTest("deno task eval and deno task sample run on a checkpoint directory", async (rt) => {
  const dir = await Deno.makeTempDir();
  const model = await randomModel(rt, 1, 8, 3);
  try {
    const { saveCheckpoint } = await import("../src/io/checkpoint.ts");
    const { encodeModel } = await import("../src/model/weights.ts");
    const ck = await saveCheckpoint(`${dir}/ck`, 1, {
      config: CFG,
      model: await encodeModel(model),
    });
    await Deno.writeTextFile(`${dir}/val.jsonl`, jsonl);
    const run = async (task: string, args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL(`../tasks/${task}.ts`, import.meta.url).pathname, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    };
    const e = await run("eval", [ck, "--hellaswag", `${dir}/val.jsonl`, "--json", `${dir}/r.json`]);
    equal(e.code, 0, e.stderr);
    const r = JSON.parse(await Deno.readTextFile(`${dir}/r.json`));
    equal(r.hellaswag.n, 3);
    for (const k of ["acc", "acc_norm"]) {
      ok(r.hellaswag.completion[k] >= 0 && r.hellaswag.harness[k] <= 1);
    }
    // fp16 (fp32 where the adapter has no shader-f16) scores the same items.
    const h = await run("eval", [ck, "--hellaswag", `${dir}/val.jsonl`, "--precision", "fp16"]);
    equal(h.code, 0, h.stderr);
    equal(JSON.parse(h.stdout).hellaswag.n, 3);
    const badPrecision = await run("eval", [ck, "--precision", "bf16"]);
    equal(badPrecision.code, 2);
    match(badPrecision.stderr, /--precision must be fp32 or fp16, got "bf16"/);
    const s = await run("sample", [
      ck,
      "--prompt",
      "The ship",
      "--max-tokens",
      "5",
      "--temperature",
      "0",
    ]);
    equal(s.code, 0, s.stderr);
    ok(s.stdout.startsWith("The ship"), s.stdout);
    match(s.stderr, /5 tokens in/);
    const bad = await run("sample", [ck, "--tempreature", "1"]);
    equal(bad.code, 2);
    match(bad.stderr, /Unknown option '--tempreature'/);
    const missing = await run("eval", [`${dir}/nope`, "--hellaswag", `${dir}/val.jsonl`]);
    equal(missing.code, 1);
    match(missing.stderr, /Not a checkpoint: .*nope does not exist; give a checkpoint directory/);
  } finally {
    model.destroy();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A checkpoint of ours (weights, a small optimizer state, trainer state) under `root`. */
async function savedCheckpoint(rt: Parameters<typeof GPT2.create>[0], root: string) {
  const { saveCheckpoint } = await import("../src/io/checkpoint.ts");
  const { encodeModel } = await import("../src/model/weights.ts");
  const model = await randomModel(rt, 1, 8, 3);
  try {
    return await saveCheckpoint(root, 1, {
      config: CFG,
      model: await encodeModel(model),
      optimizer: [{ name: "m.wte.weight", shape: [4], data: new Float32Array(4) }],
      trainer: { step: 1, optimizer_steps: 1 },
    });
  } finally {
    model.destroy();
  }
}

gpuTest(
  "eval and sample read only the weights, and refuse damaged or non-finite ones",
  async (rt) => {
    const dir = await Deno.makeTempDir();
    try {
      const ck = await savedCheckpoint(rt, `${dir}/run`);
      await Deno.writeTextFile(`${dir}/val.jsonl`, jsonl);
      const hellaswag = ["--hellaswag", `${dir}/val.jsonl`];
      const greedy = ["--prompt", "The ship", "--max-tokens", "3", "--temperature", "0"];
      // A truncated optimizer file does not stop eval or sample: they never read it.
      const opt = await Deno.readFile(`${ck}/optimizer.safetensors`);
      await Deno.writeFile(`${ck}/optimizer.safetensors`, opt.subarray(0, opt.length >> 1));
      equal((await runTask(evalMain, [ck, ...hellaswag])).code, 0);
      equal((await runTask(sampleMain, [ck, ...greedy])).code, 0);

      // 3e4 is finite: only the checksum sees it. Both tasks stop, naming the file.
      await Deno.mkdir(`${dir}/bad`);
      for await (const e of Deno.readDir(ck)) {
        await Deno.copyFile(
          `${ck}/${e.name}`,
          `${dir}/bad/${e.name}`,
        );
      }
      await damageTensor(`${dir}/bad/model.safetensors`, "h.0.mlp.c_fc.weight", BIG_FLOATS);
      const checksum =
        /bad\/model\.safetensors does not match its SHA-256 in checksums\.json .*: the file changed after the checkpoint was saved; use an older checkpoint/;
      match(String((await runTask(sampleMain, [`${dir}/bad`, ...greedy])).error), checksum);
      match(
        String((await runTask(evalMain, [`${dir}/bad`, "--loss", `${dir}/shards`])).error),
        checksum,
      );

      // A Hugging Face directory has no checksums of ours: NaN is still found, and placed.
      await exportMain([ck, "--hf", `${dir}/hf`]);
      const byte = await damageTensor(`${dir}/hf/model.safetensors`, "wte.weight", NAN_BYTES);
      match(
        String((await runTask(evalMain, [`${dir}/hf`, ...hellaswag])).error),
        new RegExp(
          `hf/model\\.safetensors: tensor "wte\\.weight" holds NaN at element 0 \\(\\[0, 0\\], ` +
            `byte ${byte}\\), 16 non-finite value\\(s\\) in all: the file is damaged or its run ` +
            "had diverged; use another checkpoint",
        ),
      );
      // An llm.c file: Infinity as its first weight (wte[0, 0], after the 1024-byte header).
      await exportMain([ck, "--llmc", `${dir}/m.bin`]);
      using f = await Deno.open(`${dir}/m.bin`, { write: true });
      await f.seek(1024, Deno.SeekMode.Start);
      await f.write(new Uint8Array(new Float32Array([Infinity]).buffer));
      match(
        String((await runTask(sampleMain, [`${dir}/m.bin`, ...greedy])).error),
        /m\.bin: tensor "wte\.weight" holds Infinity at element 0 \(\[0, 0\]\), 1 non-finite value\(s\) in all: the file is damaged: use another checkpoint/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "sample: --ctx above the model's context is an error; a long prompt keeps its end",
  async (rt) => {
    const dir = await Deno.makeTempDir();
    try {
      const ck = await savedCheckpoint(rt, dir);
      const over = await runTask(sampleMain, [ck, "--ctx", "100"]);
      ok(over.error instanceof TypeError); // a usage error: exit code 2
      match(
        over.error.message,
        /--ctx 100 is above the model's context of 64 tokens \(n_positions of .*step_00000001\): give --ctx 64 or less/,
      );
      const words = (n: number) => Array.from({ length: n }, (_, i) => ` w${i}`).join("");
      const long = await runTask(sampleMain, [ck, "--prompt", words(80), "--max-tokens", "2"]);
      equal(long.code, 0, String(long.error));
      ok(
        long.stderr.some((l) =>
          /^warning: the prompt is \d+ tokens, longer than the model's context of 64: only its last 64 tokens are used$/
            .test(l)
        ),
        long.stderr.join("\n"),
      );
      const short = await runTask(sampleMain, [
        ck,
        ...["--ctx", "16", "--prompt", words(20), "--max-tokens", "2"],
      ]);
      equal(short.code, 0, String(short.error));
      ok(
        short.stderr.some((l) =>
          /longer than --ctx 16: only its last 16 tokens are used \(the model allows --ctx up to 64\)/
            .test(l)
        ),
        short.stderr.join("\n"),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
