/**
 * MPI through Deno's FFI: the handful of collectives data-parallel training
 * needs (all-reduce, reduce-scatter, all-gather, broadcast, barrier, abort),
 * for Open MPI and for MPICH and its ABI family (Intel MPI, MVAPICH, Cray).
 *
 * How it fits together:
 * - {@link detectLaunch} reads the launcher's environment variables. No
 *   launcher, no MPI: libmpi is never loaded for a single process.
 * - The two ABIs differ in their handles. Open MPI's MPI_COMM_WORLD,
 *   MPI_FLOAT, MPI_SUM... are addresses of global symbols (read as pointer
 *   statics); MPICH's are integer constants from its mpi.h. We ask the loaded
 *   library who it is (MPI_Get_library_version) and bind accordingly.
 * - Collectives are `nonblocking: true` FFI calls: they run on a worker
 *   thread and return a promise, so the JS event loop (and GPU work queued
 *   from it) keeps going during an all-reduce. Deno may run each call on a
 *   different worker thread, so we need MPI_THREAD_SERIALIZED at least
 *   (FUNNELED would require the thread that called MPI_Init). We ask for
 *   MPI_THREAD_MULTIPLE because abort() runs on the JS thread while a
 *   collective may be blocked on a worker, which only MULTIPLE allows.
 * - Calls still go one at a time through a promise chain: MPI requires every
 *   rank to issue collectives on a communicator in the same order, and two
 *   worker threads racing would break that even under MULTIPLE.
 * - MPI counts are C ints: buffers over 2^31 - 1 elements are split into
 *   chunks (`chunkLimit`).
 *
 * @module
 */

import {
  type Fns,
  type Handle,
  type Handles,
  MPI_THREAD_MULTIPLE,
  MPI_THREAD_SERIALIZED,
  mpichHandles,
  OMPI_STATICS,
  type Ptr,
  symbols,
  THREAD_LEVELS,
} from "./_mpi_abi.ts";
import { detectLaunch, findLibmpi, type Launch, LIBMPI_ENV } from "./launch.ts";
import {
  checkAllGather,
  checkBroadcast,
  checkReduceScatter,
  chunkRanges,
  type Dist,
  type EnvReader,
  type FloatArray,
  floatKind,
} from "./dist.ts";

/** Options for {@link initMpi}. */
export interface MpiOptions {
  /** Environment to read the launch and WEBGPU_GPT2_LIBMPI from (default Deno.env). */
  env?: EnvReader;
  /** The launch (default: {@link detectLaunch}; with none, MPI starts as a singleton). */
  launch?: Launch | null;
  /** Most elements per MPI call (default 2^31 - 1); larger buffers are split. */
  chunkLimit?: number;
}

/** A Dist backed by MPI, with what was loaded. */
export interface Mpi extends Dist {
  /** The ABI bound: Open MPI's or MPICH's. */
  readonly implementation: "openmpi" | "mpich";
  /** The library name or path that was loaded. */
  readonly library: string;
  /** First line of MPI_Get_library_version, e.g. "Open MPI v4.1.4, ...". */
  readonly version: string;
  /** The thread level MPI provided ("multiple" or "serialized"). */
  readonly threadLevel: string;
}

let current: Mpi | undefined;
let finalizedOnce = false;
/** Buffers of queued and running calls (see `CallQueue.run`). */
const pinned = new Set<unknown[]>();

/**
 * Loads libmpi, calls MPI_Init_thread and returns the collectives on
 * MPI_COMM_WORLD. Once per process: later calls return the same object.
 * MPI_Finalize runs by itself when the process exits normally.
 *
 * @example
 * ```ts
 * // under: mpirun -np 2 deno run -A train.ts
 * const mpi = initMpi();
 * const x = new Float64Array([mpi.rank + 1]);
 * await mpi.allReduceSum(x); // x[0] = 3 on both ranks
 * ```
 */
export function initMpi(options: MpiOptions = {}): Mpi {
  if (current) return current;
  if (finalizedOnce) {
    throw new Error("MPI was finalized in this process: it cannot be initialized again");
  }
  const env = options.env ?? Deno.env;
  const launch = options.launch === undefined ? detectLaunch(env) : options.launch;
  const chunkLimit = options.chunkLimit ?? 2 ** 31 - 1;
  chunkRanges(0, chunkLimit); // checks the limit
  if (chunkLimit > 2 ** 31 - 1) {
    throw new RangeError(`chunkLimit ${chunkLimit} is over 2^31 - 1, MPI's largest int count`);
  }

  const { path, version } = findLibmpi(launch, env);
  const implementation = version.startsWith("Open MPI") ? "openmpi" : "mpich";
  const lib = openLibmpi(path, implementation);
  const provided = initThread(lib, version);
  const world = worldShape(lib, implementation, launch, `${path} (${version})`);
  const queue = new CallQueue();
  const w: World = { lib, queue, chunkLimit, rank: world.rank, size: world.size };

  const finalize = () => {
    if (queue.finalized) return;
    if (queue.inFlight > 0) {
      throw new Error(
        `finalize called with ${queue.inFlight} collective(s) in flight: await them first`,
      );
    }
    queue.finalized = true;
    finalizedOnce = true;
    current = undefined;
    const flag = new Int32Array(1);
    lib.fns.MPI_Finalized(flag);
    if (!flag[0]) lib.check(lib.fns.MPI_Finalize(), "MPI_Finalize");
  };

  const mpi: Mpi = {
    ...world,
    implementation,
    library: path,
    version,
    threadLevel: THREAD_LEVELS[Math.min(provided, 3)],
    allReduceSum: (data) => allReduceSum(w, data),
    reduceScatterSum: (data, counts, out) => reduceScatterSum(w, data, counts, out),
    allGather: (local, counts, out) => allGather(w, local, counts, out),
    broadcast: (data, root = 0) => broadcast(w, data, root),
    barrier: () => queue.run([], () => call(lib, "MPI_Barrier", lib.fns.MPI_Barrier(lib.h.world))),
    abort(code, message) {
      if (message) console.error(message);
      queue.aborting = true;
      letLauncherForwardOutput();
      // Runs on the JS thread even while a collective blocks a worker thread
      // (allowed under MPI_THREAD_MULTIPLE); it does not return.
      if (!queue.finalized) lib.fns.MPI_Abort(lib.h.world, code);
      Deno.exit(code);
    },
    finalize,
  };

  // At exit (the end of the program or Deno.exit): a clean exit finalizes,
  // since exiting without MPI_Finalize makes mpirun report the job as failed.
  // A failing exit aborts instead: MPI_Finalize waits for every rank, and the
  // others may be blocked in a collective this rank will never join.
  globalThis.addEventListener("unload", () => {
    if (queue.finalized || queue.aborting) return;
    const code = Deno.exitCode;
    if (code !== 0 || queue.inFlight > 0) {
      console.error(`rank ${w.rank} of ${w.size}: exiting with code ${code}, aborting the job`);
      letLauncherForwardOutput();
      lib.fns.MPI_Abort(lib.h.world, code || 1);
    } else {
      finalize();
    }
  });
  current = mpi;
  return mpi;
}

// ---- loading and starting MPI ----------------------------------------------

/** libmpi's functions and handles, and a check that turns a failed call into an Error. */
interface Lib {
  fns: Fns;
  h: Handles;
  check(rc: number, what: string): void;
}

/** Loads libmpi and binds the handles of its ABI. */
function openLibmpi(path: string, implementation: "openmpi" | "mpich"): Lib {
  let fns: Fns;
  let h: Handles;
  if (implementation === "openmpi") {
    const lib = Deno.dlopen(path, { ...symbols("pointer"), ...OMPI_STATICS });
    fns = lib.symbols as unknown as Fns;
    const s = lib.symbols;
    h = {
      world: s.ompi_mpi_comm_world,
      f32: s.ompi_mpi_float,
      f64: s.ompi_mpi_double,
      byte: s.ompi_mpi_byte,
      sum: s.ompi_mpi_op_sum,
      errorsReturn: s.ompi_mpi_errors_return,
      infoNull: s.ompi_mpi_info_null,
      inPlace: Deno.UnsafePointer.create(1n), // (void *) 1
      commTypeShared: 0,
    };
  } else {
    fns = Deno.dlopen(path, symbols("i32")).symbols as unknown as Fns;
    h = mpichHandles();
  }
  const errorString = (code: number): string => {
    const text = new Uint8Array(1024);
    const len = new Int32Array(1);
    if (fns.MPI_Error_string(code, text, len) !== 0) return `MPI error ${code}`;
    return new TextDecoder().decode(text.subarray(0, len[0]));
  };
  const check = (rc: number, what: string) => {
    if (rc !== 0) throw new Error(`${what} failed: ${errorString(rc)} (MPI error ${rc})`);
  };
  return { fns, h, check };
}

/**
 * MPI_Init_thread, asking for MPI_THREAD_MULTIPLE; returns the thread level provided. Ends
 * the job when it is under MPI_THREAD_SERIALIZED.
 */
function initThread({ fns, h, check }: Lib, version: string): number {
  const provided = new Int32Array(1);
  check(fns.MPI_Init_thread(null, null, MPI_THREAD_MULTIPLE, provided), "MPI_Init_thread");
  if (provided[0] < MPI_THREAD_SERIALIZED) {
    // Every rank has the same library: end the job rather than have each rank fail alone.
    console.error(
      `${version} provides only MPI_THREAD_${THREAD_LEVELS[provided[0]].toUpperCase()}: ` +
        "Deno runs FFI calls on worker threads, which needs MPI_THREAD_SERIALIZED or more; " +
        "use an MPI built with thread support (Debian's openmpi-bin and mpich are)",
    );
    letLauncherForwardOutput();
    fns.MPI_Abort(h.world, 1);
    Deno.exit(1);
  }
  // Errors come back as return codes, so we can say which call failed and why.
  check(fns.MPI_Comm_set_errhandler(h.world, h.errorsReturn), "MPI_Comm_set_errhandler");
  return provided[0];
}

/**
 * This process's rank and local rank in MPI_COMM_WORLD, checked against the launch; `library`
 * names the libmpi for the error when they disagree.
 */
function worldShape(
  { fns, h, check }: Lib,
  implementation: "openmpi" | "mpich",
  launch: Launch | null,
  library: string,
): { rank: number; size: number; localRank: number; localSize: number } {
  const int = new Int32Array(1);
  check(fns.MPI_Comm_rank(h.world, int), "MPI_Comm_rank");
  const rank = int[0];
  check(fns.MPI_Comm_size(h.world, int), "MPI_Comm_size");
  const size = int[0];
  if (launch && launch.size > 0 && launch.size !== size) {
    throw new Error(
      `${library} sees ${size} process(es) but the launcher started ${launch.size}: ` +
        `this libmpi does not belong to the mpirun that started us; set ${LIBMPI_ENV} to the ` +
        "libmpi of the MPI whose mpirun you use",
    );
  }
  let { localRank, localSize } = launch ?? { localRank: -1, localSize: -1 };
  if (localRank < 0 || localSize < 0) {
    // The launcher did not say: ask MPI which ranks share this machine's memory.
    const comm = new Uint8Array(8); // an MPI_Comm: a pointer (Open MPI) or an int (MPICH)
    check(
      fns.MPI_Comm_split_type(h.world, h.commTypeShared, rank, h.infoNull, comm),
      "MPI_Comm_split_type",
    );
    const local = implementation === "openmpi"
      ? Deno.UnsafePointer.create(new BigUint64Array(comm.buffer)[0])
      : new Int32Array(comm.buffer)[0];
    check(fns.MPI_Comm_rank(local, int), "MPI_Comm_rank");
    localRank = int[0];
    check(fns.MPI_Comm_size(local, int), "MPI_Comm_size");
    localSize = int[0];
    check(fns.MPI_Comm_free(comm), "MPI_Comm_free");
  }
  return { rank, size, localRank, localSize };
}

// ---- the queue: one MPI call at a time, in call order ----------------------

/** The calls of one MPI world, run one at a time in call order, and its lifecycle. */
class CallQueue {
  #tail: Promise<unknown> = Promise.resolve();
  inFlight = 0;
  finalized = false;
  aborting = false;

  /**
   * Runs `job` after every call queued before it. `keep` holds every buffer the job hands to
   * MPI: the worker thread writes through raw pointers, and nothing else may keep the arrays
   * from the GC.
   */
  run(keep: unknown[], job: () => Promise<void>): Promise<void> {
    if (this.finalized) return Promise.reject(new Error("MPI was finalized: no more collectives"));
    this.inFlight++;
    pinned.add(keep);
    const p = this.#tail.then(job).finally(() => {
      this.inFlight--;
      pinned.delete(keep);
    });
    this.#tail = p.catch(() => {});
    return p;
  }
}

/** What the collectives run on. */
interface World {
  lib: Lib;
  queue: CallQueue;
  chunkLimit: number;
  rank: number;
  size: number;
}

const call = async (lib: Lib, what: string, rc: Promise<number>) => lib.check(await rc, what);
const ptr = (a: ArrayBufferView): Ptr => Deno.UnsafePointer.of(a);
const typeOf = (h: Handles, a: ArrayBufferView): Handle =>
  a instanceof Float64Array ? h.f64 : a instanceof Float32Array ? h.f32 : h.byte;

// ---- the collectives ---------------------------------------------------------

function allReduceSum({ lib, queue, chunkLimit }: World, data: FloatArray): Promise<void> {
  const { fns, h } = lib;
  floatKind("allReduceSum", data);
  return queue.run([data], async () => {
    for (const [at, n] of chunkRanges(data.length, chunkLimit)) {
      const part = data.subarray(at, at + n);
      await call(
        lib,
        "MPI_Allreduce",
        fns.MPI_Allreduce(h.inPlace, ptr(part), n, typeOf(h, data), h.sum, h.world),
      );
    }
  });
}

function reduceScatterSum(
  { lib, queue, chunkLimit, rank, size }: World,
  data: Float32Array,
  counts: readonly number[],
  out: Float32Array,
): Promise<void> {
  const { fns, h } = lib;
  const displs = checkReduceScatter(data, counts, out, size, rank);
  const total = data.length;
  const parts = counts.slice(); // as they were at the call
  const counts32 = Int32Array.from(parts); // only used when all counts fit in an int
  return queue.run([data, out, counts32], async () => {
    if (total <= chunkLimit) {
      await call(
        lib,
        "MPI_Reduce_scatter",
        fns.MPI_Reduce_scatter(ptr(data), ptr(out), counts32, h.f32, h.sum, h.world),
      );
      return;
    }
    // Too big for int counts and displacements: reduce each part to its
    // owner, in pieces. Same sums; each call still moves up to chunkLimit.
    for (let r = 0; r < size; r++) {
      for (const [at, n] of chunkRanges(parts[r], chunkLimit)) {
        const send = data.subarray(displs[r] + at, displs[r] + at + n);
        const recv = r === rank ? ptr(out.subarray(at, at + n)) : null;
        await call(
          lib,
          "MPI_Reduce",
          fns.MPI_Reduce(ptr(send), recv, n, h.f32, h.sum, r, h.world),
        );
      }
    }
  });
}

function allGather(
  { lib, queue, chunkLimit, rank, size }: World,
  local: Float32Array | Uint8Array,
  counts: readonly number[],
  out: Float32Array | Uint8Array,
): Promise<void> {
  const { fns, h } = lib;
  const { displs, inPlace } = checkAllGather(local, counts, out, size, rank);
  const total = out.length;
  const type = typeOf(h, out);
  const parts = counts.slice(); // as they were at the call
  const counts32 = Int32Array.from(parts); // only used when everything fits in an int
  const displs32 = Int32Array.from(displs);
  return queue.run([local, out, counts32, displs32], async () => {
    if (total <= chunkLimit) {
      await call(
        lib,
        "MPI_Allgatherv",
        fns.MPI_Allgatherv(
          inPlace ? h.inPlace : ptr(local),
          parts[rank],
          type,
          ptr(out),
          counts32,
          displs32,
          type,
          h.world,
        ),
      );
      return;
    }
    // Too big for int displacements: each part is broadcast by its owner.
    if (!inPlace) out.set(local, displs[rank]);
    for (let r = 0; r < size; r++) {
      for (const [at, n] of chunkRanges(parts[r], chunkLimit)) {
        const part = out.subarray(displs[r] + at, displs[r] + at + n);
        await call(lib, "MPI_Bcast", fns.MPI_Bcast(ptr(part), n, type, r, h.world));
      }
    }
  });
}

function broadcast(
  { lib, queue, chunkLimit, rank, size }: World,
  data: Uint8Array,
  root: number,
): Promise<void> {
  const { fns, h } = lib;
  checkBroadcast(data, root, size);
  // The length first: a mismatch is an error here instead of a
  // truncation or a hang in MPI.
  const len = new Float64Array([data.length]);
  return queue.run([data, len], async () => {
    await call(lib, "MPI_Bcast", fns.MPI_Bcast(ptr(len), 1, h.f64, root, h.world));
    if (len[0] !== data.length) {
      throw new RangeError(
        `broadcast: rank ${rank} passed ${data.length} bytes but root ${root} sends ` +
          `${len[0]}: every rank must pass a buffer of the root's length`,
      );
    }
    for (const [at, n] of chunkRanges(data.length, chunkLimit)) {
      await call(
        lib,
        "MPI_Bcast",
        fns.MPI_Bcast(ptr(data.subarray(at, at + n)), n, h.byte, root, h.world),
      );
    }
  });
}

/**
 * MPI_Abort makes the launcher kill every rank at once, and MPICH's Hydra
 * drops what it has not yet read from our stdout and stderr: the message
 * saying why would be lost. A short pause lets it read first.
 */
function letLauncherForwardOutput(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
}

export {
  detectLaunch,
  type Launch,
  LIBMPI_ENV,
  libmpiNames,
  type MpiImplementation,
} from "./launch.ts";
