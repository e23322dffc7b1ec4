/**
 * Follows the frame and block structure of a zstd stream without decompressing it. The
 * decoder in `_decoder.ts` feeds node:zlib one unit at a time (a frame header, a block, a
 * last block with its checksum, or a whole skippable frame) so that it knows where every
 * frame ends (Deno's decoder stops at the end of the first one), can name the block a
 * failure happened in, and can tell a file that ends inside a frame (node:zlib's decoder
 * ends quietly on one, which would silently drop the tail of a corpus). Layout per RFC 8878:
 * frame magic, frame header, blocks with 3-byte headers, an optional 4-byte checksum;
 * skippable frames carry their own length.
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

/** Tracks zstd frame and block boundaries over a stream of compressed chunks. */
export class ZstdFrameTracker {
  /** Bytes consumed so far: the stream offset of the next byte. */
  offset = 0;
  /** Frames begun so far (zstd and skippable); the current one is number `frames`. */
  frames = 0;
  /** Stream offset of the current (or last) frame's first byte. */
  frameStart = 0;
  /** Stream offset of the current (or last) unit's first byte; see {@linkcode advance}. */
  unitStart = 0;
  #unitDone = true;
  #state: State = State.Magic;
  #field = new Uint8Array(4);
  #have = 0;
  #skip = 0;
  #afterSkip: State = State.Magic;
  #checksum = false;

  /** Feeds the next compressed chunk; throws if the bytes are not zstd frames. */
  push(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) at = this.advance(chunk, at);
  }

  /**
   * Consumes `chunk` from `from` up to the end of the next unit (frame header, block, or
   * skippable frame), or to the chunk's end when the unit goes on. Returns where it stopped.
   */
  advance(chunk: Uint8Array, from: number): number {
    if (this.#unitDone) this.unitStart = this.offset;
    this.#unitDone = false;
    let i = from;
    while (i < chunk.length) {
      if (this.#state === State.Skip) {
        const n = Math.min(this.#skip, chunk.length - i);
        i += n;
        this.#skip -= n;
        if (this.#skip > 0) break;
        this.#state = this.#afterSkip;
        this.offset += i - from;
        this.#unitDone = true;
        return i;
      }
      if (this.#state === State.Magic && this.#have === 0) {
        this.frames++;
        this.frameStart = this.offset + (i - from);
      }
      this.#field[this.#have++] = chunk[i++];
      if (this.#have === this.#need()) {
        this.#have = 0;
        this.offset += i - from;
        from = i;
        // A unit ends where a block header or a new frame is due next.
        if (this.#onField()) {
          this.#unitDone = true;
          return i;
        }
      }
    }
    this.offset += i - from;
    return i;
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

  // Returns true when the unit is complete with no bytes left to skip.
  #skipThen(n: number, next: State): boolean {
    if (n === 0) {
      this.#state = next;
      return next === State.Magic || next === State.BlockHeader;
    }
    this.#skip = n;
    this.#afterSkip = next;
    this.#state = State.Skip;
    return false;
  }

  #onField(): boolean {
    const f = this.#field;
    switch (this.#state) {
      case State.Magic: {
        const magic = (f[0] | f[1] << 8 | f[2] << 16 | f[3] << 24) >>> 0;
        if (magic === ZSTD_MAGIC) this.#state = State.Descriptor;
        else if ((magic & 0xfffffff0) >>> 0 === 0x184d2a50) this.#state = State.SkippableSize;
        else {
          throw new TypeError(
            `not zstd data at byte ${this.offset - 4} (bad frame magic 0x${magic.toString(16)})`,
          );
        }
        return false;
      }
      case State.SkippableSize:
        return this.#skipThen((f[0] | f[1] << 8 | f[2] << 16 | f[3] << 24) >>> 0, State.Magic);
      case State.Descriptor: {
        const d = f[0];
        const fcsFlag = d >> 6;
        const single = (d >> 5) & 1;
        this.#checksum = ((d >> 2) & 1) === 1;
        const did = [0, 1, 2, 4][d & 3];
        const fcs = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag];
        return this.#skipThen((single ? 0 : 1) + did + fcs, State.BlockHeader);
      }
      default: {
        const h = f[0] | f[1] << 8 | f[2] << 16;
        const type = (h >> 1) & 3;
        if (type === 3) {
          throw new TypeError(`corrupt zstd data at byte ${this.offset - 3} (reserved block type)`);
        }
        const body = type === 1 ? 1 : h >>> 3;
        if ((h & 1) === 1) return this.#skipThen(body + (this.#checksum ? 4 : 0), State.Magic);
        return this.#skipThen(body, State.BlockHeader);
      }
    }
  }
}
