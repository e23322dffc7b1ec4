// mod.ts must work when imported by URL, kernels (.wgsl text imports) included:
// serve the repository on 127.0.0.1 and import it from a subprocess.
import { deepEqual, ok } from "node:assert/strict";
import { gpuTest } from "./_harness.ts";

const root = new URL("../", import.meta.url);

const TYPES: Record<string, string> = {
  ".ts": "application/typescript; charset=utf-8",
  ".wgsl": "text/plain; charset=utf-8",
  ".json": "application/json",
};

/** Serves the repository on 127.0.0.1 while `fn` runs; `served` lists the paths asked for. */
async function serveRepo(fn: (base: string, served: string[]) => Promise<void>): Promise<void> {
  const served: string[] = [];
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      if (path.includes("..")) return new Response("bad path", { status: 400 });
      try {
        const body = await Deno.readFile(new URL(`.${path}`, root));
        served.push(path);
        const ext = path.slice(path.lastIndexOf("."));
        return new Response(body, { headers: { "content-type": TYPES[ext] ?? "text/plain" } });
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`, served);
  } finally {
    ac.abort();
    await server.finished;
  }
}

/** Runs `deno run -A --no-config ARGS` in `cwd`; returns stdout, failing with stderr. */
async function denoRun(cwd: string, base: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-config", "--no-lock", `--reload=${base}`, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  ok(out.success, `subprocess failed:\n${stderr}`);
  return new TextDecoder().decode(out.stdout);
}

gpuTest("mod.ts works when imported from a URL, kernels included", async () => {
  await serveRepo(async (base, served) => {
    const dir = await Deno.makeTempDir();
    try {
      const script = `
import { createRuntime } from "${base}/mod.ts";
import { readF32, runDispatches } from "${base}/src/gpu/mod.ts";
import { matmul } from "${base}/src/model/mod.ts";
const rt = await createRuntime();
const a = rt.arena.allocWith("a", "scratch", new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]));
const b = rt.arena.allocWith("b", "scratch", new Float32Array([1, 0, 0, 1, 1, 1, 2, 2]));
const c = rt.arena.alloc("c", "scratch", 16);
for (const impl of ["regblock", "tiled"]) {
  const d = await matmul(rt, { M: 1, N: 4, K: 2 }, { a: { buffer: a }, b: { buffer: b }, c: { buffer: c } }, { impl });
  await runDispatches(rt.device, d);
  console.log(JSON.stringify(Array.from(await readF32(rt.device, c))));
}
`;
      await Deno.writeTextFile(`${dir}/main.ts`, script);
      const stdout = await denoRun(dir, base, ["main.ts"]);
      // [1,2] · [[1,0,0,1],[1,1,2,2]] = [3, 2, 4, 5], by both kernels.
      const lines = stdout.trim().split("\n").map((l) => JSON.parse(l));
      deepEqual(lines, [[3, 2, 4, 5], [3, 2, 4, 5]]);
      ok(served.includes("/kernels/matmul_tiled.wgsl"), `served: ${served.join(", ")}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

gpuTest("the tasks run from a URL: train a tiny run, export it", async () => {
  await serveRepo(async (base) => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(`${dir}/text.txt`, "Call me Ishmael. ".repeat(400));
      const trained = await denoRun(dir, base, [
        `${base}/tasks/train.ts`,
        ...["--model", "gpt2-mini", "--n-layer", "1", "--n-embd", "32", "--n-head", "2"],
        ...["--batch", "2", "--seq", "32", "--steps", "2", "--val-every", "0"],
        ...["--sample-tokens", "0", "--data", "text.txt", "--out", "run"],
      ]);
      ok(/done at step 2: checkpoint run\/checkpoints\/step_00000002/.test(trained), trained);
      const exported = await denoRun(dir, base, [
        `${base}/tasks/export.ts`,
        "run/checkpoints/step_00000002",
        ...["--llmc", "model.bin"],
      ]);
      ok(exported.includes("-> model.bin (llm.c, fp32)"), exported);
      ok((await Deno.stat(`${dir}/model.bin`)).size > 1024);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
