/**
 * Data-parallel collectives behind one small interface, {@link Dist}: MPI
 * (through Deno's FFI, see mpi.ts) when the process was started by `mpirun`
 * or `mpiexec`, and a single-process stand-in otherwise, so a training loop
 * calls the same methods either way.
 *
 * The contract, as in llm.c's multi-GPU path: every rank calls the same
 * collectives in the same order with the same sizes. A rank that fails must
 * end the whole job ({@link installAbortOnError}) instead of leaving the
 * others waiting forever inside a collective.
 *
 * @module
 */

/** Float element types the reductions accept. */
export type FloatArray = Float32Array | Float64Array;

/**
 * The collectives data-parallel training needs. Rank r of `size` processes;
 * `localRank` of `localSize` on this machine (it picks the GPU).
 *
 * Buffers are read and written in place by another thread while a promise is
 * pending: do not touch, transfer or unmap them until it settles. Calls are
 * queued, so several may be started without awaiting; they run one at a time
 * in call order, which is the same on every rank.
 */
export interface Dist {
  /** This process's rank, 0 to size - 1. */
  readonly rank: number;
  /** Number of processes in the job. */
  readonly size: number;
  /** Rank among the processes on this machine (choose the GPU with it). */
  readonly localRank: number;
  /** Number of processes on this machine. */
  readonly localSize: number;
  /** Sum in place over all ranks. */
  allReduceSum(data: FloatArray): Promise<void>;
  /**
   * Reduce-scatter sums: `data` is the full vector on every rank, split into
   * `size` contiguous parts of `counts[r]` elements; rank r receives the sum
   * of part r into `out` (length counts[rank]).
   */
  reduceScatterSum(data: Float32Array, counts: readonly number[], out: Float32Array): Promise<void>;
  /**
   * All-gather: every rank contributes `local` (counts[rank] elements) and
   * receives all parts in rank order into `out`. `local` may be the view of
   * `out` at this rank's part (in place).
   */
  allGather(
    local: Float32Array | Uint8Array,
    counts: readonly number[],
    out: Float32Array | Uint8Array,
  ): Promise<void>;
  /** Broadcast bytes from root (default 0) to all; every rank passes the same length. */
  broadcast(data: Uint8Array, root?: number): Promise<void>;
  /** Waits until every rank has called it. */
  barrier(): Promise<void>;
  /** MPI_Abort: ends every rank with this exit code; prints the message first. */
  abort(code: number, message?: string): never;
  /** Ends MPI cleanly (idempotent). Called for you when the process exits normally. */
  finalize(): void;
}

/** Options for {@link initDist}. */
export interface DistOptions {
  /**
   * Under MPI, turn an uncaught error or unhandled rejection on any rank into
   * MPI_Abort of the whole job (default true; see {@link installAbortOnError}).
   */
  abortOnError?: boolean;
  /**
   * Most elements one MPI call moves (default 2^31 - 1, MPI's int count).
   * Larger buffers are split; tests set it tiny to exercise the splitting.
   */
  chunkLimit?: number;
}

/** Reads environment variables: `Deno.env`, or a `Map` in tests. */
export interface EnvReader {
  /** The variable's value, or undefined when it is not set. */
  get(key: string): string | undefined;
}

/**
 * The Dist for this process: MPI when a launcher (`mpirun`, `mpiexec`, srun
 * with PMI/PMIx) started it, otherwise {@link singleProcess}. libmpi is only
 * loaded in the first case.
 *
 * @example
 * ```ts
 * const dist = await initDist();
 * const grads = new Float32Array(1024);
 * await dist.allReduceSum(grads); // sum over ranks; divide by dist.size for the mean
 * if (dist.rank === 0) console.log(`training on ${dist.size} processes`);
 * ```
 */
export async function initDist(
  env: EnvReader = Deno.env,
  options: DistOptions = {},
): Promise<Dist> {
  // Loaded only when needed: a single-process run never touches the FFI module.
  const { detectLaunch, initMpi } = await import("./mpi.ts");
  const launch = detectLaunch(env);
  if (!launch) return singleProcess();
  const dist = initMpi({ env, launch, chunkLimit: options.chunkLimit });
  if (options.abortOnError ?? true) installAbortOnError(dist);
  return dist;
}

/**
 * {@linkcode initDist}, then, with several ranks, this process's GPU chosen from its local
 * rank ({@linkcode gpuSelectionEnv} set in the environment): call it before the first
 * adapter request (createRuntime). What the train and eval tasks start with.
 */
export async function initRanks(env: EnvReader = Deno.env): Promise<Dist> {
  const dist = await initDist(env);
  if (dist.size > 1) {
    for (const [k, v] of Object.entries(gpuSelectionEnv(dist.localRank, { env }))) {
      Deno.env.set(k, v);
    }
  }
  return dist;
}

// ---------------------------------------------------------------------------
// One process: rank 0 of 1. Sums over one rank are the data itself, so the
// reductions only check their arguments (the same checks MPI runs) and copy.

/**
 * A Dist for one process: rank 0 of 1, every collective a no-op or a copy.
 *
 * @example
 * ```ts
 * const dist = singleProcess();
 * const out = new Float32Array(3);
 * await dist.reduceScatterSum(new Float32Array([1, 2, 3]), [3], out); // out = [1, 2, 3]
 * ```
 */
export function singleProcess(): Dist {
  return {
    rank: 0,
    size: 1,
    localRank: 0,
    localSize: 1,
    allReduceSum(data) {
      floatKind("allReduceSum", data);
      return Promise.resolve();
    },
    reduceScatterSum(data, counts, out) {
      checkReduceScatter(data, counts, out, 1, 0);
      if (!sameMemory(data, out)) out.set(data);
      return Promise.resolve();
    },
    allGather(local, counts, out) {
      checkAllGather(local, counts, out, 1, 0);
      if (!sameMemory(local, out)) out.set(local);
      return Promise.resolve();
    },
    broadcast(data, root = 0) {
      checkBroadcast(data, root, 1);
      return Promise.resolve();
    },
    barrier() {
      return Promise.resolve();
    },
    abort(code, message) {
      if (message) console.error(message);
      Deno.exit(code);
    },
    finalize() {},
  };
}

// ---------------------------------------------------------------------------
// Failing fast. MPI's own rule: a process that dies mid-job leaves the others
// blocked in their next collective unless someone aborts the job. mpirun
// (Open MPI and MPICH's Hydra) kills the job when one rank exits non-zero,
// but only after the rank has exited; a rank that keeps running after an
// unhandled rejection (or sits in a finally block) would stall everybody.

/**
 * Makes an uncaught error or unhandled promise rejection on this rank call
 * `dist.abort(1, ...)`, which prints the error with the rank and ends every
 * rank of the job. Returns a function that removes the handlers. A no-op for
 * a single process (Deno already prints the error and exits with code 1).
 *
 * @example
 * ```ts
 * const dist = await initDist(Deno.env, { abortOnError: false });
 * const uninstall = installAbortOnError(dist); // what initDist does by default
 * uninstall();
 * ```
 */
export function installAbortOnError(dist: Dist): () => void {
  if (dist.size <= 1 || guarded.has(dist)) return () => {};
  guarded.add(dist);
  const who = `rank ${dist.rank} of ${dist.size}`;
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    dist.abort(1, `${who}: uncaught error, aborting the job: ${describe(e.error ?? e.message)}`);
  };
  const onRejection = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    dist.abort(1, `${who}: unhandled rejection, aborting the job: ${describe(e.reason)}`);
  };
  globalThis.addEventListener("error", onError);
  globalThis.addEventListener("unhandledrejection", onRejection);
  return () => {
    guarded.delete(dist);
    globalThis.removeEventListener("error", onError);
    globalThis.removeEventListener("unhandledrejection", onRejection);
  };
}

/** Dists that already abort on errors (initDist may hand out the same one twice). */
const guarded = new WeakSet<Dist>();

function describe(e: unknown): string {
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

// ---------------------------------------------------------------------------
// Argument checks shared by both implementations, so a wrong call fails the
// same way on one process as on many (and before MPI can hang on it).

/** "f32" or "f64" for a float array; TypeError otherwise. */
export function floatKind(op: string, data: unknown): "f32" | "f64" {
  if (data instanceof Float32Array) return "f32";
  if (data instanceof Float64Array) return "f64";
  throw new TypeError(`${op}: expected a Float32Array or Float64Array, got ${typeName(data)}`);
}

/** Start offset of each part when parts of `counts` elements lie end to end. */
export function displacements(counts: readonly number[]): number[] {
  const displs: number[] = [];
  let at = 0;
  for (const c of counts) {
    displs.push(at);
    at += c;
  }
  return displs;
}

/** `[offset, length]` pieces of at most `limit` elements that cover `n` elements in order. */
export function chunkRanges(n: number, limit: number): [number, number][] {
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RangeError(`chunk limit must be a whole number >= 1, got ${limit}`);
  }
  const out: [number, number][] = [];
  for (let at = 0; at < n; at += limit) out.push([at, Math.min(limit, n - at)]);
  return out;
}

/** Checks reduceScatterSum's arguments; returns the displacements of the parts. */
export function checkReduceScatter(
  data: Float32Array,
  counts: readonly number[],
  out: Float32Array,
  size: number,
  rank: number,
): number[] {
  const op = "reduceScatterSum";
  if (!(data instanceof Float32Array) || !(out instanceof Float32Array)) {
    throw new TypeError(
      `${op}: data and out must be Float32Arrays, got ${typeName(data)} and ${typeName(out)}`,
    );
  }
  const total = checkCounts(op, counts, size);
  if (data.length !== total) {
    throw new RangeError(`${op}: data has ${data.length} elements but counts sum to ${total}`);
  }
  if (out.length !== counts[rank]) {
    throw new RangeError(
      `${op}: out has ${out.length} elements but counts[${rank}] is ${counts[rank]}`,
    );
  }
  if (overlaps(data, out) && !(size === 1 && sameMemory(data, out))) {
    throw new RangeError(`${op}: out overlaps data: pass a separate output buffer`);
  }
  return displacements(counts);
}

/** Checks allGather's arguments; returns the displacements and whether it is in place. */
export function checkAllGather(
  local: Float32Array | Uint8Array,
  counts: readonly number[],
  out: Float32Array | Uint8Array,
  size: number,
  rank: number,
): { displs: number[]; inPlace: boolean } {
  const op = "allGather";
  const okType = (a: unknown) => a instanceof Float32Array || a instanceof Uint8Array;
  if (!okType(local) || !okType(out) || local.constructor !== out.constructor) {
    throw new TypeError(
      `${op}: local and out must both be Float32Arrays or both Uint8Arrays, got ` +
        `${typeName(local)} and ${typeName(out)}`,
    );
  }
  const total = checkCounts(op, counts, size);
  if (local.length !== counts[rank]) {
    throw new RangeError(
      `${op}: local has ${local.length} elements but counts[${rank}] is ${counts[rank]}`,
    );
  }
  if (out.length !== total) {
    throw new RangeError(`${op}: out has ${out.length} elements but counts sum to ${total}`);
  }
  const displs = displacements(counts);
  const inPlace = local.buffer === out.buffer &&
    local.byteOffset === out.byteOffset + displs[rank] * out.BYTES_PER_ELEMENT;
  if (!inPlace && overlaps(local, out)) {
    throw new RangeError(
      `${op}: local overlaps out but is not this rank's part of it: pass ` +
        `out.subarray(${displs[rank]}, ${displs[rank] + counts[rank]}) or a separate buffer`,
    );
  }
  return { displs, inPlace };
}

/** Checks broadcast's arguments. */
export function checkBroadcast(data: Uint8Array, root: number, size: number): void {
  if (!(data instanceof Uint8Array)) {
    throw new TypeError(`broadcast: expected a Uint8Array, got ${typeName(data)}`);
  }
  if (!Number.isInteger(root) || root < 0 || root >= size) {
    throw new RangeError(`broadcast: root ${root} is not a rank of 0 to ${size - 1}`);
  }
}

function checkCounts(op: string, counts: readonly number[], size: number): number {
  if (counts.length !== size) {
    throw new RangeError(
      `${op}: counts has ${counts.length} entries for ${size} ranks: pass one count per rank`,
    );
  }
  let total = 0;
  for (const c of counts) {
    if (!Number.isSafeInteger(c) || c < 0) {
      throw new RangeError(`${op}: counts must be whole numbers >= 0, got ${c}`);
    }
    total += c;
  }
  return total;
}

function sameMemory(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset;
}

function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteLength > 0 && b.byteLength > 0 &&
    a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

function typeName(x: unknown): string {
  return x === null ? "null" : typeof x === "object" ? x.constructor?.name ?? "object" : typeof x;
}

import { gpuSelectionEnv } from "./gpu_select.ts";

export { gpuSelectionEnv, type GpuSelectionOptions } from "./gpu_select.ts";

/**
 * Gathers one byte string from every rank on rank 0, in rank order (undefined on the other
 * ranks): each rank in turn broadcasts its length, then its bytes. For results and state of
 * different sizes per rank; every rank must call it at the same point.
 */
export async function gatherToRoot(
  dist: Dist,
  mine: Uint8Array,
): Promise<Uint8Array[] | undefined> {
  const all: Uint8Array[] = [];
  for (let r = 0; r < dist.size; r++) {
    const len = new Float64Array([r === dist.rank ? mine.length : 0]);
    await dist.broadcast(new Uint8Array(len.buffer), r);
    const bytes = r === dist.rank ? mine : new Uint8Array(len[0]);
    if (len[0] > 0) await dist.broadcast(bytes, r);
    if (dist.rank === 0) all.push(bytes);
  }
  return dist.rank === 0 ? all : undefined;
}

/** {@linkcode gatherToRoot} of JSON values: every rank's value on rank 0, in rank order. */
export async function gatherJson<T>(dist: Dist, value: T): Promise<T[] | undefined> {
  const parts = await gatherToRoot(dist, new TextEncoder().encode(JSON.stringify(value)));
  return parts?.map((b) => JSON.parse(new TextDecoder().decode(b)) as T);
}
