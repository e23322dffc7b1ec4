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

gpuTest("mod.ts works when imported from a URL, kernels included", async () => {
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
  const base = `http://127.0.0.1:${server.addr.port}`;
  const dir = await Deno.makeTempDir();
  try {
    const script = `
import { createRuntime, matmul, readF32, runDispatches } from "${base}/mod.ts";
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
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-config", "--no-lock", `--reload=${base}`, "main.ts"],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    ok(out.success, `subprocess failed:\n${stderr}`);
    // [1,2] · [[1,0,0,1],[1,1,2,2]] = [3, 2, 4, 5], by both kernels.
    const lines = stdout.trim().split("\n").map((l) => JSON.parse(l));
    deepEqual(lines, [[3, 2, 4, 5], [3, 2, 4, 5]]);
    ok(served.includes("/kernels/matmul_tiled.wgsl"), `served: ${served.join(", ")}`);
  } finally {
    ac.abort();
    await server.finished;
    await Deno.remove(dir, { recursive: true });
  }
});
