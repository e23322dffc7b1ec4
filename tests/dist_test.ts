/**
 * Tests for src/parallel: launch detection, library lookup, chunking and the
 * single-process Dist without MPI; then real 2-rank jobs through mpirun
 * (Open MPI) and mpiexec.mpich (MPICH) running tests/fixtures/dist/ranks.ts:
 * exact sums, reduce-scatter + all-gather round trips with uneven counts,
 * broadcast, tiny chunk limits, and how fast a failing rank ends the job.
 * The MPI tests are ignored, with the reason printed, when the launcher is
 * not on PATH.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  detectLaunch,
  gpuSelectionEnv,
  initDist,
  installAbortOnError,
  libmpiNames,
  singleProcess,
} from "../src/parallel/mod.ts";
import { chunkRanges, displacements } from "../src/parallel/dist.ts";

const env = (vars: Record<string, string>) => new Map(Object.entries(vars));

// ---------------------------------------------------------------------------
// Without MPI

Deno.test("dist: detectLaunch reads Open MPI, Hydra and PMIx variables", () => {
  assert.deepEqual(
    detectLaunch(env({
      OMPI_COMM_WORLD_SIZE: "4",
      OMPI_COMM_WORLD_RANK: "3",
      OMPI_COMM_WORLD_LOCAL_RANK: "1",
      OMPI_COMM_WORLD_LOCAL_SIZE: "2",
      PMIX_RANK: "3", // Open MPI sets it too; its own variables win
    })),
    { size: 4, rank: 3, localRank: 1, localSize: 2, implementation: "openmpi" },
  );
  assert.deepEqual(
    detectLaunch(env({ PMI_SIZE: "2", PMI_RANK: "1", MPI_LOCALRANKID: "1", MPI_LOCALNRANKS: "2" })),
    { size: 2, rank: 1, localRank: 1, localSize: 2, implementation: "mpich" },
  );
  // srun --mpi=pmi2: no local rank, so initMpi asks MPI_Comm_split_type.
  assert.deepEqual(
    detectLaunch(env({ PMI_SIZE: "8", PMI_RANK: "5" })),
    { size: 8, rank: 5, localRank: -1, localSize: -1, implementation: "mpich" },
  );
  assert.deepEqual(
    detectLaunch(env({ PMIX_RANK: "2" })),
    { size: -1, rank: 2, localRank: -1, localSize: -1, implementation: "unknown" },
  );
});

Deno.test("dist: detectLaunch is null without a launcher and rejects garbage", () => {
  assert.equal(detectLaunch(env({})), null);
  assert.equal(detectLaunch(env({ SLURM_PROCID: "0", HOME: "/root" })), null);
  assert.throws(
    () => detectLaunch(env({ OMPI_COMM_WORLD_SIZE: "two", OMPI_COMM_WORLD_RANK: "0" })),
    /OMPI_COMM_WORLD_SIZE is "two", not a whole number/,
  );
});

Deno.test("dist: libmpiNames tries the sonames of the launcher's MPI", () => {
  assert.deepEqual(libmpiNames("openmpi", "linux"), ["libmpi.so.40", "libmpi.so"]);
  assert.deepEqual(libmpiNames("mpich", "linux"), ["libmpi.so.12", "libmpich.so.12", "libmpi.so"]);
  assert.deepEqual(libmpiNames("unknown", "linux"), [
    "libmpi.so.40",
    "libmpi.so.12",
    "libmpich.so.12",
    "libmpi.so",
  ]);
  assert.deepEqual(libmpiNames("openmpi", "darwin"), ["libmpi.40.dylib", "libmpi.dylib"]);
});

Deno.test("dist: chunkRanges splits at the limit and displacements lay parts end to end", () => {
  assert.deepEqual(chunkRanges(0, 3), []);
  assert.deepEqual(chunkRanges(3, 3), [[0, 3]]);
  assert.deepEqual(chunkRanges(10, 3), [[0, 3], [3, 3], [6, 3], [9, 1]]);
  assert.deepEqual(chunkRanges(2 ** 32 + 5, 2 ** 31 - 1), [
    [0, 2 ** 31 - 1],
    [2 ** 31 - 1, 2 ** 31 - 1],
    [2 ** 32 - 2, 7],
  ]);
  assert.throws(() => chunkRanges(10, 0), /chunk limit must be a whole number >= 1/);
  assert.deepEqual(displacements([3, 0, 5, 2]), [0, 3, 3, 8]);
});

Deno.test("dist: singleProcess is rank 0 of 1 and every collective is a no-op or a copy", async () => {
  const d = singleProcess();
  assert.deepEqual([d.rank, d.size, d.localRank, d.localSize], [0, 1, 0, 1]);
  const x = new Float64Array([1.5, -2]);
  await d.allReduceSum(x);
  assert.deepEqual([...x], [1.5, -2]);
  const out = new Float32Array(3);
  await d.reduceScatterSum(new Float32Array([1, 2, 3]), [3], out);
  assert.deepEqual([...out], [1, 2, 3]);
  const gathered = new Uint8Array(2);
  await d.allGather(new Uint8Array([7, 9]), [2], gathered);
  assert.deepEqual([...gathered], [7, 9]);
  const same = new Float32Array([4, 5]); // in place: local is out
  await d.allGather(same, [2], same);
  assert.deepEqual([...same], [4, 5]);
  const bytes = new Uint8Array([1, 2]);
  await d.broadcast(bytes);
  assert.deepEqual([...bytes], [1, 2]);
  await d.barrier();
  d.finalize();

  // The argument checks MPI runs, so a wrong call fails the same on one process.
  await assert.rejects(
    async () => await d.reduceScatterSum(new Float32Array(3), [1, 2], new Float32Array(1)),
    /counts has 2 entries for 1 ranks/,
  );
  await assert.rejects(
    async () => await d.reduceScatterSum(new Float32Array(3), [4], new Float32Array(4)),
    /data has 3 elements but counts sum to 4/,
  );
  await assert.rejects(
    async () => await d.allGather(new Float32Array(2), [2], new Uint8Array(2)),
    /must both be Float32Arrays or both Uint8Arrays/,
  );
  await assert.rejects(
    async () => await d.allReduceSum(new Int32Array(2) as unknown as Float32Array),
    /expected a Float32Array or Float64Array, got Int32Array/,
  );
  await assert.rejects(async () => await d.broadcast(bytes, 1), /root 1 is not a rank of 0 to 0/);
  assert.equal(typeof installAbortOnError(d), "function"); // nothing to install for one process
});

Deno.test("dist: initDist without a launcher is one process and never loads libmpi", async () => {
  // A library that cannot load: it would throw if initDist tried.
  const d = await initDist(env({ WEBGPU_GPT2_LIBMPI: "/nonexistent/libmpi.so.40" }));
  assert.deepEqual([d.rank, d.size], [0, 1]);
});

Deno.test("dist: a missing libmpi under mpirun is an error that says what to do", async () => {
  const fake = env({
    OMPI_COMM_WORLD_SIZE: "2",
    OMPI_COMM_WORLD_RANK: "0",
    WEBGPU_GPT2_LIBMPI: "/nonexistent/libmpi.so.40",
  });
  const err = await initDist(fake).then(() => null, (e: Error) => e);
  assert.ok(err instanceof Error, "initDist should have failed");
  for (
    const part of [
      "could not load WEBGPU_GPT2_LIBMPI=/nonexistent/libmpi.so.40",
      "under Open MPI's mpirun (rank 0 of 2)",
      "libmpi.so.40 (Open MPI) or libmpi.so.12 (MPICH)",
    ]
  ) assert.ok(err.message.includes(part), `missing "${part}" in: ${err.message}`);
});

Deno.test("dist: gpuSelectionEnv gives each local rank its own PCI device", () => {
  const gpus = ["0000:41:00.0", "0000:C1:00.0"];
  const none = env({});
  assert.deepEqual(gpuSelectionEnv(0, { pciAddresses: gpus, env: none }), {
    DRI_PRIME: "pci-0000_41_00_0",
    MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: "1",
    DENO_WEBGPU_BACKEND: "vulkan",
  });
  assert.equal(gpuSelectionEnv(3, { pciAddresses: gpus, env: none }).DRI_PRIME, "pci-0000_c1_00_0");
  // nvidia-smi prints 8-digit domains.
  assert.equal(
    gpuSelectionEnv(0, { pciAddresses: ["00000000:3B:00.0", "x"], env: none }).DRI_PRIME,
    "pci-0000_3b_00_0",
  );
  assert.deepEqual(gpuSelectionEnv(1, { pciAddresses: ["0000:41:00.0"], env: none }), {});
  assert.deepEqual(gpuSelectionEnv(1, { pciAddresses: gpus, env: env({ DRI_PRIME: "1" }) }), {});
  assert.throws(
    () => gpuSelectionEnv(0, { pciAddresses: ["gpu0", "gpu1"], env: none }),
    /not a PCI address: "gpu0"/,
  );
  assert.throws(() => gpuSelectionEnv(-1, { pciAddresses: gpus, env: none }), RangeError);
});

// ---------------------------------------------------------------------------
// Real jobs. Each launch starts 2 Deno processes (about half a second here).

function onPath(cmd: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${cmd}`).isFile) return `${dir}/${cmd}`;
    } catch {
      // not in this directory
    }
  }
  return null;
}

function versionOf(path: string | null): string {
  if (!path) return "";
  try {
    const out = new Deno.Command(path, { args: ["--version"], stdout: "piped", stderr: "piped" })
      .outputSync();
    return new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  } catch {
    return "";
  }
}

const mpirun = onPath("mpirun");
const openmpiRun = versionOf(mpirun).includes("Open MPI") ? mpirun : null;
const mpichRun = onPath("mpiexec.mpich") ??
  (versionOf(onPath("mpiexec")).includes("HYDRA") ? onPath("mpiexec") : null);
if (!openmpiRun) {
  console.warn(
    "skipping the Open MPI tests: no Open MPI mpirun on PATH " +
      "(apt-get install openmpi-bin libopenmpi-dev)",
  );
}
if (!mpichRun) {
  console.warn(
    "skipping the MPICH tests: no mpiexec.mpich on PATH (apt-get install mpich libmpich-dev)",
  );
}

const fixture = new URL("./fixtures/dist/ranks.ts", import.meta.url).pathname;

interface Job {
  code: number;
  out: string;
  /** When the launcher exited (ms since the epoch). */
  endedAt: number;
}

/** Runs `ranks.ts args` on 2 ranks; `wrap` goes between the launcher and deno (e.g. env -u). */
async function launch(
  launcher: string,
  args: string[],
  wrap: string[] = [],
): Promise<Job> {
  const flags = launcher === openmpiRun
    ? ["--allow-run-as-root", "--oversubscribe", "-np", "2"]
    : ["-n", "2"];
  const child = new Deno.Command(launcher, {
    args: [...flags, ...wrap, Deno.execPath(), "run", "-A", fixture, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000), // a hang fails the test instead of the suite
  }).spawn();
  const { code, stdout, stderr } = await child.output();
  const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  return { code, out, endedAt: Date.now() };
}

function expectLines(job: Job, lines: string[]) {
  for (const line of lines) {
    assert.ok(job.out.includes(line), `missing "${line}" in the job's output:\n${job.out}`);
  }
  assert.ok(!job.out.includes("FAIL"), job.out);
}

const COLLECTIVE_CHECKS = [
  "ok allReduceSum f32 (1000)",
  "ok allReduceSum f64 (37)",
  "ok allGather f32 round trip (8)",
  "ok allGather f32 in place (8)",
  "ok allGather u8 (8)",
  "ok queued allReduceSum a (11)",
  "ok queued allReduceSum b (13)",
  "ok broadcast from 1 (29)",
  "ok barrier",
  "done",
];

/** Every check on both ranks, plus rank-specific parts of the reduce-scatter (3 and 5 elements). */
function expectCollectives(job: Job, implementation: string) {
  assert.equal(job.code, 0, job.out);
  expectLines(job, [
    ...[0, 1].flatMap((r) => COLLECTIVE_CHECKS.map((c) => `rank ${r}: ${c}`)),
    "rank 0: ok reduceScatterSum (3)",
    "rank 1: ok reduceScatterSum (5)",
    `rank 0: info ${implementation} thread=multiple local=0/2`,
    `rank 1: info ${implementation} thread=multiple local=1/2`,
  ]);
}

/** The job ended non-zero within 10 s of rank 1's failure, saying why. */
function expectEndedFast(job: Job, mode: string, message: RegExp) {
  assert.notEqual(job.code, 0, job.out);
  const failedAt = Number(/failing by \w+ at (\d+)/.exec(job.out)?.[1]);
  assert.ok(failedAt > 0, `rank 1 never failed:\n${job.out}`);
  const latency = job.endedAt - failedAt;
  console.log(`  ${mode}: job ended ${latency} ms after rank 1 failed (exit code ${job.code})`);
  assert.ok(latency < 10_000, `took ${latency} ms:\n${job.out}`);
  assert.match(job.out, message);
  assert.ok(!job.out.includes("FAIL"), job.out);
}

for (
  const [name, launcher, implementation] of [
    ["Open MPI", openmpiRun, "openmpi"],
    ["MPICH", mpichRun, "mpich"],
  ] as const
) {
  const ignore = launcher === null;
  const run = (args: string[], wrap?: string[]) => launch(launcher!, args, wrap);

  Deno.test({
    name: `dist ${name}: collectives on 2 ranks give exact sums`,
    ignore,
    fn: async () => expectCollectives(await run(["collectives"]), implementation),
  });

  Deno.test({
    name: `dist ${name}: buffers split into chunks of 3 elements give the same results`,
    ignore,
    fn: async () => expectCollectives(await run(["chunked", "3"]), implementation),
  });

  const localVars = implementation === "openmpi"
    ? ["OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"]
    : ["MPI_LOCALRANKID", "MPI_LOCALNRANKS"];
  Deno.test({
    name: `dist ${name}: local rank comes from MPI when the launcher does not say`,
    ignore,
    fn: async () => {
      const job = await run(["collectives"], ["env", ...localVars.flatMap((v) => ["-u", v])]);
      expectCollectives(job, implementation);
    },
  });

  const failures: [string, RegExp][] = [
    ["error", /rank 1 of 2: uncaught error, aborting the job: Error: boom from rank 1/],
    ["reject", /rank 1 of 2: unhandled rejection, aborting the job: Error: rejected on rank 1/],
    ["inflight", /rank 1 of 2: uncaught error, aborting the job: Error: boom with a collective/],
    ["exit", /rank 1 of 2: exiting with code 3, aborting the job/],
    // Nobody can catch SIGKILL: the launcher notices and ends the job.
    [
      "kill",
      implementation === "openmpi" ? /exited on signal 9 \(Killed\)/ : /Killed \(signal 9\)/,
    ],
    // Without installAbortOnError Deno exits 1 and the launcher ends the job.
    ["error noabort", /Uncaught Error: boom from rank 1/],
  ];
  for (const [mode, message] of failures) {
    Deno.test({
      name: `dist ${name}: a rank that fails by ${mode} ends the job within 10 s`,
      ignore,
      fn: async () => expectEndedFast(await run(mode.split(" ")), mode, message),
    });
  }
}
