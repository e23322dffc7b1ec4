/**
 * The WebGPU runtime: the backend (Deno's own or Dawn), device and limits, buffer arena with
 * memory accounting, pipeline cache, dispatches and the timestamp profiler.
 *
 * @module
 */

export {
  Arena,
  type ArenaScope,
  formatMemory,
  MEMORY_CATEGORIES,
  type MemoryBytes,
  type MemoryCategory,
  type MemoryReport,
} from "./arena.ts";
export {
  type Backend,
  BACKEND_CHOICES,
  type BackendChoice,
  backendChoice,
  withDirectives,
} from "./backend.ts";
export {
  type Gpu,
  type GpuLimits,
  NoAdapterError,
  OPTIONAL_FEATURES,
  requestGpu,
  type RequestGpuOptions,
  type SubgroupMatrixConfig,
} from "./device.ts";
export { type BufferPart, SplitBuffer, splitOf } from "./split_buffer.ts";
export { type Dispatch, encodeDispatches, freeDispatches, runDispatches } from "./dispatch.ts";
export { type DType, dtypeBytes } from "./dtype.ts";
export {
  type KernelLayout,
  type KernelSource,
  type OverrideConstants,
  PipelineCache,
  ShaderError,
} from "./pipelines.ts";
export { type KernelTiming, Profiler } from "./profiler.ts";
export {
  createRuntime,
  type ElementRange,
  readBuffer,
  readF32,
  readSpans,
  readValues,
  type Runtime,
} from "./runtime.ts";
export { type BufferRange, type DispatchSpec, makeDispatch } from "./kernel.ts";
export {
  Autotuner,
  type AutotunerOptions,
  tuneCachePath,
  type TuneCheck,
  type TuneResult,
  tunerFor,
  type TuneSpec,
  type TuneTimer,
  withTuner,
} from "./autotune.ts";
export { dispatchTimer, type DispatchTimerOptions } from "./tune_timer.ts";
export {
  type BindingArg,
  type BindingDecl,
  defineKernel,
  type DispatchArgs,
  type DispatchPlan,
  type EntryDecl,
  type Kernel,
  type KernelDecl,
  type OverrideDecl,
  packUniforms,
  type StorageType,
  type StructDecl,
  type UniformFields,
  uniformLayout,
  type UniformSlot,
  type UniformType,
} from "./define_kernel.ts";
