import { deepEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import { parseTrainArgs } from "../tasks/train.ts";
import { train, type TrainSettings } from "../src/train/trainer.ts";
import { textToShards } from "../src/train/corpus.ts";
import { describeSchedule, lrAt, makeSchedule, parsePiecewise } from "../src/optim/schedule.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import type { GPT2Config } from "../src/model/config.ts";
import { encodeModel, loadTensors } from "../src/model/weights.ts";
import { encodeSafetensors, parseSafetensors, tensorF32 } from "../src/io/safetensors.ts";
import { loadCheckpoint } from "../src/io/checkpoint.ts";
import { gpuTest, hasSharedData } from "./_harness.ts";
import { syntheticText, testTrainConfig } from "./_train_config.ts";

const SMALL: GPT2Config = { nLayer: 2, nHead: 2, nEmbd: 32, nCtx: 64, vocabSize: 50257 };
const shared = new URL("../../shared/data/", import.meta.url);
const hasShakespeare = await hasSharedData("tinyshakespeare.txt");

/** Runs `fn` in a fresh temporary directory holding text.txt (6000 synthetic words). */
async function withTextRun(fn: (dir: string, text: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const text = `${dir}/text.txt`;
    await Deno.writeTextFile(text, syntheticText(6000, 1));
    await fn(dir, text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function baseConfig(out: string, data: string, over: TrainSettings = {}): TrainSettings {
  return testTrainConfig(out, data, {
    model: SMALL,
    totalBatch: 128, // two micro-batches: accumulation is exercised
    valEvery: 4,
    valBatches: 2,
    ...over,
  });
}

const quiet = { logger: { log: () => {} } };

// ---------------------------------------------------------------------------
// schedules

Deno.test("schedules: warmup, cosine, wsd and the reference piecewise run", () => {
  const o = { lr: 1e-3, minLr: 1e-4, warmup: 10, steps: 110 };
  const cos = makeSchedule("cosine", o);
  ok(Math.abs(lrAt(cos, 0) - 1e-4) < 1e-12); // (0+1)/10 of lr
  ok(Math.abs(lrAt(cos, 10) - 1e-3) < 1e-12);
  ok(Math.abs(lrAt(cos, 60) - 5.5e-4) < 1e-12); // half-way down the cosine
  ok(Math.abs(lrAt(cos, 500) - 1e-4) < 1e-12);
  const wsd = makeSchedule("wsd", { ...o, decay: 20 });
  equal(lrAt(wsd, 50), 1e-3);
  ok(Math.abs(lrAt(wsd, 100) - 5.5e-4) < 1e-12);
  ok(Math.abs(lrAt(wsd, 200) - 1e-4) < 1e-12);
  const ref = parsePiecewise("linear:3000:6e-5:4e-4,cosine:2000:4e-4:9e-5,constant:inf:9e-5");
  equal(lrAt(ref, 0), 6e-5);
  ok(Math.abs(lrAt(ref, 1500) - 2.3e-4) < 1e-12);
  ok(Math.abs(lrAt(ref, 3000) - 4e-4) < 1e-12);
  ok(Math.abs(lrAt(ref, 4000) - 2.45e-4) < 1e-12);
  equal(lrAt(ref, 10_000_000), 9e-5);
});

Deno.test("a bad schedule names the segment and the fix", () => {
  let err: unknown;
  try {
    makeSchedule("linear:100:1e-3", { lr: 1, minLr: 0, warmup: 0, steps: 1 });
  } catch (e) {
    err = e;
  }
  match(String(err), /segment 1 "linear:100:1e-3": write shape:steps:from:to/);
});

// ---------------------------------------------------------------------------
// flags

Deno.test("unknown flags and bad values are errors that point to --help", async () => {
  await rejects(() => parseTrainArgs(["--bogus", "1"]), /Unknown option '--bogus'.*--help/);
  await rejects(() => parseTrainArgs(["--lr", "fast"]), /--lr must be a number, got "fast"/);
  await rejects(() => parseTrainArgs(["--model", "gpt5"]), /Unknown model "gpt5"/);
  await rejects(
    () => parseTrainArgs(["--precision", "bf16"]),
    /--precision must be fp32 or fp16, got "bf16"/,
  );
  const c = await parseTrainArgs(["--model", "gpt2-medium-4096", "--batch", "1", "--seq", "4096"]);
  ok(c !== "help");
  equal(c.model.nLayer, 26);
  equal(c.totalBatch, 4096);
  equal(c.precision, "fp32");
  const h = await parseTrainArgs(["--precision", "fp16", "--loss-scale", "1024"]);
  ok(h !== "help");
  equal(h.precision, "fp16");
  equal(h.lossScale, 1024);
  equal(h.lossScaleWindow, 2000);
});

// ---------------------------------------------------------------------------
// safetensors and Hugging Face layout

gpuTest("model.safetensors round-trips with HF names, prefixes and f16/bf16", async (rt) => {
  const a = await GPT2.create(rt, SMALL, { B: 1, T: 8, seed: 3, inference: true });
  const b = await GPT2.create(rt, SMALL, { B: 1, T: 8, seed: null, inference: true });
  try {
    const file = parseSafetensors(await encodeModel(a));
    // HF shapes: Conv1D [in, out], wte without padding rows.
    deepEqual(file.tensors.get("h.0.mlp.c_fc.weight")!.shape, [32, 128]);
    deepEqual(file.tensors.get("wte.weight")!.shape, [50257, 32]);
    loadTensors(file, b);
    for (const name of ["wte.weight", "h.1.attn.c_attn.weight", "ln_f.bias"]) {
      deepEqual(await b.readTensor(name), await a.readTensor(name));
    }
    // A "transformer." prefix and half-precision tensors load too.
    for (const dtype of ["F16", "BF16"] as const) {
      const tensors = [...file.tensors.keys()].map((k) => ({
        name: `transformer.${k}`,
        shape: file.tensors.get(k)!.shape,
        data: tensorF32(file, k),
      }));
      const half = parseSafetensors(encodeSafetensors(tensors, { dtype }));
      loadTensors(half, b);
      const got = await b.readTensor("h.0.attn.c_proj.weight");
      const want = await a.readTensor("h.0.attn.c_proj.weight");
      const tol = dtype === "F16" ? 1e-3 : 1e-2;
      ok(got.every((x, i) => Math.abs(x - want[i]) <= tol * Math.abs(want[i]) + 1e-6), dtype);
    }
  } finally {
    a.destroy();
    b.destroy();
  }
});

// ---------------------------------------------------------------------------
// training

gpuTest("stop and resume give bit-identical losses to an uninterrupted run", async (rt) => {
  await withTextRun(async (dir, text) => {
    const full = await train(rt, baseConfig(`${dir}/full`, text), quiet);
    equal(full.losses.length, 8);
    const part = await train(rt, baseConfig(`${dir}/part`, text), {
      ...quiet,
      stopAfter: (s) => s === 3,
    });
    equal(part.lastStep, 3);
    ok(part.stopped);
    const rest = await train(
      rt,
      baseConfig(`${dir}/part`, text, { resume: part.checkpoint }),
      quiet,
    );
    deepEqual([...part.losses, ...rest.losses], full.losses); // bit for bit
    // The final checkpoints hold the same weights.
    const fa = await loadCheckpoint(full.checkpoint), fb = await loadCheckpoint(rest.checkpoint);
    deepEqual(
      tensorF32(fa.model, "h.1.mlp.c_fc.weight"),
      tensorF32(fb.model, "h.1.mlp.c_fc.weight"),
    );
    deepEqual(fa.trainer?.cursor, fb.trainer?.cursor);
  });
});

gpuTest(
  { name: "a small model's loss falls on tinyshakespeare", ignore: !hasShakespeare },
  async (rt) => {
    const dir = await Deno.makeTempDir();
    try {
      const data = await textToShards(
        await Deno.readTextFile(new URL("tinyshakespeare.txt", shared)),
        `${dir}/shards`,
        "shakespeare",
      );
      const r = await train(
        rt,
        baseConfig(`${dir}/run`, data, {
          steps: 40,
          totalBatch: 64,
          warmup: 5,
          lr: 5e-3,
          valEvery: 40,
        }),
        quiet,
      );
      const first = r.losses[0], last = r.losses.slice(-5).reduce((a, b) => a + b) / 5;
      ok(Math.abs(first - Math.log(50257)) < 0.3, `first loss ${first}`);
      ok(last < first - 2, `loss fell only from ${first} to ${last}`);
      ok(r.valLoss! < first - 2, `val loss ${r.valLoss}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** The steps of a run's log.jsonl that carry a loss scale (fp16 runs). */
async function scaledSteps(run: string): Promise<{ loss_scale: number; skipped: boolean }[]> {
  return (await Deno.readTextFile(`${run}/log.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((e) => e.loss_scale !== undefined);
}

gpuTest({
  name: "fp16 mixed precision: the loss curve agrees with fp32 on a small model",
  needs: "shader-f16",
}, async (rt) => {
  await withTextRun(async (dir, text) => {
    const over = { steps: 20, lr: 5e-3, warmup: 5, valEvery: 0 };
    const fp32 = await train(rt, baseConfig(`${dir}/fp32`, text, over), quiet);
    const fp16 = await train(
      rt,
      baseConfig(`${dir}/fp16`, text, { ...over, precision: "fp16" }),
      quiet,
    );
    const log = await scaledSteps(`${dir}/fp16`);
    equal(log.length, 20, "every fp16 step logs its loss scale");
    ok(log.every((e) => e.loss_scale === 65536 && !e.skipped), "no overflow at 65536");
    const diff = Math.max(...fp16.losses.map((l, i) => Math.abs(l - fp32.losses[i])));
    ok(diff < 0.02, `fp16 and fp32 losses differ by up to ${diff}`);
    ok(fp16.losses[19] < fp16.losses[0] - 2, `fp16 loss ${fp16.losses[0]} -> ${fp16.losses[19]}`);
  });
});

gpuTest({
  name: "fp16: overflowing steps are skipped, the scale halves, and resume keeps it exact",
  needs: "shader-f16",
}, async (rt) => {
  await withTextRun(async (dir, text) => {
    // 2^27 overflows the f16 gradients of this model: steps are skipped until it is low enough.
    const over = { precision: "fp16" as const, lossScale: 2 ** 27, lossScaleWindow: 3 };
    const full = await train(rt, baseConfig(`${dir}/full`, text, over), quiet);
    const log = await scaledSteps(`${dir}/full`);
    const skipped = log.filter((e) => e.skipped).map((e) => e.loss_scale);
    ok(skipped.length >= 1 && skipped[0] === 2 ** 27, `skipped at scales ${skipped}`);
    for (let i = 1; i < log.length; i++) {
      // halved after an overflow; doubled after 3 clean steps; unchanged otherwise
      const prev = log[i - 1], now = log[i].loss_scale;
      if (prev.skipped) equal(now, prev.loss_scale / 2);
      else {ok(
          now === prev.loss_scale || now === prev.loss_scale * 2,
          `scales ${log.map((e) => [e.loss_scale, e.skipped])}`,
        );}
    }
    ok(log.some((e) => !e.skipped), "training resumed after the overflows");
    // The first steps were skipped: the weights did not move, so the loss stays near ln(V).
    ok(Math.abs(full.losses[0] - full.losses[1]) < 0.1);
    // Stop in the middle of the overflows and resume: bit-identical to the full run.
    const part = await train(rt, baseConfig(`${dir}/part`, text, over), {
      ...quiet,
      stopAfter: (s) => s === 2,
    });
    const st = (await loadCheckpoint(part.checkpoint)).trainer!;
    equal(st.loss_scale, 2 ** 25);
    const rest = await train(
      rt,
      baseConfig(`${dir}/part`, text, { ...over, resume: part.checkpoint }),
      quiet,
    );
    deepEqual([...part.losses, ...rest.losses], full.losses);
  });
});

/** Every file under dir with its size and mtime, to prove nothing was touched. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else {
        const s = await Deno.stat(p);
        out.push(`${p} ${s.size} ${s.mtime?.getTime()}`);
      }
    }
  };
  await walk(dir);
  return out.sort();
}

gpuTest("damaged checkpoints and wrong shapes give clear errors and touch nothing", async (rt) => {
  const dir = await Deno.makeTempDir();
  try {
    const text = `${dir}/text.txt`;
    await Deno.writeTextFile(text, syntheticText(3000, 2));
    const r = await train(rt, baseConfig(`${dir}/run`, text, { steps: 2, valEvery: 0 }), quiet);
    const ck = r.checkpoint;
    // Truncated model.safetensors
    const bad = `${dir}/bad`;
    await Deno.mkdir(bad);
    for (const f of ["config.json", "optimizer.safetensors", "trainer_state.json"]) {
      await Deno.copyFile(`${ck}/${f}`, `${bad}/${f}`);
    }
    const bytes = await Deno.readFile(`${ck}/model.safetensors`);
    await Deno.writeFile(`${bad}/model.safetensors`, bytes.subarray(0, bytes.length >> 1));
    const before = await snapshot(dir);
    await rejects(
      () => train(rt, baseConfig(`${dir}/run`, text, { resume: bad }), quiet),
      /Invalid safetensors file .*bad\/model.safetensors: tensor ".*" needs bytes .* the file is truncated/,
    );
    // Corrupt trainer state
    await Deno.writeTextFile(`${bad}/trainer_state.json`, "{ not json");
    await Deno.writeFile(`${bad}/model.safetensors`, bytes);
    await rejects(
      () => train(rt, baseConfig(`${dir}/run`, text, { resume: bad }), quiet),
      /Invalid .*trainer_state.json: .*the checkpoint is damaged/,
    );
    // Wrong shapes: a checkpoint of another size used with --init
    const other = await GPT2.create(rt, { ...SMALL, nEmbd: 48, nHead: 2 }, {
      B: 1,
      T: 8,
      inference: true,
    });
    const wrong = `${dir}/wrong`;
    await Deno.mkdir(wrong);
    await Deno.writeFile(`${wrong}/model.safetensors`, await encodeModel(other));
    await Deno.copyFile(`${ck}/config.json`, `${wrong}/config.json`); // claims nEmbd 32
    other.destroy();
    await rejects(
      () => train(rt, baseConfig(`${dir}/run2`, text, { init: wrong }), quiet),
      /wrong\/model.safetensors: tensor "wte.weight" has shape \[50257,48\], the model needs \[50257,32\]: check that config.json/,
    );
    const after = await snapshot(dir);
    // Only the files this test wrote itself changed.
    const mine = (l: string) => l.includes("/bad/") || l.includes("/wrong/");
    deepEqual(after.filter((l) => !mine(l)), before.filter((l) => !mine(l)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("Ctrl-C during deno task train saves a checkpoint and exits cleanly", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(4000, 3));
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../tasks/train.ts", import.meta.url).pathname,
        ...["--model", "gpt2-mini", "--n-layer", "1", "--n-embd", "32", "--n-head", "2"],
        ...["--batch", "2", "--seq", "32", "--steps", "100000", "--data", `${dir}/text.txt`],
        ...["--out", `${dir}/run`, "--val-every", "0", "--sample-tokens", "0"],
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let out = "";
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    while (!/step\s+2\/100000/.test(out)) {
      const { value, done } = await reader.read();
      if (done) break;
      out += value;
    }
    child.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += value;
    }
    const status = await child.status;
    const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
    equal(status.code, 0, `exit ${status.code}\n${err}`);
    const m = out.match(/stopped at step (\d+): checkpoint (\S+)/);
    ok(m, out.slice(-500));
    const ck = await loadCheckpoint(m[2]);
    equal(ck.trainer?.step, Number(m[1]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loss scaler: halves on overflow, doubles after a clean window, within bounds", async () => {
  const { LossScaler } = await import("../src/train/loss_scale.ts");
  const s = new LossScaler({ init: 8, window: 2, min: 2, max: 16 });
  s.update(true);
  equal(s.scale, 4);
  s.update(false);
  equal(s.scale, 4);
  s.update(false);
  equal(s.scale, 8); // two clean steps in a row
  s.update(false);
  s.update(true); // an overflow restarts the count
  s.update(false);
  equal(s.scale, 4);
  for (let i = 0; i < 10; i++) s.update(false);
  equal(s.scale, 16); // capped at max
  for (let i = 0; i < 10; i++) s.update(true);
  equal(s.scale, 2); // floored at min
  const above = new LossScaler({ init: 64, window: 1, max: 16 });
  above.update(false);
  equal(above.scale, 64, "growth never lowers a scale that starts above max");
  throws(() => new LossScaler({ init: 0 }), /Loss scale must be a positive number, got 0/);
});

// ---------------------------------------------------------------------------
// the first five minutes (issue 18)

Deno.test("a schedule is described in words; constant means constant unless --warmup", async () => {
  const o = { lr: 1e-3, minLr: 1e-4, warmup: 20, steps: 150 };
  equal(
    describeSchedule(makeSchedule("cosine", o)),
    "linear warmup over 20 steps from 5e-5 to 0.001, then cosine over 130 steps from 0.001 to " +
      "1e-4, then constant 1e-4",
  );
  equal(describeSchedule(makeSchedule("constant", { ...o, warmup: 0 })), "constant 0.001");
  equal(
    describeSchedule(
      parsePiecewise("linear:3000:6e-5:4e-4,cosine:2000:4e-4:9e-5,constant:inf:9e-5"),
    ),
    "linear warmup over 3000 steps from 6e-5 to 4e-4, then cosine over 2000 steps from " +
      "4e-4 to 9e-5, then constant 9e-5",
  );
  const c = await parseTrainArgs(["--schedule", "constant", "--lr", "1e-3"]);
  ok(c !== "help");
  equal(c.warmup, 0);
  equal(lrAt(makeSchedule(c.schedule, { ...c, steps: c.steps ?? Infinity }), 1), 1e-3);
  const w = await parseTrainArgs(["--schedule", "constant", "--warmup", "5"]);
  ok(w !== "help");
  equal(w.warmup, 5);
  const cos = await parseTrainArgs([]);
  ok(cos !== "help");
  equal(cos.warmup, 50); // the default run's warmup (tasks/train.ts DEFAULTS)
});

Deno.test("--init without --model names the run after the checkpoint, not the default preset", async () => {
  const c = await parseTrainArgs(["--init", "some/path/my-gpt2/"]);
  ok(c !== "help");
  equal(c.modelName, "init:my-gpt2");
  equal(c.out, "runs/my-gpt2");
});

gpuTest("--model tiny on GPT-2 tokens says tiny is a 101-token test model", async (rt) => {
  await withTextRun(async (dir, text) => {
    await rejects(
      () =>
        train(
          rt,
          baseConfig(`${dir}/tiny`, text, {
            modelName: "tiny",
            model: { nLayer: 2, nHead: 2, nEmbd: 16, nCtx: 16, vocabSize: 101 },
            seq: 16,
            totalBatch: 32,
          }),
          quiet,
        ),
      /outside the vocabulary \[0, 101\).*tiny is a test model with a 101-token vocabulary\): use --model gpt2-mini/,
    );
  });
});

gpuTest("a run ends with a summary: losses, tokens, checkpoint, plot and the next commands", async (
  rt,
) => {
  await withTextRun(async (dir, text) => {
    const lines: string[] = [];
    const r = await train(rt, baseConfig(`${dir}/run`, text, { steps: 4 }), {
      logger: { log: (l) => lines.push(l) },
    });
    const all = lines.join("\n");
    match(all, /^lr: linear warmup over 2 steps/m);
    match(all, /summary: 4 steps in .*, 512 tokens; train loss \d+\.\d+ -> \d+\.\d+, val loss/);
    ok(all.includes(`checkpoint  ${r.checkpoint}`));
    ok(all.includes(`loss curve  ${dir}/run/loss.svg`));
    ok(all.includes(`deno task train --out ${dir}/run --resume latest --steps 8`));
    ok(all.includes(`deno task sample ${r.checkpoint}`));
  });
});
