/**
 * A batch on its way to the GPU: tokens, targets and the positions sorted by token, packed
 * into one reused array and written with one `writeBuffer`.
 *
 * @module
 */

/** Target id that marks a position without a loss. */
export const IGNORE_TARGET = 0xffffffff;

/** Packs batches of B*T tokens for one graph's input buffer. */
export class BatchPacker {
  /** Tokens per batch (B*T). */
  readonly BT: number;
  /** Elements between the tokens, the targets and the order (B*T rounded up to 64). */
  readonly stride: number;
  readonly #V: number;
  readonly #B: number;
  readonly #T: number;
  #data: Uint32Array<ArrayBuffer>;
  /** The targets of the last packed batch (IGNORE_TARGET where none). */
  targets: Uint32Array = new Uint32Array(0);

  /** A packer for batches of B sequences of T tokens of a V-token vocabulary. */
  constructor(B: number, T: number, V: number) {
    this.#B = B;
    this.#T = T;
    this.#V = V;
    this.BT = B * T;
    this.stride = Math.ceil(this.BT / 64) * 64;
    this.#data = new Uint32Array(3 * this.stride);
  }

  /** Checks and packs tokens and targets [B*T] (targets may use IGNORE_TARGET). */
  pack(tokens: ArrayLike<number>, targets?: ArrayLike<number>): Uint32Array<ArrayBuffer> {
    const { BT, stride: S } = this, V = this.#V;
    for (const [what, xs] of [["tokens", tokens], ["targets", targets]] as const) {
      if (xs && xs.length !== BT) {
        throw new RangeError(
          `Expected ${BT} ${what} (B ${this.#B} x T ${this.#T}), got ${xs.length}`,
        );
      }
    }
    const data = this.#data;
    for (let i = 0; i < BT; i++) {
      const tok = tokens[i];
      if (!(tok >= 0 && tok < V && Number.isInteger(tok))) {
        throw new RangeError(`Token ${tok} at position ${i} is outside the vocabulary [0, ${V})`);
      }
      data[i] = tok;
      const tgt = targets ? targets[i] : IGNORE_TARGET;
      if (tgt !== IGNORE_TARGET && !(tgt >= 0 && tgt < V && Number.isInteger(tgt))) {
        throw new RangeError(`Target ${tgt} at position ${i} is outside the vocabulary [0, ${V})`);
      }
      data[S + i] = tgt;
    }
    // Positions sorted by token (stable): lets the wte backward sum each token's
    // rows in one place, deterministically.
    const order = data.subarray(2 * S, 2 * S + BT);
    for (let i = 0; i < BT; i++) order[i] = i;
    order.sort((a, b) => data[a] - data[b] || a - b);
    this.targets = data.subarray(S, S + BT);
    return data;
  }

  /** The mean of `losses` over the positions of the last batch that have a target (NaN: none). */
  meanLoss(losses: Float32Array): number {
    let sum = 0, n = 0;
    for (let i = 0; i < losses.length; i++) {
      if (this.targets[i] !== IGNORE_TARGET) {
        sum += losses[i];
        n++;
      }
    }
    return n ? sum / n : NaN;
  }
}
