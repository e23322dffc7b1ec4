/**
 * Follows the frame and block structure of a zstd stream without decompressing it, to tell
 * whether the input ended on a frame boundary. node:zlib's zstd decoder ends quietly on a
 * truncated file, which would silently drop the tail of a corpus; this check turns that into
 * an error. Layout per RFC 8878: frame magic, frame header, blocks with 3-byte headers, an
 * optional 4-byte checksum; skippable frames carry their own length.
 *
 * @module
 */

const ZSTD_MAGIC = 0xfd2fb528;
const enum State {
  Magic,
  Descriptor,
  BlockHeader,
  SkippableSize,
  Skip,
}

/** Tracks zstd frame boundaries over a stream of compressed chunks. */
export class ZstdFrameTracker {
  #state: State = State.Magic;
  #field = new Uint8Array(4);
  #have = 0;
  #skip = 0;
  #afterSkip: State = State.Magic;
  #checksum = false;
  #lastBlock = false;

  /** Feeds the next compressed chunk; throws if the bytes are not zstd frames. */
  push(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.#state === State.Skip) {
        const n = Math.min(this.#skip, chunk.length - i);
        i += n;
        this.#skip -= n;
        if (this.#skip === 0) this.#state = this.#afterSkip;
        continue;
      }
      this.#field[this.#have++] = chunk[i++];
      if (this.#have === this.#need()) {
        this.#have = 0;
        this.#onField();
      }
    }
  }

  /** True when every frame seen so far is complete (an empty stream counts as complete). */
  atBoundary(): boolean {
    return this.#state === State.Magic && this.#have === 0;
  }

  #need(): number {
    switch (this.#state) {
      case State.Magic:
      case State.SkippableSize:
        return 4;
      case State.Descriptor:
        return 1;
      default:
        return 3;
    }
  }

  #skipThen(n: number, next: State): void {
    if (n === 0) {
      this.#state = next;
      return;
    }
    this.#skip = n;
    this.#afterSkip = next;
    this.#state = State.Skip;
  }

  #onField(): void {
    const f = this.#field;
    switch (this.#state) {
      case State.Magic: {
        const magic = (f[0] | f[1] << 8 | f[2] << 16 | f[3] << 24) >>> 0;
        if (magic === ZSTD_MAGIC) this.#state = State.Descriptor;
        else if ((magic & 0xfffffff0) >>> 0 === 0x184d2a50) this.#state = State.SkippableSize;
        else throw new TypeError(`not zstd data (bad frame magic 0x${magic.toString(16)})`);
        return;
      }
      case State.SkippableSize:
        this.#skipThen((f[0] | f[1] << 8 | f[2] << 16 | f[3] << 24) >>> 0, State.Magic);
        return;
      case State.Descriptor: {
        const d = f[0];
        const fcsFlag = d >> 6;
        const single = (d >> 5) & 1;
        this.#checksum = ((d >> 2) & 1) === 1;
        const did = [0, 1, 2, 4][d & 3];
        const fcs = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag];
        this.#skipThen((single ? 0 : 1) + did + fcs, State.BlockHeader);
        return;
      }
      case State.BlockHeader: {
        const h = f[0] | f[1] << 8 | f[2] << 16;
        const type = (h >> 1) & 3;
        if (type === 3) throw new TypeError("corrupt zstd data (reserved block type)");
        this.#lastBlock = (h & 1) === 1;
        const body = type === 1 ? 1 : h >>> 3;
        if (this.#lastBlock) this.#skipThen(body + (this.#checksum ? 4 : 0), State.Magic);
        else this.#skipThen(body, State.BlockHeader);
        return;
      }
    }
  }
}
