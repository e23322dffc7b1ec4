import assert from "node:assert/strict";
import { zstdCompressSync } from "node:zlib";
import { syntheticJsonl } from "../bench/data_bench.ts";
import { lockDir } from "../src/dir_lock.ts";
import { readManifest } from "../src/data/manifest.ts";
import { concat, runData, shardBytes } from "./fixtures/data/_fixtures.ts";

const TASK = new URL("../tasks/data.ts", import.meta.url).pathname;

function run(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TASK, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test("cli: Ctrl-C keeps finished shards consistent and --resume completes them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "data_cli_" });
  try {
    const input = `${dir}/in.jsonl.zst`;
    await Deno.writeFile(input, zstdCompressSync(syntheticJsonl(6e6, 5)));
    const common = [input, "--shard-tokens", "40k", "--val-tokens", "10k", "--workers", "1"];
    const full = await run([...common, "--out", `${dir}/full`, "--quiet"]).output();
    assert.equal(full.code, 0, new TextDecoder().decode(full.stderr));

    const child = run([...common, "--out", `${dir}/part`]);
    // Interrupt as soon as the manifest lists a couple of shards.
    for (let i = 0; i < 1000; i++) {
      const m = await readManifest(`${dir}/part`).catch(() => undefined);
      if (m && m.shards.length >= 2) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    child.kill("SIGINT");
    const stopped = await child.output();
    const stderr = new TextDecoder().decode(stopped.stderr);
    if (stopped.code === 130) {
      assert.match(stderr, /stopping; finished shards are kept, run again with --resume/);
      const m = (await readManifest(`${dir}/part`))!;
      assert.ok(!m.complete);
      const names = [...(await shardBytes(`${dir}/part`)).keys()];
      assert.deepEqual(names, m.shards.map((s) => s.file).sort());
      for await (const e of Deno.readDir(`${dir}/part`)) assert.ok(!e.name.endsWith(".bin.tmp"));
    } else {
      // The machine was fast enough to finish first; the resume below is then a no-op.
      assert.equal(stopped.code, 0, stderr);
    }
    const resumed = await run([...common, "--out", `${dir}/part`, "--resume", "--quiet"]).output();
    assert.equal(resumed.code, 0, new TextDecoder().decode(resumed.stderr));
    const a = await shardBytes(`${dir}/full`);
    const b = await shardBytes(`${dir}/part`);
    assert.deepEqual([...b.keys()], [...a.keys()]);
    for (const [n, bytes] of a) assert.deepEqual(b.get(n), bytes, n);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: invalid UTF-8 is counted per file in a warning and in the manifest", async () => {
  const dir = await Deno.makeTempDir({ prefix: "data_cli_" });
  try {
    const enc = new TextEncoder();
    // A Latin-1 file: "café" and "naïve" as single bytes, invalid in UTF-8. A real U+FFFD
    // (EF BF BD, valid UTF-8) is text, not a replacement.
    const latin1 = concat(
      enc.encode('{"text": "plain ascii"}\n{"text": "caf'),
      Uint8Array.of(0xe9),
      enc.encode(" na"),
      Uint8Array.of(0xef),
      enc.encode('ve \uFFFD"}\n{"text": "ok \uFFFD"}\n{"text": "'),
      Uint8Array.of(0xe9, 0xe9),
      enc.encode('"}\n'),
    );
    await Deno.writeFile(`${dir}/a.jsonl`, latin1);
    await Deno.writeFile(`${dir}/b.txt`, concat(enc.encode("x "), Uint8Array.of(0xff, 0x41, 0xc3)));
    await Deno.writeTextFile(`${dir}/c.txt`, "clean \uFFFD text");
    const r = await runData([
      `${dir}/a.jsonl`,
      `${dir}/b.txt`,
      `${dir}/c.txt`,
      ...["--out", `${dir}/o`, "--quiet", "--workers", "0"],
    ]);
    assert.equal(r.code, 0, r.error);
    const hint = "check the file's encoding (iconv -f latin1 -t utf-8 converts a Latin-1 file)";
    assert.deepEqual(r.err.filter((l) => l.includes("UTF-8")), [
      `\nwarning: Replaced 4 invalid UTF-8 sequences in ${dir}/a.jsonl with U+FFFD (the first ` +
      `on line 2): ${hint}`,
      `\nwarning: Replaced 2 invalid UTF-8 sequences in ${dir}/b.txt with U+FFFD: ${hint}`,
    ]);
    assert.equal((await readManifest(`${dir}/o`))!.totals.invalidUtf8, 6);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: a second run into a folder being written is refused, naming the first's pid", async () => {
  const dir = await Deno.makeTempDir({ prefix: "data_cli_" });
  try {
    const input = `${dir}/in.jsonl`;
    await Deno.writeFile(input, syntheticJsonl(2e5, 3));
    const out = `${dir}/out`;
    const args = [input, "--out", out, "--shard-tokens", "10k", "--quiet", "--workers", "0"];
    assert.equal((await runData(args)).code, 0);
    // The holder is this process, as a first run started from another shell would be.
    const held = await lockDir(out, { what: "output folder", instead: "-" });
    const before = await files(out);
    const second = await runData([...args, "--overwrite"]);
    const lock = JSON.parse(await Deno.readTextFile(`${out}/.lock`));
    assert.equal(
      second.error,
      `Output folder ${out} is in use by process ${Deno.pid} on ${Deno.hostname()} (started ${lock.time}): ` +
        `wait for that run or stop it, or write the shards into another --out. If no such run ` +
        `is going on, delete ${out}/.lock`,
    );
    assert.deepEqual(await files(out), before);
    await held.release();

    // A lock left by a process that is gone is taken over, with a message, and released.
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    await Deno.writeTextFile(
      `${out}/.lock`,
      JSON.stringify({ pid: gone.pid, host: Deno.hostname(), time: "then" }),
    );
    const third = await runData([...args, "--overwrite"]);
    assert.equal(third.code, 0, third.error);
    assert.ok(
      third.err.includes(
        `\nwarning: output folder ${out}: taking over the lock of process ${gone.pid} ` +
          `(started then), which is no longer running`,
      ),
      third.err.join("\n"),
    );
    assert.ok(!(await files(out)).has(".lock"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Every file in `dir` with its bytes. */
async function files(dir: string): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  for (const n of names.sort()) out.set(n, await Deno.readFile(`${dir}/${n}`));
  return out;
}
