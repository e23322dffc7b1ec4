/**
 * Data-parallel training across processes: MPI collectives through Deno's FFI
 * (Open MPI or MPICH), a single-process stand-in, fail-fast on errors, and
 * the environment that gives each local rank its own GPU.
 *
 * @example
 * ```ts
 * import { gpuSelectionEnv, initDist } from "./mod.ts";
 *
 * const dist = await initDist(); // MPI under mpirun, one process otherwise
 * for (const [k, v] of Object.entries(gpuSelectionEnv(dist.localRank))) Deno.env.set(k, v);
 * const grads = new Float32Array(1000);
 * await dist.allReduceSum(grads);
 * ```
 *
 * @module
 */

export {
  type Dist,
  type DistOptions,
  type EnvReader,
  type FloatArray,
  gpuSelectionEnv,
  type GpuSelectionOptions,
  initDist,
  installAbortOnError,
  singleProcess,
} from "./dist.ts";
export {
  detectLaunch,
  initMpi,
  type Launch,
  LIBMPI_ENV,
  libmpiNames,
  type Mpi,
  type MpiImplementation,
  type MpiOptions,
} from "./mpi.ts";
