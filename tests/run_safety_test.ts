/**
 * A run never destroys its own results. Each case is run as a user would run it
 * (`deno task train` flags through parseTrainArgs, then train) and asserts the
 * message and that no file changed that should not have.
 */
import { deepEqual, equal, match, notEqual, ok, rejects } from "node:assert/strict";
import { parseTrainArgs } from "../tasks/train.ts";
import { main as sampleMain } from "../tasks/sample.ts";
import { main as dataMain } from "../tasks/data.ts";
import { DivergenceError, train, type TrainResult } from "../src/train/trainer.ts";
import { prepareData, textToShards } from "../src/train/corpus.ts";
import { listCheckpoints, stepDirName } from "../src/io/checkpoint.ts";
import { encodeShard, sha256Hex } from "../src/data/shard.ts";
import { readShard } from "../src/data/shard.ts";
import { decodeTokens } from "../src/data/tokenizer.ts";
import type { Runtime } from "../src/gpu/runtime.ts";
import { lockRunDir } from "../src/train/run_dir.ts";
import { BIG_FLOATS, damageTensor, gpuTest, NAN_BYTES } from "./_harness.ts";
import { syntheticText } from "./_train_config.ts";

/** The issue's `T`: a one-layer, 32-wide model on 2 x 32 batches, quiet. */
function flags(dir: string, ...more: string[]): string[] {
  return [
    ...["--model", "gpt2-mini", "--n-layer", "1", "--n-embd", "32", "--n-head", "2"],
    ...["--batch", "2", "--seq", "32", "--val-every", "0", "--sample-tokens", "0"],
    ...["--data", `${dir}/text.txt`, "--cache-dir", `${dir}/cache`, "--out", `${dir}/run`],
    ...more,
  ];
}

/** What `deno task train ARGS` prints and returns (or the error it ends with). */
async function cli(
  rt: Runtime,
  argv: string[],
): Promise<{ lines: string[]; result?: TrainResult; error?: Error }> {
  const lines: string[] = [];
  try {
    const config = await parseTrainArgs(argv);
    if (config === "help") throw new Error("unexpected --help");
    const result = await train(rt, config, { logger: { log: (l) => lines.push(l) } });
    return { lines, result };
  } catch (e) {
    return { lines, error: e as Error };
  }
}

/** Every file under `dir` with its SHA-256 (missing dir: empty). */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else out.set(p, await sha256Hex(await Deno.readFile(p)));
    }
  };
  await walk(dir).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  return out;
}

/** Runs `fn` in a temporary directory that holds text.txt (synthetic words). */
async function inDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(4000, 3));
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const steps = (dir: string) =>
  Deno.readTextFile(`${dir}/run/log.jsonl`).then((t) =>
    t.trim().split("\n").map((l) => JSON.parse(l)).filter((r) => typeof r.loss === "number")
      .map((r) => r.step as number)
  );

/** Makes checkpoint `dir` look as a version before checksums.json saved it. */
async function asOlderVersion(dir: string): Promise<void> {
  await Deno.remove(`${dir}/checksums.json`);
  const { checksums: _, ...st } = JSON.parse(await Deno.readTextFile(`${dir}/trainer_state.json`));
  await Deno.writeTextFile(`${dir}/trainer_state.json`, JSON.stringify(st));
}

// ---------------------------------------------------------------------------
// the five serious cases

gpuTest(
  "resume: a checkpoint without trainer_state.json is skipped, nothing good is lost",
  async (rt) => {
    await inDir(async (dir) => {
      const first = await cli(rt, flags(dir, "--steps", "6", "--save-every", "2", "--keep", "3"));
      equal(first.error, undefined);
      const ck = `${dir}/run/checkpoints`;
      await Deno.remove(`${ck}/${stepDirName(6)}/trainer_state.json`);
      const before = await snapshot(ck);

      // Named explicitly, it is an error that changes nothing.
      const named = await cli(
        rt,
        flags(dir, "--resume", `${ck}/${stepDirName(6)}`, "--steps", "8"),
      );
      match(
        String(named.error),
        /Cannot resume from .*step_00000006: trainer_state\.json is missing/,
      );
      deepEqual(await snapshot(ck), before);

      // latest skips it with a warning and continues from step 4.
      const r = await cli(rt, flags(dir, "--resume", "latest", "--steps", "8"));
      equal(r.error, undefined, String(r.error));
      ok(
        r.lines.some((l) =>
          /warning: skipping .*step_00000006: trainer_state\.json is missing/.test(l)
        ),
      );
      equal(r.result!.losses.length, 4); // steps 5..8
      for (const [path, sha] of before) {
        if (path.includes(stepDirName(4))) {
          equal((await snapshot(ck)).get(path), sha, path);
        }
      }
      deepEqual(await steps(dir), [1, 2, 3, 4, 5, 6, 7, 8]); // the log has no repeats
    });
  },
);

gpuTest("--keep 0 is refused before anything is written", async (rt) => {
  await inDir(async (dir) => {
    const before = await snapshot(dir);
    const r = await cli(rt, flags(dir, "--keep", "0"));
    match(String(r.error), /--keep must be a positive integer, got "0"/);
    deepEqual(await snapshot(dir), before);
    // And through the library, a keep below 1 never reaches the disk either.
    const c = await parseTrainArgs(flags(dir));
    ok(c !== "help");
    await rejects(() => train(rt, { ...c, keep: 0 }), /keep at least 1/);
    deepEqual(await snapshot(dir), before);
  });
});

Deno.test("text caches are keyed by content: another file of the same name, an edit", async () => {
  await inDir(async (dir) => {
    await Deno.mkdir(`${dir}/other`);
    await Deno.writeTextFile(`${dir}/other/text.txt`, syntheticText(3000, 9));
    const a = await prepareData(`${dir}/text.txt`, `${dir}/cache`);
    const b = await prepareData(`${dir}/other/text.txt`, `${dir}/cache`);
    notEqual(a.dir, b.dir);
    await Deno.writeTextFile(`${dir}/text.txt`, "grown " + syntheticText(8000, 4));
    const c = await prepareData(`${dir}/text.txt`, `${dir}/cache`);
    notEqual(c.dir, a.dir);
    const tokens = async (d: string) =>
      (await readShard(`${d}/text_train_000001.bin`)).length +
      (await readShard(`${d}/text_val_000000.bin`)).length;
    ok((await tokens(c.dir)) > (await tokens(a.dir)) * 1.5);
    // The same content again is served from its cache.
    equal((await prepareData(`${dir}/text.txt`, `${dir}/cache`)).dir, c.dir);
    match(await Deno.readTextFile(`${c.dir}/source.json`), /"sha256":"[0-9a-f]{64}"/);
  });
});

gpuTest(
  "a run directory is locked; one with checkpoints needs --resume or --overwrite",
  async (rt) => {
    await inDir(async (dir) => {
      // A second run into an --out that a live run holds is refused (here the holder is this
      // process, as a first run started from another shell would be).
      const held = await lockRunDir(`${dir}/run`);
      const second = await cli(rt, flags(dir, "--steps", "3"));
      match(String(second.error), /run is in use by process \d+ .*another --out/);
      await held.release();
      const first = await cli(rt, flags(dir, "--steps", "3"));
      equal(first.result?.lastStep, 3, String(first.error));
      deepEqual(await steps(dir), [1, 2, 3]);

      // Training again into it without --resume changes nothing.
      const before = await snapshot(`${dir}/run`);
      const again = await cli(rt, flags(dir, "--steps", "3"));
      match(String(again.error), /already holds 1 checkpoint.*--resume latest.*--overwrite/);
      deepEqual(await snapshot(`${dir}/run`), before);

      // A lock left by a process that is gone is taken over, with a message.
      const child = new Deno.Command("true").spawn();
      await child.status;
      await Deno.writeTextFile(
        `${dir}/run/.lock`,
        JSON.stringify({ pid: child.pid, host: Deno.hostname(), time: "then" }),
      );
      const over = await cli(rt, flags(dir, "--steps", "2", "--overwrite"));
      equal(over.error, undefined, String(over.error));
      ok(over.lines.some((l) => l.includes(`taking over the lock of process ${child.pid}`)));
      ok(over.lines.some((l) => /overwrite: removed 1 checkpoint/.test(l)));
      deepEqual(await steps(dir), [1, 2]);
      equal(await Deno.stat(`${dir}/run/.lock`).then(() => true, () => false), false);
    });
  },
);

gpuTest("a diverging run stops before saving and names the last good checkpoint", async (rt) => {
  await inDir(async (dir) => {
    const r = await cli(rt, flags(dir, "--lr", "1e6", "--warmup", "0", "--save-every", "2"));
    ok(r.error instanceof DivergenceError, String(r.error));
    match(r.error!.message, /diverged at step 2: .*There is no earlier checkpoint/);
    deepEqual(await listCheckpoints(`${dir}/run/checkpoints`), []);

    // Good checkpoints stay when a resumed run diverges later.
    const good = await cli(rt, flags(dir, "--steps", "4", "--save-every", "2", "--overwrite"));
    equal(good.error, undefined, String(good.error));
    const before = await snapshot(`${dir}/run/checkpoints`);
    const bad = await cli(
      rt,
      flags(dir, "--resume", "latest", "--steps", "10", "--lr", "1e6", "--save-every", "1"),
    );
    ok(bad.error instanceof DivergenceError, String(bad.error));
    match(
      bad.error!.message,
      /diverged at step 6: .*moved to .*diverged_step_00000005.*step_00000004/,
    );
    ok(bad.lines.some((l) => l === "resume: --lr 1000000 (was 0.001)"), bad.lines.join("\n"));
    const after = await snapshot(`${dir}/run/checkpoints`);
    for (const [path, sha] of before) equal(after.get(path), sha, path);
    deepEqual(
      (await listCheckpoints(`${dir}/run/checkpoints`)).map((d) => d.split("/").pop()),
      [stepDirName(2), stepDirName(4)],
    );
  });
});

gpuTest(
  "damaged checkpoints: resume refuses them, latest skips them, last good means checked",
  async (rt) => {
    await inDir(async (dir) => {
      const first = await cli(rt, flags(dir, "--steps", "6", "--save-every", "2", "--keep", "3"));
      equal(first.error, undefined, String(first.error));
      const ck = `${dir}/run/checkpoints`;
      const at = (step: number, file = "") => `${ck}/${stepDirName(step)}${file && "/"}${file}`;
      // What the probe did: 64 bytes of 0xFF (NaN) in the newest weights, 256 floats of 3e4
      // (finite) in the optimizer state before them; and step 2 is as an older version saved
      // it, without checksums.json.
      await damageTensor(at(6, "model.safetensors"), "h.0.attn.c_attn.weight", NAN_BYTES);
      await damageTensor(at(4, "optimizer.safetensors"), "v.h.0.mlp.c_fc.weight", BIG_FLOATS);
      await asOlderVersion(at(2));
      const before = await snapshot(`${dir}/run`);

      // Named explicitly, each is an error that names the file and changes nothing.
      const six = await cli(rt, flags(dir, "--resume", at(6), "--steps", "8"));
      match(
        String(six.error),
        /Cannot resume from .*step_00000006: .*step_00000006\/model\.safetensors does not match its SHA-256 in checksums\.json \([0-9a-f]{12}…, saved as [0-9a-f]{12}…\): the file changed after the checkpoint was saved; use an older checkpoint \(--resume latest takes the newest intact one\)/,
      );
      const four = await cli(rt, flags(dir, "--resume", at(4), "--steps", "8"));
      match(String(four.error), /step_00000004\/optimizer\.safetensors does not match its SHA-256/);
      deepEqual(await snapshot(`${dir}/run`), before);

      // latest skips both with a warning and takes step 2, with a notice that it has no
      // checksums; when that run diverges, the last good checkpoint it names is step 2.
      const r = await cli(
        rt,
        flags(dir, "--resume", "latest", "--steps", "10", "--lr", "1e6", "--save-every", "1"),
      );
      ok(r.error instanceof DivergenceError, String(r.error));
      const said = (re: RegExp) => ok(r.lines.some((l) => re.test(l)), r.lines.join("\n"));
      said(/^warning: skipping .*step_00000006: .*model\.safetensors does not match its SHA-256/);
      said(/^warning: skipping .*step_00000004: .*optimizer\.safetensors does not match/);
      said(/^notice: .*step_00000002 has no checksums\.json \(saved by an older version\)/);
      match(
        r.error!.message,
        /Newer ones fail their checks: .*step_00000006: .*; .*step_00000004: .*The last good checkpoint is .*step_00000002: resume it/,
      );
      const after = await snapshot(ck);
      for (const [path, sha] of before) if (path.startsWith(ck)) equal(after.get(path), sha, path);

      // Resumed from step 2 with --keep 1, the run keeps the checkpoint it saved; the newer
      // ones (another run's, damaged) are not counted, and are left as they are.
      const keep1 = await cli(rt, flags(dir, "--resume", at(2), "--steps", "3", "--keep", "1"));
      equal(keep1.error, undefined, String(keep1.error));
      deepEqual(
        (await listCheckpoints(ck)).map((d) => d.split("/").pop()),
        [stepDirName(3), stepDirName(4), stepDirName(6)],
      );

      // Without checksums only the non-finite check can see NaN: it names the tensor and where.
      await Deno.rename(at(3), `${dir}/old`);
      await asOlderVersion(`${dir}/old`);
      const byte = await damageTensor(`${dir}/old/model.safetensors`, "wpe.weight", NAN_BYTES);
      const old = await cli(rt, flags(dir, "--resume", `${dir}/old`, "--steps", "8"));
      match(
        String(old.error),
        new RegExp(
          `old/model\\.safetensors: tensor "wpe\\.weight" holds NaN at element 0 ` +
            `\\(\\[0, 0\\], byte ${byte}\\), 16 non-finite value\\(s\\) in all: the file is ` +
            "damaged or its run had diverged; use an older checkpoint",
        ),
      );
    });
  },
);

gpuTest({
  name: "fp16: overflowing step after step stops with a loss-scale message",
  needs: "shader-f16",
}, async (rt) => {
  await inDir(async (dir) => {
    const r = await cli(
      rt,
      flags(dir, "--precision", "fp16", "--loss-scale", "1e30", "--max-overflows", "4"),
    );
    ok(r.error instanceof DivergenceError, String(r.error));
    match(r.error!.message, /4 fp16 steps in a row overflowed.*Lower --loss-scale/);
    deepEqual(await listCheckpoints(`${dir}/run/checkpoints`), []);
  });
});

// ---------------------------------------------------------------------------
// weak cases: each gets a message naming the flag or file and the fix

Deno.test("bad numbers name the flag and what it accepts", async () => {
  const cases: [string[], RegExp][] = [
    [["--batch", "0"], /--batch must be a positive integer, got "0"/],
    [["--batch", "-1"], /--batch must be a positive integer, got "-1"/],
    [["--lr=-1"], /--lr must be a number above 0, got "-1"/],
    [["--steps", "1.5"], /--steps must be a positive integer, got "1.5"/],
    [["--steps", "0"], /--steps must be a positive integer, got "0"/],
    [["--beta2", "1"], /--beta2 must be a number in \[0, 1\), got "1"/],
  ];
  for (const [argv, want] of cases) await rejects(() => parseTrainArgs(argv), want);
  await rejects(
    () => sampleMain(["some/dir", "--top-p", "2"]),
    /--top-p must be a number in \(0, 1\]/,
  );
  await rejects(() => sampleMain(["some/dir", "--temperature", "-1"]), /--temperature must be/);
});

Deno.test("--resume given a missing path, a file or a run directory says what to pass", async () => {
  await inDir(async (dir) => {
    await Deno.mkdir(`${dir}/run/checkpoints/${stepDirName(2)}`, { recursive: true });
    await Deno.writeFile(`${dir}/model.bin`, new Uint8Array(8));
    const before = await snapshot(dir);
    const cases: [string, RegExp][] = [
      [
        `${dir}/nope`,
        /Cannot resume from .*\/nope: it does not exist: pass a checkpoint directory \(RUN\/checkpoints\/step_N\), or latest for the newest intact one in --out$/,
      ],
      [
        `${dir}/text.txt`,
        /Cannot resume from .*\/text\.txt: it is a file, not a checkpoint directory: pass a checkpoint directory/,
      ],
      [
        `${dir}/model.bin`,
        /model\.bin: it is an llm\.c model file, which holds weights only: start a new run from it with --init .*model\.bin$/,
      ],
      [
        `${dir}/run`,
        /Cannot resume from (.*)\/run: it is a run directory, not a checkpoint: pass \1\/run\/checkpoints\/step_N, or latest with --out \1\/run$/,
      ],
      [
        `${dir}/run/checkpoints`,
        /it holds checkpoints but is not one: pass one of them \(.*\/run\/checkpoints\/step_N\), or latest$/,
      ],
    ];
    for (const [path, want] of cases) {
      await rejects(() => parseTrainArgs(flags(dir, "--resume", path)), want);
    }
    deepEqual(await snapshot(dir), before);
  });
});

gpuTest(
  "resume: a shape flag is an error, a changed optimizer too; other flags are changes",
  async (rt) => {
    await inDir(async (dir) => {
      equal((await cli(rt, flags(dir, "--steps", "2"))).error, undefined);
      await rejects(
        () => parseTrainArgs(flags(dir, "--resume", "latest", "--n-embd", "64")),
        /nEmbd 64 \(the checkpoint has 32\).*keeps its model's shape.*--init/,
      );
      await rejects(
        () => parseTrainArgs(flags(dir, "--resume", "latest", "--optimizer", "adamw8bit")),
        /--optimizer adamw8bit differs from the checkpoint's adamw/,
      );
      const c = await parseTrainArgs(flags(dir, "--resume", "latest", "--steps", "4"));
      ok(c !== "help");
      deepEqual(c.notices, ["resume: --steps 4 (was 2)"]);
    });
  },
);

gpuTest("tiny on real text, a missing HellaSwag file, a bad token in a shard", async (rt) => {
  await inDir(async (dir) => {
    const tiny = await cli(rt, [...flags(dir), "--model", "tiny", "--seq", "16"]);
    match(String(tiny.error), /tiny is a test model with a 101-token vocabulary/);

    const before = await snapshot(dir);
    const hs = await cli(
      rt,
      flags(dir, "--hellaswag", `${dir}/nope.jsonl`, "--hellaswag-every", "1"),
    );
    match(
      String(hs.error),
      /HellaSwag file .*nope\.jsonl does not exist: give hellaswag_val\.jsonl/,
    );
    deepEqual(await snapshot(dir), before);

    const tokens = new Uint16Array(4000).map((_, i) => i % 500);
    tokens[3001] = 60000;
    await Deno.mkdir(`${dir}/bad`);
    await Deno.writeFile(`${dir}/bad/x_train_000001.bin`, encodeShard(tokens));
    const bad = await cli(rt, [...flags(dir, "--steps", "100"), "--data", `${dir}/bad`]);
    match(
      String(bad.error),
      /x_train_000001\.bin: token 3001 \(byte 7026\) is 60000, outside the vocabulary \[0, 50257\): the shard is damaged.*rebuild.*steps up to 46 are saved in .*step_00000046/,
    );
    deepEqual(
      (await listCheckpoints(`${dir}/run/checkpoints`)).map((d) => d.split("/").pop()),
      [stepDirName(46)],
    );
  });
});

gpuTest(
  "an incomplete shard folder warns; log.jsonl after a crash has no repeated steps",
  async (rt) => {
    await inDir(async (dir) => {
      const shards = await textToShards(syntheticText(3000, 5), `${dir}/shards`, "s");
      await Deno.writeTextFile(
        `${shards}/manifest.json`,
        JSON.stringify({ format: "llm.c-shards", version: 1, complete: false, shards: [{}, {}] }),
      );
      const args = [...flags(dir, "--steps", "4", "--save-every", "2", "--keep", "5")];
      const r = await cli(rt, [...args, "--data", shards]);
      equal(r.error, undefined, String(r.error));
      ok(r.lines.some((l) => /warning: .*complete: false.*2 shard\(s\).*--resume/.test(l)));
      // A crash after step 4 but before its checkpoint: the log holds steps 3 and 4, the
      // checkpoints end at step 2.
      await Deno.remove(`${dir}/run/checkpoints/${stepDirName(4)}`, { recursive: true });
      const again = await cli(rt, [
        ...args,
        "--data",
        shards,
        "--resume",
        "latest",
        "--steps",
        "5",
      ]);
      equal(again.error, undefined, String(again.error));
      deepEqual(await steps(dir), [1, 2, 3, 4, 5]);
    });
  },
);

Deno.test("--data: .jsonl texts, empty and binary files, compressed files", async () => {
  await inDir(async (dir) => {
    const docs = ["Call me Ishmael.", "Some years ago, never mind how long."];
    await Deno.writeTextFile(
      `${dir}/d.jsonl`,
      docs.map((text) => JSON.stringify({ text })).join("\n"),
    );
    const j = await prepareData(`${dir}/d.jsonl`, `${dir}/cache`);
    const all = [
      ...(await readShard(`${j.dir}/d_jsonl_train_000001.bin`)),
      ...(await readShard(`${j.dir}/d_jsonl_val_000000.bin`)),
    ];
    equal(decodeTokens(all), docs.join("<|endoftext|>") + "<|endoftext|>");

    await Deno.writeTextFile(`${dir}/bad.jsonl`, `{"text": "a"}\n{"body": "b"}\n`);
    await rejects(
      () => prepareData(`${dir}/bad.jsonl`, `${dir}/cache`),
      /bad\.jsonl:2: no string "text" field/,
    );
    await Deno.writeTextFile(`${dir}/empty.txt`, "  \n");
    await rejects(
      () => prepareData(`${dir}/empty.txt`, `${dir}/cache`),
      /empty\.txt holds no text/,
    );
    await Deno.writeFile(`${dir}/blob.txt`, new Uint8Array([104, 105, 0xff, 0xfe, 0, 1]));
    await rejects(
      () => prepareData(`${dir}/blob.txt`, `${dir}/cache`),
      /blob\.txt is not UTF-8 text \(byte 2/,
    );
    await Deno.writeFile(`${dir}/c.jsonl.zst`, new Uint8Array(4));
    await rejects(
      () => prepareData(`${dir}/c.jsonl.zst`, `${dir}/cache`),
      /deno task data .*--out DIR/,
    );
  });
});

Deno.test("deno task data --out onto a file is a clear error", async () => {
  await inDir(async (dir) => {
    await rejects(
      () => dataMain([`${dir}/text.txt`, "--out", `${dir}/text.txt`, "--quiet"]),
      /--out .*text\.txt is a file, not a folder/,
    );
  });
});
