/**
 * Data-parallel training: tokens/s for 1 and 2 ranks (mpirun, Open MPI) and, per step, the
 * time spent waiting for each layer's gradients to map (the backward runs meanwhile), in the
 * all-reduce, uploading them, and what the step waited for after the backward was submitted
 * (exposed), for the tiny and gpt2-mini models. On a 2-core CPU adapter 2 ranks share the
 * cores, so they are not faster here; the breakdown is what the bench is for.
 *
 * @module
 */

import { type BenchCase, type BenchRow } from "./_harness.ts";

const rank = new URL("./_ddp_rank.ts", import.meta.url).pathname;

/** `deno task bench ddp [--models tiny,gpt2-mini] [--batch 4] [--seq 64] [--steps 5]` */
export const ddpBench: BenchCase = {
  name: "ddp",
  args: "--models tiny,gpt2-mini --batch 4 --seq 64 --steps 5 --grad-dtype f32|f16",
  description: "data parallel over MPI: tokens/s for 1 and 2 ranks, readback/all-reduce/upload ms",
  async run({ args, quick, log }) {
    const models = (args.models ?? (quick ? "tiny" : "tiny,gpt2-mini")).split(",");
    const [B, T] = [args.batch ?? "4", args.seq ?? "64"];
    const steps = args.steps ?? (quick ? "2" : "5"), grads = args["grad-dtype"] ?? "f32";
    const rows: BenchRow[] = [];
    for (const model of models) {
      for (const ranks of [1, 2]) {
        log(`ddp: ${model} on ${ranks} rank(s)`);
        const deno = [Deno.execPath(), "run", "-A", rank, model, B, T, steps, grads];
        const [cmd, ...rest] = ranks === 1 ? deno : [
          "mpirun",
          "--allow-run-as-root",
          "--oversubscribe",
          "--mca",
          "mpi_yield_when_idle",
          "1",
          "-np",
          String(ranks),
          ...deno,
        ];
        let out;
        try {
          out = await new Deno.Command(cmd, { args: rest, stdout: "piped", stderr: "piped" })
            .output();
        } catch (e) {
          throw new Error(
            `${cmd} did not start (${(e as Error).message}): install Open MPI ` +
              "(apt-get install openmpi-bin libopenmpi-dev)",
          );
        }
        const text = new TextDecoder().decode(out.stdout);
        const lines = [...text.matchAll(/^ddp (.*)$/gm)].map((m) => JSON.parse(m[1]));
        if (!out.success || !lines.length) {
          throw new Error(`ddp bench failed:\n${text}${new TextDecoder().decode(out.stderr)}`);
        }
        const r0 = lines.find((l) => l.rank === 0);
        rows.push({ model, batch_per_rank: Number(B), ...r0 });
      }
    }
    return rows;
  },
};
