/**
 * A model's parameters: the flat f32 buffer (the master copy the optimizer
 * updates) and, under mixed precision, the f16 copy the matmuls read. The
 * copy is refreshed lazily: whoever changes the parameters marks them
 * changed, and the next pass encodes the cast first. Models that share
 * parameters (an eval model beside a training one) share the store, so one
 * refresh serves them all.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { type Dispatch, encodeDispatches, freeDispatches } from "../gpu/dispatch.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { castToHalf, type TensorRange } from "./ops/mod.ts";
import { arenaBytes } from "./plan.ts";

/** Parameters and their optional f16 copy. */
export class ParamStore {
  readonly params: GPUBuffer;
  /** The f16 copy (mixed precision), same layout as `params`. */
  readonly half?: GPUBuffer;
  readonly elements: number;
  #stale = true;
  #cast: Dispatch[] = [];

  /** Allocates `elements` f32 parameters, and their f16 copy when `half`. */
  constructor(mem: ArenaScope, elements: number, half: boolean) {
    this.elements = elements;
    this.params = mem.alloc("params", "parameters", elements * 4);
    if (half) {
      this.half = mem.alloc("params.f16", "parameters", arenaBytes(elements * 2), undefined, "f16");
    }
  }

  /** Builds the cast dispatches (once, before the first pass). */
  async build(rt: Runtime): Promise<void> {
    if (!this.half) return;
    this.#cast = await castToHalf(rt, this.elements, { src: this.params, dst: this.half });
  }

  /** The parameters changed: refresh the f16 copy before the next pass. */
  markChanged(): void {
    this.#stale = true;
  }

  /** Encodes the refresh of the f16 copy when it is stale. */
  encodeRefresh(rt: Runtime, encoder: GPUCommandEncoder): void {
    if (!this.half || !this.#stale) return;
    encodeDispatches(encoder, this.#cast, rt.profiler);
    this.#stale = false;
  }

  /** Where matmuls read a weight: the f16 copy when there is one, else the parameters. */
  weight(t: TensorRange): TensorRange {
    return this.half ? { ...t, buffer: this.half } : t;
  }

  /** Frees the cast dispatches' uniforms (the buffers belong to the owner's scope). */
  destroy(rt: Runtime): void {
    freeDispatches(rt.arena, this.#cast);
    this.#cast = [];
  }
}
