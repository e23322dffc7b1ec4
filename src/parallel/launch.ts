/**
 * Where an MPI job comes from: the launcher's environment variables (Open MPI, MPICH's
 * Hydra, PMIx), the libmpi names each implementation installs, and opening the right one
 * (or saying what to install). Reading the environment loads nothing: a process that no
 * launcher started never touches libmpi.
 *
 * @module
 */

import type { EnvReader } from "./dist.ts";

/** Which MPI the launcher belongs to, as far as its environment tells. */
export type MpiImplementation = "openmpi" | "mpich" | "unknown";

/** What the launcher told this process. -1 where it did not say. */
export interface Launch {
  /** Number of processes (-1: unknown until MPI_Init). */
  size: number;
  /** This process's rank. */
  rank: number;
  /** Rank on this machine (-1: unknown, asked of MPI after init). */
  localRank: number;
  /** Processes on this machine (-1: unknown, asked of MPI after init). */
  localSize: number;
  /** The launcher's family: picks the library names to try. */
  implementation: MpiImplementation;
}

/** The variable that names the libmpi to load, overriding the search. */
export const LIBMPI_ENV = "WEBGPU_GPT2_LIBMPI";

/**
 * The launch this process is part of, from the variables launchers set:
 * Open MPI's mpirun (OMPI_COMM_WORLD_*), MPICH's Hydra mpiexec (PMI_RANK,
 * PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS), other PMI or PMIx launchers
 * such as srun (PMI_RANK, PMIX_RANK). Null when none is set: a single
 * process.
 *
 * @example
 * ```ts
 * detectLaunch(new Map([["OMPI_COMM_WORLD_SIZE", "2"], ["OMPI_COMM_WORLD_RANK", "1"]]));
 * // { size: 2, rank: 1, localRank: -1, localSize: -1, implementation: "openmpi" }
 * ```
 */
export function detectLaunch(env: EnvReader = Deno.env): Launch | null {
  const num = (key: string): number | undefined => {
    const raw = env.get(key);
    if (raw === undefined || raw.trim() === "") return undefined;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0) {
      throw new RangeError(`${key} is "${raw}", not a whole number: is the launcher broken?`);
    }
    return n;
  };
  const make = (
    implementation: MpiImplementation,
    rank: number | undefined,
    size: number | undefined,
    localRank: number | undefined,
    localSize: number | undefined,
  ): Launch => ({
    size: size ?? -1,
    rank: rank ?? 0,
    localRank: localRank ?? -1,
    localSize: localSize ?? -1,
    implementation,
  });
  const ompiRank = num("OMPI_COMM_WORLD_RANK");
  const ompiSize = num("OMPI_COMM_WORLD_SIZE");
  if (ompiRank !== undefined || ompiSize !== undefined) {
    return make(
      "openmpi",
      ompiRank,
      ompiSize,
      num("OMPI_COMM_WORLD_LOCAL_RANK"),
      num("OMPI_COMM_WORLD_LOCAL_SIZE"),
    );
  }
  const pmiRank = num("PMI_RANK");
  const pmiSize = num("PMI_SIZE");
  const hydraLocal = num("MPI_LOCALRANKID");
  if (pmiRank !== undefined || pmiSize !== undefined || hydraLocal !== undefined) {
    // PMI-1/2 is MPICH's wire protocol: Hydra (MPICH, Intel MPI, MVAPICH) and
    // srun --mpi=pmi2 set it; Open MPI's own mpirun never does.
    return make(
      "mpich",
      pmiRank,
      pmiSize,
      hydraLocal,
      num("MPI_LOCALNRANKS"),
    );
  }
  // PMIx alone (srun --mpi=pmix, prterun): Open MPI's runtime, but MPICH speaks it too.
  const pmixRank = num("PMIX_RANK");
  if (pmixRank !== undefined) return make("unknown", pmixRank, undefined, undefined, undefined);
  return null;
}

/**
 * Library names to try for an implementation, in order. Open MPI has kept
 * soname libmpi.so.40 from 3.0 to 5.x; the MPICH ABI is libmpi.so.12
 * (Debian and Ubuntu ship it as libmpich.so.12).
 */
export function libmpiNames(
  implementation: MpiImplementation,
  os: typeof Deno.build.os = Deno.build.os,
): string[] {
  const so = (base: string, v: number) =>
    os === "darwin" ? `${base}.${v}.dylib` : `${base}.so.${v}`;
  const openmpi = [so("libmpi", 40)];
  const mpich = [so("libmpi", 12), so("libmpich", 12)];
  const plain = os === "darwin" ? "libmpi.dylib" : "libmpi.so";
  if (implementation === "openmpi") return [...openmpi, plain];
  if (implementation === "mpich") return [...mpich, plain];
  return [...openmpi, ...mpich, plain];
}

/** Finds and opens libmpi; returns its path and the first line of its version string. */
export function findLibmpi(
  launch: Launch | null,
  env: EnvReader,
): { path: string; version: string } {
  const override = env.get(LIBMPI_ENV);
  const names = override ? [override] : libmpiNames(launch?.implementation ?? "unknown");
  const failures: string[] = [];
  for (const name of names) {
    try {
      // Only the version query: it works before MPI_Init, and tells us the ABI.
      const probe = Deno.dlopen(name, {
        MPI_Get_library_version: { parameters: ["buffer", "buffer"], result: "i32" },
      });
      const text = new Uint8Array(8192); // MPICH's MPI_MAX_LIBRARY_VERSION_STRING
      const len = new Int32Array(1);
      probe.symbols.MPI_Get_library_version(text, len);
      // The probe stays open: closing could unload libmpi under the real handle.
      const version = new TextDecoder().decode(text.subarray(0, len[0]))
        .replace(/\0/g, "") // Open MPI counts the terminating NUL
        .split("\n")[0].trim();
      return { path: name, version };
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable) {
        throw new Error(
          "loading libmpi needs FFI permission (this process was started by an MPI launcher): " +
            "run deno with --allow-ffi or -A",
        );
      }
      const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
      failures.push(`${name} (${why.replace(/^(Could not open library: )+/, "")})`);
    }
  }
  const launcherName = {
    openmpi: "Open MPI's mpirun",
    mpich: "MPICH's mpiexec",
    unknown: "an MPI launcher",
  }[launch?.implementation ?? "unknown"];
  const launcher = launch
    ? `${launcherName} (rank ${launch.rank}${launch.size > 0 ? ` of ${launch.size}` : ""})`
    : "no launcher (singleton MPI)";
  if (override) {
    throw new Error(
      `could not load ${LIBMPI_ENV}=${override} under ${launcher}: ${failures[0]}: set it to ` +
        "the path of libmpi.so.40 (Open MPI) or libmpi.so.12 (MPICH), or unset it to search",
    );
  }
  const install = launch?.implementation === "mpich"
    ? "apt-get install mpich libmpich-dev"
    : "apt-get install openmpi-bin libopenmpi-dev";
  throw new Error(
    `could not load libmpi under ${launcher}: tried ${failures.join(", ")}: install the MPI ` +
      `that provides your mpirun (${install}), or set ${LIBMPI_ENV} to the path of its libmpi`,
  );
}
