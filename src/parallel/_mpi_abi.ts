/**
 * MPI's C ABI as Deno's FFI sees it, for the two families: the symbol table (handles are
 * `pointer` for Open MPI, `i32` for MPICH), Open MPI's handle statics, MPICH's integer
 * handles from its mpi.h, and the thread levels. Private to src/parallel/mpi.ts.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// The binding. Handles are `pointer` for Open MPI and `i32` for MPICH, so the
// symbol table is built for one or the other and used through `Fns`.

export type Handle = Deno.PointerValue | number;
export type Ptr = Deno.PointerValue;

export interface Fns {
  MPI_Init_thread(argc: Ptr, argv: Ptr, required: number, provided: Int32Array): number;
  MPI_Finalized(flag: Int32Array): number;
  MPI_Comm_rank(comm: Handle, rank: Int32Array): number;
  MPI_Comm_size(comm: Handle, size: Int32Array): number;
  MPI_Comm_set_errhandler(comm: Handle, handler: Handle): number;
  MPI_Comm_split_type(
    comm: Handle,
    type: number,
    key: number,
    info: Handle,
    out: Uint8Array,
  ): number;
  MPI_Comm_free(comm: Uint8Array): number;
  MPI_Error_string(code: number, text: Uint8Array, len: Int32Array): number;
  MPI_Abort(comm: Handle, code: number): number;
  MPI_Finalize(): number;
  MPI_Allreduce(
    send: Ptr,
    recv: Ptr,
    count: number,
    type: Handle,
    op: Handle,
    comm: Handle,
  ): Promise<number>;
  MPI_Reduce_scatter(
    send: Ptr,
    recv: Ptr,
    counts: Int32Array,
    type: Handle,
    op: Handle,
    comm: Handle,
  ): Promise<number>;
  MPI_Reduce(
    send: Ptr,
    recv: Ptr,
    count: number,
    type: Handle,
    op: Handle,
    root: number,
    comm: Handle,
  ): Promise<number>;
  MPI_Allgatherv(
    send: Ptr,
    sendCount: number,
    sendType: Handle,
    recv: Ptr,
    counts: Int32Array,
    displs: Int32Array,
    recvType: Handle,
    comm: Handle,
  ): Promise<number>;
  MPI_Bcast(buf: Ptr, count: number, type: Handle, root: number, comm: Handle): Promise<number>;
  MPI_Barrier(comm: Handle): Promise<number>;
}

export function symbols(h: "pointer" | "i32") {
  const nb = { nonblocking: true } as const;
  return {
    MPI_Init_thread: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
    MPI_Finalized: { parameters: ["buffer"], result: "i32" },
    MPI_Comm_rank: { parameters: [h, "buffer"], result: "i32" },
    MPI_Comm_size: { parameters: [h, "buffer"], result: "i32" },
    MPI_Comm_set_errhandler: { parameters: [h, h], result: "i32" },
    MPI_Comm_split_type: { parameters: [h, "i32", "i32", h, "buffer"], result: "i32" },
    MPI_Comm_free: { parameters: ["buffer"], result: "i32" },
    MPI_Error_string: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    MPI_Abort: { parameters: [h, "i32"], result: "i32" },
    MPI_Finalize: { parameters: [], result: "i32" },
    MPI_Allreduce: { parameters: ["pointer", "pointer", "i32", h, h, h], result: "i32", ...nb },
    MPI_Reduce_scatter: {
      parameters: ["pointer", "pointer", "buffer", h, h, h],
      result: "i32",
      ...nb,
    },
    MPI_Reduce: { parameters: ["pointer", "pointer", "i32", h, h, "i32", h], result: "i32", ...nb },
    MPI_Allgatherv: {
      parameters: ["pointer", "i32", h, "pointer", "buffer", "buffer", h, h],
      result: "i32",
      ...nb,
    },
    MPI_Bcast: { parameters: ["pointer", "i32", h, "i32", h], result: "i32", ...nb },
    MPI_Barrier: { parameters: [h], result: "i32", ...nb },
  } as const;
}

/** Open MPI's predefined handles: the addresses of these globals. */
export const OMPI_STATICS = {
  ompi_mpi_comm_world: { type: "pointer" },
  ompi_mpi_float: { type: "pointer" },
  ompi_mpi_double: { type: "pointer" },
  ompi_mpi_byte: { type: "pointer" },
  ompi_mpi_op_sum: { type: "pointer" },
  ompi_mpi_errors_return: { type: "pointer" },
  ompi_mpi_info_null: { type: "pointer" },
} as const;

export interface Handles {
  world: Handle;
  f32: Handle;
  f64: Handle;
  byte: Handle;
  sum: Handle;
  errorsReturn: Handle;
  infoNull: Handle;
  inPlace: Ptr;
  commTypeShared: number;
}

/**
 * MPICH's handles, from /usr/include/x86_64-linux-gnu/mpich/mpi.h (MPICH 4.0;
 * fixed by its ABI). A function: making a pointer needs FFI permission, which
 * importing this module must not.
 */
export const mpichHandles = (): Handles => ({
  world: 0x44000000,
  f32: 0x4c00040a,
  f64: 0x4c00080b,
  byte: 0x4c00010d,
  sum: 0x58000003,
  errorsReturn: 0x54000001,
  infoNull: 0x1c000000,
  inPlace: Deno.UnsafePointer.create(0xffffffffffffffffn), // (void *) -1
  commTypeShared: 1,
});

export const THREAD_LEVELS = ["single", "funneled", "serialized", "multiple"] as const;
export const MPI_THREAD_SERIALIZED = 2;
export const MPI_THREAD_MULTIPLE = 3;
