/**
 * The problems found in a source's lines while its batches are consumed: malformed JSON
 * (skipped with a warning, or an error with `--strict`), a missing text field (an error) and
 * invalid UTF-8 (counted, and reported per file once the file is done). The counts are kept
 * as a {@linkcode LineTally}, which every shard records as of its end.
 *
 * @module
 */
import type { BatchIssue } from "./_tokenize_batch.ts";
import type { LineTally } from "./_writer.ts";
import type { Source } from "./sources.ts";

/** Reports line problems in consumption order; see the module doc. */
export class LineReport {
  readonly tally: LineTally;
  /** The source of the last issue reported: the one to blame when reporting throws. */
  issueSource = -1;
  readonly #sources: Source[];
  readonly #strict: boolean;
  readonly #warn: (message: string) => void;
  #utf8 = { source: -1, count: 0, line: 0 };

  constructor(
    sources: Source[],
    tally: LineTally,
    options: { strict?: boolean; onWarning?: (message: string) => void },
  ) {
    this.#sources = sources;
    this.tally = tally;
    this.#strict = options.strict ?? false;
    this.#warn = options.onWarning ?? (() => {});
  }

  /** Marks the start of source `s`'s batches (reporting the one before when it changes). */
  enter(s: number): void {
    if (s === this.#utf8.source) return;
    this.done();
    this.#utf8.source = s;
  }

  /** Handles `issue` of the batch whose first line is `unit`: throws, or warns and counts. */
  issue(unit: number, issue: BatchIssue): void {
    this.issueSource = this.#utf8.source;
    const src = this.#sources[this.#utf8.source];
    const where = `${src.location} line ${unit + issue.line + 1}`;
    if (issue.kind === "field") {
      throw new TypeError(
        `No text in ${where}: ${issue.message}; set --text-field to the field holding the text`,
      );
    }
    if (this.#strict) {
      throw new SyntaxError(
        `Malformed JSON in ${where}: ${issue.message}; fix the line or drop --strict to skip it`,
      );
    }
    this.tally.malformed++;
    this.#warn(`Skipped malformed JSON in ${where}: ${issue.message}`);
  }

  /** Counts `count` invalid UTF-8 sequences replaced in line `line` (counted from 0). */
  replaced(line: number, count: number): void {
    if (this.#utf8.count === 0) this.#utf8.line = line + 1;
    this.#utf8.count += count;
    this.tally.invalidUtf8 += count;
  }

  /** Reports the invalid UTF-8 of the source consumed last, if any. */
  done(): void {
    const { source, count, line } = this.#utf8;
    if (count === 0) return;
    const src = this.#sources[source];
    const first = src.format === "jsonl" ? ` (the first on line ${line})` : "";
    this.#warn(
      `Replaced ${count} invalid UTF-8 sequence${count === 1 ? "" : "s"} in ${src.location} ` +
        `with U+FFFD${first}: check the file's encoding (iconv -f latin1 -t utf-8 converts a ` +
        `Latin-1 file)`,
    );
    this.#utf8.count = 0;
  }
}
